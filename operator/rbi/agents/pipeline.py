"""Idea → runnable strategy code: research → backtest → package, with every call recorded.

`generate_strategy` needs no executor, so the Kubernetes operator uses it for `spec.idea` as it is;
the hands-free loop (rbi.loop) calls the same stages one by one to checkpoint between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rbi.agents.backtest import tunable_parameters, write_backtest
from rbi.agents.calls import AgentError, CallRecord, store_calls, totals
from rbi.agents.fixers import Fix
from rbi.agents.package import package_code
from rbi.agents.research import ResearchSpec, idea_key, research_idea
from rbi.llm.client import LLMClient
from rbi.prepare.inspect_code import strategy_classes

__all__ = ["GeneratedStrategy", "generate_strategy", "package_step"]


@dataclass(slots=True)
class GeneratedStrategy:
    name: str
    code: str
    strategy_class: str | None
    params: dict[str, Any]  # the parameters' defaults, as the code declares them
    space: dict[str, Any]  # the optimizer's search space: {name: {type, low, high, step}}
    spec: ResearchSpec
    records: list[CallRecord] = field(default_factory=list)
    fixes: tuple[Fix, ...] = ()
    problems: tuple[str, ...] = ()  # packaging problems nothing could fix (the run will tell)

    @property
    def prompt_tokens(self) -> int:
        return totals(self.records)[0]

    @property
    def completion_tokens(self) -> int:
        return totals(self.records)[1]

    @property
    def cost(self) -> float:
        return totals(self.records)[2]


def package_step(code: str, *, client: LLMClient | None) -> tuple[str, tuple[Fix, ...], tuple[str, ...],
                                                                   list[CallRecord]]:
    """Package code; a model answer that cannot be used leaves the deterministic result (the run will tell)."""
    try:
        packaged = package_code(code, client=client)
    except AgentError as exc:
        from rbi.agents.fixers import package as deterministic

        rewritten = deterministic(code)
        return rewritten.code, rewritten.fixes, (str(exc),), exc.records
    return packaged.code, packaged.fixes, packaged.problems, packaged.records


def finish(spec: ResearchSpec, code: str, *, records: list[CallRecord], fixes: tuple[Fix, ...] = (),
           problems: tuple[str, ...] = ()) -> GeneratedStrategy:
    """The GeneratedStrategy of packaged code: its class, parameter defaults and search space."""
    classes = strategy_classes(code)
    tunable = tunable_parameters(code, spec.parameters)
    return GeneratedStrategy(
        name=spec.name, code=code, strategy_class=classes[-1] if classes else None,
        params={p.name: p.default_value for p in tunable}, space={p.name: p.space() for p in tunable},
        spec=spec, records=records, fixes=fixes, problems=problems)


def generate_strategy(idea: str, *, client: LLMClient, store: Any = None, name: str | None = None,
                      key: str | None = None) -> GeneratedStrategy:
    """Research → backtest → package for one idea.

    Raises AgentError (its `records` hold every call made) when the research or backtest agent gives
    no usable answer. With a `store`, every call is written to `llm_calls` (tagged with the idea's key;
    `attach_llm_calls` links them to the strategy version once it is registered). `name` overrides the
    name the research agent chose (the operator uses the resource's name).
    """
    records: list[CallRecord] = []
    key = key or idea_key(idea)
    try:
        spec, record = research_idea(idea, client=client)
        records.append(record)
        if name:
            spec = ResearchSpec(name=name, summary=spec.summary, rules=spec.rules, indicators=spec.indicators,
                                parameters=spec.parameters)
        code, record = write_backtest(spec, client=client)
        records.append(record)
    except AgentError as exc:
        store_calls(store, [*records, *exc.records], idea_key=key)
        exc.records = [*records, *exc.records]
        raise
    code, fixes, problems, package_records = package_step(code, client=client)
    records += package_records
    store_calls(store, records, idea_key=key)
    return finish(spec, code, records=records, fixes=fixes, problems=problems)
