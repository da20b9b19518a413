"""Helpers for the hostile-strategy suite: run code in the sandbox and observe the host around it."""

from __future__ import annotations

import os
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rbi.engine import PreparedRun, prepare
from rbi.outcome import FailureClass, RunOutcome, Status
from rbi.sandbox.jail import SANDBOX_UID
from rbi.sandbox.limits import SandboxLimits
from rbi.spec import StrategySpec

# Small limits so bombs hit them quickly on a 2-core machine.
LIMITS = SandboxLimits(timeout_seconds=10, memory_bytes=512 * 2**20, disk_bytes=20 * 10**6)
# Failure classes a strategy can earn; sandbox_error means the platform broke.
STRATEGY_CLASSES = frozenset(FailureClass) - {FailureClass.SANDBOX_ERROR}


@dataclass(frozen=True, slots=True)
class Ran:
    """One finished run, plus what the host measured around it."""

    outcome: RunOutcome
    wall: float

    @property
    def kind(self) -> FailureClass | None:
        return self.outcome.error.type if self.outcome.error else None

    @property
    def stdout(self) -> str:
        return self.outcome.stdout_tail

    @property
    def output(self) -> str:
        return self.outcome.stdout_tail + self.outcome.stderr_tail

    def describe(self) -> str:
        """Everything useful for an assertion message."""
        error = self.outcome.error
        return (
            f"status={self.outcome.status} kind={error.type if error else None} "
            f"detail={error.detail if error else None} message={error.message if error else None!r} "
            f"wall={self.wall:.2f}s\n--- stdout tail ---\n{self.outcome.stdout_tail[-2000:]}"
            f"\n--- stderr tail ---\n{self.outcome.stderr_tail[-2000:]}"
        )


def make_run(code: str, *, cache: Path, mode: str = "script", static_checks: bool = False,
             **limits: object) -> PreparedRun:
    spec = StrategySpec(name="hostile", code=textwrap.dedent(code), mode=mode,
                        limits=replace(LIMITS, **limits))  # type: ignore[arg-type]
    return prepare(spec, static_checks=static_checks, cache_dir=cache)


# --------------------------------------------------------------------------- host observations


def sandbox_uid_processes() -> dict[int, str]:
    """Host processes whose real uid is the sandbox uid: pid -> 'state name'."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue  # exited while we looked
        uid = fields.get("Uid", "").split()
        if uid and int(uid[0]) == SANDBOX_UID:
            found[int(entry)] = f"{fields.get('State', '?').strip()} {fields.get('Name', '?').strip()}"
    return found


def host_process_count() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


def leftover_sandbox_processes(before: dict[int, str], *, wait: float = 5.0) -> dict[int, str]:
    """Sandbox-uid processes that appeared since `before` and are still there after `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        extra = {pid: what for pid, what in sandbox_uid_processes().items() if pid not in before}
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.1)


def assert_failed_as(ran: Ran, expected: FailureClass | set[FailureClass]) -> None:
    wanted = expected if isinstance(expected, set) else {expected}
    assert ran.outcome.status is Status.FAILED, ran.describe()
    assert ran.kind in wanted, ran.describe()


def assert_ran_to_the_end(ran: Ran) -> None:
    """The hostile script finished on its own (so every probe ran) and ran no backtest."""
    assert "PROBES-DONE" in ran.stdout, ran.describe()
    assert_failed_as(ran, FailureClass.RUNTIME_ERROR)
    assert ran.outcome.error is not None and ran.outcome.error.detail == "no_backtest", ran.describe()
