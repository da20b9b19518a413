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
import importlib.util
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from rbi.datasets import bundled_dataset
from rbi.engine import LocalExecutor, prepare
from rbi.optimize import guards
from rbi.optimize.loop import Optimizer
from rbi.optimize.search import ParameterSearch
from rbi.optimize.settings import parse_settings
from rbi.prepare.data import load_ohlcv
from rbi.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "strategies"
GRID = {"fast": [5, 10, 15, 20, 30, 40], "slow": [60, 100, 140, 180, 220, 260]}
SPACES: dict[str, dict[str, Any]] = {
    "sma_cross.yaml": {"fast": {"type": "int", "low": 5, "high": 50, "step": 5},
                       "slow": {"type": "int", "low": 60, "high": 300, "step": 20}},
    "llm_answer.md": {"period": {"type": "int", "low": 10, "high": 60, "step": 5},
                      "width": {"type": "float", "low": 1.0, "high": 3.0, "step": 0.25}},
}


def _settings(space: dict[str, Any], *, method: str, trials: int) -> Any:
    # Guards off and minImprovement 0: this measures what the search finds, not what the guards let through.
    return parse_settings({"objective": "sharpe_ratio", "method": method, "seed": 42, "maxTrials": trials,
                           "maxIterations": 1, "minImprovement": 0.0, "space": space,
                           "guards": {"minDeflatedSharpe": 0.0, "lookahead": False}})


def throughput(executor: LocalExecutor, frame: Any, index_times: list[str]) -> dict[str, Any]:
    from backtesting import Backtest

    spec = load_spec(EXAMPLES / "sma_cross.yaml")
    run = prepare(spec)
    settings = _settings(GRID, method="grid", trials=len(GRID["fast"]) * len(GRID["slow"]))
    optimizer = Optimizer(run, settings, executor=executor, store=None, n_rows=len(frame), index_times=index_times,
                          batch_size=4, frame=frame)
    started = time.perf_counter()
    optimizer._run_trials(ParameterSearch(settings), 1, 1)
    sandbox_seconds = time.perf_counter() - started
    sandbox_trials = optimizer.trials_done

    # Backtest.optimize pickles the class for its process pool, so it must come from an importable module.
    module_spec = importlib.util.spec_from_file_location("bench_sma_cross", EXAMPLES / "sma_cross.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["bench_sma_cross"] = module
    module_spec.loader.exec_module(module)
    namespace = vars(module)
    train = optimizer.train
    window = frame.iloc[train.start:train.end]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backtest = Backtest(window, namespace["SmaCross"], cash=1_000_000, commission=0.001, finalize_trades=True)
        started = time.perf_counter()
        _, heatmap = backtest.optimize(fast=GRID["fast"], slow=GRID["slow"], maximize="Sharpe Ratio",
                                       return_heatmap=True)
        native_seconds = time.perf_counter() - started
    native_trials = len(heatmap)
    return {
        "grid": GRID, "rows": train.end - train.start,
        "sandbox": {"trials": sandbox_trials, "seconds": sandbox_seconds,
                    "trials_per_second": sandbox_trials / sandbox_seconds},
        "backtest_optimize": {"trials": native_trials, "seconds": native_seconds,
                              "trials_per_second": native_trials / native_seconds},
        "ratio": (sandbox_trials / sandbox_seconds) / (native_trials / native_seconds),
    }


def honesty(executor: LocalExecutor, frame: Any, index_times: list[str], trials: int) -> list[dict[str, Any]]:
    rows = []
    for name, space in SPACES.items():
        run = prepare(load_spec(EXAMPLES / name))
        optimizer = Optimizer(run, _settings(space, method="tpe", trials=trials), executor=executor, store=None,
                              n_rows=len(frame), index_times=index_times, batch_size=4, frame=frame)
        result = optimizer.optimize()
        (iteration,) = result.iterations or [None]
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


def markdown(speed: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    lines = [
        f"Same {len(GRID['fast'])}×{len(GRID['slow'])} grid (SMA crossover) on the {speed['rows']:,}-bar in-sample "
        "window, in one run:",
        "",
        "| how the trials run | trials | seconds | trials/s |",
        "|---|---:|---:|---:|",
        f"| `Backtest.optimize` in-process (its own process pool) | {speed['backtest_optimize']['trials']} | "
        f"{speed['backtest_optimize']['seconds']:.1f} | {speed['backtest_optimize']['trials_per_second']:.2f} |",
        f"| rbi sandboxed trials, 2 warm workers | {speed['sandbox']['trials']} | {speed['sandbox']['seconds']:.1f} | "
        f"{speed['sandbox']['trials_per_second']:.2f} |",
        "",
        f"Sandboxed / `Backtest.optimize` throughput: **{speed['ratio']:.2f}×** (target ≥ 0.9×).",
        "",
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
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    frame = load_ohlcv(bundled_dataset())
    index_times = [t.isoformat() for t in frame.index]
    with LocalExecutor(workers=2) as executor:
        executor.execute(prepare(load_spec(EXAMPLES / "sma_cross.yaml")))  # start the pool outside the timings
        speed = throughput(executor, frame, index_times)
        checks = honesty(executor, frame, index_times, args.trials)
    table = markdown(speed, checks)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optimize.json").write_text(json.dumps({"throughput": speed, "honesty": checks,
                                                       "cpus": os.cpu_count(), "python": sys.version.split()[0]},
                                                      indent=2, default=str))
    (args.out / "optimize.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
