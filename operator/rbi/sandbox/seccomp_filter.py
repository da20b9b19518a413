"""The seccomp filter that the sandboxed child loads before strategy code runs.

The default is to allow, because numpy, pandas and TA-Lib use a wide and
version-dependent set of system calls; the deny list removes what a backtest
never needs and what an escape would: networking, tracing, mounting, new
namespaces, kernel keyrings, BPF, module loading and similar.
"""

from __future__ import annotations

import errno

import pyseccomp as seccomp

# Calls denied with EPERM, so the strategy sees a clean Python exception.
DENIED_SYSCALLS: tuple[str, ...] = (
    # networking: the network namespace has no interfaces anyway, but no socket at all is simpler
    # (socketpair stays: it cannot reach outside, and multiprocessing pipes use it)
    "socket", "connect", "bind", "listen", "accept", "accept4",
    # tracing and other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree", "mount_setattr",
    # kernel attack surface a backtest never needs
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "swapon", "swapoff", "reboot",
    "acct", "quotactl", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "personality", "syslog", "vhangup", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "iopl", "ioperm", "mknod", "mknodat",
)

# clone3 passes its flags in a struct that seccomp cannot inspect; ENOSYS makes
# glibc fall back to clone, whose flags are checked below.
_NAMESPACE_CLONE_FLAGS: tuple[int, ...] = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


def build_filter() -> seccomp.SyscallFilter:
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, RuntimeError, ValueError):
            # A syscall this architecture or libseccomp does not know cannot be called either.
            continue
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in _NAMESPACE_CLONE_FLAGS:
        # One rule per flag: libseccomp ORs rules, so any namespace flag is refused.
        flt.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    return flt


_prepared: seccomp.SyscallFilter | None = None


def prepare_filter() -> None:
    """Build the filter once in the warm worker, so each forked run only loads it."""
    global _prepared
    if _prepared is None:
        _prepared = build_filter()


def load_filter() -> None:
    """Install the filter on this process; children inherit it."""
    (_prepared or build_filter()).load()
