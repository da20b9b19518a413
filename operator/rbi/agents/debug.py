"""The debug agent: a failed (or zero-trade) run → code that may run, without changing the strategy's logic.

Order of business for one attempt:

1. the deterministic fixers of known failure patterns (position size, pandas frequency aliases,
   Position.entry_price, column names, imports), which cost nothing and are exact;
2. if the same error came back after an earlier attempt, stop: asking again rarely helps;
3. the model, shown the failure class, the message, the traceback lines, the code around the failing
   line and what was tried before. Its answer must keep the class and its parameters, and must not be
   code that was already tried.

Zero-trade runs get their own diagnosis, which the model is shown: the run's own one-line reason
(`RunOutcome.no_trades_reason`, from rbi.diagnostics), then `fixers.diagnose_no_trades` on the code.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from rbi.agents.answers import class_attributes, code_from_answer, squash
from rbi.agents.calls import AgentError, CallRecord, ask
from rbi.agents.fixers import Fix, diagnose_no_trades, fix_for_failure
from rbi.llm.client import LLMClient
from rbi.outcome import RunOutcome, Status
from rbi.prepare.inspect_code import check_code, strategy_classes

__all__ = ["DEFAULT_MAX_ATTEMPTS", "PROMPT", "DebugResult", "debug_code", "error_signature", "is_repeated",
           "needs_debugging"]

PROMPT = "debug_code"
AGENT = "debug"
DEFAULT_MAX_ATTEMPTS = 3
_CONTEXT_LINES = 6
_NUMBERS = re.compile(r"0x[0-9a-f]+|\d+(?:\.\d+)?")
# Fatal LLM failures: asking again in a moment will not help.
_FATAL_LLM = {"auth", "unreachable"}


@dataclass(frozen=True, slots=True)
class DebugResult:
    """One debug attempt. `changed` and `code`: what to run next; `gave_up` and `reason`: why not."""

    code: str
    changed: bool
    via: Literal["fixer", "model", "none"]
    error_signature: str
    gave_up: bool = False
    reason: str = ""
    same_error: bool = False
    fixes: tuple[Fix, ...] = ()
    diagnosis: tuple[str, ...] = ()
    records: list[CallRecord] = field(default_factory=list)
    agent_error: str | None = None  # the category of an unusable answer (no_code, llm_rate_limited, ...)


def _norm(text: str) -> str:
    return _NUMBERS.sub("#", " ".join(text.split()))[:200]


def is_repeated(outcome: RunOutcome, previous_errors: Sequence[str]) -> bool:
    """True when this failure is one of `previous_errors`: signatures from `error_signature`, or
    'class: message' strings (what the operator keeps in a resource's status), numbers ignored."""
    forms = {_norm(error_signature(outcome))}
    if outcome.error is not None:
        forms.add(_norm(f"{outcome.error.type}: {outcome.error.message[:200]}"))
        forms.add(_norm(f"{outcome.error.type}: {outcome.error.message}"))
    return any(_norm(previous) in forms for previous in previous_errors)


def needs_debugging(outcome: RunOutcome) -> bool:
    return outcome.status is Status.FAILED or outcome.status is Status.NO_TRADES


def error_signature(outcome: RunOutcome) -> str:
    """What makes two failures 'the same error': the class, the exception and the message without numbers."""
    if outcome.status is Status.NO_TRADES:
        return "no_trades"
    if outcome.error is None:
        return "ok"
    message = _NUMBERS.sub("#", outcome.error.message.strip().splitlines()[0] if outcome.error.message else "")
    return f"{outcome.error.type}:{outcome.error.detail or ''}:{message[:200]}"


def _traceback_lines(outcome: RunOutcome) -> str:
    trace = outcome.traceback or ""
    lines = [line.rstrip() for line in trace.splitlines() if line.strip()]
    if lines:
        # The strategy's own frames and the exception; library internals add tokens, not insight.
        keep: list[str] = []
        for index, line in enumerate(lines):
            if "strategy.py" in line or line.startswith("Traceback"):
                keep.append(line)
                if index + 1 < len(lines) and not lines[index + 1].lstrip().startswith("File "):
                    keep.append(lines[index + 1])
        keep.append(lines[-1])
        return "\n".join(dict.fromkeys(keep))[-3000:]
    tail = [line for line in outcome.stderr_tail.splitlines() if line.strip()][-20:]
    return "\n".join(tail) or "(no traceback: see the message)"


def _context(code: str, line: int | None) -> str:
    lines = code.splitlines()
    if line is None or not 0 < line <= len(lines):
        return "(the failing line is not in the strategy's code)"
    start, end = max(1, line - _CONTEXT_LINES), min(len(lines), line + _CONTEXT_LINES)
    width = len(str(end))
    return "\n".join(f"{'>' if n == line else ' '} {n:>{width}} | {lines[n - 1]}" for n in range(start, end + 1))


def _history(previous_errors: Sequence[str]) -> str:
    if not previous_errors:
        return ""
    shown = "\n".join(f"- {e}" for e in previous_errors[-5:])
    return f"## Earlier attempts failed with\n\n{shown}\n\nDo not reintroduce these errors."


def _orders(code: str) -> int:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return 0
    return sum(1 for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr in ("buy", "sell"))


def _judge(answer: str, *, old_code: str, tried: set[str]) -> str:
    classes = strategy_classes(old_code)
    class_name = classes[-1] if classes else None
    code = code_from_answer(answer, agent=AGENT, class_name=class_name)
    if class_name is not None and set(class_attributes(code, class_name)) < set(class_attributes(old_code,
                                                                                                 class_name)):
        raise AgentError("invalid", f"{AGENT} agent: the fix removed parameters (class attributes) of {class_name}; "
                         "a fix must not change the strategy's logic", agent=AGENT)
    if _orders(old_code) and not _orders(code):
        raise AgentError("invalid", f"{AGENT} agent: the fix removed every buy()/sell() call; a fix must not change "
                         "the strategy's logic", agent=AGENT)
    return code


def debug_code(
    code: str,
    outcome: RunOutcome,
    *,
    client: LLMClient | None,
    attempt: int,
    previous_errors: Sequence[str] = (),
    previous_codes: Sequence[str] = (),
    max_attempts: int | None = None,
    use_fixers: bool = True,
) -> DebugResult:
    """One debug attempt for `code`, which produced `outcome`.

    `attempt` counts from 1 (it is the model attempt's number in the prompt and the records);
    `previous_errors` are the errors of earlier failed runs of this strategy (signatures from
    `error_signature`, or 'class: message' strings), `previous_codes` the code already run, so neither
    a repeated error nor a repeated fix loops forever. `max_attempts` (None: the caller keeps count)
    bounds the model attempts.
    """
    signature = error_signature(outcome)
    if not needs_debugging(outcome):
        return DebugResult(code=code, changed=False, via="none", error_signature=signature, gave_up=True,
                           reason="the run succeeded: nothing to debug")
    tried = {squash(c) for c in previous_codes} | {squash(code)}
    same_error = is_repeated(outcome, previous_errors)
    diagnosis: tuple[str, ...] = ()
    error = outcome.error
    if outcome.status is Status.NO_TRADES:
        stats = dict(outcome.stats)
        # The run's own facts first (orders cancelled, indicators NaN), then what the code's shape suggests.
        runtime = [outcome.no_trades_reason] if outcome.no_trades_reason else []
        diagnosis = tuple(runtime + diagnose_no_trades(code, stats))
    elif use_fixers and error is not None:
        repaired = fix_for_failure(code, error_type=str(error.type), message=error.message, line=error.line)
        if repaired.changed and not check_code(repaired.code) and squash(repaired.code) not in tried:
            return DebugResult(code=repaired.code, changed=True, via="fixer", error_signature=signature,
                               same_error=same_error, fixes=repaired.fixes,
                               reason="; ".join(f.description for f in repaired.fixes))
    if same_error:
        what = "the run still finds no trades" if signature == "no_trades" else \
            f"{error.type}: {error.message}" if error else signature
        return DebugResult(code=code, changed=False, via="none", error_signature=signature, gave_up=True,
                           same_error=True, diagnosis=diagnosis,
                           reason=f"the same error came back after a fix, stopping early: {_clip(what)}")
    if client is None:
        return DebugResult(code=code, changed=False, via="none", error_signature=signature, gave_up=True,
                           diagnosis=diagnosis, reason="no deterministic fixer matches and no model is configured")
    if max_attempts is not None and attempt > max_attempts:
        return DebugResult(code=code, changed=False, via="none", error_signature=signature, gave_up=True,
                           diagnosis=diagnosis, reason=f"gave up after {max_attempts} model attempt(s)")
    if outcome.status is Status.NO_TRADES:
        failure_class, message = "no_trades", "the backtest finished with zero trades. Likely causes:\n" + \
            "\n".join(f"  - {d}" for d in diagnosis)
    else:
        assert error is not None
        failure_class, message = str(error.type), error.message
    values: dict[str, object] = {
        "attempt": attempt, "failure_class": failure_class, "message": message,
        "traceback": _traceback_lines(outcome) if error else "(no error: the run completed without trading)",
        "context": _context(code, error.line if error else None), "history": _history(previous_errors),
        "code": code.rstrip("\n"),
    }
    try:
        new_code, record = ask(client, agent=AGENT, prompt_name=PROMPT, values=values, attempt=attempt,
                               judge=lambda answer: _judge(answer, old_code=code, tried=tried))
    except AgentError as exc:
        fatal = exc.kind == "llm" and (exc.llm_kind in _FATAL_LLM)
        return DebugResult(code=code, changed=False, via="none", error_signature=signature, gave_up=fatal,
                           diagnosis=diagnosis, reason=str(exc), records=exc.records, agent_error=exc.category)
    if squash(new_code) in tried:
        return DebugResult(code=code, changed=False, via="none", error_signature=signature, gave_up=True,
                           same_error=True, diagnosis=diagnosis, records=[record],
                           reason="the model returned code that was already tried, stopping early")
    return DebugResult(code=new_code, changed=True, via="model", error_signature=signature, same_error=same_error,
                       diagnosis=diagnosis, records=[record], reason=f"model fix (attempt {attempt})")


def _clip(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."
