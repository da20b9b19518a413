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
    """The cgroup directories of one run, one per controller (v1) or one (v2)."""

    version: int
    dirs: dict[str, Path] = field(default_factory=dict)

    def add_process(self, pid: int) -> None:
        for directory in self.dirs.values():
            (directory / "cgroup.procs").write_text(str(pid))

    def _read(self, controller: str, name: str) -> str | None:
        directory = self.dirs.get(controller)
        if directory is None:
            return None
        try:
            return (directory / name).read_text()
        except OSError:
            return None

    def peak_memory(self) -> int | None:
        raw = self._read("memory", "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")
        return int(raw) if raw and raw.strip().isdigit() else None

    def oom_killed(self) -> bool:
        if self.version == 1:
            raw = self._read("memory", "memory.oom_control") or ""
        else:
            raw = self._read("memory", "memory.events") or ""
        for line in raw.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit() and int(value) > 0:
                return True
        return False

    def pids_limit_hit(self) -> bool:
        raw = self._read("pids", "pids.events") or ""
        for line in raw.splitlines():
            key, _, value = line.partition(" ")
            if key == "max" and value.strip().isdigit() and int(value) > 0:
                return True
        return False

    def kill_all(self) -> None:
        """v2 can kill a whole cgroup at once; v1 relies on the PID namespace instead."""
        if self.version == 2:
            for directory in self.dirs.values():
                with contextlib.suppress(OSError):
                    (directory / "cgroup.kill").write_text("1")

    def remove(self) -> None:
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


def _worker_group() -> str:
    """One parent group per worker: CPU shares are split between sibling groups, so runs grouped
    under one shared parent would together get the share of a single ordinary process."""
    return f"worker-{os.getpid()}"


_parents: set[Path] = set()


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
            parent = base / _own_path(controller).lstrip("/") / "rbi" / _worker_group()
            parent.mkdir(parents=True, exist_ok=True)
            _parents.add(parent)
            directory = parent / name
            directory.mkdir()
            group.dirs[controller] = directory
            if controller == "memory":
                _write(directory / "memory.limit_in_bytes", str(memory_bytes))
                with contextlib.suppress(OSError):
                    _write(directory / "memory.swappiness", "0")
            elif controller == "pids":
                _write(directory / "pids.max", str(max_processes))
            elif controller == "cpu":
                period = 100_000
                _write(directory / "cpu.cfs_period_us", str(period))
                _write(directory / "cpu.cfs_quota_us", str(max(1000, int(period * cpus))))
    except OSError:
        group.remove()
        return None
    return group if "memory" in group.dirs else None


def _create_v2(name: str, *, memory_bytes: int, cpus: float, max_processes: int) -> RunCgroup | None:
    try:
        own = _own_path("")
        parent = _ROOT / own.lstrip("/") / "rbi" / _worker_group()
        parent.mkdir(parents=True, exist_ok=True)
        _parents.add(parent)
        # Controllers must be enabled at every level down to the run; a level that refuses
        # (the "no internal processes" rule) makes the writes below fail, and the run uses rlimits.
        for level in (parent.parent.parent, parent.parent, parent):
            with contextlib.suppress(OSError):
                (level / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        directory = parent / name
        directory.mkdir()
        group = RunCgroup(version=2, dirs={"memory": directory, "pids": directory})
        _write(directory / "memory.max", str(memory_bytes))
        with contextlib.suppress(OSError):
            _write(directory / "memory.swap.max", "0")
        _write(directory / "pids.max", str(max_processes))
        with contextlib.suppress(OSError):
            _write(directory / "cpu.max", f"{max(1000, int(100_000 * cpus))} 100000")
        return group
    except OSError:
        return None


def available() -> bool:
    """Whether a run cgroup can be created here (tries, then removes it)."""
    probe = create(f"probe-{os.getpid()}", memory_bytes=2**30, cpus=1, max_processes=64)
    if probe is None:
        return False
    probe.remove()
    return True
