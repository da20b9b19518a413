"""spec.optimization parsing and the Optuna search wrapper (pure, no sandbox)."""

from __future__ import annotations

from typing import Any

import pytest

from rbi.errors import SpecError
from rbi.optimize.search import ParameterSearch
from rbi.optimize.settings import parse_settings

SPACE = {"fast": {"type": "int", "low": 5, "high": 20, "step": 5}, "slow": {"type": "int", "low": 30, "high": 50,
                                                                             "step": 10}}


def test_defaults_follow_the_plan() -> None:
    settings = parse_settings({"space": SPACE})
    assert settings.max_iterations == 10 and settings.min_improvement == 0.05
    assert settings.primary.stat == "sharpe_ratio" and settings.primary.maximize
    assert settings.method == "tpe"


def test_grid_enumerates_every_combination() -> None:
    settings = parse_settings({"space": {**SPACE, "mode": ["a", "b"]}, "method": "grid"})
    grid = settings.grid()
    assert settings.grid_size() == 4 * 3 * 2 == len(grid)
    assert {g["fast"] for g in grid} == {5, 10, 15, 20} and {g["mode"] for g in grid} == {"a", "b"}


def test_objectives_constraints_and_overrides() -> None:
    settings = parse_settings(
        {"space": SPACE, "objective": ["return_pct", {"name": "max_drawdown_pct", "direction": "maximize"}],
         "constraints": ["num_trades >= 10", {"stat": "max_drawdown_pct", "min": -30}]},
        overrides={"maxTrials": 7, "seed": 3})
    assert settings.multi_objective and settings.method == "nsga2"
    assert settings.max_trials == 7 and settings.seed == 3
    ok = {"num_trades": 12, "max_drawdown_pct": -20.0}
    assert all(c.holds(ok) for c in settings.constraints)
    assert not settings.constraints[0].holds({"num_trades": 3})
    assert not settings.constraints[1].holds({"max_drawdown_pct": -45.0})
    assert not settings.constraints[0].holds({"num_trades": None})
    assert not parse_settings({"space": SPACE, "objective": "-volatility_ann_pct"}).primary.maximize


@pytest.mark.parametrize(("raw", "fragment"), [
    ({}, "space must map"),
    ({"space": SPACE, "method": "annealing"}, "method must be one of"),
    ({"space": SPACE, "objective": ["a", "b"], "method": "cmaes"}, "cmaes optimises one objective"),
    ({"space": {"x": {"type": "int", "low": 9, "high": 1}}}, "low"),
    ({"space": {"x": {"type": "float", "low": 0.1, "high": 1.0}}, "method": "grid"}, "needs a step"),
    ({"space": SPACE, "constraints": ["trades are many"]}, "constraints\\[0\\]"),
    ({"space": SPACE, "maxTrials": 0}, "maxTrials"),
    ({"space": SPACE, "minImprovement": -1}, "minImprovement"),
    ({"space": SPACE, "surprise": 1}, "unknown field"),
])
def test_malformed_blocks_are_refused(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        parse_settings(raw)


@pytest.mark.parametrize("method", ["grid", "random", "tpe", "cmaes"])
def test_each_method_finds_the_peak_of_a_known_function(method: str) -> None:
    space = {"x": {"type": "int", "low": 0, "high": 20, "step": 1}, "y": {"type": "int", "low": 0, "high": 20}}
    settings = parse_settings({"space": space, "method": method, "seed": 7, "maxTrials": 300})
    search = ParameterSearch(settings)
    best = None
    for _ in range(60):
        batch = search.ask(5)
        if not batch:
            break
        for item in batch:
            value = -((item.params["x"] - 13) ** 2) - (item.params["y"] - 4) ** 2
            search.tell(item, {"sharpe_ratio": value})
            best = value if best is None else max(best, value)
    assert best is not None and best >= -2, f"{method} ended at {best}"


def test_grid_search_is_exhausted_and_reproducible() -> None:
    settings = parse_settings({"space": SPACE, "method": "grid", "seed": 1})
    first = [a.params for a in ParameterSearch(settings).ask(100)]
    assert len(first) == settings.grid_size()
    assert sorted(map(str, first)) == sorted(map(str, settings.grid()))
    again = [a.params for a in ParameterSearch(settings).ask(100)]
    assert first == again


def test_failed_and_undefined_trials_do_not_count() -> None:
    settings = parse_settings({"space": SPACE, "method": "random", "seed": 2})
    search = ParameterSearch(settings)
    first, second = search.ask(2)
    assert search.tell(first, None) is None
    assert search.tell(second, {"sharpe_ratio": None}) is None
    assert all(not t.state.is_finished() or t.values is None for t in search.study.trials)
