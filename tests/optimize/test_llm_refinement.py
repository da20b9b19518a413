"""LLM code refinement inside the optimisation loop, against a scripted OpenAI-compatible server."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.llm.fake_openai import Reply, ScriptedOpenAI

from rbi.engine import LocalExecutor, prepare
from rbi.llm import LLMClient
from rbi.optimize.loop import Optimizer
from rbi.optimize.settings import parse_settings
from rbi.prepare.data import load_ohlcv
from rbi.spec import StrategySpec
from rbi.store import ResultStore

# Churns a position every bar: commissions eat it alive. Any sane change beats it out-of-sample.
CHURN = textwrap.dedent("""
    from backtesting import Strategy

    class Churn(Strategy):
        fast = 10

        def init(self):
            pass

        def next(self):
            if self.position:
                self.position.close()
            else:
                self.buy(size=0.9)
""")

IMPROVED = textwrap.dedent("""
    import talib
    from backtesting import Strategy
    from backtesting.lib import crossover

    class Churn(Strategy):
        fast = 10
        slow = 200

        def init(self):
            self.a = self.I(talib.SMA, self.data.Close, self.fast * 5)
            self.b = self.I(talib.SMA, self.data.Close, self.slow)

        def next(self):
            if crossover(self.a, self.b):
                self.buy(size=0.5, sl=self.data.Close[-1] * 0.95)
            elif crossover(self.b, self.a) and self.position:
                self.position.close()
""")

GOOD_ANSWER = (f"Change: trade only on SMA crossovers with a 5% stop-loss instead of every bar (risk management).\n\n"
               f"```python\n{IMPROVED}```\n")


def test_llm_proposal_becomes_a_child_and_garbage_stops_the_loop(tmp_path: Path, bundled_data: Path,
                                                                   monkeypatch: object) -> None:
    store = ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}")
    store.migrate()
    frame = load_ohlcv(bundled_data)
    index_times = [t.isoformat() for t in frame.index]
    settings = parse_settings({"objective": "return_pct", "method": "grid", "space": {"fast": [10]},
                               "maxTrials": 1, "maxIterations": 6, "minImprovement": 0.05,
                               "guards": {"minDeflatedSharpe": 0.0}})
    replies = [Reply.text(GOOD_ANSWER), Reply.text("I cannot help with that."), Reply.garbage_body()]
    with ScriptedOpenAI(*replies) as server, LocalExecutor(workers=2) as executor:
        run = prepare(StrategySpec(name="churn", code=CHURN, mode="class"))
        optimizer = Optimizer(run, settings, executor=executor, store=store, n_rows=len(frame),
                              index_times=index_times, batch_size=2, frame=frame,
                              llm=LLMClient(server.config()))
        result = optimizer.optimize()
        prompts = server.prompts

    methods = [i.method for i in result.iterations]
    assert methods[0] == "grid" and "llm_code" in methods
    llm_rounds = [i for i in result.iterations if i.method == "llm_code"]
    promoted = [i for i in llm_rounds if i.promoted]
    assert len(promoted) == 1, [(i.reason, i.guards) for i in llm_rounds]
    assert promoted[0].improvement is not None and promoted[0].improvement > 0.05
    # The two bad answers were rejected with a reason and ended the loop.
    rejected = [i for i in llm_rounds if not i.promoted]
    assert len(rejected) == 2 and all("rejected" in i.reason for i in rejected)
    assert "rejected" in result.stop_reason

    # The model saw the code, the statistics and, the second time, what was already tried.
    assert "class Churn" in prompts[0] and "return_pct" in prompts[0]
    assert "crossover" in prompts[1] or "stop-loss" in prompts[1]

    (edge,) = [e for e in store.lineage("churn") if e.optimization_type == "llm_code"]
    assert edge.changes_made.startswith("--- a/strategy.py") and "+++ b/strategy.py" in edge.changes_made
    assert edge.details is not None and edge.details["prompt_version"] >= 1 and edge.details["model"]
    child = next(v for v in store.versions("churn") if v.version == edge.child_version)
    assert child.source == "llm_code" and "crossover" in child.code and child.parent_version == edge.parent_version
    assert result.best.code is not None and "crossover" in result.best.code
