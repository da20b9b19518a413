"""Per-run cgroups for memory, CPU and process counts, where they are writable.

Both cgroup v1 (one hierarchy per controller) and v2 (unified) are handled;
when neither can be written (an unprivileged user without delegation), the
sandbox falls back to rlimits and says so in `rbi sandbox check`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")
# v1 keeps page cache charged to the group that read it; above this, reclaim it between runs.
_RECLAIM_ABOVE = 8 * 2**20
_V1_CONTROLLERS = ("memory", "pids", "cpu")


def _own_path(controller: str) -> str:
    """This process's cgroup path in a v1 controller hierarchy ('' for v2)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path
    return "/"


@dataclass(slots=True)
class RunCgroup:
    """The cgroup directories of one run, one per controller (v1) or one (v2).

    A worker keeps one and reuses it for run after run (`reset`): mkdir, attach and rmdir of
    fresh groups cost about 30 ms a run. The kernel's event counters (OOM kills, pids.max hits)
    only ever grow, so each run reads them against the values they had when it started.
    """

    version: int
    dirs: dict[str, Path] = field(default_factory=dict)
    _oom_base: int = 0
    _pids_base: int = 0
    # v2: memory.peak resets only for the file descriptor that wrote to it (Linux 6.12+).
    _peak_fd: int | None = None

    def add_process(self, pid: int) -> None:
        for directory in self.dirs.values():
            (directory / "cgroup.procs").write_text(str(pid))

    def empty(self) -> bool:
        for directory in self.dirs.values():
            try:
                if (directory / "cgroup.procs").read_text().strip():
                    return False
            except OSError:
                return False
        return True

    def reset(self, *, memory_bytes: int, cpus: float, max_processes: int) -> bool:
        """Ready the group for the next run: its limits, a zero peak, fresh counter baselines.

        False when it cannot be reused (a task still in it, a kernel that cannot reset the peak);
        the caller then removes it and creates a new one.
        """
        if not self.empty():
            return False
        try:
            if self.version == 1:
                memory = self.dirs["memory"]
                usage = int((memory / "memory.usage_in_bytes").read_text())
                if usage > _RECLAIM_ABOVE:
                    # Page cache the last run touched stays charged here; reclaim it so the next run's
                    # peak and limit start from (nearly) nothing.
                    _write(memory / "memory.force_empty", "0")
                _write(memory / "memory.max_usage_in_bytes", "0")
                _configure_v1(self.dirs, memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes)
            else:
                directory = self.dirs["memory"]
                if self._peak_fd is not None:
                    os.close(self._peak_fd)
                    self._peak_fd = None
                fd = os.open(directory / "memory.peak", os.O_RDWR | os.O_CLOEXEC)
                self._peak_fd = fd
                os.write(fd, b"reset\n")
                _configure_v2(directory, memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes)
        except (OSError, ValueError, KeyError):
            if self._peak_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._peak_fd)
                self._peak_fd = None
            return False
        self._oom_base = self._oom_count()
        self._pids_base = self._pids_max_count()
        return True

    def _read(self, controller: str, name: str) -> str | None:
        directory = self.dirs.get(controller)
        if directory is None:
            return None
        try:
            return (directory / name).read_text()
        except OSError:
            return None

    def peak_memory(self) -> int | None:
        if self._peak_fd is not None:
            try:
                raw: str | None = os.pread(self._peak_fd, 64, 0).decode()
            except OSError:
                raw = None
        else:
            raw = self._read("memory", "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")
        return int(raw) if raw and raw.strip().isdigit() else None

    def set_limits(self, *, memory_bytes: int, cpus: float, max_processes: int) -> None:
        """The limits of the run a standby child was claimed for (it is in the group already).

        Raises OSError when they cannot be written; the caller then starts a fresh child instead.
        """
        if self.version == 1:
            _configure_v1(self.dirs, memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes)
        else:
            _configure_v2(self.dirs["memory"], memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes)
        self.reset_peak()
        self._oom_base = self._oom_count()
        self._pids_base = self._pids_max_count()

    def reset_peak(self) -> None:
        """Start the peak over (between the trials of a batch); a failure leaves the running peak."""
        with contextlib.suppress(OSError, KeyError):
            if self.version == 1:
                _write(self.dirs["memory"] / "memory.max_usage_in_bytes", "0")
            elif self._peak_fd is not None:
                os.write(self._peak_fd, b"reset\n")

    def _counter(self, controller: str, name: str, key: str) -> int:
        for line in (self._read(controller, name) or "").splitlines():
            found, _, value = line.partition(" ")
            if found == key and value.strip().isdigit():
                return int(value)
        return 0

    def _oom_count(self) -> int:
        return self._counter("memory", "memory.oom_control" if self.version == 1 else "memory.events", "oom_kill")

    def _pids_max_count(self) -> int:
        return self._counter("pids", "pids.events", "max")

    def oom_killed(self) -> bool:
        return self._oom_count() > self._oom_base

    def pids_limit_hit(self) -> bool:
        return self._pids_max_count() > self._pids_base

    def kill_all(self) -> None:
        """v2 can kill a whole cgroup at once; v1 relies on the PID namespace instead."""
        if self.version == 2:
            for directory in self.dirs.values():
                with contextlib.suppress(OSError):
                    (directory / "cgroup.kill").write_text("1")

    def remove(self) -> None:
        if self._peak_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._peak_fd)
            self._peak_fd = None
        for directory in self.dirs.values():
            # The kernel refuses rmdir until the last task is reaped; that takes a moment after SIGKILL.
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


_PREFIX = "rbi-worker-"


def _worker_group() -> str:
    """One parent group per worker, directly beside this process's own group: CPU shares are split
    between sibling groups, so runs grouped under one shared parent (an `rbi/` level for every worker
    on the machine) would together get the share of a single ordinary process."""
    return f"{_PREFIX}{os.getpid()}"


_parents: set[Path] = set()


def sweep_stale() -> int:
    """Remove the groups of workers that died without cleaning up (killed with a run in flight):
    a reused group outlives its runs, so a killed worker leaves one behind. Returns how many went."""
    removed = 0
    bases = [_ROOT] if (_ROOT / "cgroup.controllers").exists() else [_ROOT / c for c in _V1_CONTROLLERS]
    for base in bases:
        own = base / _own_path(base.name if base != _ROOT else "").lstrip("/")
        for parent in [*own.glob(f"{_PREFIX}*"), *(own / "rbi").glob("worker-*")]:
            pid = parent.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            for child in parent.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
                        removed += 1
            with contextlib.suppress(OSError):
                parent.rmdir()
    return removed


def remove_worker_groups() -> None:
    """Remove this worker's parent groups (empty once its runs are gone); called at worker exit."""
    for directory in _parents:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def create(name: str, *, memory_bytes: int, cpus: float, max_processes: int) -> RunCgroup | None:
    """Create and configure a cgroup for one run; None when cgroups are not writable here."""
    unified = _ROOT / "cgroup.controllers"
    if unified.exists():
        return _create_v2(name, memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes)
    return _create_v1(name, memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes)


def _create_v1(name: str, *, memory_bytes: int, cpus: float, max_processes: int) -> RunCgroup | None:
    group = RunCgroup(version=1)
    try:
        for controller in _V1_CONTROLLERS:
            base = _ROOT / controller
            if not base.is_dir():
                continue
            parent = base / _own_path(controller).lstrip("/") / _worker_group()
            parent.mkdir(parents=True, exist_ok=True)
            _parents.add(parent)
            directory = parent / name
            directory.mkdir()
            group.dirs[controller] = directory
        _configure_v1(group.dirs, memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes)
        with contextlib.suppress(OSError):
            _write(group.dirs["memory"] / "memory.swappiness", "0")
    except (OSError, KeyError):
        group.remove()
        return None
    return group if "memory" in group.dirs else None


def _configure_v1(dirs: dict[str, Path], *, memory_bytes: int, cpus: float, max_processes: int) -> None:
    if "memory" in dirs:
        _write(dirs["memory"] / "memory.limit_in_bytes", str(memory_bytes))
    if "pids" in dirs:
        _write(dirs["pids"] / "pids.max", str(max_processes))
    if "cpu" in dirs:
        period = 100_000
        _write(dirs["cpu"] / "cpu.cfs_period_us", str(period))
        _write(dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(period * cpus))))


def _configure_v2(directory: Path, *, memory_bytes: int, cpus: float, max_processes: int) -> None:
    _write(directory / "memory.max", str(memory_bytes))
    with contextlib.suppress(OSError):
        _write(directory / "memory.swap.max", "0")
    _write(directory / "pids.max", str(max_processes))
    with contextlib.suppress(OSError):
        _write(directory / "cpu.max", f"{max(1000, int(100_000 * cpus))} 100000")


def _create_v2(name: str, *, memory_bytes: int, cpus: float, max_processes: int) -> RunCgroup | None:
    try:
        own = _own_path("")
        parent = _ROOT / own.lstrip("/") / _worker_group()
        parent.mkdir(parents=True, exist_ok=True)
        _parents.add(parent)
        # Controllers must be enabled at every level down to the run; a level that refuses
        # (the "no internal processes" rule) makes the writes below fail, and the run uses rlimits.
        for level in (parent.parent, parent):
            with contextlib.suppress(OSError):
                (level / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        directory = parent / name
        directory.mkdir()
        group = RunCgroup(version=2, dirs={"memory": directory, "pids": directory})
        _configure_v2(directory, memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes)
        return group
    except OSError:
        return None


class ReusableCgroup:
    """A worker's one run group, reset between runs; recreated only when a reset fails."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.group: RunCgroup | None = None
        self.generation = 0
        self.resets = 0

    def acquire(self, *, memory_bytes: int, cpus: float, max_processes: int) -> RunCgroup | None:
        if self.group is not None:
            if self.group.reset(memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes):
                self.resets += 1
                return self.group
            self.group.kill_all()
            self.group.remove()
            self.group = None
        self.generation += 1
        self.group = create(f"{self.name}-{self.generation}", memory_bytes=memory_bytes, cpus=cpus,
                            max_processes=max_processes)
        if self.group is not None:
            # Baselines, and on v2 the peak file descriptor. If that fails the group is still fresh
            # (zero counters, zero peak), so this run is measured right; the next one recreates it.
            self.group.reset(memory_bytes=memory_bytes, cpus=cpus, max_processes=max_processes)
        return self.group

    def release(self, group: RunCgroup) -> None:
        """After a run: kill what is left (v2); the group stays for the next run."""
        group.kill_all()

    def close(self) -> None:
        if self.group is not None:
            self.group.kill_all()
            self.group.remove()
            self.group = None


def available() -> bool:
    """Whether a run cgroup can be created here (tries, then removes it)."""
    probe = create(f"probe-{os.getpid()}", memory_bytes=2**30, cpus=1, max_processes=64)
    if probe is None:
        return False
    probe.remove()
    return True
