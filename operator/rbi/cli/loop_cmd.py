"""`rbi loop IDEAS`: the hands-free loop as a user drives it, with a live table and a summary."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from rbi.cli.render import fmt
from rbi.cli.tables import EMPTY, Column, FitTable, interactive
from rbi.engine import LocalExecutor
from rbi.errors import SpecError
from rbi.llm import LLMClient, LLMConfig
from rbi.loop import IdeaLoop, IdeaState, LoopSettings, LoopSummary, read_ideas
from rbi.loop.ideas import IdeasFormat
from rbi.loop.runner import DEFAULT_OPTIMIZATION

__all__ = ["NO_LLM_MESSAGE", "StageLog", "loop_file", "progress_table", "summary_view"]

NO_LLM_MESSAGE = ("no LLM is configured: set OPENAI_API_KEY (for api.openai.com) or OPENAI_BASE_URL "
                  "(for a local OpenAI-compatible server such as Ollama or vLLM); RBI_MODEL picks the model")
_STATUS_STYLE = {"succeeded": "green", "failed": "red", "running": "cyan", "pending": "dim"}


def _money(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


# `drop`: in a narrow terminal the highest numbers are hidden first; what is left fits 80 columns.
_COLUMNS = (
    Column("#", justify="right", key=True, heading="#{}"), Column("idea", wrap=True, key=True),
    Column("strategy", drop=2),
    Column("stage"), Column("status"), Column("fixes", justify="right", drop=5),
    Column("runs", justify="right", drop=5), Column("trades", justify="right", drop=3),
    Column("baseline → best", drop=1), Column("Δ", justify="right", drop=2),
    Column("tokens", justify="right", drop=4), Column("cost", justify="right", drop=4),
    Column("note", wrap=True),
)


def _status(s: IdeaState) -> Text:
    return Text(s.status + (" (skipped)" if s.skipped else ""), style=_STATUS_STYLE.get(s.status, ""))


def _note(s: IdeaState) -> str:
    return s.failure_class + ": " + s.message if s.failure_class else s.message


def _figures(s: IdeaState) -> str:
    return EMPTY if s.baseline is None and s.best is None else f"{fmt(s.baseline)} → {fmt(s.best)}"


def progress_table(states: list[IdeaState], *, objective: str) -> FitTable:
    """The live table: one row per idea with its stage, attempts and best figures."""
    table = FitTable(_COLUMNS, title=f"rbi loop: {len(states)} idea(s), objective {objective}")
    for number, s in enumerate(states, start=1):
        tokens = s.prompt_tokens + s.completion_tokens
        table.add_row(str(number), s.title, s.name or EMPTY, s.stage, _status(s), str(s.attempts), str(s.runs),
                      fmt(s.num_trades), _figures(s), EMPTY if s.improvement is None else f"{s.improvement:+.1%}",
                      f"{tokens:,}" if tokens else EMPTY, _money(s.cost) if s.cost else EMPTY, _note(s))
    return table


class StageLog:
    """Without a terminal (a CI log, a pipe) nothing can redraw: one line per idea whenever its stage or status
    changes, never cut or wrapped, so a log reads top to bottom."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._seen: dict[str, tuple[str, str, bool]] = {}
        self._lock = threading.Lock()

    def line(self, number: int, total: int, s: IdeaState) -> Text:
        status = s.status + (", skipped" if s.skipped else "")
        text = Text.assemble(f"idea {number}/{total} ", (f"{s.stage} ", "bold"),
                             (f"({status})", _STATUS_STYLE.get(s.status, "")), f": {s.name or s.title}")
        if s.stage == "done" and (s.baseline is not None or s.best is not None):
            delta = "" if s.improvement is None else f" ({s.improvement:+.1%})"
            text.append(f"; {_figures(s)}{delta}")
        if note := _note(s):
            text.append(f"; {note}")
        return text

    def update(self, states: list[IdeaState]) -> None:
        with self._lock:
            for number, s in enumerate(states, start=1):
                seen = (s.stage, s.status, s.skipped)
                if self._seen.get(s.key) != seen:
                    self._seen[s.key] = seen
                    self.console.print(self.line(number, len(states), s), soft_wrap=True, highlight=False)


def summary_view(summary: LoopSummary) -> Group:
    data = summary.to_json()
    failures = ", ".join(f"{name} {count}" for name, count in sorted(summary.failures_by_class.items())) or "none"
    mean = data["mean_improvement"]
    lines = [
        Text.assemble(("succeeded: ", "bold"), f"{data['succeeded']} of {data['ideas']} in this run",
                      f"; {data['skipped']} processed before (skipped)" if data["skipped"] else ""),
        Text.assemble(("failures by class: ", "bold"), failures),
        Text.assemble(("improvement: ", "bold"),
                      "—" if mean is None else f"mean {mean:+.1%} out-of-sample {summary.objective} over "
                      f"{len(summary.improvements)} optimised idea(s)"),
        Text.assemble(("tokens: ", "bold"), f"{summary.prompt_tokens:,} prompt + {summary.completion_tokens:,} "
                      f"completion; ", ("cost: ", "bold"), _money(summary.cost), f"; time {summary.seconds:.1f} s"),
    ]
    if summary.interrupted:
        lines.append(Text("interrupted: run the same command again to resume where it stopped", style="yellow"))
    if summary.aborted:
        lines.append(Text(f"stopped early: {summary.aborted}", style="red"))
    return Group(*lines)


def loop_file(path: Path, *, store: Any, fmt_: IdeasFormat, concurrency: int, workers: int | None,
              llm_config: Path | None, settings_overrides: dict[str, Any], optimization: dict[str, Any],
              as_json: bool, unsafe: bool, console: Console, out: Console) -> LoopSummary:
    ideas = read_ideas(path, fmt=fmt_)
    config = LLMConfig.load(path=llm_config)
    if config is None:
        raise SpecError(NO_LLM_MESSAGE)
    client = LLMClient(config)
    merged = {**DEFAULT_OPTIMIZATION, **{k: v for k, v in optimization.items() if v is not None}}
    settings = LoopSettings(concurrency=max(1, concurrency), optimization=merged, **settings_overrides)
    count = workers or min(max(1, concurrency), os.cpu_count() or 1)
    if not as_json:
        console.print(f"[dim]{len(ideas)} idea(s) from {path}; model {config.model} at "
                      f"{config.base_url or 'api.openai.com'}; {settings.concurrency} at a time, "
                      f"{count} sandbox(es)[/]", soft_wrap=not interactive(console))  # a log line stays whole
    objective = str(merged.get("objective", "sharpe_ratio"))
    with LocalExecutor(workers=count, unsafe=unsafe) as executor:
        # A terminal gets a table that redraws in place; anything else a line per stage change (StageLog).
        live = Live(progress_table([], objective=objective), console=console, refresh_per_second=4,
                    transient=True) if not as_json and interactive(console) else None
        log = StageLog(console) if not as_json and live is None else None
        lock = threading.Lock()

        def on_update(states: list[IdeaState]) -> None:
            if live is not None:
                with lock:
                    live.update(progress_table(states, objective=objective))
            elif log is not None:
                log.update(states)

        loop = IdeaLoop(store=store, client=client, executor=executor, settings=settings, on_update=on_update)
        if live is not None:
            with live:
                summary = loop.run(ideas)
        else:
            summary = loop.run(ideas)
    if as_json:
        out.print(json.dumps(summary.to_json(), default=str), soft_wrap=True, highlight=False, markup=False)
    else:
        # Printed once, whole: a live view taller than the terminal is cropped while it runs.
        console.print(progress_table(summary.ideas, objective=objective))
        console.print(summary_view(summary))
    return summary
