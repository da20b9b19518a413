"""propose_code_change against a scripted server, through the real openai client."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest

from rbi.llm.client import LLMClient
from rbi.llm.prompts import load_prompt
from rbi.optimize.refine import (
    RefineError,
    classify_change,
    propose_code_change,
    summarize_trades,
)
from rbi.prepare.inspect_code import strategy_classes

from .fake_openai import Reply, ScriptedOpenAI

SMA_CROSS = """\
from backtesting import Strategy
from backtesting.lib import crossover
import talib


class SmaCross(Strategy):
    n1 = 10
    n2 = 20

    def init(self):
        self.sma1 = self.I(talib.SMA, self.data.Close, self.n1)
        self.sma2 = self.I(talib.SMA, self.data.Close, self.n2)

    def next(self):
        if crossover(self.sma1, self.sma2):
            self.position.close()
            self.buy()
        elif crossover(self.sma2, self.sma1):
            self.position.close()
            self.sell()
"""

WITH_STOP = """\
from backtesting import Strategy
from backtesting.lib import crossover
import talib


class SmaCross(Strategy):
    n1 = 10
    n2 = 20
    stop_loss_pct = 2.0

    def init(self):
        self.sma1 = self.I(talib.SMA, self.data.Close, self.n1)
        self.sma2 = self.I(talib.SMA, self.data.Close, self.n2)

    def next(self):
        price = self.data.Close[-1]
        if crossover(self.sma1, self.sma2):
            self.position.close()
            self.buy(sl=price * (1 - self.stop_loss_pct / 100))
        elif crossover(self.sma2, self.sma1):
            self.position.close()
            self.sell(sl=price * (1 + self.stop_loss_pct / 100))
"""

STATS: dict[str, Any] = {
    "return_pct": -12.345,
    "sharpe_ratio": -0.42,
    "max_drawdown_pct": -31.7,
    "win_rate_pct": 28.6,
    "num_trades": 7,
    "profit_factor": 0.61,
    "exposure_time_pct": 97.1,
    "sortino_ratio": float("nan"),
}
TRADES: list[dict[str, Any]] = [
    {"size": 1, "return_pct": 2.5, "duration_seconds": 3600.0},
    {"size": -1, "return_pct": -1.0, "duration_seconds": 7200.0},
    {"size": 1, "return_pct": -3.0, "duration_seconds": 900.0},
    {"size": 1, "return_pct": -0.5, "duration_seconds": 900.0},
    {"size": -1, "return_pct": 4.0, "duration_seconds": 86400.0},
    {"size": 1, "return_pct": None, "duration_seconds": None},
    {"size": 1, "return_pct": -2.0, "duration_seconds": 3600.0},
]
TRIED = ["Change: add an RSI confirmation to entries (sharpe -0.42 -> -0.50)", "Change: ATR trailing stop (failed)"]


def _answer(
    code: str, rationale: str = "Change: add a 2% stop-loss to every entry to cut the long losing streaks."
) -> str:
    return f"{rationale}\n\nHere is the whole module:\n\n```python\n{code}```\n\nThis keeps n1 and n2 unchanged.\n"


def _propose(client: LLMClient, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "code": SMA_CROSS,
        "stats": STATS,
        "trades": TRADES,
        "tried": TRIED,
        "objective": "sharpe_ratio",
        "maximize": True,
    }
    arguments.update(overrides)
    return propose_code_change(client, **arguments)


def _refused(server: ScriptedOpenAI, client: LLMClient, content: str) -> RefineError:
    server.enqueue(Reply.text(content))
    with pytest.raises(RefineError) as caught:
        _propose(client)
    return caught.value


# --------------------------------------------------------------------------- a good answer


def test_good_answer_gives_a_checked_proposal(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.text(_answer(WITH_STOP), completion_tokens=321))
    proposal = _propose(client)
    ast.parse(proposal.code)
    assert proposal.code == WITH_STOP
    assert strategy_classes(proposal.code) == ["SmaCross"]
    assert proposal.rationale == "add a 2% stop-loss to every entry to cut the long losing streaks."
    assert proposal.change_kind == "risk_management"
    assert proposal.prompt_version == load_prompt("refine_strategy").version
    assert proposal.completion.completion_tokens == 321
    assert proposal.diff.startswith("--- a/strategy.py\n+++ b/strategy.py\n")
    assert "+    stop_loss_pct = 2.0\n" in proposal.diff
    assert "-            self.buy()\n" in proposal.diff
    assert client.calls == {"optimize": 1}

    request = server.requests[0]
    prompt = request.user_message
    # the code, the stats, the trade summary, what was tried and the objective
    assert "class SmaCross(Strategy):" in prompt
    assert "Sharpe Ratio (`sharpe_ratio`): -0.42" in prompt
    assert "Return [%] (`return_pct`): -12.345" in prompt
    assert "Max. Drawdown [%] (`max_drawdown_pct`): -31.7" in prompt
    assert "Sortino Ratio (`sortino_ratio`): n/a" in prompt
    assert "closed trades: 7" in prompt
    assert "win rate: 33.333% (2 won, 4 lost)" in prompt
    assert "longest losing streak: 3 trades" in prompt
    assert "average win: 3.25%" in prompt and "average loss: -1.625%" in prompt
    assert "long / short: 5 / 2" in prompt
    assert "1. Change: add an RSI confirmation to entries" in prompt
    assert "2. Change: ATR trailing stop (failed)" in prompt
    assert "maximize `sharpe_ratio`" in prompt
    assert "class attributes of `SmaCross`" in prompt
    assert "$" not in prompt.replace("$$", "")  # every placeholder was filled
    assert "exactly ONE" in prompt
    assert request.system_message == load_prompt("refine_strategy").system


def test_prompt_never_carries_the_environment(server: ScriptedOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-proj-SECRET-FROM-ENV-42"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("RBI_DB_URL", "postgresql://user:hunter2@db/rbi")
    client = LLMClient(server.config(api_key=secret))
    server.enqueue(Reply.text(_answer(WITH_STOP)))
    _propose(client)
    raw = server.requests[0].text
    assert secret not in raw and "hunter2" not in raw


def test_minimize_and_no_history(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.text(_answer(WITH_STOP)))
    _propose(client, tried=[], objective="max_drawdown_pct", maximize=False, trades=None, stats={})
    prompt = server.requests[0].user_message
    assert "minimize `max_drawdown_pct`" in prompt
    assert "Nothing yet: this is the first proposed change." in prompt
    assert "no trade list was recorded" in prompt
    assert "no statistics" in prompt


# --------------------------------------------------------------------------- answers that are refused


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("I would add a stop-loss of 2% below the entry price to limit losses.", "words of prose"),
        ('{"code": "class SmaCross(Strategy): pass", "rationale": "stop"}', "JSON, not a fenced python block"),
        ("<!DOCTYPE html><html><body><h1>504 Gateway Time-out</h1></body></html>", "an HTML/XML page"),
        ("Change: none.\n```bash\npip install backtesting\n```\n", "shell commands"),
    ],
)
def test_answers_without_code(server: ScriptedOpenAI, client: LLMClient, content: str, detail: str) -> None:
    error = _refused(server, client, content)
    assert error.kind == "no_code"
    assert detail in str(error)
    assert error.completion is not None and error.completion.text == content


def test_unchanged_code(server: ScriptedOpenAI, client: LLMClient) -> None:
    reformatted = SMA_CROSS.replace("    n1 = 10\n", "    n1 = 10   \n\n")
    error = _refused(server, client, _answer(reformatted))
    assert error.kind == "unchanged"
    assert "only whitespace differs" in str(error)


def test_comment_only_change_is_unchanged(server: ScriptedOpenAI, client: LLMClient) -> None:
    commented = SMA_CROSS.replace("    n2 = 20\n", "    n2 = 20  # slow average\n")
    error = _refused(server, client, _answer(commented))
    assert error.kind == "unchanged"
    assert "comments or formatting" in str(error)


def test_forbidden_import_is_a_validation_error(server: ScriptedOpenAI, client: LLMClient) -> None:
    hostile = WITH_STOP.replace("import talib\n", "import talib\nimport subprocess\n")
    error = _refused(server, client, _answer(hostile))
    assert error.kind == "validation"
    assert "import of 'subprocess' is not allowed" in str(error)
    assert error.line == 4
    assert len(error.violations) == 1


def test_no_strategy_class(server: ScriptedOpenAI, client: LLMClient) -> None:
    plain = "import talib\n\n\ndef signal(close):\n    return talib.SMA(close, 10)\n"
    error = _refused(server, client, _answer(plain))
    assert error.kind == "no_strategy"
    assert "defines no backtesting.Strategy subclass" in str(error) and "SmaCross" in str(error)


def test_renamed_class(server: ScriptedOpenAI, client: LLMClient) -> None:
    error = _refused(server, client, _answer(WITH_STOP.replace("class SmaCross", "class SmaCrossWithStop")))
    assert error.kind == "no_strategy"
    assert "renamed the strategy class" in str(error) and "SmaCrossWithStop" in str(error)


def test_syntax_error_names_the_line(server: ScriptedOpenAI, client: LLMClient) -> None:
    broken = WITH_STOP.replace("    def next(self):\n", "    def next(self)\n")
    error = _refused(server, client, _answer(broken))
    assert error.kind == "syntax"
    assert error.line == 15
    assert "line 15" in str(error) and "def next(self)" in str(error)


def test_empty_answer_is_an_llm_error(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.empty())
    with pytest.raises(RefineError) as caught:
        _propose(client)
    assert caught.value.kind == "llm"
    assert "(empty)" in str(caught.value)


def test_garbage_body_is_an_llm_error(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.garbage_body())
    with pytest.raises(RefineError) as caught:
        _propose(client)
    assert caught.value.kind == "llm" and "bad_response" in str(caught.value)


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize(
    ("rationale", "kind"),
    [
        ("Add a 2% stop-loss and a 4% take-profit to each trade.", "risk_management"),
        ("Use an ATR trailing stop to protect gains.", "risk_management"),
        ("Only trade when ADX is above 25, a trend regime filter.", "regime_filter"),
        ("Scale the position size by inverse volatility.", "position_sizing"),
        ("Require RSI confirmation before entries and exit on the opposite crossover.", "entry_exit"),
        ("Rename variables for clarity.", "other"),
        ("", "other"),
    ],
)
def test_classify_change(rationale: str, kind: str) -> None:
    assert classify_change(rationale) == kind


def test_change_kind_comes_from_the_rationale(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(
        Reply.text(_answer(WITH_STOP, "**Change:** add a 200-bar SMA regime filter so longs only trade in uptrends"))
    )
    proposal = _propose(client)
    assert proposal.change_kind == "regime_filter"
    assert proposal.rationale.startswith("add a 200-bar SMA regime filter")


def test_summarize_trades_edge_cases() -> None:
    assert "never completed a trade" in summarize_trades([])
    assert "no trade list" in summarize_trades(None)
    text = summarize_trades([{"return_pct": None}, {"entry_bar": 3, "exit_bar": 9}])
    assert "returns per trade: not recorded" in text and "average duration: 6 bars" in text
    only_wins = summarize_trades([{"return_pct": 1.0, "duration_bars": 4}, {"return_pct": 3.0, "duration_bars": 8}])
    assert "n/a (no losing trade)" in only_wins and "longest losing streak: 0 trades" in only_wins
    assert "average duration: 6 bars" in only_wins
    timed = summarize_trades([{"return_pct": -1.0, "duration_seconds": 90000.0}])
    assert "average duration: 1d 1h" in timed


def test_scripted_requests_are_json(server: ScriptedOpenAI, client: LLMClient) -> None:
    server.enqueue(Reply.text(_answer(WITH_STOP)))
    _propose(client)
    assert json.loads(server.requests[0].raw)["messages"][1]["role"] == "user"
