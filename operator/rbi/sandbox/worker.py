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
from typing import Any

from rbi.sandbox import cgroups, filesystem, jail, protocol
from rbi.sandbox.capture import BoundedCapture
from rbi.sandbox.limits import SandboxLimits

MAX_RESULT_BYTES = 16 * 2**20
_HIGH_FD = 20
_CHUNK = 65536
_REAP_GRACE_SECONDS = 10.0


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


def _child_body(request: dict[str, Any], frame: Any, code_path: str | None = None) -> int:
    from rbi import runner

    # Fresh stream objects: the worker's buffers must not leak into the run's output.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, errors="replace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, errors="replace")
    os.write(jail.RESULT_FD, runner.READY_MARKER)
    run_request = runner.RunRequest.from_json(request["run"])
    if code_path is not None:
        # Unprotected mode: no bind mounts, so the strategy reads the host paths directly.
        run_request.code_path = code_path
        run_request.raw_data_path = request.get("raw_data_file")
    report = runner.execute(run_request, frame=frame)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    runner.write_report_fd(jail.RESULT_FD, report)
    return 0


def _exits_within(pidfd: int, seconds: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(seconds * 1000)))


_pending_cleanup: list[cgroups.RunCgroup] = []


def _clean_up_cgroups() -> None:
    while _pending_cleanup:
        _pending_cleanup.pop().remove()


def _kill(pid: int | None) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def run_one(request: dict[str, Any], *, cache: FrameCache, mountpoint: str, use_cgroups: bool,
            baseline_vm: int) -> dict[str, Any]:
    limits = SandboxLimits.from_json(request["limits"])
    mode = request["run"]["mode"]
    frame = None
    if mode == "class" and request.get("data_file"):
        try:
            frame = cache.get(request["data_file"])
        except Exception as exc:
            return {"id": request["id"], "data_error": str(exc) or type(exc).__name__}
    raw = request.get("raw_data_file")
    plan = filesystem.default_plan(
        data_file=raw if mode == "script" else None,
        disk_bytes=limits.disk_bytes,
        max_files=limits.max_files,
        scratch_owner=jail.scratch_owner(),
    )
    # The address-space limit counts what the worker already mapped; the run gets `memory` on top.
    as_limits = SandboxLimits.from_json({**limits.to_json(), "memory_bytes": limits.memory_bytes + baseline_vm})
    config = jail.JailConfig(limits=as_limits, plan=plan, mountpoint=mountpoint, code=request["code"])

    group = None
    if use_cgroups:
        group = cgroups.create(f"run-{os.getpid()}-{request['id']}", memory_bytes=limits.memory_bytes,
                               cpus=limits.cpus, max_processes=limits.max_processes)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    go_r, go_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # S
        try:
            high = {name: _high(fd) for name, fd in
                    (("out", out_w), ("err", err_w), ("res", res_w), ("ctl", ctl_w), ("go", go_r))}
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(high["out"], 1)
            os.dup2(high["err"], 2)
            os.dup2(high["res"], jail.RESULT_FD)
            for fd in (out_r, out_w, err_r, err_w, res_r, res_w, ctl_r, ctl_w, go_r, go_w, devnull,
                       high["out"], high["err"], high["res"]):
                # 0-3 now hold the run's streams; an original pipe fd that was one of them is already replaced.
                if fd > jail.RESULT_FD:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if request.get("unsafe"):
                jail.run_unprotected(config, lambda path: _child_body(request, frame, path), high["ctl"],
                                     high["go"])
            else:
                jail.run_in_namespace(config, lambda: _child_body(request, frame), high["ctl"], high["go"])
        finally:
            os._exit(123)
    for fd in (out_w, err_w, res_w, ctl_w, go_r):
        os.close(fd)
    setup_error = None
    if group is not None:
        try:
            group.add_process(pid)
        except OSError as exc:
            setup_error = f"could not join cgroup: {exc}"
    os.write(go_w, b"g")
    os.close(go_w)
    report = _monitor(pid, limits, out_r=out_r, err_r=err_r, res_r=res_r, ctl_r=ctl_r, started=started)
    if setup_error:
        report["setup_error"] = setup_error
    if group is not None:
        report["cgroup"] = {"peak_memory": group.peak_memory(), "oom_killed": group.oom_killed(),
                            "pids_limit_hit": group.pids_limit_hit()}
        group.kill_all()
        # rmdir waits until the kernel has released the run's last task; do that after answering.
        _pending_cleanup.append(group)
    report["id"] = request["id"]
    return report


def _monitor(pid: int, limits: SandboxLimits, *, out_r: int, err_r: int, res_r: int, ctl_r: int,
             started: float) -> dict[str, Any]:
    stdout, stderr = BoundedCapture(), BoundedCapture()
    result = bytearray()
    control = bytearray()
    killed: str | None = None
    inner_pid: int | None = None
    selector = selectors.DefaultSelector()
    streams = {out_r: "out", err_r: "err", res_r: "res", ctl_r: "ctl"}
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    pidfd = os.pidfd_open(pid)
    selector.register(pidfd, selectors.EVENT_READ)
    deadline = started + limits.timeout_seconds
    exited = False

    def pump(fd: int) -> None:
        nonlocal inner_pid
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            selector.unregister(fd)
            return
        kind = streams[fd]
        if kind == "out":
            stdout.feed(chunk)
        elif kind == "err":
            stderr.feed(chunk)
        elif kind == "res":
            if len(result) <= MAX_RESULT_BYTES:
                result.extend(chunk)
        else:
            control.extend(chunk)
            for line in bytes(control).splitlines():
                if line.startswith(b"pid "):
                    inner_pid = int(line.split()[1])

    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            killed = "timeout"
            break
        for key, _ in selector.select(min(remaining, 1.0)):
            if key.fd == pidfd:
                exited = True
            else:
                pump(key.fd)
        if stdout.total + stderr.total > limits.max_output_bytes:
            killed = "output"
            break
        if len(result) > MAX_RESULT_BYTES:
            killed = "result"
            break
    if killed:
        # Kill P, the PID namespace's init (every process in the namespace dies with it), and let
        # S reap it. Killing S at the same time orphans P: it stays a zombie of the sandbox uid,
        # counted against RLIMIT_NPROC, until the host's init reaps it, which never happens where
        # PID 1 does not reap (a container whose PID 1 is the Python operator).
        _kill(inner_pid)
        if inner_pid is None or not _exits_within(pidfd, _REAP_GRACE_SECONDS):
            _kill(pid)
    _, wait_status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - started
    # Drain what is left; every writer is gone once the PID namespace is torn down.
    drain_until = time.monotonic() + 2.0
    while selector.get_map() and len(selector.get_map()) > 1 and time.monotonic() < drain_until:
        for key, _ in selector.select(0.1):
            if key.fd != pidfd:
                pump(key.fd)
    selector.close()
    for fd in (out_r, err_r, res_r, ctl_r, pidfd):
        with contextlib.suppress(OSError):
            os.close(fd)
    inner_status = None
    for line in bytes(control).splitlines():
        if line.startswith(b"status "):
            inner_status = int(line.split()[1])
    ready = bytes(result).startswith(b"RBI-READY\n")
    payload = bytes(result)[len(b"RBI-READY\n"):] if ready else b""
    return {
        "killed": killed,
        "ready": ready,
        "outer_status": wait_status,
        "inner_status": inner_status,
        "wall_time": wall,
        "cpu_time": usage.ru_utime + usage.ru_stime,
        "max_rss_bytes": usage.ru_maxrss * 1024,
        "stdout": stdout.text(),
        "stdout_total": stdout.total,
        "stderr": stderr.text(),
        "stderr_total": stderr.total,
        "result": payload.decode("utf-8", errors="replace") if len(payload) <= MAX_RESULT_BYTES else None,
        "result_bytes": len(payload),
    }


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
    greeting = hello(use_cgroups)
    mountpoint = filesystem.mountpoint_for_new_root()
    cache = FrameCache()
    baseline_vm = _vm_size()
    # Keep the garbage collector from touching (and so copying) every inherited object in each child.
    gc.collect()
    gc.freeze()
    protocol.write_frame(proto_out, greeting)
    while True:
        try:
            request = protocol.read_frame(proto_in)
        except EOFError:
            cgroups.remove_worker_groups()
            return 0
        try:
            response = run_one(request, cache=cache, mountpoint=mountpoint, use_cgroups=use_cgroups,
                               baseline_vm=baseline_vm)
        except Exception as exc:
            response = {"id": request.get("id"), "worker_error": f"{type(exc).__name__}: {exc}"}
        protocol.write_frame(proto_out, response)
        _clean_up_cgroups()


if __name__ == "__main__":
    sys.exit(main())
