"""spec.optimization in the cluster: the operator drives rbi.optimize.machine with Jobs.

The loop is the same state machine `rbi optimize` steps (rbi.optimize.machine): the same
search (Optuna studies in the results database), walk-forward, constraints, both gates, the
cross-market check and LLM rounds. This module only performs what the machine asks:

* a batch of search trials is one Indexed Job (shard k runs trials k, k+shards, …);
* every other run of a batch (validation windows, other markets, the look-ahead probe) is a
  single-run Job of its own; the batch is taken when all its Jobs have finished;
* a promotion is a new version in the store and a child BacktestStrategy <root>-v<N>, owned by
  its parent, labelled rbi.dev/deployable and with a Deployable condition;
* a code change is asked of the operator's LLM endpoint.

The machine's state is kept, as JSON, in the parent's status.optimization.machine after every
step and before anything is created, and every Job has a name derived from (uid, batch, work), so a
restarted operator finds the same Jobs, takes finished ones, and never runs a trial twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from rbi import metrics
from rbi.integrity import host_dataset, verifier, verify_report
from rbi.k8s import manifests as m
from rbi.k8s.reasons import job_state
from rbi.k8s.results import run_outcome, trial_outcomes
from rbi.operator import events, phases, runs
from rbi.operator.kube import ApiError, bts_path, configmap_path, job_path
from rbi.operator.state import OperatorState
from rbi.optimize import guards
from rbi.optimize import machine as mc
from rbi.optimize.loop import StudyCache
from rbi.optimize.settings import OptimizationSettings, parse_settings
from rbi.outcome import FailureClass, RunError, RunOutcome
from rbi.runner import BUNDLED_PREFIX

logger = logging.getLogger(__name__)
DONE = "done"
TRIAL_JOB = "trials"
WORK_JOB = "validate"


def _opt(body: Any) -> dict[str, Any]:
    return dict((body.get("status") or {}).get("optimization") or {})


def _settings(body: Any) -> OptimizationSettings:
    return parse_settings((body.get("spec") or {}).get("optimization"))


def _searches(state: OperatorState, settings: OptimizationSettings) -> StudyCache:
    key = ("studies", mc.settings_fingerprint(settings))
    cache = state.searches.get(key)
    if cache is None:
        cache = state.searches[key] = StudyCache(settings, state.store)
    return cache  # type: ignore[no-any-return]


def _load(state: OperatorState, body: Any) -> mc.Machine | None:
    raw = _opt(body).get("machine")
    if not raw:
        return None
    settings = _settings(body)
    saved = json.loads(raw)
    return mc.Machine(saved, settings, searches=_searches(state, settings),
                      trade_on_close=bool(saved.get("trade_on_close")))


def _summary(step: mc.Machine) -> dict[str, Any]:
    """What `kubectl get/describe` shows, beside the machine's own state."""
    s = step.state
    settings = step.settings
    last = s["iterations"][-1] if s["iterations"] else {}
    champion, parent = s["champion"], s["parent"]
    gain = guards.improvement(parent.get("oos_score"), champion.get("oos_score"),
                                 maximize=settings.primary.maximize) if s["children"] else None
    promoted = [i for i in s["iterations"] if i.get("promoted")]
    return {
        "state": s["stage"], "iteration": s["iteration"], "maxIterations": settings.max_iterations,
        "trials": s["trials"], "objective": settings.primary.stat, "batch": s.get("batch"),
        "championVersion": champion.get("version"), "championParams": champion.get("params"),
        "bestVersion": champion.get("version") if s["children"] else None,
        "bestChild": m.child_name(s["strategy"], champion["version"]) if s["children"] else None,
        "bestScore": _finite(champion.get("oos_score")), "baselineScore": _finite(parent.get("oos_score")),
        "improvement": _finite(gain), "lastImprovement": _finite(last.get("improvement")),
        "lastReason": str(last.get("reason") or "")[:500] or None,
        "deployable": promoted[-1].get("deployable") if promoted else None,
        "stopReason": s["stop_reason"], "machine": json.dumps(s, sort_keys=True, default=str),
    }


async def _save(state: OperatorState, body: Any, step: mc.Machine, **status: Any) -> None:
    await runs.patch_status(state, body, {"optimization": _summary(step), **status})


# --- entry points (runs.py and the handlers call these) ---------------------------------------------


async def start(state: OperatorState, body: Any) -> None:
    """The parent's own run succeeded: measure it and begin the loop (or carry on with a saved one)."""
    if _opt(body).get("machine"):
        await resume(state, body)
        return
    namespace, name, _, _ = runs.ident(body)
    async with state.lock(f"{namespace}/{name}/opt"):
        fresh = await state.kube.get(bts_path(namespace, name))
        if fresh is None or _opt(fresh).get("machine"):
            return
        settings = _settings(fresh)
        code, _ = await runs.resolve_code(state, fresh)
        planned = runs.plan(state, fresh, code)
        host = host_dataset(planned.data_path)
        if host is None:
            await _finish(state, fresh, f"the operator cannot read the dataset {planned.data_path!r} to cut its "
                                        "windows: use data.dataset, or mount the dataset PVC in the operator at /data")
            return
        n_rows, digest = await asyncio.to_thread(_dataset_facts, host)
        root, _ = runs.lineage(fresh)
        status = fresh.get("status") or {}
        step = await asyncio.to_thread(
            mc.Machine.start, settings, searches=_searches(state, settings), strategy=root, code=planned.code,
            params=dict((fresh.get("spec") or {}).get("params") or {}), version=int(status.get("version") or 1),
            n_rows=n_rows, dataset_hash=digest, llm=_llm(state) is not None,
            trade_on_close=bool(planned.spec.backtest.get("trade_on_close")))
        step.state["trade_on_close"] = bool(planned.spec.backtest.get("trade_on_close"))
        step.state["resource"] = name
        await _save(state, fresh, step, phase=phases.OPTIMIZING, reason="Optimizing",
                    message="optimisation: measuring the parent")
    await _advance(state, namespace, name)


async def resume(state: OperatorState, body: Any) -> None:
    """After a restart (or any event): re-attach to the batch's Jobs, take finished ones, go on."""
    if not _opt(body).get("machine"):
        await start(state, body)
        return
    if _opt(body).get("state") == DONE:
        return
    namespace, name, _, _ = runs.ident(body)
    await _advance(state, namespace, name)


async def on_stage_job_finished(state: OperatorState, job: dict[str, Any]) -> None:
    labels = job["metadata"].get("labels") or {}
    strategy = labels.get(m.LABEL_STRATEGY)
    if strategy:
        await _advance(state, job["metadata"]["namespace"], strategy)


async def fail_stage(state: OperatorState, namespace: str, strategy: str, job_name: str, error: RunError) -> None:
    """A Job of the batch can never run (an image pull error): the loop stops, saying why."""
    body = await state.kube.get(bts_path(namespace, strategy))
    if body is None:
        return
    step = _load(state, body)
    if step is not None and job_name in {j for j, _ in _jobs_of(body, step)}:
        await _finish(state, body, f"{error.type}: {error.message}", step=step)


# --- stepping ----------------------------------------------------------------------------------------


async def _advance(state: OperatorState, namespace: str, name: str) -> None:
    """Step the machine until it waits for Jobs or is done. One stepper per resource at a time."""
    async with state.lock(f"{namespace}/{name}/opt"):
        for _ in range(1000):
            body = await state.kube.get(bts_path(namespace, name))
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            step = _load(state, body)
            if step is None or step.done:
                return
            counted = len(step.state["iterations"])
            action = await asyncio.to_thread(step.next)
            if isinstance(action, mc.RunBatch):
                await _save(state, body, step)  # the batch (and its trials' numbers) before any Job exists
                body = await state.kube.get(bts_path(namespace, name)) or body
                results = await _collect(state, body, step)
                if results is None:
                    return  # still running: a Job event brings us back
                records = await asyncio.to_thread(step.take_results, results)
                await _record_trials(state, body, records)
            elif isinstance(action, mc.Promote):
                version = await _promote(state, body, step, action)
                await asyncio.to_thread(step.promoted, version)
            elif isinstance(action, mc.AskModel):
                proposal = await asyncio.to_thread(_propose, state, step, action)
                await asyncio.to_thread(step.take_proposal, proposal)
            else:
                await _finish(state, body, action.reason, step=step)
                return
            for report in step.state["iterations"][counted:]:
                result = "promoted" if report.get("promoted") else "rejected"
                metrics.OPTIMIZATION_ITERATIONS.labels(result=result).inc()
                if report.get("promoted") and _finite(report.get("improvement")) is not None:
                    metrics.OPTIMIZATION_IMPROVEMENT.observe(min(float(report["improvement"]), 100.0))
            await _save(state, body, step, message=f"optimisation iteration {step.state['iteration']}: "
                                                   f"{step.state['stage']}")
        logger.error("%s/%s: the optimisation did not settle after 1000 steps", namespace, name)


def _dataset_facts(path: str) -> tuple[int, str]:
    from rbi.prepare.data import dataset_hash, load_ohlcv

    return len(load_ohlcv(path)), dataset_hash(Path(path))


def _fraction(rows: tuple[int, int], n_rows: int) -> tuple[float, float]:
    # rbi.runner (and rbi.integrity) take rows int(n * f): half a row in hits each bound exactly.
    return (rows[0] + 0.5) / n_rows, (rows[1] + 0.5) / n_rows


def _jobs_of(body: Any, step: mc.Machine) -> list[tuple[str, list[mc.Work]]]:
    """The Jobs that run the pending batch: one Indexed Job for its trials, one Job per other run."""
    _, name, uid, _ = runs.ident(body)
    batch = int(step.state.get("batch") or 0)
    works = [mc.Work.from_json(w) for w in step.state["pending"]]
    trials = [w for w in works if w.trial is not None]
    jobs: list[tuple[str, list[mc.Work]]] = []
    if trials:
        jobs.append((m.trial_job_name(name, uid, batch, TRIAL_JOB), trials))
    for index, work in enumerate(w for w in works if w.trial is None):
        jobs.append((m.trial_job_name(name, uid, batch, f"{WORK_JOB}{index}"), [work]))
    return jobs


async def _collect(state: OperatorState, body: Any, step: mc.Machine) -> list[mc.Result] | None:
    """The batch's results once every one of its Jobs has finished; creates the Jobs that do not exist yet."""
    namespace = body["metadata"]["namespace"]
    waiting = False
    results: list[mc.Result] = []
    for job_name, works in _jobs_of(body, step):
        job = await state.kube.get(job_path(namespace, job_name))
        if job is None:
            await _create(state, body, step, job_name, works)
            waiting = True
            continue
        if not job_state(job).finished:
            state.queue.attach(job_name)
            waiting = True
            continue
        state.queue.release(job_name)
        if not waiting:
            results += await _results(state, body, step, job, works)
    return None if waiting else results


async def _results(state: OperatorState, body: Any, step: mc.Machine, job: dict[str, Any],
                   works: list[mc.Work]) -> list[mc.Result]:
    namespace, job_name = job["metadata"]["namespace"], job["metadata"]["name"]
    code, _ = await runs.resolve_code(state, body)
    planned = runs.plan(state, body, code)
    pods = await runs.job_pods(state, namespace, job_name)
    logs: dict[str, str] = {}
    for pod in pods:
        # Figures come only from the full result lines (with their facts), recomputed by the host.
        text = await state.kube.log(namespace, pod["metadata"]["name"], m.CONTAINER)
        if text:
            logs[pod["metadata"]["name"]] = text
    n_rows = int(step.state["n_rows"])
    if works[0].trial is not None:
        fraction = _fraction(works[0].rows or (0, n_rows), n_rows)
        verify = verifier(host_dataset(planned.data_path), mode="class", data_fraction=fraction)
        outcomes = await asyncio.to_thread(trial_outcomes, job, pods, container=m.CONTAINER, logs=logs, verify=verify)
        shared = outcomes.get(-1)
        return [mc.result_from_outcome(w, outcomes.get(i) or shared or _missing(job_name))
                for i, w in enumerate(works)]
    work = works[0]
    log = logs.get(pods[-1]["metadata"]["name"]) if pods else None
    outcome = await asyncio.to_thread(run_outcome, job, pods, container=m.CONTAINER, log=log, mode="class",
                                      verify=_work_verifier(planned.data_path, work, n_rows))
    return [mc.result_from_outcome(work, outcome)]


def _work_verifier(data_path: str, work: mc.Work, n_rows: int) -> Any:
    if work.dataset is not None:
        return verifier(host_dataset(f"{BUNDLED_PREFIX}{work.dataset}"), mode="class")
    host = host_dataset(data_path)
    rows = work.rows or (0, n_rows)
    if work.probe is None:
        return verifier(host, rows, mode="class")

    def verify_probe(report: dict[str, Any]) -> dict[str, Any]:
        # The probe run was served the altered window: check its fills against that, built the same way.
        from rbi.optimize.guards import lookahead_probe
        from rbi.prepare.data import load_ohlcv

        frame = None
        if host is not None:
            frame = lookahead_probe(load_ohlcv(host).iloc[rows[0]:rows[1]], decision_row=int(work.probe or 0)).data
        return verify_report(report, frame=frame, mode="class")

    return verify_probe


def _missing(job_name: str) -> RunOutcome:
    return RunOutcome.failed(RunError(FailureClass.SANDBOX_ERROR, f"Job {job_name} gave no result for this trial"))


async def _create(state: OperatorState, body: Any, step: mc.Machine, job_name: str, works: list[mc.Work]) -> None:
    namespace, name, _, _ = runs.ident(body)
    code, _ = await runs.resolve_code(state, body)
    planned = runs.plan(state, body, code)
    n_rows = int(step.state["n_rows"])
    first = works[0]
    work_code = step.code(first.code)
    batch = int(step.state.get("batch") or 0)
    if first.trial is not None:
        fraction: tuple[float, float] | None = _fraction(first.rows or (0, n_rows), n_rows)
        keep = sorted({o.stat for o in step.settings.objectives} | {c.stat for c in step.settings.constraints}
                      | {"num_trades", "sharpe_ratio"})
        shards = m.trial_shards(len(works), state.settings.job)
        document = m.build_trials_document(trials=[(i, w.params) for i, w in enumerate(works)], shards=shards,
                                           keep=keep, data_fraction=fraction)
        request = m.run_request(mode="class", params={}, backtest=planned.spec.backtest,
                                strategy_class=planned.spec.strategy_class, data_path=planned.data_path)
        configmap = m.build_code_configmap(name=job_name, namespace=namespace, strategy=name, code=work_code,
                                           request=request, owner=body, trials=document, purpose=TRIAL_JOB)
        job = m.build_indexed_trial_job(name=job_name, namespace=namespace, strategy=name, configmap=job_name,
                                        limits=planned.spec.limits, options=state.settings.job, owner=body,
                                        trials=len(works), iteration=batch, stage=TRIAL_JOB, gpu=planned.spec.gpu)
        what = f"{len(works)} trial(s) in {shards} shard(s)"
    else:
        data_path = f"{BUNDLED_PREFIX}{first.dataset}" if first.dataset else planned.data_path
        fraction = None if first.dataset else _fraction(first.rows or (0, n_rows), n_rows)
        request = m.run_request(mode="class", params=first.params, backtest=planned.spec.backtest,
                                strategy_class=planned.spec.strategy_class, data_path=data_path,
                                data_fraction=fraction)
        request.update({"include_series": first.series, "max_trades": mc.ALL_TRADES if first.series else 2000,
                        "lookahead_probe": first.probe})
        configmap = m.build_code_configmap(name=job_name, namespace=namespace, strategy=name, code=work_code,
                                           request=request, owner=body, purpose=WORK_JOB)
        job = m.build_job(name=job_name, namespace=namespace, strategy=name, configmap=job_name,
                          limits=planned.spec.limits, options=state.settings.job, owner=body, purpose=WORK_JOB,
                          extra_labels={m.LABEL_ITERATION: str(batch)}, gpu=planned.spec.gpu, trials_file=False)
        what = f"{first.key}"

    async def create() -> bool:
        fresh = await state.kube.get(bts_path(namespace, name))
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return False
        try:
            await state.kube.create(configmap_path(namespace), configmap)
            _, created = await state.kube.create(job_path(namespace), job)
        except ApiError as exc:
            if exc.transient:
                runs.retry_later(state, job_name, create, group=f"{namespace}/{name}")
                return False
            await _finish(state, fresh, f"cannot create the Job {job_name}: {exc}")
            return False
        if created:
            metrics.JOBS_CREATED.inc()
            events.post(state, fresh, reason="JobCreated", message=f"optimisation Job {job_name}: {what} "
                        f"(batch {batch}, iteration {step.state['iteration']})")
        return True

    state.queue.submit(job_name, create, group=f"{namespace}/{name}")


async def _record_trials(state: OperatorState, body: Any, records: list[dict[str, Any]]) -> None:
    root, _ = runs.lineage(body)
    for record in records:
        await asyncio.to_thread(
            state.store.record_study_trial, study=record["study"], strategy_name=root,
            parent_version=record["parent_version"] or 1, iteration=record["iteration"],
            trial_number=record["trial_number"], params=record["params"], objective=record["objective"],
            status=record["status"], stats=record["stats"], sample="in_sample")
    if records:
        metrics.OPTIMIZATION_TRIALS.labels(source="params").inc(len(records))


async def _promote(state: OperatorState, body: Any, step: mc.Machine, action: mc.Promote) -> int:
    """Store the new version and its lineage step, then create (or find) its resource. Idempotent."""
    namespace, name, _, _ = runs.ident(body)
    root, _ = runs.lineage(body)
    version = await asyncio.to_thread(state.store.register_version, root, code=action.code, params=action.params,
                                      parent_version=action.parent_version, source=action.kind)
    await asyncio.to_thread(state.store.record_optimization, strategy_name=root, parent_version=action.parent_version,
                            child_version=version, optimization_type=action.kind, changes_made=action.changes,
                            performance_delta=action.improvement, details=action.details)
    own_version = int((body.get("status") or {}).get("version") or 1)
    parent_name = name if action.parent_version == own_version else m.child_name(root, action.parent_version)
    parent = await state.kube.get(bts_path(namespace, parent_name))
    child = m.build_child_strategy(parent=parent or body, root=root, version=version, code=action.code,
                                   params=action.params, changes=action.changes, deployable=action.deployable)
    _, created = await state.kube.create(bts_path(namespace), child)
    gate = action.details.get("guards") or {}
    if created:
        events.post(state, body, reason="ChildCreated",
                    message=f"v{version} promoted as {child['metadata']['name']}: {action.changes[:300]}, "
                            f"out-of-sample improvement {_pct(action.improvement)}; "
                            f"{'deployable' if action.deployable else 'not deployable'}")
    fresh_child = await state.kube.get(bts_path(namespace, child["metadata"]["name"]))
    if fresh_child is not None:
        dsr = gate.get("deflated_sharpe")
        await runs.patch_status(state, fresh_child, {"conditions": [{
            "type": "Deployable", "status": "True" if action.deployable else "False", "reason": "DeflatedSharpe",
            "message": f"deflated Sharpe ratio {_num(dsr)} over {gate.get('deflated_sharpe_trials')} trials; "
                       f"minDeflatedSharpe {step.settings.guards.min_deflated_sharpe:g}"}]})
    return version


def _llm(state: OperatorState) -> Any:
    from rbi.operator.agents import _client
    from rbi.operator.runs import InvalidStrategy

    try:
        return _client(state)
    except InvalidStrategy:
        return None


def _propose(state: OperatorState, step: mc.Machine, action: mc.AskModel) -> mc.Proposal:
    from rbi.optimize.refine import RefineError, propose_code_change

    client = _llm(state)
    if client is None:
        return mc.Proposal(code=None, error="llm: no LLM endpoint is configured in the operator")
    try:
        proposal = propose_code_change(client, code=action.code, stats=action.stats, trades=None, tried=action.tried,
                                       objective=step.settings.primary.stat, maximize=step.settings.primary.maximize)
    except RefineError as exc:
        return mc.Proposal(code=None, error=f"{exc.kind}: {exc}")
    metrics.OPTIMIZATION_TRIALS.labels(source="llm_code").inc()
    return mc.Proposal(code=proposal.code, rationale=proposal.rationale, diff=proposal.diff, extra={
        "model": proposal.completion.model, "prompt_version": proposal.prompt_version,
        "prompt_tokens": proposal.completion.prompt_tokens, "completion_tokens": proposal.completion.completion_tokens,
        "rationale": proposal.rationale, "change_kind": proposal.change_kind})


async def _finish(state: OperatorState, body: Any, reason: str, *, step: mc.Machine | None = None) -> None:
    changes: dict[str, Any] = {"state": DONE, "stopReason": reason}
    if step is not None:
        step.state["stage"] = "done"
        step.state["stop_reason"] = reason
        step.state["pending"] = []
        changes = {**_summary(step), **changes}
    await runs.patch_status(state, body, {"optimization": changes, "phase": phases.SUCCEEDED,
                                          "reason": "OptimizationDone", "message": reason[:1000]})
    events.post(state, body, reason="OptimizationDone", message=reason[:1000])


def _finite(value: Any) -> float | None:
    return mc._finite(value)


def _num(value: Any) -> str:
    number = _finite(value)
    return "undefined" if number is None else f"{number:.3f}"


def _pct(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.1%}"


__all__ = ["fail_stage", "on_stage_job_finished", "resume", "start"]
