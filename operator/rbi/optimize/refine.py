"""Ask the LLM for one concrete code change to a strategy, and check the answer.

`propose_code_change` gives the model the current code, its key statistics, a
compact summary of its trades, what has already been tried and the objective,
and asks for exactly one change (entry/exit, risk management, a regime filter
or position sizing). The answer is only accepted when it holds a whole module
that parses, still defines the Strategy subclass, actually differs from the
input and passes the static checks; otherwise a RefineError says precisely
why, so the optimizer can record the failure and move on.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rbi.errors import ExtractionError, RbiError
from rbi.llm.client import Completion, LLMClient, LLMError
from rbi.llm.prompts import load_prompt
from rbi.prepare.extract import describe_answer, extract_code
from rbi.prepare.inspect_code import check_code, strategy_classes

__all__ = [
    "CHANGE_KINDS",
    "PROMPT_NAME",
    "Proposal",
    "RefineError",
    "classify_change",
    "propose_code_change",
    "summarize_trades",
]

PROMPT_NAME = "refine_strategy"
AGENT = "optimize"
ChangeKind = Literal["entry_exit", "risk_management", "regime_filter", "position_sizing", "other"]
RefineErrorKind = Literal["no_code", "syntax", "no_strategy", "unchanged", "validation", "llm"]
CHANGE_KINDS: tuple[ChangeKind, ...] = ("entry_exit", "risk_management", "regime_filter", "position_sizing", "other")

# The statistics worth the model's attention, in the order shown.
KEY_STATS: tuple[tuple[str, str], ...] = (
    ("return_pct", "Return [%]"),
    ("buy_hold_return_pct", "Buy & Hold Return [%]"),
    ("return_ann_pct", "Return (Ann.) [%]"),
    ("sharpe_ratio", "Sharpe Ratio"),
    ("sortino_ratio", "Sortino Ratio"),
    ("calmar_ratio", "Calmar Ratio"),
    ("max_drawdown_pct", "Max. Drawdown [%]"),
    ("win_rate_pct", "Win Rate [%]"),
    ("num_trades", "# Trades"),
    ("profit_factor", "Profit Factor"),
    ("expectancy_pct", "Expectancy [%]"),
    ("avg_trade_pct", "Avg. Trade [%]"),
    ("best_trade_pct", "Best Trade [%]"),
    ("worst_trade_pct", "Worst Trade [%]"),
    ("exposure_time_pct", "Exposure Time [%]"),
    ("sqn", "SQN"),
)
_MAX_TRIED = 20  # most recent attempts shown; older ones add tokens, not guidance
_MAX_TRIED_CHARS = 300

# Keyword patterns per change kind, matched on the rationale (lowercased).
_KIND_PATTERNS: tuple[tuple[ChangeKind, re.Pattern[str]], ...] = (
    (
        "risk_management",
        re.compile(r"stop[- ]?loss|\bstops?\b|take[- ]?profit|trailing|\bsl\b|\btp\b|risk[- ]reward|\bbreak[- ]?even"),
    ),
    (
        "position_sizing",
        re.compile(r"position[- ]siz|\bsizing\b|\bsize\b|\bkelly\b|fraction of (?:equity|capital)|risk per trade"),
    ),
    (
        "regime_filter",
        re.compile(
            r"regime|\bfilter|\badx\b|trend(?:ing)? (?:market|condition)|only (?:trade|enter|go long|go short)"
            r"|choppy|sideways|market condition|long-term trend|\b200[- ]?(?:bar|period|sma|ema)"
        ),
    ),
    (
        "entry_exit",
        re.compile(r"\bentr(?:y|ies)\b|\bexit|\bcross(?:over|es|ing)?\b|signal|confirm|threshold|\benter\b"),
    ),
)


@dataclass(frozen=True, slots=True)
class Proposal:
    code: str
    rationale: str
    diff: str  # unified diff old → new, as a/strategy.py → b/strategy.py
    completion: Completion
    prompt_version: int
    change_kind: ChangeKind


class RefineError(RbiError):
    """The model's answer is not a usable code change; `kind` says why."""

    def __init__(
        self,
        kind: RefineErrorKind,
        message: str,
        *,
        completion: Completion | None = None,
        line: int | None = None,
        violations: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.kind: RefineErrorKind = kind
        self.completion = completion  # the answer that was rejected (None for kind "llm")
        self.line = line
        self.violations = tuple(violations)


def propose_code_change(
    client: LLMClient,
    *,
    code: str,
    stats: Mapping[str, Any],
    trades: Sequence[Mapping[str, Any]] | None,
    tried: Sequence[str],
    objective: str,
    maximize: bool,
) -> Proposal:
    """One validated code change proposed by the LLM; RefineError when the answer is unusable."""
    prompt = load_prompt(PROMPT_NAME)
    classes = strategy_classes(code)
    user = prompt.render(
        code=code.strip("\n"),
        stats=format_stats(stats),
        trade_summary=summarize_trades(trades),
        tried=_format_tried(tried),
        objective=objective,
        direction="maximize" if maximize else "minimize",
        class_name=classes[0] if classes else "the Strategy subclass",
    )
    try:
        completion = client.complete(system=prompt.system, user=user, agent=AGENT, settle=False)
    except LLMError as exc:
        raise RefineError("llm", f"the LLM gave no answer ({exc.kind}): {exc}") from exc
    try:
        new_code = _validated_code(completion, old_code=code, old_classes=classes)
    except RefineError:
        client.settle(completion, "garbage")  # rbi_llm_calls_total{agent="refine",outcome="garbage"}
        raise
    client.settle(completion, "ok")
    rationale = _rationale(completion.text)
    return Proposal(
        code=new_code,
        rationale=rationale,
        diff=unified_diff(code, new_code),
        completion=completion,
        prompt_version=prompt.version,
        change_kind=classify_change(rationale),
    )


# --------------------------------------------------------------------------- validation


def _validated_code(completion: Completion, *, old_code: str, old_classes: list[str]) -> str:
    answer = completion.text
    try:
        new_code = extract_code(answer)
    except ExtractionError as exc:
        shape = describe_answer(answer, wanted="a fenced python block")
        raise RefineError("no_code", f"{exc}; the answer was {shape}", completion=completion) from None
    try:
        new_tree = ast.parse(new_code)
    except (SyntaxError, ValueError) as exc:
        line = exc.lineno if isinstance(exc, SyntaxError) else None
        where = f"line {line}: " if line else ""
        detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        source = ""
        if line is not None and 0 < line <= len(new_code.splitlines()):
            source = f" ({new_code.splitlines()[line - 1].strip()[:120]!r})"
        raise RefineError(
            "syntax", f"the proposed code does not parse: {where}{detail}{source}", completion=completion, line=line
        ) from None
    new_classes = strategy_classes(new_code)
    if not new_classes:
        raise RefineError(
            "no_strategy",
            "the proposed code defines no backtesting.Strategy subclass"
            + (f" (the current code defines {', '.join(old_classes)})" if old_classes else ""),
            completion=completion,
        )
    if old_classes and not set(old_classes) & set(new_classes):
        raise RefineError(
            "no_strategy",
            f"the proposed code renamed the strategy class: it defines {', '.join(new_classes)} "
            f"instead of {', '.join(old_classes)}",
            completion=completion,
        )
    if _squash(new_code) == _squash(old_code):
        raise RefineError(
            "unchanged", "the proposed code is the current code (only whitespace differs)", completion=completion
        )
    if _same_tree(old_code, new_tree):
        raise RefineError(
            "unchanged", "the proposed code only changes comments or formatting, not behaviour", completion=completion
        )
    violations = check_code(new_code)
    if violations:
        messages = [v.message for v in violations]
        raise RefineError(
            "validation",
            f"the proposed code breaks {len(messages)} sandbox rule(s): " + "; ".join(messages),
            completion=completion,
            line=violations[0].line,
            violations=messages,
        )
    return new_code if new_code.endswith("\n") else new_code + "\n"


def _squash(code: str) -> str:
    return "".join(code.split())


def _same_tree(old_code: str, new_tree: ast.Module) -> bool:
    try:
        old_tree = ast.parse(old_code)
    except (SyntaxError, ValueError):
        return False
    return ast.dump(_without_docstrings(old_tree)) == ast.dump(_without_docstrings(new_tree))


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """A copy without docstrings, so a reworded docstring is not a change in behaviour."""
    copy = ast.parse(ast.unparse(tree))
    for node in ast.walk(copy):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                body[0] = ast.Pass()
    return copy


# --------------------------------------------------------------------------- the answer's prose


def _rationale(answer: str) -> str:
    """The 'Change:' line; failing that, the first line of prose outside code blocks."""
    prose: list[str] = []
    fenced = False
    for line in answer.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or not stripped:
            continue
        match = re.match(r"^[*_#>\s-]*change[*_]*\s*:\s*[*_]*\s*(.+)$", stripped, re.IGNORECASE)
        if match:
            return _clip(match[1].strip().strip("*_").strip())
        prose.append(stripped)
    return _clip(prose[0]) if prose else ""


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def classify_change(rationale: str) -> ChangeKind:
    """The kind of change a rationale describes: the kind with the most keyword hits, 'other' when none."""
    text = rationale.lower()
    best: ChangeKind = "other"
    best_hits = 0
    for kind, pattern in _KIND_PATTERNS:  # ties go to the earlier, more specific kind
        hits = len(pattern.findall(text))
        if hits > best_hits:
            best, best_hits = kind, hits
    return best


def unified_diff(old: str, new: str) -> str:
    lines = difflib.unified_diff(_lines(old), _lines(new), fromfile="a/strategy.py", tofile="b/strategy.py")
    return "".join(lines)


def _lines(code: str) -> list[str]:
    return [line + "\n" for line in code.splitlines()]


# --------------------------------------------------------------------------- what the model is told


def format_stats(stats: Mapping[str, Any]) -> str:
    """The key statistics as a Markdown list; 'n/a' for a missing or undefined value."""
    if not stats:
        return "(no statistics: the current version did not produce any)"
    lines = [f"- {label} (`{key}`): {_fmt(stats.get(key))}" for key, label in KEY_STATS]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != 0 else "0"
    return str(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def summarize_trades(trades: Sequence[Mapping[str, Any]] | None) -> str:
    """Count, win rate, average win and loss, longest losing streak and average duration."""
    if trades is None:
        return "(no trade list was recorded for this run)"
    if not trades:
        return "No closed trades: the strategy never completed a trade, so its entry conditions may never hold."
    returns = [_number(t.get("return_pct")) for t in trades]
    known = [r for r in returns if r is not None]
    wins = [r for r in known if r > 0]
    losses = [r for r in known if r <= 0]
    lines = [f"- closed trades: {len(trades)}"]
    sizes = [_number(t.get("size")) for t in trades]
    longs = sum(1 for s in sizes if s is not None and s > 0)
    shorts = sum(1 for s in sizes if s is not None and s < 0)
    if longs or shorts:
        lines.append(f"- long / short: {longs} / {shorts}")
    if known:
        lines.append(f"- win rate: {_fmt(100 * len(wins) / len(known))}% ({len(wins)} won, {len(losses)} lost)")
        lines.append(f"- average win: {_fmt(sum(wins) / len(wins)) + '%' if wins else 'n/a (no winning trade)'}")
        lines.append(f"- average loss: {_fmt(sum(losses) / len(losses)) + '%' if losses else 'n/a (no losing trade)'}")
        lines.append(f"- best / worst trade: {_fmt(max(known))}% / {_fmt(min(known))}%")
        lines.append(f"- longest losing streak: {_longest_losing_streak(returns)} trades")
    else:
        lines.append("- returns per trade: not recorded")
    lines.append(f"- average duration: {_average_duration(trades)}")
    if len(known) < len(trades) and known:
        lines.append(f"- ({len(trades) - len(known)} trade(s) without a recorded return left out above)")
    return "\n".join(lines)


def _longest_losing_streak(returns: Sequence[float | None]) -> int:
    longest = current = 0
    for value in returns:
        if value is not None and value <= 0:
            current += 1
            longest = max(longest, current)
        elif value is not None:
            current = 0
    return longest


def _average_duration(trades: Sequence[Mapping[str, Any]]) -> str:
    seconds = [s for s in (_number(t.get("duration_seconds")) for t in trades) if s is not None]
    if seconds:
        return _human_seconds(sum(seconds) / len(seconds))
    bars = [b for b in (_number(t.get("duration_bars")) for t in trades) if b is not None]
    if not bars:
        bars = [
            exit_bar - entry_bar
            for entry_bar, exit_bar in ((_number(t.get("entry_bar")), _number(t.get("exit_bar"))) for t in trades)
            if entry_bar is not None and exit_bar is not None
        ]
    if bars:
        return f"{_fmt(sum(bars) / len(bars))} bars"
    return "n/a"


def _human_seconds(seconds: float) -> str:
    minutes = round(seconds / 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{mins}m" if mins or not (days or hours) else "",
    ]
    return " ".join(p for p in parts if p)


def _format_tried(tried: Sequence[str]) -> str:
    items = [" ".join(t.split()) for t in tried if t and t.strip()]
    if not items:
        return "Nothing yet: this is the first proposed change."
    shown = items[-_MAX_TRIED:]
    lines = [f"{i}. {_clip(item, _MAX_TRIED_CHARS)}" for i, item in enumerate(shown, start=len(items) - len(shown) + 1)]
    if len(shown) < len(items):
        lines.insert(0, f"({len(items) - len(shown)} earlier attempts not shown)")
    return "\n".join(lines)
