"""Landlock: an unprivileged filesystem, network and signal allow-list.

It is defence in depth on top of the mount namespace: even if a strategy found a
way back to the host's tree, it could only read, and write under the scratch
directories. Only the access rights that the running kernel's ABI knows are used.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass

from rbi.sandbox import linux

_libc = linux.libc

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13
TRUNCATE = 1 << 14
IOCTL_DEV = 1 << 15

NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_ONLY_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

READ_ONLY = EXECUTE | READ_FILE | READ_DIR
READ_WRITE = (
    READ_ONLY | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_FIFO | MAKE_SYM
    | REFER | TRUNCATE
)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """0 when the kernel has no Landlock (or it is disabled at boot)."""
    result = int(_libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION))
    return max(result, 0)


def _fs_rights(abi: int) -> int:
    known = max((v for v in _FS_BY_ABI if v <= abi), default=0)
    return _FS_BY_ABI.get(known, 0)


@dataclass(frozen=True, slots=True)
class PathRule:
    path: str
    access: int


def restrict_self(rules: Iterable[PathRule]) -> int:
    """Apply the rules to this process and its future children; returns the ABI used.

    The caller must already have set no_new_privs. Paths that do not exist are
    skipped, because a missing path grants nothing anyway.
    """
    abi = abi_version()
    if abi == 0:
        return 0
    handled_fs = _fs_rights(abi)
    attr = _RulesetAttr(handled_fs, 0, 0)
    size = 8
    if abi >= 4:
        # Handling TCP with no port rule denies every bind and connect.
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        # Signals and abstract sockets only reach processes inside the same domain.
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset_fd = linux.check(int(_libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)),
                             "landlock_create_ruleset")
    try:
        for rule in rules:
            try:
                fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                access = rule.access & handled_fs
                if not os.path.isdir(rule.path):
                    access &= _FILE_ONLY_RIGHTS
                beneath = _PathBeneathAttr(access, fd)
                linux.check(int(_libc.syscall(_SYS_ADD_RULE, ruleset_fd, _RULE_PATH_BENEATH, ctypes.byref(beneath), 0)),
                            f"landlock_add_rule {rule.path}")
            finally:
                os.close(fd)
        linux.check(int(_libc.syscall(_SYS_RESTRICT_SELF, ruleset_fd, 0)), "landlock_restrict_self")
    finally:
        os.close(ruleset_fd)
    return abi
