"""Honest runs: the host's recomputation gives exactly what backtesting.py's own Backtest.run() gives.

Every field of stats_to_dict, the whole equity curve and the trade list are compared on the
bundled data (the trades for equality, the figures to 1e-12: mostly they are bit for bit the
same), for the example strategies and for strategies that exercise each part of the broker
(tests/integrity/strategies.py).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from backtesting import Backtest, Strategy

from rbi import stats as stats_module
from rbi.integrity.collect import run_facts
from rbi.integrity.facts import parse_facts
from rbi.integrity.fills import Bars, check_fills
from rbi.integrity.recompute import recompute
from rbi.prepare.data import load_ohlcv
from rbi.prepare.extract import extract_code

from .strategies import CASES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "strategies"
OPTIONS = {"cash": 1_000_000, "commission": 0.002, "finalize_trades": True}


@pytest.fixture(scope="module")
def frame(bundled_data: Path) -> pd.DataFrame:
    return load_ohlcv(bundled_data)


def _both(strategy: type[Strategy], frame: pd.DataFrame, options: dict[str, Any]) -> tuple[pd.Series, pd.Series]:
    """(backtesting's own stats, the host's recomputation from the run's facts after a JSON round trip)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backtest = Backtest(frame, strategy, **{**OPTIONS, **options})
        stats = backtest.run()
    raw = run_facts(backtest, stats)
    assert raw is not None
    facts = parse_facts(json.loads(json.dumps(raw)))
    bars = Bars.of(frame)
    check_fills(facts, bars)
    return stats, recompute(facts, bars).stats


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        # Cash is a running float sum: where two orders fill on one bar, their order (which the
        # trade list does not record) can move the last bit; 1e-12 is far below any rounding shown.
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return bool(a == b)


def _assert_identical(stats: pd.Series, again: pd.Series) -> None:
    expected, got = stats_module.stats_to_dict(stats), stats_module.stats_to_dict(again)
    assert list(got) == list(expected)
    differing = {k: (expected[k], got[k]) for k in expected if not _same(expected[k], got[k])}
    assert not differing, differing
    np.testing.assert_allclose(again["_equity_curve"]["Equity"].to_numpy(),
                               stats["_equity_curve"]["Equity"].to_numpy(), rtol=1e-12, atol=1e-9)
    # Per-trade figures are computed one trade at a time, with backtesting's own expressions: equal.
    assert stats_module.trades_summary(again, max_trades=10**6) == stats_module.trades_summary(stats, max_trades=10**6)
    for ours, theirs in zip(stats_module.equity_curve(again), stats_module.equity_curve(stats), strict=True):
        assert ours[0] == theirs[0] and all(_same(a, b) for a, b in zip(ours[1:], theirs[1:], strict=True))


@pytest.mark.parametrize("case", sorted(CASES))
def test_recomputation_is_exactly_backtesting(case: str, frame: pd.DataFrame) -> None:
    strategy, options, rows = CASES[case]
    stats, again = _both(strategy, frame.iloc[:rows], options)
    broker = stats["_strategy"]._broker
    assert broker.closed_trades or broker.trades, "a case that never trades proves nothing"
    _assert_identical(stats, again)


def test_the_cases_reach_what_they_are_meant_to(frame: pd.DataFrame) -> None:
    """Controls: the bust case busts, the open case leaves trades open, partial closes split trades."""
    strategy, options, rows = CASES["goes_bust"]
    stats, _ = _both(strategy, frame.iloc[:rows], options)
    assert stats["Equity Final [$]"] == 0
    strategy, options, rows = CASES["open_at_the_end"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backtest = Backtest(frame.iloc[:rows], strategy, **{**OPTIONS, **options})
        backtest.run()
    facts = run_facts(backtest, backtest._results)
    assert facts is not None and any(t["exit_bar"] is None for t in facts["trades"])
    strategy, options, rows = CASES["partial_closes"]
    stats, _ = _both(strategy, frame.iloc[:rows], options)
    trades = stats["_trades"]
    assert trades.duplicated(["EntryBar", "EntryPrice"]).any(), "no trade was split by position.close(0.5)"


def _example_strategy(name: str) -> type[Strategy]:
    text = (EXAMPLES / name).read_text()
    code = extract_code(text) if name.endswith(".md") else text
    namespace: dict[str, Any] = {"__name__": f"example_{name.split('.')[0]}"}
    exec(compile(code, name, "exec"), namespace)
    classes = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, Strategy) and v is not Strategy]
    return classes[-1]


@pytest.mark.parametrize("name", ["sma_cross.py", "llm_answer.md"])
def test_example_strategies_on_the_whole_dataset(name: str, frame: pd.DataFrame) -> None:
    stats, again = _both(_example_strategy(name), frame, {})
    _assert_identical(stats, again)


def test_the_example_script_on_its_own_frame(frame: pd.DataFrame, tmp_path: Path, bundled_data: Path) -> None:
    """rsi_script.py cleans the CSV itself; its frame travels in the facts and is checked as foreign."""
    from rbi import runner
    from rbi.integrity import verify_report
    from rbi.prepare.data import materialize_csv

    raw_csv = materialize_csv(bundled_data, tmp_path / "cache")
    path = tmp_path / "strategy.py"
    path.write_text((EXAMPLES / "rsi_script.py").read_text())
    report = runner.execute(runner.RunRequest(mode="script", code_path=str(path), raw_data_path=str(raw_csv)))
    assert report["error"] is None and report["facts"]["frame"] is not None
    verified = verify_report(json.loads(runner.encode_report(report)), frame=frame, mode="script")
    assert verified["error"] is None, verified["error"]
    assert verified["stats"] == report["stats"]
    # The series travel no more: the host builds them from its own recomputation, as the runner asked.
    assert "equity_curve" not in report and report["series"] is True
    assert len(verified["trades"]) == report["stats"]["num_trades"]
    assert verified["equity_curve"][-1][1] == pytest.approx(report["stats"]["equity_final"], rel=1e-12)
