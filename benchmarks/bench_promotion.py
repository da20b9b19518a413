"""What promotion is worth: the two gates on the bundled examples and on backtesting.test data.

    .venv/bin/python benchmarks/bench_promotion.py --out benchmarks/results [--trials 30] [--iterations 3]

For each case, `rbi optimize`'s loop (the state machine, TPE, seed 42, sharpe_ratio, holdout 0.3, the default
guards: promotion at α 0.05 Šidák-corrected with a clean look-ahead check, deployable at a deflated Sharpe ratio
of 0.95, GOOG as the cross-market check of the BTC cases) runs on a fresh SQLite store. It reports how many
children were promoted, their mean in-sample and out-of-sample improvement over their parents, how many are
deployable, and each child's deflated Sharpe ratio. Writes promotion.json and promotion.md; prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from rbi.engine import LocalExecutor, prepare  # noqa: E402
from rbi.optimize import guards  # noqa: E402
from rbi.optimize.loop import Optimizer  # noqa: E402
from rbi.optimize.markets import market_path  # noqa: E402
from rbi.optimize.settings import parse_settings  # noqa: E402
from rbi.prepare.data import load_ohlcv  # noqa: E402
from rbi.spec import load_spec  # noqa: E402
from rbi.store import ResultStore  # noqa: E402

EXAMPLES = REPO / "examples" / "strategies"
SMA = {"fast": {"type": "int", "low": 5, "high": 50, "step": 5}, "slow": {"type": "int", "low": 60, "high": 300,
                                                                          "step": 20}}
BOLLINGER = {"period": {"type": "int", "low": 10, "high": 60, "step": 5},
             "width": {"type": "float", "low": 1.0, "high": 3.0, "step": 0.25}}
# (label, example, search space, dataset: None for the example's own, else a backtesting.test market)
CASES: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("sma_cross.yaml on BTC-USD 15m", "sma_cross.yaml", SMA, None),
    ("llm_answer.md on BTC-USD 15m", "llm_answer.md", BOLLINGER, None),
    ("sma_cross.yaml on GOOG daily (backtesting.test)", "sma_cross.yaml", SMA, "GOOG"),
    ("llm_answer.md on EURUSD hourly (backtesting.test)", "llm_answer.md", BOLLINGER, "EURUSD"),
]


def run_case(label: str, example: str, space: dict[str, Any], dataset: str | None, *, trials: int, iterations: int,
             executor: LocalExecutor, home: Path) -> dict[str, Any]:
    spec = load_spec(EXAMPLES / example)
    run = prepare(spec, data_override=market_path(dataset) if dataset else None)
    frame = load_ohlcv(run.data_file)
    validation: dict[str, Any] = {"holdout": 0.3}
    if dataset is None:
        validation["datasets"] = ["GOOG"]
    settings = parse_settings({"objective": "sharpe_ratio", "method": "tpe", "seed": 42, "maxTrials": trials,
                               "maxIterations": iterations, "minImprovement": 0.05, "space": space,
                               "validation": validation})
    store = ResultStore(f"sqlite:///{home / (label.split()[0] + '-' + (dataset or 'btc') + '.db')}")
    store.migrate()
    started = time.perf_counter()
    result = Optimizer(run, settings, executor=executor, store=store, n_rows=len(frame), index_times=[],
                       frame=frame).optimize()
    seconds = time.perf_counter() - started
    champion_is = result.parent.in_sample.get("sharpe_ratio")
    children = []
    for report in result.iterations:
        if not report.promoted:
            continue
        child_is = report.guards.get("in_sample")
        children.append({
            "version": report.child_version, "params": report.best_params,
            "in_sample_improvement": guards.improvement(champion_is, child_is, maximize=True),
            "out_of_sample_improvement": report.improvement,
            "p_value": report.guards["promotion_test"]["p_value"],
            "needed": report.guards["promotion_test"]["alpha_adjusted"],
            "deflated_sharpe": report.guards.get("deflated_sharpe"), "deployable": report.deployable,
            "markets": report.markets})
        champion_is = child_is
    rejected = [r for r in result.iterations if not r.promoted]
    tested = [r.guards["promotion_test"] for r in result.iterations if r.guards.get("promotion_test")]

    def mean(key: str) -> float | None:
        values = [c[key] for c in children if isinstance(c[key], int | float)]
        return statistics.fmean(values) if values else None

    return {
        "case": label, "trials": result.trials, "distinct_trials": result.distinct_trials,
        "iterations": len(result.iterations), "seconds": seconds,
        "parent": {"in_sample": result.parent.in_sample.get("sharpe_ratio"), "out_of_sample": result.parent.oos_score,
                   "markets": result.parent.markets},
        "parent_lookahead": result.parent_guards.get("lookahead_suspected"),
        "promoted": len(children), "deployable": sum(bool(c["deployable"]) for c in children),
        "mean_in_sample_improvement": mean("in_sample_improvement"),
        "mean_out_of_sample_improvement": mean("out_of_sample_improvement"),
        "children": children, "tested": len(tested),
        "rejected_reasons": [r.reason for r in rejected], "stop_reason": result.stop_reason,
    }


def _fmt(value: Any, pct: bool = False) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value:+.0%}" if pct else f"{value:.3f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | trials (distinct) | candidates tested | promoted | deployable | mean IS Δ of promoted | "
             "mean OOS Δ of promoted | deflated Sharpe of each child | OOS Sharpe parent → best |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        best = row["children"][-1]["out_of_sample_improvement"] if row["children"] else None
        dsr = ", ".join(_fmt(c["deflated_sharpe"]) for c in row["children"]) or "—"
        lines.append(f"| {row['case']} | {row['trials']} ({row['distinct_trials']}) | {row['tested']} | "
                     f"{row['promoted']} | {row['deployable']} | {_fmt(row['mean_in_sample_improvement'], True)} | "
                     f"{_fmt(row['mean_out_of_sample_improvement'], True)} | {dsr} | "
                     f"{_fmt(row['parent']['out_of_sample'])} → {'promoted' if best is not None else 'none'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as home, LocalExecutor(workers=args.workers) as executor:
        for label, example, space, dataset in CASES:
            rows.append(run_case(label, example, space, dataset, trials=args.trials, iterations=args.iterations,
                                 executor=executor, home=Path(home)))
            print(f"  {label}: {rows[-1]['promoted']} promoted, {rows[-1]['deployable']} deployable "
                  f"({rows[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "promotion.json").write_text(json.dumps(rows, indent=2, default=str))
    table = markdown(rows)
    (args.out / "promotion.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
