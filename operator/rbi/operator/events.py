"""Kubernetes Events on BacktestStrategy resources (JobCreated, ResultParsed, ChildCreated, …).

Posted with the operator's own client in the background: a failed Event never fails a run,
and it works from the queue's tasks as well as from kopf's handlers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rbi.k8s.manifests import build_event
from rbi.operator import phases
from rbi.operator.state import OperatorState

logger = logging.getLogger(__name__)
_pending: set[asyncio.Task[None]] = set()


def post(state: OperatorState, body: Any, *, reason: str, message: str, warning: bool = False) -> None:
    logger.log(logging.WARNING if warning else logging.INFO, "%s/%s %s: %s", body["metadata"].get("namespace"),
               body["metadata"].get("name"), reason, message)
    if state.api is None:
        return
    event = build_event(involved=body, reason=reason, message=message, warning=warning, now=phases.now())
    task = asyncio.get_running_loop().create_task(_send(state, event))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _send(state: OperatorState, event: dict[str, Any]) -> None:
    try:
        await state.kube.create(f"/api/v1/namespaces/{event['metadata']['namespace']}/events", event)
    except Exception as exc:  # Events are a courtesy; the status is the record
        logger.debug("event %s not posted: %s", event["reason"], exc)
