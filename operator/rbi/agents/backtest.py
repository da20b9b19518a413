"""The backtest agent: a strategy specification → backtesting.py code in class mode.

The code must define the spec's class with every parameter as a class attribute, so the optimizer can
set them. A missing parameter attribute is added (with the spec's default) rather than failing: it is a
pure declaration, and the code's logic is untouched; a parameter the code does not use is dropped from
the search space instead (see `tunable_parameters`).
"""

from __future__ import annotations

import ast
import json
import re

from rbi.agents.answers import class_attributes, code_from_answer
from rbi.agents.calls import CallRecord, ask
from rbi.agents.research import ParameterSpec, ResearchSpec
from rbi.llm.client import LLMClient
from rbi.prepare.inspect_code import strategy_classes

__all__ = ["PROMPT", "tunable_parameters", "write_backtest"]

PROMPT = "backtest_code"
AGENT = "backtest"


def _spec_text(spec: ResearchSpec) -> str:
    lines = [f"Name: {spec.name}"]
    if spec.summary:
        lines.append(f"Summary: {spec.summary}")
    lines.append("Rules:")
    lines += [f"- {rule}" for rule in spec.rules]
    if spec.indicators:
        lines.append("Indicators: " + "; ".join(spec.indicators))
    return "\n".join(lines)


def _parameters_text(parameters: tuple[ParameterSpec, ...]) -> str:
    if not parameters:
        return "(none: use sensible constants as class attributes anyway)"
    return "\n".join(f"- `{p.name} = {p.default_value!r}` ({p.kind}, range {p.low:g}..{p.high:g})"
                     for p in parameters)


def _judge(answer: str, *, class_name: str) -> str:
    code = code_from_answer(answer, agent=AGENT, checks=False)
    classes = strategy_classes(code)
    if class_name not in classes and len(classes) == 1:
        # The model picked its own class name; keep it (the runner uses the most derived class).
        return code
    return code_from_answer(answer, agent=AGENT, class_name=class_name, checks=False)


def write_backtest(spec: ResearchSpec, *, client: LLMClient, attempt: int = 1) -> tuple[str, CallRecord]:
    """Ask the backtest agent for the code of `spec`; the parameters are declared as class attributes."""
    class_name = spec.class_name
    code, record = ask(
        client, agent=AGENT, prompt_name=PROMPT, attempt=attempt,
        values={"name": spec.name, "class_name": class_name, "spec": _spec_text(spec),
                "parameters": _parameters_text(spec.parameters)},
        judge=lambda answer: _judge(answer, class_name=class_name))
    return declare_parameters(code, spec.parameters), record


def _main_class(code: str) -> str | None:
    classes = strategy_classes(code)
    return classes[-1] if classes else None


def declare_parameters(code: str, parameters: tuple[ParameterSpec, ...]) -> str:
    """Add `name = default` to the strategy class for each spec parameter the code used but did not declare."""
    class_name = _main_class(code)
    if class_name is None:
        return code
    declared = class_attributes(code, class_name)
    used = {m.group(1) for m in re.finditer(r"self\.([A-Za-z_]\w*)", code)}
    missing = [p for p in parameters if p.name not in declared and p.name in used]
    if not missing:
        return code
    tree = ast.parse(code)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    first = node.body[0]
    lines = code.splitlines(keepends=True)
    indent = re.match(r"[ \t]*", lines[first.lineno - 1]).group(0)  # type: ignore[union-attr]
    # After a class docstring, if any.
    at = first.end_lineno if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
        else first.lineno - 1
    added = [f"{indent}{p.name} = {json.dumps(p.default_value)}\n" for p in missing]
    return "".join(lines[:at] + added + lines[at:])


def tunable_parameters(code: str, parameters: tuple[ParameterSpec, ...]) -> tuple[ParameterSpec, ...]:
    """The spec's parameters that the code declares as numeric class attributes: what the optimizer may tune."""
    class_name = _main_class(code)
    if class_name is None:
        return ()
    declared = class_attributes(code, class_name)
    return tuple(p for p in parameters
                 if isinstance(declared.get(p.name), int | float) and not isinstance(declared.get(p.name), bool))
