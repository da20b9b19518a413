"""A small, observable client for OpenAI-compatible chat completion servers.

The `openai` package does the HTTP; this module does the retries itself
(the SDK's own are switched off) so that every attempt, every backoff and
every failure is visible to callers and tests. Failures surface as one
`LLMError` whose `kind` says what went wrong and whose message is precise
and never contains the API key.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import openai

from rbi import metrics
from rbi.errors import RbiError
from rbi.llm.settings import AgentSettings, Price, cost_of, load_config_file

__all__ = ["CallOutcome", "Completion", "LLMClient", "LLMConfig", "LLMError", "LLMErrorKind"]

LLMErrorKind = Literal["unreachable", "auth", "rate_limited", "timeout", "empty", "bad_response"]
# The outcome label of rbi_llm_calls_total: the model's answer was used (ok), was not what was asked
# for (garbage: not code, not JSON, an empty or non-JSON body), was refused for rate limits, or failed.
CallOutcome = Literal["ok", "error", "rate_limited", "garbage"]
# Agent names whose metric label differs from the name callers use.
_METRIC_AGENT = {"optimize": "refine"}

DEFAULT_MODEL = "gpt-4o-mini"
PLACEHOLDER_KEY = "not-needed"  # local servers (Ollama, vLLM) accept any key
_SNIPPET = 200  # characters of a server's body quoted in an error message


@dataclass(frozen=True, slots=True)
class LLMConfig:
    base_url: str | None
    api_key: str | None
    model: str
    temperature: float = 0.2
    max_tokens: int = 4000
    timeout: float = 60.0
    max_retries: int = 4
    backoff_seconds: float = 1.0  # first retry waits about this long, then doubling
    max_backoff_seconds: float = 20.0  # cap on any single wait, Retry-After included
    # Per-agent overrides (model, temperature, max_tokens) and extra prices (USD per 1M tokens).
    agents: Mapping[str, AgentSettings] = field(default_factory=dict)
    prices: Mapping[str, Price] = field(default_factory=dict)

    def for_agent(self, agent: str) -> tuple[str, float, int]:
        """The model, temperature and max_tokens that `agent` uses."""
        settings = self.agents.get(_METRIC_AGENT.get(agent, agent)) or AgentSettings()
        return (
            settings.model or self.model,
            self.temperature if settings.temperature is None else settings.temperature,
            self.max_tokens if settings.max_tokens is None else settings.max_tokens,
        )

    @classmethod
    def load(cls, *, path: Path | None = None, env: Mapping[str, str] = os.environ) -> LLMConfig | None:
        """The environment plus the config file (`path`, else $RBI_LLM_CONFIG); None when no LLM is configured.

        OPENAI_BASE_URL and RBI_MODEL win over the file's base_url and model; the key comes only from
        OPENAI_API_KEY. Raises LLMConfigError for a malformed file.
        """
        values = load_config_file(path, env=env)
        base_url = (env.get("OPENAI_BASE_URL") or "").strip() or values.pop("base_url", None)
        values.pop("base_url", None)
        api_key = (env.get("OPENAI_API_KEY") or "").strip() or None
        if base_url is None and api_key is None:
            return None
        model = (env.get("RBI_MODEL") or "").strip() or values.pop("model", None) or DEFAULT_MODEL
        values.pop("model", None)
        return cls(base_url=base_url, api_key=api_key or PLACEHOLDER_KEY, model=model, **values)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> LLMConfig | None:
        """The configuration from OPENAI_BASE_URL, OPENAI_API_KEY and RBI_MODEL.

        None when neither a base URL nor a key is set: then there is no LLM and
        the optimizer does parameter search only. A base URL without a key is a
        local server, which gets a placeholder key.
        """
        base_url = (env.get("OPENAI_BASE_URL") or "").strip() or None
        api_key = (env.get("OPENAI_API_KEY") or "").strip() or None
        if base_url is None and api_key is None:
            return None
        model = (env.get("RBI_MODEL") or "").strip() or DEFAULT_MODEL
        return cls(base_url=base_url, api_key=api_key or PLACEHOLDER_KEY, model=model)


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    seconds: float
    agent: str = ""
    # US dollars, from the model's price; None when the price is unknown.
    cost: float | None = None


class LLMError(RbiError):
    """The LLM server could not give a usable answer."""

    def __init__(self, kind: LLMErrorKind, message: str, *, attempts: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.kind: LLMErrorKind = kind
        self.attempts = attempts
        self.status = status


@dataclass(frozen=True, slots=True)
class _Retry:
    """A failed attempt that may succeed if tried again."""

    kind: LLMErrorKind
    message: str
    status: int | None
    retry_after: float | None


class LLMClient:
    """Chat completions with retries, backoff and token accounting.

    Attributes `total_prompt_tokens`, `total_completion_tokens` and `calls`
    (completions per agent name) add up every successful call; `backoffs`
    lists every wait in seconds, in order.
    """

    def __init__(self, config: LLMConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._sleep = sleep
        self._openai = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key or PLACEHOLDER_KEY,
            timeout=config.timeout,
            max_retries=0,
        )
        self._lock = threading.Lock()
        self.total_prompt_tokens = 0
        self.total_completion_tokens = 0
        self.calls: Counter[str] = Counter()
        self.backoffs: list[float] = []
        self.total_cost = 0.0
        self.unpriced_calls = 0  # successful calls whose model has no known price

    # ------------------------------------------------------------------ public

    def complete(self, *, system: str, user: str, agent: str, settle: bool = True) -> Completion:
        """One chat completion: the answer text and what it cost.

        Retries 429, 5xx, connection errors and timeouts up to
        `config.max_retries` times; raises LLMError otherwise. Every call
        counts in the rbi_llm_* metrics: failures at once, a completion at
        once as `ok` unless `settle=False`, in which case the caller judges
        the answer and calls `settle(completion, outcome)` exactly once.
        """
        started = time.monotonic()
        attempts = 0
        model_name, temperature, max_tokens = self.config.for_agent(agent)
        while True:
            attempts += 1
            try:
                outcome = self._attempt(system=system, user=user, model=model_name, temperature=temperature,
                                        max_tokens=max_tokens)
            except LLMError as exc:
                exc.attempts = attempts
                self._count_failure(agent, exc)
                raise
            if not isinstance(outcome, _Retry):
                text, model, prompt_tokens, completion_tokens = outcome
                cost = cost_of(model, prompt_tokens, completion_tokens, self.config.prices)
                completion = Completion(
                    text=text,
                    model=model,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    attempts=attempts,
                    seconds=time.monotonic() - started,
                    agent=agent,
                    cost=cost,
                )
                with self._lock:
                    self.total_prompt_tokens += prompt_tokens
                    self.total_completion_tokens += completion_tokens
                    self.total_cost += cost or 0.0
                    self.unpriced_calls += cost is None
                    self.calls[agent] += 1
                if settle:
                    self.settle(completion, "ok")
                return completion
            if attempts > self.config.max_retries:
                tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
                error = LLMError(
                    outcome.kind,
                    self._redact(f"{outcome.message} (gave up after {tries})"),
                    attempts=attempts,
                    status=outcome.status,
                )
                self._count_failure(agent, error)
                raise error
            delay = self._delay(attempts, outcome.retry_after)
            with self._lock:
                self.backoffs.append(delay)
            self._sleep(delay)

    def settle(self, completion: Completion, outcome: CallOutcome) -> None:
        """Count a completion in the metrics with the outcome its caller judged (ok or garbage)."""
        metrics.record_llm_call(
            agent=_METRIC_AGENT.get(completion.agent, completion.agent or "unknown"),
            outcome=outcome,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost=completion.cost or 0.0,
        )

    @staticmethod
    def outcome_of(error: LLMError) -> CallOutcome:
        """The metric outcome of a failed call: an unusable HTTP 200 body counts as garbage."""
        if error.kind == "rate_limited":
            return "rate_limited"
        if error.kind == "empty" or (error.kind == "bad_response" and error.status == 200):
            return "garbage"
        return "error"

    def _count_failure(self, agent: str, error: LLMError) -> None:
        metrics.record_llm_call(agent=_METRIC_AGENT.get(agent, agent), outcome=self.outcome_of(error))

    # ------------------------------------------------------------------ one attempt

    def _attempt(self, *, system: str, user: str, model: str, temperature: float,
                 max_tokens: int) -> tuple[str, str, int, int] | _Retry:
        where = self._where(model)
        try:
            raw = self._openai.chat.completions.with_raw_response.create(
                model=model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                temperature=temperature,
                max_tokens=max_tokens,
            )
        except openai.APITimeoutError:
            return _Retry("timeout", f"no answer from {where} within {self.config.timeout:g} s", None, None)
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            return _Retry("unreachable", f"cannot connect to {where}: {cause}", None, None)
        except openai.APIStatusError as exc:
            return self._status_error(exc, where, model)
        except openai.OpenAIError as exc:  # anything else the SDK raises
            raise LLMError("bad_response", self._redact(f"{where} failed: {exc}")) from None
        return self._read(raw.http_response.text, raw.http_response.headers.get("content-type", ""), where,
                          max_tokens=max_tokens, model=model)

    def _status_error(self, exc: openai.APIStatusError, where: str, model: str) -> _Retry:
        status = exc.status_code
        detail = _error_detail(exc)
        if status in (401, 403):
            raise LLMError(
                "auth",
                self._redact(
                    f"{where} refused the API key (HTTP {status}{detail}); check OPENAI_API_KEY "
                    "(a local server needs only OPENAI_BASE_URL)"
                ),
                status=status,
            ) from None
        retry_after = _retry_after(exc.response.headers)
        if status == 429:
            return _Retry("rate_limited", f"{where} is rate limiting (HTTP 429{detail})", status, retry_after)
        if status >= 500 or status == 408:
            return _Retry("bad_response", f"{where} failed with HTTP {status}{detail}", status, retry_after)
        hint = ""
        if status == 404:
            hint = (
                f"; check the model name (RBI_MODEL={model!r}) and OPENAI_BASE_URL (it usually ends in /v1)"
            )
        raise LLMError(
            "bad_response",
            self._redact(f"{where} rejected the request with HTTP {status}{detail}{hint}"),
            status=status,
        ) from None

    def _read(self, body: str, content_type: str, where: str, *, max_tokens: int,
              model: str) -> tuple[str, str, int, int]:
        """The answer text, model and token counts from a 200 body, or LLMError."""

        def bad(what: str) -> LLMError:
            return LLMError("bad_response", self._redact(f"{where} answered HTTP 200 with {what}"), status=200)

        try:
            data: Any = json.loads(body)
        except ValueError:
            kind = content_type.split(";")[0].strip() or "no content type"
            raise bad(f"a body that is not JSON ({kind}): {_snippet(body)}") from None
        if not isinstance(data, dict):
            raise bad(f"JSON that is not a chat completion object: {_snippet(body)}")
        if "error" in data and "choices" not in data:
            raise bad(f"an error object: {_snippet(json.dumps(data['error']))}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad(f"no choices in the chat completion: {_snippet(body)}")
        first = choices[0]
        message = first.get("message") if isinstance(first, dict) else None
        if not isinstance(message, dict):
            raise bad(f"a choice without a message: {_snippet(json.dumps(first))}")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise bad(f"message content that is not text: {_snippet(json.dumps(content))}")
        if content is None or not content.strip():
            reason = first.get("finish_reason")
            why = f" (finish_reason={reason!r})" if reason else ""
            if reason == "length":
                why += f"; max_tokens={max_tokens} may be too small"
            raise LLMError("empty", self._redact(f"{where} returned an empty answer{why}"), status=200)
        raw_usage = data.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        raw_model = data.get("model")
        answered = raw_model if isinstance(raw_model, str) and raw_model else model
        return content, answered, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))

    # ------------------------------------------------------------------ helpers

    def _where(self, model: str | None = None) -> str:
        return f"the LLM server at {self.config.base_url or 'api.openai.com'} (model {model or self.config.model})"

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = self.config.max_backoff_seconds
        if retry_after is not None:
            return min(max(retry_after, 0.0), cap)
        base = self.config.backoff_seconds * 2.0 ** (attempt - 1)
        return min(base + random.uniform(0, self.config.backoff_seconds), cap)

    def _redact(self, message: str) -> str:
        key = self.config.api_key
        if key and key != PLACEHOLDER_KEY and len(key) >= 4:
            message = message.replace(key, "***")
        return message


def _error_detail(exc: openai.APIStatusError) -> str:
    """': <the server's message>' from an OpenAI-style error body, or a snippet of the body."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return f": {_snippet(str(message))}"
    try:
        text = exc.response.text
    except Exception:  # a streamed or closed response
        return ""
    return f": {_snippet(text)}" if text.strip() else ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from retry-after-ms or Retry-After (seconds or an HTTP date); None when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return float(when.timestamp() - time.time())


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= _SNIPPET else flat[:_SNIPPET] + "...")


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
