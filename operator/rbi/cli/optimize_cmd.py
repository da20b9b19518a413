"""`rbi optimize`, `rbi lineage` and `rbi report`: the optimisation loop as a user drives it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from rbi.cli.render import fmt
from rbi.cli.tables import Column, FitTable
from rbi.engine import LocalExecutor, PreparationFailed, prepare
from rbi.errors import SpecError
from rbi.llm import LLMClient, LLMConfig
from rbi.optimize.loop import OptimizationResult, Optimizer
from rbi.optimize.loop import Progress as LoopProgress
from rbi.optimize.settings import parse_settings
from rbi.prepare.data import load_ohlcv
from rbi.spec import load_spec

FIGURES = ("return_pct", "sharpe_ratio", "max_drawdown_pct", "win_rate_pct", "num_trades", "profit_factor")


def optimize_path(path: Path, *, overrides: dict[str, Any], data: Path | None, workers: int | None, store: Any,
                  as_json: bool, unsafe: bool, console: Console, out: Console,
                  report: Path | None = None) -> OptimizationResult:
    spec = load_spec(path)
    settings = parse_settings(spec.optimization, overrides=overrides)
    try:
        prepared = prepare(spec, data_override=data.resolve() if data else None)
    except PreparationFailed as failure:
        assert failure.outcome.error is not None
        raise SpecError(f"the strategy cannot run, so it cannot be optimised: {failure.outcome.error.type}: "
                        f"{failure.outcome.error.message}") from None
    if prepared.mode != "class":
        raise SpecError("optimisation needs class mode (a Strategy subclass whose parameters the runner sets); "
                        "this code is a whole script")
    frame = load_ohlcv(prepared.data_file)
    index_times = [t.isoformat() if hasattr(t, "isoformat") else str(t) for t in frame.index]
    count = workers or os.cpu_count() or 1
    llm_config = LLMConfig.from_env()
    llm = LLMClient(llm_config) if llm_config else None
    if llm is None:
        console.print("[dim]No LLM endpoint configured (OPENAI_BASE_URL / OPENAI_API_KEY): parameter search only.[/]")
    with LocalExecutor(workers=count, unsafe=unsafe) as executor:
        progress = Progress(TextColumn("[bold]iteration {task.fields[iteration]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("best {task.fields[best]}"),
                            TextColumn("{task.fields[rate]} trials/s"), TimeElapsedColumn(),
                            console=console, transient=as_json)
        with progress:
            task = progress.add_task("trials", total=settings.max_trials, iteration=1, best="—", rate="—")

            def on_progress(update: LoopProgress) -> None:
                progress.update(task, completed=update.trials_done, total=update.trials_planned,
                                iteration=update.iteration, best=fmt(update.best_value),
                                rate=f"{update.trials_per_second:.1f}")

            optimizer = Optimizer(prepared, settings, executor=executor, store=store, n_rows=len(frame),
                                  index_times=index_times, on_progress=on_progress, frame=frame, llm=llm)
            result = optimizer.optimize()
        if report is not None and store is not None:
            from rbi.optimize.reporting import build_report

            with console.status("writing the report"):
                written = build_report(store, prepared.name, run=prepared, executor=executor, out=report,
                                       index_times=index_times, oos_start_row=result.folds[0].test.start)
            console.print(f"report: {written}")
    if as_json:
        out.print(json.dumps(result.to_json(), default=str), soft_wrap=True, highlight=False, markup=False)
    else:
        out.print(result_table(result))
    return result


def _params_text(params: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={v}" for k, v in (params or {}).items()) or "—"


def result_table(result: OptimizationResult) -> Group:
    table = FitTable([
        Column("it", justify="right", key=True, heading="iteration {}"),
        Column("trials ok", justify="right", drop=3),
        Column("best in-sample params", wrap=True), Column("IS", justify="right", drop=2),
        Column("OOS", justify="right"), Column("Δ OOS", justify="right"),
        Column("p / needed", justify="right", drop=4), Column("look-ahead"), Column("child"),
        Column("DSR", justify="right", drop=1), Column("deployable"),
    ], title=f"{result.strategy_name}: {result.objective} ({'max' if result.maximize else 'min'}), "
             f"{result.trials} trials at {result.trials_per_second:.1f}/s ({result.distinct_trials} distinct "
             "in the study)")
    for it in result.iterations:
        look = it.guards.get("lookahead_suspected")
        look_text = Text("—") if look is None else (Text("SUSPECTED", style="red") if look else Text("clean"))
        test = it.guards.get("promotion_test") or {}
        p_text = "—" if not test else f"{test['p_value']:.4f} / {test['alpha_adjusted']:.4f}"
        deployable = Text("—") if it.deployable is None else (
            Text("yes", style="green") if it.deployable else Text("no"))
        table.add_row(str(it.iteration), f"{it.feasible_trials}/{it.trials}", _params_text(it.best_params),
                      fmt(it.best_in_sample), fmt(it.out_of_sample),
                      "—" if it.improvement is None else f"{it.improvement:+.1%}", p_text, look_text,
                      Text(f"v{it.child_version}", style="green") if it.promoted else Text("no", style="red"),
                      fmt(it.guards.get("deflated_sharpe")), deployable)
    notes: list[Any] = [Text(f"iteration {it.iteration}: {it.reason}", style="green" if it.promoted else "yellow")
                        for it in result.iterations if it.reason]
    notes += _fold_and_market_tables(result)
    best = result.best
    summary = Text.assemble(
        ("best: ", "bold"), f"v{best.version} {_params_text(best.params)} — out-of-sample {result.objective} "
        f"{fmt(best.oos_score)} (parent v{result.parent.version}: {fmt(result.parent.oos_score)})\n",
        ("stopped: ", "bold"), f"{result.stop_reason}\n", ("LLM refinement: ", "bold"), result.llm)
    return Group(table, *notes, summary)


def _fold_and_market_tables(result: OptimizationResult) -> list[Table]:
    """Walk-forward's per-fold parameters and figures, and the cross-market check, per iteration."""
    tables = []
    for it in result.iterations:
        if len(it.folds) > 1:
            folds = Table(title=f"iteration {it.iteration}: walk-forward, each fold searched on its own train window")
            for column in ("fold", "train rows", "test rows", "params", "IS", "OOS", "current OOS"):
                folds.add_column(column, overflow="fold")
            for row in it.folds:
                folds.add_row(str(row["fold"]), "{}–{}".format(*row["train"]), "{}–{}".format(*row["test"]),
                              _params_text(row.get("params")), fmt(row.get("in_sample")),
                              fmt(row.get("out_of_sample")), fmt(row.get("champion_out_of_sample")))
            tables.append(folds)
        if it.markets:
            markets = Table(title=f"iteration {it.iteration}: other markets (whole dataset, never tuned on)")
            for column in ("dataset", "current", "candidate", "Δ"):
                markets.add_column(column)
            for name, row in it.markets.items():
                delta = row.get("improvement")
                markets.add_row(name, fmt(row.get("champion")), fmt(row.get("candidate")),
                                "—" if delta is None else f"{delta:+.1%}")
            tables.append(markets)
    return tables


def lineage_tree(store: Any, name: str) -> Tree:
    versions = store.versions(name)
    if not versions:
        raise LookupError(f"no stored strategy named {name!r}; see `rbi results`")
    edges = {e.child_version: e for e in store.lineage(name)}
    # Which model and prompt wrote each version (the LLM agents' calls, rbi loop).
    authors: dict[int, list[str]] = {}
    for call in store.llm_calls(strategy_name=name) if hasattr(store, "llm_calls") else []:
        if call.version is not None and call.outcome == "ok":
            authors.setdefault(call.version, []).append(
                f"{call.agent}: {call.model} {call.prompt_name}@v{call.prompt_version}")
    nodes: dict[int, Tree] = {}
    root = Tree(f"[bold]{name}[/]")
    for v in versions:
        run = v.latest_run
        edge = edges.get(v.version)
        # One fact per line: a narrow terminal wraps each under its node instead of one long run-on label.
        label = Text.assemble((f"v{v.version} ", "bold"), (v.source, "dim"), f" {json.dumps(v.params)}")
        if run is not None:
            label.append(f"\nsharpe {fmt(run.sharpe_ratio)} · return {fmt(run.total_return)}%"
                         f" · trades {fmt(run.num_trades)}")
        if edge is not None:
            delta = "—" if edge.performance_delta is None else f"{edge.performance_delta:+.1%}"
            label.append(f"\nΔ {delta}", style="green")
            label.append(f" ({edge.optimization_type}: {edge.changes_made})")
            details = edge.details or {}
            if "deployable" in details:
                dsr = (details.get("guards") or {}).get("deflated_sharpe")
                label.append(f"\ndeployable: {'yes' if details['deployable'] else 'no'} (deflated Sharpe {fmt(dsr)})",
                             style="green" if details["deployable"] else "yellow")
        if v.version in authors:
            label.append(f"\nwritten by {'; '.join(authors[v.version])}", style="dim")
        parent = nodes.get(v.parent_version) if v.parent_version else None
        nodes[v.version] = (parent or root).add(label)
    return root


def report_for(store: Any, name: str, *, path: Path | None, data: Path | None, out_file: Path, unsafe: bool,
               console: Console) -> Path:
    """`rbi report NAME`: rebuild the report of a stored strategy (its data from --data or the spec)."""
    from rbi.optimize.reporting import build_report
    from rbi.spec import StrategySpec

    versions = store.versions(name)
    if not versions:
        raise LookupError(f"no stored strategy named {name!r}; see `rbi results`")
    spec = load_spec(path) if path else StrategySpec(name=name, code=versions[0].code, mode="class")
    prepared = prepare(spec, data_override=data.resolve() if data else None)
    frame = load_ohlcv(prepared.data_file)
    index_times = [t.isoformat() if hasattr(t, "isoformat") else str(t) for t in frame.index]
    with LocalExecutor(workers=1, unsafe=unsafe) as executor, console.status("running the versions for the charts"):
        return build_report(store, name, run=prepared, executor=executor, out=out_file, index_times=index_times)
