"""Batches: many trials in one sandboxed child, each with its own budget and its own result.

Real sandboxed runs on the bundled data (a short window, so each trial is quick). The hostile
trials here break their child or its result channel on purpose; each must cost only its own
result, and the trials after it must still come back right (they run in a fresh child).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rbi.engine import LocalExecutor, PreparedRun, plan_batches
from rbi.outcome import FailureClass, RunOutcome, Status

from .hostile import make_run

ROWS = (0, 3000)

STRATEGY = """
import os
import struct
import time

import numpy as np
import talib
from backtesting import Strategy
from backtesting.lib import crossover


class Trial(Strategy):
    fast = 10
    slow = 40
    nap = 0.0
    hog = 0
    forge = 0
    quit = 0
    close_channel = 0
    ballast = 0

    def init(self):
        self._ballast = np.ones(2**25) if self.ballast else None  # 256 MiB, kept for the whole trial
        if self.nap:
            time.sleep(self.nap)
        if self.hog:
            blocks = []
            while True:  # until the memory limit stops it: the cgroup kills the child, or MemoryError
                blocks.append(np.ones(2**24))
        if self.forge == 1:  # a well-formed frame for its own trial (index 1 in the batch), with invented stats
            body = b'{"mode":"class","error":null,"stats":{"num_trades":99,"sharpe_ratio":9.9}}'
            os.write(3, b"RBIF" + struct.pack("!II", 1, len(body)) + body)
        elif self.forge == 2:
            os.write(3, b"this is not a frame at all")
        elif self.forge == 3:
            os.write(3, b"RBIF" + struct.pack("!II", 3, 2**31))
        elif self.forge == 4:
            os.write(3, b"RBIF" + struct.pack("!II", 7, 2) + b"{}")
        if self.close_channel:
            os.close(3)
        self.sma_fast = self.I(talib.SMA, self.data.Close, self.fast)
        self.sma_slow = self.I(talib.SMA, self.data.Close, self.slow)

    def next(self):
        if self.quit:
            raise SystemExit(3)
        if crossover(self.sma_fast, self.sma_slow):
            self.position.close()
            self.buy(size=0.5)
        elif crossover(self.sma_slow, self.sma_fast):
            self.position.close()
"""


@pytest.fixture(scope="module")
def trial_run(dataset_cache: Path) -> Callable[..., PreparedRun]:
    def make(**limits: object) -> PreparedRun:
        return make_run(STRATEGY, cache=dataset_cache, mode="class", **limits)

    return make


def _jobs(base: PreparedRun, params: list[dict[str, Any]]) -> list[PreparedRun]:
    return [base.with_params(p).on_rows(*ROWS) for p in params]


def _kinds(outcomes: list[RunOutcome]) -> list[FailureClass | None]:
    return [o.error.type if o.error else None for o in outcomes]


def _describe(outcomes: list[RunOutcome]) -> str:
    return "\n".join(f"{o.status} {o.error}" for o in outcomes)


def test_a_batch_gives_the_same_stats_per_trial_as_separate_runs(executor: LocalExecutor,
                                                                   trial_run: Callable[..., PreparedRun]) -> None:
    jobs = _jobs(trial_run(), [{"fast": 5, "slow": 30}, {"fast": 5, "slow": 60}, {"fast": 15, "slow": 30},
                               {"fast": 20, "slow": 80}, {"fast": 5, "slow": 30}])
    batch = executor.execute_batch(jobs)
    separate = [executor.execute(job) for job in jobs]
    assert [o.status for o in batch] == [Status.SUCCEEDED] * len(jobs), _describe(batch)
    for alone, together in zip(separate, batch, strict=True):
        assert together.stats == alone.stats
        assert together.params == alone.params
    # Different parameters give different results, so the comparison above could fail.
    assert batch[0].stats != batch[1].stats
    assert batch[0].stats == batch[4].stats


def test_a_trial_over_its_time_budget_is_a_timeout_and_the_rest_complete(
        executor: LocalExecutor, trial_run: Callable[..., PreparedRun]) -> None:
    jobs = _jobs(trial_run(timeout_seconds=6), [{}, {"nap": 60}, {"fast": 15}, {}])
    outcomes = executor.execute_batch(jobs)
    assert _kinds(outcomes) == [None, FailureClass.TIMEOUT, None, None], _describe(outcomes)
    assert outcomes[2].stats == executor.execute(jobs[2]).stats


def test_trials_that_break_their_child_cost_only_their_own_result(
        executor: LocalExecutor, trial_run: Callable[..., PreparedRun]) -> None:
    jobs = _jobs(trial_run(), [{}, {"hog": 1}, {"fast": 15}, {"close_channel": 1}, {"quit": 1}, {"slow": 50}])
    outcomes = executor.execute_batch(jobs)
    kinds = _kinds(outcomes)
    assert kinds[1] == FailureClass.MEMORY_LIMIT, _describe(outcomes)
    assert kinds[3] == FailureClass.RUNTIME_ERROR, _describe(outcomes)
    assert kinds[4] == FailureClass.RUNTIME_ERROR and "SystemExit" in (outcomes[4].error.message or "")
    for index in (0, 2, 5):
        assert outcomes[index].status is Status.SUCCEEDED, _describe(outcomes)
        assert outcomes[index].stats == executor.execute(jobs[index]).stats


def test_forged_result_frames_are_rejected(executor: LocalExecutor, trial_run: Callable[..., PreparedRun]) -> None:
    """Threat: a trial writes its own frames on the result channel: invented stats for itself, garbage,
    a frame claiming 2 GiB, or a frame for another trial. None of them may be taken as a result."""
    params = [{}, {"forge": 1}, {"fast": 15}, {"forge": 2}, {}, {"forge": 3}, {"slow": 60}, {"forge": 4}, {}]
    outcomes = executor.execute_batch(_jobs(trial_run(), params))
    kinds = _kinds(outcomes)
    assert kinds[1] == FailureClass.RUNTIME_ERROR, _describe(outcomes)
    assert kinds[3] == FailureClass.RUNTIME_ERROR, _describe(outcomes)
    assert kinds[5] == FailureClass.OUTPUT_LIMIT, _describe(outcomes)
    assert kinds[7] == FailureClass.RUNTIME_ERROR, _describe(outcomes)
    for outcome in outcomes:
        assert not outcome.stats or outcome.stats.get("num_trades") != 99
    honest = [0, 2, 4, 6, 8]
    assert [outcomes[i].status for i in honest] == [Status.SUCCEEDED] * len(honest), _describe(outcomes)
    assert outcomes[2].stats == executor.execute(_jobs(trial_run(), [{"fast": 15}])[0]).stats


def test_each_trial_reports_its_own_peak_memory(executor: LocalExecutor,
                                                trial_run: Callable[..., PreparedRun]) -> None:
    """The peak counter starts over between the trials of a batch (and between runs: test_cgroups)."""
    jobs = _jobs(trial_run(), [{"ballast": 1}, {}])
    outcomes = executor.execute_batch(jobs)
    assert [o.status for o in outcomes] == [Status.SUCCEEDED] * 2, _describe(outcomes)
    first, second = (o.peak_memory_bytes or 0 for o in outcomes)
    if not executor.pool.info.get("cgroups"):
        pytest.skip("cgroups are not writable here: peaks come from rusage of the whole child")
    assert first >= 2**28  # the 256 MiB of ballast
    assert second < first - 2**27


def _fields(run: PreparedRun) -> dict[str, Any]:
    return {name: getattr(run, name) for name in run.__dataclass_fields__}


def test_plan_batches_keeps_order_and_splits_per_worker(trial_run: Callable[..., PreparedRun]) -> None:
    base = trial_run()
    other = type(base)(**{**_fields(base), "code": base.code + "\n# another version\n"})
    runs = [base.with_params({"fast": n}) for n in range(5)] + [other, base.with_params({"fast": 99})]
    batches = plan_batches(runs, workers=2, max_size=64)
    assert sorted(i for b in batches for i in b) == list(range(len(runs)))
    assert batches == [[0, 1, 2], [3, 4, 6], [5]]
    assert plan_batches(runs[:5], workers=2, max_size=2) == [[0, 1], [2, 3], [4]]
