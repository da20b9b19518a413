"""The state machine's study in the results database, walk-forward that re-optimises, the cross-market check."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rbi.engine import LocalExecutor, prepare
from rbi.optimize.loop import OptimizationResult, Optimizer
from rbi.optimize.settings import parse_settings
from rbi.prepare.data import load_ohlcv
from rbi.spec import load_spec
from rbi.store import ResultStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "strategies" / "sma_cross.yaml"


@pytest.fixture(scope="module")
def executor() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=2) as ex:
        yield ex


def _run(store: ResultStore, executor: LocalExecutor, raw: dict[str, Any]) -> OptimizationResult:
    spec = load_spec(EXAMPLE)
    run = prepare(spec)
    frame = load_ohlcv(run.data_file)
    settings = parse_settings({**(spec.optimization or {}), **raw})
    return Optimizer(run, settings, executor=executor, store=store, n_rows=len(frame),
                     index_times=[t.isoformat() for t in frame.index], frame=frame).optimize()


def test_a_rerun_with_the_same_seed_continues_the_study_and_never_repeats_a_trial(
        tmp_path: Path, executor: LocalExecutor) -> None:
    store = ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}")
    store.migrate()
    raw = {"seed": 7, "method": "tpe", "maxTrials": 5, "maxIterations": 1, "batchSize": 5,
           "guards": {"lookahead": False}}
    runs = [_run(store, executor, raw) for _ in range(3)]
    trials = store.trials("sma-cross")
    seen = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(seen) == len(set(seen)), "a parameter set ran twice across the reruns"
    assert [r.trials for r in runs] == [5, 5, 5]
    # The deflated Sharpe ratio and the promotion test count distinct trials, not runs × trials.
    assert [r.distinct_trials for r in runs] == [5, 10, 15]
    for result in runs:
        test = result.iterations[-1].guards.get("promotion_test")
        if test is not None:
            assert test["n_trials"] <= result.distinct_trials


def test_a_finished_grid_is_already_done_on_a_rerun(tmp_path: Path, executor: LocalExecutor) -> None:
    store = ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}")
    store.migrate()
    raw = {"seed": 7, "method": "grid", "maxTrials": 10, "maxIterations": 1, "space": {"fast": [10, 20],
                                                                                    "slow": [100, 200]},
           "guards": {"lookahead": False}}
    first = _run(store, executor, raw)
    again = _run(store, executor, raw)
    assert first.trials == 4 and again.trials == 0
    assert "already done" in again.iterations[-1].reason, again.iterations[-1].reason
    assert len(store.trials("sma-cross")) == 4


def test_walk_forward_reoptimises_each_fold_and_other_markets_are_shown(
        tmp_path: Path, executor: LocalExecutor) -> None:
    store = ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}")
    store.migrate()
    raw = {"seed": 3, "method": "random", "maxTrials": 3, "maxIterations": 1, "batchSize": 3,
           "validation": {"walkForward": {"folds": 2, "mode": "rolling", "testFraction": 0.3},
                          "datasets": ["GOOG"]}, "guards": {"lookahead": False}}
    result = _run(store, executor, raw)
    (iteration,) = result.iterations
    assert len(result.folds) == 2
    # Each fold had a search of its own, on its own training window.
    assert iteration.trials == 6
    trials = store.trials("sma-cross")
    assert len(trials) == 6
    if iteration.folds:  # a candidate differed from the parent: it was scored fold by fold
        assert [f["fold"] for f in iteration.folds] == [0, 1]
        for fold, window in zip(iteration.folds, result.folds, strict=True):
            assert fold["train"] == [window.train.start, window.train.end]
            assert fold["test"] == [window.test.start, window.test.end]
            assert set(fold["params"]) >= {"fast", "slow"}
            assert "out_of_sample" in fold and "champion_out_of_sample" in fold
        assert "GOOG" in iteration.markets
        assert set(iteration.markets["GOOG"]) == {"champion", "candidate", "improvement"}
    # The parent was measured on the other market too.
    assert "GOOG" in result.parent.markets


def test_revision_0003_keeps_the_machine_state_and_downgrades_cleanly(tmp_path: Path) -> None:
    from alembic.command import downgrade, upgrade
    from sqlalchemy import inspect

    from rbi.store.repository import _alembic_config

    store = ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}")
    store.migrate()
    assert store.current_revision() == "0003"
    row = store.save_optimization_state(None, run_key="k", strategy_name="s", state={"stage": "trials", "x": [1]})
    assert store.open_optimization("k") == (row, {"stage": "trials", "x": [1]})
    store.save_optimization_state(row, run_key="k", strategy_name="s", state={"stage": "done"})
    assert store.open_optimization("k") is None  # a finished one is not carried on
    assert store.optimization_states("s") == [{"stage": "done"}]
    first = store.record_study_trial(study="st", strategy_name="s", parent_version=1, iteration=1, trial_number=3,
                                     params={"a": 1}, objective=1.0, status="succeeded", stats={})
    again = store.record_study_trial(study="st", strategy_name="s", parent_version=1, iteration=1, trial_number=3,
                                     params={"a": 1}, objective=1.0, status="succeeded", stats={})
    assert first == again and len(store.trials("s")) == 1
    config = _alembic_config()
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        downgrade(config, "0002")
    assert "optimization_runs" not in inspect(store.engine).get_table_names()
    assert "study" not in {c["name"] for c in inspect(store.engine).get_columns("optimization_trials")}
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        upgrade(config, "head")
    assert "optimization_runs" in inspect(store.engine).get_table_names()
