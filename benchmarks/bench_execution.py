"""How much does the sandbox cost? One SMA-crossover backtest, four ways, in one run.

    .venv/bin/python benchmarks/bench_execution.py [--repeat N] [--out benchmarks/results]

On the bundled 31,066 bars of 15-minute BTC-USD, the same class-mode strategy
(examples/strategies/sma_cross.py) runs:

1. in-process   `Backtest(frame, SmaCross, ...).run()` in this process, data already loaded,
                after one warm-up run: the baseline;
2. sandbox      `LocalExecutor(workers=1).execute(prepared)` with the pool already warm
                (pool start-up is timed once, separately);
3. fresh        `subprocess.run([sys.executable, script])`: a new interpreter that imports
                pandas/backtesting/talib, reads the CSV, runs the strategy and prints stats,
                which is what LLM pipelines do today;
4. batch        a parameter grid through `LocalExecutor(workers=2).execute_many(...)` against
                backtesting's own sequential in-process loop (and, for reference,
                `Backtest.optimize`, which forks its own process pool).

The in-process and sandbox kinds also run with a no-op `next()` (indicators still
computed), so the fixed cost of a sandboxed run shows apart from strategy time.

Measurements are interleaved round-robin (in-process, sandbox, in-process no-op,
sandbox no-op, fresh, then again), so drift on a noisy machine hits every kind alike.
Results: a table on stdout, `<out>/execution.json` and `<out>/execution.md`.
Nothing here asserts on time; a run that fails or disagrees on the trade count is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import itertools
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STRATEGY_FILE = ROOT / "examples" / "strategies" / "sma_cross.py"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
GRID = {"fast": (5, 10, 15, 20), "slow": (30, 50, 70)}
TARGET_OVERHEAD_MS = 50.0

# What an LLM-written script does after the strategy class: read the CSV, fix the
# headers, run, print. Appended to the strategy's own source.
FRESH_SCRIPT_TAIL = '''

import sys

import pandas as pd
from backtesting import Backtest

df = pd.read_csv(sys.argv[1])
df.columns = [c.strip().capitalize() for c in df.columns]
df = df.loc[:, ~df.columns.str.startswith("Unnamed")]
df["Datetime"] = pd.to_datetime(df["Datetime"])
df = df.set_index("Datetime")
bt = Backtest(df, SmaCross, cash={cash!r}, commission={commission!r}, finalize_trades={finalize!r})
stats = bt.run()
print(stats)
'''


# --------------------------------------------------------------------------- statistics


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values), "p90": p90(values),
            "min": min(values), "max": max(values)}


# --------------------------------------------------------------------------- CPU accounting


_TICK = os.sysconf("SC_CLK_TCK")


def _live_children() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def _proc_cpu(pid: int) -> float:
    """utime+stime of a live process plus what it has reaped (its forked run children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICK


def tree_cpu() -> float:
    """CPU seconds used so far by this process and every process under it, live or reaped."""
    own = time.process_time()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + reaped.ru_utime + reaped.ru_stime + sum(_proc_cpu(pid) for pid in _live_children())


def timed(action: Callable[[], Any]) -> tuple[float, float, Any]:
    cpu0, wall0 = tree_cpu(), time.perf_counter()
    result = action()
    wall = time.perf_counter() - wall0
    return wall, tree_cpu() - cpu0, result


# --------------------------------------------------------------------------- the strategy


def load_strategy(code: str, module_name: str) -> type:
    """Import strategy source as a real module (Backtest.optimize pickles the class by name)."""
    module = types.ModuleType(module_name)
    module.__file__ = str(STRATEGY_FILE)
    sys.modules[module_name] = module
    exec(compile(code, str(STRATEGY_FILE), "exec"), module.__dict__)
    cls: type = module.SmaCross
    return cls


def noop_code(code: str) -> str:
    """The same strategy with a `next()` that does nothing; init() still computes both SMAs."""
    head, sep, _ = code.partition("    def next(self):")
    if not sep:
        raise ValueError(f"{STRATEGY_FILE} has no next() to replace")
    return head + sep + "\n        pass\n"


def machine_info(pool_info: dict[str, Any]) -> dict[str, Any]:
    import backtesting
    import numpy
    import pandas
    import talib

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "backtesting": backtesting.__version__,
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "talib": talib.__version__,
        "worker_cgroups": bool(pool_info.get("cgroups")),
        "worker_euid": pool_info.get("euid"),
        "landlock_abi": pool_info.get("landlock_abi"),
        "rbi_sandbox_cgroups_env": os.environ.get("RBI_SANDBOX_CGROUPS", "(unset: on where writable)"),
    }


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from backtesting import Backtest

        from rbi.datasets import bundled_dataset
        from rbi.engine import prepare
        from rbi.prepare.data import load_ohlcv
        from rbi.runner import DEFAULT_BACKTEST
        from rbi.spec import StrategySpec

        self.args = args
        self.Backtest = Backtest
        self.options = dict(DEFAULT_BACKTEST)  # exactly what the runner passes to Backtest
        code = STRATEGY_FILE.read_text(encoding="utf-8")
        self.dataset = bundled_dataset()
        self.frame = load_ohlcv(self.dataset)
        self.strategy = load_strategy(code, "bench_sma_cross")
        self.noop_strategy = load_strategy(noop_code(code), "bench_sma_cross_noop")
        self.prepared = prepare(StrategySpec(name="sma-cross", code=code, mode="class"))
        self.prepared_noop = prepare(StrategySpec(name="sma-cross-noop", code=noop_code(code), mode="class"))
        self.scratch = Path(tempfile.mkdtemp(prefix="rbi-bench-"))
        self.fresh_script = self.scratch / "fresh_sma_cross.py"
        self.fresh_script.write_text(code + FRESH_SCRIPT_TAIL.format(
            cash=self.options["cash"], commission=self.options["commission"],
            finalize=self.options["finalize_trades"]), encoding="utf-8")
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.checks: dict[str, Any] = {}

    def record(self, kind: str, wall: float, cpu: float, **extra: float) -> None:
        bucket = self.samples.setdefault(kind, {"wall": [], "cpu": []})
        bucket["wall"].append(wall)
        bucket["cpu"].append(cpu)
        for key, value in extra.items():
            bucket.setdefault(key, []).append(value)

    # ---- the single-run kinds

    def in_process(self, strategy: type, **params: Any) -> Any:
        with warnings.catch_warnings():
            # The SMA strategy makes backtesting warn ~265 times per run ("insufficient margin");
            # the sandbox's runner counts them instead of printing, so keep stderr quiet here too.
            warnings.simplefilter("ignore")
            return self.Backtest(self.frame, strategy, **self.options).run(**params)

    def sandboxed(self, executor: Any, prepared: Any) -> Any:
        outcome = executor.execute(prepared)
        if outcome.error is not None:
            raise RuntimeError(f"the sandboxed run failed: {outcome.error}")
        return outcome

    def fresh(self) -> int:
        completed = subprocess.run([sys.executable, str(self.fresh_script), self.prepared.raw_data_file],
                                   capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"the fresh interpreter failed: {completed.stderr[-2000:]}")
        match = re.search(r"^# Trades\s+(\d+)", completed.stdout, re.MULTILINE)
        if not match:
            raise RuntimeError(f"no '# Trades' in the fresh interpreter's output: {completed.stdout[-2000:]}")
        return int(match.group(1))

    def run_single(self, executor: Any) -> None:
        repeat, fresh_repeat = self.args.repeat, self.args.fresh_repeat
        # Untimed warm-ups: first-call costs in this process, the worker and the page cache.
        expected = int(self.in_process(self.strategy)["# Trades"])
        expected_noop = int(self.in_process(self.noop_strategy)["# Trades"])
        self.sandboxed(executor, self.prepared)
        self.sandboxed(executor, self.prepared_noop)
        if fresh_repeat:
            self.fresh()
        self.checks["in_process_trades"] = expected
        trade_counts: dict[str, set[int]] = {}

        def check(kind: str, trades: int) -> None:
            trade_counts.setdefault(kind, set()).add(trades)

        for round_number in range(max(repeat, fresh_repeat)):
            if round_number < repeat:
                wall, cpu, stats = timed(lambda: self.in_process(self.strategy))
                self.record("in-process", wall, cpu)
                check("in-process", int(stats["# Trades"]))

                wall, cpu, outcome = timed(lambda: self.sandboxed(executor, self.prepared))
                # execution_time is the worker's own clock, fork to reaped child; the rest is the
                # host: request and response frames, the pool's reader thread, classify_report.
                self.record("sandbox", wall, cpu, worker_wall=outcome.execution_time)
                check("sandbox", int(outcome.stats["num_trades"]))

                wall, cpu, stats = timed(lambda: self.in_process(self.noop_strategy))
                self.record("in-process no-op next()", wall, cpu)
                check("in-process no-op next()", int(stats["# Trades"]))

                wall, cpu, outcome = timed(lambda: self.sandboxed(executor, self.prepared_noop))
                self.record("sandbox no-op next()", wall, cpu, worker_wall=outcome.execution_time)
                check("sandbox no-op next()", int(outcome.stats["num_trades"]))
            if round_number < fresh_repeat:
                wall, cpu, trades = timed(self.fresh)
                self.record("fresh interpreter", wall, cpu)
                check("fresh interpreter", trades)
            print(f"  round {round_number + 1}/{max(repeat, fresh_repeat)}", file=sys.stderr, flush=True)
        self.checks["trade_counts"] = {kind: sorted(counts) for kind, counts in trade_counts.items()}
        wrong = {kind: counts for kind, counts in trade_counts.items()
                 if counts != {expected_noop if "no-op" in kind else expected}}
        if wrong:
            raise RuntimeError(f"runs disagree on the number of trades: {wrong} (expected {expected})")

    # ---- the batch

    def run_batch(self, executor: Any) -> None:
        combos = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
        runs = [self.prepared.with_params(params) for params in combos]
        # Warm both workers first: the pool starts its second worker lazily, on first demand.
        list(executor.execute_many(runs[:2]))

        def loop() -> list[int]:
            bt = self.Backtest(self.frame, self.strategy, **self.options)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return [int(bt.run(**params)["# Trades"]) for params in combos]

        def sandbox_batch() -> list[int]:
            outcomes = list(executor.execute_many(runs))
            failed = [o.error for o in outcomes if o.error is not None]
            if failed:
                raise RuntimeError(f"{len(failed)} sandboxed batch runs failed: {failed[0]}")
            return [int(o.stats["num_trades"]) for o in outcomes]

        def optimize() -> int:
            bt = self.Backtest(self.frame, self.strategy, **self.options)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stats = bt.optimize(**{k: list(v) for k, v in GRID.items()}, maximize="Equity Final [$]")
            return int(stats["# Trades"])

        for round_number in range(self.args.batch_repeat):
            wall, cpu, reference = timed(loop)
            self.record("batch: in-process sequential loop", wall, cpu)
            wall, cpu, trades = timed(sandbox_batch)
            self.record(f"batch: sandbox execute_many, {executor.workers} workers", wall, cpu)
            if trades != reference:
                raise RuntimeError(f"the sandboxed batch disagrees with the in-process loop: {trades} != "
                                   f"{reference}")
            if self.args.optimize:
                wall, cpu, _ = timed(optimize)
                self.record("batch: in-process Backtest.optimize (own process pool)", wall, cpu)
            print(f"  batch round {round_number + 1}/{self.args.batch_repeat}", file=sys.stderr, flush=True)
        self.checks["batch_trades"] = dict(zip([json.dumps(c) for c in combos], reference, strict=True))
        self.batch_size = len(combos)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


# --------------------------------------------------------------------------- reporting


def paired_overhead_ms(samples: dict[str, dict[str, list[float]]], kind: str, base: str) -> float:
    """Median of per-round differences (kind − base): rounds ran back to back, so drift cancels."""
    pairs = zip(samples[kind]["wall"], samples[base]["wall"], strict=False)
    return statistics.median(a - b for a, b in pairs) * 1000


def build_results(bench: Bench, startup: dict[str, float], info: dict[str, Any],
                  load: dict[str, Any]) -> dict[str, Any]:
    samples = bench.samples
    kinds = {name: {"wall": summary(data["wall"]), "cpu": summary(data["cpu"]),
                    **({"worker_wall": summary(data["worker_wall"])} if "worker_wall" in data else {})}
             for name, data in samples.items()}
    med = {name: data["wall"]["median"] for name, data in kinds.items()}
    single: dict[str, dict[str, float | None]] = {}
    for name, base in (("in-process", "in-process"), ("sandbox", "in-process"),
                       ("fresh interpreter", "in-process"),
                       ("in-process no-op next()", "in-process no-op next()"),
                       ("sandbox no-op next()", "in-process no-op next()")):
        if name not in samples:
            continue
        single[name] = {
            "overhead_ms": None if name == base else paired_overhead_ms(samples, name, base),
            "overhead_of_medians_ms": (med[name] - med[base]) * 1000,
            "ratio_to_in_process": med[name] / med[base],
        }
    ratios = {"sandbox / in-process": med["sandbox"] / med["in-process"]}
    if "fresh interpreter" in med:
        ratios["fresh / in-process"] = med["fresh interpreter"] / med["in-process"]
        ratios["fresh / sandbox"] = med["fresh interpreter"] / med["sandbox"]
    host = [w - ww for w, ww in zip(samples["sandbox"]["wall"], samples["sandbox"]["worker_wall"], strict=True)]
    batch = {name: {"runs": bench.batch_size + (1 if "optimize" in name else 0),
                    "runs_per_second": (bench.batch_size + (1 if "optimize" in name else 0))
                    / kinds[name]["wall"]["median"]}
             for name in kinds if name.startswith("batch:")}
    return {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "load": load,
        "settings": {"repeat": bench.args.repeat, "fresh_repeat": bench.args.fresh_repeat,
                     "batch_repeat": bench.args.batch_repeat, "grid": GRID, "backtest": bench.options,
                     "dataset": bench.dataset.name, "bars": len(bench.frame),
                     "strategy": str(STRATEGY_FILE.relative_to(ROOT)),
                     "thread_vars": {v: os.environ.get(v) for v in THREAD_VARS}},
        "startup_seconds": startup,
        "kinds": kinds,
        "single": single,
        "ratios": ratios,
        "sandbox_host_side_ms": summary([h * 1000 for h in host]),
        "batch": batch,
        "target_overhead_ms": TARGET_OVERHEAD_MS,
        "checks": bench.checks,
        "samples": samples,
    }


def render_markdown(results: dict[str, Any]) -> str:
    kinds, single, m = results["kinds"], results["single"], results["machine"]
    s = results["settings"]
    lines = [
        f"SMA crossover ({s['strategy']}), class mode, {s['bars']:,} bars of {s['dataset']}; "
        f"{s['repeat']} runs each ({s['fresh_repeat']} for the fresh interpreter), interleaved.",
        "",
        "| how it runs | median s | p90 s | overhead vs in-process (ms) | × in-process | CPU s (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "in-process": "in-process `Backtest.run()` (baseline)",
        "sandbox": "sandbox `LocalExecutor.execute()` (warm pool)",
        "fresh interpreter": "fresh interpreter `subprocess.run([python, script])`",
        "in-process no-op next()": "in-process, no-op `next()`",
        "sandbox no-op next()": "sandbox, no-op `next()`",
    }
    for name, row in single.items():
        wall, cpu = kinds[name]["wall"], kinds[name]["cpu"]
        overhead = "—" if row["overhead_ms"] is None else f"{row['overhead_ms']:+.0f}"
        lines.append(f"| {labels[name]} | {wall['median']:.3f} | {wall['p90']:.3f} | {overhead} | "
                     f"{row['ratio_to_in_process']:.2f} | {cpu['median']:.3f} |")
    lines += ["", "| ratio of medians | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in results["ratios"].items()]
    lines += ["", f"Batch: {s['grid']} ({next(iter(results['batch'].values()))['runs'] if results['batch'] else 0}"
              f" runs), {s['batch_repeat']} rounds, interleaved.", "",
              "| batch | median s | p90 s | runs/s |", "|---|---:|---:|---:|"]
    for name, row in results["batch"].items():
        wall = kinds[name]["wall"]
        label = name.removeprefix("batch: ")
        lines.append(f"| {label} ({row['runs']} runs) | {wall['median']:.2f} | {wall['p90']:.2f} | "
                     f"{row['runs_per_second']:.2f} |")
    st = results["startup_seconds"]
    host = results["sandbox_host_side_ms"]
    load = results["load"]
    lines += [
        "",
        f"Pool start-up (one warm worker: spawn, imports, warm-up backtest, hello): "
        f"{st['pool_1_worker']:.2f} s, paid once; not in the per-run figures. "
        f"Host side of a sandboxed run (frames, reader thread, classify): median {host['median']:.0f} ms.",
        "",
        f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, Python {m['python']}, "
        f"backtesting {m['backtesting']}, pandas {m['pandas']}, numpy {m['numpy']}, TA-Lib {m['talib']}; "
        f"worker cgroups: {'yes' if m['worker_cgroups'] else 'no'}; "
        f"load average {load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end. {results['created']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per single-run kind (default 10)")
    parser.add_argument("--fresh-repeat", type=int, default=5,
                        help="timed fresh-interpreter runs (default 5; 0 skips them)")
    parser.add_argument("--batch-repeat", type=int, default=3, help="timed rounds of the batch (default 3)")
    parser.add_argument("--no-optimize", dest="optimize", action="store_false",
                        help="skip the Backtest.optimize reference in the batch")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.batch_repeat < 1 or args.fresh_repeat < 0:
        parser.error("--repeat and --batch-repeat must be at least 1, --fresh-repeat at least 0")

    # The sandbox workers run with one BLAS/OpenMP thread; give the other kinds the same.
    for var in THREAD_VARS:
        os.environ.setdefault(var, "1")
    os.environ.setdefault("RBI_HOME", str(ROOT / ".rbi"))
    from rbi.engine import LocalExecutor

    load = {"start": list(os.getloadavg())}
    bench = Bench(args)
    try:
        print("starting the sandbox pool (1 worker) ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        single = LocalExecutor(workers=1)
        pool_info = dict(single.pool.info)
        startup = {"pool_1_worker": time.perf_counter() - started}
        info = machine_info(pool_info)
        print("single runs ...", file=sys.stderr, flush=True)
        with single:
            bench.run_single(single)
        print("batch ...", file=sys.stderr, flush=True)
        with LocalExecutor(workers=2) as batch:
            bench.run_batch(batch)
        load["end"] = list(os.getloadavg())
        results = build_results(bench, startup, info, load)
    finally:
        bench.close()

    markdown = render_markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "execution.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (args.out / "execution.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    overhead = results["single"]["sandbox"]["overhead_ms"]
    fixed = results["single"].get("sandbox no-op next()", {}).get("overhead_ms")
    print(f"sandbox overhead per run: {overhead:.0f} ms (no-op next(): {fixed:.0f} ms); "
          f"target from the issue: < {TARGET_OVERHEAD_MS:.0f} ms")
    print(f"wrote {args.out / 'execution.json'} and {args.out / 'execution.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
