"""The sandbox's view of the filesystem: a fresh tmpfs root with read-only binds.

Everything that is not listed here (home directories, the results database,
kubeconfig, the repository, other users' files) simply does not exist inside.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rbi.sandbox import linux

# Where the strategy finds things inside the sandbox.
CODE_DIR = "/sandbox"
CODE_PATH = "/sandbox/strategy.py"
DATA_DIR = "/data"
SCRATCH_DIR = "/tmp"
SHM_SUBDIR = ".shm"

_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_ROOT_TMPFS_OPTIONS = "size=16m,nr_inodes=4096,mode=0755"


@dataclass(frozen=True, slots=True)
class FilesystemPlan:
    """What to expose; computed in the worker, applied in the sandboxed child."""

    read_only: tuple[str, ...]
    data_file: str | None
    disk_bytes: int
    max_files: int
    scratch_owner: int


def python_paths() -> tuple[str, ...]:
    """Directories the running interpreter needs: prefixes and every sys.path entry."""
    candidates: list[str] = [sys.prefix, sys.base_prefix, sys.exec_prefix]
    candidates += [entry for entry in sys.path if entry and os.path.isabs(entry)]
    return tuple(candidates)


def minimal_cover(paths: Iterable[str]) -> tuple[str, ...]:
    """Existing real directories, with any path inside another one dropped."""
    resolved = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})
    # Exposing the host's root would defeat the whole view; a "/" here is always a mistake
    # (for example the cwd that `python -m` puts on sys.path).
    resolved = [p for p in resolved if p != "/"]
    kept: list[str] = []
    for path in resolved:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return tuple(kept)


def default_plan(*, data_file: str | None, disk_bytes: int, max_files: int, scratch_owner: int,
                 extra_read_only: Sequence[str] = ()) -> FilesystemPlan:
    system = [d for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    return FilesystemPlan(
        read_only=minimal_cover([*system, *python_paths(), *extra_read_only]),
        data_file=data_file,
        disk_bytes=disk_bytes,
        max_files=max_files,
        scratch_owner=scratch_owner,
    )


def _mkdirs(root: str, path: str) -> str:
    target = os.path.join(root, path.lstrip("/"))
    os.makedirs(target, mode=0o755, exist_ok=True)
    return target


def _bind(source: str, target: str, *, read_only: bool = True) -> None:
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
    if read_only:
        flags = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV
        linux.mount(source, target, None, flags)


def _write(path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def build_root(plan: FilesystemPlan, *, mountpoint: str, code: str | None) -> None:
    """Assemble the new root at `mountpoint`, then pivot into it.

    Runs as root of a private mount namespace, before any strategy code. `code` None: a standby
    jail, whose code comes later (write_code, before seal_root).
    """
    linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE)
    linux.mount("rbi-root", mountpoint, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, _ROOT_TMPFS_OPTIONS)
    root = mountpoint

    # Scratch first: a virtualenv or checkout that lives under the host's /tmp is bound on top of it
    # (read-only), instead of being hidden underneath it.
    scratch = _mkdirs(root, SCRATCH_DIR)
    options = (f"size={plan.disk_bytes},nr_inodes={plan.max_files},mode=0700,"
               f"uid={plan.scratch_owner},gid={plan.scratch_owner}")
    linux.mount("rbi-scratch", scratch, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, options)
    shm = os.path.join(scratch, SHM_SUBDIR)
    os.mkdir(shm, 0o700)
    os.chown(shm, plan.scratch_owner, plan.scratch_owner)

    for path in plan.read_only:
        _bind(path, _mkdirs(root, path))
    # Merged-/usr systems have /lib -> usr/lib style links; recreate them.
    for link in _SYSTEM_DIRS:
        if os.path.islink(link):
            os.symlink(os.readlink(link), os.path.join(root, link.lstrip("/")))

    etc = _mkdirs(root, "/etc")
    _write(os.path.join(etc, "passwd"), "nobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n")
    _write(os.path.join(etc, "group"), "nogroup:x:65534:\n")
    _write(os.path.join(etc, "hosts"), "127.0.0.1 localhost\n")

    dev = _mkdirs(root, "/dev")
    for name in _DEVICES:
        node = os.path.join(dev, name)
        _write(node, "")
        _bind(f"/dev/{name}", node, read_only=False)
    os.symlink("/proc/self/fd", os.path.join(dev, "fd"))

    shm_target = _mkdirs(root, "/dev/shm")
    _bind(shm, shm_target, read_only=False)

    if plan.data_file:
        data_dir = _mkdirs(root, DATA_DIR)
        target = os.path.join(data_dir, os.path.basename(plan.data_file))
        _write(target, "")
        _bind(plan.data_file, target)

    code_dir = _mkdirs(root, CODE_DIR)
    if code is not None:
        _write(os.path.join(code_dir, "strategy.py"), code)
    _mkdirs(root, "/proc")

    _mkdirs(root, "/.old-root")
    os.chdir(root)
    linux.pivot_root(".", ".old-root")
    os.chdir("/")
    linux.umount2("/.old-root", linux.MNT_DETACH)
    os.rmdir("/.old-root")


def write_code(code: str) -> None:
    """A standby jail's code, written after the pivot and before the root is sealed read-only."""
    _write(os.path.join(CODE_DIR, "strategy.py"), code)


def mount_proc() -> None:
    """A procfs for the new PID namespace: only the sandbox's own processes are visible."""
    flags = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    try:
        linux.mount("proc", "/proc", "proc", flags, "hidepid=2")
    except OSError:
        linux.mount("proc", "/proc", "proc", flags)


def seal_root() -> None:
    """Make the root tmpfs read-only once everything is in place."""
    linux.mount("/", "/", None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID)


def mountpoint_for_new_root() -> str:
    """An empty directory on the host to mount the new root over (only inside the namespace)."""
    path = Path("/tmp/.rbi-newroot")
    try:
        path.mkdir(mode=0o755, exist_ok=True)
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            return str(path)
    except OSError:
        pass
    import tempfile

    return tempfile.mkdtemp(prefix="rbi-newroot-")
