"""The optimisation loop: search in-sample, prove out-of-sample, guard, promote a child.

Each iteration asks the search for `maxTrials` more trials on the in-sample
window, takes the best feasible one, and evaluates it on data the search never
saw. It becomes a child version only if it beats the current champion there by
`minImprovement`, its deflated Sharpe ratio survives every trial tried so far,
and its past decisions do not change when future bars are removed.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from rbi import metrics
from rbi.engine import LocalExecutor, PreparedRun, rbi_home
from rbi.optimize import guards, splits
from rbi.optimize.search import Asked, ParameterSearch, objective_value
from rbi.optimize.settings import OptimizationSettings
from rbi.outcome import RunOutcome, Status

ProgressCallback = Callable[["Progress"], None]
LOOKAHEAD_KEEP = 0.7
LLM_ATTEMPTS = 2  # consecutive LLM rounds without a promotion before the loop stops
# The look-ahead check compares trades around a cut deep into the data; a frequent trader needs them all.
ALL_TRADES = 200_000


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
    in_sample_outcome: RunOutcome | None = None
    oos_outcomes: list[RunOutcome] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "params": self.params, "in_sample": self.in_sample,
                "out_of_sample": self.out_of_sample, "oos_score": self.oos_score}


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

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy_name, "objective": self.objective,
            "direction": "maximize" if self.maximize else "minimize",
            "parent": self.parent.to_json(), "best": self.best.to_json(),
            "iterations": [i.to_json() for i in self.iterations], "trials": self.trials,
            "trials_per_second": self.trials_per_second, "children": self.children,
            "stop_reason": self.stop_reason, "llm": self.llm, "parent_guards": self.parent_guards,
            "resumed_from": self.resumed_from,
            "validation": [{"train": [f.train.start, f.train.end], "test": [f.test.start, f.test.end]}
                           for f in self.folds],
        }


def _stats(outcome: RunOutcome) -> dict[str, Any] | None:
    return outcome.stats if outcome.status is not Status.FAILED and outcome.stats else None


def _count_iteration(report: IterationReport) -> None:
    """The same optimisation metrics the operator exports, for local runs (and a process that serves them)."""
    metrics.OPTIMIZATION_ITERATIONS.labels(result="promoted" if report.promoted else "rejected").inc()
    if report.promoted and report.improvement is not None and math.isfinite(report.improvement):
        metrics.OPTIMIZATION_IMPROVEMENT.observe(min(report.improvement, 100.0))


def param_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{name: [old, new]} for every parameter that changed."""
    return {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}


class Optimizer:
    def __init__(self, run: PreparedRun, settings: OptimizationSettings, *, executor: LocalExecutor,
                 store: Any, n_rows: int, index_times: Sequence[str], batch_size: int,
                 on_progress: ProgressCallback | None = None, frame: pd.DataFrame | None = None,
                 llm: Any = None) -> None:
        self.run = run
        self.settings = settings
        self.executor = executor
        self.store = store
        self.n_rows = n_rows
        self.index_times = index_times
        self.batch_size = max(1, batch_size)
        self.on_progress = on_progress
        # The dataset itself, for the look-ahead probe; without it the check falls back to truncation.
        self.frame = frame
        # An rbi.llm.LLMClient, or None for parameter search only.
        self.llm = llm
        self.llm_description = (f"model {llm.config.model}" if llm is not None
                                else "not configured: parameter search only")
        self.folds = splits.make_folds(n_rows, splits.parse_validation(settings.validation),
                                       warmup=settings.warmup_bars)
        self.train = self.folds[0].train
        self.trial_sharpes: list[float] = []
        self.trials_done = 0
        self.trial_seconds = 0.0

    # --- measuring ---------------------------------------------------------------------------------

    def _score(self, stats: Mapping[str, Any] | None) -> float | None:
        return objective_value(stats, self.settings.primary.stat) if stats else None

    def evaluate(self, params: Mapping[str, Any], *, series: bool, code: str | None = None) -> Evaluation:
        base = replace(self.run, code=code or self.run.code).with_params(dict(params))
        jobs = [replace(base.on_rows(self.train.start, self.train.end, include_series=series), max_trades=ALL_TRADES)]
        for fold in self.folds:
            window = fold.test.with_warmup(self.settings.warmup_bars)
            jobs.append(base.on_rows(window.start, window.end, include_series=series))
        outcomes = list(self.executor.execute_many(jobs))
        in_sample, oos = outcomes[0], outcomes[1:]
        scores = [self._score(_stats(o)) for o in oos]
        valid = [s for s in scores if s is not None]
        oos_score = statistics.fmean(valid) if len(valid) == len(scores) and valid else None
        merged_params = in_sample.params or dict(params)
        oos_stats = _stats(oos[0]) or {} if len(oos) == 1 else {
            "folds": [_stats(o) for o in oos], self.settings.primary.stat: oos_score}
        return Evaluation(params=merged_params, in_sample=_stats(in_sample) or {}, out_of_sample=oos_stats,
                          oos_score=oos_score, code=base.code, in_sample_outcome=in_sample, oos_outcomes=oos)

    # --- guards ------------------------------------------------------------------------------------

    def deflated_sharpe(self, candidate: Evaluation) -> guards.DeflatedSharpe | None:
        outcome = candidate.in_sample_outcome
        annual = objective_value(candidate.in_sample, "sharpe_ratio")
        if outcome is None or not outcome.equity_curve or annual is None:
            return None
        returns = guards.returns_from_equity([float(p[1]) for p in outcome.equity_curve])
        per_sample = guards.sharpe_ratio_per_period(returns)
        if not per_sample or not annual:
            return None
        # Trial Sharpes are annualised by backtesting.py; bring them to the candidate's sampling.
        factor = annual / per_sample
        return guards.deflated_sharpe_ratio(returns, [s / factor for s in self.trial_sharpes])

    def lookahead(self, candidate: Evaluation) -> guards.LookaheadReport | None:
        """Run the candidate again on in-sample data altered one bar past a decision, then truncated.

        An honest strategy's completed trades before the cut are unchanged; one that reads a
        future bar (even one bar ahead) acts differently. See guards.lookahead_probe.
        """
        full = candidate.in_sample_outcome
        if full is None or full.trades is None:
            return None
        job = replace(self.run, code=candidate.code or self.run.code).with_params(candidate.params)
        if self.frame is None:
            cut = self.train.start + int((self.train.end - self.train.start) * LOOKAHEAD_KEEP)
            truncated = self.executor.execute(replace(job.on_rows(self.train.start, cut, include_series=True),
                                                      max_trades=ALL_TRADES))
            # With trade_on_close and finalize_trades, backtesting.py books the final forced close one bar
            # earlier, so the last comparable bar moves back by one (measured: false positives otherwise).
            back = 2 if self.run.backtest.get("trade_on_close") else 1
            cut_time: Any = self.index_times[max(self.train.start, cut - back)]
        else:
            window = self.frame.iloc[self.train.start:self.train.end]
            probe = guards.lookahead_probe(window, keep=LOOKAHEAD_KEEP, full_trades=full.trades,
                                           trade_on_close=bool(self.run.backtest.get("trade_on_close")))
            path = self._write_probe(probe.data)
            truncated = self.executor.execute(replace(job, data_file=str(path), data_range=None,
                                                      include_series=True, max_trades=ALL_TRADES))
            cut_time = probe.cut_time
        if truncated.trades is None:
            return None
        return guards.lookahead_suspected(full.trades, truncated.trades, cut_time)

    def _write_probe(self, data: Any) -> Path:
        """The altered dataset as a file the sandboxed worker can read (it loads datasets by path)."""
        import hashlib

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

    # --- searching ---------------------------------------------------------------------------------

    def _run_trials(self, search: ParameterSearch, iteration: int, parent_version: int,
                    code: str | None = None) -> tuple[int, int]:
        run = replace(self.run, code=code or self.run.code)
        planned, ran, feasible = self.settings.max_trials, 0, 0
        while ran < planned:
            asked: list[Asked] = search.ask(min(self.batch_size, planned - ran))
            if not asked:
                break
            started = time.perf_counter()
            jobs = [run.with_params(a.params).on_rows(self.train.start, self.train.end) for a in asked]
            outcomes = list(self.executor.execute_many(jobs))
            self.trial_seconds += time.perf_counter() - started
            for number, (item, outcome) in enumerate(zip(asked, outcomes, strict=True), start=ran):
                stats = _stats(outcome)
                values = search.tell(item, stats)
                ok = values is not None and all(c.holds(stats or {}) for c in self.settings.constraints)
                feasible += ok
                sharpe = objective_value(stats or {}, "sharpe_ratio")
                if sharpe is not None:
                    self.trial_sharpes.append(sharpe)
                if self.store is not None:
                    self.store.record_trial(
                        strategy_name=self.run.name, parent_version=parent_version, iteration=iteration,
                        trial_number=number, params=item.params, objective=values[0] if values else None,
                        status=str(outcome.status) if ok or outcome.status is Status.FAILED else "infeasible",
                        stats=stats, sample="in_sample")
            ran += len(asked)
            self.trials_done += len(asked)
            metrics.OPTIMIZATION_TRIALS.labels(source="params").inc(len(asked))
            if self.on_progress:
                self.on_progress(Progress(iteration, ran, planned, self._best_value(search), self.rate()))
        return ran, feasible

    def rate(self) -> float:
        return self.trials_done / self.trial_seconds if self.trial_seconds else 0.0

    def _feasible(self, search: ParameterSearch) -> list[Any]:
        import optuna

        done = [t for t in search.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        return [t for t in done if all(v <= 0 for v in t.user_attrs.get("constraint_violations", [0.0]))]

    def _best_value(self, search: ParameterSearch) -> float | None:
        trials = self._feasible(search)
        if not trials:
            return None
        pick = max if self.settings.primary.maximize else min
        return float(pick(t.values[0] for t in trials))

    def _best_params(self, search: ParameterSearch) -> tuple[dict[str, Any], float] | None:
        trials = self._feasible(search)
        if not trials:
            return None
        if self.settings.multi_objective:
            # Among the Pareto-optimal trials, prefer the primary objective.
            front = {t.number for t in search.study.best_trials}
            trials = [t for t in trials if t.number in front] or trials
        sign = 1 if self.settings.primary.maximize else -1
        best = max(trials, key=lambda t: sign * t.values[0])
        return dict(best.params), float(best.values[0])

    # --- the loop ----------------------------------------------------------------------------------

    def _record(self, evaluation: Evaluation, version: int) -> None:
        if self.store is None:
            return
        assert evaluation.in_sample_outcome is not None
        self.store.record_run(self.run.name, evaluation.in_sample_outcome, version=version,
                              dataset_hash=self.run.dataset_hash, dataset_name=self.run.dataset_name,
                              sample="in_sample")
        for outcome in evaluation.oos_outcomes:
            self.store.record_run(self.run.name, outcome, version=version, dataset_hash=self.run.dataset_hash,
                                  dataset_name=self.run.dataset_name, sample="out_of_sample")

    def _judge(self, champion: Evaluation, candidate: Evaluation, report: IterationReport) -> list[str]:
        """Measure the guards for a candidate; the reasons it may not be promoted (empty: promote)."""
        settings = self.settings
        report.out_of_sample = candidate.oos_score
        report.improvement = guards.improvement(champion.oos_score, candidate.oos_score,
                                                maximize=settings.primary.maximize)
        dsr = self.deflated_sharpe(candidate)
        look = self.lookahead(candidate) if settings.guards.lookahead_check else None
        report.guards = {
            "in_sample": candidate.in_sample.get(settings.primary.stat),
            "out_of_sample": candidate.oos_score,
            "deflated_sharpe": dsr.dsr if dsr else None,
            "deflated_sharpe_trials": dsr.n_trials if dsr else len(self.trial_sharpes),
            "lookahead_suspected": look.suspected if look else None,
            "lookahead_detail": look.reason if look else "not checked",
        }
        failures = []
        if report.improvement is None or report.improvement < settings.min_improvement:
            failures.append(f"out-of-sample improvement {_pct(report.improvement)} is below "
                            f"minImprovement {settings.min_improvement:.0%}")
        if dsr is None or not dsr.passed(settings.guards.min_deflated_sharpe):
            value = "undefined" if dsr is None else f"{dsr.dsr:.3f}"
            failures.append(f"deflated Sharpe {value} < {settings.guards.min_deflated_sharpe} "
                            f"over {len(self.trial_sharpes)} trials")
        if look is not None and look.suspected:
            failures.append(f"look-ahead suspected: {look.reason}")
        return failures

    def _promote(self, champion: Evaluation, candidate: Evaluation, report: IterationReport, *, kind: str,
                 changes: str, extra: Mapping[str, Any] | None = None) -> int:
        settings = self.settings
        parent_version = champion.version or 1
        child_version = parent_version + 1
        if self.store is not None:
            child_version = self.store.register_version(
                self.run.name, code=candidate.code or self.run.code, params=candidate.params,
                parent_version=parent_version, source=kind)
            self._record(candidate, child_version)
            self.store.record_optimization(
                strategy_name=self.run.name, parent_version=parent_version, child_version=child_version,
                optimization_type=kind, changes_made=changes, performance_delta=report.improvement,
                details={"objective": settings.primary.stat, "maximize": settings.primary.maximize,
                         "oos_start_row": self.folds[0].test.start, "in_sample": candidate.in_sample,
                         "out_of_sample": candidate.out_of_sample, "guards": report.guards,
                         "iteration": report.iteration, "trials": self.trials_done, **(extra or {})})
        candidate.version = child_version
        report.promoted, report.child_version = True, child_version
        report.reason = f"beats v{parent_version} out-of-sample by {_pct(report.improvement)}"
        return child_version

    def _params_round(self, search: ParameterSearch, iteration: int,
                      champion: Evaluation) -> tuple[IterationReport, Evaluation | None, str]:
        settings = self.settings
        ran, feasible = self._run_trials(search, iteration, champion.version or 1, code=champion.code)
        best = self._best_params(search)
        report = IterationReport(iteration=iteration, method=settings.method, trials=ran, feasible_trials=feasible,
                                 best_params=best[0] if best else None, best_in_sample=best[1] if best else None,
                                 out_of_sample=None, improvement=None, promoted=False, reason="")
        if best is None:
            report.reason = "no trial satisfied the constraints" if ran else "the search space is exhausted"
            return report, None, report.reason
        candidate_params = {**champion.params, **best[0]}
        if param_diff(champion.params, candidate_params) == {}:
            report.reason = "the best in-sample parameters are the current version's own"
            return report, None, f"iteration {iteration} found nothing better than v{champion.version}"
        candidate = self.evaluate(candidate_params, series=True, code=champion.code)
        failures = self._judge(champion, candidate, report)
        if failures:
            report.reason = "; ".join(failures)
            return report, None, f"iteration {iteration} was not promoted: {report.reason}"
        changes = json.dumps(param_diff(champion.params, candidate.params), sort_keys=True)
        self._promote(champion, candidate, report, kind="params", changes=changes)
        return report, candidate, ""

    def _llm_round(self, iteration: int, champion: Evaluation,
                   tried: list[str]) -> tuple[IterationReport, Evaluation | None, str]:
        from rbi.optimize.refine import RefineError, propose_code_change

        assert self.llm is not None
        settings = self.settings
        report = IterationReport(iteration=iteration, method="llm_code", trials=1, feasible_trials=0,
                                 best_params=champion.params, best_in_sample=None, out_of_sample=None,
                                 improvement=None, promoted=False, reason="")
        # Every LLM proposal is one more strategy tried: the deflated Sharpe ratio must know.
        code = champion.code or self.run.code
        trades = champion.in_sample_outcome.trades if champion.in_sample_outcome else None
        try:
            proposal = propose_code_change(self.llm, code=code, stats=champion.in_sample, trades=trades, tried=tried,
                                           objective=settings.primary.stat, maximize=settings.primary.maximize)
        except RefineError as exc:
            report.reason = f"the model's proposal was rejected ({exc.kind}): {exc}"
            tried.append(f"(rejected: {exc.kind})")
            return report, None, f"iteration {iteration}: {report.reason}"
        tried.append(proposal.rationale)
        metrics.OPTIMIZATION_TRIALS.labels(source="llm_code").inc()
        candidate = self.evaluate(champion.params, series=True, code=proposal.code)
        sharpe = objective_value(candidate.in_sample, "sharpe_ratio")
        if sharpe is not None:
            self.trial_sharpes.append(sharpe)
        report.best_in_sample = objective_value(candidate.in_sample, settings.primary.stat)
        report.feasible_trials = int(bool(candidate.in_sample)
                                     and all(c.holds(candidate.in_sample) for c in settings.constraints))
        if not candidate.in_sample:
            error = candidate.in_sample_outcome.error if candidate.in_sample_outcome else None
            report.reason = f"the proposed code failed: {error.type}: {error.message}" if error else "no result"
            return report, None, f"iteration {iteration}: {report.reason}"
        failures = self._judge(champion, candidate, report)
        if not report.feasible_trials:
            failures.append("the proposed code breaks a constraint")
        if failures:
            report.reason = f"{proposal.rationale} — not promoted: " + "; ".join(failures)
            return report, None, f"iteration {iteration} (llm_code) was not promoted: {'; '.join(failures)}"
        extra = {"model": proposal.completion.model, "prompt_version": proposal.prompt_version,
                 "prompt_tokens": proposal.completion.prompt_tokens,
                 "completion_tokens": proposal.completion.completion_tokens,
                 "rationale": proposal.rationale, "change_kind": proposal.change_kind}
        self._promote(champion, candidate, report, kind="llm_code", changes=proposal.diff, extra=extra)
        report.reason = f"{proposal.rationale} — {report.reason}"
        return report, candidate, ""

    def _resume_point(self, parent_version: int) -> tuple[int, str, dict[str, Any]] | None:
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
        return None if record is None else (version, record.code, dict(record.params))

    def _next_iteration(self) -> int:
        if self.store is None:
            return 1
        done = [t.iteration for t in self.store.trials(self.run.name)]
        return max(done, default=0) + 1

    def optimize(self) -> OptimizationResult:
        settings = self.settings
        parent_version = 1
        if self.store is not None:
            parent_version = self.store.register_version(self.run.name, code=self.run.code, params=self.run.params)
        parent = self.evaluate(self.run.params, series=True, code=self.run.code)
        parent.version = parent_version
        self._record(parent, parent_version)
        champion = parent
        resumed = self._resume_point(parent_version)
        if resumed is not None:
            # A previous run of this optimisation was interrupted: carry on from its last promoted child.
            version, code, params = resumed
            champion = self.evaluate(params, series=True, code=code)
            champion.version = version
        iterations: list[IterationReport] = []
        children: list[int] = []
        parent_guards: dict[str, Any] = {}

        def result(stop_reason: str) -> OptimizationResult:
            return OptimizationResult(
                strategy_name=self.run.name, objective=settings.primary.stat, maximize=settings.primary.maximize,
                parent=parent, best=champion, iterations=iterations, trials=self.trials_done,
                trials_per_second=self.rate(), children=children, stop_reason=stop_reason, folds=self.folds,
                parent_guards=parent_guards, llm=self.llm_description,
                resumed_from=resumed[0] if resumed is not None else None)

        if settings.guards.lookahead_check:
            # Optimising a strategy that already peeks at future bars would only polish the leak.
            look = self.lookahead(parent)
            parent_guards = {"lookahead_suspected": look.suspected if look else None,
                             "lookahead_detail": look.reason if look else "not checked"}
            if look is not None and look.suspected:
                return result(f"look-ahead suspected in v{parent_version} itself, not optimised: {look.reason}")
        search = ParameterSearch(settings)
        search.enqueue(champion.params)
        mode, llm_failures = "params", 0
        tried: list[str] = []
        stop_reason = f"reached maxIterations ({settings.max_iterations})"
        first = self._next_iteration()
        for iteration in range(first, first + settings.max_iterations):
            if mode == "params":
                report, winner, why = self._params_round(search, iteration, champion)
            else:
                report, winner, why = self._llm_round(iteration, champion, tried)
            iterations.append(report)
            _count_iteration(report)
            if winner is not None:
                children.append(report.child_version or 0)
                champion = winner
                if mode == "llm":
                    # New code: a fresh search around the champion's parameters.
                    llm_failures = 0
                    search = ParameterSearch(settings)
                    search.enqueue(champion.params)
                    mode = "params"
                if settings.target is not None and champion.oos_score is not None and (
                        champion.oos_score >= settings.target if settings.primary.maximize
                        else champion.oos_score <= settings.target):
                    stop_reason = f"reached the target {settings.target:g}"
                    break
                continue
            if self.llm is not None and llm_failures < LLM_ATTEMPTS:
                # Parameters stopped improving (or a proposal failed): ask the model for a code change.
                llm_failures += mode == "llm"
                mode = "llm"
                if llm_failures < LLM_ATTEMPTS:
                    continue
            stop_reason = why
            break
        return result(stop_reason)


def _pct(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.1%}"
