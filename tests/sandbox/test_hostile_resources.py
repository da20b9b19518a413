"""Hostile strategies that try to exhaust the machine: processes, memory, CPU time, output and disk.

Each must be stopped by its limit, classified with the matching failure class
(never sandbox_error, which would blame the platform), and leave nothing
running or written on the host.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rbi.engine import LocalExecutor
from rbi.outcome import FailureClass, RunOutcome, Status
from rbi.sandbox.jail import SANDBOX_UID

from .hostile import (
    OPTIMIZE_SCRIPT,
    STRATEGY_CLASSES,
    Ran,
    assert_failed_as,
    assert_ran_to_the_end,
    host_processes,
    leftover_sandbox_processes,
    make_run,
    our_worker_pids,
    sandbox_uid_processes,
)

RunCode = Callable[..., Ran]
# Generous slack for a loaded 2-core machine; a run that is not stopped takes far longer.
MARGIN = 8.0

FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""

THREAD_BOMB = """
import threading, time
threads = []
while True:
    t = threading.Thread(target=time.sleep, args=(10**6,), daemon=True)
    t.start()
    threads.append(t)
"""


@pytest.mark.parametrize("code", [FORK_BOMB, THREAD_BOMB], ids=["fork-bomb", "thread-bomb"])
def test_process_and_thread_bombs_are_contained(run_code: RunCode, code: str) -> None:
    """Threat: a fork or thread bomb that exhausts the host's process table and CPUs.

    The pids cgroup and RLIMIT_NPROC cap the bomb; the wall-clock kill of the PID
    namespace's init takes every copy down with it. When execute() returns, no
    process of the run may remain on the host, not even a zombie.
    """
    before = sandbox_uid_processes()
    ran = run_code(code, timeout_seconds=3)
    assert ran.kind in STRATEGY_CLASSES, ran.describe()
    assert_failed_as(ran, {FailureClass.TIMEOUT, FailureClass.RUNTIME_ERROR})
    assert ran.wall < 3 + MARGIN, ran.describe()
    assert leftover_sandbox_processes(before) == {}


def test_fork_bomb_does_not_starve_a_concurrent_run(executor: LocalExecutor, dataset_cache: Path) -> None:
    """Threat: a fork bomb in one run exhausting the process budget of every other run.

    All runs share the host uid 65534, so a process limit counted per host user
    would let one run's bomb make a concurrent, innocent optimisation fail to
    start its pool ("can't start new thread"), and blame that run for it. The
    limits must be per run.
    """
    # Both workers are warm (the fixture starts them): a worker spawned on demand would take
    # longer to start than the bomb lives.
    assert len(our_worker_pids(pool=executor.pool)) == 2
    bomb = make_run(FORK_BOMB, cache=dataset_cache, timeout_seconds=5)
    # The innocent run forks its pool a second in, when the bomb has reached its limit. It prints
    # when (CLOCK_MONOTONIC is shared with the host), to prove that the two really overlapped.
    innocent = make_run("import time\ntime.sleep(1.0)\nprint('OPTIMIZE-AT', time.monotonic())\n"
                        + OPTIMIZE_SCRIPT, cache=dataset_cache, timeout_seconds=30)
    with ThreadPoolExecutor(max_workers=2) as threads:
        bomb_start = time.monotonic()
        bomb_future = threads.submit(executor.execute, bomb)
        time.sleep(0.3)
        innocent_outcome = threads.submit(executor.execute, innocent).result()
        bomb_outcome = bomb_future.result()
    assert bomb_outcome.error is not None and bomb_outcome.error.type is FailureClass.TIMEOUT, bomb_outcome
    assert innocent_outcome.status is Status.SUCCEEDED, (innocent_outcome.error, innocent_outcome.stderr_tail)
    optimize_at = float(innocent_outcome.stdout_tail.split("OPTIMIZE-AT ")[1].split()[0])
    assert bomb_start + 1.0 < optimize_at < bomb_start + 4.5, "the runs did not overlap; the test proves nothing"


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(10**10)\nprint('ESCAPED', len(x))",
        "import numpy as np\nx = np.ones(10**10)\nprint('ESCAPED', x.nbytes)",
        # Gradual growth: no single allocation is large.
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10 * 2**20))\n",
        # Memory that RLIMIT_AS does not see: shmem pages in many memfds, each under the file-size
        # limit. Only the memory cgroup stops this one.
        (
            "import os\nfds = []\nblock = b'x' * 2**20\nwhile True:\n"
            "    fd = os.memfd_create('hog')\n    fds.append(fd)\n"
            "    for _ in range(15):\n        os.write(fd, block)\n"
        ),
    ],
    ids=["sudden-bytearray", "sudden-numpy", "gradual", "memfd-shmem"],
)
def test_memory_bombs_hit_the_memory_limit(run_code: RunCode, code: str) -> None:
    """Threat: exhausting host RAM, at once or gradually, including through memfd shared memory."""
    ran = run_code(code, timeout_seconds=20, memory_bytes=256 * 2**20)
    assert "ESCAPED" not in ran.stdout, ran.describe()
    assert_failed_as(ran, FailureClass.MEMORY_LIMIT)
    assert ran.wall < 20, ran.describe()


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    pass\n",
        "import time\ntime.sleep(10**9)\n",
        # Ignoring the polite signals must not help: the kill is SIGKILL.
        (
            "import signal, time\n"
            "for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGXCPU):\n"
            "    signal.signal(sig, signal.SIG_IGN)\n"
            "time.sleep(10**9)\n"
        ),
        # CPU time in C code, where Python never checks for signals.
        "import numpy as np\nm = np.ones((3000, 3000))\nwhile True:\n    m = m @ m / 3000.0\n",
    ],
    ids=["busy-loop", "sleep-forever", "ignore-sigterm", "numpy-busy"],
)
def test_endless_runs_time_out(run_code: RunCode, code: str) -> None:
    """Threat: a strategy that never ends, sleeps forever or ignores SIGTERM, holding a worker hostage."""
    before = sandbox_uid_processes()
    ran = run_code(code, timeout_seconds=2)
    assert_failed_as(ran, FailureClass.TIMEOUT)
    assert ran.wall < 2 + MARGIN, ran.describe()
    assert leftover_sandbox_processes(before) == {}


def test_setsid_double_fork_does_not_survive_the_run(run_code: RunCode) -> None:
    """Threat: daemonising (fork, setsid, fork) so a child outlives the run and keeps running on the host.

    The parent ends normally (no backtest), so this is classified as its own
    runtime_error; what matters is that the grandchild is gone afterwards.
    """
    code = """
    import os, time
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, b"daemon-started\\n")
            while True:
                time.sleep(1)
        os._exit(0)
    os.close(w)
    print(os.read(r, 100).decode().strip())
    print("PROBES-DONE")
    """
    before = sandbox_uid_processes()
    ran = run_code(code, timeout_seconds=5)
    assert "daemon-started" in ran.stdout, ran.describe()
    assert_ran_to_the_end(ran)
    # The parent left; the run must not wait for the daemon until the timeout.
    assert ran.wall < 5, ran.describe()
    assert leftover_sandbox_processes(before) == {}


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    print('spam ' * 20)\n",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 10**8)\n",
        "import sys\nwhile True:\n    sys.stderr.write('warning: ' * 1000 + '\\n')\n",
        # Raw writes to fd 1, around Python's buffers.
        "import os\nwhile True:\n    os.write(1, b'y' * 65536)\n",
    ],
    ids=["endless-print", "giant-line", "stderr-flood", "raw-fd-write"],
)
def test_output_floods_hit_the_output_limit(run_code: RunCode, code: str) -> None:
    """Threat: flooding stdout/stderr to exhaust host memory or disk through the captured output."""
    ran = run_code(code, timeout_seconds=10, max_output_bytes=2**20)
    assert_failed_as(ran, FailureClass.OUTPUT_LIMIT)
    assert ran.wall < 10, ran.describe()
    # The host keeps a bounded tail, whatever was printed.
    assert len(ran.outcome.stdout_tail) + len(ran.outcome.stderr_tail) < 64 * 1024


@pytest.mark.parametrize(
    "code",
    [
        "with open('/tmp/huge', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)\n",
        "import os\ni = 0\nwhile True:\n    open(f'/tmp/f{i}', 'w').close()\n    i += 1\n",
        "with open('/dev/shm/huge', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)\n",
        # Many files just under the size limit each: the tmpfs size, not RLIMIT_FSIZE, stops it.
        (
            "i = 0\nwhile True:\n    with open(f'/tmp/part{i}', 'wb') as f:\n"
            "        f.write(b'x' * 4 * 10**6)\n    i += 1\n"
        ),
    ],
    ids=["huge-file", "inode-exhaustion", "dev-shm", "many-large-files"],
)
def test_disk_fills_hit_the_disk_limit(run_code: RunCode, code: str) -> None:
    """Threat: filling the host's disk or inode table from the scratch directory."""
    ran = run_code(code, timeout_seconds=20, max_files=300)
    assert_failed_as(ran, FailureClass.DISK_LIMIT)
    assert ran.wall < 20, ran.describe()


def test_scratch_files_never_reach_the_host(run_code: RunCode) -> None:
    """Threat: leaving files on the host (or reading them back later) through /tmp and /dev/shm.

    The scratch tmpfs lives only in the run's mount namespace: nothing written
    there exists on the host afterwards, and no sandbox mount leaks to the host.
    """
    token = f"rbi-hostile-{uuid.uuid4().hex}"
    code = f"""
    import os
    for directory in ("/tmp", "/dev/shm", "/tmp/.shm"):
        if os.path.isdir(directory):
            path = os.path.join(directory, "{token}")
            with open(path, "w") as handle:
                handle.write("left behind")
            print("WROTE", path, os.path.exists(path))
    print("PROBES-DONE")
    """
    ran = run_code(code)
    assert "WROTE /tmp/" in ran.stdout and "WROTE /dev/shm/" in ran.stdout, ran.describe()
    assert_ran_to_the_end(ran)
    assert glob.glob(f"/tmp/**/{token}*", recursive=True) == []
    assert glob.glob(f"/dev/shm/**/{token}*", recursive=True) == []
    with open("/proc/self/mounts") as handle:
        mounts = handle.read()
    assert "rbi-scratch" not in mounts and "rbi-root" not in mounts
    # The directory the sandbox mounts its root over stays empty on the host.
    for newroot in glob.glob("/tmp/.rbi-newroot*") + glob.glob("/tmp/rbi-newroot-*"):
        assert os.listdir(newroot) == [], newroot


def test_run_dies_with_its_worker(dataset_cache: Path) -> None:
    """Threat: a run that outlives its worker. The wall-clock timeout lives in the worker; when the
    worker is killed (the pool kills a wedged one) or crashes, a strategy that sleeps or spins
    must not run on unbounded, orphaned on the host.

    Uses a dedicated executor, since it kills the worker. Only the worker itself is killed
    (not its process group), which is the harder case: each sandbox process must notice its
    parent's death on its own.
    """
    existing = our_worker_pids()
    with LocalExecutor(workers=1) as ex:
        ex.pool  # start the worker  # noqa: B018
        (worker,) = our_worker_pids() - existing
        outcome: list[RunOutcome] = []
        thread = threading.Thread(target=lambda: outcome.append(ex.execute(
            make_run("import time\nprint('started', flush=True)\ntime.sleep(10**6)\n",
                     cache=dataset_cache, timeout_seconds=120))))
        thread.start()
        deadline = time.monotonic() + 20
        run_processes: set[int] = set()
        while time.monotonic() < deadline:
            table = host_processes()
            run_processes = {p.pid for p in table.values() if p.ppid == worker}  # S
            run_processes |= {p.pid for p in table.values() if p.ppid in run_processes}  # P
            if any(table[pid].uid == SANDBOX_UID for pid in run_processes):
                break
            time.sleep(0.1)
        assert any(p.uid == SANDBOX_UID for pid, p in host_processes().items() if pid in run_processes)
        os.kill(worker, signal.SIGKILL)
        thread.join(30)
        assert not thread.is_alive()
    # The platform failed, not the strategy.
    assert outcome[0].error is not None and outcome[0].error.type is FailureClass.SANDBOX_ERROR, outcome
    deadline = time.monotonic() + 5
    while True:
        alive = {pid: p.description for pid, p in host_processes().items()
                 if pid in run_processes and "State=Z" not in p.description}
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert alive == {}, "the sandboxed run survived the death of its worker"
