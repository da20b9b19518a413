"""The `rbi` command. Thin: parse flags, call the engine and the store, render."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from rbi import __version__
from rbi.errors import RbiError, SandboxUnavailable, SpecError, StoreError
from rbi.outcome import RunOutcome, Status

EXIT_FAILED_RUN = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_SANDBOX = 4

console = Console(stderr=True)
out = Console()


def _store(db: str | None) -> Any:
    from rbi.store import ResultStore

    store = ResultStore(db or ResultStore.default_url())
    store.migrate()
    return store


def _die(message: str, code: int) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    sys.exit(code)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Every error rbi knows about becomes one line and an exit code, never a traceback."""
    try:
        yield
    except StoreError as exc:
        _die(f"results store: {exc}", EXIT_STORE)
    except SandboxUnavailable as exc:
        _die(str(exc), EXIT_SANDBOX)
    except (LookupError, RbiError) as exc:  # SpecError, DataError, PreparationFailed's cousins
        _die(str(exc), EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rbi")
def cli() -> None:
    """Run LLM-generated backtesting.py strategies in a sandbox, store every statistic, improve them."""


def _parse_param(values: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise SpecError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="OHLCV CSV or Parquet file (overrides spec.data).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Set a strategy parameter.")
@click.option("--mode", type=click.Choice(["auto", "class", "script"]), default=None, help="Force a mode.")
@click.option("--cpu", help="CPU limit, e.g. 1 or 500m.")
@click.option("--memory", help="Memory limit, e.g. 2Gi.")
@click.option("--disk", help="Scratch disk limit, e.g. 100M.")
@click.option("--timeout", type=float, help="Wall-clock limit in seconds.")
@click.option("--workers", type=int, default=None, help="Parallel sandboxes (default: one per path, up to CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run.")
@click.option("--db", envvar="RBI_DB_URL", help="SQLAlchemy URL of the results store.")
@click.option("--no-store", is_flag=True, help="Do not write results to the store.")
@click.option("--skip-static-checks", is_flag=True, help="Skip the AST checks (the OS sandbox still applies).")
@click.option("--unsafe-no-sandbox", is_flag=True, help="Run without isolation where the sandbox is missing.")
@click.option("--fix", is_flag=True, help="Apply deterministic repairs of known generated-code failures.")
def run(paths: tuple[Path, ...], data: Path | None, params: tuple[str, ...], mode: str | None, cpu: str | None,
        memory: str | None, disk: str | None, timeout: float | None, workers: int | None, as_json: bool,
        db: str | None, no_store: bool, skip_static_checks: bool, unsafe_no_sandbox: bool, fix: bool) -> None:
    """Run strategies: BacktestStrategy YAML, a Python file, or a raw LLM answer."""
    from rbi.cli.commands import run_paths

    with _clean_errors():
        outcomes = run_paths(
            paths, data=data, params=_parse_param(params), mode=mode,
            limit_overrides={"cpu": cpu, "memory": memory, "disk": disk, "timeout": timeout},
            workers=workers, store=None if no_store else _store(db), as_json=as_json,
            static_checks=not skip_static_checks, unsafe=unsafe_no_sandbox, console=console, out=out, fix=fix,
        )
    if any(o.status is Status.FAILED for o in outcomes):
        sys.exit(EXIT_FAILED_RUN)


@cli.command()
@click.option("--name", help="Only this strategy.")
@click.option("--status", type=click.Choice(["succeeded", "no_trades", "failed"]))
@click.option("--best-by", help="Order by a statistic, best first (e.g. sharpe_ratio, return_pct).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--db", envvar="RBI_DB_URL")
def results(name: str | None, status: str | None, best_by: str | None, limit: int, as_json: bool,
            db: str | None) -> None:
    """List stored runs."""
    from rbi.cli.render import runs_table

    try:
        records = _store(db).list_runs(name=name, status=status, best_by=best_by, limit=limit)
    except StoreError as exc:
        _die(f"results store: {exc}", EXIT_STORE)
    except ValueError as exc:
        _die(str(exc), EXIT_USAGE)
    if as_json:
        out.print_json(data=[_record_json(r) for r in records])
    else:
        out.print(runs_table(records))


def _record_json(record: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(record)
    for key, value in list(data.items()):
        if hasattr(value, "isoformat"):
            data[key] = value.isoformat()
    return data


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.option("--db", envvar="RBI_DB_URL")
def show(name: str, as_json: bool, db: str | None) -> None:
    """Show one strategy's versions and their latest figures."""
    from rbi.cli.commands import show_strategy

    with _clean_errors():
        show_strategy(_store(db), name, as_json=as_json, out=out)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(["grid", "random", "tpe", "cmaes", "nsga2"]))
@click.option("--objective", "objectives", multiple=True, help="Statistic to maximise (prefix '-' to minimise).")
@click.option("--max-trials", type=int)
@click.option("--max-iterations", type=int)
@click.option("--min-improvement", type=float)
@click.option("--seed", type=int)
@click.option("--data", type=click.Path(path_type=Path))
@click.option("--workers", type=int, default=None, help="Parallel sandboxes (default: CPU count).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--db", envvar="RBI_DB_URL")
@click.option("--unsafe-no-sandbox", is_flag=True)
@click.option("--report", type=click.Path(path_type=Path), help="Also write the HTML report here.")
def optimize(path: Path, method: str | None, objectives: tuple[str, ...], max_trials: int | None,
             max_iterations: int | None, min_improvement: float | None, seed: int | None, data: Path | None,
             workers: int | None, as_json: bool, db: str | None, unsafe_no_sandbox: bool,
             report: Path | None) -> None:
    """Improve a strategy's parameters; promote only what holds out-of-sample."""
    from rbi.cli.optimize_cmd import optimize_path

    overrides = {"method": method, "objective": list(objectives) or None, "maxTrials": max_trials,
                 "maxIterations": max_iterations, "minImprovement": min_improvement, "seed": seed}
    with _clean_errors():
        optimize_path(path, overrides=overrides, data=data, workers=workers, store=_store(db), as_json=as_json,
                      unsafe=unsafe_no_sandbox, console=console, out=out, report=report)


@cli.command()
@click.argument("ideas", type=click.Path(path_type=Path))
@click.option("--concurrency", type=int, default=2, show_default=True, help="Ideas processed at once.")
@click.option("--workers", type=int, default=None, help="Parallel sandboxes (default: concurrency, up to CPUs).")
@click.option("--format", "ideas_format", type=click.Choice(["auto", "lines", "paragraphs"]), default="auto",
              show_default=True, help="One idea per line, or paragraphs separated by blank lines.")
@click.option("--llm-config", type=click.Path(path_type=Path), envvar="RBI_LLM_CONFIG",
              help="YAML: model per agent, temperature, max tokens, prices.")
@click.option("--max-debug-attempts", type=int, default=3, show_default=True, help="Model attempts per idea.")
@click.option("--objective", help="Statistic to optimise (default sharpe_ratio; prefix '-' to minimise).")
@click.option("--method", type=click.Choice(["grid", "random", "tpe", "cmaes", "nsga2"]))
@click.option("--max-trials", type=int)
@click.option("--max-iterations", type=int)
@click.option("--no-optimize", is_flag=True, help="Stop after the first good run.")
@click.option("--refine", is_flag=True, help="Let the optimizer also ask the model for code changes.")
@click.option("--retry-failed", is_flag=True, help="Process ideas that failed before again.")
@click.option("--limit", type=int, help="Stop after this many ideas (the rest follow on the next run).")
@click.option("--data", type=click.Path(path_type=Path), help="OHLCV CSV or Parquet (default: bundled BTC-USD-15m).")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port while running.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--db", envvar="RBI_DB_URL")
@click.option("--unsafe-no-sandbox", is_flag=True)
def loop(ideas: Path, concurrency: int, workers: int | None, ideas_format: str, llm_config: Path | None,
         max_debug_attempts: int, objective: str | None, method: str | None, max_trials: int | None,
         max_iterations: int | None, no_optimize: bool, refine: bool, retry_failed: bool, limit: int | None,
         data: Path | None, metrics_port: int | None, as_json: bool, db: str | None, unsafe_no_sandbox: bool) -> None:
    """Ideas file → research → code → package → run ⇄ debug → optimise; resumable, with a live table."""
    from rbi.cli.loop_cmd import loop_file

    with _clean_errors():
        if metrics_port is not None:
            from rbi.metrics import serve

            serve(metrics_port, addr="127.0.0.1")
        summary = loop_file(
            ideas, store=_store(db), fmt_=ideas_format, concurrency=concurrency,  # type: ignore[arg-type]
            workers=workers, llm_config=llm_config, as_json=as_json, unsafe=unsafe_no_sandbox, console=console,
            out=out, optimization={"objective": objective, "method": method, "maxTrials": max_trials,
                                   "maxIterations": max_iterations},
            settings_overrides={"max_debug_attempts": max_debug_attempts, "optimize": not no_optimize,
                                "refine": refine, "retry_failed": retry_failed, "max_ideas": limit,
                                "data": data.resolve() if data else None})
    if summary.interrupted:
        sys.exit(130)
    if summary.aborted or summary.failed:
        sys.exit(EXIT_FAILED_RUN)


@cli.command()
@click.argument("name")
@click.option("--db", envvar="RBI_DB_URL")
def lineage(name: str, db: str | None) -> None:
    """Print a strategy's version tree with each version's figures and deltas."""
    from rbi.cli.optimize_cmd import lineage_tree

    with _clean_errors():
        out.print(lineage_tree(_store(db), name))


@cli.command()
@click.argument("name")
@click.option("--out", "out_file", type=click.Path(path_type=Path), help="HTML file (default: NAME-report.html).")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path), help="The strategy YAML (for its dataset).")
@click.option("--data", type=click.Path(path_type=Path))
@click.option("--db", envvar="RBI_DB_URL")
@click.option("--unsafe-no-sandbox", is_flag=True)
def report(name: str, out_file: Path | None, spec_path: Path | None, data: Path | None, db: str | None,
           unsafe_no_sandbox: bool) -> None:
    """Write one HTML file with the equity curves, drawdowns, trials, heatmap and lineage."""
    from rbi.cli.optimize_cmd import report_for
    from rbi.engine import PreparationFailed

    with _clean_errors():
        try:
            written = report_for(_store(db), name, path=spec_path, data=data,
                                 out_file=out_file or Path(f"{name}-report.html"), unsafe=unsafe_no_sandbox,
                                 console=console)
        except PreparationFailed as exc:
            _die(f"the strategy cannot run: {exc}", EXIT_USAGE)
    out.print(f"report written to {written}")


@cli.command("operator")
@click.option("--namespace", "namespaces", multiple=True, help="Namespace to serve (repeatable).")
@click.option("--all-namespaces", is_flag=True, help="Serve every namespace.")
@click.option("--metrics-port", type=int, envvar="RBI_METRICS_PORT", default=9090, show_default=True)
@click.option("--liveness-port", type=int, envvar="RBI_LIVENESS_PORT", default=8080, show_default=True,
              help="kopf's liveness endpoint: http://0.0.0.0:PORT/healthz")
@click.option("--max-active-jobs", type=int, envvar="RBI_MAX_ACTIVE_JOBS", help="Jobs at once (default 10).")
@click.option("--sandbox-image", envvar="RBI_SANDBOX_IMAGE")
@click.option("--runtime-class", envvar="RBI_RUNTIME_CLASS", help="e.g. gvisor or kata")
@click.option("--dataset-pvc", envvar="RBI_DATASET_PVC", help="PersistentVolumeClaim with datasets, at /data")
@click.option("--db", envvar="RBI_DB_URL", help="Results database URL (default: SQLite under RBI_HOME).")
@click.option("--job-ttl-seconds", type=int, envvar="RBI_JOB_TTL_SECONDS")
@click.option("-v", "--verbose", is_flag=True)
def operator_command(namespaces: tuple[str, ...], all_namespaces: bool, metrics_port: int, liveness_port: int,
                     max_active_jobs: int | None, sandbox_image: str | None, runtime_class: str | None,
                     dataset_pvc: str | None, db: str | None, job_ttl_seconds: int | None, verbose: bool) -> None:
    """Run the Kubernetes operator for BacktestStrategy resources (in-cluster or with a kubeconfig)."""
    from rbi.cli.operator_cmd import operator_main

    try:
        operator_main(namespaces=namespaces, all_namespaces=all_namespaces, metrics_port=metrics_port,
                      liveness_port=liveness_port, max_active_jobs=max_active_jobs, sandbox_image=sandbox_image,
                      runtime_class=runtime_class, dataset_pvc=dataset_pvc, db=db, job_ttl_seconds=job_ttl_seconds,
                      verbose=verbose)
    except ValueError as exc:
        _die(str(exc), EXIT_USAGE)


@cli.group()
def sandbox() -> None:
    """Inspect the local sandbox."""


@sandbox.command("check")
@click.option("--json", "as_json", is_flag=True)
def sandbox_check(as_json: bool) -> None:
    """Report which isolation primitives this machine offers and which the sandbox uses."""
    from rbi.cli.commands import sandbox_report

    ok = sandbox_report(as_json=as_json, out=out)
    sys.exit(0 if ok else EXIT_SANDBOX)


def main() -> None:
    cli()


__all__ = ["RunOutcome", "cli", "main"]
