"""The AST layer in front of the sandbox: the obvious escapes fail early, with a line number.

These checks are defence in depth, not the boundary (every other test in this
directory runs with them off). What they must give is a fast validation_error
that points at the offending line, before any sandbox starts.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from rbi.engine import PreparationFailed
from rbi.outcome import FailureClass, Status

from .hostile import make_run

CASES = [
    ("import math\nimport subprocess\nsubprocess.run(['id'])\n", 2, "subprocess"),
    ("import os\n\nos.system('id > /tmp/x')\n", 3, "os.system"),
    ("import math\nimport socket\nsocket.create_connection(('127.0.0.1', 80))\n", 2, "socket"),
    ("import ctypes\nctypes.CDLL(None).syscall(41, 2, 1, 0)\n", 1, "ctypes"),
    ("import os\nwhile True:\n    os.fork()\n", 3, "os.fork"),
    ("x = 1\nmod = __import__('os')\n", 2, "__import__"),
    # Plain writes are the sandbox's to confine (they land in the capped scratch); deleting is refused here.
    ("from pathlib import Path\nPath('/sandbox/strategy.py').unlink()\n", 2, ".unlink()"),
    ("x = ().__class__.__bases__[0].__subclasses__()\n", 1, "__bases__"),
    ("import sys\n\n\nsys.modules['os'].system('id')\n", 4, "sys.modules"),
    ("import os\nprint(os.environ['OPENAI_API_KEY'])\n", 2, "os.environ"),
]


@pytest.mark.parametrize(("code", "line", "needle"), CASES,
                         ids=["subprocess", "os-system", "socket", "ctypes", "fork", "dunder-import",
                              "path-unlink", "subclasses", "sys-modules", "environ"])
def test_static_checks_reject_obvious_escapes_with_a_line(tmp_path: Path, code: str, line: int,
                                                           needle: str) -> None:
    """Threat: the textbook escapes (subprocess, sockets, ctypes, fork, __import__,
    file deletion, interpreter internals, environment reads), caught before anything runs."""
    started = time.monotonic()
    with pytest.raises(PreparationFailed) as caught:
        make_run(textwrap.dedent(code), cache=tmp_path, static_checks=True)
    outcome = caught.value.outcome
    assert outcome.status is Status.FAILED
    assert outcome.error is not None
    assert outcome.error.type is FailureClass.VALIDATION_ERROR, outcome.error
    assert outcome.error.line == line, outcome.error
    assert f"line {line}:" in outcome.error.message
    assert needle in outcome.error.message, outcome.error.message
    assert time.monotonic() - started < 1.0  # early: no sandbox, no dataset


def test_static_checks_pass_a_plain_strategy(tmp_path: Path) -> None:
    """Control: an ordinary class-mode strategy is not flagged."""
    code = textwrap.dedent("""
        import talib
        from backtesting import Strategy
        from backtesting.lib import crossover

        class SmaCross(Strategy):
            def init(self):
                self.fast = self.I(talib.SMA, self.data.Close, 10)
                self.slow = self.I(talib.SMA, self.data.Close, 30)

            def next(self):
                if crossover(self.fast, self.slow):
                    self.buy()
                elif crossover(self.slow, self.fast):
                    self.position.close()
    """)
    run = make_run(code, cache=tmp_path, mode="class", static_checks=True)
    assert run.mode == "class"
