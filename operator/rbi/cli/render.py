"""Rich rendering of outcomes and stored runs. Pure functions returning renderables."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from rbi.cli.tables import Column, FitTable
from rbi.outcome import RunOutcome, Status

HEADLINE_STATS: tuple[tuple[str, str], ...] = (
    ("return_pct", "Return %"),
    ("buy_hold_return_pct", "Buy & hold %"),
    ("sharpe_ratio", "Sharpe"),
    ("sortino_ratio", "Sortino"),
    ("calmar_ratio", "Calmar"),
    ("max_drawdown_pct", "Max drawdown %"),
    ("win_rate_pct", "Win rate %"),
    ("num_trades", "Trades"),
    ("profit_factor", "Profit factor"),
    ("expectancy_pct", "Expectancy %"),
    ("sqn", "SQN"),
    ("exposure_time_pct", "Exposure %"),
)
_STATUS_STYLE = {Status.SUCCEEDED: "bold green", Status.NO_TRADES: "bold yellow", Status.FAILED: "bold red"}


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.4g}"
    return str(value)


def outcome_panel(name: str, outcome: RunOutcome) -> Panel:
    title = Text.assemble((f"{name} v{outcome.version}  ", "bold"),
                          (str(outcome.status), _STATUS_STYLE.get(outcome.status, "")))
    parts: list[Any] = []
    if outcome.error is not None:
        where = f" (line {outcome.error.line})" if outcome.error.line else ""
        parts.append(Text.assemble((f"{outcome.error.type}{where}: ", "bold red"), outcome.error.message))
        if outcome.stderr_tail.strip():
            tail = "\n".join(outcome.stderr_tail.strip().splitlines()[-12:])
            parts.append(Panel(tail, title="stderr (tail)", border_style="dim"))
    else:
        table = FitTable([Column("statistic", style="cyan", key=True), Column("value", justify="right")],
                         show_header=False)
        for key, label in HEADLINE_STATS:
            if key in outcome.stats:
                table.add_row(label, fmt(outcome.stats[key]))
        parts.append(table)
        if outcome.status is Status.NO_TRADES:
            parts.append(Text(f"no trades: {outcome.no_trades_reason}" if outcome.no_trades_reason else
                              "The strategy never traded: check entry conditions, indicator warm-up, "
                              "and position size (cash too small for one whole unit?).", style="yellow"))
    for applied in outcome.fixes:
        where = f" (line {applied['line']})" if applied.get("line") else ""
        parts.append(Text(f"fixed {applied['fixer']}{where}: {applied['description']}", style="cyan"))
    memory_mib = (outcome.peak_memory_bytes or 0) / 2**20
    footer = (f"{outcome.execution_time:.2f} s · peak memory {memory_mib:.0f} MiB · mode {outcome.mode}"
              f" · code {outcome.code_hash[:12]}")
    parts.append(Text(footer, style="dim"))
    return Panel(Group(*parts), title=title, title_align="left")


def _short(value: Any) -> str:
    """Numbers for a narrow table: one decimal, no thousands noise below 10k."""
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return fmt(value)


def runs_table(records: list[Any], *, title: str = "Stored runs") -> FitTable:
    """The stored runs; a narrow terminal hides the timestamp first, then the version and drawdown."""
    table = FitTable([
        Column("id", justify="right", key=True, heading="#{}"), Column("strategy", key=True),
        Column("v", justify="right", drop=2),
        Column("status", key=True), Column("ret %", justify="right"), Column("sharpe", justify="right"),
        Column("max dd %", justify="right", drop=1), Column("trades", justify="right"),
        Column("error", wrap=True), Column("when (UTC)", drop=3),
    ], title=title)
    for record in records:
        style = {"succeeded": "green", "no_trades": "yellow", "failed": "red"}.get(record.status, "")
        error = ""
        if record.error_type:
            error = record.error_type + (f"@{record.error_line}" if record.error_line else "")
        table.add_row(str(record.id), record.strategy_name, str(record.version), Text(record.status, style=style),
                      _short(record.total_return), _short(record.sharpe_ratio), _short(record.max_drawdown),
                      fmt(record.num_trades), error, record.created_at.strftime("%Y-%m-%d %H:%M"))
    return table
