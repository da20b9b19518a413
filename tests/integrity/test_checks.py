"""The host's checks one at a time, in process: malformed facts, impossible fills, foreign frames, verify_report."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from backtesting import Backtest

from rbi.integrity import IntegrityError, ServedData, verify_report
from rbi.integrity.collect import run_facts
from rbi.integrity.facts import parse_facts
from rbi.integrity.fills import Bars, check_fills, check_frame
from rbi.prepare.data import load_ohlcv
from rbi.stats import stats_to_dict

from .strategies import Brackets

ROWS = 3000


@pytest.fixture(scope="module")
def served(bundled_data: Path) -> pd.DataFrame:
    return load_ohlcv(bundled_data).iloc[:ROWS]


@pytest.fixture(scope="module")
def honest(served: pd.DataFrame) -> dict[str, Any]:
    """A real run's report as the runner sends it: statistics and facts, after a JSON round trip."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backtest = Backtest(served, Brackets, cash=1_000_000, commission=0.002, finalize_trades=True)
        stats = backtest.run()
    report = {"mode": "class", "error": None, "stats": stats_to_dict(stats), "facts": run_facts(backtest, stats)}
    parsed: dict[str, Any] = json.loads(json.dumps(report))
    assert parsed["facts"]["trades"], "the fixture must trade"
    return parsed


def _verify(report: dict[str, Any], served: pd.DataFrame) -> dict[str, Any]:
    return verify_report(copy.deepcopy(report), frame=ServedData(served), mode="class")


def test_an_honest_report_is_verified(honest: dict[str, Any], served: pd.DataFrame) -> None:
    verified = _verify(honest, served)
    assert verified["error"] is None and verified["verified"] is True
    assert verified["stats"] == honest["stats"] and "facts" not in verified


@pytest.mark.parametrize(("path", "value", "named"), [
    (("v",), 2, "version"),
    (("bars",), "many", "bars"),
    (("trades", 0, "size"), 0.5, "trades[0].size"),
    (("trades", 0, "entry_bar"), 10**9, "trades[0].entry_bar"),
    (("trades", 0, "entry_price"), float("nan"), "trades[0].entry_price"),
    (("backtest", "margin"), 2.0, "outside what backtesting.py accepts"),
    (("backtest", "commission"), "callable", "function"),
    (("backtest", "hedging"), "yes", "backtest.hedging"),
])
def test_malformed_facts_are_named(honest: dict[str, Any], served: pd.DataFrame, path: tuple[Any, ...],
                                   value: Any, named: str) -> None:
    report = copy.deepcopy(honest)
    target = report["facts"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    verified = _verify(report, served)
    assert verified["error"]["type"] == "integrity_error" and named in verified["error"]["message"], verified["error"]
    assert verified["stats"] is None


def test_statistics_without_facts_fail(honest: dict[str, Any], served: pd.DataFrame) -> None:
    verified = _verify({**honest, "facts": None}, served)
    assert verified["error"]["type"] == "integrity_error" and verified["error"]["detail"] == "facts"


def test_a_failed_or_empty_report_passes_unchanged(served: pd.DataFrame) -> None:
    failed = {"mode": "class", "error": {"type": "runtime_error", "message": "boom"}, "stats": None}
    assert _verify(failed, served) == failed
    nothing = {"mode": "script", "error": None, "stats": None}
    assert _verify(nothing, served) == nothing


def test_no_served_data_means_no_verified_figures(honest: dict[str, Any]) -> None:
    verified = verify_report(copy.deepcopy(honest), frame=None)
    assert verified["error"]["type"] == "integrity_error" and verified["error"]["detail"] == "no_data"


def test_one_changed_figure_is_named(honest: dict[str, Any], served: pd.DataFrame) -> None:
    report = copy.deepcopy(honest)
    report["stats"]["win_rate_pct"] += 0.5
    verified = _verify(report, served)
    assert verified["error"]["detail"] == "disagreement" and "win_rate_pct" in verified["error"]["message"]


@pytest.mark.parametrize(("side", "factor"), [("entry_price", 0.9), ("exit_price", 1.1)])
def test_a_fill_outside_the_bar_is_impossible(honest: dict[str, Any], served: pd.DataFrame, side: str,
                                              factor: float) -> None:
    raw = copy.deepcopy(honest["facts"])
    raw["trades"][0][side] *= factor
    with pytest.raises(IntegrityError, match="never had"):
        check_fills(parse_facts(raw), Bars.of(served))


def test_a_fill_before_the_warm_up_is_impossible(honest: dict[str, Any], served: pd.DataFrame) -> None:
    raw = copy.deepcopy(honest["facts"])
    raw["warmup_bars"] = raw["trades"][0]["entry_bar"] + 5
    with pytest.raises(IntegrityError, match="warm-up"):
        check_fills(parse_facts(raw), Bars.of(served))


def _frame_fact(frame: pd.DataFrame) -> dict[str, Any]:
    from rbi.integrity.collect import _frame

    return _frame(frame)


def _check(frame: pd.DataFrame, served: pd.DataFrame) -> None:
    raw = {"v": 1, "bars": len(frame), "warmup_bars": 0, "trades": [], "equity_final": None,
           "backtest": {"cash": 1e6, "commission": 0.0, "spread": 0.0, "margin": 1.0, "trade_on_close": False,
                        "hedging": False, "exclusive_orders": False, "finalize_trades": True},
           "frame": json.loads(json.dumps(_frame_fact(frame)))}
    facts = parse_facts(raw)
    assert facts.frame is not None
    check_frame(facts.frame, Bars.of(served))


def test_identity_slices_and_resamples_of_the_served_data_pass(served: pd.DataFrame) -> None:
    _check(served, served)
    _check(served.iloc[500:900], served)
    hourly = served.resample("1h").agg({"Open": "first", "High": "max", "Low": "min", "Close": "last"}).dropna()
    _check(hourly, served)
    _check(served.tz_localize("UTC").tz_convert("America/New_York"), served)
    _check(served.reset_index(drop=True).iloc[100:200], served)


@pytest.mark.parametrize("forge", [
    lambda f: f.assign(Close=f["Close"] * 1.05),
    lambda f: f.assign(Low=f["Low"] * 0.9),
    lambda f: f.set_axis(f.index + pd.Timedelta(days=400)),
    lambda f: f.reset_index(drop=True).assign(High=lambda g: g["High"] + 1),
], ids=["closes-5pct-higher", "lows-10pct-lower", "shifted-beyond-the-data", "no-index-altered-highs"])
def test_invented_bars_fail(served: pd.DataFrame, forge: Any) -> None:
    with pytest.raises(IntegrityError):
        _check(forge(served.iloc[:400].copy()), served)
