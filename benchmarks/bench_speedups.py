"""What `rbi.compat.backtesting_speedups` saves per `Backtest.run`, measured in one process.

    .venv/bin/python benchmarks/bench_speedups.py [--rounds N]

On the bundled 31,066 bars of 15-minute BTC-USD, two strategies run with the runner's default
`Backtest` options (cash 1,000,000, commission 0.002, `finalize_trades`):

* `sma_cross`: examples/strategies/sma_cross.py (SMA 10/30 crossover with `crossover()`,
  about 1,100 trades): most bars queue no order;
* `orders`: a strategy with limit and stop entries carrying SL/TP, so orders wait in the queue.

Each strategy module is imported twice, once before and once after `install()`, because a strategy
binds `crossover` at import (`from backtesting.lib import crossover`), as it does in the sandbox,
where the worker installs before any strategy is imported. Rounds are interleaved (off/on, the order
alternating each round), so drift on a busy machine hits both alike. Prints medians, minima and
their ratios (on / off) with the load average; nothing asserts on time. The two runs of a round must
give the same trades and equity curve, or the script fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
os.environ.setdefault("TQDM_DISABLE", "1")  # before backtesting imports tqdm, which reads it then; as in the sandbox

from rbi.compat import backtesting_speedups  # noqa: E402
from rbi.datasets import bundled_dataset  # noqa: E402
from rbi.prepare.data import load_ohlcv  # noqa: E402

ORDERS_SOURCE = '''
import talib
from backtesting import Strategy
from backtesting.lib import crossover


class Orders(Strategy):
    def init(self):
        self.fast = self.I(talib.SMA, self.data.Close, 10)
        self.slow = self.I(talib.SMA, self.data.Close, 40)

    def next(self):
        close = self.data.Close[-1]
        if not self.position and not self.orders:
            if crossover(self.fast, self.slow):
                self.buy(size=0.5, limit=close * 0.998, sl=close * 0.98, tp=close * 1.03)
            elif crossover(self.slow, self.fast):
                self.sell(size=0.5, stop=close * 0.998, sl=close * 1.02, tp=close * 0.97)
        for order in self.orders:
            if not order.is_contingent and len(self.data) % 50 == 0:
                order.cancel()
'''


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def _strategies() -> dict[str, str]:
    return {"sma_cross": (ROOT / "examples" / "strategies" / "sma_cross.py").read_text(), "orders": ORDERS_SOURCE}


def _class(module: types.ModuleType, name: str) -> Any:
    return getattr(module, {"sma_cross": "SmaCross", "orders": "Orders"}[name])


def _run(frame: pd.DataFrame, strategy: Any) -> tuple[float, pd.Series]:
    from backtesting import Backtest

    bt = Backtest(frame, strategy, cash=1_000_000, commission=0.002, finalize_trades=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        stats = bt.run()
        return time.perf_counter() - start, stats


def _same(a: pd.Series, b: pd.Series, what: str) -> None:
    pd.testing.assert_frame_equal(a["_trades"], b["_trades"], check_exact=True, obj=f"{what} trades")
    pd.testing.assert_frame_equal(a["_equity_curve"], b["_equity_curve"], check_exact=True, obj=f"{what} equity")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved off/on rounds per strategy")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("talib") is None:
        print("talib is not installed", file=sys.stderr)
        return 2

    frame = load_ohlcv(str(bundled_dataset("BTC-USD-15m")))
    backtesting_speedups.uninstall()
    sources = _strategies()
    plain = {name: _class(_module(f"bench_{name}_plain", src), name) for name, src in sources.items()}
    backtesting_speedups.install()
    fast = {name: _class(_module(f"bench_{name}_fast", src), name) for name, src in sources.items()}
    backtesting_speedups.uninstall()

    load_before = os.getloadavg()
    print(f"python {sys.version.split()[0]}, {len(frame)} bars, {args.rounds} rounds, "
          f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(f"{'strategy':10s} {'trades':>6s} {'off median':>11s} {'on median':>10s} {'ratio':>6s} "
          f"{'off min':>8s} {'on min':>7s} {'ratio':>6s}")
    for name in sources:
        for warm in ("off", "on"):  # one untimed run each: first-call costs out of the rounds
            (backtesting_speedups.install if warm == "on" else backtesting_speedups.uninstall)()
            _run(frame, fast[name] if warm == "on" else plain[name])
        times: dict[str, list[float]] = {"off": [], "on": []}
        trades = 0
        for round_ in range(args.rounds):
            results: dict[str, pd.Series] = {}
            for mode in (("off", "on") if round_ % 2 == 0 else ("on", "off")):
                if mode == "on":
                    backtesting_speedups.install()
                else:
                    backtesting_speedups.uninstall()
                elapsed, results[mode] = _run(frame, fast[name] if mode == "on" else plain[name])
                times[mode].append(elapsed)
            backtesting_speedups.uninstall()
            _same(results["off"], results["on"], name)
            trades = int(results["off"]["# Trades"])
        off_med, on_med = statistics.median(times["off"]), statistics.median(times["on"])
        off_min, on_min = min(times["off"]), min(times["on"])
        print(f"{name:10s} {trades:6d} {off_med * 1e3:9.1f}ms {on_med * 1e3:8.1f}ms {on_med / off_med:6.3f} "
              f"{off_min * 1e3:6.1f}ms {on_min * 1e3:5.1f}ms {on_min / off_min:6.3f}")
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
