"""One backtest run of a BacktestStrategy: validate, queue, create the Job, read the result, store it.

Called by the thin kopf handlers. Idempotent throughout: names are deterministic, creation
tolerates "exists already", and a result is taken only once (status.completedJob), so a
restart or a replayed watch event never makes a second Job and never loses a result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import kopf

from rbi import metrics
from rbi.engine import code_hash
from rbi.errors import ExtractionError, SpecError
from rbi.integrity import host_dataset, verifier
from rbi.k8s import manifests as m
from rbi.k8s.reasons import job_state, stuck_pod_failure
from rbi.k8s.results import run_outcome
from rbi.operator import events, phases
from rbi.operator.kube import ApiError, bts_path, configmap_path, job_path, netpol_path, pod_path
from rbi.operator.state import OperatorState
from rbi.outcome import FailureClass, RunError, RunOutcome
from rbi.prepare.extract import extract_code
from rbi.prepare.inspect_code import backtest_options, check_code, detect_mode
from rbi.spec import StrategySpec, spec_from_document

logger = logging.getLogger(__name__)
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_NAME_LABEL = "job-name"
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


class InvalidStrategy(Exception):
    """The resource cannot run as written: the user must change it (a PermanentError for kopf)."""

    def __init__(self, kind: FailureClass, message: str, *, reason: str = "InvalidSpec", code: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class Planned:
    """A validated run, ready to become a ConfigMap and a Job."""

    spec: StrategySpec
    code: str
    mode: str
    data_path: str
    generated: bool = False


def ident(body: Any) -> tuple[str, str, str, int]:
    meta = body["metadata"]
    return meta["namespace"], meta["name"], str(meta.get("uid") or ""), int(meta.get("generation") or 1)


def lineage(body: Any) -> tuple[str, str | None]:
    labels = body["metadata"].get("labels") or {}
    return str(labels.get(m.LABEL_ROOT) or body["metadata"]["name"]), labels.get(m.LABEL_PARENT)


def label_version(body: Any) -> int | None:
    raw = (body["metadata"].get("labels") or {}).get(m.LABEL_VERSION)
    return int(raw) if isinstance(raw, str) and raw.isdigit() else None


async def patch_status(state: OperatorState, body: Any, status: dict[str, Any]) -> dict[str, Any] | None:
    namespace, name, _, _ = ident(body)
    phase = status.get("phase")
    current = (body.get("status") or {}).get("phase")
    if phase is not None and not phases.can_move(current, phase):
        logger.warning("%s/%s: phase %s → %s is not a lifecycle step; writing it anyway", namespace, name, current,
                       phase)
    result = await state.kube.patch(bts_path(namespace, name, status=True), {"status": status})
    if phase is not None:
        track_phase(state, namespace, name, phase)
    return result


def track_phase(state: OperatorState, namespace: str, name: str, phase: str | None) -> None:
    key = (namespace, name)
    previous = state.phases.pop(key, None)
    if previous is not None:
        metrics.RESOURCES.labels(phase=previous).dec()
    if phase is not None:
        state.phases[key] = phase
        metrics.RESOURCES.labels(phase=phase).inc()


# --- code ------------------------------------------------------------------------------------------


async def resolve_code(state: OperatorState, body: Any) -> tuple[str, bool]:
    """The code to run and whether an agent wrote it (spec.idea, or a debugged version)."""
    namespace, name, _, _ = ident(body)
    spec = body.get("spec") or {}
    sources = [key for key in ("code", "codeFrom", "idea") if spec.get(key) is not None]
    if len(sources) != 1:  # the CRD's CEL rule says the same; checked here for API servers without CEL
        raise InvalidStrategy(FailureClass.VALIDATION_ERROR, "spec must set exactly one of code, codeFrom, idea "
                              f"(found: {', '.join(sources) or 'none'})")
    override = await state.kube.get(configmap_path(namespace, generated_configmap(name)))
    if override is not None:
        return str((override.get("data") or {}).get("strategy.py") or ""), True
    if isinstance(spec.get("code"), str):
        return spec["code"], False
    ref = spec.get("codeFrom")
    if isinstance(ref, dict) and isinstance(ref.get("configMapKeyRef"), dict):
        key_ref = ref["configMapKeyRef"]
        source = await state.kube.get(configmap_path(namespace, str(key_ref.get("name"))))
        if source is None:
            raise InvalidStrategy(FailureClass.VALIDATION_ERROR, f"spec.codeFrom.configMapKeyRef: ConfigMap "
                                  f"{key_ref.get('name')!r} not found in {namespace}", reason="CodeNotFound")
        code = (source.get("data") or {}).get(str(key_ref.get("key")))
        if not isinstance(code, str):
            raise InvalidStrategy(FailureClass.VALIDATION_ERROR, f"spec.codeFrom.configMapKeyRef: ConfigMap "
                                  f"{key_ref.get('name')!r} has no key {key_ref.get('key')!r}", reason="CodeNotFound")
        return code, False
    if isinstance(ref, dict | str):
        file_ref = ref if isinstance(ref, str) else ref.get("file")
        return _code_from_file(state, str(file_ref)), False
    if spec.get("idea") is not None:
        from rbi.operator.agents import generate

        return await generate(state, body), True
    raise InvalidStrategy(FailureClass.VALIDATION_ERROR, "spec must set exactly one of code, codeFrom, idea")


def _code_from_file(state: OperatorState, file_ref: str) -> str:
    relative = Path(file_ref)
    for directory in state.settings.code_dirs:
        for candidate in (directory / relative, directory / relative.name):
            try:
                resolved = candidate.resolve()
                if resolved.is_file() and resolved.is_relative_to(directory.resolve()):
                    return resolved.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
    raise InvalidStrategy(FailureClass.VALIDATION_ERROR, f"spec.codeFrom.file {file_ref!r} is not in the operator's "
                          "code directories (RBI_CODE_DIRS); on a cluster use spec.code or spec.codeFrom."
                          "configMapKeyRef (kubectl create configmap NAME --from-file=strategy.py)",
                          reason="CodeNotFound")


def generated_configmap(name: str) -> str:
    return m.dns_name(name[:50], "code")


def plan(state: OperatorState, body: Any, code: str, *, generated: bool = False) -> Planned:
    """Validate the resource exactly as `rbi run` would (rbi.spec), then the code (the engine's checks)."""
    document = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                "metadata": {"name": body["metadata"]["name"]},
                "spec": {k: v for k, v in dict(body.get("spec") or {}).items()
                         if k not in ("code", "codeFrom", "idea", "data")}}
    document["spec"]["code"] = code
    try:
        spec = spec_from_document(document, base=Path("/nonexistent"))
        if spec.optimization:
            from rbi.optimize.settings import parse_settings

            parse_settings(spec.optimization)
    except SpecError as exc:
        raise InvalidStrategy(FailureClass.VALIDATION_ERROR, str(exc), code=code) from None
    try:
        extracted = extract_code(code)
    except ExtractionError as exc:
        raise InvalidStrategy(FailureClass.SYNTAX_ERROR, str(exc), reason="SyntaxError", code=code) from None
    violations = check_code(extracted)
    syntax = [v for v in violations if v.rule == "syntax"]
    if syntax:
        first = syntax[0]
        message = first.message if first.message.startswith("line ") else f"line {first.line}: {first.message}"
        raise InvalidStrategy(FailureClass.SYNTAX_ERROR, message,
                              reason="SyntaxError", code=extracted)
    if spec.static_checks and violations:
        summary = "; ".join(v.message if v.message.startswith("line ") else f"line {v.line}: {v.message}"
                            for v in violations[:5])
        raise InvalidStrategy(FailureClass.VALIDATION_ERROR, summary, reason="ValidationError", code=extracted)
    mode = detect_mode(extracted) if spec.mode == "auto" else spec.mode
    data = (body.get("spec") or {}).get("data")
    if isinstance(data, str):
        data = {"path": data}
    # A hybrid's own Backtest options (cash, commission) hold on the cluster as they do locally.
    own = {**backtest_options(extracted), **spec.backtest}
    return Planned(spec=replace(spec, code=extracted, backtest=own), code=extracted, mode=mode,
                   data_path=m.container_data_path(data if isinstance(data, dict) else None, state.settings.job),
                   generated=generated)


def run_key(body: Any) -> str:
    _namespace, name, uid, generation = ident(body)
    attempt = int((body.get("status") or {}).get("attempt") or 0)
    return m.run_job_name(name, uid, generation * 100 + attempt)


# --- reconcile --------------------------------------------------------------------------------------


async def reconcile(state: OperatorState, body: Any, *, resumed: bool = False) -> None:
    """Bring one resource forward from whatever its status says; safe to call any number of times."""
    namespace, name, _, generation = ident(body)
    status = body.get("status") or {}
    phase = status.get("phase")
    same_generation = status.get("observedGeneration") == generation
    track_phase(state, namespace, name, phase)
    await ensure_network_policy(state, namespace)
    if same_generation and phase in phases.TERMINAL:
        opt = status.get("optimization") or {}
        if phase == phases.SUCCEEDED and (body.get("spec") or {}).get("optimization") and opt.get("state") != "done":
            from rbi.operator import optimization

            await optimization.resume(state, body)
        return
    if same_generation and phase == phases.OPTIMIZING:
        from rbi.operator import optimization

        await optimization.resume(state, body)
        return
    if same_generation and phase in (phases.RUNNING, phases.PENDING) and status.get("jobName"):
        job_name = str(status["jobName"])
        job = await state.kube.get(job_path(namespace, job_name))
        if job is not None:
            if job_state(job).finished:  # it ended while no operator watched: take its result now
                await on_run_job_finished(state, job)
                return
            state.queue.attach(job_name)  # its watch event finishes it
            if phase == phases.PENDING:
                await patch_status(state, body, {"phase": phases.RUNNING, "reason": "JobRunning"})
            return
        if phase == phases.RUNNING and status.get("completedJob") != job_name:
            events.post(state, body, reason="JobLost", warning=True,
                        message=f"Job {job_name} disappeared before its result was read; running again")
    await submit(state, body)


async def respec(state: OperatorState, body: Any) -> None:
    """The user changed the spec: forget generated or debugged code and the loop's state, then run anew."""
    namespace, name, _, _ = ident(body)
    await state.kube.delete(configmap_path(namespace, generated_configmap(name)))
    state.searches.pop((namespace, name), None)
    await state.kube.patch(bts_path(namespace, name, status=True),
                           {"status": {"attempt": None, "previousErrors": None, "optimization": None}})
    fresh = await state.kube.get(bts_path(namespace, name))
    if fresh is not None:
        await reconcile(state, fresh)


async def submit(state: OperatorState, body: Any) -> None:
    namespace, name, _, generation = ident(body)
    status = body.get("status") or {}
    if status.get("phase") in (None, phases.FAILED, phases.SUCCEEDED, phases.NO_TRADES) and (
            body.get("spec") or {}).get("idea") is not None and not status.get("codeHash"):
        await patch_status(state, body, {"phase": phases.GENERATING, "reason": "Generating",
                                         "message": "the LLM agents are writing the strategy",
                                         "observedGeneration": generation})
    try:
        code, generated = await resolve_code(state, body)
        planned = plan(state, body, code, generated=generated)
    except InvalidStrategy as exc:
        await fail_invalid(state, body, exc)
        raise kopf.PermanentError(f"{exc.reason}: {exc}") from None
    root, parent = lineage(body)
    version = await asyncio.to_thread(_register, state, root, planned, label_version(body),
                                      "llm" if planned.generated else ("optimizer" if parent else "user"))
    key = run_key(body)
    fresh = {"phase": phases.PENDING, "reason": "Queued", "message": f"waiting for a free Job slot "
             f"({state.queue.waiting} queued, {state.queue.active}/{state.queue.limit} active)",
             "observedGeneration": generation, "version": version, "lineageRoot": root, "parent": parent,
             "codeHash": code_hash(planned.code), "mode": planned.mode, "jobName": key, "queuedAt": phases.now(),
             "result": None, "failureClass": None, "completedJob": None, "runId": None}
    await patch_status(state, body, fresh)

    async def start() -> bool:
        return await start_job(state, namespace, name, key, planned)

    if state.queue.submit(key, start, group=f"{namespace}/{name}"):
        logger.debug("%s/%s queued as %s", namespace, name, key)


def _register(state: OperatorState, root: str, planned: Planned, version: int | None, source: str) -> int:
    registered = state.store.register_version(root, code=planned.code, params=dict(planned.spec.params),
                                              source=source)
    return version or registered


async def fail_invalid(state: OperatorState, body: Any, exc: InvalidStrategy) -> None:
    namespace, name, _, generation = ident(body)
    outcome = RunOutcome.failed(RunError(exc.kind, str(exc)), code_hash=code_hash(exc.code) if exc.code else "")
    root, _ = lineage(body)
    run_id = await asyncio.to_thread(_record, state, root, label_version(body) or 1, outcome, None,
                                     {"namespace": namespace, "resource": name, "reason": exc.reason})
    metrics.record_run(executor="job", status=str(outcome.status), failure_class=str(exc.kind), seconds=0.0)
    await patch_status(state, body, {"phase": phases.FAILED, "reason": exc.reason, "message": str(exc)[:2000],
                                     "failureClass": str(exc.kind), "observedGeneration": generation,
                                     "runId": run_id, "finishedAt": phases.now(), "jobName": None})
    events.post(state, body, reason=exc.reason, message=str(exc)[:1000], warning=True)


def _record(state: OperatorState, root: str, version: int, outcome: RunOutcome, dataset: str | None,
            labels: dict[str, Any]) -> int:
    job = labels.get("job")
    if job:
        for previous in state.store.list_runs(name=root, limit=50):
            if (previous.labels or {}).get("job") == job:
                return int(previous.id)
    return state.store.record_run(root, outcome, version=version, dataset_hash=None, dataset_name=dataset,
                                  labels=labels)


# --- Jobs -------------------------------------------------------------------------------------------


async def ensure_network_policy(state: OperatorState, namespace: str) -> None:
    if not state.settings.network_policy or namespace in state.namespaces_with_policy:
        return
    try:
        await state.kube.create(netpol_path(namespace), m.build_network_policy(namespace=namespace))
        state.namespaces_with_policy.add(namespace)
    except ApiError as exc:
        if exc.transient:
            raise kopf.TemporaryError(f"cannot create the sandbox NetworkPolicy: {exc}", delay=5) from exc
        logger.warning("cannot create the sandbox NetworkPolicy in %s: %s", namespace, exc)
        state.namespaces_with_policy.add(namespace)


async def start_job(state: OperatorState, namespace: str, name: str, key: str, planned: Planned) -> bool:
    """Create the ConfigMap and the Job (or find them); mark the resource Running. False: nothing to run."""
    body = await state.kube.get(bts_path(namespace, name))
    if body is None or body["metadata"].get("deletionTimestamp") or (body.get("status") or {}).get("jobName") != key:
        return False
    owner = body
    request = m.run_request(mode=planned.mode, params=planned.spec.params, backtest=planned.spec.backtest,
                            strategy_class=planned.spec.strategy_class, data_path=planned.data_path)
    configmap = m.build_code_configmap(name=key, namespace=namespace, strategy=name, code=planned.code,
                                       request=request, owner=owner)
    job = m.build_job(name=key, namespace=namespace, strategy=name, configmap=key, limits=planned.spec.limits,
                      options=state.settings.job, owner=owner, run_key=key, gpu=planned.spec.gpu)
    try:
        await state.kube.create(configmap_path(namespace), configmap)
        _, created = await state.kube.create(job_path(namespace), job)
    except ApiError as exc:
        if exc.transient:
            retry_later(state, key, lambda: start_job(state, namespace, name, key, planned),
                        group=f"{namespace}/{name}")
            return False
        outcome = RunOutcome.failed(RunError(FailureClass.SANDBOX_ERROR, f"the Job cannot be created: {exc}"))
        await finish(state, body, outcome, job=key)
        return False
    if created:
        metrics.JOBS_CREATED.inc()
        events.post(state, body, reason="JobCreated", message=f"Job {key} created")
    await patch_status(state, body, {"phase": phases.RUNNING, "reason": "JobRunning", "startedAt": phases.now(),
                                     "message": f"Job {key} is running"})
    return True


def retry_later(state: OperatorState, key: str, start: Any, *, group: str, attempt: int = 0) -> None:
    delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
    asyncio.get_running_loop().call_later(delay, lambda: state.queue.submit(key, start, group=group))


async def job_pods(state: OperatorState, namespace: str, job_name: str) -> list[dict[str, Any]]:
    pods = await state.kube.list(pod_path(namespace), labels={JOB_NAME_LABEL: job_name})
    if not pods:
        pods = await state.kube.list(pod_path(namespace), labels={LEGACY_JOB_NAME_LABEL: job_name})
    return sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))


async def on_run_job_finished(state: OperatorState, job: dict[str, Any]) -> None:
    namespace = job["metadata"]["namespace"]
    job_name = job["metadata"]["name"]
    strategy = (job["metadata"].get("labels") or {}).get(m.LABEL_STRATEGY)
    if not strategy:
        return
    async with state.lock(f"{namespace}/{job_name}"):
        body = await state.kube.get(bts_path(namespace, strategy))
        if body is None:
            return
        status = body.get("status") or {}
        if status.get("jobName") != job_name or status.get("completedJob") == job_name:
            return  # a stale Job of an earlier generation, or a result taken already
        pods = await job_pods(state, namespace, job_name)
        log = None
        if pods:
            # Always the log: figures come only from the full result line (with its facts), recomputed here.
            log = await state.kube.log(namespace, pods[-1]["metadata"]["name"], m.CONTAINER)
        verify = verifier(host_dataset(served_path(state, body)), mode=status.get("mode"))
        outcome = await asyncio.to_thread(run_outcome, job, pods, container=m.CONTAINER, log=log,
                                          mode=status.get("mode"), verify=verify)
        await finish(state, body, outcome, job=job_name)


def served_path(state: OperatorState, body: Any) -> str:
    """The dataset path the resource's Jobs read (as plan() gives it to them)."""
    data = (body.get("spec") or {}).get("data")
    if isinstance(data, str):
        data = {"path": data}
    return m.container_data_path(data if isinstance(data, dict) else None, state.settings.job)


def _container_message(pod: dict[str, Any]) -> str | None:
    for item in (pod.get("status") or {}).get("containerStatuses") or []:
        if isinstance(item, dict) and item.get("name") == m.CONTAINER:
            ended = (item.get("state") or {}).get("terminated") or {}
            return ended.get("message") if isinstance(ended.get("message"), str) else None
    return None


async def on_pod_event(state: OperatorState, pod: dict[str, Any]) -> None:
    """A sandbox pod that can never start (image pull errors): fail its run now, then remove the Job."""
    error = stuck_pod_failure(pod)
    if error is None:
        return
    labels = (pod.get("metadata") or {}).get("labels") or {}
    job_name = labels.get(JOB_NAME_LABEL) or labels.get(LEGACY_JOB_NAME_LABEL)
    namespace = pod["metadata"]["namespace"]
    strategy = labels.get(m.LABEL_STRATEGY)
    if not job_name or not strategy:
        return
    if labels.get(m.LABEL_PURPOSE, "run") == "run":
        async with state.lock(f"{namespace}/{job_name}"):
            body = await state.kube.get(bts_path(namespace, strategy))
            status = (body or {}).get("status") or {}
            if body is None or status.get("jobName") != job_name or status.get("completedJob") == job_name:
                return
            await finish(state, body, RunOutcome.failed(error), job=job_name)
    else:
        from rbi.operator import optimization

        await optimization.fail_stage(state, namespace, strategy, job_name, error)
    state.queue.release(job_name)
    await state.kube.delete(job_path(namespace, job_name))


async def finish(state: OperatorState, body: Any, outcome: RunOutcome, *, job: str) -> None:
    """Store the run, count it, write the figures into status, and go on (debug or optimise)."""
    namespace, name, _, _ = ident(body)
    status = body.get("status") or {}
    root, _ = lineage(body)
    outcome.code_hash = outcome.code_hash or str(status.get("codeHash") or "")
    if not outcome.params:
        outcome.params = dict((body.get("spec") or {}).get("params") or {})
    version = int(status.get("version") or label_version(body) or 1)
    try:
        run_id = await asyncio.to_thread(_record, state, root, version, outcome, None,
                                         {"job": job, "namespace": namespace, "resource": name})
    except Exception as exc:  # the store is infrastructure: keep the result on the Job and try again
        metrics.HANDLER_ERRORS.labels(handler="finish", kind="temporary").inc()
        raise kopf.TemporaryError(f"cannot store the result of {job}: {exc}", delay=5) from exc
    duration = phases.seconds_since(status.get("startedAt"))
    metrics.record_run(executor="job", status=str(outcome.status),
                       failure_class=str(outcome.error.type) if outcome.error else None,
                       seconds=duration if duration is not None else outcome.execution_time)
    new_status = phases.finished_status(outcome, job=job, run_id=run_id, started=None, duration=duration)
    await patch_status(state, body, new_status)
    kind = "ResultParsed" if outcome.error is None else "RunFailed"
    text = (f"{new_status['phase']}: " + ", ".join(f"{k}={v}" for k, v in new_status["result"].items())
            if outcome.error is None else f"{outcome.error.type}: {outcome.error.message[:500]}")
    (kopf.info if outcome.error is None else kopf.warn)(body, reason=kind, message=text)
    fresh = await state.kube.get(bts_path(namespace, name))
    if fresh is None:
        return
    from rbi.operator import agents, optimization

    if outcome.error is not None and await agents.maybe_debug(state, fresh, outcome):
        return
    if outcome.error is None and new_status["phase"] == phases.SUCCEEDED and (fresh.get("spec") or {}).get(
            "optimization"):
        await optimization.start(state, fresh)


async def on_deleted(state: OperatorState, body: Any) -> None:
    """Remove what the resource made: queued runs, Jobs (their pods follow), ConfigMaps, child versions.

    ownerReferences let the cluster's garbage collector do the same; doing it here as well
    also drops the queue entries and works where no collector runs.
    """
    namespace, name, uid, _ = ident(body)
    state.queue.forget(f"{namespace}/{name}")
    state.searches.pop((namespace, name), None)
    track_phase(state, namespace, name, None)
    selector = {m.LABEL_STRATEGY: name[:63]}
    for job in await state.kube.list(job_path(namespace), labels=selector):
        if _owned_by(job, uid):
            state.queue.release(job["metadata"]["name"])
            # propagationPolicy Background: the cluster removes the Job's pods (no pod delete rights needed).
            await state.kube.delete(job_path(namespace, job["metadata"]["name"]))
    for configmap in await state.kube.list(configmap_path(namespace), labels=selector):
        if _owned_by(configmap, uid):
            await state.kube.delete(configmap_path(namespace, configmap["metadata"]["name"]))
    for child in await state.kube.list(bts_path(namespace), labels={m.LABEL_PARENT: name[:63]}):
        if _owned_by(child, uid):
            await state.kube.delete(bts_path(namespace, child["metadata"]["name"]))


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return not uid or any(isinstance(r, dict) and r.get("uid") == uid for r in refs)


def elapsed(started: float) -> float:
    return time.monotonic() - started
