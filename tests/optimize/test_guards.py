"""Overfitting guards, checked against independent computations and real backtests."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from scipy import stats as sps

from rbi.optimize.guards import (
    EULER_GAMMA,
    DeflatedSharpe,
    annualize_sharpe,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    improvement,
    lookahead_probe,
    lookahead_suspected,
    probabilistic_sharpe_ratio,
    return_moments,
    returns_from_equity,
    sharpe_ratio_per_period,
)
from rbi.prepare.data import load_ohlcv
from rbi.stats import trades_summary


def _phi(x: float) -> float:
    # Written out with erf so the expectation does not share code with the module (NormalDist).
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _psr_by_hand(sr: float, sr0: float, n: int, skew: float, kurt: float) -> float:
    return _phi((sr - sr0) * math.sqrt(n - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr * sr))


def _with_variance(values: np.ndarray, variance: float) -> list[float]:
    """`values` rescaled to sample variance (ddof=1) exactly `variance`, mean 0."""
    centred = values - values.mean()
    return list(centred * math.sqrt(variance / centred.var(ddof=1)))


# --------------------------------------------------------------------------- returns and Sharpe


def test_returns_from_equity() -> None:
    np.testing.assert_allclose(returns_from_equity([100.0, 110.0, 99.0]), [0.1, -0.1])
    # The NaN point takes both returns touching it; the step off zero equity is infinite and dropped.
    np.testing.assert_allclose(returns_from_equity([100, 110, math.nan, 121, 0, 0, 5]), [0.1, -1.0])
    assert returns_from_equity([]).size == 0 and returns_from_equity([5.0]).size == 0
    with pytest.raises(ValueError, match="one-dimensional"):
        returns_from_equity(np.ones((2, 2)))


def test_sharpe_ratio_per_period() -> None:
    r = np.array([0.01, -0.02, 0.03, 0.005, math.nan, math.inf])
    finite = r[:4]
    assert sharpe_ratio_per_period(r) == pytest.approx(finite.mean() / finite.std(ddof=1), rel=1e-12)
    assert sharpe_ratio_per_period([0.01] * 50) == 0.0  # no variance: undefined, reported as 0
    assert sharpe_ratio_per_period([0.0] * 50) == 0.0
    assert sharpe_ratio_per_period([0.3]) == 0.0
    # A flat equity curve in float arithmetic: returns that are rounding noise, not a Sharpe of 1e15.
    flat = returns_from_equity(np.full(100, 1_000_000.0) * (1 + np.arange(100) * 1e-18))
    assert sharpe_ratio_per_period(flat) == 0.0
    assert annualize_sharpe(0.1, 252) == pytest.approx(0.1 * math.sqrt(252))


def test_return_moments_match_scipy_and_default_to_normal() -> None:
    r = np.random.default_rng(5).standard_t(4, size=3000) * 0.01
    skew, kurt = return_moments(r)
    assert skew == pytest.approx(sps.skew(r)) and kurt == pytest.approx(sps.kurtosis(r, fisher=False))
    assert kurt > 3.5  # fat tails are visible as non-excess kurtosis
    assert return_moments([0.01] * 10) == (0.0, 3.0)
    assert return_moments([0.01, 0.02]) == (0.0, 3.0)


# --------------------------------------------------------------------------- PSR


@pytest.mark.parametrize(
    ("sr", "sr0", "n", "skew", "kurt"),
    [(0.1, 0.0, 250, 0.0, 3.0), (0.05, 0.02, 1000, -1.0, 6.0), (-0.03, 0.0, 500, 0.5, 4.0),
     (0.2, 0.25, 100, 0.0, 3.0), (0.01, 0.0, 30, 2.0, 12.0)],
)
def test_psr_matches_the_formula(sr: float, sr0: float, n: int, skew: float, kurt: float) -> None:
    assert probabilistic_sharpe_ratio(sr, sr0, n, skew, kurt) == pytest.approx(
        _psr_by_hand(sr, sr0, n, skew, kurt), abs=1e-12)


def test_psr_properties() -> None:
    assert probabilistic_sharpe_ratio(0.1, 0.1, 500, 0.0, 3.0) == pytest.approx(0.5)
    # More evidence for the same edge means more confidence; negative skew and fat tails mean less.
    assert probabilistic_sharpe_ratio(0.05, 0.0, 2000, 0, 3) > probabilistic_sharpe_ratio(0.05, 0.0, 200, 0, 3)
    assert probabilistic_sharpe_ratio(0.05, 0.0, 500, -2, 3) < probabilistic_sharpe_ratio(0.05, 0.0, 500, 0, 3)
    assert probabilistic_sharpe_ratio(0.05, 0.0, 500, 0, 12) < probabilistic_sharpe_ratio(0.05, 0.0, 500, 0, 3)
    with pytest.raises(ValueError, match="n_obs"):
        probabilistic_sharpe_ratio(0.1, 0.0, 1, 0.0, 3.0)
    with pytest.raises(ValueError, match="observed_sr"):
        probabilistic_sharpe_ratio(math.nan, 0.0, 100, 0.0, 3.0)


# --------------------------------------------------------------------------- expected max, DSR


def test_expected_max_sharpe_formula_and_shape() -> None:
    n, v = 100, 0.5
    by_hand = math.sqrt(v) * ((1 - 0.5772156649) * sps.norm.ppf(1 - 1 / n) + 0.5772156649 * sps.norm.ppf(
        1 - 1 / (n * math.e)))
    assert abs(EULER_GAMMA - 0.5772156649) < 1e-10
    assert expected_max_sharpe(v, n) == pytest.approx(by_hand, rel=1e-9)
    values = [expected_max_sharpe(1.0, n) for n in (2, 3, 5, 10, 50, 100, 1000, 10_000)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert expected_max_sharpe(4.0, 100) == pytest.approx(2 * expected_max_sharpe(1.0, 100))
    assert expected_max_sharpe(1.0, 1) == 0.0 and expected_max_sharpe(1.0, 0) == 0.0
    assert expected_max_sharpe(0.0, 100) == 0.0
    with pytest.raises(ValueError):
        expected_max_sharpe(-1.0, 10)


@pytest.mark.parametrize("n_trials", [10, 100, 1000])
def test_expected_max_sharpe_agrees_with_simulation(n_trials: int) -> None:
    # The mean of the largest of N standard normals, simulated; the approximation is good to a few %.
    simulated = np.random.default_rng(7).standard_normal((20_000, n_trials)).max(axis=1).mean()
    assert expected_max_sharpe(1.0, n_trials) == pytest.approx(simulated, rel=0.03)


def test_published_example() -> None:
    # Bailey & López de Prado (2014), section 5: SR 2.5 annualised over 1250 daily returns, skew -3,
    # kurtosis 10, 100 trials whose annualised Sharpe ratios have variance 0.5 -> DSR ≈ 0.9004.
    benchmark = expected_max_sharpe(0.5 / 250, 100)
    assert benchmark == pytest.approx(0.1132, abs=5e-4)
    assert probabilistic_sharpe_ratio(2.5 / math.sqrt(250), benchmark, 1250, -3.0, 10.0) == pytest.approx(
        0.9004, abs=5e-4)


def test_dsr_is_the_psr_against_the_expected_maximum() -> None:
    rng = np.random.default_rng(11)
    returns = rng.standard_t(5, size=1500) * 0.01 + 0.0008
    trials = list(rng.normal(0.0, 0.03, size=40))
    result = deflated_sharpe_ratio(returns, trials)
    sr = returns.mean() / returns.std(ddof=1)
    benchmark = expected_max_sharpe(float(np.var(trials, ddof=1)), 40)
    expected = _psr_by_hand(sr, benchmark, 1500, sps.skew(returns), sps.kurtosis(returns, fisher=False))
    assert result.sharpe == pytest.approx(sr) and result.benchmark_sharpe == pytest.approx(benchmark)
    assert result.dsr == pytest.approx(expected, abs=1e-12)
    assert (result.n_trials, result.n_obs) == (40, 1500)


def test_dsr_falls_as_trials_grow() -> None:
    returns = np.random.default_rng(3).normal(0.0006, 0.01, size=2000)
    base = np.random.default_rng(4).standard_normal(5000)
    values = [deflated_sharpe_ratio(returns, _with_variance(base[:n], 0.02**2)).dsr
              for n in (2, 5, 10, 50, 200, 1000, 5000)]
    assert all(b < a for a, b in itertools.pairwise(values)), values
    assert values[0] > 0.95 > values[-1]


def test_noise_does_not_pass_after_deflation() -> None:
    passed_dsr = passed_psr = 0
    best_dsrs = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        trials = rng.normal(0.0, 0.01, size=(200, 2000))  # 200 parameter sets of a worthless strategy
        sharpes = [sharpe_ratio_per_period(r) for r in trials]
        # A typical trial is nowhere near significance once 200 tries are accounted for.
        assert deflated_sharpe_ratio(trials[0], sharpes).dsr < 0.5
        best = trials[int(np.argmax(sharpes))]
        result = deflated_sharpe_ratio(best, sharpes)
        best_dsrs.append(result.dsr)
        passed_dsr += result.passed()
        skew, kurt = return_moments(best)
        passed_psr += probabilistic_sharpe_ratio(max(sharpes), 0.0, best.size, skew, kurt) >= 0.95
    # Undeflated, the winner of 200 coin flips looks significant nearly always; deflated, rarely.
    assert passed_psr >= 36
    assert passed_dsr <= 4
    assert float(np.median(best_dsrs)) < 0.75


def test_real_edge_with_few_trials_passes() -> None:
    rng = np.random.default_rng(21)
    returns = rng.normal(0.0015, 0.01, size=2000)  # per-bar Sharpe ≈ 0.15
    trials = [0.02, 0.05, 0.08, 0.11, sharpe_ratio_per_period(returns)]
    result = deflated_sharpe_ratio(returns, trials)
    assert result.dsr > 0.95 and result.passed() and result.passed(0.99)
    assert not result.passed(1.01)


def test_dsr_degenerate_inputs_are_definite() -> None:
    returns = np.random.default_rng(1).normal(0.001, 0.01, size=500)
    # Fewer than two trials: nothing to deflate by, benchmark 0, i.e. the PSR against 0.
    for trials in ([], [0.1], [0.1, math.nan]):
        result = deflated_sharpe_ratio(returns, trials)
        assert result.benchmark_sharpe == 0.0
        skew, kurt = return_moments(returns)
        assert result.dsr == pytest.approx(
            probabilistic_sharpe_ratio(sharpe_ratio_per_period(returns), 0.0, 500, skew, kurt))
    assert deflated_sharpe_ratio(returns, [0.1, math.nan]).n_trials == 2  # a failed trial still counts
    flat = deflated_sharpe_ratio([0.0] * 100, [0.1, 0.2, 0.3])
    assert flat.dsr == 0.0 and flat.sharpe == 0.0 and not flat.passed()
    assert deflated_sharpe_ratio([0.002] * 100, [0.1, 0.2]).dsr == 0.0
    assert deflated_sharpe_ratio([0.01, 0.02], [0.1, 0.2]).dsr == 0.0
    assert deflated_sharpe_ratio([], []).dsr == 0.0
    noisy = deflated_sharpe_ratio([0.01, math.nan, -0.02, math.inf, 0.03, 0.01], [0.1, math.inf, 0.3])
    for value in (noisy.dsr, noisy.sharpe, noisy.benchmark_sharpe, noisy.skew, noisy.kurtosis):
        assert math.isfinite(value)
    assert noisy.n_obs == 4 and 0.0 <= noisy.dsr <= 1.0
    assert isinstance(noisy, DeflatedSharpe)


# --------------------------------------------------------------------------- improvement


@pytest.mark.parametrize(
    ("parent", "child", "maximize", "expected"),
    [
        (1.0, 1.2, True, 0.2),
        (1.0, 0.8, True, -0.2),
        (-1.0, -0.5, True, 0.5),  # a loss halved is a gain, measured against |parent|
        (-1.0, -2.0, True, -1.0),
        (10.0, 8.0, False, 0.2),  # minimising: lower is better
        (10.0, 12.0, False, -0.2),
        (-4.0, -5.0, False, 0.25),
        (0.0, 0.3, True, 0.3),  # no ratio from zero: plain difference
        (0.0, 0.3, False, -0.3),
        (None, 2.0, True, 2.0),
        (None, 2.0, False, -2.0),
        (1.0, None, True, None),
        (None, None, True, None),
        (1.0, math.nan, True, None),
        (math.inf, 3.0, True, None),
    ],
)
def test_improvement(parent: float | None, child: float | None, maximize: bool, expected: float | None) -> None:
    result = improvement(parent, child, maximize=maximize)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


# --------------------------------------------------------------------------- look-ahead: the comparison


def _trade(entry: Any, exit_: Any, size: float = 10, price: float = 100.0) -> dict[str, Any]:
    return {"entry_time": entry, "exit_time": exit_, "size": size, "entry_price": price, "pnl": 1.0}


def test_identical_prefix_is_not_suspected() -> None:
    full = [_trade("2023-01-01T00:00:00", "2023-01-01T01:00:00"), _trade("2023-01-01T02:00:00", "2023-01-01T05:00:00"),
            _trade("2023-01-02T00:00:00", "2023-01-03T00:00:00")]
    truncated = [*full[:2], _trade("2023-01-02T00:00:00", "2023-01-02T06:00:00")]  # differs only after the cut
    report = lookahead_suspected(full, truncated, "2023-01-01T12:00:00")
    assert not report.suspected and report.compared == 2 and report.mismatches == 0
    assert report.first_mismatch is None and "identical" in report.reason


def test_a_changed_past_trade_is_suspected() -> None:
    cut = "2023-01-02T00:00:00"
    full = [_trade("2023-01-01T00:00:00", "2023-01-01T01:00:00"), _trade("2023-01-01T02:00:00", "2023-01-01T03:00:00"),
            _trade("2023-01-01T04:00:00", "2023-01-01T05:00:00", size=7)]
    truncated = [full[0], full[2] | {"size": 8}]
    report = lookahead_suspected(full, truncated, cut)
    assert report.suspected and report.compared == 3 and report.mismatches == 2
    assert report.first_mismatch is not None
    assert report.first_mismatch["problem"] == "missing from the truncated run"  # the earliest one
    assert report.first_mismatch["full"]["entry_time"] == "2023-01-01T02:00:00"
    assert "2 of 3" in report.reason and "look-ahead" in report.reason
    extra = lookahead_suspected(full[:1], full[:2], cut)
    assert extra.suspected and extra.first_mismatch is not None
    assert extra.first_mismatch["problem"] == "missing from the full run"


def test_entry_price_tolerance_is_relative_1e9() -> None:
    full = [_trade(1, 5, price=30_000.0)]
    assert not lookahead_suspected(full, [_trade(1, 5, price=30_000.0 * (1 + 1e-12))], 10).suspected
    assert lookahead_suspected(full, [_trade(1, 5, price=30_000.0 * (1 + 1e-7))], 10).suspected


def test_only_trades_completed_strictly_before_the_cut_count() -> None:
    full = [_trade(1, 5), _trade(6, 10), _trade(9, 12)]
    # The trade exiting exactly on the cut bar and the one spanning it are not compared.
    assert lookahead_suspected(full, [_trade(1, 5)], 10).compared == 1
    assert lookahead_suspected(full, [_trade(1, 5), _trade(6, 10)], 11).compared == 2
    assert lookahead_suspected(full, [_trade(1, 5)], 11).suspected
    assert lookahead_suspected([], [], 11).reason.startswith("no trade completed")


def test_times_in_other_forms() -> None:
    aware = [_trade("2023-01-01T00:00:00+00:00", "2023-01-01T01:00:00+00:00")]
    # The cut is compared as an instant: 02:00 in UTC+02:00 is midnight UTC, before the trade ended.
    assert lookahead_suspected(aware, [], "2023-01-01T02:00:00+02:00").compared == 0
    assert lookahead_suspected(aware, [], pd.Timestamp("2023-01-01T01:30:00", tz="UTC")).suspected
    hedged = [_trade(1, 3), _trade(1, 3)]  # two trades on the same bars
    assert not lookahead_suspected(hedged, list(reversed(hedged)), 5).suspected
    assert lookahead_suspected(hedged, hedged[:1], 5).mismatches == 1
    with pytest.raises(ValueError, match="both be bar numbers or both be timestamps"):
        lookahead_suspected([_trade(1, 3)], [], "2023-01-01")
    with pytest.raises(ValueError, match="lacks"):
        lookahead_suspected([{"entry_time": 1, "exit_time": 2}], [], 5)


# --------------------------------------------------------------------------- look-ahead: real backtests


def _sma(values: np.ndarray, n: int) -> np.ndarray:
    result: np.ndarray = pd.Series(values).rolling(n).mean().to_numpy(dtype=float)
    return result


class HonestSmaCross(Strategy):
    fast = 10
    slow = 40

    def init(self) -> None:
        self.a = self.I(_sma, self.data.Close, self.fast)
        self.b = self.I(_sma, self.data.Close, self.slow)

    def next(self) -> None:
        if crossover(self.a, self.b):
            self.position.close()
            self.buy(size=0.5)
        elif crossover(self.b, self.a):
            self.position.close()


class TomorrowsClose(Strategy):
    """Holds while tomorrow's close is higher: the decision on bar t reads bar t + 1."""

    def init(self) -> None:
        close = self.data.df.Close
        self.up = self.I(lambda: (close.shift(-1) > close).to_numpy(dtype=float), name="up")

    def next(self) -> None:
        if self.up[-1] > 0 and not self.position:
            self.buy(size=0.5)
        elif self.up[-1] <= 0 and self.position:
            self.position.close()


class WholeSeriesZScore(Strategy):
    """Trades crossings of the mean of the *whole* series, a value no bar could know."""

    def init(self) -> None:
        close = self.data.df.Close
        self.z = self.I(lambda: ((close - close.mean()) / close.std()).to_numpy(), name="z")
        self.zero = self.I(lambda: np.zeros(len(close)), name="zero")

    def next(self) -> None:
        if crossover(self.z, self.zero):
            self.buy(size=0.5)
        elif crossover(self.zero, self.z):
            self.position.close()


@pytest.fixture(scope="module")
def btc(bundled_data: Path) -> pd.DataFrame:
    return load_ohlcv(bundled_data)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "some trades remain open" is expected on every cut
        yield


def _trades(data: pd.DataFrame, strategy: type[Strategy]) -> list[dict[str, Any]]:
    stats = Backtest(data, strategy, cash=1_000_000, commission=0.001).run()
    trades = trades_summary(stats, max_trades=1_000_000)
    assert {"entry_time", "exit_time", "size", "entry_price", "entry_bar", "exit_bar"} <= set(trades[0])
    return trades


def _prefix_check(data: pd.DataFrame, strategy: type[Strategy], full: list[dict[str, Any]]) -> Any:
    keep = int(len(data) * 0.7)
    # The cut is the last kept bar: a trade closed on it may be finalize_trades' doing, not the strategy's.
    return lookahead_suspected(full, _trades(data.iloc[:keep], strategy), data.index[keep - 1].isoformat())


def _probe_check(data: pd.DataFrame, strategy: type[Strategy], full: list[dict[str, Any]]) -> Any:
    probe = lookahead_probe(data, keep=0.7, full_trades=full)
    assert len(probe.data) < len(data)
    pd.testing.assert_frame_equal(probe.data.iloc[: probe.decision_row + 1], data.iloc[: probe.decision_row + 1])
    return lookahead_suspected(full, _trades(probe.data, strategy), probe.cut_time)


@pytest.mark.slow
def test_honest_strategy_is_not_suspected(btc: pd.DataFrame) -> None:
    full = _trades(btc, HonestSmaCross)
    for report in (_prefix_check(btc, HonestSmaCross, full), _probe_check(btc, HonestSmaCross, full)):
        assert not report.suspected, report.reason
        assert report.compared > 300  # the check really looked at most of the strategy's trades


@pytest.mark.slow
def test_reading_tomorrows_close_is_caught_by_the_probe(btc: pd.DataFrame) -> None:
    full = _trades(btc, TomorrowsClose)
    probe = _probe_check(btc, TomorrowsClose, full)
    assert probe.suspected, probe.reason
    assert probe.first_mismatch is not None and probe.compared > 1000
    # Plain truncation cannot see a one-bar leak when orders fill on the next bar's open: the one
    # decision that reads a missing bar would fill on a bar the truncated run does not have.
    blind = _prefix_check(btc, TomorrowsClose, full)
    assert not blind.suspected and blind.compared > 1000


@pytest.mark.slow
def test_whole_series_statistics_are_caught_by_both(btc: pd.DataFrame) -> None:
    full = _trades(btc, WholeSeriesZScore)
    for report in (_prefix_check(btc, WholeSeriesZScore, full), _probe_check(btc, WholeSeriesZScore, full)):
        assert report.suspected, report.reason


def test_probe_shape() -> None:
    index = pd.date_range("2024-01-01", periods=40, freq="h")
    close = np.linspace(100.0, 139.0, 40)
    data = pd.DataFrame({"Open": close - 0.5, "High": close + 2.0, "Low": close - 2.0, "Close": close,
                         "Volume": np.full(40, 10.0)}, index=index)
    probe = lookahead_probe(data, keep=0.5, horizon=3)
    d = probe.decision_row
    assert d == 20 and len(probe.data) == d + 2 + 3
    assert probe.cut_time == index[d + 2].isoformat()
    assert lookahead_probe(data, keep=0.5, horizon=3, trade_on_close=True).cut_time == index[d + 1].isoformat()
    pd.testing.assert_frame_equal(probe.data.iloc[: d + 1], data.iloc[: d + 1])
    nxt = probe.data.iloc[d + 1]
    # Bar d + 1 keeps what honest orders fill at and closes on the other side of Close[d].
    assert (nxt.Open, nxt.High, nxt.Low) == tuple(data.iloc[d + 1][["Open", "High", "Low"]])
    assert nxt.Close == nxt.Low < data.Close.iat[d] < data.Close.iat[d + 1]
    later = probe.data.iloc[d + 2:]
    assert (later.Close < data.Close.iat[d]).all() and (later.High >= later.Low).all()
    assert (later.High >= later[["Open", "Close"]].max(axis=1)).all()
    # With the full run's trades, the decision bar moves to one where the strategy holds a position.
    targeted = lookahead_probe(data, keep=0.5, full_trades=[{"entry_bar": 24, "exit_bar": 30}])
    assert targeted.decision_row == 25
    with pytest.raises(ValueError):
        lookahead_probe(data.iloc[:3])
    with pytest.raises(ValueError):
        lookahead_probe(data, keep=1.0)
