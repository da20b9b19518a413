"""Indicator reuse across the trials of a batch: a hit only when the values must be the same.

Runs rbi.runner.execute_batch in this process (the code the sandboxed child runs) on the
bundled data, and compares every trial with a separate execute() of the same request.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import talib

from rbi import runner
from rbi.datasets import bundled_dataset
from rbi.indicator_cache import IndicatorCache
from rbi.prepare.data import load_ohlcv

STRATEGY = textwrap.dedent("""
    import numpy as np
    import talib
    from backtesting import Strategy

    def band(close, period):
        band.calls.append(period)  # not a global it reads: a global list that changes would make it uncacheable
        return talib.SMA(close, period)


    band.calls = []


    class Cached(Strategy):
        period = 20
        threshold = 0.0
        poison = 0

        def init(self):
            self.mid = self.I(band, self.data.Close, self.period)
            if self.poison:
                self.mid[:] = 0.0  # writes into its own indicator array: must not reach the next trial
            # A lambda inside init sees this trial's parameters: never cached.
            self.fast = self.I(lambda c: talib.SMA(c, max(2, self.period // 2)), self.data.Close)

        def next(self):
            price = self.data.Close[-1]
            if price > self.mid[-1] * (1 + self.threshold) and not self.position:
                self.buy(size=0.5)
            elif price < self.fast[-1] and self.position:
                self.position.close()
""")


@pytest.fixture(scope="module")
def frame() -> Any:
    return load_ohlcv(bundled_dataset()).iloc[:4000]


@pytest.fixture
def code_path(tmp_path: Path) -> str:
    path = tmp_path / "strategy.py"
    path.write_text(STRATEGY)
    return str(path)


def _request(code_path: str, **params: Any) -> runner.RunRequest:
    return runner.RunRequest(mode="class", code_path=code_path, params=params, include_series=False)


def test_hits_only_for_the_same_function_arguments_and_window(frame: Any, code_path: str) -> None:
    params = [{"period": 20, "threshold": 0.0}, {"period": 20, "threshold": 0.01}, {"period": 40, "threshold": 0.0},
              {"period": 20, "threshold": 0.02}]
    cache = IndicatorCache()
    reports = list(runner.execute_batch([_request(code_path, **p) for p in params], frame=frame, cache=cache))
    assert all(r["error"] is None for r in reports), [r["error"] for r in reports]
    # band(): computed for period 20 and 40 only; the lambdas in init are never cached.
    assert (cache.hits, cache.misses, cache.uncacheable) == (2, 2, 4)
    module = __import__("sys").modules[runner.MODULE_NAME]
    assert module.band.calls == [20, 40]
    for p, report in zip(params, reports, strict=True):
        alone = runner.execute(_request(code_path, **p), frame=frame)
        assert report["facts"] == alone["facts"], p
    # A parameter that feeds the indicator gives a different array, so different results.
    assert reports[0]["facts"] != reports[2]["facts"]


def test_a_trial_that_writes_into_its_indicator_does_not_poison_the_next(frame: Any, code_path: str) -> None:
    params = [{"period": 30, "poison": 1}, {"period": 30}]
    cache = IndicatorCache()
    reports = list(runner.execute_batch([_request(code_path, **p) for p in params], frame=frame, cache=cache))
    assert cache.hits == 1
    alone = runner.execute(_request(code_path, period=30), frame=frame)
    assert reports[1]["facts"] == alone["facts"]
    assert reports[0]["facts"] != alone["facts"]


def test_a_different_data_window_is_a_different_key(frame: Any, code_path: str) -> None:
    requests = [_request(code_path, period=20), _request(code_path, period=20)]
    requests[1].data_range = (1000, 4000)
    cache = IndicatorCache()
    reports = list(runner.execute_batch(requests, frame=frame, cache=cache))
    assert cache.hits == 0 and cache.misses == 2
    alone = runner.execute(requests[1], frame=frame)
    assert reports[1]["facts"] == alone["facts"]


def test_cache_keys_by_content_and_copies_both_ways() -> None:
    cache = IndicatorCache()
    close = np.linspace(1.0, 2.0, 500)
    first = cache.call(talib.SMA, (close, 10), {})
    again = cache.call(talib.SMA, (close.copy(), 10), {})  # a new array with the same bytes: a hit
    other = cache.call(talib.SMA, (close, 11), {})
    changed = close.copy()
    changed[250] += 1.0
    moved = cache.call(talib.SMA, (changed, 10), {})
    assert (cache.hits, cache.misses) == (1, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[20:], other[20:], equal_nan=True)
    assert not np.array_equal(first, moved, equal_nan=True)
    again[:] = -1.0  # what a hit hands out is a copy
    np.testing.assert_array_equal(cache.call(talib.SMA, (close, 10), {}), first)
    first[:] = -2.0  # and so is what a miss stored
    assert cache.call(talib.SMA, (close, 10), {})[-1] == pytest.approx(close[-10:].mean())


def _passthrough(values: Any, extra: object) -> Any:
    return values


SETTINGS = {"period": 10}


def _from_global(values: Any) -> Any:
    return talib.SMA(values, SETTINGS["period"])


def test_a_module_global_the_function_reads_is_part_of_the_key() -> None:
    """A strategy that sets a module-level setting from a parameter before calling self.I."""
    cache = IndicatorCache()
    close = np.linspace(1.0, 2.0, 500) ** 2
    first = cache.call(_from_global, (close,), {})
    SETTINGS["period"] = 20
    try:
        second = cache.call(_from_global, (close,), {})
    finally:
        SETTINGS["period"] = 10
    assert cache.hits == 0
    assert np.isnan(second[15]) and not np.isnan(first[15])


def test_uncacheable_calls_and_the_byte_bound() -> None:
    cache = IndicatorCache(max_bytes=8000)
    close = np.linspace(1.0, 2.0, 500)

    class Callable:
        def __call__(self, values: Any) -> Any:
            return values * 2

    cache.call(Callable(), (close,), {})
    cache.call(_passthrough, (close, object()), {})  # a stable function, but an argument it cannot vouch for
    assert cache.uncacheable == 2
    for period in (5, 6, 7):  # 4000 bytes each: the first is evicted
        cache.call(talib.SMA, (close, period), {})
    assert cache.stats()["entries"] == 2 and cache.stats()["bytes"] <= 8000
