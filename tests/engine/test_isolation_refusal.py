"""Where isolation is missing rbi refuses to run and says how to fix it; --unsafe-no-sandbox runs anyway."""

from __future__ import annotations

import os
import textwrap
from dataclasses import replace

import pytest

from rbi.engine import LocalExecutor, prepare
from rbi.errors import SandboxUnavailable
from rbi.sandbox import pool as pool_module
from rbi.sandbox.probe import FIX_HINT, Check, isolation_problem
from rbi.spec import StrategySpec


def test_missing_required_primitives_are_named_with_a_fix() -> None:
    checks = [Check("namespaces (user, mount, network, pid, ipc, uts)", False, True, "EPERM from unshare"),
              Check("seccomp filter", True, True, "works"),
              Check("landlock", False, False, "not available")]
    problem = isolation_problem(checks)
    assert problem is not None
    assert "namespaces" in problem and "EPERM from unshare" in problem and FIX_HINT in problem
    assert "landlock" not in problem.split("(")[0]  # optional primitives do not block
    assert isolation_problem([Check("seccomp filter", True, True, "works")]) is None


def test_pool_refuses_without_isolation_unless_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the worker's probe found no namespaces: the hello message is what the pool trusts.
    original = pool_module.Worker.__init__

    def fake_init(self: pool_module.Worker) -> None:
        original(self)
        self.info["isolation_problem"] = "the sandbox cannot isolate strategies on this machine (test)"

    monkeypatch.setattr(pool_module.Worker, "__init__", fake_init)
    with pytest.raises(SandboxUnavailable, match="cannot isolate"):
        pool_module.WorkerPool(1)
    unsafe = pool_module.WorkerPool(1, unsafe=True)
    unsafe.close()


def test_unsafe_mode_runs_with_limits_and_a_scrubbed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-UNSAFE-SECRET")
    code = textwrap.dedent("""
        import os
        print("ENV", sorted(os.environ))
        print("KEY" if any("UNSAFE-SECRET" in v for v in os.environ.values()) else "NOKEY")
        print("UID", os.getuid())
        import time
        time.sleep(30)
    """)
    run = prepare(StrategySpec(name="unsafe", code=code, mode="script"), static_checks=False)
    run = replace(run, limits=run.limits.override(timeout=2))
    with LocalExecutor(workers=1, unsafe=True) as executor:
        outcome = executor.execute(run)
    assert outcome.error is not None and outcome.error.type.value == "timeout"
    assert "NOKEY" in outcome.stdout_tail and "OPENAI_API_KEY" not in outcome.stdout_tail
    # Without isolation the code runs as the calling user: that is exactly why it is opt-in.
    assert f"UID {os.getuid()}" in outcome.stdout_tail
