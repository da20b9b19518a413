"""Parameter search: throughput against backtesting.py's own optimizer, and an honesty check.

1. Throughput: the same parameter grid on the same in-sample window, run (a) by
   `Backtest.optimize` in this process (its own process pool) and (b) as rbi's
   sandboxed trials (`Optimizer`, 2 warm workers). Trials per second and the ratio.
2. Honesty: for each example strategy, parameter search alone (TPE, seeded): the
   best in-sample trial's improvement over the parent in-sample, beside its
   improvement out-of-sample, on data the search never saw.

    python benchmarks/bench_optimize.py [--trials 40] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbi.datasets import bundled_dataset
from rbi.engine import LocalExecutor, prepare
from rbi.optimize import guards
from rbi.optimize.loop import Optimizer
from rbi.optimize.settings import parse_settings
from rbi.prepare.data import load_ohlcv
from rbi.spec import StrategySpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "strategies"
GRID: dict[str, list[Any]] = {"fast": [5, 10, 15, 20, 30, 40], "slow": [60, 100, 140, 180, 220, 260]}
SPACES: dict[str, dict[str, Any]] = {
    "sma_cross.yaml": {"fast": {"type": "int", "low": 5, "high": 50, "step": 5},
                       "slow": {"type": "int", "low": 60, "high": 300, "step": 20}},
    "llm_answer.md": {"period": {"type": "int", "low": 10, "high": 60, "step": 5},
                      "width": {"type": "float", "low": 1.0, "high": 3.0, "step": 0.25}},
}


def _settings(space: dict[str, Any], *, method: str, trials: int, batch_size: int | None = None) -> Any:
    # Guards off and minImprovement 0: this measures what the search finds, not what the guards let through.
    raw: dict[str, Any] = {"objective": "sharpe_ratio", "method": method, "seed": 42, "maxTrials": trials,
                           "maxIterations": 1, "minImprovement": 0.0, "space": space,
                           "guards": {"minDeflatedSharpe": 0.0, "lookahead": False}}
    if batch_size is not None:
        raw["batchSize"] = batch_size
    return parse_settings(raw)


# A strategy whose indicators depend on only one of its three parameters, written the way generated
# code often is: a rolling window through pandas' `apply`, so the indicator costs more than next().
TREND_QUALITY = """
import numpy as np
import pandas as pd
import talib
from backtesting import Strategy


def trend_quality(close, period):
    \"\"\"R² of a straight line through the last `period` closes: how steady the trend is.\"\"\"
    x = np.arange(period, dtype=float)

    def r2(window):
        r = np.corrcoef(x, window)[0, 1]
        return r * r if np.isfinite(r) else 0.0

    return pd.Series(close).rolling(period).apply(r2, raw=True).to_numpy()


class TrendQuality(Strategy):
    period = 40   # feeds both indicators
    entry = 0.6   # next() only
    hold = 30     # next() only

    def init(self):
        self.quality = self.I(trend_quality, self.data.Close, self.period)
        self.slope = self.I(talib.LINEARREG_SLOPE, self.data.Close, self.period)

    def next(self):
        if not self.position:
            if self.quality[-1] > self.entry and self.slope[-1] > 0:
                self.buy(size=0.5)
        elif len(self.data) - self.trades[-1].entry_bar >= self.hold or self.quality[-1] < self.entry / 2:
            self.position.close()
"""
TREND_GRID: dict[str, list[Any]] = {"period": [20, 40, 80], "entry": [0.5, 0.6, 0.7, 0.8], "hold": [10, 30, 60]}


@dataclass(slots=True)
class Case:
    name: str
    code: str
    class_name: str
    grid: dict[str, list[Any]]
    backtest: dict[str, Any]


def _cases() -> list[Case]:
    sma = load_spec(EXAMPLES / "sma_cross.yaml")
    return [Case("SMA crossover (examples/strategies/sma_cross.py)", (EXAMPLES / "sma_cross.py").read_text(),
                 "SmaCross", GRID, dict(sma.backtest)),
            Case("trend quality: rolling-apply indicators on 1 of 3 parameters", TREND_QUALITY, "TrendQuality",
                 TREND_GRID, dict(sma.backtest))]


def _import(code: str, name: str, directory: Path) -> Any:
    # Backtest.optimize pickles the class for its process pool, so it must come from an importable module.
    path = directory / f"{name}.py"
    path.write_text(code, encoding="utf-8")
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


class TreeMemory:
    """Peak memory of a process tree (a pool of workers and their sandboxed children, or this process and
    Backtest.optimize's pool), sampled every 250 ms: the sum of RSS, and of PSS (shared pages split)."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peak_rss = 0
        self.peak_pss = 0
        self.own_cpu = 0.0  # the sampler's own CPU, which TreeCpu leaves out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        tree, frontier = set(self.roots), list(self.roots)
        while frontier:
            parent = frontier.pop()
            for pid, ppid in parents.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        return sorted(tree)

    def _sample(self) -> None:
        started = time.thread_time()
        try:
            self._loop()
        finally:
            self.own_cpu = time.thread_time() - started

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            rss = pss = 0
            for pid in self._tree():
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Rss:"):
                            rss += int(line.split()[1]) * 1024
                        elif line.startswith("Pss:"):
                            pss += int(line.split()[1]) * 1024
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)

    def to_json(self) -> dict[str, int]:
        return {"peak_rss_bytes": self.peak_rss, "peak_pss_bytes": self.peak_pss}


class TreeCpu:
    """CPU seconds used by this process and its reaped children, plus (for rbi) the warm workers and the
    sandboxed children they reaped: on a shared machine, CPU per trial says what wall time cannot."""

    def __init__(self, workers: list[int]) -> None:
        self.workers = workers
        self.seconds = 0.0

    @staticmethod
    def _worker_cpu(pid: int) -> float:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        return 0.0

    def _now(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        return total + sum(self._worker_cpu(pid) for pid in self.workers)

    def __enter__(self) -> TreeCpu:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # the last sandboxed child is reaped just after its answer
        self.seconds = self._now() - self._start


def _pool_pids(executor: LocalExecutor) -> list[int]:
    return sorted(w.process.pid for w in executor.pool._workers)


def _native(case: Case, module: Any, window: Any) -> tuple[float, dict[tuple[Any, ...], float], dict[str, float]]:
    from backtesting import Backtest

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backtest = Backtest(window, getattr(module, case.class_name), finalize_trades=True,
                            **{"cash": 1_000_000, **case.backtest})
        with TreeMemory([os.getpid()]) as memory, TreeCpu([]) as cpu:
            started = time.perf_counter()
            _, heatmap = backtest.optimize(**case.grid, maximize="Sharpe Ratio", return_heatmap=True)
            seconds = time.perf_counter() - started
    values = {tuple(k if isinstance(k, tuple) else (k,)): float(v) for k, v in heatmap.items()}
    return seconds, values, {**memory.to_json(), "cpu_seconds": cpu.seconds - memory.own_cpu}


def _rbi_batch(case: Case, run: Any, executor: LocalExecutor,
               rows: tuple[int, int]) -> tuple[float, float, dict[Any, Any]]:
    combos = [dict(zip(case.grid, values, strict=True)) for values in itertools.product(*case.grid.values())]
    jobs = [run.with_params(p).on_rows(*rows) for p in combos]
    with TreeCpu(_pool_pids(executor)) as cpu:
        started = time.perf_counter()
        outcomes = executor.execute_batch(jobs)
        seconds = time.perf_counter() - started
    failed = [o.error for o in outcomes if o.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} sandboxed trials failed: {failed[0]}")
    return seconds, cpu.seconds, {tuple(p.values()): (o.stats or {}).get("sharpe_ratio")
                                  for p, o in zip(combos, outcomes, strict=True)}


def _rbi_optimize(case: Case, run: Any, executor: LocalExecutor, frame: Any, index_times: list[str],
                  batch_size: int) -> dict[str, Any]:
    trials = int(math.prod(len(v) for v in case.grid.values()))
    settings = _settings(case.grid, method="grid", trials=trials, batch_size=batch_size)
    # The parent on the grid, so its trial is one of the grid's (the search enqueues it first).
    run = run.with_params({name: values[0] for name, values in case.grid.items()})
    optimizer = Optimizer(run, settings, executor=executor, store=None, n_rows=len(frame), index_times=index_times,
                          frame=frame)
    with TreeMemory(_pool_pids(executor)) as memory, TreeCpu(_pool_pids(executor)) as cpu:
        started = time.perf_counter()
        optimizer.optimize()
        total = time.perf_counter() - started
    return {"batch_size": batch_size, "trials": optimizer.trials_done, "trial_seconds": optimizer.trial_seconds,
            "trials_per_second": optimizer.rate(), "whole_optimize_seconds": total,
            "whole_optimize_cpu_seconds": cpu.seconds - memory.own_cpu, **memory.to_json()}


def _agree(native: dict[tuple[Any, ...], float], ours: dict[Any, Any]) -> int:
    """Every grid point must give backtesting.py's own Sharpe ratio; returns how many were compared."""
    compared = 0
    for key, value in native.items():
        mine = ours.get(key)
        if mine is None or not math.isfinite(value):
            continue
        if not math.isclose(float(mine), value, rel_tol=1e-9, abs_tol=1e-9):
            raise RuntimeError(f"sandboxed Sharpe {mine} != Backtest.optimize {value} at {key}")
        compared += 1
    if not compared:
        raise RuntimeError("no grid point to compare")
    return compared


def throughput(executor: LocalExecutor, frame: Any, index_times: list[str],
               batch_sizes: tuple[int, ...] = (8,)) -> list[dict[str, Any]]:
    """Each case, the same grid on the same in-sample window: Backtest.optimize, then rbi's sandboxed trials."""
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="rbi-bench-optimize-") as scratch:
        for number, case in enumerate(_cases()):
            module = _import(case.code, f"bench_optimize_case_{number}", Path(scratch))
            spec = StrategySpec(name=f"bench-{number}", code=case.code, mode="class", backtest=case.backtest,
                                strategy_class=case.class_name)
            run = prepare(spec)
            settings = _settings(case.grid, method="grid", trials=1)
            train = Optimizer(run, settings, executor=executor, store=None, n_rows=len(frame),
                              index_times=index_times).folds[0].train
            window = frame.iloc[train.start:train.end]
            trials = int(math.prod(len(v) for v in case.grid.values()))
            native_seconds, native_values, native_memory = _native(case, module, window)
            with TreeMemory(_pool_pids(executor)) as memory:
                batch_seconds, batch_cpu, ours = _rbi_batch(case, run, executor, (train.start, train.end))
            batch_cpu -= memory.own_cpu
            compared = _agree(native_values, ours)
            print(f"  {case.name}: Backtest.optimize {trials / native_seconds:.2f}/s "
                  f"({native_memory['cpu_seconds'] / trials:.3f} CPU s/trial), execute_batch "
                  f"{trials / batch_seconds:.2f}/s ({batch_cpu / trials:.3f} CPU s/trial)", file=sys.stderr, flush=True)
            loops = [_rbi_optimize(case, run, executor, frame, index_times, size) for size in batch_sizes]
            native_rate = trials / native_seconds
            rows_out.append({
                "case": case.name, "grid": case.grid, "trials": trials, "rows": train.end - train.start,
                "agreeing_grid_points": compared,
                "backtest_optimize": {"seconds": native_seconds, "trials_per_second": native_rate, **native_memory},
                "execute_batch": {"seconds": batch_seconds, "trials_per_second": trials / batch_seconds,
                                  "ratio": trials / batch_seconds / native_rate, **memory.to_json(),
                                  "cpu_seconds": batch_cpu, "cpu_ratio": native_memory["cpu_seconds"] / batch_cpu},
                "rbi_optimize": [{**loop, "ratio": loop["trials_per_second"] / native_rate} for loop in loops],
            })
            print(f"  {case.name}: Backtest.optimize {native_rate:.2f}/s, execute_batch "
                  f"{trials / batch_seconds:.2f}/s, rbi optimize "
                  + ", ".join(f"batchSize {lp['batch_size']}: {lp['trials_per_second']:.2f}/s" for lp in loops),
                  file=sys.stderr, flush=True)
    return rows_out


def honesty(executor: LocalExecutor, frame: Any, index_times: list[str], trials: int) -> list[dict[str, Any]]:
    rows = []
    for name, space in SPACES.items():
        run = prepare(load_spec(EXAMPLES / name))
        optimizer = Optimizer(run, _settings(space, method="tpe", trials=trials), executor=executor, store=None,
                              n_rows=len(frame), index_times=index_times, batch_size=4, frame=frame)
        result = optimizer.optimize()
        iteration = result.iterations[0] if result.iterations else None
        parent_is = result.parent.in_sample.get("sharpe_ratio")
        best_is = iteration.best_in_sample if iteration else None
        rows.append({
            "strategy": name, "trials": result.trials,
            "parent": {"params": result.parent.params, "in_sample": parent_is,
                       "out_of_sample": result.parent.oos_score},
            "best": {"params": iteration.best_params if iteration else None, "in_sample": best_is,
                     "out_of_sample": iteration.out_of_sample if iteration else None},
            "in_sample_improvement": guards.improvement(parent_is, best_is, maximize=True),
            "out_of_sample_improvement": iteration.improvement if iteration else None,
            "deflated_sharpe": iteration.guards.get("deflated_sharpe") if iteration else None,
        })
    return rows


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.0%}"


def _mib(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def markdown(speed: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    lines = [
        "Each grid on the in-sample window, in one run, both sides on both cores (`Backtest.optimize`: its own "
        "process pool; rbi: 2 warm workers, every trial sandboxed). rbi's trials/s count trial batches only "
        "(`Optimizer.rate()`); memory is the peak of the whole process tree while it ran (sum of RSS; PSS "
        "splits the pages shared copy-on-write). CPU s/trial is every process's CPU (this one, the pool and "
        "its sandboxed children; for rbi also the host's classification and verification) over the trials: "
        "on a shared machine it says what wall time cannot.",
        "",
        "| strategy | how the trials run | trials | trials/s | × `Backtest.optimize` | CPU s/trial "
        "(× `Backtest.optimize`) | peak RSS MiB | peak PSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in speed:
        native, batch, n = row["backtest_optimize"], row["execute_batch"], row["trials"]
        lines.append(f"| {row['case']} | `Backtest.optimize` | {n} | {native['trials_per_second']:.2f} | "
                     f"1.00 | {native['cpu_seconds'] / n:.3f} | {_mib(native['peak_rss_bytes'])} | "
                     f"{_mib(native['peak_pss_bytes'])} |")
        lines.append(f"| | `LocalExecutor.execute_batch` (the whole grid) | {n} | "
                     f"{batch['trials_per_second']:.2f} | **{batch['ratio']:.2f}** | {batch['cpu_seconds'] / n:.3f} "
                     f"({batch['cpu_ratio']:.2f}) | {_mib(batch['peak_rss_bytes'])} | "
                     f"{_mib(batch['peak_pss_bytes'])} |")
        for loop in row["rbi_optimize"]:
            lines.append(f"| | `rbi optimize`, grid, batchSize {loop['batch_size']} | {loop['trials']} | "
                         f"{loop['trials_per_second']:.2f} | **{loop['ratio']:.2f}** | — | "
                         f"{_mib(loop['peak_rss_bytes'])} | {_mib(loop['peak_pss_bytes'])} |")
    lines += ["", "Every grid point's Sharpe ratio from the sandbox equals `Backtest.optimize`'s heatmap "
              f"({', '.join(str(r['agreeing_grid_points']) for r in speed)} points compared). "
              "Targets from issue 12: ≥ 1.5× on the SMA grid, ≥ 2× with indicator reuse.", ""]
    lines += [
        "Honesty check, parameter search alone (TPE, seed 42, objective sharpe_ratio, 30% holdout):",
        "",
        "| strategy | trials | parent IS → best IS | IS improvement | parent OOS → best OOS | OOS improvement | DSR |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for row in checks:
        lines.append(
            f"| {row['strategy']} | {row['trials']} | {_num(row['parent']['in_sample'])} → "
            f"{_num(row['best']['in_sample'])} "
            f"| {_pct(row['in_sample_improvement'])} | {_num(row['parent']['out_of_sample'])} → "
            f"{_num(row['best']['out_of_sample'])} | {_pct(row['out_of_sample_improvement'])} | "
            f"{_num(row['deflated_sharpe'])} |")
    oos = [r["out_of_sample_improvement"] for r in checks if r["out_of_sample_improvement"] is not None]
    ins = [r["in_sample_improvement"] for r in checks if r["in_sample_improvement"] is not None]
    lines += ["", f"Average improvement: in-sample {_pct(statistics.fmean(ins) if ins else None)}, "
                  f"out-of-sample {_pct(statistics.fmean(oos) if oos else None)} (the original plan hoped for +20%)."]
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40, help="TPE trials per strategy in the honesty check")
    parser.add_argument("--no-honesty", dest="honesty", action="store_false", help="throughput only")
    parser.add_argument("--batch-sizes", default="8", help="batchSize values for the `rbi optimize` runs "
                        "(comma-separated; 8 is the default of spec.optimization.batchSize)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    # The workers run with one BLAS/OpenMP thread; Backtest.optimize's pool gets the same.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    frame = load_ohlcv(bundled_dataset())
    index_times = [t.isoformat() for t in frame.index]
    load = {"start": list(os.getloadavg())}
    with LocalExecutor(workers=2) as executor:
        # Start both workers outside the timings (the second one starts only while the first is busy).
        warm = prepare(load_spec(EXAMPLES / "sma_cross.yaml"))
        executor.execute_batch([warm.on_rows(0, 2000), warm.on_rows(2000, 4000)])
        speed = throughput(executor, frame, index_times, tuple(int(v) for v in args.batch_sizes.split(",")))
        checks = honesty(executor, frame, index_times, args.trials) if args.honesty else []
    load["end"] = list(os.getloadavg())
    table = markdown(speed, checks)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optimize.json").write_text(json.dumps({"throughput": speed, "honesty": checks, "load": load,
                                                       "cpus": os.cpu_count(), "python": sys.version.split()[0]},
                                                      indent=2, default=str))
    (args.out / "optimize.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
