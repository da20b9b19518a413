"""Run one strategy and report a structured result. Runs inside the sandbox.

This module is shared by both executors: the local worker calls `execute()` in
its sandboxed child, and a Kubernetes Job runs `python -m rbi.runner`. Keeping
one runner means local and cluster results cannot drift apart.

The result is one JSON document written to a dedicated channel (a pipe fd, or a
file opened without following links), never to stdout, so nothing a strategy
prints can forge it. The host still treats it as untrusted input.
"""

from __future__ import annotations

import argparse
import builtins
import errno
import json
import linecache
import os
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from rbi import diagnostics
from rbi.integrity.collect import DeferredStatistics
from rbi.run_hooks import BACKTEST_OPTIONS, RunHooks

READY_MARKER = b"RBI-READY\n"
CODE_PATH = "/sandbox/strategy.py"
MODULE_NAME = "rbi_strategy"
MAX_WARNING_KINDS = 50
SHOWN_PER_WARNING = 3

DEFAULT_BACKTEST: dict[str, Any] = {
    "cash": 1_000_000,
    "commission": 0.002,
    "finalize_trades": True,
}
_BACKTEST_OPTIONS = BACKTEST_OPTIONS
_DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".txt")


@dataclass(slots=True)
class RunRequest:
    mode: str  # "class" or "script"
    code_path: str = CODE_PATH
    params: dict[str, Any] = field(default_factory=dict)
    backtest: dict[str, Any] = field(default_factory=dict)
    strategy_class: str | None = None
    data_path: str | None = None  # the normalised dataset (class mode reads it when no frame is given)
    raw_data_path: str | None = None  # what script-mode reads are served from
    include_series: bool = True
    # Rows [start, end) of the dataset (class mode): in-sample and out-of-sample windows.
    data_range: tuple[int, int] | None = None
    max_trades: int = 2000
    # The look-ahead check's second run (rbi.optimize.guards.lookahead_probe): the decision row, within
    # data_range, after which the future is mirrored. Set by the optimizer's cluster driver only.
    lookahead_probe: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRequest:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class WarningCollapser:
    """Shows the first few of each warning, then only counts them.

    Real generated strategies emit one identical warning per bar (tens of
    thousands of lines); the count keeps the signal without the flood.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.samples: dict[tuple[str, str, int], str] = {}
        self._original = warnings.showwarning
        self._filters: list[Any] = []

    def install(self) -> None:
        self._filters = list(warnings.filters)
        warnings.simplefilter("always")
        warnings.showwarning = self._show

    def uninstall(self) -> None:
        warnings.showwarning = self._original
        warnings.filters[:] = self._filters  # type: ignore[index]

    def _show(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
              file: Any = None, line: str | None = None) -> None:
        key = (category.__name__, os.path.basename(filename), lineno)
        seen = self.counts.get(key, 0)
        if seen == 0 and len(self.counts) >= MAX_WARNING_KINDS:
            return
        self.counts[key] = seen + 1
        if seen == 0:
            self.samples[key] = str(message)[:300]
        if seen < SHOWN_PER_WARNING:
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    def summary(self) -> list[dict[str, Any]]:
        return [
            {"category": cat, "location": f"{name}:{lineno}", "count": count,
             "message": self.samples.get((cat, name, lineno), "")}
            for (cat, name, lineno), count in sorted(self.counts.items(), key=lambda kv: -kv[1])
        ]


def _code_line(tb: types.TracebackType | None, code_path: str) -> int | None:
    line = None
    for frame, lineno in traceback.walk_tb(tb):
        if frame.f_code.co_filename == code_path:
            line = lineno
    return line


def _is_data_problem(exc: BaseException) -> bool:
    text = str(exc)
    if isinstance(exc, FileNotFoundError):
        # A missing data file is the dataset's problem; any other missing file is the code's.
        filename = str(getattr(exc, "filename", "") or "").lower()
        return filename.endswith(_DATA_SUFFIXES) or "dataset" in text
    if isinstance(exc, KeyError) and any(c in text for c in ("Open", "High", "Low", "Close", "Volume",
                                                              "open", "high", "low", "close")):
        return True
    markers = ("must be a pandas.DataFrame with columns", "OHLC", "data columns", "No columns to parse",
               "Error tokenizing data", "Some OHLC values are missing", "Data index is not sorted",
               "data must be", "DatetimeIndex")
    if isinstance(exc, AttributeError) and text.startswith("Column '") and text.endswith("' not in data"):
        return True  # self.data.open_interest: the strategy needs a column the dataset does not have
    return any(marker in text for marker in markers)


def classify_exception(exc: BaseException, code_path: str) -> dict[str, Any]:
    """The failure class of an exception raised by strategy code (pure, testable)."""
    cause = exc.__cause__
    if isinstance(exc, RuntimeError) and cause is not None and str(exc).startswith("Indicator ") \
            and "See traceback above" in str(exc):
        # backtesting.py wraps whatever an indicator raised in "Indicator ... error. See traceback above.":
        # the class, message and line that matter (to the user and to the fixers) are the cause's.
        inner = classify_exception(cause, code_path)
        inner["message"] = f"{str(exc).split('. See traceback')[0]}: {inner['message']}"[:2000]
        inner["line"] = inner["line"] or _code_line(exc.__traceback__, code_path)
        inner["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
        return inner
    line = _code_line(exc.__traceback__, code_path)
    detail: str | None = type(exc).__name__
    if isinstance(exc, SyntaxError):
        kind, line = "syntax_error", exc.lineno
    elif isinstance(exc, ImportError):
        kind, detail = "import_error", getattr(exc, "name", None) or detail
    elif isinstance(exc, MemoryError):
        kind = "memory_limit"
    elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        kind = "disk_limit"
    elif _is_data_problem(exc):
        kind = "data_error"
    else:
        kind = "runtime_error"
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {
        "type": kind,
        "message": message[:2000],
        "line": line,
        "detail": detail,
        "traceback": "".join(frames)[-4000:],
    }


def _load_code(code_path: str) -> tuple[str, types.CodeType]:
    with open(code_path, encoding="utf-8") as handle:
        source = handle.read()
    # Tracebacks show the strategy's own lines even if the file becomes unreadable later.
    linecache.cache[code_path] = (len(source), None, source.splitlines(True), code_path)
    return source, compile(source, code_path, "exec")


def _pick_strategy(namespace: dict[str, Any], wanted: str | None) -> type:
    from backtesting import Strategy

    classes = [obj for obj in namespace.values()
               if isinstance(obj, type) and issubclass(obj, Strategy) and obj.__module__ == MODULE_NAME]
    if wanted:
        for cls in classes:
            if cls.__name__ == wanted:
                return cls
        raise LookupError(f"strategy class {wanted!r} not found; the code defines {[c.__name__ for c in classes]}")
    if not classes:
        raise LookupError("the code defines no backtesting.Strategy subclass (class mode needs one)")
    # The most derived class wins: a base helper class and its concrete subclass are common.
    leaves = [c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)]
    return leaves[-1]


def _backtest_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - _BACKTEST_OPTIONS
    if unknown:
        raise ValueError(f"unknown backtest option(s): {sorted(unknown)}; allowed: {sorted(_BACKTEST_OPTIONS)}")
    merged = dict(DEFAULT_BACKTEST)
    merged.update(options)
    if isinstance(merged.get("commission"), list):
        merged["commission"] = tuple(merged["commission"])
    return merged


def _load_frame(path: str) -> Any:
    from rbi.prepare.data import load_ohlcv

    return load_ohlcv(path)


@dataclass(slots=True)
class LoadedModule:
    """Class mode in a batch: the strategy module, executed once for all of the batch's trials.

    A module that fails to load fails every trial the same way; the options of a Backtest the
    module built at import time (a hybrid's own cash and commission) are seen by every trial.
    """

    module: types.ModuleType | None = None
    error: BaseException | None = None
    constructed: dict[int, dict[str, Any]] = field(default_factory=dict)


def _class_module(code: types.CodeType, namespace: dict[str, Any], hooks: Any,
                  loaded: LoadedModule | None) -> types.ModuleType:
    if loaded is not None and loaded.error is not None:
        raise loaded.error
    if loaded is not None and loaded.module is not None:
        sys.modules[MODULE_NAME] = loaded.module
        hooks.constructed.update(loaded.constructed)
        return loaded.module
    namespace["__name__"] = MODULE_NAME
    module = types.ModuleType(MODULE_NAME)
    module.__dict__.update(namespace)
    sys.modules[MODULE_NAME] = module
    try:
        exec(code, module.__dict__)
    except BaseException as exc:
        if loaded is not None:
            loaded.error = exc
        raise
    if loaded is not None:
        loaded.module = module
        loaded.constructed = dict(hooks.constructed)
    return module


def _run_facts(hooks: RunHooks, stats: Any, served: Any, *, script: bool) -> dict[str, Any] | None:
    """The raw facts of the backtest that produced `stats`, for the host to recompute (rbi.integrity)."""
    from rbi.integrity.collect import run_facts

    run = next((r for r in reversed(hooks.runs) if r.stats is stats), None)
    return run_facts(run.backtest, stats, served=served, send_frame=script) if run is not None else None


def execute(request: RunRequest, *, frame: Any = None, loaded: LoadedModule | None = None) -> dict[str, Any]:
    """Run the strategy; always returns a JSON-able report, never raises.

    `loaded` (class mode, from execute_batch) holds the strategy module executed once for a whole batch.
    """
    from rbi import stats as stats_module

    collapser = WarningCollapser()
    collapser.install()
    probe = diagnostics.Probe.installed()  # counts orders and cancellations: why a run made no trades
    report: dict[str, Any] = {"mode": request.mode, "error": None, "stats": None}
    started = time.perf_counter()
    saved_main = sys.modules.get("__main__")
    # Data reads are served and the code's own Backtest watched in every mode: hybrid modules read
    # their CSV at import time even when the runner drives their Strategy class.
    hooks = RunHooks(request.raw_data_path or request.data_path)
    deferred = False  # class mode: Backtest.run() left the statistics to the host (DeferredStatistics)
    try:
        _, code = _load_code(request.code_path)
        namespace: dict[str, Any] = {"__file__": request.code_path, "__builtins__": builtins}
        hooks.install()
        if request.mode == "script":
            namespace["__name__"] = "__main__"
            module = types.ModuleType("__main__")
            module.__dict__.update(namespace)
            sys.modules["__main__"] = module
            exec(code, module.__dict__)
            result_stats = hooks.stats
        else:
            from backtesting import Backtest

            module = _class_module(code, namespace, hooks, loaded)
            strategy = _pick_strategy(module.__dict__, request.strategy_class)
            if frame is None:
                if not request.data_path:
                    raise FileNotFoundError("no dataset was given to the runner")
                frame = _load_frame(request.data_path)
            if request.data_range is not None:
                start, end = request.data_range
                frame = frame.iloc[int(start):int(end)]
            if request.lookahead_probe is not None:
                from rbi.optimize.probe import lookahead_probe  # not guards: scipy cannot load in here

                frame = lookahead_probe(frame, decision_row=int(request.lookahead_probe)).data
            # A hybrid that builds its own Backtest keeps its cash and commission unless the spec says otherwise.
            backtest = Backtest(frame, strategy, **_backtest_options({**hooks.last_options, **request.backtest}))
            with DeferredStatistics() as statistics:
                result_stats = backtest.run(**request.params)
            deferred = statistics.deferred
            report["strategy_class"] = strategy.__name__
        report["redirected_reads"] = hooks.redirects
        report["redirected_writes"] = hooks.outputs
        if result_stats is not None:
            if not deferred:
                # The run's own statistics, compared with the host's (a script's, or a replaced compute_stats').
                report["stats"] = stats_module.stats_to_dict(result_stats)
            report["params"] = stats_module.json_safe(stats_module.strategy_params(result_stats))
            report["facts"] = _run_facts(hooks, result_stats, frame, script=request.mode == "script")
            # Facts may be missing (a strategy broke its own objects): the host must then fail the run, not
            # take it for one that never ran a backtest.
            report["ran_backtest"] = True
            report["diagnostics"] = probe.report(result_stats)
            # The host builds the equity curve and trade list from its own recomputation of the facts.
            report["series"] = request.include_series
    except SystemExit as exc:
        # Scripts call sys.exit(); a zero or empty code is a normal end.
        if exc.code not in (None, 0):
            report["error"] = {"type": "runtime_error", "message": f"SystemExit: {exc.code}",
                               "line": _code_line(exc.__traceback__, request.code_path),
                               "detail": "SystemExit", "traceback": ""}
        if request.mode == "script" and hooks.stats is not None:
            report["stats"] = stats_module.stats_to_dict(hooks.stats)
            report["facts"] = _run_facts(hooks, hooks.stats, frame, script=True)
            report["ran_backtest"], report["series"] = True, request.include_series
    except BaseException as exc:
        report["error"] = classify_exception(exc, request.code_path)
    finally:
        probe.uninstall()
        hooks.uninstall()
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
        collapser.uninstall()
    report["execution_time"] = time.perf_counter() - started
    report["warnings"] = collapser.summary()
    return report


def execute_batch(requests: Iterable[RunRequest], *, frame: Any = None,
                  cache: Any = None) -> Iterator[dict[str, Any]]:
    """Run a batch of trials of one strategy in turn; yields one report per trial, each from execute().

    Class mode: the module is executed once for the batch, the dataset loaded once, and
    `Strategy.I` results reused across trials (rbi.indicator_cache). Script mode runs each
    request on its own: a script is its own backtest.
    """
    from rbi.indicator_cache import IndicatorCache, installed

    indicators = cache if cache is not None else IndicatorCache()
    modules: dict[str, LoadedModule] = {}
    frames: dict[str, Any] = {}
    with installed(indicators):
        for request in requests:
            if request.mode != "class":
                yield execute(request, frame=frame)
                continue
            data = frame
            if data is None and request.data_path:
                if request.data_path not in frames:
                    try:
                        frames[request.data_path] = _load_frame(request.data_path)
                    except Exception:
                        frames[request.data_path] = None  # execute() loads it again and reports why
                data = frames[request.data_path]
            window = tuple(request.data_range) if request.data_range is not None else None
            # `data` stays referenced for the whole batch, so its id names this dataset only.
            indicators.window = (id(data), request.data_path, window)
            yield execute(request, frame=data, loaded=modules.setdefault(request.code_path, LoadedModule()))


def encode_report(report: dict[str, Any]) -> bytes:
    # The report is already plain JSON types almost always; the sanitising walk costs ~80 ms on a
    # full equity curve, so it runs only when strict encoding refuses something (NaN, numpy types).
    try:
        return json.dumps(report, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        from rbi.stats import json_safe

        return json.dumps(json_safe(report), allow_nan=False, separators=(",", ":")).encode()


def write_report_fd(fd: int, report: dict[str, Any]) -> None:
    payload = encode_report(report)
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_report_file(path: str, report: dict[str, Any]) -> None:
    """Write to a path the strategy may have tampered with: no links, no FIFOs, no devices.

    O_NOFOLLOW refuses a symlink, O_NONBLOCK keeps a FIFO from hanging us, and
    the fstat check refuses anything that is not a regular file.
    """
    import stat

    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file; refusing to write the result")
        os.ftruncate(fd, 0)
        write_report_fd(fd, report)
    finally:
        os.close(fd)


RESULT_MARKER = "RBI-RESULT "
TRIAL_MARKER = "RBI-TRIAL "
TERMINATION_LIMIT = 4096
BUNDLED_PREFIX = "bundled:"
# The figures that matter most, kept when the whole statistics block does not fit in 4 KiB.
KEY_STATS = ("return_pct", "sharpe_ratio", "max_drawdown_pct", "win_rate_pct", "num_trades", "sortino_ratio",
             "calmar_ratio", "profit_factor", "exposure_time_pct", "equity_final", "buy_hold_return_pct")


def _short_error(error: Any, message_chars: int) -> dict[str, Any] | None:
    if not isinstance(error, dict):
        return None
    return {"type": error.get("type"), "message": str(error.get("message") or "")[:message_chars],
            "line": error.get("line"), "detail": str(error["detail"])[:100] if error.get("detail") else None}


def _fits(document: dict[str, Any], limit: int) -> bytes | None:
    payload = encode_report(document)
    return payload if len(payload) <= limit else None


def compact_result(report: dict[str, Any], *, limit: int = TERMINATION_LIMIT) -> bytes:
    """The run's result for a container termination message: JSON, at most `limit` bytes.

    Everything fits when it can; otherwise the key figures, with `"full": false`, which tells
    the operator to read the whole result from the pod log (the RESULT_MARKER line).
    """
    stats = report.get("stats") if isinstance(report.get("stats"), dict) else None
    base = {"v": 1, "mode": report.get("mode"), "execution_time": report.get("execution_time"),
            "ran_backtest": report.get("ran_backtest") is True}
    for message_chars, keys in ((2000, None), (500, KEY_STATS), (200, KEY_STATS[:5])):
        chosen = stats if keys is None or stats is None else {k: stats[k] for k in keys if k in stats}
        document = {**base, "error": _short_error(report.get("error"), message_chars), "stats": chosen,
                    "params": report.get("params") if keys is None else None, "full": keys is None}
        payload = _fits(document, limit)
        if payload is not None:
            return payload
    return encode_report({"v": 1, "error": {"type": "runtime_error", "message": "result too large"}, "full": False})


def compact_trials(results: list[dict[str, Any]], keep: list[str], *, limit: int = TERMINATION_LIMIT) -> bytes:
    """A shard's trial results for the termination message: per trial its index, error class and kept figures."""
    for message_chars in (120, 40, 0):
        rows = []
        for item in results:
            report = item["report"]
            stats = report.get("stats") if isinstance(report.get("stats"), dict) else {}
            error = report.get("error") if isinstance(report.get("error"), dict) else None
            rows.append({"i": item["index"], "e": error.get("type") if error else None,
                         "m": str(error.get("message") or "")[:message_chars] if error else None,
                         "s": {k: stats[k] for k in keep if k in stats}})
        payload = _fits({"v": 1, "trials": rows, "full": True}, limit)
        if payload is not None:
            return payload
    return encode_report({"v": 1, "trials": [], "full": False})


def _resolve_data(path: str | None, scratch: str | None) -> tuple[str | None, str | None]:
    """`bundled:NAME` → the image's bundled sample; a compressed file → a plain CSV copy for scripts."""
    if path is None:
        return None, None
    if path.startswith(BUNDLED_PREFIX):
        from rbi.datasets import bundled_dataset

        path = str(bundled_dataset(path[len(BUNDLED_PREFIX):]))
    raw = path
    if scratch and not path.endswith(".csv"):
        from pathlib import Path

        from rbi.prepare.data import materialize_csv

        raw = str(materialize_csv(path, Path(scratch)))
    return path, raw


def _rows(data_path: str, fraction: list[float]) -> tuple[int, int]:
    count = len(_load_frame(data_path))
    return int(count * float(fraction[0])), int(count * float(fraction[1]))


def _write_termination(path: str | None, payload: bytes) -> None:
    if not path:
        return
    try:
        with open(path, "wb") as handle:
            handle.write(payload)
    except OSError as exc:  # the message is an optimisation; the pod log still has the result
        print(f"rbi-runner: cannot write {path}: {exc}", file=sys.stderr)


def _print_marked(marker: str, document: dict[str, Any]) -> None:
    sys.stdout.flush()
    sys.stdout.write(marker + encode_report(document).decode() + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the Kubernetes Job container (the sandbox there is the pod)."""
    parser = argparse.ArgumentParser(prog="python -m rbi.runner")
    parser.add_argument("--request", required=True, help="JSON file with the run request")
    parser.add_argument("--result", help="file to write the JSON result to")
    parser.add_argument("--termination-log", help="write the compact (<= 4 KiB) result JSON here, "
                        "e.g. /dev/termination-log")
    parser.add_argument("--print-result", action="store_true",
                        help=f"print the full result as one line starting with {RESULT_MARKER!r} on stdout")
    parser.add_argument("--trials", help="JSON file with a batch of trials: {trials: [[index, params]], shards, "
                        "keep, dataFraction}; this process runs the shard of --shard-index")
    parser.add_argument("--shard-index", type=int, default=None,
                        help="which shard of the trials to run (default: $JOB_COMPLETION_INDEX, else 0)")
    parser.add_argument("--scratch", help="writable directory for a plain-CSV copy of a compressed dataset")
    args = parser.parse_args(argv)
    from rbi.compat import backtesting_speedups, pandas_ta

    pandas_ta.install()  # `import pandas_ta` in strategies: pandas-ta-classic, as in the local worker
    backtesting_speedups.install()  # the same result-identical fast paths as the local worker's
    with open(args.request, encoding="utf-8") as handle:
        raw_request = json.load(handle)
    fraction = raw_request.pop("data_fraction", None)
    request = RunRequest.from_json(raw_request)
    original = request.data_path
    request.data_path, raw = _resolve_data(request.data_path, args.scratch)
    # Scripts read the dataset themselves: serve them the plain CSV unless the request names another file.
    if request.raw_data_path in (None, original):
        request.raw_data_path = raw
    if args.trials:
        return _run_trials(args, request)
    if fraction and request.data_path:
        request.data_range = _rows(request.data_path, fraction)
    report = execute(request)
    if args.result:
        write_report_file(args.result, report)
    if args.print_result:
        _print_marked(RESULT_MARKER, report)
    _write_termination(args.termination_log, compact_result(report))
    return 0


def _run_trials(args: argparse.Namespace, request: RunRequest) -> int:
    with open(args.trials, encoding="utf-8") as handle:
        batch = json.load(handle)
    shards = max(1, int(batch.get("shards", 1)))
    index = args.shard_index if args.shard_index is not None else int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    fraction = batch.get("dataFraction")
    if fraction and request.data_path:
        request.data_range = _rows(request.data_path, fraction)
    results: list[dict[str, Any]] = []
    mine = [(trial_index, params) for position, (trial_index, params) in enumerate(batch.get("trials", []))
            if position % shards == index]
    # One batch per shard: the module is executed once and indicators are reused across its trials.
    requests = [replace(request, params=dict(params)) for _, params in mine]
    for (trial_index, _), report in zip(mine, execute_batch(requests), strict=True):
        report.pop("equity_curve", None)
        report.pop("trades", None)
        results.append({"index": trial_index, "report": report})
        if args.print_result:
            _print_marked(TRIAL_MARKER, {"index": trial_index, "report": report})
    _write_termination(args.termination_log, compact_trials(results, [str(k) for k in batch.get("keep", [])]))
    return 0


RunnerBody = Callable[[], int]

if __name__ == "__main__":
    sys.exit(main())
