"""Parameter search through Optuna: one study per optimisation, asked in batches.

Batches let the trials of one ask run in parallel on the warm workers; the
study then learns from all of them before the next batch is asked.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy.exc

from rbi.optimize.settings import OptimizationSettings, Parameter

_VIOLATIONS = "constraint_violations"


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}
# Threads of one process (rbi loop optimises ideas in parallel) must not both create Optuna's tables.
_STORAGES_LOCK = threading.Lock()


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's own RDB storage on the results database (SQLite or PostgreSQL), one per URL.

    Optuna's tables (studies, trials, ...) live beside rbi's. rbi's migrations own the
    `alembic_version` table that Optuna would otherwise stamp and check, so the store is
    migrated first and Optuna's schema check is skipped (the Optuna version is pinned).
    """
    with _STORAGES_LOCK:
        storage = _STORAGES.get(url)
        if storage is None:
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if url.startswith("sqlite"):
                kwargs = {"connect_args": {"timeout": 30}}
            try:
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_compatibility_check=True)
            except sqlalchemy.exc.OperationalError:
                # Another process created Optuna's tables between its check and ours (CREATE TABLE races):
                # they exist now, so the second attempt only finds them.
                storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_compatibility_check=True)
            _STORAGES[url] = storage
    return storage


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler stops the study when the grid is done, which only works inside study.optimize();
    with ask-and-tell batches, ParameterSearch.exhausted() says when the grid is done instead."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                    state: optuna.trial.TrialState, values: Sequence[float] | None) -> None:
        return None


def make_sampler(settings: OptimizationSettings, *, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The method's sampler; `offset` (the trials the study already holds) moves a seeded one along.

    A sampler is made afresh for every batch, seeded from (seed, trials so far): what a batch asks
    is then a function of the seed and the study's history only, the same in a process that kept
    the study in memory, in one that loaded it from the database after a restart, and in the operator.
    """
    seed = None if settings.seed is None else (settings.seed * 1_000_003 + offset) % (2**31 - 1)
    if settings.method == "grid":
        grid = {p.name: p.grid_values() for p in settings.space}
        return _AskTellGridSampler(grid, seed=seed)
    if settings.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.method == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if settings.method == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def suggest(trial: optuna.Trial, space: Sequence[Parameter], *, grid: bool) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for p in space:
        if grid or p.kind == "categorical":
            params[p.name] = trial.suggest_categorical(p.name, p.grid_values() if grid else list(p.choices))
        elif p.kind == "int":
            assert p.low is not None and p.high is not None
            step = 1 if p.log else int(p.step or 1)
            params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=step, log=p.log)
        else:
            assert p.low is not None and p.high is not None
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, step=None if p.log else p.step, log=p.log)
    return params


@dataclass(slots=True)
class Asked:
    trial: optuna.Trial
    params: dict[str, Any]


def params_key(params: Mapping[str, Any]) -> str:
    return repr(sorted(params.items()))


class ParameterSearch:
    """A thin, typed wrapper over an Optuna study for one strategy.

    With `storage` (an Optuna RDB storage on the results database) and a `study_name`, the
    study is loaded when it exists: a rerun or a restarted operator continues it, and a
    parameter set the study already holds is never run again.
    """

    def __init__(self, settings: OptimizationSettings, *, storage: Any = None, study_name: str | None = None) -> None:
        optuna.logging.set_verbosity(logging.WARNING)
        self.settings = settings
        self.study = optuna.create_study(
            directions=[optuna.study.StudyDirection.MAXIMIZE if o.maximize else optuna.study.StudyDirection.MINIMIZE
                        for o in settings.objectives],
            sampler=make_sampler(settings), storage=storage, study_name=study_name, load_if_exists=True)
        self._grid = settings.method == "grid"
        # Every parameter set the study holds (finished or still running), except duplicates pruned unrun.
        self._seen: set[str] = {params_key(t.params) for t in self.study.get_trials(deepcopy=False)
                                if t.state != optuna.trial.TrialState.PRUNED and t.params}

    def enqueue(self, params: Mapping[str, Any]) -> None:
        """Evaluate these parameters first (the parent's own), so the search starts from them.

        Only values inside the search space are enqueued: a parent off the grid is measured
        by the loop anyway, and Optuna refuses values outside a distribution.
        """
        inside = {p.name: params[p.name] for p in self.settings.space
                  if p.name in params and _in_domain(p, params[p.name], grid=self._grid)}
        if self._grid and len(inside) < len(self.settings.space):
            return  # a grid point must be whole: Optuna's grid sampler cannot complete a partial one
        if inside:
            self.study.enqueue_trial(inside, skip_if_exists=True)

    def exhausted(self) -> bool:
        return self._grid and len(self._seen) >= self.settings.grid_size()

    def ask(self, count: int) -> list[Asked]:
        asked: list[Asked] = []
        attempts = 0
        if self.settings.seed is not None:
            self.study.sampler = make_sampler(self.settings, offset=len(self.study.get_trials(deepcopy=False)))
        while len(asked) < count and not self.exhausted() and attempts < count * 20:
            attempts += 1
            trial = self.study.ask()
            params = suggest(trial, self.settings.space, grid=self._grid)
            key = params_key(params)
            if key in self._seen:
                # A sampler may hand out a point already tried (a grid point still running, a TPE
                # proposal on a small integer space): never run one twice, and do not count it.
                trial.set_user_attr("duplicate", True)
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            self._seen.add(key)
            asked.append(Asked(trial, params))
        return asked

    def trial(self, number: int) -> optuna.trial.FrozenTrial:
        return self.study.get_trials(deepcopy=False)[number]

    def tell_number(self, number: int, params: Mapping[str, Any],
                    stats: Mapping[str, Any] | None) -> list[float] | None:
        """`tell` for a trial asked before (perhaps by another process); a trial already told keeps its values."""
        frozen = self.trial(number)
        if frozen.state.is_finished():
            return list(frozen.values) if frozen.values else None
        return self.tell(Asked(optuna.Trial(self.study, frozen._trial_id), dict(params)), stats)

    def tried(self) -> list[optuna.trial.FrozenTrial]:
        """The distinct parameter sets tried: finished trials (a failure was still a try), duplicates left out."""
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)]

    def feasible(self) -> list[optuna.trial.FrozenTrial]:
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        return [t for t in done if all(v <= 0 for v in t.user_attrs.get(_VIOLATIONS, [0.0]))]

    def best(self) -> tuple[dict[str, Any], float] | None:
        """The best feasible trial of the whole study (among the Pareto front for several objectives)."""
        trials = self.feasible()
        if not trials:
            return None
        if self.settings.multi_objective:
            front = {t.number for t in self.study.best_trials}
            trials = [t for t in trials if t.number in front] or trials
        sign = 1 if self.settings.primary.maximize else -1
        # Ties go to the earliest trial, so every driver picks the same one.
        best = max(trials, key=lambda t: (sign * t.values[0], -t.number))
        return dict(best.params), float(best.values[0])

    def tell(self, asked: Asked, stats: Mapping[str, Any] | None) -> list[float] | None:
        """Report a trial's statistics; None (a failed run, or an objective that is undefined) fails it."""
        if stats is None:
            self.study.tell(asked.trial, state=optuna.trial.TrialState.FAIL)
            return None
        sharpe = objective_value(stats, "sharpe_ratio")
        if sharpe is not None:
            # The deflated Sharpe ratio needs every trial's Sharpe ratio, whatever the objective.
            asked.trial.set_user_attr("sharpe_ratio", sharpe)
        values = [objective_value(stats, o.stat) for o in self.settings.objectives]
        if any(v is None for v in values):
            self.study.tell(asked.trial, state=optuna.trial.TrialState.FAIL)
            return None
        violations = [_violation(c.stat, c.op, c.value, stats) for c in self.settings.constraints]
        asked.trial.set_user_attr(_VIOLATIONS, violations or [0.0])
        for index, violation in enumerate(violations):
            # Samplers that understand constraints (TPE, NSGA-II) steer away from infeasible regions.
            asked.trial.set_constraint(f"constraint_{index}", violation)
        clean = [float(v) for v in values if v is not None]
        self.study.tell(asked.trial, clean)
        return clean


def objective_value(stats: Mapping[str, Any], stat: str) -> float | None:
    value = stats.get(stat)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _violation(stat: str, op: str, bound: float, stats: Mapping[str, Any]) -> float:
    """How far a constraint is from holding (<= 0 when it holds), in Optuna's convention."""
    value = objective_value(stats, stat)
    if value is None:
        return 1e9
    if op in (">=", ">"):
        return bound - value if op == ">=" else bound - value + 1e-12
    if op in ("<=", "<"):
        return value - bound if op == "<=" else value - bound + 1e-12
    return 0.0 if (value == bound) == (op == "==") else 1.0


def _in_domain(parameter: Parameter, value: Any, *, grid: bool) -> bool:
    if grid or parameter.kind == "categorical":
        return value in (parameter.grid_values() if grid else parameter.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    assert parameter.low is not None and parameter.high is not None
    return parameter.low <= value <= parameter.high
