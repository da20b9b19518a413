"""`rbi operator`: run the Kubernetes operator (in a Deployment, or from a laptop with a kubeconfig)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from rbi.operator.settings import OperatorSettings

logger = logging.getLogger("rbi.operator")


def build_state(settings: OperatorSettings) -> Any:
    from rbi.operator.queue import JobQueue
    from rbi.operator.state import OperatorState
    from rbi.store import ResultStore

    store = ResultStore(settings.db_url or ResultStore.default_url())
    store.migrate()
    return OperatorState(settings=settings, store=store, queue=JobQueue(settings.max_active_jobs))


async def run_operator(settings: OperatorSettings, *, state: Any = None, login: Callable[..., Any] | None = None,
                       stop_flag: asyncio.Event | None = None, ready_flag: asyncio.Event | None = None) -> None:
    """Run kopf standalone (one replica, no peering) with rbi's handlers until `stop_flag` is set."""
    import kopf

    from rbi.operator.handlers import build_registry

    state = state or build_state(settings)
    registry = build_registry(state, login=login)
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=settings.all_namespaces,
            namespaces=list(settings.namespaces) if not settings.all_namespaces else (),
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await state.stop()


def operator_main(*, namespaces: tuple[str, ...], all_namespaces: bool, metrics_port: int | None,
                  liveness_port: int | None, max_active_jobs: int | None, sandbox_image: str | None,
                  runtime_class: str | None, dataset_pvc: str | None, db: str | None,
                  job_ttl_seconds: int | None, verbose: bool) -> None:
    from rbi import metrics

    if not namespaces and not all_namespaces:
        raise ValueError("say which namespaces to serve: --namespace NS (repeatable) or --all-namespaces")
    settings = OperatorSettings.from_env(
        namespaces=namespaces, all_namespaces=all_namespaces, metrics_port=metrics_port,
        liveness_port=liveness_port, max_active_jobs=max_active_jobs, image=sandbox_image,
        runtime_class=runtime_class, dataset_pvc=dataset_pvc, db_url=db, ttl_seconds=job_ttl_seconds)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
        logger.info("metrics on :%d/metrics", settings.metrics_port)
    logger.info("serving %s with at most %d active Jobs, sandbox image %s",
                "all namespaces" if settings.all_namespaces else ", ".join(settings.namespaces),
                settings.max_active_jobs, settings.job.image)
    asyncio.run(run_operator(settings))
