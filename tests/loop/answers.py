"""Scripted model answers and strategy code for the agent and loop tests."""

from __future__ import annotations

import json
import textwrap

# Fast settings for the optimizer: a 2x1 grid, one iteration, no look-ahead probe.
QUICK_OPTIMIZATION = {"objective": "sharpe_ratio", "method": "grid", "maxTrials": 2, "maxIterations": 1,
                      "guards": {"lookahead": False, "minDeflatedSharpe": 0.0}}


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
