"""Strategies that forge their results, run through the real sandbox on the bundled data.

Each forgery is a few lines a model told to "raise the number" could write: patch the
statistics, patch the broker, fill at prices the data never had, write a result of its own
on the result channel, print a stats table. Each must fail with its own class (never
`succeeded` with invented figures), and the honest controls must give backtesting's figures.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from backtesting import Backtest

from rbi import stats as stats_module
from rbi.outcome import FailureClass, RunOutcome, Status
from rbi.prepare.data import load_ohlcv

from .conftest import ROWS, Run
from .strategies import SmaCross

SMA = """
import talib
from backtesting import Strategy
from backtesting.lib import crossover


class SmaCross(Strategy):
    fast = 10
    slow = 30

    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, self.fast)
        self.b = self.I(talib.SMA, self.data.Close, self.slow)

    def next(self):
        {forge}
        if crossover(self.a, self.b):
            self.position.close()
            self.buy(size=0.5)
        elif crossover(self.b, self.a):
            self.position.close()
"""


def _sma(forge: str = "pass", top: str = "") -> str:
    return top + "\n" + SMA.replace("{forge}", forge)


def _integrity_error(outcome: RunOutcome, detail: str | set[str] | None = None) -> str:
    assert outcome.status is Status.FAILED, (outcome.status, outcome.stats.get("return_pct"), outcome.stderr_tail)
    assert outcome.error is not None and outcome.error.type is FailureClass.INTEGRITY_ERROR, outcome.error
    wanted = {detail} if isinstance(detail, str) else detail
    assert wanted is None or outcome.error.detail in wanted, outcome.error
    assert outcome.stats == {} and not outcome.equity_curve and not outcome.trades
    return outcome.error.message


@pytest.fixture(scope="module")
def frame(bundled_data: Path) -> object:
    return load_ohlcv(bundled_data)


def _in_process(frame: object) -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(frame.iloc[:ROWS], SmaCross, cash=1_000_000, commission=0.002,  # type: ignore[attr-defined]
                         finalize_trades=True).run()
    return stats_module.stats_to_dict(stats)


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def test_honest_run_in_the_sandbox_gives_backtestings_figures(run_strategy: Run, frame: object) -> None:
    """Control: the same strategy, unforged, succeeds with the figures of an in-process Backtest.run()."""
    outcome = run_strategy(_sma(), include_series=True)
    assert outcome.status is Status.SUCCEEDED, outcome.error
    expected = _in_process(frame)
    assert list(outcome.stats) == list(expected)
    assert all(_close(outcome.stats[k], v) for k, v in expected.items()), {
        k: (outcome.stats[k], v) for k, v in expected.items() if not _close(outcome.stats[k], v)}
    assert outcome.trades and outcome.equity_curve  # the series shown in reports are the recomputed ones


# --------------------------------------------------------------------------- (a) patched statistics

PATCH_STATS = """
import backtesting._stats
import backtesting.backtesting

_real = backtesting._stats.compute_stats


def _forged(*args, **kwargs):
    stats = _real(*args, **kwargs)
    stats.loc["Return [%]"] = 98765.4
    stats.loc["Sharpe Ratio"] = 42.0
    return stats


backtesting._stats.compute_stats = _forged
backtesting.backtesting.compute_stats = _forged
"""


def test_patched_compute_stats_is_an_integrity_error(run_strategy: Run) -> None:
    """The issue's own case: three lines at module top level replace compute_stats."""
    message = _integrity_error(run_strategy(_sma(top=PATCH_STATS)), "disagreement")
    assert "return_pct" in message and "98765.4" in message


# --------------------------------------------------------------------------- (b) patched broker

@pytest.mark.parametrize("forge", [
    # Free cash, once, in the middle of the run.
    "if len(self.data) == 500: self._broker._cash += 250_000",
    # The equity the broker records, inflated on every bar.
    "type(self._broker).equity = property(lambda b: (b._cash + b._position_unrealized_pl) * 1.01)",
], ids=["cash", "equity"])
def test_patched_broker_is_an_integrity_error(run_strategy: Run, forge: str) -> None:
    message = _integrity_error(run_strategy(_sma(forge)), "disagreement")
    assert "equity" in message


# --------------------------------------------------------------------------- (c) forged fills

REWRITE_EXITS = "for t in self.closed_trades: t._replace(exit_price=t.entry_price * 1.05)"

PATCH_TRADE = """
import backtesting.backtesting

_init = backtesting.backtesting.Trade.__init__


def _cheaper(self, broker, size, entry_price, entry_bar, tag):
    # Every long fills 3% below the price it was given, and the broker books it consistently.
    _init(self, broker, size, entry_price * (0.97 if size > 0 else 1.03), entry_bar, tag)


backtesting.backtesting.Trade.__init__ = _cheaper
"""


def test_rewritten_exit_prices_are_caught(run_strategy: Run) -> None:
    """Closed trades rewritten to +5% after the broker booked them: prices the bars never had."""
    _integrity_error(run_strategy(_sma(REWRITE_EXITS)), {"fill", "disagreement"})


def test_monkeypatched_trade_fills_at_invented_prices(run_strategy: Run) -> None:
    """Trade patched so the whole simulation is self-consistent but fills 3% better than the market."""
    message = _integrity_error(run_strategy(_sma(top=PATCH_TRADE)), "fill")
    assert "never had" in message


# --------------------------------------------------------------------------- (d) the result channel

def _forged_report(facts: object) -> str:
    report = {"mode": "class", "error": None, "params": {}, "execution_time": 0.1,
              "stats": {"return_pct": 500.0, "sharpe_ratio": 9.0, "num_trades": 3, "equity_final": 6e6},
              "facts": facts}
    return f"import os\nos.write(3, {json.dumps(report).encode()!r})\nos._exit(0)\n"


def test_a_whole_forged_result_on_fd_3_without_facts_fails(run_strategy: Run) -> None:
    """A complete, well-formed result written to fd 3 before the runner writes its own, then a silent exit."""
    message = _integrity_error(run_strategy(_forged_report(None), mode="script", rows=None), "facts")
    assert "facts" in message


def test_a_forged_result_with_invented_trades_fails(run_strategy: Run) -> None:
    facts = {"v": 1, "bars": 31066, "warmup_bars": 0, "equity_final": 6e6, "frame": None,
             "backtest": {"cash": 1e6, "commission": 0.0, "spread": 0.0, "margin": 1.0, "trade_on_close": False,
                          "hedging": False, "exclusive_orders": False, "finalize_trades": True},
             "trades": [{"size": 100, "entry_bar": 10, "exit_bar": 20, "entry_price": 100.0, "exit_price": 60000.0,
                         "sl": None, "tp": None, "tag": None}]}
    message = _integrity_error(run_strategy(_forged_report(facts), mode="script", rows=None), "fill")
    assert "trade 0" in message


# --------------------------------------------------------------------------- (e) printed tables

FAKE_TABLE = """
Start                     2023-01-01 00:00:00
End                       2023-11-20 19:15:00
Duration                    323 days 19:15:00
Exposure Time [%]                       50.55
Equity Final [$]                  9876543.0
Return [%]                              887.6
Sharpe Ratio                              4.2
# Trades                                   17
"""

SERVED_SCRIPT = """
import pandas as pd
from backtesting import Backtest
{strategy}
raw = pd.read_csv("/Users/someone/data/BTC-USD-15m.csv")
raw.columns = raw.columns.str.strip().str.capitalize()
data = raw.set_index(pd.to_datetime(raw["Datetime"]))[["Open", "High", "Low", "Close", "Volume"]]
{shape}
stats = Backtest(data, SmaCross, cash=1_000_000, commission=0.002).run()
print({table!r})
"""


def _script(shape: str = "", table: str = "") -> str:
    return SERVED_SCRIPT.format(strategy=SMA.replace("{forge}", "pass"), shape=shape, table=table)


def test_a_printed_table_without_a_backtest_is_never_taken(run_strategy: Run) -> None:
    outcome = run_strategy(f"print({FAKE_TABLE!r})", mode="script", rows=None)
    assert outcome.status is Status.FAILED and outcome.error is not None, outcome
    assert outcome.error.type is FailureClass.RUNTIME_ERROR and outcome.error.detail == "no_backtest"
    assert "printed" in outcome.error.message and outcome.stats == {}


def test_a_fake_table_printed_after_a_real_backtest_is_ignored(run_strategy: Run) -> None:
    """The script runs a real backtest on a slice of the served data and prints invented figures."""
    outcome = run_strategy(_script("data = data.iloc[:6000]", FAKE_TABLE), mode="script", rows=None)
    assert outcome.status is Status.SUCCEEDED, outcome.error
    assert outcome.stats["return_pct"] != 887.6 and outcome.stats["num_trades"] != 17
    assert "887.6" in outcome.stdout_tail


# --------------------------------------------------------------------------- script mode: its own frame

@pytest.mark.parametrize("shape", [
    "data = data.iloc[2000:8000]",
    "data = data.iloc[:8000].resample('1h').agg({'Open': 'first', 'High': 'max', 'Low': 'min', 'Close': 'last', "
    "'Volume': 'sum'}).dropna()",
], ids=["slice", "resample-1h"])
def test_a_scripts_own_frame_of_served_data_passes(run_strategy: Run, shape: str) -> None:
    outcome = run_strategy(_script(shape), mode="script", rows=None)
    assert outcome.status is Status.SUCCEEDED, outcome.error
    assert outcome.stats["num_trades"] > 0


def test_a_scripts_invented_prices_fail(run_strategy: Run) -> None:
    """The script 'cleans' the served data into prices that never traded (10% higher highs)."""
    outcome = run_strategy(_script("data = data.iloc[:6000]\ndata['High'] = data['High'] * 1.1"), mode="script",
                           rows=None)
    message = _integrity_error(outcome, "frame")
    assert "invented" in message
