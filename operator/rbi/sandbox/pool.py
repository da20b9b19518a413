"""Host side of the warm workers: start them with a scrubbed environment, hand out runs.

Each worker runs one sandboxed child at a time; the pool runs as many at once
as it has workers. A worker that dies is replaced, and the run it held is
reported as a sandbox failure, never as the strategy's fault.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import rbi
from rbi.errors import SandboxUnavailable
from rbi.sandbox import protocol

HELLO_TIMEOUT = 120.0
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# The only host variables a worker may see; everything else (API keys, DB URLs,
# kubeconfig paths, cloud credentials) stays behind.
_PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def worker_environment() -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({name: "1" for name in _THREAD_VARS})
    # Python must find rbi even when it runs from a source checkout, without inheriting PYTHONPATH.
    env["PYTHONPATH"] = str(Path(rbi.__file__).resolve().parent.parent)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["TZ"] = "UTC"
    if os.environ.get("RBI_SANDBOX_CGROUPS") == "0":
        env["RBI_SANDBOX_CGROUPS"] = "0"
    return env


class Worker:
    def __init__(self) -> None:
        log_path = os.environ.get("RBI_WORKER_LOG")
        stderr: Any = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "rbi.sandbox.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=worker_environment(),
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        self.info = self._read(HELLO_TIMEOUT)
        if not self.info.get("hello"):
            raise SandboxUnavailable(f"sandbox worker did not start properly: {self.info}")

    def _read(self, timeout: float) -> dict[str, Any]:
        box: list[Any] = []

        def reader() -> None:
            try:
                box.append(protocol.read_frame(self._out))
            except BaseException as exc:
                box.append(exc)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(timeout)
        if not box:
            self.kill()
            thread.join(5)
            raise TimeoutError(f"sandbox worker gave no answer within {timeout:.0f} s")
        if isinstance(box[0], BaseException):
            raise box[0]
        result: dict[str, Any] = box[0]
        return result

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        protocol.write_frame(self._in, message)
        return self._read(timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.process.stdin:
                self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()


class WorkerPool:
    """A fixed number of warm workers; `submit` blocks until one is free."""

    def __init__(self, size: int = 1, *, unsafe: bool = False) -> None:
        """With unsafe=False (the default) the pool refuses to start where isolation is missing."""
        if size < 1:
            raise ValueError("a pool needs at least one worker")
        self.size = size
        self._idle: queue.Queue[Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._started = 0
        self._spawning = 0
        # Every live worker, idle or busy: close() must also stop the ones still running a strategy.
        self._workers: set[Worker] = set()
        self.info: dict[str, Any] = {}
        self._counter = 0
        self.unsafe = unsafe
        first = self._spawn()
        self.info = first.info
        problem = self.info.get("isolation_problem")
        if problem and not unsafe:
            first.close()
            raise SandboxUnavailable(str(problem))
        self._idle.put(first)

    def _spawn(self) -> Worker:
        try:
            worker = Worker()
        except (OSError, EOFError, TimeoutError, protocol.ProtocolError) as exc:
            raise SandboxUnavailable(f"could not start a sandbox worker: {exc}") from exc
        with self._lock:
            self._started += 1
            self._workers.add(worker)
        return worker

    def _acquire(self) -> Worker:
        with self._lock:
            # Count start-ups in flight too: two callers that both find no idle worker must not
            # both start one when only one more fits (a start takes seconds).
            spawn = self._idle.empty() and self._started + self._spawning < self.size
            if spawn:
                self._spawning += 1
        if spawn:
            try:
                return self._spawn()
            finally:
                with self._lock:
                    self._spawning -= 1
        return self._idle.get()

    def submit(self, message: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Run one request on a free worker. Infrastructure failures come back as `worker_error`."""
        with self._lock:
            self._counter += 1
            message = {**message, "id": self._counter, "unsafe": self.unsafe}
        worker = self._acquire()
        started = time.monotonic()
        try:
            response = worker.request(message, timeout + 30.0)
        except (EOFError, OSError, TimeoutError, protocol.ProtocolError, ValueError) as exc:
            worker.kill()
            with self._lock:
                self._started -= 1
                self._workers.discard(worker)
            return {"id": message["id"], "worker_error": f"sandbox worker failed: {type(exc).__name__}: {exc}",
                    "wall_time": time.monotonic() - started}
        self._idle.put(worker)
        return response

    def submit_batch(self, message: dict[str, Any], *, timeout: float) -> list[dict[str, Any]]:
        """Run message["runs"] as one batch on a free worker: one report per run, in order.

        `timeout` is one trial's budget. A worker that breaks the protocol is replaced, and every run it
        had not answered comes back as `worker_error`.
        """
        count = len(message["runs"])
        with self._lock:
            self._counter += 1
            message = {**message, "id": self._counter, "unsafe": self.unsafe}
        worker = self._acquire()
        started = time.monotonic()
        reports: list[dict[str, Any]] = []
        try:
            protocol.write_frame(worker._in, message)
            while True:
                # A child answers its trials when it ends (a later frame can void an earlier answer),
                # so the next answer may take every remaining trial's budget.
                frame = worker._read(timeout * (count - len(reports)) + 30.0)
                if frame.get("id") != message["id"]:
                    raise protocol.ProtocolError("answer for another request")
                if "done" in frame:
                    break
                report = frame.get("report")
                if frame.get("index") != len(reports) or len(reports) >= count or not isinstance(report, dict):
                    raise protocol.ProtocolError("batch answer out of order")
                reports.append({**report, "id": message["id"]})
            if len(reports) != count:
                raise protocol.ProtocolError(f"batch answered {len(reports)} of {count} runs")
        except (EOFError, OSError, TimeoutError, protocol.ProtocolError, ValueError) as exc:
            worker.kill()
            with self._lock:
                self._started -= 1
                self._workers.discard(worker)
            error = {"id": message["id"], "worker_error": f"sandbox worker failed: {type(exc).__name__}: {exc}",
                     "wall_time": time.monotonic() - started}
            return reports + [dict(error) for _ in range(count - len(reports))]
        self._idle.put(worker)
        return reports

    def close(self) -> None:
        """Idle workers exit cleanly; a worker still busy (Ctrl-C mid-run) is killed with its run."""
        self._closed = True
        idle: list[Worker] = []
        while True:
            try:
                idle.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for worker in idle:
            worker.close()
        with self._lock:
            busy = [w for w in self._workers if w not in idle]
            self._workers.clear()
        for worker in busy:
            worker.kill()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
