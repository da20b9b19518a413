"""The LLM agents one by one, through the real openai client against a scripted server (no sandbox needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.llm.fake_openai import Reply, ScriptedOpenAI
from tests.loop.answers import fenced, research_answer, strategy_code

from rbi.agents import AgentError, debug_code, error_signature, generate_strategy, idea_key
from rbi.agents.research import parse_research
from rbi.llm import LLMClient
from rbi.outcome import FailureClass, RunError, RunOutcome, Status
from rbi.store import ResultStore

SIZE_MESSAGE = "AssertionError: size must be a positive fraction of equity, or a positive whole number of units"


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "RBI_MODEL", "RBI_LLM_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as running:
        yield running


@pytest.fixture
def client(server: ScriptedOpenAI) -> LLMClient:
    return LLMClient(server.config(max_retries=0))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}") as opened:
        opened.migrate()
        yield opened


def failed(message: str, *, line: int | None = None, kind: FailureClass = FailureClass.RUNTIME_ERROR,
           detail: str | None = None, traceback: str | None = None) -> RunOutcome:
    return RunOutcome.failed(RunError(kind, message, line=line, detail=detail), traceback=traceback)


# --------------------------------------------------------------------------- generate_strategy


def test_generate_strategy_extracts_code_from_prose_around_several_blocks(
        server: ScriptedOpenAI, client: LLMClient, store: ResultStore) -> None:
    code = strategy_code("SmaTrend")
    answer = ("Sure! First install the dependencies:\n\n```bash\npip install backtesting TA-Lib\n```\n\n"
              f"{fenced(code, 'Then the strategy module:')}\n\nRun it like this:\n\n"
              "```python\nbt = Backtest(df, SmaTrend)\nprint(bt.run())\n```\n")
    server.enqueue(Reply.text(research_answer("sma-trend")), Reply.text(answer))
    idea = "Follow the trend with two moving averages"
    generated = generate_strategy(idea, client=client, store=store)

    assert generated.name == "sma-trend" and generated.strategy_class == "SmaTrend"
    assert "pip install" not in generated.code and "bt.run()" not in generated.code
    assert "class SmaTrend(Strategy)" in generated.code
    assert generated.params == {"fast": 10, "slow": 40}
    assert generated.space == {"fast": {"type": "int", "low": 5, "high": 10, "step": 1 * 5},
                               "slow": {"type": "int", "low": 40, "high": 40, "step": 20}}
    assert [r.agent for r in generated.records] == ["research", "backtest"]  # nothing left for the package agent
    assert generated.prompt_tokens > 0 and generated.completion_tokens > 0
    # The backtest agent was told the class name and the parameters with their defaults.
    assert "SmaTrend" in server.prompts[1] and "`fast = 10`" in server.prompts[1]
    stored = store.llm_calls(idea_key=idea_key(idea))
    assert [(c.agent, c.outcome, c.version) for c in stored] == [("research", "ok", None), ("backtest", "ok", None)]


def test_the_package_agent_gets_only_what_the_deterministic_rewrites_left(
        server: ScriptedOpenAI, client: LLMClient) -> None:
    needs_model = strategy_code("Helper").replace(
        "from backtesting.lib import crossover",
        "from backtesting.lib import crossover, magic_filter\nimport pandas_ta as ta\nimport requests")
    needs_model = needs_model.replace("        if crossover(",
                                      "        if magic_filter(self.data.Close) and crossover(")
    # The model's fix defines the helper locally, keeping class and parameters.
    packaged = strategy_code("Helper").replace(
        "class Helper", "def magic_filter(close):\n    return True\n\n\nclass Helper")
    server.enqueue(Reply.text(research_answer("helper")), Reply.text(fenced(needs_model)),
                   Reply.text(fenced(packaged)))
    generated = generate_strategy("an idea with a helper", client=client)

    assert [r.agent for r in generated.records] == ["research", "backtest", "package"]
    package_prompt = server.prompts[2]
    assert "magic_filter" in package_prompt
    # Deterministic rewrites happened first: the unused imports are gone before the model sees the code.
    # `import pandas_ta` stays: the sandbox serves it (pandas-ta-classic), so it is no problem to fix.
    assert "import requests" not in package_prompt and "import pandas_ta as ta" in package_prompt
    assert "pandas_ta is not installed" not in package_prompt
    assert {f.fixer for f in generated.fixes} >= {"unused_imports"}
    assert generated.code == packaged and not generated.problems


@pytest.mark.parametrize(("research", "backtest", "kind", "words"), [
    ("Momentum is a fine idea. Tell me more about your market.", None, "not_json", "no JSON specification"),
    (research_answer("x"), '{"code": "print(1)"}', "no_code", "JSON, not code"),
    (research_answer("x"), "```python\ndef signal(x):\n    return x > 1\n```", "no_strategy",
     "no backtesting.Strategy subclass"),
    (research_answer("x"), "I am sorry, I cannot write trading code.", "no_code", "not code"),
    (research_answer("x"), "```python\nclass A(Strategy):\n    def next(self)\n        pass\n```", "invalid",
     "does not parse"),
])
def test_unusable_answers_get_classified_errors(server: ScriptedOpenAI, client: LLMClient, store: ResultStore,
                                                research: str, backtest: str | None, kind: str,
                                                words: str) -> None:
    server.enqueue(Reply.text(research), *([Reply.text(backtest)] if backtest is not None else []))
    with pytest.raises(AgentError) as caught:
        generate_strategy("an idea", client=client, store=store)
    assert caught.value.kind == kind and words in str(caught.value)
    assert caught.value.records[-1].outcome == "garbage"
    # Nothing is lost: every call, the garbage one included, is in the store.
    assert [c.outcome for c in store.llm_calls(idea_key=idea_key("an idea"))] == \
        [r.outcome for r in caught.value.records]


def test_a_missing_key_and_an_empty_answer_are_llm_errors(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.unauthorized())
    with pytest.raises(AgentError) as caught:
        generate_strategy("an idea", client=client)
    assert (caught.value.kind, caught.value.llm_kind, caught.value.category) == ("llm", "auth", "llm_auth")
    assert "OPENAI_API_KEY" in str(caught.value) and "sk-test-scripted" not in str(caught.value)
    server.enqueue(Reply.empty())
    with pytest.raises(AgentError) as empty:
        generate_strategy("an idea", client=client)
    assert empty.value.category == "llm_empty" and "empty answer" in str(empty.value)


def test_research_answers_are_normalised() -> None:
    spec = parse_research(
        '```json\n{"name": "RSI Mean Reversion!", "rules": "buy oversold", "parameters": ['
        '{"name": "rsi_period", "default": 50, "low": 30, "high": 5},'
        '{"name": "threshold", "type": "float", "low": 20.5, "high": 35.5, "step": 0},'
        '{"name": "rsi_period", "low": 1, "high": 2}]}\n```', fallback_name="fallback")
    assert spec.name == "rsi-mean-reversion" and spec.class_name == "RsiMeanReversion"
    assert spec.rules == ("buy oversold",)
    period, threshold = spec.parameters
    assert (period.kind, period.low, period.high, period.default_value) == ("int", 5, 30, 18)
    assert threshold.kind == "float" and threshold.step is None
    with pytest.raises(AgentError, match="not a usable snake_case"):
        parse_research('{"rules": ["x"], "parameters": [{"name": "Bad Name", "low": 1, "high": 2}]}',
                       fallback_name="f")


# --------------------------------------------------------------------------- debug_code


def test_debug_applies_a_deterministic_fixer_without_a_model() -> None:
    code = strategy_code("Sized", size="1.5")
    result = debug_code(code, failed(SIZE_MESSAGE, line=20), client=None, attempt=1)
    assert result.changed and result.via == "fixer" and not result.records
    assert "size=1)" in result.code and "1.5" not in result.code and result.fixes[0].fixer == "position_size"


def test_debug_asks_the_model_with_the_failure_and_keeps_the_logic(server: ScriptedOpenAI,
                                                                   client: LLMClient) -> None:
    code = strategy_code("Named", next_extra="        threshold = undefined_threshold * 2\n")
    line = code.splitlines().index("        threshold = undefined_threshold * 2") + 1
    trace = ('Traceback (most recent call last):\n  File "/usr/lib/backtesting/backtesting.py", line 1, in run\n'
             '    strategy.next()\n  File "/sandbox/strategy.py", line 15, in next\n'
             "    threshold = undefined_threshold * 2\nNameError: name 'undefined_threshold' is not defined\n")
    outcome = failed("NameError: name 'undefined_threshold' is not defined", line=line, detail="NameError",
                     traceback=trace)
    removes_orders = strategy_code("Named").replace("self.buy(size=0.5)", "pass").replace("self.sell(size=0.5)",
                                                                                          "pass")
    server.enqueue(Reply.text(fenced(removes_orders, "Fix: no more trading, no more errors.")),
                   Reply.text(fenced(strategy_code("Named"), "Fix: removed the undefined name.")))
    rejected = debug_code(code, outcome, client=client, attempt=1)
    assert not rejected.changed and not rejected.gave_up and rejected.agent_error == "invalid"
    assert "must not change the strategy's logic" in rejected.reason
    prompt = server.prompts[0]
    assert line == 15 and "runtime_error" in prompt and '/sandbox/strategy.py", line 15' in prompt
    assert "backtesting.py" not in prompt.split("## Traceback")[1].split("## Code around")[0]
    assert "> 15 |         threshold = undefined_threshold * 2" in prompt

    fixed = debug_code(code, outcome, client=client, attempt=2)
    assert fixed.changed and fixed.via == "model" and fixed.records[0].attempt == 2
    assert "undefined_threshold" not in fixed.code


def test_debug_stops_on_a_repeated_error_and_without_a_model(server: ScriptedOpenAI, client: LLMClient) -> None:
    code = strategy_code("Again", next_extra="        x = 1 / 0\n")
    outcome = failed("ZeroDivisionError: division by zero", line=16, detail="ZeroDivisionError")
    signature = error_signature(outcome)
    repeated = debug_code(code, outcome, client=client, attempt=2, previous_errors=[signature])
    assert repeated.gave_up and repeated.same_error and "same error came back" in repeated.reason
    assert server.requests == []  # no model call for an error that came back
    # The operator keeps 'class: message' strings in the resource's status; they count as the same error.
    as_status = debug_code(code, outcome, client=client, attempt=2,
                           previous_errors=["runtime_error: ZeroDivisionError: division by zero"])
    assert as_status.gave_up and as_status.same_error and server.requests == []
    alone = debug_code(code, outcome, client=None, attempt=1)
    assert alone.gave_up and "no model is configured" in alone.reason
    exhausted = debug_code(code, outcome, client=client, attempt=4, max_attempts=3)
    assert exhausted.gave_up and "after 3 model attempt(s)" in exhausted.reason


def test_zero_trade_runs_get_a_diagnosis_that_the_model_sees(server: ScriptedOpenAI, client: LLMClient) -> None:
    code = strategy_code("Whole", size="50")
    outcome = RunOutcome(status=Status.NO_TRADES, stats={"num_trades": 0, "equity_final": 1000.0})
    server.enqueue(Reply.text(fenced(strategy_code("Whole", size="0.5"), "Fix: size as a fraction.")))
    result = debug_code(code, outcome, client=client, attempt=1)
    assert result.error_signature == "no_trades"
    assert any("whole units" in d for d in result.diagnosis)
    assert "no_trades" in server.prompts[0] and "whole units" in server.prompts[0]
    assert result.changed and "size=0.5" in result.code
