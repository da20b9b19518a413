"""Per-agent model settings, prices, and the LLM config file.

The environment says where the server is (OPENAI_BASE_URL), how to authenticate
(OPENAI_API_KEY) and which model to use by default (RBI_MODEL). A YAML config
file (`--llm-config`, else `$RBI_LLM_CONFIG`) can add per-agent models,
temperatures and token limits, the client's timeouts and retries, and prices
for cost accounting. The API key is never read from the file: config files get
committed, keys must not be.

    model: gpt-4o-mini            # default for every agent (RBI_MODEL wins over it)
    temperature: 0.2
    max_tokens: 4000
    timeout: 60
    max_retries: 4
    agents:
      research: {model: gpt-4o, temperature: 0.7}
      debug: {temperature: 0.0, max_tokens: 3000}
    prices:                       # US dollars per million tokens
      my-local-model: {prompt: 0, completion: 0}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rbi.errors import RbiError

__all__ = [
    "AGENTS",
    "DEFAULT_PRICES",
    "AgentSettings",
    "LLMConfigError",
    "Price",
    "cost_of",
    "load_config_file",
]

AGENTS = ("research", "backtest", "package", "debug", "refine")
_TOP_KEYS = {"model", "base_url", "temperature", "max_tokens", "timeout", "max_retries", "backoff_seconds",
             "max_backoff_seconds", "agents", "prices"}
_AGENT_KEYS = {"model", "temperature", "max_tokens"}


class LLMConfigError(RbiError):
    """The LLM config file is missing or malformed."""


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Overrides for one agent; None keeps the client-wide value."""

    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    prompt: float
    completion: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1_000_000


# List prices (USD per 1M tokens) of common hosted models; local servers default to free below.
DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o4-mini": Price(1.10, 4.40),
    "o3-mini": Price(1.10, 4.40),
}


def cost_of(model: str, prompt_tokens: int, completion_tokens: int, prices: Mapping[str, Price]) -> float | None:
    """The cost of one call in dollars; None when the model's price is unknown.

    A model name with a dated suffix (`gpt-4o-mini-2024-07-18`) takes the price of its longest known prefix.
    """
    table = {**DEFAULT_PRICES, **prices}
    if model in table:
        return table[model].cost(prompt_tokens, completion_tokens)
    prefixes = [name for name in table if model.startswith(name + "-")]
    if prefixes:
        return table[max(prefixes, key=len)].cost(prompt_tokens, completion_tokens)
    return None


def _number(value: Any, where: str, *, whole: bool = False, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
        kind = "a whole number" if whole else "a number"
        raise LLMConfigError(f"{where} must be {kind}, got {value!r}")
    if value < minimum:
        raise LLMConfigError(f"{where} must be at least {minimum:g}, got {value!r}")
    return float(value)


def _agent(name: str, raw: Any, where: str) -> AgentSettings:
    if not isinstance(raw, Mapping):
        raise LLMConfigError(f"{where}.agents.{name} must be a mapping of {sorted(_AGENT_KEYS)}")
    unknown = set(raw) - _AGENT_KEYS
    if unknown:
        raise LLMConfigError(f"{where}.agents.{name}: unknown key(s) {sorted(unknown)}; known: {sorted(_AGENT_KEYS)}")
    model = raw.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise LLMConfigError(f"{where}.agents.{name}.model must be a model name")
    temperature = raw.get("temperature")
    max_tokens = raw.get("max_tokens")
    return AgentSettings(
        model=model.strip() if isinstance(model, str) else None,
        temperature=_number(temperature, f"{where}.agents.{name}.temperature") if temperature is not None else None,
        max_tokens=int(_number(max_tokens, f"{where}.agents.{name}.max_tokens", whole=True, minimum=1))
        if max_tokens is not None else None,
    )


def load_config_file(path: Path | None = None, *, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The validated settings of the config file, as LLMConfig keyword arguments ({} when there is no file)."""
    if path is None:
        named = (env.get("RBI_LLM_CONFIG") or "").strip()
        if not named:
            return {}
        path = Path(named)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LLMConfigError(f"LLM config {where}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise LLMConfigError(f"LLM config {where} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise LLMConfigError(f"LLM config {where} must be a mapping, got {type(raw).__name__}")
    if "api_key" in raw:
        raise LLMConfigError(f"LLM config {where}: api_key does not belong in a file; set OPENAI_API_KEY")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise LLMConfigError(f"LLM config {where}: unknown key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    values: dict[str, Any] = {}
    for key in ("model", "base_url"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str) or not raw[key].strip():
                raise LLMConfigError(f"LLM config {where}: {key} must be a non-empty string")
            values[key] = raw[key].strip()
    for key in ("temperature", "timeout", "backoff_seconds", "max_backoff_seconds"):
        if raw.get(key) is not None:
            values[key] = _number(raw[key], f"{where}: {key}")
    for key, low in (("max_tokens", 1), ("max_retries", 0)):
        if raw.get(key) is not None:
            values[key] = int(_number(raw[key], f"{where}: {key}", whole=True, minimum=low))
    agents_raw = raw.get("agents") or {}
    if not isinstance(agents_raw, Mapping):
        raise LLMConfigError(f"LLM config {where}: agents must map agent names to settings")
    strange = set(agents_raw) - set(AGENTS)
    if strange:
        raise LLMConfigError(f"LLM config {where}: unknown agent(s) {sorted(strange)}; agents: {list(AGENTS)}")
    values["agents"] = {str(name): _agent(str(name), value, where) for name, value in agents_raw.items()}
    prices_raw = raw.get("prices") or {}
    if not isinstance(prices_raw, Mapping):
        raise LLMConfigError(f"LLM config {where}: prices must map model names to {{prompt, completion}}")
    prices: dict[str, Price] = {}
    for model, price in prices_raw.items():
        if not isinstance(price, Mapping) or set(price) != {"prompt", "completion"}:
            raise LLMConfigError(f"LLM config {where}: prices.{model} must be {{prompt: $/1M, completion: $/1M}}")
        prices[str(model)] = Price(_number(price["prompt"], f"{where}: prices.{model}.prompt"),
                                   _number(price["completion"], f"{where}: prices.{model}.completion"))
    values["prices"] = prices
    return values
