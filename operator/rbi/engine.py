"""The local engine: spec → prepare → validate → execute in the sandbox → outcome.

It is the one place that strings the stages together; the CLI, the optimizer
and the operator's local mode all call it instead of repeating the steps.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rbi import metrics
from rbi.classify import classify_report
from rbi.datasets import bundled_dataset
from rbi.errors import DataError, ExtractionError, SandboxUnavailable
from rbi.integrity import verifier
from rbi.outcome import FailureClass, RunError, RunOutcome
from rbi.prepare.data import dataset_hash, materialize_csv
from rbi.prepare.extract import extract_code, input_line
from rbi.prepare.inspect_code import backtest_options, check_code, detect_mode
from rbi.sandbox.filesystem import DATA_DIR
from rbi.sandbox.limits import SandboxLimits
from rbi.sandbox.pool import WorkerPool
from rbi.spec import StrategySpec


def rbi_home() -> Path:
    return Path(os.environ.get("RBI_HOME") or Path.home() / ".rbi")


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """Everything a worker needs for one run, already checked on the host."""

    name: str
    code: str
    mode: str
    data_file: str
    raw_data_file: str
    dataset_hash: str
    dataset_name: str
    limits: SandboxLimits
    params: dict[str, Any] = field(default_factory=dict)
    backtest: dict[str, Any] = field(default_factory=dict)
    strategy_class: str | None = None
    # The equity curve and trade list cost ~130 ms per run to serialise; only reports need them.
    include_series: bool = False
    data_range: tuple[int, int] | None = None
    max_trades: int = 2000

    @property
    def code_hash(self) -> str:
        return code_hash(self.code)

    def with_params(self, params: dict[str, Any]) -> PreparedRun:
        return replace(self, params=params)

    def on_rows(self, start: int, end: int, *, include_series: bool = False) -> PreparedRun:
        return replace(self, data_range=(start, end), include_series=include_series)

    def request(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "data_file": self.data_file,
            "raw_data_file": self.raw_data_file,
            "limits": self.limits.to_json(),
            "run": {
                "mode": self.mode,
                "params": self.params,
                "backtest": self.backtest,
                "strategy_class": self.strategy_class,
                "raw_data_path": f"{DATA_DIR}/{os.path.basename(self.raw_data_file)}",
                "include_series": self.include_series,
                "data_range": list(self.data_range) if self.data_range else None,
                "max_trades": self.max_trades,
            },
        }


def _world_readable(path: Path, cache: Path) -> Path:
    """The sandbox reads the dataset as an unprivileged uid; hand it a copy it may read."""
    import shutil
    import stat

    mode = path.stat().st_mode
    if mode & stat.S_IROTH:
        return path
    if path.parent == cache:
        path.chmod(mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        return path
    copy = cache / f"readable-{path.name}"
    shutil.copyfile(path, copy)
    copy.chmod(0o644)
    return copy


class PreparationFailed(Exception):
    """The spec cannot run; carries the failed outcome to store and show."""

    def __init__(self, outcome: RunOutcome) -> None:
        super().__init__(outcome.error.message if outcome.error else "preparation failed")
        self.outcome = outcome


def _fail(kind: FailureClass, message: str, *, code: str = "", line: int | None = None,
          detail: str | None = None, mode: str | None = None) -> PreparationFailed:
    outcome = RunOutcome.failed(RunError(kind, message, line=line, detail=detail),
                                code_hash=code_hash(code) if code else "", mode=mode)
    return PreparationFailed(outcome)


def prepare(spec: StrategySpec, *, data_override: Path | None = None, static_checks: bool | None = None,
            cache_dir: Path | None = None) -> PreparedRun:
    """Extract the code, pick the mode, check it and resolve the dataset. Raises PreparationFailed."""
    try:
        # The content decides, never the file name: pipelines save whole answers (prose and fences) as
        # `.py`. Text that parses as Python is code; anything else has its code extracted.
        code = extract_code(spec.code)
    except ExtractionError as exc:
        raise _fail(FailureClass.SYNTAX_ERROR, str(exc), code=spec.code, line=exc.line) from None
    checks = spec.static_checks if static_checks is None else static_checks
    violations = check_code(code)
    syntax = [v for v in violations if v.rule == "syntax"]
    if syntax:
        where = input_line(spec.code, code, syntax[0].line) if code != spec.code else None
        message = syntax[0].message + (f" (line {where} of the input)" if where and where != syntax[0].line else "")
        raise _fail(FailureClass.SYNTAX_ERROR, message, code=code, line=syntax[0].line)
    mode = detect_mode(code) if spec.mode == "auto" else spec.mode
    if checks and violations:
        first = violations[0]
        summary = "; ".join(f"line {v.line}: {v.message}" for v in violations[:5])
        raise _fail(FailureClass.VALIDATION_ERROR, summary, code=code, line=first.line, detail=first.rule,
                    mode=mode)

    data_path = data_override or spec.data_path or bundled_dataset()
    try:
        if not data_path.is_file():
            raise DataError(f"dataset not found: {data_path}")
        cache = (cache_dir or rbi_home() / "cache") / "datasets"
        raw = _world_readable(materialize_csv(data_path, cache), cache)
        digest = dataset_hash(data_path)
    except DataError as exc:
        raise _fail(FailureClass.DATA_ERROR, str(exc), code=code, mode=mode) from None
    return PreparedRun(
        name=spec.name,
        code=code,
        mode=mode,
        data_file=str(data_path),
        raw_data_file=str(raw),
        dataset_hash=digest,
        dataset_name=data_path.name,
        limits=spec.limits,
        params=dict(spec.params),
        backtest={**backtest_options(code), **spec.backtest},
        strategy_class=spec.strategy_class,
    )


class LocalExecutor:
    """Runs prepared strategies in the local sandbox, `workers` at a time."""

    def __init__(self, *, workers: int = 1, unsafe: bool = False) -> None:
        self.workers = max(1, workers)
        self.unsafe = unsafe
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()

    @property
    def pool(self) -> WorkerPool:
        # execute_many calls this from several threads at once; without the lock each could
        # start a pool of its own, and all but the last would leak their worker processes.
        with self._pool_lock:
            if self._pool is None:
                self._pool = WorkerPool(self.workers, unsafe=self.unsafe)
            return self._pool

    def execute(self, run: PreparedRun) -> RunOutcome:
        started = time.monotonic()
        report = self.pool.submit(run.request(), timeout=run.limits.timeout_seconds)
        return self._outcome(run, report, seconds=time.monotonic() - started)

    def _outcome(self, run: PreparedRun, report: dict[str, Any], *, seconds: float) -> RunOutcome:
        """One worker report → one outcome: the single place where execute and execute_batch classify a run."""
        # The figures are the host's own recomputation from the run's facts and the data it served.
        outcome = classify_report(report, mode=run.mode, verify=verifier(run.data_file, run.data_range, mode=run.mode,
                                                                         max_trades=run.max_trades))
        metrics.record_run(executor="local", status=str(outcome.status),
                           failure_class=str(outcome.error.type) if outcome.error else None,
                           seconds=seconds)
        outcome.code_hash = run.code_hash
        if not outcome.params:
            outcome.params = dict(run.params)
        return outcome

    def execute_batch(self, runs: Sequence[PreparedRun]) -> list[RunOutcome]:
        """Outcomes in the order given, each classified as `execute` would.

        Runs of the same code, data and limits (the trials of a search) share sandboxed
        children: split into at most `workers` batches, each batch one child that runs its trials
        in turn (the module executed once, indicators reused), with a time budget per trial.
        """
        items = list(runs)
        outcomes: list[RunOutcome | None] = [None] * len(items)

        def run_chunk(chunk: list[int]) -> None:
            first = items[chunk[0]]
            request = first.request()
            message = {key: request[key] for key in ("code", "data_file", "raw_data_file", "limits")}
            message["mode"] = first.mode
            message["runs"] = [items[i].request()["run"] for i in chunk]
            started = time.monotonic()
            reports = self.pool.submit_batch(message, timeout=first.limits.timeout_seconds)
            for i, report in zip(chunk, reports, strict=True):
                wall = report.get("wall_time")
                seconds = float(wall) if isinstance(wall, int | float) else time.monotonic() - started
                outcomes[i] = self._outcome(items[i], report, seconds=seconds)

        chunks = plan_batches(items, workers=self.workers)
        if len(chunks) == 1:
            run_chunk(chunks[0])
        else:
            with ThreadPoolExecutor(max_workers=self.workers) as threads:
                list(threads.map(run_chunk, chunks))
        return [outcome for outcome in outcomes if outcome is not None]

    def execute_many(self, runs: Iterable[PreparedRun]) -> Iterator[RunOutcome]:
        """Results in the order given, computed `workers` at a time."""
        with ThreadPoolExecutor(max_workers=self.workers) as threads:
            yield from threads.map(self.execute, runs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_BATCH = 64


def plan_batches(runs: Sequence[PreparedRun], *, workers: int, max_size: int = MAX_BATCH) -> list[list[int]]:
    """Indices of `runs` grouped into batches: same code, mode, data and limits; contiguous slices of
    each group, as many as there are workers (neighbouring trials of a grid often share indicators)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, run in enumerate(runs):
        key = (run.code, run.mode, run.data_file, run.raw_data_file, run.limits)
        groups.setdefault(key, []).append(index)
    batches: list[list[int]] = []
    for unordered in groups.values():
        # Samplers hand out trials in shuffled order; sorted by their parameters, trials that share an
        # indicator setting land in the same child, where it is computed once (rbi.indicator_cache).
        members = sorted(unordered, key=lambda i: _params_order(runs[i].params))
        count = max(min(workers, len(members)), -(-len(members) // max_size))
        size, extra = divmod(len(members), count)
        start = 0
        for part in range(count):
            end = start + size + (1 if part < extra else 0)
            batches.append(members[start:end])
            start = end
    return batches


def _params_order(params: dict[str, Any]) -> tuple[tuple[str, int, float, str], ...]:
    """A total order on parameter sets: numbers by value, anything else by its text."""
    order = []
    for name in sorted(params):
        value = params[name]
        if isinstance(value, int | float) and not isinstance(value, bool):
            order.append((name, 0, float(value), ""))
        else:
            order.append((name, 1, 0.0, repr(value)))
    return tuple(order)


__all__ = ["LocalExecutor", "PreparationFailed", "PreparedRun", "SandboxUnavailable", "plan_batches", "prepare"]


MAX_FIX_ROUNDS = 4
FIXABLE = {FailureClass.RUNTIME_ERROR, FailureClass.IMPORT_ERROR, FailureClass.DATA_ERROR,
           FailureClass.VALIDATION_ERROR}


def execute_with_fixes(executor: LocalExecutor, run: PreparedRun) -> tuple[RunOutcome, PreparedRun]:
    """Package the code, run it, and on a known failure apply the matching fixer and run once more.

    Only deterministic rewrites of known failure patterns (rbi.agents.fixers); the strategy's
    logic is never changed. Returns the outcome and the run that produced it (its code may differ).
    """
    from rbi.agents.fixers import fix_for_failure, package

    applied: list[dict[str, Any]] = []
    packaged = package(run.code)
    if packaged.changed and not _static_violations(packaged.code):
        run = replace(run, code=packaged.code)
        applied += [{"fixer": f.fixer, "line": f.line, "description": f.description} for f in packaged.fixes]
    outcome = executor.execute(run)
    # Generated code often fails in several known ways, one after the other: fix, rerun, repeat.
    for _ in range(MAX_FIX_ROUNDS):
        if outcome.error is None or outcome.error.type not in FIXABLE:
            break
        repaired = fix_for_failure(run.code, error_type=str(outcome.error.type), message=outcome.error.message,
                                   line=outcome.error.line)
        if not repaired.changed or _static_violations(repaired.code):
            break
        run = replace(run, code=repaired.code)
        applied += [{"fixer": f.fixer, "line": f.line, "description": f.description} for f in repaired.fixes]
        outcome = executor.execute(run)
    outcome.fixes = applied
    return outcome, run


def _static_violations(code: str) -> bool:
    return bool(check_code(code))
