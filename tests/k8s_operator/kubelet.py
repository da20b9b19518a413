"""A test-side kubelet (and Job controller): runs the operator's Jobs through the local sandbox.

It watches Jobs over real HTTP, creates their pods, reads the ConfigMap the pod would mount,
runs the container's work in rbi's local sandbox (the same runner that the image runs), and
writes back what a cluster would: the termination message (rbi.runner.compact_result), the
pod log (with the runner's RESULT line), container states (Completed, Error, OOMKilled),
pod evictions, and the Job's Complete / Failed condition (DeadlineExceeded, PodFailurePolicy).
With `canned=` it skips the sandbox and answers at once, for the 1,000-strategy benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from rbi.classify import classify_report
from rbi.k8s.manifests import BUNDLED_PREFIX, CONTAINER, DATA_DIR, DEADLINE_SLACK_SECONDS
from rbi.outcome import FailureClass
from rbi.quantity import parse_bytes, parse_cpu
from rbi.runner import RESULT_MARKER, TRIAL_MARKER, compact_result, compact_trials

logger = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    def __init__(self, server: str, namespace: str, *, pool: Any = None, data_dir: Path | None = None,
                 canned: dict[str, Any] | None = None, canned_delay: float = 0.0, parallel: int = 2) -> None:
        self.server = server.rstrip("/")
        self.namespace = namespace
        self.pool = pool
        self.data_dir = data_dir
        self.canned = canned
        self.canned_delay = canned_delay
        self.logs: dict[str, str] = {}
        self.jobs_started: Counter[str] = Counter()
        self.hold = asyncio.Event()
        self.hold.set()  # clear() to keep new pods Running until set() again
        self.hold_trials = asyncio.Event()
        self.hold_trials.set()  # the same, for the pods of trial and validation Jobs only
        # Hold only the pods of Jobs this picks (by name) until hold_selected is set: a restart in one stage.
        self.hold_job: Callable[[str], bool] | None = None
        self.hold_selected = asyncio.Event()
        self.hold_selected.set()
        self.held_pods: set[str] = set()
        self.running_pods: set[str] = set()
        self.max_concurrent_jobs = 0
        self._live_jobs: set[str] = set()
        self._seen: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(parallel)
        self._session: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None
        self._frames: dict[str, int] = {}
        self._cleanups: set[asyncio.Task[None]] = set()

    # --- plumbing ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self._watch = asyncio.create_task(self._watch_jobs())

    async def stop(self) -> None:
        for task in [self._watch, *self._tasks.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._session is not None:
            await self._session.close()

    async def serve_log(self, request: Any) -> bytes:
        return self.logs.get(str(request.name), "").encode()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self._session.request(method, self.server + path, json=body, headers=headers) as response:
            if response.status >= 400:
                return None
            return await response.json(content_type=None)

    async def _watch_jobs(self) -> None:
        assert self._session is not None
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        while True:
            try:
                async with self._session.get(self.server + path, params={"watch": "true"}) as response:
                    async for line in response.content:
                        if line.strip():
                            self._on_event(json.loads(line))
            except (TimeoutError, aiohttp.ClientError, ValueError):
                await asyncio.sleep(0.2)

    def _on_event(self, event: dict[str, Any]) -> None:
        job = event.get("object") or {}
        name = (job.get("metadata") or {}).get("name")
        if not name:
            return
        if event.get("type") == "DELETED":
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
            self._live_jobs.discard(name)
            cleanup = asyncio.create_task(self._delete_pods(name))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            return
        conditions = (job.get("status") or {}).get("conditions") or []
        if name in self._seen or any(c.get("status") == "True" for c in conditions):
            return
        self._seen.add(name)
        self.jobs_started[name] += 1
        self._live_jobs.add(name)
        self.max_concurrent_jobs = max(self.max_concurrent_jobs, len(self._live_jobs))
        self._tasks[name] = asyncio.create_task(self._run_job(job))

    async def _delete_pods(self, job: str) -> None:
        pods = await self._call("GET", f"/api/v1/namespaces/{self.namespace}/pods")
        for pod in (pods or {}).get("items", []):
            if (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == job:
                await self._call("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}")

    # --- the Job controller and the container -----------------------------------------------------

    async def _run_job(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        spec = job["spec"]
        completions = int(spec.get("completions") or 1)
        await self._call("PATCH", f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}/status",
                         {"status": {"startTime": _now(), "active": completions}})
        try:
            results = await asyncio.gather(*(self._run_pod(job, index) for index in range(completions)))
        finally:
            self._live_jobs.discard(name)
        failed = [r for r in results if r["failed"]]
        condition: dict[str, Any]
        if any(r.get("deadline") for r in results):
            condition = {"type": "Failed", "reason": "DeadlineExceeded",
                         "message": "Job was active longer than specified deadline"}
        elif failed:
            condition = {"type": "Failed", "reason": "PodFailurePolicy",
                         "message": f"Container {CONTAINER} for pod {failed[0]['pod']} failed with exit code "
                                    f"{failed[0]['exit']} matching FailJob rule at index 0"}
        else:
            condition = {"type": "Complete", "reason": "CompletionsReached", "message": "Reached expected number"}
        status = {"active": 0, "succeeded": completions - len(failed), "failed": len(failed),
                  "conditions": [{**condition, "status": "True", "lastTransitionTime": _now()}]}
        if condition["type"] == "Complete":
            status["completionTime"] = _now()
        await self._call("PATCH", f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}/status",
                         {"status": status})
        self._tasks.pop(name, None)

    async def _run_pod(self, job: dict[str, Any], index: int) -> dict[str, Any]:
        job_name = job["metadata"]["name"]
        template = job["spec"]["template"]
        pod_name = f"{job_name}-{index}-pod"
        labels = {**(template["metadata"].get("labels") or {}), "batch.kubernetes.io/job-name": job_name,
                  "job-name": job_name, "batch.kubernetes.io/job-completion-index": str(index)}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": self.namespace, "labels": labels},
               "spec": template["spec"], "status": {"phase": "Pending"}}
        await self._call("POST", f"/api/v1/namespaces/{self.namespace}/pods", pod)
        container = template["spec"]["containers"][0]
        if "does-not-exist" in container["image"]:  # a registry without the image: the pod never starts
            for reason in ("ErrImagePull", "ImagePullBackOff"):
                await self._call("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{pod_name}/status", {
                    "status": {"phase": "Pending", "containerStatuses": [{
                        "name": CONTAINER, "ready": False, "restartCount": 0, "image": container["image"],
                        "imageID": "", "state": {"waiting": {"reason": reason, "message": "not found"}}}]}})
            await asyncio.Event().wait()  # until the Job is deleted
        await self._call("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{pod_name}/status",
                         {"status": {"phase": "Running", "startTime": _now()}})
        self.running_pods.add(pod_name)
        await self.hold.wait()
        if labels.get("rbi.dev/purpose", "run") != "run":
            await self.hold_trials.wait()
        if self.hold_job is not None and self.hold_job(job_name):
            self.held_pods.add(pod_name)
            await self.hold_selected.wait()
        try:
            async with self._slots:
                result = await self._container(job, container, index)
        finally:
            self.running_pods.discard(pod_name)
        self.logs[pod_name] = result["log"]
        terminated = {"exitCode": result["exit"], "reason": result["reason"], "startedAt": _now(),
                      "finishedAt": _now()}
        if result.get("message") is not None:
            terminated["message"] = result["message"]
        status: dict[str, Any] = {
            "phase": "Failed" if result["exit"] else "Succeeded",
            "containerStatuses": [{"name": CONTAINER, "ready": False, "restartCount": 0,
                                   "image": container["image"], "imageID": "",
                                   "state": {"terminated": terminated}}]}
        if result.get("evicted"):
            status.update({"reason": "Evicted", "message": result["evicted"]})
        await self._call("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{pod_name}/status", {"status": status})
        return {"failed": bool(result["exit"]), "exit": result["exit"], "pod": pod_name,
                "deadline": result.get("deadline", False)}

    async def _container(self, job: dict[str, Any], container: dict[str, Any], index: int) -> dict[str, Any]:
        command: list[str] = container["command"]
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        configmap = await self._call("GET", f"/api/v1/namespaces/{self.namespace}/configmaps/"
                                            f"{volumes['code']['configMap']['name']}")
        data = (configmap or {}).get("data") or {}
        if self.canned is not None:
            await asyncio.sleep(self.canned_delay)
            # A whole runner report (with its facts, which the operator verifies), or bare figures.
            report = dict(self.canned) if "facts" in self.canned else \
                {"mode": "class", "error": None, "stats": dict(self.canned), "execution_time": 0.01}
            return {"exit": 0, "reason": "Completed", "message": compact_result(report).decode(),
                    "log": RESULT_MARKER + json.dumps(report) + "\n"}
        request = json.loads(data["request.json"])
        limits = container["resources"]["limits"]
        timeout = float(job["spec"]["activeDeadlineSeconds"]) - DEADLINE_SLACK_SECONDS
        if "--trials" in command:
            return await self._trials(job, request, data, limits, timeout, index)
        report = await self._sandbox(request, data["strategy.py"], limits, timeout, request.get("params") or {},
                                     request.get("data_fraction"))
        return self._container_result(report, RESULT_MARKER)

    async def _trials(self, job: dict[str, Any], request: dict[str, Any], data: dict[str, str],
                      limits: dict[str, str], timeout: float, index: int) -> dict[str, Any]:
        batch = json.loads(data["trials.json"])
        shards = int(batch["shards"])
        per_trial = timeout / max(1, -(-len(batch["trials"]) // shards))
        results, log = [], []
        for position, (trial_index, params) in enumerate(batch["trials"]):
            if position % shards != index:
                continue
            report = await self._sandbox(request, data["strategy.py"], limits, per_trial, params,
                                         batch.get("dataFraction"))
            outcome = classify_report(report, mode="class")
            if outcome.error is not None and outcome.error.type in (FailureClass.TIMEOUT, FailureClass.MEMORY_LIMIT):
                return self._container_result(report, TRIAL_MARKER)
            runner = _runner_report(report) or {"error": {"type": str(outcome.error.type) if outcome.error else None,
                                                          "message": outcome.error.message if outcome.error else ""}}
            results.append({"index": trial_index, "report": runner})
            log.append(TRIAL_MARKER + json.dumps({"index": trial_index, "report": runner}))
        message = compact_trials(results, [str(k) for k in batch.get("keep", [])]).decode()
        return {"exit": 0, "reason": "Completed", "message": message, "log": "\n".join(log) + "\n"}

    async def _sandbox(self, request: dict[str, Any], code: str, limits: dict[str, str], timeout: float,
                       params: dict[str, Any], fraction: list[float] | None) -> dict[str, Any]:
        from rbi.engine import prepare
        from rbi.sandbox.limits import SandboxLimits
        from rbi.spec import StrategySpec

        sandbox_limits = SandboxLimits(memory_bytes=parse_bytes(limits["memory"]), cpus=parse_cpu(limits["cpu"]),
                                       disk_bytes=max(2**20, parse_bytes(limits["ephemeral-storage"]) - 64 * 2**20),
                                       timeout_seconds=max(1.0, timeout))
        spec = StrategySpec(name="pod", code=code, mode=request["mode"], strategy_class=request.get("strategy_class"),
                            data_path=self._host_data(request["data_path"]), params=dict(params),
                            backtest=dict(request.get("backtest") or {}), limits=sandbox_limits, static_checks=False,
                            source="python")
        prepared = prepare(spec)
        if fraction:
            rows = await asyncio.to_thread(self._rows, prepared.data_file)
            prepared = prepared.on_rows(int(rows * fraction[0]), int(rows * fraction[1]))
        # What rbi.runner reads from request.json beside the data: series, the trade cap, the look-ahead probe.
        prepared = replace(prepared, include_series=bool(request.get("include_series", False)),
                           max_trades=int(request.get("max_trades") or 2000))
        work = prepared.request()
        if request.get("lookahead_probe") is not None:
            work["run"]["lookahead_probe"] = int(request["lookahead_probe"])
        return await asyncio.to_thread(self.pool.submit, work, timeout=sandbox_limits.timeout_seconds)

    def _rows(self, path: str) -> int:
        if path not in self._frames:
            from rbi.prepare.data import load_ohlcv

            self._frames[path] = len(load_ohlcv(path))
        return self._frames[path]

    def _host_data(self, path: str) -> Path:
        from rbi.datasets import bundled_dataset

        if path.startswith(BUNDLED_PREFIX):
            return bundled_dataset(path[len(BUNDLED_PREFIX):])
        assert self.data_dir is not None and path.startswith(DATA_DIR + "/")
        return self.data_dir / path[len(DATA_DIR) + 1:]

    @staticmethod
    def _container_result(report: dict[str, Any], marker: str) -> dict[str, Any]:
        """How the pod would have ended, given what the sandbox saw."""
        outcome = classify_report(report)
        stdout = str(report.get("stdout") or "")
        if outcome.error is not None and outcome.error.type is FailureClass.TIMEOUT:
            return {"exit": 137, "reason": "Error", "message": None, "log": stdout, "deadline": True}
        if outcome.error is not None and outcome.error.type is FailureClass.MEMORY_LIMIT:
            return {"exit": 137, "reason": "OOMKilled", "message": None, "log": stdout}
        if outcome.error is not None and outcome.error.type is FailureClass.DISK_LIMIT:
            return {"exit": 137, "reason": "Error", "message": None, "log": stdout,
                    "evicted": "Pod ephemeral local storage usage exceeds the total limit of containers 164Mi."}
        runner = _runner_report(report)
        if runner is None:  # the process died without a result: FallbackToLogsOnError puts the log tail there
            return {"exit": 1, "reason": "Error", "message": stdout[-2048:], "log": stdout}
        return {"exit": 0, "reason": "Completed", "message": compact_result(runner).decode(),
                "log": stdout + ("\n" if stdout and not stdout.endswith("\n") else "") + marker
                + json.dumps(runner) + "\n"}


def _runner_report(report: dict[str, Any]) -> dict[str, Any] | None:
    raw = report.get("result")
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
