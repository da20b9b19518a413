"""The optimisation loop for real: sandboxed trials on the bundled data, a real SQLite store."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rbi.engine import LocalExecutor, PreparedRun, prepare
from rbi.optimize.loop import OptimizationResult, Optimizer
from rbi.optimize.settings import parse_settings
from rbi.prepare.data import load_ohlcv
from rbi.spec import StrategySpec
from rbi.store import ResultStore

HONEST = textwrap.dedent("""
    import talib
    from backtesting import Strategy
    from backtesting.lib import crossover

    class SmaCross(Strategy):
        fast = 20
        slow = 240

        def init(self):
            self.a = self.I(talib.SMA, self.data.Close, self.fast)
            self.b = self.I(talib.SMA, self.data.Close, self.slow)

        def next(self):
            if crossover(self.a, self.b):
                self.position.close()
                self.buy(size=0.5)
            elif crossover(self.b, self.a):
                self.position.close()
""")

# Buys when tomorrow's close is higher: a classic look-ahead leak through pandas on the whole frame.
CHEAT = textwrap.dedent("""
    import numpy as np
    from backtesting import Strategy

    class Oracle(Strategy):
        hold = 1

        def init(self):
            close = self.data.df.Close
            future_up = (close.shift(-self.hold) > close).astype(float).to_numpy()
            self.up = self.I(lambda: future_up, name="up")

        def next(self):
            if self.up[-1] > 0 and not self.position:
                self.buy(size=0.5)
            elif self.up[-1] <= 0 and self.position:
                self.position.close()
""")


@pytest.fixture(scope="module")
def executor() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def frame(bundled_data: Path) -> Any:
    return load_ohlcv(bundled_data)


@pytest.fixture(scope="module")
def index_times(frame: Any) -> list[str]:
    return [t.isoformat() for t in frame.index]


def _optimize(code: str, name: str, raw: dict[str, Any], *, executor: LocalExecutor, store: ResultStore,
              index_times: list[str]) -> tuple[OptimizationResult, PreparedRun]:
    from rbi.datasets import bundled_dataset

    run = prepare(StrategySpec(name=name, code=code, mode="class"))
    optimizer = Optimizer(run, parse_settings(raw), executor=executor, store=store, n_rows=len(index_times),
                          index_times=index_times, batch_size=4, frame=load_ohlcv(bundled_dataset()))
    return optimizer.optimize(), run


def _optimization_counts() -> dict[str, float]:
    from rbi.metrics import REGISTRY

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    return {"trials": value("rbi_optimization_trials_total", {"source": "params"}),
            "promoted": value("rbi_optimization_iterations_total", {"result": "promoted"}),
            "rejected": value("rbi_optimization_iterations_total", {"result": "rejected"}),
            "improvements": value("rbi_optimization_improvement_ratio_count")}


def test_params_search_promotes_only_what_holds_out_of_sample(
        tmp_path: Path, executor: LocalExecutor, index_times: list[str]) -> None:
    store = ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}")
    store.migrate()
    raw = {"objective": "return_pct", "method": "grid", "seed": 1, "maxTrials": 9, "maxIterations": 3,
           "minImprovement": 0.0, "validation": {"holdout": 0.3}, "guards": {"minDeflatedSharpe": 0.0},
           "space": {"fast": [10, 20, 40], "slow": [60, 120, 240]}, "constraints": ["num_trades >= 5"]}
    before = _optimization_counts()
    result, run = _optimize(HONEST, "sma", raw, executor=executor, store=store, index_times=index_times)

    # The same Prometheus series the operator exports count local optimisation too.
    after = _optimization_counts()
    promoted_count = sum(i.promoted for i in result.iterations)
    assert after["trials"] - before["trials"] == result.trials
    assert after["promoted"] - before["promoted"] == promoted_count
    assert after["rejected"] - before["rejected"] == len(result.iterations) - promoted_count
    assert after["improvements"] - before["improvements"] == promoted_count

    trials = store.trials("sma")
    assert len(trials) == result.trials == sum(i.trials for i in result.iterations)
    assert {json.dumps(t.params, sort_keys=True) for t in trials} <= {
        json.dumps({"fast": f, "slow": s}, sort_keys=True) for f in (10, 20, 40) for s in (60, 120, 240)}
    # The parent's own parameters were tried first.
    assert trials[0].params == {"fast": 20, "slow": 240}

    lineage = store.lineage("sma")
    promoted = [i for i in result.iterations if i.promoted]
    assert [e.child_version for e in lineage] == [i.child_version for i in promoted] == result.children
    for iteration, edge in zip(promoted, lineage, strict=True):
        assert iteration.improvement is not None and iteration.improvement >= 0.0
        assert iteration.guards["lookahead_suspected"] is False
        assert edge.optimization_type == "params" and edge.performance_delta == pytest.approx(iteration.improvement)
        assert json.loads(edge.changes_made), "a child must change something"
    last = result.iterations[-1]
    assert last.promoted or last.reason
    assert result.stop_reason

    # The reported out-of-sample figure is reproducible by an independent run on the same window.
    fold = result.folds[0]
    window = fold.test.with_warmup(200)
    again = executor.execute(run.with_params(result.best.params).on_rows(window.start, window.end))
    assert again.stats["return_pct"] == pytest.approx(result.best.oos_score)
    assert fold.train.end <= fold.test.start

    versions = {v.version: v for v in store.versions("sma")}
    for child in result.children:
        assert versions[child].source == "params" and versions[child].parent_version is not None


def test_lookahead_strategies_are_never_promoted(
        tmp_path: Path, executor: LocalExecutor, index_times: list[str]) -> None:
    store = ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}")
    store.migrate()
    raw = {"objective": "return_pct", "method": "grid", "maxTrials": 3, "maxIterations": 2, "minImprovement": 0.0,
           "guards": {"minDeflatedSharpe": 0.0}, "space": {"hold": [1, 2, 3]}}
    result, _ = _optimize(CHEAT, "oracle", raw, executor=executor, store=store, index_times=index_times)
    # The parent itself is caught before any trial is spent on it.
    assert result.parent_guards["lookahead_suspected"] is True, result.parent_guards
    assert result.trials == 0 and not result.children
    assert "look-ahead" in result.stop_reason
    assert store.lineage("oracle") == []
    # The honest strategy passes the same check.
    honest, _ = _optimize(HONEST, "honest", {**raw, "space": {"fast": [10, 20]}, "maxIterations": 1},
                          executor=executor, store=store, index_times=index_times)
    assert honest.parent_guards["lookahead_suspected"] is False, honest.parent_guards


def test_the_two_gates_are_kept_apart_and_both_shown(
        tmp_path: Path, executor: LocalExecutor, index_times: list[str]) -> None:
    """Promotion needs a significant out-of-sample gain; the deflated Sharpe ratio only marks deployable."""
    store = ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}")
    store.migrate()
    # fast=2/slow=3 churns on noise: any sane pair beats it out of sample, by far more than chance explains.
    raw = {"objective": "return_pct", "method": "random", "seed": 3, "maxTrials": 6, "maxIterations": 1,
           "minImprovement": 0.0, "guards": {"minDeflatedSharpe": 1.01},
           "space": {"fast": {"type": "int", "low": 5, "high": 60}, "slow": {"type": "int", "low": 80, "high": 300}}}
    from rbi.datasets import bundled_dataset

    run = prepare(StrategySpec(name="gates", code=HONEST, mode="class", params={"fast": 2, "slow": 3}))
    result = Optimizer(run, parse_settings(raw), executor=executor, store=store, n_rows=len(index_times),
                       index_times=index_times, frame=load_ohlcv(bundled_dataset())).optimize()
    (iteration,) = result.iterations
    test = iteration.guards["promotion_test"]
    assert "stationary bootstrap" in test["method"] and test["n_trials"] >= 6
    assert test["alpha_adjusted"] == pytest.approx(1 - 0.95 ** (1 / test["n_trials"]))
    dsr = iteration.guards["deflated_sharpe"]
    assert dsr is None or 0.0 <= dsr <= 1.0
    # A DSR of at least 1.01 is impossible: whatever is promoted is not deployable, and says so.
    assert iteration.deployable is False
    assert iteration.promoted, iteration.reason
    assert test["passed"] and test["p_value"] <= test["alpha_adjusted"]
    (edge,) = store.lineage("gates")
    assert edge.details is not None and edge.details["deployable"] is False
    assert edge.details["guards"]["promotion_test"]["passed"] is True


class _CrashingStore:
    """The real store, until the optimiser records a trial of iteration 2: then the process 'dies'."""

    def __init__(self, store: ResultStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def record_study_trial(self, **fields: Any) -> int:
        if fields["iteration"] >= 2:
            raise RuntimeError("simulated crash in the middle of iteration 2")
        return self._store.record_study_trial(**fields)


def test_a_crash_mid_loop_resumes_without_losing_or_duplicating(
        tmp_path: Path, executor: LocalExecutor, index_times: list[str], frame: Any) -> None:
    store = ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}")
    store.migrate()
    # fast=2/slow=3 churns on noise and pays commission every few bars: the grid's other corner wins clearly.
    settings = parse_settings({"objective": "return_pct", "method": "grid", "maxTrials": 4, "maxIterations": 3,
                               "minImprovement": 0.0, "guards": {"minDeflatedSharpe": 0.0},
                               "space": {"fast": [2, 10, 20], "slow": [3, 100, 200]}, "seed": 5})
    run = prepare(StrategySpec(name="resume", code=HONEST, mode="class", params={"fast": 2, "slow": 3}))

    def optimizer(target: Any) -> Optimizer:
        return Optimizer(run, settings, executor=executor, store=target, n_rows=len(index_times),
                         index_times=index_times, batch_size=4, frame=frame)

    with pytest.raises(RuntimeError, match="simulated crash"):
        optimizer(_CrashingStore(store)).optimize()
    before_versions = store.versions("resume")
    before_lineage = store.lineage("resume")
    assert before_lineage, "iteration 1 should have promoted a child before the crash"
    promoted = before_lineage[-1].child_version

    result = optimizer(store).optimize()
    # The saved state machine carries on with the batch of iteration 2 it had asked for.
    assert result.resumed_from == promoted
    assert [i.iteration for i in result.iterations][:2] == [1, 2]
    trials = store.trials("resume")
    keys = [(t.iteration, t.trial_number, json.dumps(t.params, sort_keys=True)) for t in trials]
    assert len(keys) == len(set(keys)), "a trial was recorded twice"
    assert len({json.dumps(t.params, sort_keys=True) for t in trials if t.parent_version == promoted}) == len(
        [t for t in trials if t.parent_version == promoted]), "a parameter set was run twice"
    versions = store.versions("resume")
    keys = [(v.code_hash, json.dumps(v.params, sort_keys=True)) for v in versions]
    assert len(keys) == len(set(keys)), "a version was registered twice"
    assert [v.version for v in versions][: len(before_versions)] == [v.version for v in before_versions]
    edges = [(e.parent_version, e.child_version, e.optimization_type) for e in store.lineage("resume")]
    assert len(edges) == len(set(edges)), "a lineage row was duplicated"
    assert result.best.version is not None and result.best.version >= promoted
