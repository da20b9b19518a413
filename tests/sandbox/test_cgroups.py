"""The worker's reusable cgroup: the same directories run after run, with counters started over."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from rbi.sandbox import cgroups


@pytest.fixture
def reusable() -> Iterator[cgroups.ReusableCgroup]:
    if not cgroups.available():
        pytest.skip("cgroups are not writable here")
    group = cgroups.ReusableCgroup(f"test-{os.getpid()}")
    yield group
    group.close()


def _run_in(group: cgroups.RunCgroup, megabytes: int) -> None:
    """A child that joins the group, touches `megabytes` of memory, and exits."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write)
        os.read(read, 1)  # wait until it is in the group
        ballast = bytearray(megabytes * 2**20)
        os._exit(0 if ballast else 1)
    os.close(read)
    group.add_process(pid)
    os.write(write, b"g")
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_the_peak_counter_resets_between_runs(reusable: cgroups.ReusableCgroup) -> None:
    first = reusable.acquire(memory_bytes=2**30, cpus=1, max_processes=16)
    assert first is not None
    _run_in(first, 120)
    assert (first.peak_memory() or 0) >= 120 * 2**20
    second = reusable.acquire(memory_bytes=2**30, cpus=1, max_processes=16)
    assert second is first and reusable.resets == 1  # the same directories, not new ones
    assert (second.peak_memory() or 0) < 40 * 2**20
    _run_in(second, 60)
    assert 60 * 2**20 <= (second.peak_memory() or 0) < 110 * 2**20


def test_limits_are_rewritten_and_oom_is_counted_per_run(reusable: cgroups.ReusableCgroup) -> None:
    group = reusable.acquire(memory_bytes=64 * 2**20, cpus=1, max_processes=16)
    assert group is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write)
        os.read(read, 1)
        ballast = bytearray(256 * 2**20)  # over the 64 MiB limit: the OOM killer ends it
        os._exit(0 if ballast else 1)
    os.close(read)
    group.add_process(pid)
    os.write(write, b"g")
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert group.oom_killed()
    again = reusable.acquire(memory_bytes=512 * 2**20, cpus=1, max_processes=16)
    assert again is group
    assert not again.oom_killed()  # the earlier kill belongs to the earlier run
    _run_in(again, 128)  # fits the new, larger limit


def test_groups_of_dead_workers_are_swept(reusable: cgroups.ReusableCgroup) -> None:
    """A worker killed with a run in flight leaves its reused group behind; the next worker removes it."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a pid that is certainly not running now
    own = cgroups._ROOT / "memory" / cgroups._own_path("memory").lstrip("/")
    if (cgroups._ROOT / "cgroup.controllers").exists():
        own = cgroups._ROOT / cgroups._own_path("").lstrip("/")
    stale = own / f"rbi-worker-{pid}"
    (stale / "run-1").mkdir(parents=True)
    mine = reusable.acquire(memory_bytes=2**30, cpus=1, max_processes=16)
    assert mine is not None
    assert cgroups.sweep_stale() >= 1
    assert not stale.exists()
    assert all(directory.exists() for directory in mine.dirs.values())  # a live worker's group stays
