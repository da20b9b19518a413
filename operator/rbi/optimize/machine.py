"""The optimisation loop as a state machine, written once; the laptop and the cluster only step it.

The machine owns an optimisation's state (the studies, the champion, the iteration, the pending
batch, the guards so far and the history) and its transitions. It performs no I/O: `next()`
says what to do (run a batch of work, promote a child, ask the model for a code change, stop),
the driver does it and hands back what came of it (`take_results`, `promoted`, `take_proposal`).
Its state is plain JSON (`state`), kept in the results store by the local driver and in the
resource's status by the operator, so either can stop at any point and carry on.

One iteration (parameters):
  trials    for each fold, `maxTrials` new trials on the fold's own training window, in batches
            of `batchSize` asked from the fold's Optuna study (kept in the results database);
  validate  each fold's best feasible parameters on its own test window (walk-forward re-optimises),
            the champion on the same windows, the last fold's candidate in-sample (for the deflated
            Sharpe ratio) and both on every `validation.datasets` market (cross-market, shown);
  lookahead the candidate on in-sample data whose future was altered after one decision;
  promote   when the promotion gate holds (see `_gate`); the deployable gate is measured and shown.
An LLM iteration replaces `trials` by one proposal from the model, measured the same way.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rbi.optimize import guards, splits
from rbi.optimize.probe import probe_decision_row
from rbi.optimize.search import objective_value
from rbi.optimize.settings import OptimizationSettings

STATE_VERSION = 1
LOOKAHEAD_KEEP = 0.7
LLM_ATTEMPTS = 2  # consecutive LLM rounds without a promotion before the loop stops
ALL_TRADES = 200_000
BASELINE = 0  # the iteration number of the parent's own measurement


class Search(Protocol):
    """One fold's study, as the machine needs it (rbi.optimize.search.ParameterSearch implements it)."""

    def ask(self, count: int) -> Sequence[Any]: ...
    def tell_number(self, number: int, params: Mapping[str, Any],
                    stats: Mapping[str, Any] | None) -> list[float] | None: ...
    def best(self) -> tuple[dict[str, Any], float] | None: ...
    def tried(self) -> Sequence[Any]: ...
    def enqueue(self, params: Mapping[str, Any]) -> None: ...
    def exhausted(self) -> bool: ...


class Searches(Protocol):
    def __call__(self, study_name: str) -> Search: ...


# --------------------------------------------------------------------------- what the driver does


@dataclass(frozen=True, slots=True)
class Work:
    """One backtest for the driver to run: this code and these parameters on these rows or that market."""

    key: str
    code: str  # the code's hash; the code itself is in state["codes"]
    params: dict[str, Any]
    rows: tuple[int, int] | None = None  # rows [start, end) of the strategy's dataset
    dataset: str | None = None  # another market, whole (validation.datasets)
    series: bool = False  # equity curve and trades wanted
    skip: int = 0  # warm-up rows at the start whose returns are not judged
    probe: int | None = None  # look-ahead probe: the decision row (in `rows`) after which the future is altered
    trial: tuple[str, int] | None = None  # (study name, Optuna trial number) of a search trial

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "code": self.code, "params": self.params,
                "rows": list(self.rows) if self.rows else None, "dataset": self.dataset, "series": self.series,
                "skip": self.skip, "probe": self.probe, "trial": list(self.trial) if self.trial else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Work:
        rows, trial = data.get("rows"), data.get("trial")
        return cls(key=str(data["key"]), code=str(data["code"]), params=dict(data.get("params") or {}),
                   rows=(int(rows[0]), int(rows[1])) if rows else None, dataset=data.get("dataset"),
                   series=bool(data.get("series")), skip=int(data.get("skip") or 0), probe=data.get("probe"),
                   trial=(str(trial[0]), int(trial[1])) if trial else None)


@dataclass(slots=True)
class Result:
    """What came of one Work: the host's statistics, its equity curve and trades (bar numbers) when asked.

    `equity` is [[time, equity], ...] at the curve's sampled points (rbi.stats.equity_curve keeps at most
    2,000 per run); two runs on the same window are paired on the times both curves kept.
    """

    key: str
    stats: dict[str, Any] | None
    equity: list[list[Any]] | None = None
    trades: list[dict[str, Any]] | None = None
    error: str | None = None
    params: dict[str, Any] | None = None  # every parameter the strategy ran with, its class defaults included

    @property
    def returns(self) -> list[float]:
        return [float(r) for r in guards.returns_from_equity([float(p[1]) for p in self.equity or []])]


def result_from_outcome(work: Work, outcome: Any) -> Result:
    """A RunOutcome (local or from a Job) → Result. Failed runs have no statistics."""
    failed = str(getattr(outcome, "status", "failed")) == "failed" or not outcome.stats
    error = outcome.error
    message = f"{error.type}: {error.message}" if error is not None else ("no statistics" if failed else None)
    if failed:
        return Result(work.key, None, error=message)
    equity = None
    if work.series and outcome.equity_curve:
        # The warm-up rows stay in: both runs of a pair cover the same bars, and the sampled curve cannot
        # say which point is the first judged row.
        equity = [[p[0], p[1]] for p in outcome.equity_curve]
    trades = None
    if work.series and outcome.trades is not None:
        trades = [{"entry_time": t.get("entry_bar"), "exit_time": t.get("exit_bar"), "size": t.get("size"),
                   "entry_price": t.get("entry_price"), "entry_bar": t.get("entry_bar"),
                   "exit_bar": t.get("exit_bar")} for t in outcome.trades]
    return Result(work.key, dict(outcome.stats), equity, trades, params=dict(outcome.params or {}) or None)


CHECKPOINTS = 250


def _as_of(curve: Sequence[Sequence[Any]], times: Sequence[Any]) -> list[float]:
    """The equity at or just before each time (the curves are sampled at slightly different bars)."""
    keys = [_time_key(p[0]) for p in curve]
    out = []
    for time in times:
        at = bisect.bisect_right(keys, _time_key(time)) - 1
        value = curve[max(at, 0)][1]
        out.append(float(value) if isinstance(value, int | float) else float("nan"))
    return out


def _time_key(value: Any) -> tuple[int, float | str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def paired_returns(a: Sequence[Sequence[Any]], b: Sequence[Sequence[Any]]) -> tuple[list[float], list[float]]:
    """Returns of two equity curves of the same window over the same checkpoints.

    rbi.stats.equity_curve keeps at most 2,000 points, evenly spaced plus each run's own extremes,
    so two runs rarely share their sampled bars; both are read at ~250 common checkpoints instead.
    """
    if not a or not b:
        return [], []
    step = max(1, len(a) // CHECKPOINTS)
    times = [p[0] for p in a[::step]]
    if times[-1] != a[-1][0]:
        times.append(a[-1][0])
    x = np.asarray(_as_of(a, times), dtype=np.float64)
    y = np.asarray(_as_of(b, times), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rx, ry = x[1:] / x[:-1] - 1.0, y[1:] / y[:-1] - 1.0
    keep = np.isfinite(rx) & np.isfinite(ry)
    return [float(v) for v in rx[keep]], [float(v) for v in ry[keep]]


@dataclass(frozen=True, slots=True)
class RunBatch:
    works: list[Work]


@dataclass(frozen=True, slots=True)
class Promote:
    parent_version: int
    code: str
    params: dict[str, Any]
    kind: str  # params | llm_code
    changes: str
    improvement: float | None
    details: dict[str, Any]
    deployable: bool


@dataclass(frozen=True, slots=True)
class AskModel:
    code: str
    stats: dict[str, Any]
    tried: list[str]


@dataclass(frozen=True, slots=True)
class Done:
    reason: str


Action = RunBatch | Promote | AskModel | Done


@dataclass(frozen=True, slots=True)
class Proposal:
    """The model's answer as the machine needs it (from rbi.optimize.refine.Proposal), or why it failed."""

    code: str | None
    rationale: str = ""
    diff: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- names


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def settings_fingerprint(settings: OptimizationSettings) -> str:
    """What defines a search: objectives, space, constraints, method, validation and seed (not the budget)."""
    raw = {"objectives": [[o.stat, o.maximize] for o in settings.objectives],
           "space": [[p.name, p.kind, p.low, p.high, p.step, p.log, list(p.choices)] for p in settings.space],
           "constraints": [str(c) for c in settings.constraints], "method": settings.method,
           "validation": settings.validation, "warmup": settings.warmup_bars, "seed": settings.seed}
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_name(*, strategy: str, code: str, dataset_hash: str, settings: OptimizationSettings,
               train: splits.Window) -> str:
    """One Optuna study per strategy, code, dataset, search settings, seed and training window."""
    return (f"rbi:{strategy}:{code_hash(code)[:12]}:{dataset_hash[:12]}:{settings_fingerprint(settings)}"
            f":rows{train.start}-{train.end}")


def run_key(*, strategy: str, code: str, params: Mapping[str, Any], dataset_hash: str,
            settings: OptimizationSettings) -> str:
    """The identity of one optimisation of one version, for the state kept in the store."""
    digest = hashlib.sha256(json.dumps([code_hash(code), dict(params), dataset_hash, settings_fingerprint(settings)],
                                       sort_keys=True, default=str).encode()).hexdigest()[:24]
    return f"{strategy}:{digest}"


def _pct(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.1%}"


def param_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{name: [old, new]} for every parameter that changed."""
    return {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# --------------------------------------------------------------------------- the machine


class Machine:
    """Step it: `action = m.next()`; do it; feed back; repeat until Done. `m.state` is the JSON to keep."""

    def __init__(self, state: dict[str, Any], settings: OptimizationSettings, *, searches: Searches,
                 trade_on_close: bool = False) -> None:
        self.state = state
        self.settings = settings
        self.searches = searches
        self.trade_on_close = trade_on_close
        spec = splits.parse_validation(settings.validation)
        self.folds = splits.make_folds(int(state["n_rows"]), spec, warmup=settings.warmup_bars)
        self.datasets = spec.datasets

    @classmethod
    def start(cls, settings: OptimizationSettings, *, searches: Searches, strategy: str, code: str,
              params: Mapping[str, Any], version: int, n_rows: int, dataset_hash: str, llm: bool = False,
              first_iteration: int = 1, trade_on_close: bool = False,
              resume: Mapping[str, Any] | None = None) -> Machine:
        """A new optimisation of `version`; `resume`: {version, code, params} of a stored descendant to go on from."""
        state: dict[str, Any] = {
            "v": STATE_VERSION, "strategy": strategy, "n_rows": n_rows, "dataset_hash": dataset_hash,
            "stage": "baseline", "iteration": BASELINE, "first_iteration": None, "mode": "params",
            "llm_failures": 0, "tried": [], "llm_sharpes": [], "codes": {}, "pending": [], "iterations": [],
            "children": [], "trials": 0, "stop_reason": None, "parent_guards": {}, "candidate": None,
            "iteration_trials": {}, "resumed_from": None, "llm": llm, "next_iteration": first_iteration,
        }
        machine = cls(state, settings, searches=searches, trade_on_close=trade_on_close)
        parent = machine._evaluation(version=version, code=code, params=dict(params))
        state["parent"] = parent
        state["champion"] = dict(parent)
        if resume is not None:
            state["resumed_from"] = int(resume["version"])
            state["champion"] = machine._evaluation(version=int(resume["version"]), code=str(resume["code"]),
                                                    params=dict(resume["params"]))
        return machine

    # --- small helpers ---------------------------------------------------------------------------

    def _evaluation(self, *, version: int | None, code: str, params: dict[str, Any]) -> dict[str, Any]:
        digest = code_hash(code)
        self.state["codes"][digest] = code
        return {"version": version, "code": digest, "params": params, "in_sample": {}, "oos_score": None,
                "folds": [], "markets": {}}

    def code(self, digest: str) -> str:
        return str(self.state["codes"][digest])

    @property
    def train(self) -> splits.Window:
        return self.folds[-1].train  # the most recent training window: where a child's parameters come from

    def study(self, fold: int, code: str) -> str:
        return study_name(strategy=self.state["strategy"], code=self.code(code),
                          dataset_hash=self.state["dataset_hash"], settings=self.settings,
                          train=self.folds[fold].train)

    def _score(self, stats: Mapping[str, Any] | None) -> float | None:
        return objective_value(stats, self.settings.primary.stat) if stats else None

    def _feasible(self, stats: Mapping[str, Any] | None) -> bool:
        return bool(stats) and all(c.holds(stats or {}) for c in self.settings.constraints)

    def _test_window(self, fold: int) -> splits.Window:
        return self.folds[fold].test.with_warmup(self.settings.warmup_bars)

    def _evaluation_works(self, prefix: str, evaluation: Mapping[str, Any], *, fold_params: Sequence[dict[str, Any]],
                          in_sample: bool) -> list[Work]:
        works = []
        if in_sample:
            works.append(Work(f"{prefix}:is", evaluation["code"], dict(evaluation["params"]),
                              rows=(self.train.start, self.train.end), series=True))
        for index, params in enumerate(fold_params):
            window = self._test_window(index)
            works.append(Work(f"{prefix}:test{index}", evaluation["code"], dict(params),
                              rows=(window.start, window.end), series=True,
                              skip=self.folds[index].test.start - window.start))
        for name in self.datasets:
            works.append(Work(f"{prefix}:market:{name}", evaluation["code"], dict(evaluation["params"]), dataset=name))
        return works

    def _measure(self, prefix: str, evaluation: dict[str, Any], results: Mapping[str, Result]) -> None:
        """Fill an evaluation's figures from its results (in-sample when it ran, folds, markets)."""
        if f"{prefix}:is" in results:
            evaluation["in_sample"] = results[f"{prefix}:is"].stats or {}
        folds: list[dict[str, Any]] = []
        scores: list[float | None] = []
        for index in range(len(self.folds)):
            result = results.get(f"{prefix}:test{index}")
            scores.append(self._score(result.stats if result else None))
            folds.append({"stats": result.stats if result else None, "score": scores[-1]})
        evaluation["folds"] = folds
        valid = [s for s in scores if s is not None]
        evaluation["oos_score"] = statistics.fmean(valid) if valid and len(valid) == len(scores) else None
        evaluation["markets"] = {name: self._score(results[f"{prefix}:market:{name}"].stats)
                                 for name in self.datasets if f"{prefix}:market:{name}" in results}

    def _paired(self, results: Mapping[str, Result]) -> tuple[list[float], list[float]]:
        """Candidate and champion returns over every test window, paired on the same sampled times."""
        child: list[float] = []
        parent: list[float] = []
        for index in range(len(self.folds)):
            a, b = results.get(f"cand:test{index}"), results.get(f"champ:test{index}")
            if a is None or b is None or not a.equity or not b.equity:
                continue
            x, y = paired_returns(a.equity, b.equity)
            child += x
            parent += y
        return child, parent

    def _batch(self, works: list[Work]) -> RunBatch:
        # Numbered, so a driver can name what runs a batch (the operator's Jobs) and find it after a restart.
        self.state["batch"] = int(self.state.get("batch") or 0) + 1
        self.state["pending"] = [w.to_json() for w in works]
        return RunBatch(works)

    def _lookahead_works(self, prefix: str, evaluation: Mapping[str, Any], trades: Sequence[Mapping[str, Any]] | None
                         ) -> list[Work]:
        """The full in-sample run again (deterministic) beside the probe, so no trade list is kept in the state."""
        n = self.train.length
        row = probe_decision_row(n, keep=LOOKAHEAD_KEEP, full_trades=trades)
        rows = (self.train.start, self.train.end)
        return [Work(f"{prefix}:full", evaluation["code"], dict(evaluation["params"]), rows=rows, series=True),
                Work(f"{prefix}:probe", evaluation["code"], dict(evaluation["params"]), rows=rows, series=True,
                     probe=row)]

    def _lookahead_report(self, prefix: str, results: Mapping[str, Result]) -> guards.LookaheadReport | None:
        full, probe = results.get(f"{prefix}:full"), results.get(f"{prefix}:probe")
        if full is None or probe is None or full.trades is None or probe.trades is None:
            errors = [f"{r.key}: {r.error}" for r in (full, probe) if r is not None and r.error]
            self.state["lookahead_error"] = "; ".join(errors) or "a run gave no trade list"
            return None
        pending = {w["key"]: w for w in self.state["pending"]}
        row = int(pending[f"{prefix}:probe"]["probe"])
        cut = row + 1 if self.trade_on_close else row + 2
        return guards.lookahead_suspected(full.trades, probe.trades, cut)

    # --- stepping --------------------------------------------------------------------------------

    def next(self) -> Action:
        """What to do now. Asking again before feeding back gives the same pending batch (restarts)."""
        state = self.state
        stage = state["stage"]
        if stage == "done":
            return Done(str(state["stop_reason"]))
        if state["pending"]:
            return RunBatch([Work.from_json(w) for w in state["pending"]])
        if stage == "baseline":
            champion = state["champion"]
            works = self._evaluation_works("c", champion, fold_params=[champion["params"]] * len(self.folds),
                                           in_sample=True)
            return self._batch(works)
        if stage == "trials":
            return self._trial_batch()
        if stage == "promote":
            return self.promotion()
        if stage == "llm":
            champion = state["champion"]
            return AskModel(code=self.code(champion["code"]), stats=dict(champion["in_sample"]),
                            tried=list(state["tried"]))
        raise AssertionError(f"unknown stage {stage!r}")

    def take_results(self, results: Sequence[Result]) -> list[dict[str, Any]]:
        """Feed back a batch's results (any order). Returns the trial records to store (search trials only)."""
        by_key = {r.key: r for r in results}
        missing = [w["key"] for w in self.state["pending"] if w["key"] not in by_key]
        if missing:
            raise ValueError(f"results missing for {missing[:3]}")
        stage = self.state["stage"]
        records: list[dict[str, Any]] = []
        if stage == "baseline":
            self._after_baseline(by_key)
        elif stage == "baseline_lookahead":
            self._after_parent_lookahead(by_key)
        elif stage == "trials":
            records = self._after_trials(by_key)
        elif stage == "validate":
            self._after_validation(by_key)
        elif stage == "lookahead":
            self._after_lookahead(by_key)
        else:
            raise ValueError(f"no batch is pending in stage {stage!r}")
        return records

    # --- baseline --------------------------------------------------------------------------------

    def _after_baseline(self, results: Mapping[str, Result]) -> None:
        state = self.state
        champion = state["champion"]
        self._measure("c", champion, results)
        is_result = results.get("c:is")
        if is_result is not None and is_result.params:
            # The class's own defaults count as the version's parameters: the search starts from them.
            champion["params"] = {**is_result.params, **champion["params"]}
        if state["resumed_from"] is None:
            state["parent"] = dict(champion)
        state["pending"] = []
        if self.settings.guards.lookahead_check and state["resumed_from"] is None:
            # The probe row comes from the trades now, so no trade list is kept in the state.
            state["stage"] = "baseline_lookahead"
            self._batch(self._lookahead_works("parent", champion, is_result.trades if is_result else None))
            return
        self._begin_iteration()

    def _after_parent_lookahead(self, results: Mapping[str, Result]) -> None:
        state = self.state
        look = self._lookahead_report("parent", results)
        state["parent_guards"] = {"lookahead_suspected": look.suspected if look else None,
                                  "lookahead_detail": look.reason if look else
                                  f"not checked: {state.pop('lookahead_error', '')}"}
        state["pending"] = []
        if look is not None and look.suspected:
            # Optimising a strategy that already peeks at future bars would only polish the leak.
            self._finish(f"look-ahead suspected in v{state['parent']['version']} itself, not optimised: {look.reason}")
            return
        self._begin_iteration()

    # --- iterations ------------------------------------------------------------------------------

    def _begin_iteration(self) -> None:
        state = self.state
        if state["first_iteration"] is None:
            state["first_iteration"] = int(state["next_iteration"])
            state["iteration"] = state["first_iteration"]
        else:
            state["iteration"] += 1
        if state["iteration"] >= state["first_iteration"] + self.settings.max_iterations:
            self._finish(f"reached maxIterations ({self.settings.max_iterations})")
            return
        state["candidate"] = None
        state["report"] = None
        if state["mode"] == "llm":
            state["stage"] = "llm"
            return
        state["iteration_trials"] = {str(f): 0 for f in range(len(self.folds))}
        state["iteration_feasible"] = 0
        state["exhausted"] = []
        state["stage"] = "trials"
        champion = state["champion"]
        for fold in range(len(self.folds)):
            # The champion's own parameters are tried first in every study (once: Optuna skips a repeat).
            self.searches(self.study(fold, champion["code"])).enqueue(champion["params"])

    def _trial_batch(self) -> Action:
        state = self.state
        champion = state["champion"]
        for fold in range(len(self.folds)):
            done = state["iteration_trials"][str(fold)]
            if done >= self.settings.max_trials or fold in state["exhausted"]:
                continue
            name = self.study(fold, champion["code"])
            search = self.searches(name)
            wanted = min(self.settings.batch_size, self.settings.max_trials - done)
            if self.settings.method == "grid":
                wanted = min(wanted, self.settings.grid_size())  # never ask a grid for more points than it has
            asked = search.ask(wanted)
            if not asked:
                state["exhausted"].append(fold)  # every parameter set is tried: nothing new to run
                continue
            works = [Work(f"{state['iteration']}:trial:{fold}:{a.trial.number}", champion["code"],
                          {**champion["params"], **a.params}, rows=(self.folds[fold].train.start,
                                                                    self.folds[fold].train.end),
                          trial=(name, a.trial.number)) for a in asked]
            return self._batch(works)
        return self._choose()

    def _after_trials(self, results: Mapping[str, Result]) -> list[dict[str, Any]]:
        state = self.state
        records = []
        for raw in state["pending"]:
            work = Work.from_json(raw)
            assert work.trial is not None
            result = results[work.key]
            fold = int(work.key.split(":")[2])
            search = self.searches(work.trial[0])
            trial_params = {k: work.params[k] for k in (p.name for p in self.settings.space) if k in work.params}
            values = search.tell_number(work.trial[1], trial_params, result.stats)
            feasible = values is not None and self._feasible(result.stats)
            records.append({"iteration": state["iteration"], "trial_number": work.trial[1], "study": work.trial[0],
                            "fold": fold, "params": trial_params, "objective": values[0] if values else None,
                            "status": ("succeeded" if feasible else "failed" if result.stats is None else "infeasible"),
                            "stats": result.stats, "parent_version": state["champion"]["version"]})
            state["iteration_trials"][str(fold)] += 1
            state["iteration_feasible"] += feasible
            state["trials"] += 1
        state["pending"] = []
        return records

    def _choose(self) -> Action:
        """Every fold's search is done for this iteration: pick each fold's best and validate them."""
        state = self.state
        champion = state["champion"]
        report = self._new_report(method=self.settings.method)
        fold_best = []
        for fold in range(len(self.folds)):
            best = self.searches(self.study(fold, champion["code"])).best()
            fold_best.append(best)
        report["trials"] = sum(state["iteration_trials"].values())
        report["feasible_trials"] = state["iteration_feasible"]
        last = fold_best[-1]
        if last is None or any(b is None for b in fold_best):
            report["reason"] = "no trial satisfied the constraints" if report["trials"] else \
                "already done: every parameter set of the space was tried before"
            self._reject(report, report["reason"])
            return self.next()
        report["best_params"], report["best_in_sample"] = last
        candidate_params = {**champion["params"], **last[0]}
        if param_diff(champion["params"], candidate_params) == {}:
            report["reason"] = ("the best in-sample parameters are the current version's own"
                                + ("" if report["trials"] else " (already done: no new parameter set to try)"))
            self._reject(report, f"iteration {state['iteration']} found nothing better than v{champion['version']}")
            return self.next()
        fold_params = [{**champion["params"], **(b[0] if b else {})} for b in fold_best]
        report["folds"] = [{"fold": i, "train": [f.train.start, f.train.end], "test": [f.test.start, f.test.end],
                            "params": fold_params[i], "in_sample": best[1] if best else None}
                           for (i, f), best in zip(enumerate(self.folds), fold_best, strict=True)]
        candidate = self._evaluation(version=None, code=self.code(champion["code"]), params=candidate_params)
        candidate.update({"kind": "params", "fold_params": fold_params,
                          "changes": json.dumps(param_diff(champion["params"], candidate_params), sort_keys=True)})
        return self._validate(candidate, report)

    def _new_report(self, *, method: str) -> dict[str, Any]:
        report = {"iteration": self.state["iteration"], "method": method, "trials": 0, "feasible_trials": 0,
                  "best_params": None, "best_in_sample": None, "out_of_sample": None, "improvement": None,
                  "promoted": False, "deployable": None, "reason": "", "guards": {}, "child_version": None,
                  "folds": [], "markets": {}}
        self.state["report"] = report
        return report

    def _validate(self, candidate: dict[str, Any], report: dict[str, Any]) -> RunBatch:
        state = self.state
        state["candidate"] = candidate
        state["stage"] = "validate"
        champion = state["champion"]
        works = self._evaluation_works("cand", candidate, fold_params=candidate["fold_params"], in_sample=True)
        # The champion again on the same windows: its per-bar returns pair with the candidate's (they are not kept).
        works += self._evaluation_works("champ", champion, fold_params=[champion["params"]] * len(self.folds),
                                        in_sample=False)
        return self._batch([w for w in works if not w.key.startswith("champ:market:")])

    # --- the two gates ---------------------------------------------------------------------------

    def _distinct_trials(self, code: str) -> list[float]:
        """The Sharpe ratio of every distinct trial of the candidate's search, plus every code proposal."""
        sharpes: list[float] = []
        for fold in range(len(self.folds)):
            for trial in self.searches(self.study(fold, code)).tried():
                sharpes.append(float(trial.user_attrs.get("sharpe_ratio", float("nan"))))
        return sharpes + [float(s) for s in self.state["llm_sharpes"]]

    def _after_validation(self, results: Mapping[str, Result]) -> None:
        state = self.state
        settings = self.settings
        candidate, champion, report = state["candidate"], state["champion"], state["report"]
        self._measure("cand", candidate, results)
        current = {"in_sample": champion["in_sample"]}
        self._measure("champ", current, results)
        current["markets"] = champion.get("markets") or {}
        champion_score = current["oos_score"]
        report["out_of_sample"] = candidate["oos_score"]
        report["champion_out_of_sample"] = champion_score
        report["improvement"] = guards.improvement(champion_score, candidate["oos_score"],
                                                   maximize=settings.primary.maximize)
        if not report.get("folds"):
            report["folds"] = [{"fold": i, "train": [f.train.start, f.train.end], "test": [f.test.start, f.test.end],
                                "params": candidate["fold_params"][i], "in_sample": None}
                               for i, f in enumerate(self.folds)]
        for index, row in enumerate(report.get("folds") or []):
            row["out_of_sample"] = candidate["folds"][index]["score"]
            row["champion_out_of_sample"] = current["folds"][index]["score"]
        report["markets"] = {name: {"champion": current["markets"].get(name), "candidate": value,
                                    "improvement": guards.improvement(current["markets"].get(name), value,
                                                                      maximize=settings.primary.maximize)}
                             for name, value in candidate["markets"].items()}
        is_result = results.get("cand:is")
        sharpes = self._distinct_trials(candidate["code"]) if candidate["kind"] == "params" else \
            self._distinct_trials(champion["code"]) + ([] if is_result is None else [float(
                objective_value(is_result.stats or {}, "sharpe_ratio") or float("nan"))])
        dsr = self._deflated_sharpe(is_result, sharpes)
        child_returns, parent_returns = self._paired(results)
        test = guards.return_difference_test(
            child_returns, parent_returns, n_trials=len(sharpes),
            alpha=settings.guards.promotion_alpha, seed=(settings.seed or 0) * 7919 + state["iteration"])
        report["guards"] = {
            "in_sample": candidate["in_sample"].get(settings.primary.stat),
            "out_of_sample": candidate["oos_score"],
            "promotion_test": test.to_json(),
            "deflated_sharpe": dsr.dsr if dsr else None,
            "deflated_sharpe_trials": dsr.n_trials if dsr else len(sharpes),
            "lookahead_suspected": None, "lookahead_detail": "not checked",
        }
        report["deployable"] = dsr is not None and dsr.passed(settings.guards.min_deflated_sharpe)
        failures = []
        if report["improvement"] is None or report["improvement"] < settings.min_improvement:
            failures.append(f"out-of-sample improvement {_pct(report['improvement'])} is below "
                            f"minImprovement {settings.min_improvement:.0%}")
        if not test.passed:
            failures.append(f"the out-of-sample return difference {test.observed:+.3%} per period is not significant: "
                            f"p = {test.p_value:.4f} > {test.alpha_adjusted:.4g} (α {test.alpha:g} over "
                            f"{test.n_trials} trials)")
        if not self._feasible(candidate["in_sample"]):
            failures.append("the candidate breaks a constraint in-sample")
        state["pending"] = []
        if failures:
            self._reject_candidate("; ".join(failures))
            return
        if settings.guards.lookahead_check:
            state["stage"] = "lookahead"
            self._batch(self._lookahead_works("cand", candidate, is_result.trades if is_result else None))
            return
        self._promotion()

    def _deflated_sharpe(self, result: Result | None, sharpes: list[float]) -> guards.DeflatedSharpe | None:
        annual = objective_value(result.stats or {}, "sharpe_ratio") if result else None
        if result is None or not result.returns or annual is None:
            return None
        per_sample = guards.sharpe_ratio_per_period(result.returns)
        if not per_sample or not annual:
            return None
        # Trial Sharpes are annualised by backtesting.py; bring them to the candidate's sampling.
        factor = annual / per_sample
        return guards.deflated_sharpe_ratio(result.returns, [s / factor for s in sharpes])

    def _after_lookahead(self, results: Mapping[str, Result]) -> None:
        report = self.state["report"]
        look = self._lookahead_report("cand", results)
        report["guards"]["lookahead_suspected"] = look.suspected if look else None
        report["guards"]["lookahead_detail"] = look.reason if look else "not checked"
        self.state["pending"] = []
        if look is None or look.suspected:
            self._reject_candidate(f"look-ahead suspected: {look.reason}" if look else
                                   f"the look-ahead check could not run ({self.state.pop('lookahead_error', '')})")
            return
        self._promotion()

    def _promotion(self) -> None:
        state = self.state
        candidate, champion, report = state["candidate"], state["champion"], state["report"]
        details = {"objective": self.settings.primary.stat, "maximize": self.settings.primary.maximize,
                   "oos_start_row": self.folds[0].test.start, "in_sample": candidate["in_sample"],
                   "out_of_sample": {"score": candidate["oos_score"], "folds": candidate["folds"]},
                   "guards": report["guards"], "iteration": report["iteration"], "folds": report.get("folds"),
                   "markets": report.get("markets"), "trials": state["trials"], "deployable": report["deployable"],
                   **candidate.get("extra", {})}
        state["stage"] = "promote"
        state["promotion"] = {"parent_version": champion["version"], "kind": candidate["kind"],
                              "changes": candidate["changes"], "details": details}

    # --- promotion, rejection, the model ---------------------------------------------------------

    def promotion(self) -> Promote:
        promotion, candidate = self.state["promotion"], self.state["candidate"]
        return Promote(parent_version=int(promotion["parent_version"] or 1), code=self.code(candidate["code"]),
                       params=dict(candidate["params"]), kind=promotion["kind"], changes=promotion["changes"],
                       improvement=_finite(self.state["report"]["improvement"]), details=promotion["details"],
                       deployable=bool(self.state["report"]["deployable"]))

    def promoted(self, child_version: int) -> None:
        """The driver stored the child (idempotently) as `child_version`."""
        state = self.state
        report, candidate = state["report"], state["candidate"]
        report["promoted"], report["child_version"] = True, child_version
        why = f"beats v{state['champion']['version']} out-of-sample by {_pct(report['improvement'])}"
        report["reason"] = f"{candidate['rationale']} — {why}" if candidate.get("rationale") else why
        state["iterations"].append(report)
        state["children"].append(child_version)
        candidate["version"] = child_version
        sharpe = objective_value(candidate["in_sample"], "sharpe_ratio")
        if candidate["kind"] == "llm_code" and sharpe is not None:
            state["llm_sharpes"].append(sharpe)  # a promoted proposal was a try too
        state["champion"] = {k: candidate[k] for k in ("version", "code", "params", "in_sample", "oos_score", "folds",
                                                       "markets")}
        state["candidate"] = None
        if state["mode"] == "llm":
            state["llm_failures"] = 0
            state["mode"] = "params"  # new code: a new study around the champion's parameters
        target = self.settings.target
        score = state["champion"]["oos_score"]
        if target is not None and score is not None and (
                score >= target if self.settings.primary.maximize else score <= target):
            self._finish(f"reached the target {target:g}")
            return
        self._begin_iteration()

    def take_proposal(self, proposal: Proposal) -> None:
        state = self.state
        report = self._new_report(method="llm_code")
        report["trials"] = 1
        report["best_params"] = dict(state["champion"]["params"])
        if proposal.code is None:
            report["reason"] = f"the model's proposal was rejected ({proposal.error})"
            state["tried"].append(f"(rejected: {proposal.error})")
            self._reject(report, f"iteration {state['iteration']}: {report['reason']}")
            return
        state["tried"].append(proposal.rationale)
        champion = state["champion"]
        candidate = self._evaluation(version=None, code=proposal.code, params=dict(champion["params"]))
        candidate.update({"kind": "llm_code", "fold_params": [dict(champion["params"])] * len(self.folds),
                          "changes": proposal.diff, "rationale": proposal.rationale, "extra": proposal.extra})
        self._validate(candidate, report)

    def _reject_candidate(self, why: str) -> None:
        state = self.state
        report, candidate = state["report"], state["candidate"]
        if candidate["kind"] == "llm_code":
            sharpe = objective_value(candidate["in_sample"], "sharpe_ratio")
            if sharpe is not None:
                state["llm_sharpes"].append(sharpe)  # every proposal is one more strategy tried
            if not candidate["in_sample"]:
                why = "the proposed code failed in-sample"
            report["reason"] = f"{candidate.get('rationale', '')} — not promoted: {why}"
            self._reject(report, f"iteration {state['iteration']} (llm_code) was not promoted: {why}")
            return
        report["reason"] = why
        self._reject(report, f"iteration {state['iteration']} was not promoted: {why}")

    def _reject(self, report: dict[str, Any], why: str) -> None:
        state = self.state
        state["iterations"].append(report)
        state["candidate"] = None
        state["pending"] = []
        if state["llm"] and state["llm_failures"] < LLM_ATTEMPTS:
            # Parameters stopped improving (or a proposal failed): ask the model for a code change.
            state["llm_failures"] += state["mode"] == "llm"
            state["mode"] = "llm"
            if state["llm_failures"] < LLM_ATTEMPTS:
                self._begin_iteration()
                return
        self._finish(why)

    def _finish(self, reason: str) -> None:
        self.state["stage"] = "done"
        self.state["stop_reason"] = reason
        self.state["pending"] = []

    # --- the outcome -----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return bool(self.state["stage"] == "done")
