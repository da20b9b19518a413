"""A warm worker: imports the heavy libraries once, then forks a sandboxed child per run.

Started by the host with a scrubbed environment (`python -m rbi.sandbox.worker`),
so nothing secret is in its memory for a child to inherit. It speaks
length-prefixed JSON on fds 0 (requests) and 1 (responses).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import io
import os
import select
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rbi.sandbox import cgroups, filesystem, frames, jail, linux, protocol
from rbi.sandbox.capture import BoundedCapture
from rbi.sandbox.limits import SandboxLimits

MAX_RESULT_BYTES = 16 * 2**20
MAX_BATCH_RESULT_BYTES = 64 * 2**20
_HIGH_FD = 20
_CHUNK = 65536
_REAP_GRACE_SECONDS = 10.0
_READY = b"RBI-READY\n"  # rbi.runner.READY_MARKER, without importing the runner here


def _preload() -> None:
    """Import what strategies use, so each forked run starts warm."""
    import backtesting
    import backtesting.lib  # noqa: F401
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import talib  # noqa: F401

    import rbi.prepare.data
    import rbi.runner
    import rbi.stats  # noqa: F401
    from rbi.compat import pandas_ta

    pandas_ta.install(warm=True)  # `import pandas_ta` in strategies: pandas-ta-classic, loaded before the fork
    from rbi.compat import backtesting_speedups

    backtesting_speedups.install()  # result-identical fast paths in backtesting's bar loop, before any strategy
    _warm_up()
    from rbi.sandbox import seccomp_filter

    seccomp_filter.prepare_filter()


def _warm_up() -> None:
    """Run one tiny backtest so lazy imports and caches are filled before any fork.

    Without this every forked child pays backtesting's and pandas' first-call
    costs again (about a second), because the worker never paid them itself.
    """
    import warnings

    import numpy as np
    import pandas as pd
    import talib
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    from rbi import stats

    index = pd.date_range("2023-01-01", periods=300, freq="15min")
    close = 100 + np.cumsum(np.sin(np.arange(300) / 7.0))
    frame = pd.DataFrame({"Open": close, "High": close + 1, "Low": close - 1, "Close": close,
                          "Volume": 1.0}, index=index)

    class WarmUp(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            self.fast = self.I(talib.SMA, self.data.Close, 5)
            self.slow = self.I(talib.SMA, self.data.Close, 20)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy(size=0.5)
            elif crossover(self.slow, self.fast):
                self.position.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = Backtest(frame, WarmUp, cash=1_000_000, commission=0.001, finalize_trades=True).run()
        # Printing stats lazily imports pandas' formatters: a script-mode `print(stats)` must find them loaded.
        str(result)
        stats.stats_to_dict(result)
        stats.equity_curve(result)
        stats.trades_summary(result)


class FrameCache:
    """Normalised datasets kept in the worker; forked children share them copy-on-write."""

    def __init__(self) -> None:
        self._frames: dict[tuple[str, int, int], Any] = {}

    def get(self, path: str) -> Any:
        from rbi.prepare.data import load_ohlcv

        info = os.stat(path)
        key = (path, info.st_mtime_ns, info.st_size)
        if key not in self._frames:
            if len(self._frames) >= 4:
                self._frames.clear()
            self._frames[key] = load_ohlcv(path)
        return self._frames[key]


def _vm_size() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _high(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD, _HIGH_FD)


def _fresh_streams() -> None:
    # Fresh stream objects: the worker's buffers must not leak into the run's output.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, errors="replace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, errors="replace")


def _flush_streams() -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()


def _run_requests(request: dict[str, Any], code_path: str | None) -> list[Any]:
    from rbi import runner

    requests = []
    for raw in request["runs"]:
        run_request = runner.RunRequest.from_json(raw)
        if code_path is not None:
            # Unprotected mode: no bind mounts, so the strategy reads the host paths directly.
            run_request.code_path = code_path
            run_request.raw_data_path = request.get("raw_data_file")
        requests.append(run_request)
    return requests


def _child_body(request: dict[str, Any], frame: Any, code_path: str | None = None) -> int:
    from rbi import runner

    _fresh_streams()
    os.write(jail.RESULT_FD, runner.READY_MARKER)
    (run_request,) = _run_requests({**request, "runs": [request["run"]]}, code_path)
    report = runner.execute(run_request, frame=frame)
    _flush_streams()
    runner.write_report_fd(jail.RESULT_FD, report)
    return 0


def _batch_body(request: dict[str, Any], frame: Any, code_path: str | None = None) -> int:
    """The trials of a batch in turn, one result frame each, as soon as each is done."""
    from rbi import runner

    _fresh_streams()
    os.write(jail.RESULT_FD, runner.READY_MARKER)
    requests = _run_requests(request, code_path)
    for index, report in enumerate(runner.execute_batch(requests, frame=frame)):
        _flush_streams()
        frames.write(jail.RESULT_FD, index, runner.encode_report(report))
    return 0


def _exits_within(pidfd: int, seconds: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(seconds * 1000)))


def _kill(pid: int | None) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass(slots=True)
class _Child:
    pid: int
    out_r: int
    err_r: int
    res_r: int
    ctl_r: int
    started: float
    setup_error: str | None = None


def _load_frame(request: dict[str, Any], cache: FrameCache) -> tuple[Any, str | None]:
    if request["mode"] == "class" and request.get("data_file"):
        try:
            return cache.get(request["data_file"]), None
        except Exception as exc:
            return None, str(exc) or type(exc).__name__
    if request.get("data_file"):
        # Script mode: the served rows let the runner's facts leave out a frame that is exactly them
        # (rbi.integrity); a script cleans its data itself, so a dataset this cannot load is no error.
        try:
            return cache.get(request["data_file"]), None
        except Exception:
            return None, None
    return None, None


def _plan(request: dict[str, Any], limits: SandboxLimits) -> filesystem.FilesystemPlan:
    return filesystem.default_plan(
        # Class mode too: a hybrid module reads its CSV at import time, and that read is served the dataset.
        data_file=request.get("raw_data_file"),
        disk_bytes=limits.disk_bytes,
        max_files=limits.max_files,
        scratch_owner=jail.scratch_owner(),
    )


def _address_space(limits: SandboxLimits, baseline_vm: int) -> SandboxLimits:
    # The address-space limit counts what the worker already mapped; the run gets `memory` on top.
    return SandboxLimits.from_json({**limits.to_json(), "memory_bytes": limits.memory_bytes + baseline_vm})


def _fork(enter: Callable[[dict[str, int]], None], group: cgroups.RunCgroup | None, *,
          with_request: bool = False) -> tuple[_Child, int | None]:
    """Fork S with the run's streams on fds 0-3 and call enter(high fds) in it; the worker's side back.

    with_request: one more pipe, on which a standby child is later sent the run it serves.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    go_r, go_w = os.pipe()
    req_r, req_w = os.pipe() if with_request else (-1, -1)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # S
        try:
            ends = [("out", out_w), ("err", err_w), ("res", res_w), ("ctl", ctl_w), ("go", go_r)]
            high = {name: _high(fd) for name, fd in ends + ([("req", req_r)] if with_request else [])}
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(high["out"], 1)
            os.dup2(high["err"], 2)
            os.dup2(high["res"], jail.RESULT_FD)
            for fd in (out_r, out_w, err_r, err_w, res_r, res_w, ctl_r, ctl_w, go_r, go_w, req_r, req_w, devnull,
                       high["out"], high["err"], high["res"]):
                # 0-3 now hold the run's streams; an original pipe fd that was one of them is already replaced.
                if fd > jail.RESULT_FD:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            enter(high)
        finally:
            os._exit(123)
    for fd in (out_w, err_w, res_w, ctl_w, go_r, req_r):
        if fd >= 0:
            os.close(fd)
    setup_error = None
    if group is not None:
        try:
            group.add_process(pid)
        except OSError as exc:
            setup_error = f"could not join cgroup: {exc}"
    os.write(go_w, b"g")
    os.close(go_w)
    return _Child(pid, out_r, err_r, res_r, ctl_r, started, setup_error), (req_w if with_request else None)


def _spawn(request: dict[str, Any], limits: SandboxLimits, *, body: Callable[..., int], frame: Any,
           mountpoint: str, baseline_vm: int, group: cgroups.RunCgroup | None) -> _Child:
    """Fork S, which enters the sandbox and runs body(request, frame[, code_path]) in P."""
    config = jail.JailConfig(limits=_address_space(limits, baseline_vm), plan=_plan(request, limits),
                             mountpoint=mountpoint, code=request["code"])

    def enter(high: dict[str, int]) -> None:
        if request.get("unsafe"):
            jail.run_unprotected(config, lambda path: body(request, frame, path), high["ctl"], high["go"])
        else:
            jail.run_in_namespace(config, lambda: body(request, frame), high["ctl"], high["go"])

    child, _ = _fork(enter, group)
    return child


def _standby_body(message: dict[str, Any], frame: Any) -> int:
    body = _batch_body if message["body"] == "batch" else _child_body
    return body(message["request"], frame)


@dataclass(slots=True)
class _Standby:
    """A child whose jail was built ahead of its run: it waits, before any strategy code, to be sent one."""

    key: tuple[Any, ...]
    child: _Child
    request_w: int
    group: cgroups.RunCgroup | None


class Standbys:
    """At most one standby child per worker, built while the host digests the last result.

    Forking the warm worker, joining the cgroup and building the jail's root are most of a
    sandboxed run's fixed cost; none of it depends on the strategy. After each answer the worker
    readies the next child for the same dataset and disk limits, so a run that matches pays only
    for the code, the limits and the privilege drop. A run that does not match discards it.
    """

    def __init__(self, *, cache: FrameCache, mountpoint: str, cgroup: cgroups.ReusableCgroup | None) -> None:
        self.cache, self.mountpoint, self.cgroup = cache, mountpoint, cgroup
        self.current: _Standby | None = None
        self.claimed = 0

    @staticmethod
    def key(request: dict[str, Any], limits: SandboxLimits) -> tuple[Any, ...] | None:
        if request.get("unsafe"):
            return None
        identity: list[Any] = []
        for name in ("data_file", "raw_data_file"):
            path = request.get(name)
            try:
                info = os.stat(path) if path else None
            except OSError:
                return None
            identity.append((path, info.st_mtime_ns, info.st_size) if info else None)
        return (*identity, limits.disk_bytes, limits.max_files)

    def prepare(self, request: dict[str, Any]) -> None:
        """Ready a child for a run like `request` (same data and disk limits), if none is waiting."""
        if self.current is not None:
            return
        limits = SandboxLimits.from_json(request["limits"])
        key = self.key(request, limits)
        if key is None:
            return
        frame, data_error = _load_frame({**request, "mode": "class"}, self.cache)
        if data_error is not None:
            return
        group = None
        if self.cgroup is not None:
            group = self.cgroup.acquire(memory_bytes=limits.memory_bytes, cpus=limits.cpus,
                                        max_processes=limits.max_processes)
        plan = _plan(request, limits)
        run_name = linux.process_name()

        def enter(high: dict[str, int]) -> None:
            jail.run_standby(plan, self.mountpoint, lambda message: _standby_body(message, frame), high["ctl"],
                             high["go"], high["req"], run_name=run_name)

        # Named before the fork, so the child is never seen as anything but a standby (ps, the tests' checks
        # that a finished run left no process behind); the worker takes its own name back at once.
        linux.set_process_name(jail.STANDBY_NAME)
        try:
            child, request_w = _fork(enter, group, with_request=True)
        finally:
            linux.set_process_name(run_name)
        assert request_w is not None
        if child.setup_error:
            self._end(_Standby(key, child, request_w, group))
            return
        self.current = _Standby(key, child, request_w, group)

    def take(self, request: dict[str, Any], limits: SandboxLimits, *, body: str,
             baseline_vm: int) -> tuple[_Child, cgroups.RunCgroup | None] | None:
        """The waiting child, sent this run, when it was built for one like it; else None (and it is gone)."""
        standby, self.current = self.current, None
        if standby is None:
            return None
        if self.key(request, limits) != standby.key or _exited(standby.child.pid):
            self._end(standby)
            return None
        message = {"code": request["code"], "limits": _address_space(limits, baseline_vm).to_json(), "body": body,
                   "request": request}
        try:
            if standby.group is not None:
                standby.group.set_limits(memory_bytes=limits.memory_bytes, cpus=limits.cpus,
                                         max_processes=limits.max_processes)
            protocol.write_frame(standby.request_w, message)
        except OSError:  # it died waiting, or its limits cannot be set: a fresh child instead
            self._end(standby)
            return None
        os.close(standby.request_w)
        standby.child.started = time.monotonic()  # the run's clock starts now, not when the jail was built
        self.claimed += 1
        return standby.child, standby.group

    def discard(self) -> None:
        standby, self.current = self.current, None
        if standby is not None:
            self._end(standby)

    def _end(self, standby: _Standby) -> None:
        # Closing its request pipe ends P before any code (it reads EOF); kill in case it is stuck.
        with contextlib.suppress(OSError):
            os.close(standby.request_w)
        child = standby.child
        if not _exits_within_pid(child.pid, 2.0):
            _kill(child.pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)
        for fd in (child.out_r, child.err_r, child.res_r, child.ctl_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        if standby.group is not None and self.cgroup is not None:
            self.cgroup.release(standby.group)


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _exits_within_pid(pid: int, seconds: float) -> bool:
    pidfd = os.pidfd_open(pid)
    try:
        return _exits_within(pidfd, seconds)
    finally:
        os.close(pidfd)


def _cgroup_facts(group: cgroups.RunCgroup) -> dict[str, Any]:
    return {"peak_memory": group.peak_memory(), "oom_killed": group.oom_killed(),
            "pids_limit_hit": group.pids_limit_hit()}


def run_one(request: dict[str, Any], *, cache: FrameCache, mountpoint: str, cgroup: cgroups.ReusableCgroup | None,
            baseline_vm: int, standbys: Standbys | None = None) -> dict[str, Any]:
    limits = SandboxLimits.from_json(request["limits"])
    frame, data_error = _load_frame({**request, "mode": request["run"]["mode"]}, cache)
    if data_error is not None:
        return {"id": request["id"], "data_error": data_error}
    claimed = standbys.take(request, limits, body="single", baseline_vm=baseline_vm) if standbys else None
    if claimed is not None:
        child, group = claimed
    else:
        group = None
        if cgroup is not None:
            group = cgroup.acquire(memory_bytes=limits.memory_bytes, cpus=limits.cpus,
                                   max_processes=limits.max_processes)
        child = _spawn({**request, "mode": request["run"]["mode"]}, limits, body=_child_body, frame=frame,
                       mountpoint=mountpoint, baseline_vm=baseline_vm, group=group)
    life = _monitor(child, limits, trials=None, group=group)
    if claimed is not None and not life.ready and life.killed is None:
        # The standby died before it could take the run (killed while it waited): a fresh child
        # runs it instead, so a lost standby never costs a run.
        if group is not None and cgroup is not None:
            cgroup.release(group)
        return run_one(request, cache=cache, mountpoint=mountpoint, cgroup=cgroup, baseline_vm=baseline_vm)
    report = life.single_report()
    report["standby"] = claimed is not None
    if child.setup_error:
        report["setup_error"] = child.setup_error
    if group is not None and cgroup is not None:
        report["cgroup"] = _cgroup_facts(group)
        cgroup.release(group)
    report["id"] = request["id"]
    return report


def run_batch(request: dict[str, Any], emit: Callable[[int, dict[str, Any]], None], *, cache: FrameCache,
              mountpoint: str, cgroup: cgroups.ReusableCgroup | None, baseline_vm: int,
              standbys: Standbys | None = None) -> int:
    """Run request["runs"] in as few sandboxed children as it takes; emit(index, report) for each trial.

    A child runs the trials in turn. When one overruns its time budget, prints too much, breaks
    the result channel or kills the child, that trial gets its own classified report and the
    trials after it go to a fresh child. Each child settles at least one trial, so a batch of n
    trials takes at most n children. Returns the number of children used.
    """
    limits = SandboxLimits.from_json(request["limits"])
    runs: list[dict[str, Any]] = list(request["runs"])
    frame, data_error = _load_frame(request, cache)
    if data_error is not None:
        for index in range(len(runs)):
            emit(index, {"data_error": data_error})
        return 0
    done = 0
    children = 0
    while done < len(runs):
        children += 1
        rest = {**request, "runs": runs[done:]}
        claimed = standbys.take(rest, limits, body="batch", baseline_vm=baseline_vm) if standbys else None
        if claimed is not None:
            child, group = claimed
        else:
            group = None
            if cgroup is not None:
                group = cgroup.acquire(memory_bytes=limits.memory_bytes, cpus=limits.cpus,
                                       max_processes=limits.max_processes)
            child = _spawn(rest, limits, body=_batch_body, frame=frame, mountpoint=mountpoint,
                           baseline_vm=baseline_vm, group=group)
        life = _monitor(child, limits, trials=len(runs) - done, group=group)
        settled = life.trial_reports()
        for report in settled:
            report["standby"] = claimed is not None
            if child.setup_error:
                report["setup_error"] = child.setup_error
            emit(done, report)
            done += 1
        if group is not None and cgroup is not None:
            cgroup.release(group)
        if claimed is not None and not life.ready and life.killed is None and not settled:
            continue  # the standby died while it waited: a fresh child takes the batch
        if not life.ready or child.setup_error:
            # The sandbox itself did not start: the same for every trial left, so no retry.
            report = life.failed_trial_report()
            if child.setup_error:
                report["setup_error"] = child.setup_error
            while done < len(runs):
                emit(done, dict(report))
                done += 1
    return children


@dataclass(slots=True)
class _Trial:
    """What the monitor saw of one trial: its output and, once its frame came, its result."""

    started: float
    stdout: BoundedCapture = field(default_factory=BoundedCapture)
    stderr: BoundedCapture = field(default_factory=BoundedCapture)
    payload: bytes | None = None
    wall: float = 0.0
    peak_memory: int | None = None

    def streams(self) -> dict[str, Any]:
        return {"stdout": self.stdout.text(), "stdout_total": self.stdout.total,
                "stderr": self.stderr.text(), "stderr_total": self.stderr.total}


@dataclass(slots=True)
class _Life:
    """One child's life as the monitor saw it."""

    trials: list[_Trial]
    killed: str | None = None
    ready: bool = False
    outer_status: int = 0
    inner_status: int | None = None
    wall_time: float = 0.0
    cpu_time: float = 0.0
    max_rss_bytes: int = 0
    result: bytes = b""  # single mode: everything after the ready marker
    frame_error: frames.FrameError | None = None
    group: cgroups.RunCgroup | None = None

    def _ending(self) -> dict[str, Any]:
        return {"killed": self.killed, "ready": self.ready, "outer_status": self.outer_status,
                "inner_status": self.inner_status, "cpu_time": self.cpu_time, "max_rss_bytes": self.max_rss_bytes}

    def single_report(self) -> dict[str, Any]:
        payload = self.result
        return {**self._ending(), "wall_time": self.wall_time, **self.trials[0].streams(),
                "result": payload.decode("utf-8", errors="replace") if len(payload) <= MAX_RESULT_BYTES else None,
                "result_bytes": len(payload)}

    def trial_reports(self) -> list[dict[str, Any]]:
        """A report for each trial this child settled: those with a frame, then the one it ended on."""
        answered = [t for t in self.trials if t.payload is not None]
        reports = [self._answered(t) for t in answered]
        error = self.frame_error
        if self.ready and error is not None and reports and (
                error.kind == "extra" or (error.kind == "out_of_order" and error.index == len(reports) - 1)):
            # A second frame for the trial that has just answered: that answer is suspect. The trial
            # running now (if any) was cut short through no fault of its own: it goes to the next child.
            reports[-1] = self._tampered(answered[-1])
            return reports
        if not self.ready or len(reports) == len(self.trials):
            return reports
        current = self.trials[len(reports)]
        if error is not None and error.kind != "oversize":
            reports.append(self._tampered(current))
        else:
            reports.append(self._died(current))
        return reports

    def _answered(self, trial: _Trial) -> dict[str, Any]:
        assert trial.payload is not None
        return {"killed": None, "ready": True, "outer_status": None, "inner_status": None, "wall_time": trial.wall,
                **trial.streams(), "result": trial.payload.decode("utf-8", errors="replace"),
                "result_bytes": len(trial.payload),
                "cgroup": {"peak_memory": trial.peak_memory, "oom_killed": False, "pids_limit_hit": False}}

    def _tampered(self, trial: _Trial) -> dict[str, Any]:
        # No result: classify calls it a runtime_error (the result channel was overwritten).
        return {"killed": None, "ready": True, "outer_status": None, "inner_status": None, "wall_time": trial.wall,
                **trial.streams(), "result": None, "result_bytes": 0, "channel_error": str(self.frame_error or "")}

    def _died(self, trial: _Trial) -> dict[str, Any]:
        report = {**self._ending(), "wall_time": time.monotonic() - trial.started, **trial.streams(),
                  "result": None, "result_bytes": 0}
        if self.group is not None:
            report["cgroup"] = _cgroup_facts(self.group)
        return report

    def failed_trial_report(self) -> dict[str, Any]:
        report = {**self._ending(), "wall_time": self.wall_time, **self.trials[-1].streams(), "result": None,
                  "result_bytes": 0}
        if self.group is not None:
            report["cgroup"] = _cgroup_facts(self.group)
        return report


def _monitor(child: _Child, limits: SandboxLimits, *, trials: int | None,
             group: cgroups.RunCgroup | None) -> _Life:
    """Pump the child's streams until it ends or breaks a limit; kill it in the second case.

    trials=None: one run, whose result is everything after the ready marker. Otherwise a batch
    of that many trials: each trial has its own time budget from the moment the previous one
    answered (the first from the start, so module loading counts), and its own output limit.
    """
    life = _Life(trials=[_Trial(started=child.started)], group=group)
    reader = frames.FrameReader(expected=trials, max_payload=MAX_RESULT_BYTES) if trials is not None else None
    prefix = bytearray()
    answered_bytes = [0]
    control = bytearray()
    inner_pid: int | None = None
    selector = selectors.DefaultSelector()
    streams = {child.out_r: "out", child.err_r: "err", child.res_r: "res", child.ctl_r: "ctl"}
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    pidfd = os.pidfd_open(child.pid)
    selector.register(pidfd, selectors.EVENT_READ)
    deadline = child.started + limits.timeout_seconds
    exited = False
    all_answered = False

    def read(fd: int) -> bytes | None:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return None
        if not chunk:
            selector.unregister(fd)
        return chunk

    def drain_output() -> None:
        # Output written before a trial's frame belongs to that trial: take what is in the pipes now.
        for fd in (child.out_r, child.err_r):
            while fd in selector.get_map():
                chunk = read(fd)
                if not chunk:
                    break
                (life.trials[-1].stdout if fd == child.out_r else life.trials[-1].stderr).feed(chunk)

    def on_result(chunk: bytes) -> None:
        nonlocal deadline
        if reader is None:
            if len(prefix) <= MAX_RESULT_BYTES:
                prefix.extend(chunk)
            return
        if not life.ready:
            prefix.extend(chunk)
            if len(prefix) < len(_READY):
                return
            if not prefix.startswith(_READY):
                life.frame_error = frames.FrameError("the result channel did not start with the ready marker",
                                                     kind="malformed")
                return
            life.ready = True
            chunk = bytes(prefix[len(_READY):])
        try:
            completed = reader.feed(chunk)
        except frames.FrameError as exc:
            completed = []
            life.frame_error = exc
        for _, payload in completed:
            answered_bytes[0] += len(payload)
            if answered_bytes[0] > MAX_BATCH_RESULT_BYTES:
                # Answers are held until the child ends (a later frame may void one): bound them all.
                life.frame_error = frames.FrameError("the batch's results exceed the size limit", kind="oversize")
                return
            drain_output()
            now = time.monotonic()
            trial = life.trials[-1]
            trial.payload, trial.wall = payload, now - trial.started
            if group is not None:
                trial.peak_memory = group.peak_memory()
                group.reset_peak()
            life.trials.append(_Trial(started=now))
            deadline = now + limits.timeout_seconds

    def pump(fd: int) -> None:
        nonlocal inner_pid
        chunk = read(fd)
        if not chunk:
            return
        kind = streams[fd]
        if kind == "out":
            life.trials[-1].stdout.feed(chunk)
        elif kind == "err":
            life.trials[-1].stderr.feed(chunk)
        elif kind == "res":
            on_result(chunk)
        else:
            control.extend(chunk)
            for line in bytes(control).splitlines():
                if line.startswith(b"pid "):
                    inner_pid = int(line.split()[1])

    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            life.killed = "timeout"
            break
        for key, _ in selector.select(min(remaining, 1.0)):
            if key.fd == pidfd:
                exited = True
            else:
                pump(key.fd)
        current = life.trials[-1]
        if current.stdout.total + current.stderr.total > limits.max_output_bytes:
            life.killed = "output"
            break
        if reader is None and len(prefix) > MAX_RESULT_BYTES:
            life.killed = "result"
            break
        if life.frame_error is not None:
            life.killed = "result" if life.frame_error.kind == "oversize" else None
            break
        if reader is not None and reader.next_index == trials and not all_answered:
            # Every trial answered: the child only has to exit now, within the grace a killed one gets.
            all_answered = True
            deadline = time.monotonic() + _REAP_GRACE_SECONDS
    if not exited:
        # Kill P, the PID namespace's init (every process in the namespace dies with it), and let
        # S reap it. Killing S at the same time orphans P: it stays a zombie of the sandbox uid,
        # counted against RLIMIT_NPROC, until the host's init reaps it, which never happens where
        # PID 1 does not reap (a container whose PID 1 is the Python operator).
        _kill(inner_pid)
        if inner_pid is None or not _exits_within(pidfd, _REAP_GRACE_SECONDS):
            _kill(child.pid)
    _, wait_status, usage = os.wait4(child.pid, 0)
    life.wall_time = time.monotonic() - child.started
    # Drain what is left; every writer is gone once the PID namespace is torn down.
    drain_until = time.monotonic() + 2.0
    while selector.get_map() and len(selector.get_map()) > 1 and time.monotonic() < drain_until:
        for key, _ in selector.select(0.1):
            if key.fd != pidfd:
                pump(key.fd)
    selector.close()
    for fd in (child.out_r, child.err_r, child.res_r, child.ctl_r, pidfd):
        with contextlib.suppress(OSError):
            os.close(fd)
    for line in bytes(control).splitlines():
        if line.startswith(b"status "):
            life.inner_status = int(line.split()[1])
    life.outer_status = wait_status
    life.cpu_time = usage.ru_utime + usage.ru_stime
    life.max_rss_bytes = usage.ru_maxrss * 1024
    if reader is None:
        life.ready = bytes(prefix).startswith(_READY)
        life.result = bytes(prefix)[len(_READY):] if life.ready else b""
    else:
        # Each answer opened the next trial; after the last answer there is none.
        life.trials = life.trials[:trials]
    return life


def hello(use_cgroups: bool) -> dict[str, Any]:
    from rbi.sandbox import landlock, probe

    return {"hello": True, "pid": os.getpid(), "landlock_abi": landlock.abi_version(), "cgroups": use_cgroups,
            "euid": os.geteuid(), "isolation_problem": probe.isolation_problem()}


def main() -> int:
    # The protocol channel must never carry stray prints.
    proto_in, proto_out = _high(0), _high(1)
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preload()
    use_cgroups = os.environ.get("RBI_SANDBOX_CGROUPS", "1") == "1" and cgroups.available()
    if use_cgroups:
        cgroups.sweep_stale()
    greeting = hello(use_cgroups)
    mountpoint = filesystem.mountpoint_for_new_root()
    cache = FrameCache()
    baseline_vm = _vm_size()
    # Keep the garbage collector from touching (and so copying) every inherited object in each child.
    gc.collect()
    gc.freeze()
    # One cgroup for all of this worker's runs, reset in between (cheaper than one per run).
    cgroup = cgroups.ReusableCgroup(f"run-{os.getpid()}") if use_cgroups else None
    standbys = Standbys(cache=cache, mountpoint=mountpoint, cgroup=cgroup) if _standby_enabled() else None
    protocol.write_frame(proto_out, greeting)
    while True:
        try:
            request = protocol.read_frame(proto_in)
        except EOFError:
            if standbys is not None:
                standbys.discard()
            if cgroup is not None:
                cgroup.close()
            cgroups.remove_worker_groups()
            return 0
        if "runs" in request:
            serve_batch(request, proto_out, cache=cache, mountpoint=mountpoint, cgroup=cgroup,
                        baseline_vm=baseline_vm, standbys=standbys)
        else:
            try:
                response = run_one(request, cache=cache, mountpoint=mountpoint, cgroup=cgroup,
                                   baseline_vm=baseline_vm, standbys=standbys)
            except Exception as exc:
                response = {"id": request.get("id"), "worker_error": f"{type(exc).__name__}: {exc}"}
            protocol.write_frame(proto_out, response)
        if standbys is not None:
            # The host is digesting the answer now: build the next run's jail meanwhile.
            try:
                standbys.prepare(request)
            except Exception:  # an optimisation only; the next run then starts a child of its own
                standbys.discard()


def _standby_enabled() -> bool:
    return os.environ.get("RBI_SANDBOX_STANDBY", "1") == "1"


def serve_batch(request: dict[str, Any], proto_out: int, **options: Any) -> None:
    """Answer a batch: one frame per trial as it is settled, then a closing frame."""
    sent = 0

    def emit(index: int, report: dict[str, Any]) -> None:
        nonlocal sent
        protocol.write_frame(proto_out, {"id": request.get("id"), "index": index, "report": report})
        sent = index + 1

    try:
        children = run_batch(request, emit, **options)
    except Exception as exc:
        children = 0
        error = f"{type(exc).__name__}: {exc}"
        for index in range(sent, len(request.get("runs") or [])):
            emit(index, {"worker_error": error})
    protocol.write_frame(proto_out, {"id": request.get("id"), "done": sent, "children": children})


if __name__ == "__main__":
    sys.exit(main())
