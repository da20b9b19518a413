"""The hands-free loop: ideas → research → backtest → package → execute ⇄ debug → optimize, N at a time.

Its state lives in the results store (`loop_ideas`): every stage writes a checkpoint (the research spec,
the packaged code, the version under test) before the next one starts, so a rerun skips finished ideas
and resumes interrupted ones where they stopped, without asking the model again for what it already
answered and without running a stored version again.
"""

from __future__ import annotations

import difflib
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from rbi import metrics
from rbi.agents.backtest import write_backtest
from rbi.agents.calls import AgentError, CallRecord, store_calls
from rbi.agents.debug import DEFAULT_MAX_ATTEMPTS, debug_code, error_signature
from rbi.agents.pipeline import GeneratedStrategy, finish, package_step
from rbi.agents.research import ResearchSpec, research_idea
from rbi.engine import LocalExecutor, PreparationFailed, PreparedRun, prepare
from rbi.errors import RbiError, SandboxUnavailable, SpecError
from rbi.llm.client import LLMClient
from rbi.loop.ideas import Idea
from rbi.outcome import FailureClass, RunError, RunOutcome, Status
from rbi.spec import StrategySpec
from rbi.store import ResultStore
from rbi.store.repository import IdeaRecord, RunRecord

__all__ = ["IdeaLoop", "IdeaState", "LoopAborted", "LoopSettings", "LoopSummary"]

T = TypeVar("T")

STAGES = ("queued", "research", "backtest", "package", "execute", "debug", "optimize", "done")
# LLM failures that stop the whole loop: every other idea would fail the same way.
_ABORT_KINDS = {"auth", "unreachable"}
# LLM failures that leave an idea pending (retried by the next run) instead of failing it.
_TRANSIENT_KINDS = {"rate_limited", "timeout", "bad_response", "auth", "unreachable"}
GENERATION_ATTEMPTS = 2  # research and backtest answers that are not usable are asked for once more
DEFAULT_OPTIMIZATION: dict[str, Any] = {"objective": "sharpe_ratio", "method": "tpe", "maxTrials": 20,
                                        "maxIterations": 2}


class LoopAborted(RbiError):
    """The loop stopped early because the LLM endpoint cannot work (dead, or refusing the key)."""


class _Interrupted(Exception):
    """Raised inside an idea's thread when the loop is stopping; the idea keeps its checkpoint."""


@dataclass(frozen=True, slots=True)
class LoopSettings:
    concurrency: int = 2
    max_debug_attempts: int = DEFAULT_MAX_ATTEMPTS  # model attempts per idea
    max_runs: int = 8  # runs per idea, first run and every fix included
    optimize: bool = True
    optimization: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_OPTIMIZATION))
    refine: bool = False  # also let the optimizer ask the model for code changes (llm_code rounds)
    retry_failed: bool = False
    data: Path | None = None
    max_ideas: int | None = None  # stop after this many ideas finished in this run


@dataclass(slots=True)
class IdeaState:
    """One row of the live table."""

    key: str
    title: str
    name: str | None = None
    stage: str = "queued"
    status: str = "pending"
    attempts: int = 0
    runs: int = 0
    baseline: float | None = None  # the objective on the first good run (full data)
    best: float | None = None  # the optimised champion's objective (out-of-sample)
    improvement: float | None = None
    num_trades: int | None = None
    failure_class: str | None = None
    message: str = ""
    skipped: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    version: int | None = None


@dataclass(slots=True)
class LoopSummary:
    ideas: list[IdeaState]
    seconds: float
    interrupted: bool = False
    aborted: str | None = None
    objective: str = "sharpe_ratio"

    def _of(self, status: str) -> list[IdeaState]:
        return [s for s in self.ideas if s.status == status and not s.skipped]

    @property
    def succeeded(self) -> list[IdeaState]:
        return self._of("succeeded")

    @property
    def failed(self) -> list[IdeaState]:
        return [s for s in self.ideas if s.failure_class and not s.skipped and s.status != "succeeded"]

    @property
    def skipped(self) -> list[IdeaState]:
        return [s for s in self.ideas if s.skipped]

    @property
    def failures_by_class(self) -> dict[str, int]:
        return dict(Counter(s.failure_class or "unknown" for s in self.failed))

    @property
    def improvements(self) -> list[float]:
        return [s.improvement for s in self.succeeded if s.improvement is not None]

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.ideas)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.ideas)

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.ideas)

    def to_json(self) -> dict[str, Any]:
        improvements = self.improvements
        return {
            "ideas": len(self.ideas), "succeeded": len(self.succeeded), "failed": len(self.failed),
            "skipped": len(self.skipped), "failures_by_class": self.failures_by_class,
            "objective": self.objective,
            "mean_improvement": sum(improvements) / len(improvements) if improvements else None,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost, 6), "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
            "aborted": self.aborted,
            "results": [{k: getattr(s, k) for k in s.__dataclass_fields__} for s in self.ideas],
        }


def _outcome_from_record(run: RunRecord) -> RunOutcome:
    """A stored run as an outcome again (resuming: the version was already run)."""
    error = None
    if run.error_type:
        error = RunError(FailureClass(run.error_type), run.error_message or "", line=run.error_line,
                         detail=run.error_detail)
    return RunOutcome(status=Status(run.status), error=error, stats=dict(run.stats), version=run.version,
                      code_hash=run.code_hash, mode=run.mode, params=dict(run.params),
                      stderr_tail=run.stderr_tail, stdout_tail=run.stdout_tail)


def _diff(old: str, new: str) -> str:
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile="a/strategy.py", tofile="b/strategy.py")
    return "".join(lines)


class IdeaLoop:
    """Runs ideas through the agents, the sandbox and the optimizer, `settings.concurrency` at a time."""

    def __init__(self, *, store: ResultStore, client: LLMClient, executor: LocalExecutor,
                 settings: LoopSettings | None = None,
                 on_update: Callable[[list[IdeaState]], None] | None = None,
                 on_stage: Callable[[IdeaState], None] | None = None) -> None:
        self.store = store
        self.client = client
        self.executor = executor
        self.settings = settings or LoopSettings()
        if self.settings.data is not None and not self.settings.data.is_file():
            # Checked once here: every idea would otherwise fail (and be debugged) for the same missing file.
            raise SpecError(f"dataset not found: {self.settings.data}")
        self.on_update = on_update
        # Called at the start of every stage in the idea's thread; tests raise KeyboardInterrupt from it.
        self.on_stage = on_stage
        self._states: dict[str, IdeaState] = {}
        self._order: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._abort: str | None = None
        self._frames: dict[str, Any] = {}

    # --- progress ------------------------------------------------------------------------------------

    def states(self) -> list[IdeaState]:
        with self._lock:
            return [replace(self._states[k]) for k in self._order]

    def _emit(self) -> None:
        if self.on_update is not None:
            self.on_update(self.states())

    def _set(self, state: IdeaState, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(state, name, value)
        self._emit()

    def _stage(self, state: IdeaState, stage: str) -> None:
        if self._stop.is_set():
            raise _Interrupted
        self._set(state, stage=stage, status="running")
        self.store.update_idea(state.key, stage=stage, status="running")
        if self.on_stage is not None:
            self.on_stage(replace(state))

    def _account(self, state: IdeaState, records: Sequence[CallRecord]) -> None:
        with self._lock:
            for r in records:
                state.prompt_tokens += r.prompt_tokens
                state.completion_tokens += r.completion_tokens
                state.cost += r.cost or 0.0

    def _calls(self, state: IdeaState, records: Sequence[CallRecord]) -> None:
        """Store call records (tagged with the idea; linked to a version once it is registered)."""
        store_calls(self.store, records, idea_key=state.key)
        self._account(state, records)

    # --- the run -------------------------------------------------------------------------------------

    def run(self, ideas: Sequence[Idea]) -> LoopSummary:
        started = time.monotonic()
        for idea in ideas:
            if idea.key not in self._states:
                self._states[idea.key] = IdeaState(key=idea.key, title=idea.title)
                self._order.append(idea.key)
        self._emit()
        finished = 0
        queue = list(ideas)
        with ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency), thread_name_prefix="rbi-idea") as pool:
            running: dict[Future[bool], Idea] = {}
            try:
                while queue or running:
                    while queue and len(running) < max(1, self.settings.concurrency) and not self._stop.is_set():
                        if self.settings.max_ideas is not None and finished + len(running) >= self.settings.max_ideas:
                            break
                        idea = queue.pop(0)
                        running[pool.submit(self._guarded, idea)] = idea
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                        finished += future.result()
            except KeyboardInterrupt:
                self._stop.set()
                # Stop the sandboxes in flight; their ideas keep the checkpoint they had.
                self.executor.close()
                wait(running)
        summary = LoopSummary(ideas=self.states(), seconds=time.monotonic() - started,
                              interrupted=self._stop.is_set() and self._abort is None, aborted=self._abort,
                              objective=str(self.settings.optimization.get("objective", "sharpe_ratio")))
        return summary

    def _guarded(self, idea: Idea) -> bool:
        """Process one idea; True when it finished (succeeded, failed or skipped)."""
        state = self._states[idea.key]
        try:
            return self._process(idea, state)
        except _Interrupted:
            self._set(state, message="interrupted; resumes from here on the next run")
            return False
        except KeyboardInterrupt:
            self._stop.set()
            self._set(state, message="interrupted; resumes from here on the next run")
            return False
        except SandboxUnavailable as exc:
            # The machine cannot isolate runs: no idea can run, and none is to blame.
            self._abort = str(exc)
            self._stop.set()
            self._set(state, status="pending", failure_class="sandbox_error", message=str(exc)[:200])
            return False
        except Exception as exc:
            if self._stop.is_set():  # a sandbox stopped under it: not the idea's fault
                self._set(state, message="interrupted; resumes from here on the next run")
                return False
            self._fail(state, "internal_error", f"{type(exc).__name__}: {exc}")
            return True

    def _fail(self, state: IdeaState, failure_class: str, message: str, *, transient: bool = False) -> None:
        status = "pending" if transient else "failed"
        self._set(state, status=status, failure_class=failure_class, message=message)
        self.store.update_idea(state.key, status=status, failure_class=failure_class, failure_message=message)
        if not transient:
            metrics.IDEAS.labels(result="failed").inc()

    def _agent_failure(self, state: IdeaState, exc: AgentError) -> bool:
        """Record an agent failure; True when the idea finished (failed), False when it stays pending."""
        self._calls(state, exc.records)
        transient = exc.kind == "llm" and exc.llm_kind in _TRANSIENT_KINDS
        self._fail(state, exc.category, str(exc), transient=transient)
        if exc.kind == "llm" and exc.llm_kind in _ABORT_KINDS:
            self._abort = str(exc)
            self._stop.set()
        return not transient

    def _process(self, idea: Idea, state: IdeaState) -> bool:
        record = self.store.start_idea(idea.key, idea=idea.text)
        if record.status == "succeeded" or (record.status == "failed" and not self.settings.retry_failed):
            self._restore(state, record)
            metrics.IDEAS.labels(result="skipped").inc()
            return True
        if record.status == "failed":
            record = self.store.update_idea(idea.key, status="pending", failure_class=None, failure_message=None)
        self._set(state, name=record.strategy_name, attempts=record.attempts, failure_class=None, message="")
        try:
            generated = self._generate(idea, state, record)
        except AgentError as exc:
            return self._agent_failure(state, exc)
        run, outcome, version = self._execute_and_debug(state, generated)
        if run is None or outcome is None or version is None:
            return True
        if outcome.status is not Status.SUCCEEDED:
            return True
        self._optimize(state, generated, run, outcome, version)
        return True

    def _restore(self, state: IdeaState, record: IdeaRecord) -> None:
        best = record.best or {}
        self._set(state, name=record.strategy_name, stage=record.stage, status=record.status,
                  attempts=record.attempts, failure_class=record.failure_class,
                  message="already processed" + (f": {record.failure_message}" if record.failure_message else ""),
                  skipped=True, baseline=best.get("baseline"), best=best.get("best"),
                  improvement=best.get("improvement"), version=record.best_version)

    # --- generation ----------------------------------------------------------------------------------

    def _unique_name(self, name: str, key: str) -> str:
        """The research agent's name, unless another idea (or a user) already stores a strategy by it."""
        taken = {i.strategy_name for i in self.store.ideas() if i.idea_key != key and i.strategy_name}
        if name in taken or (self.store.versions(name) and name not in
                             {i.strategy_name for i in self.store.ideas() if i.idea_key == key}):
            return f"{name[:50]}-{key[:6]}"
        return name

    def _generate(self, idea: Idea, state: IdeaState, record: IdeaRecord) -> GeneratedStrategy:
        if record.research is not None:
            spec = ResearchSpec.from_json(record.research)
        else:
            self._stage(state, "research")
            spec = self._ask_twice(state, lambda attempt: research_idea(idea.text, client=self.client,
                                                                        attempt=attempt))
            name = self._unique_name(spec.name, idea.key)
            spec = replace(spec, name=name)
            self.store.update_idea(idea.key, research=spec.to_json(), strategy_name=name)
        self._set(state, name=spec.name)
        if record.code is not None and record.stage != "package":
            return finish(spec, record.code, records=[])  # packaged (and maybe debugged) already
        if record.code is None:
            self._stage(state, "backtest")
            code = self._ask_twice(state, lambda attempt: write_backtest(spec, client=self.client, attempt=attempt))
            # The model's code is a checkpoint of its own: an interruption now does not ask for it again.
            self.store.update_idea(idea.key, code=code, stage="package")
        else:
            code = record.code
        self._stage(state, "package")
        code, fixes, problems, records = package_step(code, client=self.client)
        self._calls(state, records)
        self.store.update_idea(idea.key, code=code, stage="execute")
        return finish(spec, code, records=records, fixes=fixes, problems=problems)

    def _ask_twice(self, state: IdeaState, call: Callable[[int], tuple[T, CallRecord]]) -> T:
        for attempt in range(1, GENERATION_ATTEMPTS + 1):
            try:
                value, record = call(attempt)
            except AgentError as exc:
                if exc.kind == "llm" or attempt == GENERATION_ATTEMPTS:
                    raise
                self._calls(state, exc.records)  # an unusable answer: ask once more
                continue
            self._calls(state, [record])
            return value
        raise AssertionError("unreachable")  # pragma: no cover

    # --- execution and debugging ----------------------------------------------------------------------

    def _prepare(self, generated: GeneratedStrategy, code: str) -> PreparedRun | RunOutcome:
        spec = StrategySpec(name=generated.name, code=code, mode="class", strategy_class=generated.strategy_class,
                            data_path=self.settings.data, params=dict(generated.params), source="python")
        try:
            return prepare(spec)
        except PreparationFailed as failure:
            return failure.outcome

    def _register(self, state: IdeaState, generated: GeneratedStrategy, code: str, *,
                  parent: int | None, source: str) -> int:
        version = int(self.store.register_version(generated.name, code=code, params=generated.params,
                                                  parent_version=parent, source=source))
        pending = [c.id for c in self.store.llm_calls(idea_key=state.key) if c.version is None]
        self.store.attach_llm_calls(pending, strategy_name=generated.name, version=version)
        self.store.update_idea(state.key, version=version, code=code)
        self._set(state, version=version)
        return version

    def _run_version(self, state: IdeaState, generated: GeneratedStrategy, code: str,
                     version: int) -> tuple[PreparedRun | None, RunOutcome]:
        stored = next((v for v in self.store.versions(generated.name) if v.version == version), None)
        prepared = self._prepare(generated, code)
        if stored is not None and stored.latest_run is not None and stored.latest_run.error_type != "sandbox_error":
            # Resuming: this version already ran; use its stored result instead of running it again
            # (unless the platform failed it: then it never really ran).
            outcome = _outcome_from_record(stored.latest_run)
        elif isinstance(prepared, RunOutcome):
            outcome = prepared
            outcome.version = version
            self.store.record_run(generated.name, outcome, version=version, dataset_hash=None, dataset_name=None,
                                  labels={"idea": state.key, "loop": True})
        else:
            outcome = self.executor.execute(prepared)
            if self._stop.is_set():
                raise _Interrupted
            outcome.version = version
            self.store.record_run(generated.name, outcome, version=version, dataset_hash=prepared.dataset_hash,
                                  dataset_name=prepared.dataset_name, labels={"idea": state.key, "loop": True})
        self._set(state, runs=state.runs + 1, num_trades=outcome.stats.get("num_trades"))
        return (prepared if isinstance(prepared, PreparedRun) else None), outcome

    def _execute_and_debug(self, state: IdeaState,
                           generated: GeneratedStrategy) -> tuple[PreparedRun | None, RunOutcome | None, int | None]:
        code = generated.code
        self._stage(state, "execute")
        versions = {v.version: v for v in self.store.versions(generated.name)}
        known = next((v.version for v in versions.values() if v.code == code), None)
        version = known or self._register(state, generated, code, parent=None, source="llm")
        # What earlier runs of this idea already saw (after a resume too): errors and code.
        previous_errors = [error_signature(_outcome_from_record(v.latest_run)) for n, v in versions.items()
                           if n != version and v.latest_run is not None]
        previous_codes = [v.code for n, v in versions.items() if n != version]
        model_attempts = sum(1 for c in self.store.llm_calls(idea_key=state.key) if c.agent == "debug")
        attempts = state.attempts
        for _run_number in range(self.settings.max_runs):
            prepared, outcome = self._run_version(state, generated, code, version)
            if outcome.status is Status.SUCCEEDED:
                return prepared, outcome, version
            if outcome.error is not None and outcome.error.type.is_infrastructure:
                # The platform failed, not the code: nothing to debug; the next run tries again.
                self._fail(state, str(outcome.error.type), outcome.error.message, transient=True)
                return None, None, None
            self._stage(state, "debug")
            while True:
                result = debug_code(code, outcome, client=self.client, attempt=model_attempts + 1,
                                    previous_errors=previous_errors, previous_codes=previous_codes,
                                    max_attempts=self.settings.max_debug_attempts)
                self._calls(state, result.records)
                model_attempts += bool(result.records)
                attempts += result.changed or bool(result.records)
                self.store.update_idea(state.key, attempts=attempts)
                self._set(state, attempts=attempts, message=result.reason[:200])
                if result.changed or result.gave_up:
                    break
                if result.agent_error is not None and result.agent_error.startswith("llm_"):
                    # The server failed after its retries: leave the idea pending for the next run.
                    self._fail(state, result.agent_error, result.reason, transient=True)
                    if result.agent_error[4:] in _ABORT_KINDS:
                        self._abort = result.reason
                        self._stop.set()
                    return None, None, None
                if not result.records:  # nothing was asked and nothing changed: do not spin
                    result = replace(result, gave_up=True)
                    break
            if result.gave_up:
                failure = "no_trades" if outcome.status is Status.NO_TRADES else \
                    str(outcome.error.type) if outcome.error else "unknown"
                self._fail(state, failure, f"{result.reason} (last error: {self._describe(outcome)})")
                return None, None, None
            previous_errors.append(result.error_signature)
            previous_codes.append(code)
            parent = version
            source = "debug_fixer" if result.via == "fixer" else "debug_llm"
            code = result.code
            version = self._register(state, generated, code, parent=parent, source=source)
            self.store.record_optimization(
                strategy_name=generated.name, parent_version=parent, child_version=version,
                optimization_type="debug", changes_made=_diff(previous_codes[-1], code), performance_delta=None,
                details={"via": result.via, "reason": result.reason, "error": result.error_signature,
                         "fixes": [{"fixer": f.fixer, "line": f.line, "description": f.description}
                                   for f in result.fixes],
                         "model": result.records[-1].model if result.records else None,
                         "prompt_version": result.records[-1].prompt_version if result.records else None})
            self._stage(state, "execute")
        self._fail(state, "debug_exhausted", f"still failing after {self.settings.max_runs} runs "
                   f"(last error: {self._describe(outcome)})")
        return None, None, None

    @staticmethod
    def _describe(outcome: RunOutcome) -> str:
        if outcome.status is Status.NO_TRADES:
            return "zero trades"
        return f"{outcome.error.type}: {outcome.error.message}"[:300] if outcome.error else str(outcome.status)

    # --- optimisation ---------------------------------------------------------------------------------

    def _frame(self, data_file: str) -> Any:
        with self._lock:
            if data_file not in self._frames:
                from rbi.prepare.data import load_ohlcv

                self._frames[data_file] = load_ohlcv(data_file)
            return self._frames[data_file]

    def _optimize(self, state: IdeaState, generated: GeneratedStrategy, run: PreparedRun | None,
                  outcome: RunOutcome, version: int) -> None:
        objective = str(self.settings.optimization.get("objective", "sharpe_ratio")).lstrip("-")
        baseline = outcome.stats.get(objective)
        baseline = float(baseline) if isinstance(baseline, int | float) else None
        best: dict[str, Any] = {"objective": objective, "baseline": baseline, "best": baseline, "improvement": None,
                                "baseline_stats": {k: outcome.stats.get(k) for k in
                                                   ("return_pct", "sharpe_ratio", "max_drawdown_pct", "win_rate_pct",
                                                    "num_trades")}}
        best_version = version
        self._set(state, baseline=baseline, best=baseline)
        note = ""
        if self.settings.optimize and generated.space and run is not None:
            self._stage(state, "optimize")
            from rbi.optimize.loop import Optimizer
            from rbi.optimize.settings import parse_settings

            settings = parse_settings({**self.settings.optimization, "space": generated.space})
            frame = self._frame(run.data_file)
            index_times = [t.isoformat() if hasattr(t, "isoformat") else str(t) for t in frame.index]
            optimizer = Optimizer(run, settings, executor=self.executor, store=self.store, n_rows=len(frame),
                                  index_times=index_times, batch_size=max(2, self.executor.workers * 2), frame=frame,
                                  llm=self.client if self.settings.refine else None)
            result = optimizer.optimize()
            if self._stop.is_set():
                raise _Interrupted
            best.update({"parent_oos": result.parent.oos_score, "best_oos": result.best.oos_score,
                         "best": result.best.oos_score, "baseline": result.parent.oos_score,
                         "best_params": result.best.params, "children": result.children,
                         "stop_reason": result.stop_reason, "trials": result.trials})
            from rbi.optimize.guards import improvement

            best["improvement"] = improvement(result.parent.oos_score, result.best.oos_score,
                                              maximize=result.maximize)
            best_version = result.best.version or version
            note = result.stop_reason
        elif not generated.space:
            note = "no tunable parameters: not optimised"
        self.store.update_idea(state.key, status="succeeded", stage="done", best=best, best_version=best_version,
                               failure_class=None, failure_message=None)
        metrics.IDEAS.labels(result="succeeded").inc()
        self._set(state, status="succeeded", stage="done", baseline=best.get("baseline"), best=best.get("best"),
                  improvement=best.get("improvement"), version=best_version, message=note[:200])
