"""What isolation this machine offers: `rbi sandbox check`, and the refusal to run without it.

Each primitive is tried for real in a forked child, so the answer is what the
kernel does now, not what its configuration files claim.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from rbi.sandbox import cgroups, landlock, linux

FIX_HINT = (
    "To enable the sandbox: run rbi as root (or in a container with CAP_SYS_ADMIN), or allow unprivileged "
    "user namespaces (`sysctl -w kernel.unprivileged_userns_clone=1`, `sysctl -w user.max_user_namespaces=15000`, "
    "and on Ubuntu 24.04+ `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`). "
    "To run without isolation anyway, pass --unsafe-no-sandbox (never do that with untrusted code)."
)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    available: bool
    required: bool
    detail: str


def _in_child(action: Callable[[], None]) -> tuple[bool, str]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            action()
            os.write(write_fd, b"ok")
            os._exit(0)
        except BaseException as exc:
            os.write(write_fd, f"{type(exc).__name__}: {exc}".encode()[:500])
            os._exit(1)
    os.close(write_fd)
    message = b""
    while chunk := os.read(read_fd, 4096):
        message += chunk
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return ok, message.decode(errors="replace") if not ok else "works"


def _namespaces() -> None:
    from rbi.sandbox.jail import enter_namespaces

    enter_namespaces()


def _seccomp() -> None:
    from rbi.sandbox import seccomp_filter

    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    seccomp_filter.load_filter()
    import socket

    try:
        socket.socket()
    except PermissionError:
        return
    raise RuntimeError("socket() still works after loading the filter")


def run_checks() -> list[Check]:
    checks: list[Check] = []
    ns_ok, ns_detail = _in_child(_namespaces)
    how = "as root" if os.geteuid() == 0 else "through an unprivileged user namespace"
    checks.append(Check("namespaces (user, mount, network, pid, ipc, uts)", ns_ok, True,
                        f"{ns_detail} ({how})" if ns_ok else ns_detail))
    sc_ok, sc_detail = _in_child(_seccomp)
    checks.append(Check("seccomp filter", sc_ok, True, sc_detail))
    abi = landlock.abi_version()
    checks.append(Check("landlock", abi > 0, False, f"ABI {abi}" if abi else "not available in this kernel"))
    cg_ok = cgroups.available()
    checks.append(Check("cgroups (memory, pids, cpu)", cg_ok, False,
                        "writable" if cg_ok else "not writable: memory and process limits use rlimits only"))
    checks.append(Check("rlimits (address space, cpu, file size, files, processes)", True, True, "always"))
    return checks


def isolation_problem(checks: list[Check] | None = None) -> str | None:
    """None when every required primitive works, else a message that says why and how to fix it."""
    missing = [c for c in (checks or run_checks()) if c.required and not c.available]
    if not missing:
        return None
    reasons = "; ".join(f"{c.name}: {c.detail}" for c in missing)
    return f"the sandbox cannot isolate strategies on this machine ({reasons}). {FIX_HINT}"
