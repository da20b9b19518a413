"""The kopf handlers: thin. Each one reads the event and calls a plain function in runs/optimization.

Built as a registry by a function (not module-level decorators), so a test can start, stop
and restart operators with fresh state in one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from rbi import metrics
from rbi.k8s import manifests as m
from rbi.k8s.reasons import job_state
from rbi.operator import optimization, runs
from rbi.operator.kube import ApiError, KubeApi
from rbi.operator.state import OperatorState

logger = logging.getLogger(__name__)
Login = Callable[..., Any]


async def _guard(handler: str, call: Awaitable[None]) -> None:
    """Count handler errors by kind; API and store outages become TemporaryError (kopf retries)."""
    try:
        await call
    except kopf.PermanentError:
        metrics.HANDLER_ERRORS.labels(handler=handler, kind="permanent").inc()
        raise
    except kopf.TemporaryError:
        metrics.HANDLER_ERRORS.labels(handler=handler, kind="temporary").inc()
        raise
    except ApiError as exc:
        kind = "temporary" if exc.transient or exc.status == 409 else "unexpected"
        metrics.HANDLER_ERRORS.labels(handler=handler, kind=kind).inc()
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=5) from exc
    except Exception:
        metrics.HANDLER_ERRORS.labels(handler=handler, kind="unexpected").inc()
        raise


def build_registry(state: OperatorState, *, login: Login | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    bts = {"group": m.GROUP, "version": m.VERSION, "plural": m.PLURAL, "registry": registry}
    managed: dict[str, Any] = {m.LABEL_STRATEGY: kopf.PRESENT, "app.kubernetes.io/managed-by": "rbi-operator"}

    @kopf.on.login(registry=registry)  # type: ignore[arg-type]
    async def on_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info: kopf.ConnectionInfo | None = (login or kopf.login_via_client)(**kwargs)
        if info is not None:
            state.connect(KubeApi(info))
        return info

    @kopf.on.startup(registry=registry)
    async def on_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.INFO
        settings.posting.reporting_component = "rbi-operator"
        settings.persistence.finalizer = "rbi.dev/cleanup"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="rbi.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="rbi.dev")
        settings.execution.max_workers = 8
        settings.watching.server_timeout = 300
        settings.queueing.worker_limit = 256
        # Serve the namespaces we were given without listing all of them: the RBAC stays minimal.
        settings.scanning.disabled = True

    @kopf.on.cleanup(registry=registry)
    async def on_cleanup(**_: Any) -> None:
        await state.stop()

    @kopf.on.create(**bts, id="run")  # type: ignore[arg-type]
    @kopf.on.resume(**bts, id="run")  # type: ignore[arg-type]
    async def on_run(body: kopf.Body, **_: Any) -> None:
        await state.ready()
        await _guard("run", runs.reconcile(state, dict(body)))

    @kopf.on.update(**bts, field="spec", id="respec")  # type: ignore[arg-type]
    async def on_spec_change(body: kopf.Body, **_: Any) -> None:
        await state.ready()
        await _guard("spec_change", runs.respec(state, dict(body)))

    @kopf.on.delete(**bts, id="cleanup")  # type: ignore[arg-type]
    async def on_delete(body: kopf.Body, **_: Any) -> None:
        await state.ready()
        await _guard("delete", runs.on_deleted(state, dict(body)))

    @kopf.on.event("batch", "v1", "jobs", labels=managed, registry=registry)  # type: ignore[arg-type]
    async def on_job(event: kopf.RawEvent, **_: Any) -> None:
        await state.ready()
        job = event["object"]
        name = job["metadata"]["name"]
        if event["type"] == "DELETED":
            state.queue.release(name)
            return
        current = job_state(job)
        if not current.finished:
            state.queue.attach(name)
            return
        state.queue.release(name)
        purpose = (job["metadata"].get("labels") or {}).get(m.LABEL_PURPOSE, "run")
        finished = runs.on_run_job_finished if purpose == "run" else optimization.on_stage_job_finished
        try:
            await _guard("job", finished(state, dict(job)))
        except kopf.TemporaryError as exc:  # event handlers are not retried by kopf: retry here
            logger.warning("job %s: %s; retrying", name, exc)
            await asyncio.sleep(exc.delay or 5)
            await _guard("job", finished(state, dict(job)))

    @kopf.on.event("", "v1", "pods", labels={m.LABEL_SANDBOX: "true", **managed},  # type: ignore[arg-type]
                   registry=registry)
    async def on_pod(event: kopf.RawEvent, **_: Any) -> None:
        if event["type"] == "DELETED":
            return
        await state.ready()
        await _guard("pod", runs.on_pod_event(state, dict(event["object"])))

    return registry
