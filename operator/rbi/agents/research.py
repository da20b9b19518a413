"""The research agent: a trading idea → a strategy specification (name, rules, parameters with ranges)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from rbi.agents.answers import describe_answer
from rbi.agents.calls import AgentError, CallRecord, ask
from rbi.llm.client import LLMClient

__all__ = ["PROMPT", "ParameterSpec", "ResearchSpec", "research_idea", "strategy_name"]

PROMPT = "research_idea"
AGENT = "research"
MAX_PARAMETERS = 8
_JSON_BLOCK = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    name: str
    kind: str  # int | float
    default: float
    low: float
    high: float
    step: float | None = None

    def space(self) -> dict[str, Any]:
        """The optimizer's `spec.optimization.space` entry."""
        entry: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.step is not None:
            entry["step"] = self.step
        if self.kind == "int":
            entry = {k: int(v) if isinstance(v, float) else v for k, v in entry.items()}
        return entry

    @property
    def default_value(self) -> int | float:
        return int(self.default) if self.kind == "int" else self.default

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "default": self.default_value, "low": self.low,
                "high": self.high, "step": self.step}


@dataclass(frozen=True, slots=True)
class ResearchSpec:
    name: str
    summary: str
    rules: tuple[str, ...]
    indicators: tuple[str, ...] = ()
    parameters: tuple[ParameterSpec, ...] = field(default_factory=tuple)

    @property
    def class_name(self) -> str:
        words = re.split(r"[^A-Za-z0-9]+", self.name)
        name = "".join(w[:1].upper() + w[1:] for w in words if w) or "Generated"
        return name if name[0].isalpha() else f"S{name}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "rules": list(self.rules),
                "indicators": list(self.indicators), "parameters": [p.to_json() for p in self.parameters]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResearchSpec:
        """A spec from its stored JSON (the loop's checkpoint), validated like a model's answer."""
        return _spec(data, fallback_name=str(data.get("name") or "strategy"))


def strategy_name(text: str, *, fallback: str) -> str:
    """A DNS-1123 label (the store's and Kubernetes' naming rule) from free text."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50].strip("-")
    return cleaned or fallback


def idea_key(idea: str) -> str:
    """A stable key for an idea: its words, lowercased, hashed."""
    return hashlib.sha256(" ".join(idea.lower().split()).encode("utf-8")).hexdigest()[:16]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _parameter(raw: Any, index: int) -> ParameterSpec:
    where = f"parameters[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} is not an object")
    name = str(raw.get("name") or "").strip()
    if not _IDENTIFIER.match(name) or name in ("init", "next", "data", "position", "trades", "equity"):
        raise ValueError(f"{where}.name {name!r} is not a usable snake_case attribute name")
    low, high, default = _number(raw.get("low")), _number(raw.get("high")), _number(raw.get("default"))
    if low is None or high is None:
        raise ValueError(f"{where} ({name}) needs numeric low and high")
    if low > high:
        low, high = high, low
    kind = str(raw.get("type") or "").lower()
    if kind not in ("int", "float"):
        kind = "int" if all(float(v).is_integer() for v in (low, high) if v is not None) else "float"
    if default is None or not low <= default <= high:
        default = (low + high) / 2
    step = _number(raw.get("step"))
    if kind == "int":
        low, high, default = math.floor(low), math.ceil(high), round(default)
        step = max(1.0, round(step)) if step else 1.0
    elif step is not None and step <= 0:
        step = None
    return ParameterSpec(name=name, kind=kind, default=default, low=low, high=high, step=step)


def _spec(data: Any, *, fallback_name: str) -> ResearchSpec:
    if not isinstance(data, dict):
        raise ValueError("the JSON is not an object")
    rules_raw = data.get("rules")
    if isinstance(rules_raw, str):
        rules_raw = [rules_raw]
    rules = tuple(str(r).strip() for r in rules_raw or [] if str(r).strip()) if isinstance(rules_raw, list) else ()
    if not rules:
        raise ValueError("it has no rules")
    params_raw = data.get("parameters") or []
    if not isinstance(params_raw, list):
        raise ValueError("parameters is not a list")
    parameters: list[ParameterSpec] = []
    for index, raw in enumerate(params_raw[:MAX_PARAMETERS]):
        parameter = _parameter(raw, index)
        if parameter.name not in {p.name for p in parameters}:
            parameters.append(parameter)
    indicators_raw = data.get("indicators") or []
    indicators = tuple(str(i) for i in indicators_raw) if isinstance(indicators_raw, list) else ()
    return ResearchSpec(
        name=strategy_name(str(data.get("name") or ""), fallback=fallback_name),
        summary=str(data.get("summary") or "").strip(),
        rules=rules,
        indicators=indicators,
        parameters=tuple(parameters),
    )


def _json_in(answer: str) -> Any:
    candidates = [m.group(1) for m in _JSON_BLOCK.finditer(answer)]
    text = answer.strip()
    if text.startswith("{"):
        candidates.insert(0, text)
    start, end = answer.find("{"), answer.rfind("}")
    if 0 <= start < end:
        candidates.append(answer[start:end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise ValueError("no JSON object")


def parse_research(answer: str, *, fallback_name: str) -> ResearchSpec:
    """The ResearchSpec in a research answer; AgentError(not_json) when there is none."""
    try:
        data = _json_in(answer)
    except ValueError:
        raise AgentError("not_json", f"research agent: the answer holds no JSON specification; it was "
                         f"{describe_answer(answer)}", agent=AGENT) from None
    try:
        return _spec(data, fallback_name=fallback_name)
    except ValueError as exc:
        raise AgentError("not_json", f"research agent: the specification is unusable: {exc}",
                         agent=AGENT) from None


def research_idea(idea: str, *, client: LLMClient, attempt: int = 1) -> tuple[ResearchSpec, CallRecord]:
    """Ask the research agent for a specification of `idea`."""
    fallback = strategy_name(" ".join(idea.split()[:5]), fallback=f"idea-{idea_key(idea)[:8]}")
    return ask(client, agent=AGENT, prompt_name=PROMPT, values={"idea": idea.strip()}, attempt=attempt,
               judge=lambda answer: parse_research(answer, fallback_name=fallback))
