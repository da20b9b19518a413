"""rbi.stats against real backtesting.py 0.6.6 results on the shipped BTC-USD 15m data.

Expectations come from the live stats object or the data, never from numbers
copied out of an earlier run, so a change in backtesting.py shows up as a
failure here rather than as silently wrong keys in the store.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import io
import json
import math
import re
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from backtesting import Backtest, Strategy
from backtesting.lib import crossover

from rbi.stats import (
    equity_curve,
    json_safe,
    parse_stats_text,
    stat_key,
    stats_to_dict,
    strategy_params,
    trades_summary,
)

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "BTC-USD-15m.csv.gz"


def _sma(values: Any, n: int) -> Any:
    return pd.Series(values).rolling(n).mean().to_numpy()


class SmaCross(Strategy):
    n1 = 10
    n2 = 40
    size = 0.5

    def init(self) -> None:
        self.fast = self.I(_sma, self.data.Close, self.n1)
        self.slow = self.I(_sma, self.data.Close, self.n2)

    def next(self) -> None:
        if crossover(self.fast, self.slow):
            self.buy(size=self.size)
        elif crossover(self.slow, self.fast):
            self.position.close()


class NeverTrades(Strategy):
    def init(self) -> None:
        pass

    def next(self) -> None:
        pass


class BuyAndHold(Strategy):
    def init(self) -> None:
        pass

    def next(self) -> None:
        if not self.position:
            self.buy(size=0.9)


def _load() -> pd.DataFrame:
    # Read the raw file the way a script would, independent of rbi.prepare.
    frame = pd.read_csv(DATA, skipinitialspace=True)
    frame = frame.loc[:, ~frame.columns.str.startswith("Unnamed")]
    frame["datetime"] = pd.to_datetime(frame["datetime"])
    frame = frame.set_index("datetime")
    frame.columns = [c.capitalize() for c in frame.columns]
    return frame


def _run(data: pd.DataFrame, strategy: type[Strategy], **params: Any) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = Backtest(data, strategy, cash=1_000_000, commission=0.002, finalize_trades=True)
        return bt.run(**params)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return _load()


@pytest.fixture(scope="module")
def traded(data: pd.DataFrame) -> pd.Series:
    return _run(data, SmaCross, n1=12)


@pytest.fixture(scope="module")
def idle(data: pd.DataFrame) -> pd.Series:
    return _run(data, NeverTrades)


@pytest.fixture(scope="module")
def in_bars(data: pd.DataFrame) -> pd.Series:
    return _run(data.iloc[:6000].reset_index(drop=True), SmaCross)


@pytest.fixture(scope="module")
def always_up() -> pd.Series:
    # Equity that never has a down day: backtesting's Sortino divides by zero and prints 'inf'.
    index = pd.date_range("2023-01-01", periods=24 * 40, freq="1h")
    close = np.linspace(100.0, 200.0, len(index))
    frame = pd.DataFrame(
        {"Open": close, "High": close, "Low": close, "Close": close, "Volume": 1.0}, index=index
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Backtest(frame, BuyAndHold, cash=10_000).run()


def _public_labels(stats: pd.Series) -> list[str]:
    return [str(label) for label in stats.index if not str(label).startswith("_")]


def _no_nan(value: Any) -> bool:
    json.dumps(value, allow_nan=False)  # raises on NaN or infinity anywhere
    return True


# --------------------------------------------------------------------------- stat_key


@pytest.mark.parametrize(
    ("label", "key"),
    [
        ("Return [%]", "return_pct"),
        ("Buy & Hold Return [%]", "buy_hold_return_pct"),
        ("Return (Ann.) [%]", "return_ann_pct"),
        ("Volatility (Ann.) [%]", "volatility_ann_pct"),
        ("CAGR [%]", "cagr_pct"),
        ("Sharpe Ratio", "sharpe_ratio"),
        ("Max. Drawdown [%]", "max_drawdown_pct"),
        ("Win Rate [%]", "win_rate_pct"),
        ("Exposure Time [%]", "exposure_time_pct"),
        ("Equity Final [$]", "equity_final"),
        ("Expectancy [%]", "expectancy_pct"),
        ("SQN", "sqn"),
        ("Kelly Criterion", "kelly_criterion"),
        ("Profit Factor", "profit_factor"),
        ("Commissions [$]", "commissions"),
        ("Alpha [%]", "alpha_pct"),
        ("# Trades", "num_trades"),
        ("Max. Drawdown Duration", "max_drawdown_duration"),
    ],
)
def test_stat_key(label: str, key: str) -> None:
    assert stat_key(label) == key


def test_every_real_label_maps_to_a_distinct_snake_case_key(traded: pd.Series, in_bars: pd.Series) -> None:
    labels = set(_public_labels(traded)) | set(_public_labels(in_bars))
    keys = [stat_key(label) for label in labels]
    assert len(set(keys)) == len(labels)
    assert all(re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", key) for key in keys), keys


# --------------------------------------------------------------------------- stats_to_dict


def _expected_entry(label: str, value: Any, *, datetime_index: bool) -> tuple[str, Any]:
    """The key and value the spec asks for, derived from one raw stats entry."""
    is_duration = label == "Duration" or label.endswith(" Duration")
    if is_duration and datetime_index:
        seconds = value.total_seconds() if isinstance(value, pd.Timedelta) else None
        return stat_key(label) + "_seconds", seconds
    if is_duration:
        return stat_key(label) + "_bars", None if pd.isna(value) else value
    if isinstance(value, pd.Timestamp):
        return stat_key(label), value.isoformat()
    if value is None or (isinstance(value, float | np.floating) and not np.isfinite(value)):
        return stat_key(label), None
    return stat_key(label), value


@pytest.mark.parametrize("run", ["traded", "idle", "in_bars", "always_up"])
def test_stats_to_dict_matches_the_run_object(run: str, request: pytest.FixtureRequest) -> None:
    stats: pd.Series = request.getfixturevalue(run)
    result = stats_to_dict(stats)
    datetime_index = isinstance(stats["Start"], pd.Timestamp)

    expected = dict(
        _expected_entry(label, stats[label], datetime_index=datetime_index) for label in _public_labels(stats)
    )
    assert list(result) == list(expected)
    for key, value in expected.items():
        if isinstance(value, float | np.floating):
            assert result[key] == pytest.approx(float(value), rel=1e-12, abs=1e-12), key
            assert type(result[key]) in (float, int), key
        else:
            assert result[key] == value, key
    assert _no_nan(result)
    assert type(result["num_trades"]) is int
    assert result["num_trades"] == len(stats["_trades"])
    assert not any(key.startswith("_") or key in ("strategy", "equity_curve", "trades") for key in result)


def test_datetime_run_uses_seconds(traded: pd.Series, data: pd.DataFrame) -> None:
    result = stats_to_dict(traded)
    assert result["start"] == data.index[0].isoformat()
    assert result["end"] == data.index[-1].isoformat()
    assert result["duration_seconds"] == (data.index[-1] - data.index[0]).total_seconds()
    assert isinstance(result["max_drawdown_duration_seconds"], float)
    assert not any(key.endswith("_bars") for key in result)
    assert result["num_trades"] > 0
    assert result["commissions"] > 0


def test_zero_trades_has_every_key_with_none_for_undefined(idle: pd.Series, traded: pd.Series) -> None:
    result = stats_to_dict(idle)
    assert result["num_trades"] == 0
    for key in ("sharpe_ratio", "win_rate_pct", "profit_factor", "sqn", "avg_trade_duration_seconds"):
        assert key in result and result[key] is None
    # -0.0 from backtesting reads as a glitch in a table.
    assert result["max_drawdown_pct"] == 0.0 and math.copysign(1.0, result["max_drawdown_pct"]) == 1.0
    # Only 'Commissions [$]' (shown only when non-zero) differs from a run with trades.
    assert set(stats_to_dict(traded)) - set(result) == {"commissions"}


def test_run_without_datetime_index_counts_bars(in_bars: pd.Series) -> None:
    result = stats_to_dict(in_bars)
    assert result["start"] == 0 and result["end"] == 5999
    assert result["duration_bars"] == 5999
    assert not any(key.endswith("_seconds") for key in result)
    assert "cagr_pct" not in result  # backtesting computes CAGR only on a datetime index
    assert isinstance(result["max_drawdown_duration_bars"], int)
    assert result["max_trade_duration_bars"] == int(in_bars["_trades"]["Duration"].max())


def test_infinite_values_become_none(always_up: pd.Series) -> None:
    assert np.isinf(always_up["Sortino Ratio"])
    assert stats_to_dict(always_up)["sortino_ratio"] is None


# --------------------------------------------------------------------------- parse_stats_text


def _assert_same_stats(parsed: dict[str, Any], direct: dict[str, Any]) -> None:
    """Printed values are rounded to 5 decimals; everything else must agree exactly."""
    assert list(parsed) == list(direct)
    for key, value in direct.items():
        if isinstance(value, float) and not float(value).is_integer():
            assert parsed[key] == pytest.approx(value, rel=1e-6, abs=1e-5), key
        else:
            assert parsed[key] == value, key
            assert type(parsed[key]) is type(value), key


@pytest.mark.parametrize("run", ["traded", "idle", "in_bars", "always_up"])
def test_printed_stats_parse_to_the_same_dict(run: str, request: pytest.FixtureRequest) -> None:
    stats: pd.Series = request.getfixturevalue(run)
    printed = io.StringIO()
    with redirect_stdout(printed):
        print(stats)
    _assert_same_stats(parse_stats_text(printed.getvalue()), stats_to_dict(stats))


def test_zero_trade_text_really_has_dashes(idle: pd.Series) -> None:
    text = str(idle)
    assert re.search(r"^Sharpe Ratio\s+--$", text, flags=re.MULTILINE)
    assert parse_stats_text(text)["sharpe_ratio"] is None


def test_real_inf_in_text(always_up: pd.Series) -> None:
    text = str(always_up)
    assert re.search(r"^Sortino Ratio\s+inf$", text, flags=re.MULTILINE)
    assert parse_stats_text(text)["sortino_ratio"] is None


def test_noise_around_the_block_is_ignored(traded: pd.Series) -> None:
    stdout = (
        "🌙 Moon Dev's backtest starting...\n"
        "Loading data from /Users/someone/src/data/rbi/BTC-USD-15m.csv\n"
        "Data shape:   (31066, 5)\n"
        "/path/backtesting.py:1234: UserWarning: Some trades remain open\n"
        "  warnings.warn(\n"
        "🚀 BUY signal at 16540.31  size 0.5\n"
        "==================================================\n"
        f"{traded}\n"
        "==================================================\n"
        "Strategy:  SmaCross(n1=12)\n"
        "✨ done\n"
    )
    _assert_same_stats(parse_stats_text(stdout), stats_to_dict(traded))


def test_prefixed_first_line(traded: pd.Series) -> None:
    stdout = f"📊 Results: {traded}\n"
    _assert_same_stats(parse_stats_text(stdout), stats_to_dict(traded))


def test_last_of_several_blocks_wins(data: pd.DataFrame) -> None:
    sample = data.iloc[:4000]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = Backtest(sample, SmaCross, cash=1_000_000, commission=0.002, finalize_trades=True)
        first = bt.run()
        best = bt.optimize(n1=[5, 15], n2=[30], maximize="Equity Final [$]")
    stdout = f"Initial run:\n{first}\n\nOptimizing...\n{best}\nBest params: {best._strategy}\n"
    assert stats_to_dict(first) != stats_to_dict(best)  # otherwise this test proves nothing
    _assert_same_stats(parse_stats_text(stdout), stats_to_dict(best))


def test_two_blocks_back_to_back_via_to_string(traded: pd.Series, idle: pd.Series) -> None:
    # to_string() prints no 'dtype:' footer, so the second 'Start' must end the first block.
    stdout = traded.to_string() + "\n" + idle.to_string() + "\n"
    parsed = parse_stats_text(stdout)
    assert parsed["num_trades"] == 0
    assert parsed["start"] == stats_to_dict(idle)["start"]


def test_block_cut_off_at_the_head_still_parses(traded: pd.Series) -> None:
    text = str(traded)
    tail = text[text.index("Sharpe Ratio") :]
    parsed = parse_stats_text("...[truncated]\n" + tail)
    direct = stats_to_dict(traded)
    assert "start" not in parsed
    assert parsed["num_trades"] == direct["num_trades"]
    assert parsed["max_drawdown_duration_seconds"] == direct["max_drawdown_duration_seconds"]
    assert parsed["sharpe_ratio"] == pytest.approx(direct["sharpe_ratio"], abs=1e-5)


def test_complete_block_beats_a_later_partial_one(traded: pd.Series, idle: pd.Series) -> None:
    partial = str(idle)[str(idle).index("Sharpe Ratio") : str(idle).index("# Trades")]
    parsed = parse_stats_text(f"{traded}\n{partial}")
    assert parsed["num_trades"] == stats_to_dict(traded)["num_trades"]


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "no stats here\njust   some   spaced   words\n",
        "Error: KeyError 'Close'\nTraceback (most recent call last):\n",
        "Sharpe Ratio    1.2\n",  # one stat line is not a block
    ],
)
def test_no_block_gives_empty_dict(stdout: str) -> None:
    assert parse_stats_text(stdout) == {}


def test_timezone_aware_timestamps(data: pd.DataFrame) -> None:
    sample = data.iloc[:3000].tz_convert("UTC") if data.index.tz else data.iloc[:3000].tz_localize("UTC")
    stats = _run(sample, SmaCross)
    direct = stats_to_dict(stats)
    assert direct["start"] == sample.index[0].isoformat()
    assert direct["start"].endswith("+00:00")

    # backtesting prints Start/End cut to 20 characters ('2023-01-01 00:00...'),
    # so text keeps the minute and loses the zone; everything else must agree.
    text = str(stats)
    assert re.search(r"^Start\s+\d{4}-\d{2}-\d{2} \d{2}:\d{2}\.\.\.$", text, flags=re.MULTILINE)
    parsed = parse_stats_text(text)
    assert parsed["start"] == sample.index[0].tz_localize(None).floor("min").isoformat()
    assert parsed["end"] == sample.index[-1].tz_localize(None).floor("min").isoformat()
    _assert_same_stats(
        {k: v for k, v in parsed.items() if k not in ("start", "end")},
        {k: v for k, v in direct.items() if k not in ("start", "end")},
    )


# --------------------------------------------------------------------------- params, curve, trades


def test_strategy_params_merge_defaults_and_run_values(traded: pd.Series, idle: pd.Series) -> None:
    assert strategy_params(traded) == {"n1": 12, "n2": SmaCross.n2, "size": SmaCross.size}
    assert strategy_params(idle) == {}


def test_strategy_params_after_optimize(data: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = Backtest(data.iloc[:3000], SmaCross, cash=1_000_000, finalize_trades=True)
        best = bt.optimize(n1=[5, 8], n2=[20, 30], maximize="Equity Final [$]")
    params = strategy_params(best)
    assert params["n1"] == best._strategy.n1 and params["n2"] == best._strategy.n2
    assert params["size"] == SmaCross.size
    assert _no_nan(params)


def test_strategy_params_of_a_subclass() -> None:
    class Tuned(SmaCross):
        n2 = 55
        label = "tuned"

        def helper(self) -> int:
            return 1

    stats = pd.Series({"_strategy": Tuned})
    assert strategy_params(stats) == {"n1": 10, "n2": 55, "size": 0.5, "label": "tuned"}


def test_equity_curve_downsampled_keeps_ends_and_max_drawdown(traded: pd.Series) -> None:
    raw = traded["_equity_curve"]
    curve = equity_curve(traded, max_points=500)
    assert 2 <= len(curve) <= 500
    assert curve[0] == [raw.index[0].isoformat(), float(raw["Equity"].iloc[0]), 0.0]
    assert curve[-1][0] == raw.index[-1].isoformat()
    assert curve[-1][1] == pytest.approx(float(raw["Equity"].iloc[-1]))
    assert min(point[2] for point in curve) == pytest.approx(traded["Max. Drawdown [%]"])
    assert max(point[1] for point in curve) == pytest.approx(traded["Equity Peak [$]"])
    times = [point[0] for point in curve]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert _no_nan(curve)


def test_equity_curve_short_series_is_complete(in_bars: pd.Series) -> None:
    curve = equity_curve(in_bars, max_points=10_000)
    assert len(curve) == len(in_bars["_equity_curve"])
    assert [point[0] for point in curve[:3]] == [0, 1, 2]


def test_equity_curve_rejects_a_silly_budget(traded: pd.Series) -> None:
    with pytest.raises(ValueError, match="max_points"):
        equity_curve(traded, max_points=1)


def test_trades_summary(traded: pd.Series) -> None:
    raw = traded["_trades"]
    trades = trades_summary(traded)
    assert len(trades) == min(len(raw), 2000)
    first = trades[0]
    assert first["entry_time"] == raw["EntryTime"].iloc[0].isoformat()
    assert first["duration_seconds"] == raw["Duration"].iloc[0].total_seconds()
    assert first["size"] == int(raw["Size"].iloc[0]) and type(first["size"]) is int
    assert first["sl"] is None and first["tag"] is None
    best = max(t["return_pct"] for t in trades if t["return_pct"] is not None)
    assert best == pytest.approx(traded["Best Trade [%]"])
    assert not any(key.startswith(("Entry_", "Exit_")) for key in first)
    assert _no_nan(trades)


def test_trades_summary_is_capped_and_handles_no_trades(traded: pd.Series, idle: pd.Series) -> None:
    assert len(trades_summary(traded, max_trades=7)) == 7
    assert trades_summary(idle) == []


def test_trades_summary_in_bars(in_bars: pd.Series) -> None:
    first = trades_summary(in_bars)[0]
    assert first["duration_bars"] == int(in_bars["_trades"]["Duration"].iloc[0])
    assert "duration_seconds" not in first


def _reference_trades(stats: pd.Series) -> list[dict[str, Any]]:
    """trades_summary's definition, one json_safe per value (what the column-wise version must equal)."""
    from rbi.stats import _TRADE_COLUMNS, _bars_value, _has_datetime_index

    rows = []
    for record in stats["_trades"][[c for c in _TRADE_COLUMNS if c in stats["_trades"]]].to_dict("records"):
        row: dict[str, Any] = {}
        for column, value in record.items():
            key = _TRADE_COLUMNS[column]
            if column == "ReturnPct":
                pct = json_safe(value)
                row[key] = None if not isinstance(pct, float) or not math.isfinite(pct * 100) else pct * 100 + 0.0
            elif column == "Duration":
                seconds = _has_datetime_index(stats)
                row[key + ("_seconds" if seconds else "_bars")] = json_safe(value) if seconds else _bars_value(value)
            else:
                row[key] = json_safe(value)
        rows.append(row)
    return rows


def _odd_trades(stats: pd.Series, *, tz: str | None) -> pd.Series:
    """The same run with the values that need care: NaN and inf prices, tags of every kind, an aware index."""
    odd = stats.copy()
    trades = stats["_trades"].head(6).copy()
    trades.loc[trades.index[0], "ExitPrice"] = np.nan
    trades.loc[trades.index[1], "PnL"] = np.inf
    trades.loc[trades.index[2], "ReturnPct"] = -np.inf
    trades["Tag"] = pd.Series(["a", 3, 2.5, None, True, _Opaque()], index=trades.index, dtype=object)
    if tz:
        trades["EntryTime"] = trades["EntryTime"].dt.tz_localize(tz)
    curve = stats["_equity_curve"].copy()
    curve.iloc[3, curve.columns.get_loc("Equity")] = np.nan
    if tz:
        curve.index = curve.index.tz_localize(tz)
    odd["_trades"], odd["_equity_curve"] = trades, curve
    return odd


@pytest.mark.parametrize("tz", [None, "Asia/Tokyo"])
def test_series_serialisers_equal_one_json_safe_per_value(traded: pd.Series, in_bars: pd.Series,
                                                          tz: str | None) -> None:
    for stats in (traded, in_bars, _odd_trades(traded, tz=tz)):
        assert trades_summary(stats) == _reference_trades(stats)
        for budget in (5, 2000, len(stats["_equity_curve"]) + 1):
            assert equity_curve(stats, max_points=budget) == _reference_curve(stats, budget)


def _reference_curve(stats: pd.Series, max_points: int) -> list[list[Any]]:
    """equity_curve's definition, one json_safe per value."""
    from rbi.stats import _downsample_positions

    curve = stats["_equity_curve"]
    equity, drawdown = curve["Equity"].to_numpy(dtype=float), curve["DrawdownPct"].to_numpy(dtype=float)
    extremes = [int(f(series)) for series in (drawdown, equity) if np.isfinite(series).any()
                for f in (np.nanargmax, np.nanargmin)]
    positions = _downsample_positions(len(curve), max_points, extremes)
    return [[json_safe(curve.index[p]), json_safe(equity[p]), json_safe(-drawdown[p] * 100)] for p in positions]


# --------------------------------------------------------------------------- json_safe


class _Color(enum.Enum):
    RED = "red"


class _Opaque:
    pass


@dataclasses.dataclass
class _Point:
    x: float
    when: dt.date


def test_json_safe_handles_what_strategies_return() -> None:
    value = {
        "nan": float("nan"),
        "np_nan": np.float64("nan"),
        "inf": float("inf"),
        "ninf": np.float32("-inf"),
        "int": np.int64(3),
        "float": np.float32(1.5),
        "bool": np.bool_(True),
        "ts": pd.Timestamp("2023-01-01 10:00", tz="UTC"),
        "nat": pd.NaT,
        "na": pd.NA,
        "td": pd.Timedelta(minutes=15),
        "dt64": np.datetime64("2023-01-02T00:00"),
        "td64": np.timedelta64(2, "s"),
        "array": np.array([1.0, np.nan, 3.0]),
        "series": pd.Series([1, 2], index=["a", "b"]),
        "frame": pd.DataFrame({"a": [1.0, np.nan]}),
        "tuple": (1, (2, 3)),
        "set": {3, 1, 2},
        "enum": _Color.RED,
        "dataclass": _Point(x=float("nan"), when=dt.date(2023, 1, 1)),
        "path": Path("/tmp/x"),
        "bytes": b"ok",
        "object": _Opaque(),
        1: "int key",
    }
    result = json_safe(value)
    assert _no_nan(result)
    assert result["nan"] is None and result["np_nan"] is None
    assert result["inf"] is None and result["ninf"] is None
    assert result["int"] == 3 and type(result["int"]) is int
    assert result["float"] == 1.5 and type(result["float"]) is float
    assert result["bool"] is True
    assert result["ts"] == "2023-01-01T10:00:00+00:00"
    assert result["nat"] is None and result["na"] is None
    assert result["td"] == 900.0
    assert result["dt64"] == "2023-01-02T00:00:00"
    assert result["td64"] == 2.0
    assert result["array"] == [1.0, None, 3.0]
    assert result["series"] == {"a": 1, "b": 2}
    assert result["frame"] == [{"a": 1.0}, {"a": None}]
    assert result["tuple"] == [1, [2, 3]]
    assert result["set"] == [1, 2, 3]
    assert result["enum"] == "red"
    assert result["dataclass"] == {"x": None, "when": "2023-01-01"}
    assert result["path"] == "/tmp/x"
    assert result["bytes"] == "ok"
    assert isinstance(result["object"], str)
    assert result["1"] == "int key"
