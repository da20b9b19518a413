"""extract_code on the answers that LLMs actually give."""

from __future__ import annotations

import ast
import textwrap

import pytest

from rbi.errors import ExtractionError
from rbi.outcome import FailureClass
from rbi.prepare.extract import extract_code

STRATEGY = textwrap.dedent(
    """\
    import talib
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover


    class RsiCross(Strategy):
        fast = 10
        slow = 30

        def init(self):
            self.rsi_fast = self.I(talib.RSI, self.data.Close, self.fast)
            self.rsi_slow = self.I(talib.RSI, self.data.Close, self.slow)

        def next(self):
            if crossover(self.rsi_fast, self.rsi_slow):
                self.buy(size=0.5)
            elif crossover(self.rsi_slow, self.rsi_fast):
                self.position.close()
    """
)

SCRIPT_TAIL = textwrap.dedent(
    """\
    import pandas as pd

    data = pd.read_csv("/Users/someone/src/data/rbi/BTC-USD-15m.csv")
    bt = Backtest(data, RsiCross, cash=1_000_000, commission=0.002)
    stats = bt.run()
    print(stats)
    """
)

STATS_OUTPUT = textwrap.dedent(
    """\
    Start                     2023-01-01 00:00:00
    End                       2023-11-20 19:15:00
    Duration                    323 days 19:15:00
    Return [%]                          -60.87847
    # Trades                                  571
    """
)


def _fence(code: str, tag: str = "python", fence: str = "```") -> str:
    return f"{fence}{tag}\n{code.rstrip()}\n{fence}"


def test_bare_code_is_returned_unchanged() -> None:
    assert extract_code(STRATEGY) == STRATEGY


def test_prose_around_one_block() -> None:
    answer = (
        "Sure! Here's a backtesting.py strategy that trades RSI crossovers.\n\n"
        f"{_fence(STRATEGY)}\n\n"
        "**How it works:**\n- `fast` and `slow` set the RSI periods.\n- Positions use half the equity.\n"
    )
    assert extract_code(answer) == STRATEGY


@pytest.mark.parametrize("tag", ["python", "py", "Python", "python3", "", "{python}"])
def test_fence_tags(tag: str) -> None:
    assert extract_code("Code:\n" + _fence(STRATEGY, tag=tag)) == STRATEGY


def test_tilde_fences() -> None:
    assert extract_code("Code:\n" + _fence(STRATEGY, fence="~~~")) == STRATEGY


def test_indented_block_inside_a_list() -> None:
    indented = textwrap.indent(_fence(STRATEGY), "   ")
    assert extract_code(f"1. Save this as `strategy.py`:\n\n{indented}\n\n2. Run it.") == STRATEGY


def test_unclosed_fence_at_the_end() -> None:
    # A complete class-only module whose answer lost its closing fence still runs.
    strategy = STRATEGY.replace("from backtesting import Backtest, Strategy", "from backtesting import Strategy")
    answer = "Here is the full code:\n\n```python\n" + strategy
    assert extract_code(answer) == strategy


def test_unclosed_fence_before_the_run_section_is_cut_off() -> None:
    # It imported Backtest for a run it never reached: max tokens ended it between two statements.
    answer = "Here is the full code:\n\n```python\n" + STRATEGY
    with pytest.raises(ExtractionError, match=r"^line 18: the answer was cut off .*\(line 21 of the input\)"):
        extract_code(answer)


def test_install_command_and_output_blocks_are_skipped() -> None:
    answer = (
        "First install the dependencies:\n\n"
        f"{_fence('pip install backtesting TA-Lib pandas', tag='bash')}\n\n"
        "Then the strategy:\n\n"
        f"{_fence(STRATEGY + chr(10) + SCRIPT_TAIL)}\n\n"
        "Here is the output:\n\n"
        f"{_fence(STATS_OUTPUT, tag='')}\n"
    )
    code = extract_code(answer)
    assert code == STRATEGY + "\n" + SCRIPT_TAIL
    assert "pip install" not in code and "Duration" not in code


def test_untagged_shell_block_is_skipped() -> None:
    answer = f"{_fence('pip install backtesting', tag='')}\n\nThen:\n\n{_fence(STRATEGY, tag='')}"
    assert extract_code(answer) == STRATEGY


def test_usage_snippet_after_the_strategy_is_not_chosen() -> None:
    usage = "bt = Backtest(data, RsiCross, cash=10_000)\nstats = bt.optimize(fast=range(5, 20))\n"
    answer = f"The strategy:\n{_fence(STRATEGY)}\n\nTo optimise it:\n{_fence(usage)}\n"
    assert extract_code(answer) == STRATEGY


def test_final_complete_version_wins_over_an_earlier_one() -> None:
    revised = STRATEGY.replace("size=0.5", "size=0.25")
    answer = f"First draft:\n{_fence(STRATEGY)}\n\nImproved version:\n{_fence(revised)}\n"
    assert extract_code(answer) == revised


def test_fragments_are_joined_in_order() -> None:
    imports, _, rest = STRATEGY.partition("\n\n\n")
    answer = (
        f"Start with the imports:\n{_fence(imports)}\n\n"
        f"Then define the strategy:\n{_fence(rest)}\n\n"
        f"And run it:\n{_fence(SCRIPT_TAIL)}\n"
    )
    code = extract_code(answer)
    tree = ast.parse(code)
    assert code.index("import talib") < code.index("class RsiCross") < code.index("bt.run()")
    assert any(isinstance(node, ast.ClassDef) and node.name == "RsiCross" for node in tree.body)


def test_block_with_a_syntax_error_is_still_returned() -> None:
    broken = STRATEGY.replace("def next(self):", "def next(self)")
    code = extract_code(f"Here you go:\n{_fence(broken)}")
    assert code == broken
    with pytest.raises(SyntaxError):
        ast.parse(code)


def test_notebook_magics_are_commented_out_keeping_line_numbers() -> None:
    block = "!pip install backtesting\n%matplotlib inline\n" + STRATEGY
    code = extract_code(_fence(block))
    ast.parse(code)
    assert code.splitlines()[0] == "# !pip install backtesting"
    assert code.splitlines().index("class RsiCross(Strategy):") == block.splitlines().index(
        "class RsiCross(Strategy):"
    )


def test_stats_only_answer_is_not_code() -> None:
    with pytest.raises(ExtractionError, match="not Python"):
        extract_code(f"Here is the output:\n\n{_fence(STATS_OUTPUT, tag='')}\n")


def test_only_shell_commands() -> None:
    with pytest.raises(ExtractionError, match=r"1 fenced block\(s\)"):
        extract_code(f"Run:\n{_fence('pip install backtesting', tag='bash')}")


@pytest.mark.parametrize(
    "answer",
    [
        "I'm sorry, but I can't help with building a trading strategy for that market.",
        "Sorry",
        "The strategy buys when RSI(10) crosses above RSI(30) and sells on the opposite cross.\n"
        "Use a 0.2% commission.",
    ],
)
def test_prose_only(answer: str) -> None:
    with pytest.raises(ExtractionError, match="prose") as caught:
        extract_code(answer)
    assert caught.value.failure_class is FailureClass.SYNTAX_ERROR


@pytest.mark.parametrize("answer", ["", "   \n\t\n"])
def test_empty(answer: str) -> None:
    with pytest.raises(ExtractionError, match="empty"):
        extract_code(answer)


def test_leftover_language_tag_line_is_blanked() -> None:
    code = extract_code("python\n" + STRATEGY)
    assert code == "\n" + STRATEGY  # line numbers stay where the model put them
    ast.parse(code)


def test_unfenced_code_between_prose_lines() -> None:
    answer = f"Here's the complete strategy:\n\n{STRATEGY}\nLet me know if you want a trailing stop too!\n"
    assert extract_code(answer) == STRATEGY


def test_unfenced_prose_that_mentions_imports_is_still_prose() -> None:
    answer = "import the data first, then\nclass it as a trend day.\nNo code needed."
    with pytest.raises(ExtractionError, match="prose"):
        extract_code(answer)
