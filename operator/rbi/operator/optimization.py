"""spec.optimization in the cluster: the optimizer's search, constraints and promotion rule, trials as Jobs.

One iteration:
  1. trials   the search (rbi.optimize.search, Optuna ask/tell) proposes maxTrials parameter sets;
              one Indexed Job runs them on the in-sample rows, shard k taking trials k, k+shards, …
  2. validate a two-shard Indexed Job runs the champion and the best feasible candidate on the
              out-of-sample rows (the holdout that the search never saw)
  3. promote  when the candidate beats the champion out of sample by minImprovement: a new version
              in the store (register_version, record_optimization) and a child BacktestStrategy
              <root>-v<N>, owned by its parent; the child then runs on the whole dataset.
The parent's status.optimization is the loop's state, so an operator restart picks it up
where it stopped; the Jobs and ConfigMaps of each stage have deterministic names.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from rbi import metrics
from rbi.integrity import host_dataset, verifier
from rbi.k8s import manifests as m
from rbi.k8s.reasons import job_state
from rbi.k8s.results import trial_outcomes
from rbi.operator import events, phases, runs
from rbi.operator.kube import ApiError, bts_path, configmap_path, job_path
from rbi.operator.state import OperatorState
from rbi.optimize.search import ParameterSearch, objective_value
from rbi.optimize.settings import OptimizationSettings, parse_settings
from rbi.outcome import RunError, RunOutcome, Status

logger = logging.getLogger(__name__)
TRIALS = "trials"
VALIDATE = "validate"
DONE = "done"


def holdout_fraction(settings: OptimizationSettings) -> float:
    validation = settings.validation or {}
    if isinstance(validation.get("holdout"), int | float):
        return min(0.9, max(0.05, float(validation["holdout"])))
    walk = validation.get("walkForward")
    if isinstance(walk, Mapping) and isinstance(walk.get("testFraction"), int | float):
        return min(0.9, max(0.05, float(walk["testFraction"])))
    return 0.3


def score(settings: OptimizationSettings, stats: Mapping[str, Any] | None) -> float | None:
    if not stats:
        return None
    return objective_value(stats, settings.primary.stat)


def improvement(settings: OptimizationSettings, champion: float | None, candidate: float | None) -> float | None:
    if candidate is None:
        return None
    if champion is None:
        return float("inf")
    delta = candidate - champion if settings.primary.maximize else champion - candidate
    return delta / abs(champion) if abs(champion) > 1e-12 else delta


def _opt(body: Any) -> dict[str, Any]:
    return dict((body.get("status") or {}).get("optimization") or {})


async def _patch_opt(state: OperatorState, body: Any, changes: dict[str, Any], **status: Any) -> None:
    await runs.patch_status(state, body, {"optimization": changes, **status})


async def start(state: OperatorState, body: Any) -> None:
    """The parent's own run succeeded: begin iteration 1 from its parameters."""
    if _opt(body).get("state"):
        await resume(state, body)
        return
    settings = parse_settings((body.get("spec") or {}).get("optimization"))
    status = body.get("status") or {}
    await _patch_opt(state, body, {
        "state": TRIALS, "iteration": 1, "maxIterations": settings.max_iterations, "trials": 0,
        "objective": settings.primary.stat, "championVersion": int(status.get("version") or 1),
        "championName": body["metadata"]["name"], "championParams": dict((body.get("spec") or {}).get("params") or {}),
    }, phase=phases.OPTIMIZING, reason="Optimizing", message="optimisation iteration 1")
    fresh = await state.kube.get(bts_path(body["metadata"]["namespace"], body["metadata"]["name"]))
    if fresh is not None:
        await _submit_stage(state, fresh)


async def resume(state: OperatorState, body: Any) -> None:
    """After a restart: re-attach to the stage's Job if it exists, else (re)create it."""
    opt = _opt(body)
    if opt.get("state") is None:  # the parent's run finished, the loop never started
        await start(state, body)
        return
    if opt.get("state") == DONE:
        return
    await _submit_stage(state, body)


def _search(state: OperatorState, body: Any, settings: OptimizationSettings) -> ParameterSearch:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    search = state.searches.get(key)
    if search is None:
        search = state.searches[key] = ParameterSearch(settings)
        search.enqueue(_opt(body).get("championParams") or {})
    return search


def _stage_trials(state: OperatorState, body: Any, settings: OptimizationSettings) -> list[tuple[int, dict[str, Any]]]:
    opt = _opt(body)
    if opt["state"] == VALIDATE:
        return [(0, dict(opt.get("championParams") or {})), (1, dict(opt.get("candidateParams") or {}))]
    asked = _search(state, body, settings).ask(settings.max_trials)
    key = (body["metadata"]["namespace"], body["metadata"]["name"], int(opt["iteration"]))
    state.asked[key] = asked
    return [(index, dict(a.params)) for index, a in enumerate(asked)]


async def _submit_stage(state: OperatorState, body: Any) -> None:
    namespace, name, uid, _ = runs.ident(body)
    opt = _opt(body)
    stage, iteration = str(opt["state"]), int(opt["iteration"])
    key = m.trial_job_name(name, uid, iteration, stage)
    existing_job = await state.kube.get(job_path(namespace, key))
    if existing_job is not None:
        if job_state(existing_job).finished:  # it ended while no operator watched
            await on_stage_job_finished(state, existing_job)
        else:
            state.queue.attach(key)
        return
    settings = parse_settings((body.get("spec") or {}).get("optimization"))
    code, generated = await runs.resolve_code(state, body)
    planned = runs.plan(state, body, code, generated=generated)
    existing = await state.kube.get(configmap_path(namespace, key))
    if existing is not None:
        trials = [(int(i), dict(p)) for i, p in json.loads((existing.get("data") or {})["trials.json"])["trials"]]
    else:
        trials = _stage_trials(state, body, settings)
    if not trials:
        await _finish_loop(state, body, "the search space is exhausted")
        return
    split = 1.0 - holdout_fraction(settings)
    fraction = (0.0, split) if stage == TRIALS else (split, 1.0)
    keep = sorted({o.stat for o in settings.objectives} | {c.stat for c in settings.constraints} | {"num_trades"})
    shards = m.trial_shards(len(trials), state.settings.job)
    document = m.build_trials_document(trials=trials, shards=shards, keep=keep, data_fraction=fraction)
    request = m.run_request(mode="class", params={}, backtest=planned.spec.backtest,
                            strategy_class=planned.spec.strategy_class, data_path=planned.data_path)
    configmap = m.build_code_configmap(name=key, namespace=namespace, strategy=name, code=planned.code,
                                       request=request, owner=body, trials=document, purpose=stage)
    job = m.build_indexed_trial_job(name=key, namespace=namespace, strategy=name, configmap=key,
                                    limits=planned.spec.limits, options=state.settings.job, owner=body,
                                    trials=len(trials), iteration=iteration, stage=stage)

    async def create() -> bool:
        fresh = await state.kube.get(bts_path(namespace, name))
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return False
        try:
            await state.kube.create(configmap_path(namespace), configmap)
            _, created = await state.kube.create(job_path(namespace), job)
        except ApiError as exc:
            if exc.transient:
                runs.retry_later(state, key, create, group=f"{namespace}/{name}")
                return False
            await _finish_loop(state, fresh, f"cannot create the {stage} Job: {exc}")
            return False
        if created:
            metrics.JOBS_CREATED.inc()
            events.post(state, fresh, reason="JobCreated", message=f"{stage} Job {key}: {len(trials)} trial(s) in "
                      f"{shards} shard(s), iteration {iteration}")
        await _patch_opt(state, fresh, {"job": key})
        return True

    state.queue.submit(key, create, group=f"{namespace}/{name}")


async def on_stage_job_finished(state: OperatorState, job: dict[str, Any]) -> None:
    namespace, job_name = job["metadata"]["namespace"], job["metadata"]["name"]
    labels = job["metadata"].get("labels") or {}
    strategy = labels.get(m.LABEL_STRATEGY)
    if not strategy:
        return
    async with state.lock(f"{namespace}/{strategy}/opt"):
        body = await state.kube.get(bts_path(namespace, strategy))
        if body is None:
            return
        opt = _opt(body)
        _, name, uid, _ = runs.ident(body)
        if opt.get("state") not in (TRIALS, VALIDATE) or m.trial_job_name(
                name, uid, int(opt.get("iteration") or 0), str(opt["state"])) != job_name:
            return  # a stage already taken
        pods = await runs.job_pods(state, namespace, job_name)
        logs: dict[str, str] = {}
        for pod in pods:
            # Always the logs: each trial's figures are recomputed here from its facts, never read off a message.
            text = await state.kube.log(namespace, pod["metadata"]["name"], m.CONTAINER)
            if text:
                logs[pod["metadata"]["name"]] = text
        configmap = await state.kube.get(configmap_path(namespace, job_name))
        batch = json.loads(((configmap or {}).get("data") or {}).get("trials.json") or '{"trials": []}')
        trials = batch["trials"]
        fraction = batch.get("dataFraction")
        verify = verifier(host_dataset(runs.served_path(state, body)), mode="class",
                          data_fraction=(float(fraction[0]), float(fraction[1])) if fraction else None)
        outcomes = await asyncio.to_thread(trial_outcomes, job, pods, container=m.CONTAINER, logs=logs, verify=verify)
        params = {int(i): dict(p) for i, p in trials}
        if opt["state"] == TRIALS:
            await _after_trials(state, body, outcomes, params)
        else:
            await _after_validation(state, body, outcomes)


async def fail_stage(state: OperatorState, namespace: str, strategy: str, job_name: str, error: RunError) -> None:
    body = await state.kube.get(bts_path(namespace, strategy))
    if body is not None and _opt(body).get("job") == job_name:
        await _finish_loop(state, body, f"{error.type}: {error.message}")


def _feasible(settings: OptimizationSettings, outcome: RunOutcome) -> bool:
    return outcome.status is Status.SUCCEEDED and all(c.holds(outcome.stats) for c in settings.constraints)


async def _after_trials(state: OperatorState, body: Any, outcomes: dict[int, RunOutcome],
                        params: dict[int, dict[str, Any]]) -> None:
    settings = parse_settings((body.get("spec") or {}).get("optimization"))
    namespace, name, _, _ = runs.ident(body)
    opt = _opt(body)
    iteration = int(opt["iteration"])
    asked = state.asked.pop((namespace, name, iteration), None)
    search = state.searches.get((namespace, name))
    root, _ = runs.lineage(body)
    champion_version = int(opt.get("championVersion") or 1)
    best: tuple[float, int] | None = None
    for index, trial_params in params.items():
        outcome = outcomes.get(index)
        stats = outcome.stats if outcome is not None and outcome.status is not Status.FAILED else None
        value = score(settings, stats)
        if asked is not None and search is not None and index < len(asked):
            search.tell(asked[index], stats)
        await asyncio.to_thread(state.store.record_trial, strategy_name=root, parent_version=champion_version,
                                iteration=iteration, trial_number=index, params=trial_params, objective=value,
                                status=str(outcome.status) if outcome else "failed", stats=stats, sample="in_sample")
        if outcome is not None and value is not None and _feasible(settings, outcome):
            ranked = value if settings.primary.maximize else -value
            if best is None or ranked > best[0]:
                best = (ranked, index)
    metrics.OPTIMIZATION_TRIALS.labels(source="params").inc(len(params))
    total = int(opt.get("trials") or 0) + len(params)
    if best is None:
        metrics.OPTIMIZATION_ITERATIONS.labels(result="rejected").inc()
        await _patch_opt(state, body, {"trials": total})
        await _finish_loop(state, body, f"iteration {iteration}: no trial met the constraints")
        return
    await _patch_opt(state, body, {"state": VALIDATE, "trials": total, "candidateParams": params[best[1]],
                                   "candidateInSample": best[0] if settings.primary.maximize else -best[0]},
                     message=f"iteration {iteration}: validating the best of {len(params)} trials out of sample")
    fresh = await state.kube.get(bts_path(namespace, name))
    if fresh is not None:
        await _submit_stage(state, fresh)


async def _after_validation(state: OperatorState, body: Any, outcomes: dict[int, RunOutcome]) -> None:
    settings = parse_settings((body.get("spec") or {}).get("optimization"))
    namespace, name, _, _ = runs.ident(body)
    opt = _opt(body)
    iteration = int(opt["iteration"])
    champion, candidate = outcomes.get(0), outcomes.get(1)
    champion_score = score(settings, champion.stats if champion and champion.status is not Status.FAILED else None)
    candidate_score = score(settings, candidate.stats if candidate and _feasible(settings, candidate) else None)
    gain = improvement(settings, champion_score, candidate_score)
    baseline = opt.get("baselineScore", champion_score)
    changes: dict[str, Any] = {"lastImprovement": _finite(gain), "baselineScore": _finite(baseline)}
    if gain is None or gain < settings.min_improvement:
        metrics.OPTIMIZATION_ITERATIONS.labels(result="rejected").inc()
        await _patch_opt(state, body, changes)
        await _finish_loop(state, body, f"iteration {iteration}: the best candidate did not beat the champion out of "
                                        f"sample by {settings.min_improvement:.0%}")
        return
    metrics.OPTIMIZATION_ITERATIONS.labels(result="promoted").inc()
    metrics.OPTIMIZATION_IMPROVEMENT.observe(min(gain, 100.0))
    child = await _promote(state, body, dict(opt.get("candidateParams") or {}), gain)
    total_gain = improvement(settings, _number(baseline), candidate_score)
    changes.update({"bestChild": child["metadata"]["name"], "bestVersion": int(child["metadata"]["labels"][
        m.LABEL_VERSION]), "bestScore": _finite(candidate_score), "improvement": _finite(total_gain),
        "championVersion": int(child["metadata"]["labels"][m.LABEL_VERSION]), "championName": child["metadata"]["name"],
        "championParams": dict(opt.get("candidateParams") or {}), "championScore": _finite(candidate_score)})
    target_met = settings.target is not None and candidate_score is not None and (
        candidate_score >= settings.target if settings.primary.maximize else candidate_score <= settings.target)
    if iteration >= settings.max_iterations or target_met:
        await _patch_opt(state, body, changes)
        fresh = await state.kube.get(bts_path(namespace, name))
        await _finish_loop(state, fresh or body, "target reached" if target_met else
                           f"{settings.max_iterations} iteration(s) done")
        return
    changes.update({"state": TRIALS, "iteration": iteration + 1, "job": None})
    await _patch_opt(state, body, changes, message=f"optimisation iteration {iteration + 1}")
    fresh = await state.kube.get(bts_path(namespace, name))
    if fresh is not None:
        await _submit_stage(state, fresh)


async def _promote(state: OperatorState, body: Any, params: dict[str, Any], gain: float) -> dict[str, Any]:
    """Store the new version and its lineage step, then create (or find) its resource."""
    namespace, _, _, _ = runs.ident(body)
    opt = _opt(body)
    root, _ = runs.lineage(body)
    code, _ = await runs.resolve_code(state, body)
    planned = runs.plan(state, body, code)
    parent_version = int(opt.get("championVersion") or 1)
    old = dict(opt.get("championParams") or {})
    diff = {k: [old.get(k), v] for k, v in params.items() if old.get(k) != v}
    version = await asyncio.to_thread(state.store.register_version, root, code=planned.code, params=params,
                                      parent_version=parent_version, source="optimizer")
    await asyncio.to_thread(state.store.record_optimization, strategy_name=root, parent_version=parent_version,
                            child_version=version, optimization_type="params", changes_made=json.dumps(diff),
                            performance_delta=_finite(gain), details={"iteration": opt.get("iteration"),
                                                                      "objective": opt.get("objective")})
    parent = await state.kube.get(bts_path(namespace, str(opt.get("championName") or body["metadata"]["name"])))
    child = m.build_child_strategy(parent=parent or body, root=root, version=version, code=planned.code,
                                   params={**dict((body.get("spec") or {}).get("params") or {}), **params},
                                   changes=json.dumps(diff))
    created_child, created = await state.kube.create(bts_path(namespace), child)
    if created:
        events.post(state, body, reason="ChildCreated", message=f"v{version} promoted as {child['metadata']['name']}: "
                  f"{json.dumps(diff)}, out-of-sample improvement {gain:+.1%}")
    return created_child if created_child.get("metadata", {}).get("labels") else child


async def _finish_loop(state: OperatorState, body: Any, reason: str) -> None:
    namespace, name, _, _ = runs.ident(body)
    state.searches.pop((namespace, name), None)
    await _patch_opt(state, body, {"state": DONE, "stopReason": reason, "job": None}, phase=phases.SUCCEEDED,
                     reason="OptimizationDone", message=reason[:1000])
    events.post(state, body, reason="OptimizationDone", message=reason[:1000])


def _finite(value: Any) -> float | None:
    number = _number(value)
    return None if number is None or number != number or abs(number) == float("inf") else round(number, 6)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
