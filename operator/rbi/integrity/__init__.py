"""Figures a strategy cannot forge: the host recomputes what a run reports.

A strategy shares a process with the runner, so everything the sandbox returns may be forged.
The sandbox therefore also returns the raw facts of its run (rbi.integrity.collect); the host
schema-checks them (facts), checks every fill against the data it served (fills), rebuilds
the equity curve and every statistic with its own backtesting.py (recompute), and compares
the run's own figures with its result (compare). The recomputed figures, equity curve and
trades replace the reported ones; a disagreement or an impossible fill fails the run as
`integrity_error`, naming the first thing wrong. No silent repair.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd

from rbi.integrity.compare import first_disagreement
from rbi.integrity.facts import Facts, FrameFact, IntegrityError, parse_facts
from rbi.integrity.fills import Bars, check_fills, check_frame
from rbi.integrity.recompute import recompute

__all__ = ["IntegrityError", "ServedData", "host_dataset", "served_data", "verifier", "verify_report"]

INTEGRITY_ERROR = "integrity_error"
MAX_TRADES = 2000


class ServedData:
    """The rows a run was served (the host's own copy), loaded once per file and range."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._bars: Bars | None = None

    @property
    def bars(self) -> Bars:
        if self._bars is None:
            self._bars = Bars.of(self.frame)
        return self._bars


_cache: dict[tuple[str, int, int], pd.DataFrame] = {}
_sliced: dict[tuple[str, int, int, Any], ServedData] = {}
_lock = threading.Lock()


def served_data(path: str, data_range: tuple[int, int] | None = None) -> ServedData:
    """The normalised dataset at `path` (rows [start, end) when given), cached by file identity."""
    from rbi.prepare.data import load_ohlcv

    info = os.stat(path)
    key = (path, info.st_mtime_ns, info.st_size)
    rows = tuple(data_range) if data_range is not None else None
    with _lock:
        if (*key, rows) in _sliced:
            return _sliced[(*key, rows)]
        frame = _cache.get(key)
    if frame is None:
        frame = load_ohlcv(path)
    served = ServedData(frame.iloc[int(rows[0]):int(rows[1])] if rows is not None else frame)
    with _lock:
        if len(_cache) >= 4:
            _cache.clear()
        if len(_sliced) >= 32:
            _sliced.clear()
        _cache[key] = frame
        _sliced[(*key, rows)] = served
    return served


def _foreign_frame(fact: FrameFact) -> pd.DataFrame:
    if fact.datetime:
        index: pd.Index = pd.DatetimeIndex(fact.index.astype("datetime64[ns]"))
        if fact.tz:
            try:
                index = index.tz_localize("UTC").tz_convert(fact.tz)
            except Exception:
                raise IntegrityError(f"malformed facts: unknown time zone {fact.tz!r}") from None
    else:
        index = pd.Index(fact.index)
    return pd.DataFrame({"Open": fact.open, "High": fact.high, "Low": fact.low, "Close": fact.close}, index=index)


def _bars_for(facts: Facts, served: ServedData) -> Bars:
    if facts.frame is None:
        return served.bars
    check_frame(facts.frame, served.bars)
    return Bars.of(_foreign_frame(facts.frame))


def _failed(report: dict[str, Any], error: IntegrityError) -> dict[str, Any]:
    failed = {k: v for k, v in report.items() if k not in ("facts", "stats", "series", "equity_curve", "trades")}
    failed["stats"] = None
    failed["error"] = {"type": INTEGRITY_ERROR, "message": str(error)[:2000], "line": None, "detail": error.detail,
                       "traceback": ""}
    return failed


def verify_report(report: dict[str, Any], *, frame: ServedData | pd.DataFrame | None, mode: str | None = None,
                  max_trades: int = MAX_TRADES) -> dict[str, Any]:
    """The runner's report with its figures replaced by the host's recomputation, or failed as integrity_error.

    Reports of failed runs and of runs that ran no backtest pass unchanged (they carry no figures);
    `frame` is the data the host served (None: it could not be read, so nothing can be verified).
    """
    del mode  # one rule for both modes: script-mode frames travel in the facts
    if not isinstance(report, dict) or isinstance(report.get("error"), dict):
        return report
    raw_facts, stats = report.get("facts"), report.get("stats")
    if raw_facts is None and stats is None and report.get("ran_backtest") is not True:
        return report  # no backtest ran; classify says so
    try:
        if frame is None:
            raise IntegrityError("the host could not read the dataset it served, so the run cannot be verified",
                                 detail="no_data")
        served = frame if isinstance(frame, ServedData) else ServedData(frame)
        facts = parse_facts(raw_facts)
        bars = _bars_for(facts, served)
        check_fills(facts, bars)
        recomputed = recompute(facts, bars)
        from rbi import stats as stats_module

        figures = stats_module.stats_to_dict(recomputed.stats)
        disagreement = first_disagreement(stats, figures, equity_final=facts.equity_final)
        if disagreement is not None:
            raise IntegrityError(f"the run's own figures disagree with the host's recomputation: {disagreement}",
                                 detail="disagreement")
    except IntegrityError as error:
        return _failed(report, error)
    verified = {k: v for k, v in report.items() if k not in ("facts", "series", "equity_curve", "trades")}
    verified["stats"] = figures
    verified["verified"] = True
    if report.get("series") is True:  # asked for by the run request; built from the host's own figures only
        verified["equity_curve"] = stats_module.equity_curve(recomputed.stats)
        verified["trades"] = stats_module.trades_summary(recomputed.stats, max_trades=max_trades)
    return verified


def verifier(data_file: str | None, data_range: tuple[int, int] | None = None, *, mode: str | None = None,
             max_trades: int = MAX_TRADES, data_fraction: tuple[float, float] | None = None,
             ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """verify_report bound to the dataset a run was served (loaded, and cached, only when needed).

    `data_fraction` (a Job's dataFraction) picks the rows the way rbi.runner does in the pod.
    """

    def verify(report: dict[str, Any]) -> dict[str, Any]:
        served: ServedData | None = None
        if data_file is not None:
            try:
                rows = data_range
                if data_fraction is not None:
                    count = len(served_data(data_file).frame)
                    rows = (int(count * float(data_fraction[0])), int(count * float(data_fraction[1])))
                served = served_data(data_file, rows)
            except Exception:  # unreadable here: verify_report fails a run with figures, says why
                served = None
        return verify_report(report, frame=served, mode=mode, max_trades=max_trades)

    return verify


def host_dataset(container_path: str | None) -> str | None:
    """Where the operator finds the dataset a Job read: the bundled sample of that name, or the same
    path (the dataset PVC mounted in the operator at /data as in the Jobs). None: not readable here."""
    from rbi.datasets import bundled_dataset
    from rbi.errors import DataError
    from rbi.runner import BUNDLED_PREFIX

    if not container_path:
        return None
    if container_path.startswith(BUNDLED_PREFIX):
        try:
            return str(bundled_dataset(container_path[len(BUNDLED_PREFIX):]))
        except DataError:
            return None
    return container_path if os.path.isfile(container_path) else None
