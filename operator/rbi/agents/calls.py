"""One LLM call of an agent: render the versioned prompt, ask, judge the answer, keep a record.

Every agent goes through `ask`, so each call is counted once in the metrics with the outcome its agent
judged (an answer that is not what was asked for is `garbage`, not `ok`) and leaves a `CallRecord`
(agent, model, prompt name and version, attempt, tokens, cost, outcome) that the store keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from rbi.errors import RbiError
from rbi.llm.client import CallOutcome, LLMClient, LLMError
from rbi.llm.prompts import load_prompt

__all__ = ["AgentError", "AgentErrorKind", "CallRecord", "ask", "store_calls", "totals"]

T = TypeVar("T")

# llm: the server gave no usable answer (LLMError.kind says why); no_code: the answer holds no Python;
# no_strategy: code without a backtesting.Strategy subclass; not_json: a research answer that is no spec;
# invalid: code that breaks the sandbox rules or changes what it must not; no_llm: no model configured.
AgentErrorKind = Literal["llm", "no_code", "no_strategy", "not_json", "invalid", "no_llm"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    agent: str
    model: str
    prompt_name: str
    prompt_version: int
    attempt: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    outcome: CallOutcome
    seconds: float
    error_kind: str | None = None
    error_message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class AgentError(RbiError):
    """An agent could not do its job; `kind` classifies why, `records` holds the calls it made."""

    def __init__(self, kind: AgentErrorKind, message: str, *, agent: str,
                 records: Iterable[CallRecord] = (), llm_kind: str | None = None) -> None:
        super().__init__(message)
        self.kind: AgentErrorKind = kind
        self.agent = agent
        self.records = list(records)
        self.llm_kind = llm_kind  # LLMError.kind when kind == "llm"

    @property
    def category(self) -> str:
        """One word for summaries: the LLM error's kind, else this error's kind."""
        return f"llm_{self.llm_kind}" if self.kind == "llm" and self.llm_kind else self.kind


def ask(client: LLMClient, *, agent: str, prompt_name: str, values: dict[str, object],
        judge: Callable[[str], T], attempt: int = 1) -> tuple[T, CallRecord]:
    """Ask the model once and judge its answer.

    `judge` turns the answer text into the agent's result, or raises AgentError (the call then counts
    as garbage). A failed call raises AgentError(kind="llm"); either error carries the call's record.
    """
    prompt = load_prompt(prompt_name)
    user = prompt.render(**values)
    model = client.config.for_agent(agent)[0]
    started = time.monotonic()
    try:
        completion = client.complete(system=prompt.system, user=user, agent=agent, settle=False)
    except LLMError as exc:
        failed = CallRecord(agent=agent, model=model, prompt_name=prompt.name, prompt_version=prompt.version,
                            attempt=attempt, prompt_tokens=0, completion_tokens=0, cost=None,
                            outcome=LLMClient.outcome_of(exc), seconds=time.monotonic() - started,
                            error_kind=exc.kind, error_message=str(exc))
        raise AgentError("llm", f"{agent} agent: the LLM gave no usable answer ({exc.kind}): {exc}", agent=agent,
                         records=[failed], llm_kind=exc.kind) from None

    def record(outcome: CallOutcome, error: AgentError | None = None) -> CallRecord:
        return CallRecord(agent=agent, model=completion.model, prompt_name=prompt.name,
                          prompt_version=prompt.version, attempt=attempt, prompt_tokens=completion.prompt_tokens,
                          completion_tokens=completion.completion_tokens, cost=completion.cost, outcome=outcome,
                          seconds=completion.seconds, error_kind=error.kind if error else None,
                          error_message=str(error) if error else None)

    try:
        result = judge(completion.text)
    except AgentError as exc:
        client.settle(completion, "garbage")
        exc.records = [*exc.records, record("garbage", exc)]
        raise
    client.settle(completion, "ok")
    return result, record("ok")


def store_calls(store: Any, records: Iterable[CallRecord], *, strategy_name: str | None = None,
                version: int | None = None, idea_key: str | None = None) -> list[int]:
    """Write call records to the store (a ResultStore, or None to skip); returns the new row ids."""
    if store is None:
        return []
    return [
        int(store.record_llm_call(
            agent=r.agent, model=r.model, prompt_name=r.prompt_name, prompt_version=r.prompt_version,
            outcome=r.outcome, attempt=r.attempt, prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens, cost=r.cost, error_kind=r.error_kind,
            error_message=r.error_message, duration_seconds=r.seconds, strategy_name=strategy_name,
            version=version, idea_key=idea_key))
        for r in records
    ]


def totals(records: Iterable[CallRecord]) -> tuple[int, int, float]:
    """Prompt tokens, completion tokens and dollars over some calls (unknown prices count as 0)."""
    prompt = completion = 0
    cost = 0.0
    for r in records:
        prompt += r.prompt_tokens
        completion += r.completion_tokens
        cost += r.cost or 0.0
    return prompt, completion, cost
