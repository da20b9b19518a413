"""What the CLI commands do, apart from flag parsing: kept here so they are testable."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from rbi.cli.render import fmt, outcome_panel
from rbi.cli.tables import Column, FitTable
from rbi.engine import LocalExecutor, PreparationFailed, PreparedRun, execute_with_fixes, prepare
from rbi.errors import SpecError
from rbi.outcome import RunOutcome
from rbi.spec import StrategySpec, load_spec


def _spec_for(path: Path, *, mode: str | None, params: dict[str, Any], limit_overrides: dict[str, Any]) -> StrategySpec:
    spec = load_spec(path)
    try:
        limits = spec.limits.override(**limit_overrides)
    except ValueError as exc:
        raise SpecError(f"limit flags: {exc}") from None
    return replace(spec, mode=mode or spec.mode, params={**spec.params, **params}, limits=limits)


def _store_outcome(store: Any, spec: StrategySpec, outcome: RunOutcome, prepared: PreparedRun | None,
                   code: str) -> int | None:
    if store is None:
        return None
    version = store.register_version(spec.name, code=code, params=spec.params,
                                     source=spec.source)
    outcome.version = version
    return int(store.record_run(spec.name, outcome, version=version,
                                dataset_hash=prepared.dataset_hash if prepared else None,
                                dataset_name=prepared.dataset_name if prepared else None))


def run_paths(paths: tuple[Path, ...], *, data: Path | None, params: dict[str, Any], mode: str | None,
              limit_overrides: dict[str, Any], workers: int | None, store: Any, as_json: bool,
              static_checks: bool, unsafe: bool, console: Console, out: Console,
              fix: bool = False) -> list[RunOutcome]:
    specs = [_spec_for(p, mode=mode, params=params, limit_overrides=limit_overrides) for p in paths]
    prepared: list[PreparedRun | PreparationFailed] = []
    for spec in specs:
        try:
            prepared.append(prepare(spec, data_override=data.resolve() if data else None,
                                    static_checks=static_checks))
        except PreparationFailed as failure:
            prepared.append(failure)
    runnable = [p for p in prepared if isinstance(p, PreparedRun)]
    count = workers or min(len(runnable), os.cpu_count() or 1) or 1
    outcomes: list[RunOutcome] = []
    executor = LocalExecutor(workers=count, unsafe=unsafe)
    try:
        results: dict[int, RunOutcome] = {}
        codes: dict[int, str] = {}
        if runnable:
            label = f"running {len(runnable)} strateg{'y' if len(runnable) == 1 else 'ies'} in the sandbox"
            with console.status(label, spinner="dots"):
                if fix:
                    for job in runnable:
                        results[id(job)], fixed = execute_with_fixes(executor, job)
                        codes[id(job)] = fixed.code
                else:
                    for job, finished in zip(runnable, executor.execute_many(runnable), strict=True):
                        results[id(job)] = finished
        for spec, item in zip(specs, prepared, strict=True):
            ready = item if isinstance(item, PreparedRun) else None
            if isinstance(item, PreparedRun):
                # With --fix, the version stored is the code that actually ran.
                outcome, code = results[id(item)], codes.get(id(item), item.code)
            else:
                outcome, code = item.outcome, spec.code
            run_id = _store_outcome(store, spec, outcome, ready, code)
            outcomes.append(outcome)
            if as_json:
                payload = outcome.to_json()
                payload.update({"name": spec.name, "run_id": run_id})
                out.print(json.dumps(payload), soft_wrap=True, highlight=False, markup=False)
            else:
                out.print(outcome_panel(spec.name, outcome))
    finally:
        executor.close()
    return outcomes


def show_strategy(store: Any, name: str, *, as_json: bool, out: Console) -> None:
    versions = store.versions(name)
    if not versions:
        raise LookupError(f"no stored strategy named {name!r}; see `rbi results`")
    if as_json:
        out.print_json(data=[{
            "version": v.version, "code_hash": v.code_hash, "params": v.params, "parent_version": v.parent_version,
            "source": v.source, "created_at": v.created_at.isoformat(),
            "latest_run": None if v.latest_run is None else {
                "id": v.latest_run.id, "status": v.latest_run.status, "stats": v.latest_run.stats,
                "error_type": v.latest_run.error_type, "error_message": v.latest_run.error_message},
        } for v in versions])
        return
    table = FitTable([
        Column("version", justify="right", key=True), Column("parent", justify="right", drop=2),
        Column("source", drop=3), Column("params", wrap=True), Column("status", key=True),
        Column("return %", justify="right"), Column("sharpe", justify="right"),
        Column("max dd %", justify="right", drop=1), Column("trades", justify="right"), Column("code", drop=4),
    ], title=f"{name}: versions")
    for v in versions:
        run = v.latest_run
        table.add_row(f"v{v.version}", fmt(v.parent_version), v.source, json.dumps(v.params),
                      run.status if run else "—", fmt(run.total_return if run else None),
                      fmt(run.sharpe_ratio if run else None), fmt(run.max_drawdown if run else None),
                      fmt(run.num_trades if run else None), v.code_hash[:12])
    out.print(table)
    latest = versions[-1].latest_run
    if latest is not None and latest.stats:
        stats = FitTable([Column("statistic", style="cyan", key=True), Column("value", justify="right")],
                         title=f"{name} v{versions[-1].version}: all statistics", show_header=False)
        for key, value in latest.stats.items():
            stats.add_row(key, fmt(value))
        out.print()
        out.print(stats)


def sandbox_report(*, as_json: bool, out: Console) -> bool:
    from rbi.sandbox.probe import isolation_problem, run_checks

    checks = run_checks()
    problem = isolation_problem(checks)
    if as_json:
        out.print_json(data={"ok": problem is None, "problem": problem, "checks": [
            {"name": c.name, "available": c.available, "required": c.required, "used": c.available,
             "detail": c.detail} for c in checks]})
        return problem is None
    table = FitTable([Column("primitive", wrap=True, key=True), Column("available"), Column("required"),
                      Column("used", drop=1), Column("detail", wrap=True)], title="rbi sandbox check")
    yes = Text("yes", style="green")
    for c in checks:
        mark = yes if c.available else Text("no", style="red")
        table.add_row(c.name, mark, "yes" if c.required else "no", "yes" if c.available else "no", c.detail)
    table.add_row("wall-clock kill of the process tree", yes, "yes", "yes", "PID namespace + SIGKILL")
    table.add_row("output caps, scrubbed environment", yes, "yes", "yes", "always")
    out.print(table)
    out.print("[bold green]The sandbox is ready.[/]" if problem is None else f"[bold red]{problem}[/]")
    return problem is None
