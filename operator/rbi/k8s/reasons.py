"""Kubernetes' words for how a Job ended → the engine's failure classes. Pure.

The engine classifies what a run reported about itself; here we classify what the
platform did to it: OOMKilled is memory_limit, DeadlineExceeded is timeout, an eviction
for ephemeral storage is disk_limit, an image that cannot be pulled is sandbox_error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rbi.outcome import FailureClass, RunError

IMAGE_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                          "RegistryUnavailable", "SignatureValidationFailed"})
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                           "CrashLoopBackOff"})


@dataclass(frozen=True, slots=True)
class JobState:
    finished: bool
    succeeded: bool
    reason: str | None = None
    message: str | None = None
    active: int = 0


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = (obj.get("status") or {}).get("conditions") or []
    return [c for c in raw if isinstance(c, Mapping)]


def job_state(job: Mapping[str, Any]) -> JobState:
    """Finished only on the Complete or Failed condition (not the interim SuccessCriteriaMet/FailureTarget)."""
    status = job.get("status") or {}
    active = int(status["active"]) if isinstance(status.get("active"), int) else 0
    for condition in _conditions(job):
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return JobState(True, True, active=active)
        if condition.get("type") == "Failed":
            return JobState(True, False, reason=_text(condition.get("reason")), message=_text(condition.get("message")),
                            active=active)
    return JobState(False, False, active=active)


def _text(value: Any, limit: int = 500) -> str | None:
    return str(value)[:limit] if value is not None else None


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    raw = list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])
    return [s for s in raw if isinstance(s, Mapping)]


def terminated(pod: Mapping[str, Any], container: str) -> Mapping[str, Any] | None:
    for status in _container_statuses(pod):
        if status.get("name") == container:
            state = (status.get("state") or {}).get("terminated")
            return state if isinstance(state, Mapping) else None
    return None


def pod_failure(pod: Mapping[str, Any]) -> RunError | None:
    """A failure that the platform imposed on this pod, or None when the pod says nothing special."""
    status = pod.get("status") or {}
    reason, message = str(status.get("reason") or ""), str(status.get("message") or "")
    if reason == "Evicted":
        if "ephemeral" in message.lower() or "emptydir" in message.lower():
            return RunError(FailureClass.DISK_LIMIT, f"evicted for using more ephemeral storage than its limit: "
                            f"{message[:300]}", detail="Evicted")
        if "memory" in message.lower():
            return RunError(FailureClass.MEMORY_LIMIT, f"evicted under memory pressure: {message[:300]}",
                            detail="Evicted")
        return RunError(FailureClass.SANDBOX_ERROR, f"evicted: {message[:300]}", detail="Evicted")
    if reason == "DeadlineExceeded":
        return RunError(FailureClass.TIMEOUT, "the pod ran past its deadline", detail="DeadlineExceeded")
    for container in _container_statuses(pod):
        state = container.get("state") or {}
        ended = state.get("terminated") or {}
        if ended.get("reason") == "OOMKilled":
            return RunError(FailureClass.MEMORY_LIMIT, "killed by the out-of-memory killer at the memory limit "
                            "(OOMKilled)", detail="OOMKilled")
        if ended.get("reason") == "ContainerStatusUnknown":
            return RunError(FailureClass.SANDBOX_ERROR, "the node lost track of the container", detail=ended["reason"])
        waiting = state.get("waiting") or {}
        why = str(waiting.get("reason") or "")
        if why in IMAGE_ERRORS:
            return RunError(FailureClass.SANDBOX_ERROR, f"the sandbox image cannot be pulled ({why}): "
                            f"{str(waiting.get('message') or '')[:300]}", detail=why)
        if why in CONFIG_ERRORS and why != "CrashLoopBackOff":
            return RunError(FailureClass.SANDBOX_ERROR, f"the sandbox container cannot start ({why}): "
                            f"{str(waiting.get('message') or '')[:300]}", detail=why)
    return None


# ErrImagePull alone may be a registry hiccup that the kubelet's next try survives; after a failed
# retry the pod shows ImagePullBackOff, and then it is stuck.
STUCK = (IMAGE_ERRORS - {"ErrImagePull"}) | (CONFIG_ERRORS - {"CrashLoopBackOff"})


def stuck_pod_failure(pod: Mapping[str, Any]) -> RunError | None:
    """A pod that will never run (image or config errors): the operator ends its Job instead of waiting."""
    error = pod_failure(pod)
    return error if error is not None and error.type is FailureClass.SANDBOX_ERROR and error.detail in STUCK else None


def job_failure(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> RunError | None:
    """The platform's failure for a finished Job, most specific first; None leaves it to the runner's result."""
    pods = list(pods)
    for pod in pods:
        error = pod_failure(pod)
        if error is not None and error.type in (FailureClass.MEMORY_LIMIT, FailureClass.DISK_LIMIT):
            return error
    state = job_state(job)
    if state.finished and not state.succeeded and state.reason == "DeadlineExceeded":
        return RunError(FailureClass.TIMEOUT, "the Job ran past its activeDeadlineSeconds; Kubernetes stopped it",
                        detail="DeadlineExceeded")
    for pod in pods:
        error = pod_failure(pod)
        if error is not None:
            return error
    return None
