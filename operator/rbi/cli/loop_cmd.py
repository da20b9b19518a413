"""`rbi loop IDEAS`: the hands-free loop as a user drives it, with a live table and a summary."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rbi.cli.render import fmt
from rbi.engine import LocalExecutor
from rbi.errors import SpecError
from rbi.llm import LLMClient, LLMConfig
from rbi.loop import IdeaLoop, IdeaState, LoopSettings, LoopSummary, read_ideas
from rbi.loop.ideas import IdeasFormat
from rbi.loop.runner import DEFAULT_OPTIMIZATION

__all__ = ["NO_LLM_MESSAGE", "loop_file", "progress_table", "summary_view"]

NO_LLM_MESSAGE = ("no LLM is configured: set OPENAI_API_KEY (for api.openai.com) or OPENAI_BASE_URL "
                  "(for a local OpenAI-compatible server such as Ollama or vLLM); RBI_MODEL picks the model")
_STATUS_STYLE = {"succeeded": "green", "failed": "red", "running": "cyan", "pending": "dim"}


def _money(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def progress_table(states: list[IdeaState], *, objective: str) -> Table:
    """The live table: one row per idea with its stage, attempts and best figures."""
    table = Table(title=f"rbi loop: {len(states)} idea(s), objective {objective}", expand=False)
    for column in ("#", "idea", "strategy", "stage", "status", "fixes", "runs", "trades", "baseline → best",
                   "Δ", "tokens", "cost", "note"):
        table.add_column(column, overflow="fold", no_wrap=column in ("#", "stage", "status"))
    for number, s in enumerate(states, start=1):
        style = _STATUS_STYLE.get(s.status, "")
        status = f"[{style}]{s.status}{' (skipped)' if s.skipped else ''}[/]" if style else s.status
        figures = "—" if s.baseline is None and s.best is None else f"{fmt(s.baseline)} → {fmt(s.best)}"
        delta = "—" if s.improvement is None else f"{s.improvement:+.1%}"
        tokens = s.prompt_tokens + s.completion_tokens
        note = s.failure_class + ": " + s.message if s.failure_class else s.message
        table.add_row(str(number), s.title[:40], s.name or "—", s.stage, status, str(s.attempts), str(s.runs),
                      fmt(s.num_trades), figures, delta, str(tokens) if tokens else "—",
                      _money(s.cost) if s.cost else "—", note[:80])
    return table


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
                      f"{count} sandbox(es)[/]")
    objective = str(merged.get("objective", "sharpe_ratio"))
    with LocalExecutor(workers=count, unsafe=unsafe) as executor:
        live = Live(progress_table([], objective=objective), console=console, refresh_per_second=4,
                    transient=False) if not as_json else None
        lock = threading.Lock()

        def on_update(states: list[IdeaState]) -> None:
            if live is not None:
                with lock:
                    live.update(progress_table(states, objective=objective))

        loop = IdeaLoop(store=store, client=client, executor=executor, settings=settings, on_update=on_update)
        if live is not None:
            with live:
                summary = loop.run(ideas)
                live.update(progress_table(summary.ideas, objective=objective))
        else:
            summary = loop.run(ideas)
    if as_json:
        out.print(json.dumps(summary.to_json(), default=str), soft_wrap=True, highlight=False, markup=False)
    else:
        console.print(summary_view(summary))
    return summary
