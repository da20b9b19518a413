"""Hostile strategies that try to get out: network, programs, raw system calls, secrets, files.

Each script probes one door after another and prints `DENIED:<door>:...` when
the door held or `ESCAPED:<door>:...` when it opened, then `PROBES-DONE`. The
tests assert that every probe ran, none escaped, and the host saw nothing.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import rbi
from rbi.engine import LocalExecutor
from rbi.outcome import FailureClass
from rbi.sandbox.jail import SANDBOX_UID

from .hostile import Ran, assert_failed_as, assert_ran_to_the_end, make_run

RunCode = Callable[..., Ran]

# Put in front of every probing script.
PROBE = '''
def probe(label, action):
    try:
        result = action()
    except BaseException as exc:
        print(f"DENIED:{label}:{type(exc).__name__}:{getattr(exc, 'errno', '')}", flush=True)
    else:
        print(f"ESCAPED:{label}:{result!r}"[:300], flush=True)
'''


def probes(body: str) -> str:
    return PROBE + body + '\nprint("PROBES-DONE")\n'


def denied_labels(ran: Ran) -> set[str]:
    return {line.split(":")[1] for line in ran.stdout.splitlines() if line.startswith("DENIED:")}


def assert_all_denied(ran: Ran, labels: set[str]) -> None:
    assert "ESCAPED" not in ran.stdout, ran.describe()
    missing = labels - denied_labels(ran)
    assert not missing, f"probes that did not report DENIED: {sorted(missing)}\n{ran.describe()}"


def host_shadow_first_line() -> str | None:
    try:
        with open("/etc/shadow") as handle:
            return handle.readline().strip() or None
    except OSError:
        return None


# --------------------------------------------------------------------------- network


@pytest.fixture
def host_listeners() -> Iterator[tuple[socket.socket, socket.socket, str]]:
    """A TCP listener on the host's loopback and an abstract unix socket, for the sandbox to try."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    name = f"rbi-hostile-{uuid.uuid4().hex}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + name)
    unix.listen(8)
    unix.setblocking(False)
    yield tcp, unix, name
    tcp.close()
    unix.close()


def _nothing_connected(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def test_network_is_unreachable(run_code: RunCode,
                                host_listeners: tuple[socket.socket, socket.socket, str]) -> None:
    """Threat: exfiltration or lateral movement over the network (host loopback, DNS, unix sockets).

    seccomp refuses socket() in every family and the network namespace has no
    usable interface; a listener the test opens on the host's loopback must
    receive nothing.
    """
    tcp, unix, name = host_listeners
    port = tcp.getsockname()[1]
    ran = run_code(probes(f"""
import socket
probe("socket", lambda: socket.socket())
probe("socket-udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
probe("socket-inet6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
probe("socket-unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
probe("socket-netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
probe("socket-packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
probe("connect-host-loopback", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
probe("connect-localhost", lambda: socket.create_connection(("localhost", {port}), timeout=2))
probe("dns", lambda: socket.getaddrinfo("example.com", 80))
probe("abstract-unix", lambda: socket.socket(socket.AF_UNIX).connect("\\0{name}"))
"""))
    assert_ran_to_the_end(ran)
    assert_all_denied(ran, {"socket", "socket-udp", "socket-inet6", "socket-unix", "socket-netlink",
                            "socket-packet", "connect-host-loopback", "connect-localhost", "dns",
                            "abstract-unix"})
    assert _nothing_connected(tcp), "the sandbox reached a listener on the host's loopback"
    assert _nothing_connected(unix), "the sandbox reached an abstract unix socket on the host"


# --------------------------------------------------------------------------- programs and system calls


def test_shell_and_subprocesses_stay_inside(run_code: RunCode) -> None:
    """Threat: running programs (os.system, subprocess, setuid binaries) to read secrets or gain root.

    Programs may run, but inside the same jail: as uid 65534, with no
    /etc/shadow, no working setuid (no_new_privs, nosuid mounts), and their
    files land in the scratch tmpfs, not on the host.
    """
    token = f"rbi-hostile-{uuid.uuid4().hex}"
    ran = run_code(probes(f"""
import os, subprocess
print("SYSTEM-RC", os.system("id -u > /tmp/idout; id > /tmp/{token}"))
print("ID-INSIDE", open("/tmp/idout").read().strip())
r = subprocess.run(["cat", "/etc/shadow"], capture_output=True, text=True)
print("CAT-SHADOW", r.returncode, r.stdout, r.stderr.strip())
print("SHADOW-EXISTS", os.path.exists("/etc/shadow"))
for argv in (["mount", "-t", "tmpfs", "none", "/tmp"], ["su", "-c", "id"], ["newgrp", "root"]):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=5)
        print("SETUID", argv[0], "rc=" + str(r.returncode), (r.stdout + r.stderr).strip()[:200])
    except Exception as exc:
        print("SETUID", argv[0], "rc=exc", type(exc).__name__)
"""), timeout_seconds=20)
    assert_ran_to_the_end(ran)
    assert "ID-INSIDE 65534" in ran.stdout, ran.describe()
    assert "SHADOW-EXISTS False" in ran.stdout, ran.describe()
    assert "CAT-SHADOW 0" not in ran.stdout, ran.describe()
    shadow = host_shadow_first_line()
    if shadow:
        assert shadow not in ran.output, "the host's /etc/shadow leaked into the output"
    for program in ("mount", "su", "newgrp"):
        assert f"SETUID {program} rc=0" not in ran.stdout, ran.describe()
    assert "uid=0" not in ran.stdout, ran.describe()
    assert not os.path.exists(f"/tmp/{token}"), "a file written by a shell inside appeared on the host"


SYSCALL_PROBES = r'''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def sc(label, nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *args)
    err = ctypes.get_errno()
    if rc == 0 and label.startswith("clone"):
        os._exit(0)  # the child of a clone that should never have worked
    print(f"SYSCALL:{label}:{rc}:{errno.errorcode.get(err, err)}", flush=True)

NEWNS, NEWUSER, NEWPID, NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
NULL = ctypes.c_void_p(0)
sc("socket-inet", 41, 2, 1, 0)
sc("socket-unix", 41, 1, 1, 0)
sc("socket-netlink", 41, 16, 3, 0)
sc("unshare-user", 272, NEWUSER)
sc("unshare-mount", 272, NEWNS)
sc("unshare-net", 272, NEWNET)
sc("unshare-pid", 272, NEWPID)
sc("clone-newuser", 56, ctypes.c_ulong(NEWUSER | 17), NULL, NULL, NULL, ctypes.c_ulong(0))
sc("clone-newns", 56, ctypes.c_ulong(NEWNS | 17), NULL, NULL, NULL, ctypes.c_ulong(0))
sc("clone3", 435, NULL, 0)
sc("mount-tmpfs", 165, b"none", b"/tmp", b"tmpfs", ctypes.c_ulong(0), NULL)
sc("mount-remount-root-rw", 165, b"none", b"/", NULL, ctypes.c_ulong(0x20), NULL)
sc("umount-proc", 166, b"/proc", 2)
sc("pivot_root", 155, b"/tmp", b"/tmp")
sc("chroot", 161, b"/tmp")
sc("setns", 308, 0, 0)
sc("ptrace-traceme", 101, 0, 0, NULL, NULL)
sc("ptrace-attach-init", 101, 16, 1, NULL, NULL)
sc("process_vm_readv", 310, 1, NULL, 0, NULL, 0, 0)
sc("bpf", 321, 0, NULL, 0)
sc("perf_event_open", 298, NULL, 0, -1, -1, 0)
sc("userfaultfd", 323, 0)
sc("io_uring_setup", 425, 1, NULL)
sc("keyctl", 250, 0, 0, 0, 0, 0)
sc("add_key", 248, b"user", b"x", b"y", 1, -3)
sc("init_module", 175, NULL, 0, b"")
sc("finit_module", 313, 0, b"", 0)
sc("kexec_load", 246, 0, 0, NULL, 0)
sc("mknod-char", 133, b"/tmp/mem", 0o20666, (1 << 8) | 1)
sc("open_by_handle_at", 304, -100, NULL, 0)
sc("sethostname", 170, b"pwned", 5)
sc("personality", 135, 0x0040000)
sc("setuid-root", 105, 0)
sc("setgid-root", 106, 0)
sc("setresuid-root", 117, 0, 0, 0)
sc("iopl", 172, 3)
sc("reboot", 169, 0xfee1dead, 672274793, 0x4321fedc, NULL)
print("PROBES-DONE")
'''


def _refusals(label: str) -> set[str]:
    """The errno a probe must fail with: EPERM from the seccomp filter or the missing capabilities;
    ENOSYS for clone3, which the filter answers that way so glibc falls back to the checkable
    clone; EINVAL for set*id(0), because uid 0 is not even mapped in the sandbox's user namespace."""
    if label == "clone3":
        return {"ENOSYS"}
    if label.startswith(("setuid", "setgid", "setresuid")):
        return {"EPERM", "EINVAL"}
    return {"EPERM"}


SYSCALL_EXPECTED = {
    line.split('"')[1]: _refusals(line.split('"')[1])
    for line in SYSCALL_PROBES.splitlines() if line.startswith('sc("')
}


def test_raw_syscalls_through_ctypes_are_refused(run_code: RunCode) -> None:
    """Threat: bypassing Python-level checks with raw system calls (ctypes): sockets, namespaces,
    mounts, tracing, BPF, kernel modules, setuid(0).

    Each must fail with the *refusal* errno (EPERM), not a later argument error
    (EFAULT, EINVAL), which would mean the kernel accepted the call itself.
    """
    ran = run_code(SYSCALL_PROBES)
    assert_ran_to_the_end(ran)
    seen = {}
    for line in ran.stdout.splitlines():
        if line.startswith("SYSCALL:"):
            _, label, rc, err = line.split(":")
            seen[label] = (int(rc), err)
    assert set(seen) == set(SYSCALL_EXPECTED), ran.describe()
    wrong = {label: (rc, err) for label, (rc, err) in seen.items()
             if rc != -1 or err not in SYSCALL_EXPECTED[label]}
    assert not wrong, f"system calls that were not refused as expected: {wrong}\n{ran.describe()}"


@pytest.mark.parametrize(
    "code",
    [
        # x32 ABI: the same syscall number with bit 30 set.
        (
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
            "rc = libc.syscall(ctypes.c_long(41 | 0x40000000), 2, 1, 0)\n"
            "print('X32-SOCKET', rc, ctypes.get_errno())\n"
            "if rc >= 0:\n    print('ESCAPED x32 socket')\n"
        ),
        # i386 ABI through int 0x80: socket() is 359 there, a number the x86_64 filter never checks.
        (
            "import ctypes, mmap\n"
            "code = bytes([0x53, 0xb8, 0x67, 0x01, 0, 0, 0xbb, 2, 0, 0, 0, 0xb9, 1, 0, 0, 0,"
            " 0x31, 0xd2, 0xcd, 0x80, 0x5b, 0xc3])\n"
            "buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
            "buf.write(code)\n"
            "fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))\n"
            "rc = fn()\nprint('INT80-SOCKET', rc)\n"
            "if rc >= 0:\n    print('ESCAPED int80 socket')\n"
        ),
    ],
    ids=["x32-abi", "i386-int80"],
)
def test_foreign_syscall_abis_do_not_bypass_seccomp(run_code: RunCode, code: str) -> None:
    """Threat: calling socket() through the x32 or i386 system call ABI, which a filter written for
    x86_64 numbers would not recognise. The filter must kill the process or the call must fail."""
    ran = run_code(code)
    assert "ESCAPED" not in ran.stdout, ran.describe()
    assert_failed_as(ran, FailureClass.RUNTIME_ERROR)


# --------------------------------------------------------------------------- secrets and host files


def _worker_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), 0)
        if b"rbi.sandbox.worker" in cmdline and ppid == os.getpid():
            pids.append(int(entry))
    return pids


def test_host_secrets_never_reach_the_sandbox(monkeypatch: pytest.MonkeyPatch, dataset_cache: Path) -> None:
    """Threat: stealing API keys, database URLs or kubeconfig paths from the environment of the
    sandboxed process, its init, other processes, or the worker it was forked from.

    The secrets are set *before* the executor starts, so a worker that inherited
    the host environment would carry them.
    """
    secret = f"sk-test-SECRET{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://rbi:{secret}@localhost/rbi")
    monkeypatch.setenv("KUBECONFIG", f"/root/.kube/{secret}")
    code = probes("""
import glob, os
for path in ["/proc/self/environ", "/proc/1/environ", "/proc/thread-self/environ",
             *glob.glob("/proc/[0-9]*/environ"), *glob.glob("/proc/[0-9]*/task/*/environ")]:
    try:
        data = open(path, "rb").read().replace(b"\\0", b" ").decode(errors="replace")
        print("ENVIRON", path, data)
    except OSError as exc:
        print("ENVIRON", path, "unreadable", type(exc).__name__)
print("OS-ENVIRON", dict(os.environ))
print("CMDLINES", [open(p, "rb").read() for p in glob.glob("/proc/[0-9]*/cmdline")])
""")
    with LocalExecutor(workers=1) as ex:
        started = time.monotonic()
        outcome = ex.execute(make_run(code, cache=dataset_cache))
        ran = Ran(outcome, time.monotonic() - started)
        workers = _worker_pids()
        assert workers, "could not find the worker process on the host"
        for pid in workers:
            assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), \
                "the worker inherited the host's secrets"
    assert_ran_to_the_end(ran)
    # The probes really read the environment blocks (so the absence below means something).
    assert "ENVIRON /proc/self/environ PATH=" in ran.stdout, ran.describe()
    assert "ENVIRON /proc/1/environ PATH=" in ran.stdout, ran.describe()
    assert secret not in ran.output, ran.describe()
    for name in ("OPENAI_API_KEY", "DATABASE_URL", "KUBECONFIG"):
        assert name not in ran.output, ran.describe()


@pytest.fixture
def host_secret_file() -> Iterator[tuple[str, str]]:
    """A world-readable file in the host's /tmp, which a careless sandbox would expose."""
    content = f"host-secret-{uuid.uuid4().hex}"
    fd, path = tempfile.mkstemp(prefix="rbi-hostile-secret-", dir="/tmp")
    os.write(fd, content.encode())
    os.close(fd)
    os.chmod(path, 0o644)
    yield path, content
    os.unlink(path)


def _allowed_children(parent: str) -> set[str]:
    """Names the sandbox may show under `parent`: only steps on the way to the interpreter and rbi."""
    needed = [sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(rbi.__file__).resolve().parents[1])]
    prefix = parent.rstrip("/") + "/"
    return {p[len(prefix):].split("/")[0] for p in needed if p.startswith(prefix)}


def test_host_files_are_invisible(run_code: RunCode, host_secret_file: tuple[str, str]) -> None:
    """Threat: reading the host's files: home directory (keys, tokens, the results database),
    the repository, other users' homes, host /tmp, /etc/shadow, /sys and /var.

    Only the interpreter, the libraries, rbi itself and the dataset are bound
    in; everything else does not exist. Where a directory must exist because
    the interpreter lives below it (/root/.pyenv, /work/main/.venv), it lists
    nothing but that path.
    """
    secret_path, secret = host_secret_file
    hidden = [
        "/root/.bashrc", "/root/.ssh", "/root/.npmrc", "/root/.gitconfig", "/root/.rbi", "/root/.config",
        "/root/.kube", "/home", "/work/main/.git", "/work/main/pyproject.toml", "/work/main/tests",
        "/work/shared", "/etc/shadow", "/etc/ssh", "/etc/resolv.conf", "/var", "/run", "/sys", "/boot",
        "/srv", "/opt", secret_path, "/tmp/.rbi-newroot", "/tmp/pytest-of-root",
        "/dev/tty", "/dev/console", "/dev/kmsg", "/dev/mem", "/dev/vda", "/dev/kvm", "/dev/fuse",
    ]
    ran = run_code(probes(f"""
import json, os
for path in {hidden!r}:
    if os.path.lexists(path):
        print("ESCAPED:visible", path)
    else:
        print("DENIED:" + path + ":absent")
probe("read-host-tmp-secret", lambda: open({secret_path!r}).read())
listing = {{}}
for path in ("/", "/root", "/work", "/work/main", "/tmp", "/etc"):
    try:
        listing[path] = sorted(os.listdir(path))
    except OSError as exc:
        listing[path] = type(exc).__name__
print("LISTING", json.dumps(listing))
"""))
    assert_ran_to_the_end(ran)
    assert secret not in ran.output, ran.describe()
    assert_all_denied(ran, {*hidden, "read-host-tmp-secret"})
    listing = json.loads(next(line for line in ran.stdout.splitlines() if line.startswith("LISTING "))[8:])
    for parent in ("/root", "/work", "/work/main"):
        shown = set(listing[parent]) if isinstance(listing[parent], list) else set()
        assert shown <= _allowed_children(parent), f"{parent} shows {sorted(shown)} inside the sandbox"
    assert set(listing["/etc"]) <= {"passwd", "group", "hosts"}, listing["/etc"]
    # The scratch directory starts empty: nothing of the host's /tmp, nothing of earlier runs
    # (only the way to the interpreter or rbi, where those live under the host's /tmp).
    assert set(listing["/tmp"]) <= {".shm"} | _allowed_children("/tmp"), listing["/tmp"]


def test_writes_outside_scratch_fail(run_code: RunCode) -> None:
    """Threat: tampering with the strategy file, the dataset, the interpreter or libraries (which are
    the host's own directories, bound in read-only), or kernel settings under /proc/sys."""
    token = f"rbi-hostile-{uuid.uuid4().hex}"
    venv_target = f"{sys.prefix}/{token}"
    pyenv_target = f"{sys.base_prefix}/{token}"
    package_target = f"{Path(rbi.__file__).resolve().parent}/{token}.py"
    ran = run_code(probes(f"""
import glob, io, os
data = glob.glob("/data/*")[0]
def write(path, mode="w"):
    # io.FileIO, not open(): open() sends writes the sandbox cannot make into the scratch mirror
    # (rbi.run_hooks), a convenience hostile code simply goes around. The filesystem must refuse.
    with io.FileIO(path, mode) as handle:
        handle.write(b"pwned")
    return path
probe("overwrite-strategy", lambda: write("/sandbox/strategy.py"))
probe("new-file-in-sandbox", lambda: write("/sandbox/other.py"))
probe("overwrite-dataset", lambda: write(data, "a"))
probe("rename-dataset", lambda: os.rename(data, "/data/renamed.csv"))
probe("unlink-dataset", lambda: os.unlink(data))
probe("new-file-in-root", lambda: write("/{token}"))
probe("etc-passwd", lambda: write("/etc/passwd", "a"))
probe("usr-lib", lambda: write("/usr/lib/{token}"))
probe("venv", lambda: write({venv_target!r}))
probe("pyenv", lambda: write({pyenv_target!r}))
probe("rbi-package", lambda: write({package_target!r}))
probe("mkdir-usr", lambda: os.mkdir("/usr/{token}"))
probe("chmod-strategy", lambda: os.chmod("/sandbox/strategy.py", 0o777))
probe("proc-sys-hostname", lambda: write("/proc/sys/kernel/hostname"))
probe("proc-drop-caches", lambda: write("/proc/sys/vm/drop_caches"))
probe("dev-null-replace", lambda: os.unlink("/dev/null"))
print("SCRATCH-WRITE", write("/tmp/fine.txt"))
with open("/etc/passwd", "a") as handle:  # through the hooks: lands in the scratch mirror, never in /etc
    handle.write("pwned")
print("MIRRORED", *glob.glob("/tmp/rbi-output/etc/passwd"))
"""))
    assert_ran_to_the_end(ran)
    assert "SCRATCH-WRITE /tmp/fine.txt" in ran.stdout, ran.describe()
    assert "MIRRORED /tmp/rbi-output/etc/passwd" in ran.stdout, ran.describe()
    assert_all_denied(ran, {
        "overwrite-strategy", "new-file-in-sandbox", "overwrite-dataset", "rename-dataset", "unlink-dataset",
        "new-file-in-root", "etc-passwd", "usr-lib", "venv", "pyenv", "rbi-package", "mkdir-usr",
        "chmod-strategy", "proc-sys-hostname", "proc-drop-caches", "dev-null-replace",
    })
    # Refused by the filesystem itself (read-only mount, permissions, Landlock), not by accident.
    refusals = {errno.EROFS, errno.EACCES, errno.EPERM}
    for line in ran.stdout.splitlines():
        if line.startswith("DENIED:"):
            label, _, code = line.split(":")[1:4]
            assert code.isdigit() and int(code) in refusals, f"{label} failed with errno {code!r}, not a refusal"
    for host_path in (venv_target, pyenv_target, package_target, f"/usr/lib/{token}", f"/usr/{token}"):
        assert not os.path.exists(host_path), f"the sandbox wrote {host_path} on the host"


def test_identity_inside_the_sandbox(run_code: RunCode) -> None:
    """Threat: running with privileges: root uid, capabilities, setuid gains, the host's hostname
    or network, or file descriptors inherited from the worker (its protocol pipe would let a
    strategy forge answers to the host). Inside, the process is 65534 with no capabilities,
    no_new_privs and a seccomp filter; the only interface is a loopback that is down; only
    stdio and the result pipe are open."""
    ran = run_code(probes("""
import json, os, socket
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
facts = {
    "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()],
    "caps": {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
    "no_new_privs": status["NoNewPrivs"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "pid": os.getpid(),
    "hostname": socket.gethostname(),
    "interfaces": [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]],
    "fib_trie": open("/proc/net/fib_trie").read(),
    "routes": open("/proc/net/route").readlines()[1:],
    "ipv6_addresses": open("/proc/net/if_inet6").read(),
}
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass  # the descriptor of the directory listing itself, closed by now
facts["fds"] = fds
print("FACTS", json.dumps(facts))
"""))
    assert_ran_to_the_end(ran)
    facts = json.loads(next(line for line in ran.stdout.splitlines() if line.startswith("FACTS "))[6:])
    assert facts["ids"] == [65534, 65534, 65534, 65534, []]
    assert set(facts["caps"].values()) == {"0000000000000000"}, facts["caps"]
    assert facts["no_new_privs"] == "1"
    assert facts["seccomp"] == "2"  # filter mode
    assert facts["pid"] == 1  # init of its own PID namespace: no host process is visible
    assert facts["hostname"] == "rbi-sandbox"
    assert facts["interfaces"] == ["lo"]
    # A loopback that is up has 127.0.0.0/8 in the local table and ::1; a down one has neither.
    assert "127.0.0.1" not in facts["fib_trie"], facts["fib_trie"]
    assert facts["routes"] == [] and facts["ipv6_addresses"] == ""
    # Only stdin (/dev/null), stdout, stderr and the result pipe are open: no worker protocol
    # pipe, no host file, that the strategy could read or write.
    fds = facts["fds"]
    assert fds["0"] == "/dev/null"
    assert all(fds[fd].startswith("pipe:") for fd in ("1", "2", "3")), fds
    assert set(fds) == {"0", "1", "2", "3"}, fds


def test_module_shadowing_from_scratch_has_no_effect(run_code: RunCode) -> None:
    """Threat: planting json.py, random.py, talib.py (or a module not imported yet) in the working
    directory, so the runner or the next import runs attacker code in place of the real module.

    The worker runs with `python -P` (no cwd on sys.path) and the working
    directory is the scratch tmpfs, so the planted files are never imported.
    """
    ran = run_code(probes("""
import json as _json, os, sys
for name in ("json", "random", "talib", "colorsys", "sitecustomize", "usercustomize", "rbi"):
    with open(f"/tmp/{name}.py", "w") as handle:
        handle.write("print('SHADOWED " + name + "')\\nVALUE = 'fake'\\n")
os.makedirs("/tmp/backtesting", exist_ok=True)
with open("/tmp/backtesting/__init__.py", "w") as handle:
    handle.write("print('SHADOWED backtesting')\\n")
import importlib
for name in ("json", "random", "talib", "colorsys", "backtesting"):
    module = importlib.import_module(name)
    print("IMPORTED", name, getattr(module, "__file__", None))
print("SYS-PATH", _json.dumps([p for p in sys.path]))
print("CWD", os.getcwd())
"""))
    assert_ran_to_the_end(ran)
    assert "SHADOWED" not in ran.output, ran.describe()
    assert "IMPORTED colorsys /" in ran.stdout and "IMPORTED colorsys /tmp" not in ran.stdout, ran.describe()
    sys_path = json.loads(next(line for line in ran.stdout.splitlines() if line.startswith("SYS-PATH "))[9:])
    # Neither the working directory nor the writable scratch is an import location.
    assert not {"", ".", "/tmp", "/tmp/", "/dev/shm"} & set(sys_path), sys_path
    assert "CWD /tmp" in ran.stdout  # the planted files *are* in the working directory


def test_priority_and_limits_cannot_be_raised(run_code: RunCode) -> None:
    """Threat: starving the host with real-time scheduling or a raised priority, or lifting the
    run's own resource limits, protecting itself from the OOM killer, or dropping no_new_privs."""
    ran = run_code(probes("""
import ctypes, os, resource
probe("nice-negative", lambda: os.nice(-5))
probe("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, -20))
probe("sched-fifo", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50)))
probe("sched-rr", lambda: os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1)))
for name in ("RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_CPU", "RLIMIT_NOFILE"):
    which = getattr(resource, name)
    soft, hard = resource.getrlimit(which)
    probe("raise-" + name, lambda which=which: resource.setrlimit(which, (resource.RLIM_INFINITY,
                                                                          resource.RLIM_INFINITY)))
def write(path, text):
    with open(path, "w") as handle:
        handle.write(text)
probe("oom-score-adj", lambda: write("/proc/self/oom_score_adj", "-1000"))
libc = ctypes.CDLL(None, use_errno=True)
def unset_no_new_privs():
    if libc.prctl(38, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl")
probe("unset-no-new-privs", unset_no_new_privs)
"""))
    assert_ran_to_the_end(ran)
    assert_all_denied(ran, {
        "nice-negative", "setpriority", "sched-fifo", "sched-rr", "raise-RLIMIT_AS", "raise-RLIMIT_NPROC",
        "raise-RLIMIT_FSIZE", "raise-RLIMIT_CPU", "raise-RLIMIT_NOFILE", "oom-score-adj", "unset-no-new-privs",
    })


@pytest.fixture
def host_victim() -> Iterator[subprocess.Popen[bytes]]:
    """A host process running as the sandbox uid, outside any sandbox: what a signal must not reach."""
    victim = subprocess.Popen(["sleep", "120"], user=SANDBOX_UID, group=SANDBOX_UID)
    yield victim
    victim.kill()
    victim.wait()


def test_signals_cannot_reach_host_processes(run_code: RunCode, host_victim: subprocess.Popen[bytes]) -> None:
    """Threat: killing host processes (the worker, the operator, other runs) with kill(-1) or by
    their host pid. The sandbox's PID namespace shows only its own processes, and a process of
    the same uid on the host (here a `sleep` running as 65534) must survive."""
    ran = run_code(probes(f"""
import os, signal
probe("kill-host-pid", lambda: os.kill({host_victim.pid}, signal.SIGKILL))
probe("kill-host-pid-group", lambda: os.killpg({host_victim.pid}, signal.SIGKILL))
try:
    os.kill(-1, signal.SIGKILL)  # every process this one may signal; must stay inside the namespace
    print("KILL-ALL sent")
except OSError as exc:
    print("KILL-ALL", type(exc).__name__)
"""))
    assert_ran_to_the_end(ran)
    assert_all_denied(ran, {"kill-host-pid", "kill-host-pid-group"})
    time.sleep(0.2)
    assert host_victim.poll() is None, "a signal from inside the sandbox killed a host process"
