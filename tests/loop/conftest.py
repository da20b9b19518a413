"""Fixtures for the agent and loop tests: a clean LLM environment, a small dataset, a warm sandbox pool."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbi.engine import LocalExecutor
from rbi.prepare.data import load_ohlcv
from rbi.store import ResultStore

# Fast settings for the optimizer: a 2x1 grid, one iteration, no look-ahead probe.
QUICK_OPTIMIZATION = {"objective": "sharpe_ratio", "method": "grid", "maxTrials": 2, "maxIterations": 1,
                      "guards": {"lookahead": False, "minDeflatedSharpe": 0.0}}


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's real key or endpoint must never be used by these tests.
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "RBI_MODEL", "RBI_LLM_CONFIG", "OPENAI_ORG_ID",
                 "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory, bundled_data: Path) -> Path:
    """The first 3,000 bars of the bundled data: enough for an SMA crossover to trade, quick to run."""
    path = tmp_path_factory.mktemp("data") / "BTC-USD-15m-small.csv"
    load_ohlcv(bundled_data).iloc[:3000].to_csv(path)
    return path


@pytest.fixture(scope="module")
def executor() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=2) as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}") as opened:
        opened.migrate()
        yield opened


def research_answer(name: str, *, fast: int = 10, slow: int = 40) -> str:
    spec = {
        "name": name,
        "summary": "Trend following with two simple moving averages.",
        "rules": ["entry: long when the fast SMA crosses above the slow SMA",
                  "exit: close and go short when it crosses below"],
        "indicators": ["SMA(Close, fast)", "SMA(Close, slow)"],
        "parameters": [
            {"name": "fast", "type": "int", "default": fast, "low": 5, "high": 10, "step": 5},
            {"name": "slow", "type": "int", "default": slow, "low": 40, "high": 40, "step": 20},
        ],
    }
    return f"Here is the specification:\n\n```json\n{json.dumps(spec, indent=2)}\n```\n"


def strategy_code(class_name: str, *, size: str = "0.5", init_extra: str = "", next_extra: str = "") -> str:
    """An SMA crossover; `init_extra` and `next_extra` are lines at method-body indentation (8 spaces)."""
    template = textwrap.dedent("""\
        import talib
        from backtesting import Strategy
        from backtesting.lib import crossover


        class CLASS(Strategy):
            fast = 10
            slow = 40

            def init(self):
                self.sma_fast = self.I(talib.SMA, self.data.Close, self.fast)
                self.sma_slow = self.I(talib.SMA, self.data.Close, self.slow)
        INIT_EXTRA
            def next(self):
        NEXT_EXTRA
                if crossover(self.sma_fast, self.sma_slow):
                    self.position.close()
                    self.buy(size=SIZE)
                elif crossover(self.sma_slow, self.sma_fast):
                    self.position.close()
                    self.sell(size=SIZE)
        """)
    code = template.replace("CLASS", class_name).replace("SIZE", size)
    code = code.replace("INIT_EXTRA\n", init_extra.rstrip("\n") + "\n" if init_extra else "\n")
    return code.replace("NEXT_EXTRA\n", next_extra.rstrip("\n") + "\n" if next_extra else "")


def fenced(code: str, prose: str = "Here is the strategy:") -> str:
    return f"{prose}\n\n```python\n{code}```\n\nIt trades crossovers of the two averages."
