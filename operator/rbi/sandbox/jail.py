"""Enter the sandbox: the steps a forked child takes before strategy code runs.

Process layout for one run (all forked from a warm worker, no exec):

    worker ──fork──▶ S  (new user*/mount/net/ipc/uts/pid/cgroup namespaces)
                      └─fork──▶ P  (PID 1 of the new PID namespace: builds the
                                    root, drops to uid 65534, loads Landlock and
                                    seccomp, then runs the strategy)

S only waits for P and reports its wait status. Killing P tears down the whole
PID namespace, so `setsid` plus a fork cannot escape the wall-clock kill.
(*) The user namespace comes first when the worker is not root; as root, the
mounts are made as real root in a private namespace and P then switches to
uid 65534 itself, so host paths under /root stay readable for the binds.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rbi.sandbox import filesystem, landlock, linux, seccomp_filter
from rbi.sandbox.limits import SandboxLimits

SANDBOX_UID = 65534
SANDBOX_GID = 65534
HOSTNAME = "rbi-sandbox"
RESULT_FD = 3
STANDBY_NAME = "rbi-standby"

_NAMESPACES = (
    linux.CLONE_NEWNS | linux.CLONE_NEWNET | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS
    | linux.CLONE_NEWPID | linux.CLONE_NEWCGROUP
)

SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": filesystem.SCRATCH_DIR,
    "TMPDIR": filesystem.SCRATCH_DIR,
    "LANG": "C.UTF-8",
    "TZ": "UTC",
    "MPLBACKEND": "Agg",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    # backtesting.py draws tqdm progress bars on stderr; nobody watches them inside a sandbox.
    "TQDM_DISABLE": "1",
}


@dataclass(frozen=True, slots=True)
class JailConfig:
    limits: SandboxLimits
    plan: filesystem.FilesystemPlan
    mountpoint: str
    code: str


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _map_ids(uid_inside: int, uid_outside: int, gid_inside: int, gid_outside: int) -> None:
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"{uid_inside} {uid_outside} 1\n")
    _write_file("/proc/self/gid_map", f"{gid_inside} {gid_outside} 1\n")


def scratch_owner() -> int:
    """The uid that owns the scratch tmpfs, as seen from P before it drops privileges."""
    return SANDBOX_UID if os.geteuid() == 0 else 0


def enter_namespaces() -> None:
    """In S: detach from every host namespace (P, its child, is PID 1 of the new one)."""
    if os.geteuid() == 0:
        linux.unshare(_NAMESPACES)
    else:
        uid, gid = os.geteuid(), os.getegid()
        linux.unshare(linux.CLONE_NEWUSER | _NAMESPACES)
        _map_ids(0, uid, 0, gid)


def _set_rlimits(limits: SandboxLimits, *, processes: bool = True) -> None:
    cpu_seconds = int(limits.timeout_seconds * max(limits.cpus, 1.0)) + 2
    settings = {
        resource.RLIMIT_AS: limits.memory_bytes,
        resource.RLIMIT_CPU: cpu_seconds,
        resource.RLIMIT_FSIZE: limits.disk_bytes,
        resource.RLIMIT_NOFILE: limits.max_open_files,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_MEMLOCK: 0,
        resource.RLIMIT_MSGQUEUE: 0,
    }
    if processes:
        settings[resource.RLIMIT_NPROC] = limits.max_processes
    for which, value in settings.items():
        resource.setrlimit(which, (value, value))


def _limit_processes(limits: SandboxLimits) -> None:
    """RLIMIT_NPROC, set only once P is inside its own user namespace.

    The kernel counts processes per user *per user namespace level*, and a new user
    namespace caps its creator's uid at the RLIMIT_NPROC in force when it was created.
    Set before the unshare, the cap would apply to the host uid 65534 shared by every
    concurrent run, so one run's fork bomb would make the others fail to start threads.
    Set after it, it counts only this run's processes.
    """
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))


def _drop_to_sandbox_user() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID)
        os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
        # Changing uid clears "dumpable", which makes /proc/self root-owned and the id maps unwritable.
        linux.prctl(linux.PR_SET_DUMPABLE, 1)
    outside_uid, outside_gid = os.geteuid(), os.getegid()
    # A user namespace of its own: inside it we are 65534 and own nothing else.
    linux.unshare(linux.CLONE_NEWUSER)
    _map_ids(SANDBOX_UID, outside_uid, SANDBOX_GID, outside_gid)
    linux.drop_all_capabilities()
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)


def _landlock_rules() -> list[landlock.PathRule]:
    rules = [
        landlock.PathRule("/", landlock.READ_ONLY),
        landlock.PathRule(filesystem.SCRATCH_DIR, landlock.READ_WRITE),
        # /dev/shm is a bind of a directory inside the scratch tmpfs, but Landlock follows the
        # mount tree (/dev/shm -> /dev -> /), not the source path, so it needs its own rule.
        # Without it, POSIX shared memory and semaphores (Backtest.optimize, multiprocessing) fail.
        landlock.PathRule("/dev/shm", landlock.READ_WRITE),
    ]
    rules += [landlock.PathRule(f"/dev/{name}", landlock.READ_FILE | landlock.WRITE_FILE)
              for name in ("null", "zero", "full", "random", "urandom")]
    return rules


def _close_other_fds(keep: set[int]) -> None:
    for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def enter_jail(config: JailConfig) -> None:
    """In P (PID 1 of the new namespace): everything between fork and strategy code."""
    _build_jail(config.plan, config.mountpoint, code=config.code)
    _seal_jail(config.limits)


def _build_jail(plan: filesystem.FilesystemPlan, mountpoint: str, *, code: str | None) -> None:
    """The part of the jail that does not depend on the run: its root, its /proc."""
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()
    filesystem.build_root(plan, mountpoint=mountpoint, code=code)
    filesystem.mount_proc()


def _seal_jail(limits: SandboxLimits) -> None:
    """The rest, in the order that matters: seal the root, then limits, uid, Landlock, seccomp."""
    filesystem.seal_root()
    linux.sethostname(HOSTNAME)
    _close_other_fds({0, 1, 2, RESULT_FD})
    os.chdir(filesystem.SCRATCH_DIR)
    _set_rlimits(limits, processes=False)
    _drop_to_sandbox_user()
    # Changing the uid cleared the parent-death signal armed above; without it again, P (and the
    # whole namespace) would outlive a killed S and run on with no timeout at all.
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    _limit_processes(limits)
    landlock.restrict_self(_landlock_rules())
    seccomp_filter.load_filter()
    os.environ.clear()
    os.environ.update(SANDBOX_ENV)


def _supervise(child: Callable[[], None], control_fd: int, *, only_for_child: tuple[int, ...] = ()) -> None:
    """Fork P, report its pid and, at the end, its wait status on control_fd.

    only_for_child: fds that S closes once P has them (a reader S kept would hide P's death).
    """
    pid = os.fork()
    if pid == 0:
        child()
        os._exit(124)  # child() never returns normally
    for fd in only_for_child:
        os.close(fd)
    os.write(control_fd, f"pid {pid}\n".encode())
    _, wait_status = os.waitpid(pid, 0)
    os.write(control_fd, f"status {wait_status}\n".encode())


def _setup_failed(exc: BaseException, code: int) -> None:
    try:
        os.write(2, f"rbi-sandbox-setup-failed: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(code)


def _die_with_worker(go_fd: int) -> None:
    """In S: die with the worker, then wait until it has put S in the run's cgroup (P inherits it).

    The wall-clock timeout lives in the worker; a worker that is killed (or crashes) must take
    S and, through P's own parent-death signal, the whole run with it. The go byte also closes
    the race with a worker that died before the signal was armed: then it never comes.
    """
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    go = os.read(go_fd, 1)
    os.close(go_fd)
    if go != b"g":
        os._exit(122)


def run_in_namespace(config: JailConfig, body: Callable[[], int], control_fd: int, go_fd: int) -> None:
    """The whole life of S. Never returns: P's wait status is reported on control_fd."""

    def child() -> None:
        try:
            enter_jail(config)
        except BaseException as exc:
            _setup_failed(exc, 121)
        status = 70
        try:
            status = body()
        finally:
            os._exit(status)

    try:
        _die_with_worker(go_fd)
        enter_namespaces()
        _supervise(child, control_fd)
    except BaseException as exc:
        _setup_failed(exc, 122)
    os._exit(0)


def read_message(fd: int) -> dict[str, Any] | None:
    """One length-prefixed JSON message (rbi.sandbox.protocol's framing); None when the writer closed."""
    from rbi.sandbox import protocol

    try:
        message = protocol.read_frame(fd)
    except (EOFError, OSError, ValueError, protocol.ProtocolError):
        return None
    return message if isinstance(message, dict) else None


def run_standby(plan: filesystem.FilesystemPlan, mountpoint: str, body: Callable[[dict[str, Any]], int],
                control_fd: int, go_fd: int, request_fd: int, *, run_name: str) -> None:
    """The whole life of a standby S: its jail is built before the run it will serve is known.

    P builds the root and /proc (the slow part of entering the sandbox), then waits, still
    before any strategy code, for the run on request_fd: its code and limits. Only then does it
    write the code, seal the root, set the limits, drop to the sandbox user and load Landlock
    and seccomp, exactly as enter_jail does, and run body(message). A worker that never claims
    it closes request_fd (or dies), and P exits without running anything. S and P carry the
    STANDBY_NAME they were forked with (see rbi.sandbox.worker.Standbys) until P is claimed.
    """

    def child() -> None:
        message: dict[str, Any] = {}
        try:
            _build_jail(plan, mountpoint, code=None)
            claimed = read_message(request_fd)
            os.close(request_fd)
            if claimed is None:
                os._exit(0)
            message = claimed
            linux.set_process_name(run_name)  # a run from here on, no longer a standby
            filesystem.write_code(str(message["code"]))
            _seal_jail(SandboxLimits.from_json(message["limits"]))
        except BaseException as exc:
            _setup_failed(exc, 121)
        status = 70
        try:
            status = body(message)
        finally:
            os._exit(status)

    try:
        _die_with_worker(go_fd)
        enter_namespaces()
        _supervise(child, control_fd, only_for_child=(request_fd,))
    except BaseException as exc:
        _setup_failed(exc, 122)
    os._exit(0)


def run_unprotected(config: JailConfig, body: Callable[[str], int], control_fd: int, go_fd: int) -> None:
    """--unsafe-no-sandbox: rlimits, a timeout and a scrubbed environment, but no isolation."""
    import shutil
    import tempfile

    workdir = tempfile.mkdtemp(prefix="rbi-unsafe-")
    code_path = os.path.join(workdir, "strategy.py")
    with open(code_path, "w", encoding="utf-8") as handle:
        handle.write(config.code)

    def child() -> None:
        try:
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            os.setsid()
            _close_other_fds({0, 1, 2, RESULT_FD})
            os.chdir(workdir)
            _set_rlimits(config.limits)
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            os.environ.clear()
            os.environ.update({**SANDBOX_ENV, "HOME": workdir, "TMPDIR": workdir})
        except BaseException as exc:
            _setup_failed(exc, 121)
        status = 70
        try:
            status = body(code_path)
        finally:
            os._exit(status)

    try:
        _die_with_worker(go_fd)
        _supervise(child, control_fd)
    except BaseException as exc:
        _setup_failed(exc, 122)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    os._exit(0)
