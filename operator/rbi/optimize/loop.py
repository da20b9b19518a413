"""The local driver of the optimisation state machine: the warm sandbox pool, synchronously.

The loop itself (search, validation, the two gates, LLM rounds) is rbi.optimize.machine; this
module only performs what the machine asks: runs batches on the warm workers, stores trials,
versions and lineage, asks the model, and keeps the machine's state in the results store after
every step, so an interrupted optimisation carries on where it stopped and a rerun continues the
same Optuna study (kept in the same database) instead of repeating its trials.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from rbi import metrics
from rbi.engine import LocalExecutor, PreparedRun, rbi_home
from rbi.optimize import guards, machine, splits
from rbi.optimize.machine import ALL_TRADES, LLM_ATTEMPTS, LOOKAHEAD_KEEP, param_diff  # noqa: F401  (re-exported)
from rbi.optimize.markets import market_path
from rbi.optimize.search import ParameterSearch, rdb_storage
from rbi.optimize.settings import OptimizationSettings
from rbi.outcome import RunOutcome

ProgressCallback = Callable[["Progress"], None]


@dataclass(slots=True)
class Progress:
    iteration: int
    trials_done: int
    trials_planned: int
    best_value: float | None
    trials_per_second: float


@dataclass(slots=True)
class Evaluation:
    """One parameter set measured in-sample and out-of-sample."""

    params: dict[str, Any]
    in_sample: dict[str, Any]
    out_of_sample: dict[str, Any]
    oos_score: float | None
    version: int | None = None
    code: str | None = None
    markets: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "params": self.params, "in_sample": self.in_sample,
                "out_of_sample": self.out_of_sample, "oos_score": self.oos_score, "markets": self.markets}


@dataclass(slots=True)
class IterationReport:
    iteration: int
    method: str
    trials: int
    feasible_trials: int
    best_params: dict[str, Any] | None
    best_in_sample: float | None
    out_of_sample: float | None
    improvement: float | None
    promoted: bool
    reason: str
    guards: dict[str, Any] = field(default_factory=dict)
    child_version: int | None = None
    deployable: bool | None = None
    folds: list[dict[str, Any]] = field(default_factory=list)
    markets: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, raw: dict[str, Any]) -> IterationReport:
        fields: dict[str, Any] = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**fields)


@dataclass(slots=True)
class OptimizationResult:
    strategy_name: str
    objective: str
    maximize: bool
    parent: Evaluation
    best: Evaluation
    iterations: list[IterationReport]
    trials: int
    trials_per_second: float
    children: list[int]
    stop_reason: str
    folds: list[splits.Fold]
    parent_guards: dict[str, Any] = field(default_factory=dict)
    llm: str = "not configured: parameter search only"
    resumed_from: int | None = None
    distinct_trials: int = 0  # every distinct parameter set the studies hold, this run's and earlier runs'
    state_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy_name, "objective": self.objective,
            "direction": "maximize" if self.maximize else "minimize",
            "parent": self.parent.to_json(), "best": self.best.to_json(),
            "iterations": [i.to_json() for i in self.iterations], "trials": self.trials,
            "distinct_trials": self.distinct_trials,
            "trials_per_second": self.trials_per_second, "children": self.children,
            "stop_reason": self.stop_reason, "llm": self.llm, "parent_guards": self.parent_guards,
            "resumed_from": self.resumed_from, "promotion_test": guards.PROMOTION_TEST,
            "validation": [{"train": [f.train.start, f.train.end], "test": [f.test.start, f.test.end]}
                           for f in self.folds],
        }


def _count_iteration(report: IterationReport) -> None:
    """The same optimisation metrics the operator exports, for local runs (and a process that serves them)."""
    metrics.OPTIMIZATION_ITERATIONS.labels(result="promoted" if report.promoted else "rejected").inc()
    if report.promoted and report.improvement is not None and math.isfinite(report.improvement):
        metrics.OPTIMIZATION_IMPROVEMENT.observe(min(report.improvement, 100.0))


def execute_batch(executor: LocalExecutor, runs: list[PreparedRun]) -> list[RunOutcome]:
    """One batch on the warm workers, outcomes in order (the one place to switch to execute_batch)."""
    batch = getattr(executor, "execute_batch", None)
    if batch is not None:
        return list(batch(runs))
    return list(executor.execute_many(runs))


class StudyCache:
    """ParameterSearch per study name, on Optuna's storage in the results database (memory without a store)."""

    def __init__(self, settings: OptimizationSettings, store: Any) -> None:
        self.settings = settings
        self.storage = rdb_storage(store.url) if store is not None and hasattr(store, "url") else None
        self._open: dict[str, ParameterSearch] = {}

    def __call__(self, study_name: str) -> ParameterSearch:
        search = self._open.get(study_name)
        if search is None:
            search = self._open[study_name] = ParameterSearch(self.settings, storage=self.storage,
                                                              study_name=study_name)
        return search


def evaluation_from_state(raw: dict[str, Any], step: machine.Machine, stat: str) -> Evaluation:
    folds = raw.get("folds") or []
    oos = (folds[0].get("stats") or {}) if len(folds) == 1 else {
        "folds": [f.get("stats") for f in folds], stat: raw.get("oos_score")}
    code = step.state["codes"].get(raw.get("code") or "")
    return Evaluation(params=dict(raw.get("params") or {}), in_sample=dict(raw.get("in_sample") or {}),
                      out_of_sample=oos, oos_score=raw.get("oos_score"), version=raw.get("version"), code=code,
                      markets=dict(raw.get("markets") or {}))


class Optimizer:
    def __init__(self, run: PreparedRun, settings: OptimizationSettings, *, executor: LocalExecutor,
                 store: Any, n_rows: int, index_times: Sequence[str], batch_size: int | None = None,
                 on_progress: ProgressCallback | None = None, frame: pd.DataFrame | None = None,
                 llm: Any = None) -> None:
        # `batch_size` is not used: the batch is settings.batch_size, part of the search's definition, so the
        # same seed asks the same trials here and on a cluster.
        del batch_size
        self.run = run
        self.settings = settings
        self.executor = executor
        self.store = store
        self.n_rows = n_rows
        self.index_times = index_times
        self.on_progress = on_progress
        self.frame = frame  # the dataset itself, for the look-ahead probe
        self.llm = llm  # an rbi.llm.LLMClient, or None for parameter search only
        self.llm_description = (f"model {llm.config.model}" if llm is not None
                                else "not configured: parameter search only")
        self.folds = splits.make_folds(n_rows, splits.parse_validation(settings.validation),
                                       warmup=settings.warmup_bars)
        self.trials_done = 0
        self.trial_seconds = 0.0
        self._last: dict[str, RunOutcome] = {}

    def rate(self) -> float:
        return self.trials_done / self.trial_seconds if self.trial_seconds else 0.0

    # --- performing what the machine asks ---------------------------------------------------------

    def _prepared(self, step: machine.Machine, work: machine.Work) -> PreparedRun:
        run = replace(self.run, code=step.code(work.code)).with_params(dict(work.params))
        if work.dataset is not None:
            run = replace(run, data_file=str(market_path(work.dataset)), data_range=None)
        elif work.rows is not None:
            run = run.on_rows(work.rows[0], work.rows[1])
        run = replace(run, include_series=work.series, max_trades=ALL_TRADES if work.series else run.max_trades)
        if work.probe is not None:
            assert work.rows is not None
            if self.frame is None:
                from rbi.prepare.data import load_ohlcv

                self.frame = load_ohlcv(self.run.data_file)
            window = self.frame.iloc[work.rows[0]:work.rows[1]]
            probe = guards.lookahead_probe(window, decision_row=work.probe,
                                           trade_on_close=bool(self.run.backtest.get("trade_on_close")))
            run = replace(run, data_file=str(self._write_probe(probe.data)), data_range=None)
        return run

    def _write_probe(self, data: Any) -> Path:
        """The altered dataset as a file the sandboxed worker can read (it loads datasets by path)."""
        directory = rbi_home() / "cache" / "probes"
        directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(pd.util.hash_pandas_object(data, index=True).values.tobytes()).hexdigest()[:24]
        path = directory / f"probe-{digest}.parquet"
        if not path.exists():
            partial = path.with_suffix(".tmp")
            data.to_parquet(partial)
            partial.chmod(0o644)
            partial.replace(path)
        return path

    def _run_batch(self, step: machine.Machine, works: list[machine.Work]) -> None:
        started = time.perf_counter()
        outcomes = execute_batch(self.executor, [self._prepared(step, w) for w in works])
        trial_works = [w for w in works if w.trial is not None]
        if trial_works:
            self.trial_seconds += time.perf_counter() - started
            self.trials_done += len(trial_works)
            metrics.OPTIMIZATION_TRIALS.labels(source="params").inc(len(trial_works))
        self._last = {w.key: o for w, o in zip(works, outcomes, strict=True)}
        champion_version = step.state["champion"]["version"]
        records = step.take_results([machine.result_from_outcome(w, o) for w, o in zip(works, outcomes, strict=True)])
        if self.store is None:
            return
        for record in records:
            self.store.record_study_trial(
                study=record["study"], strategy_name=self.run.name, parent_version=record["parent_version"] or 1,
                iteration=record["iteration"], trial_number=record["trial_number"], params=record["params"],
                objective=record["objective"], status=record["status"], stats=record["stats"], sample="in_sample")
        if any(w.key.startswith("c:") for w in works):
            self._record_runs("c", champion_version or 1)

    def _record_runs(self, prefix: str, version: int) -> None:
        if self.store is None:
            return
        for key, outcome in self._last.items():
            head, _, part = key.partition(":")
            if head != prefix or not (part == "is" or part.startswith("test")):
                continue
            self.store.record_run(self.run.name, outcome, version=version, dataset_hash=self.run.dataset_hash,
                                  dataset_name=self.run.dataset_name,
                                  sample="in_sample" if part == "is" else "out_of_sample")

    def _promote(self, step: machine.Machine, action: machine.Promote) -> None:
        child = action.parent_version + 1
        if self.store is not None:
            child = self.store.register_version(self.run.name, code=action.code, params=action.params,
                                                parent_version=action.parent_version, source=action.kind)
            self._record_runs("cand", child)
            self.store.record_optimization(
                strategy_name=self.run.name, parent_version=action.parent_version, child_version=child,
                optimization_type=action.kind, changes_made=action.changes, performance_delta=action.improvement,
                details=action.details)
        step.promoted(child)

    def _ask_model(self, step: machine.Machine, action: machine.AskModel) -> None:
        from rbi.optimize.refine import RefineError, propose_code_change

        assert self.llm is not None
        trades = None
        is_outcome = self._last.get("c:is")
        if is_outcome is not None:
            trades = is_outcome.trades
        try:
            proposal = propose_code_change(self.llm, code=action.code, stats=action.stats, trades=trades,
                                           tried=action.tried, objective=self.settings.primary.stat,
                                           maximize=self.settings.primary.maximize)
        except RefineError as exc:
            step.take_proposal(machine.Proposal(code=None, error=f"{exc.kind}: {exc}"))
            return
        metrics.OPTIMIZATION_TRIALS.labels(source="llm_code").inc()
        extra = {"model": proposal.completion.model, "prompt_version": proposal.prompt_version,
                 "prompt_tokens": proposal.completion.prompt_tokens,
                 "completion_tokens": proposal.completion.completion_tokens,
                 "rationale": proposal.rationale, "change_kind": proposal.change_kind}
        step.take_proposal(machine.Proposal(code=proposal.code, rationale=proposal.rationale, diff=proposal.diff,
                                            extra=extra))

    # --- resuming -------------------------------------------------------------------------------

    def _resume_point(self, parent_version: int) -> dict[str, Any] | None:
        """The newest descendant of `parent_version` in the stored lineage, if any."""
        if self.store is None:
            return None
        children: dict[int, list[int]] = {}
        for edge in self.store.lineage(self.run.name):
            children.setdefault(edge.parent_version, []).append(edge.child_version)
        version, seen = parent_version, {parent_version}
        while children.get(version):
            version = max(children[version])
            if version in seen:
                break
            seen.add(version)
        if version == parent_version:
            return None
        record = next((v for v in self.store.versions(self.run.name) if v.version == version), None)
        return None if record is None else {"version": version, "code": record.code, "params": dict(record.params)}

    def _next_iteration(self) -> int:
        if self.store is None:
            return 1
        done = [t.iteration for t in self.store.trials(self.run.name)]
        done += [int(i.get("iteration") or 0) for s in self.store.optimization_states(self.run.name)
                 for i in s.get("iterations") or []]
        return max(done, default=0) + 1

    # --- the loop -------------------------------------------------------------------------------

    def optimize(self) -> OptimizationResult:
        settings = self.settings
        searches = StudyCache(settings, self.store)
        parent_version = 1
        if self.store is not None:
            parent_version = self.store.register_version(self.run.name, code=self.run.code, params=self.run.params)
        key = machine.run_key(strategy=self.run.name, code=self.run.code, params=self.run.params,
                              dataset_hash=self.run.dataset_hash, settings=settings)
        opened = self.store.open_optimization(key) if self.store is not None else None
        trade_on_close = bool(self.run.backtest.get("trade_on_close"))
        state_id: int | None = None
        if opened is not None:
            # An optimisation of this version was interrupted: carry on from its saved step.
            state_id, state = opened
            step = machine.Machine(state, settings, searches=searches, trade_on_close=trade_on_close)
            state["resumed_from"] = state["champion"]["version"]
            state["llm"] = self.llm is not None
        else:
            step = machine.Machine.start(
                settings, searches=searches, strategy=self.run.name, code=self.run.code, params=self.run.params,
                version=parent_version, n_rows=self.n_rows, dataset_hash=self.run.dataset_hash,
                llm=self.llm is not None, first_iteration=self._next_iteration(), trade_on_close=trade_on_close,
                resume=self._resume_point(parent_version))
        counted = len(step.state["iterations"])
        while True:
            action = step.next()
            if self.store is not None:
                state_id = self.store.save_optimization_state(state_id, run_key=key, strategy_name=self.run.name,
                                                              state=step.state)
            if isinstance(action, machine.Done):
                break
            if isinstance(action, machine.RunBatch):
                self._run_batch(step, action.works)
                if action.works and action.works[0].trial is not None and self.on_progress:
                    planned = settings.max_trials * len(self.folds)
                    done = sum(step.state["iteration_trials"].values())
                    best = searches(step.study(len(self.folds) - 1, step.state["champion"]["code"])).best()
                    self.on_progress(Progress(step.state["iteration"], done, planned, best[1] if best else None,
                                              self.rate()))
            elif isinstance(action, machine.Promote):
                self._promote(step, action)
            elif isinstance(action, machine.AskModel):
                self._ask_model(step, action)
            for raw in step.state["iterations"][counted:]:
                _count_iteration(IterationReport.from_state(raw))
            counted = len(step.state["iterations"])
        return self._result(step, searches, state_id)

    def _result(self, step: machine.Machine, searches: StudyCache, state_id: int | None) -> OptimizationResult:
        state = step.state
        stat = self.settings.primary.stat
        champion = state["champion"]
        distinct = sum(len(searches(step.study(f, champion["code"])).tried()) for f in range(len(self.folds)))
        return OptimizationResult(
            strategy_name=self.run.name, objective=stat, maximize=self.settings.primary.maximize,
            parent=evaluation_from_state(state["parent"], step, stat),
            best=evaluation_from_state(champion, step, stat),
            iterations=[IterationReport.from_state(r) for r in state["iterations"]], trials=int(state["trials"]),
            trials_per_second=self.rate(), children=list(state["children"]), stop_reason=str(state["stop_reason"]),
            folds=self.folds, parent_guards=dict(state["parent_guards"]), llm=self.llm_description,
            resumed_from=state["resumed_from"], distinct_trials=distinct, state_id=state_id)
