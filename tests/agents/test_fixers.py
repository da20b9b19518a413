"""The deterministic fixers, on real generated-code shapes, run for real with backtesting.py."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from rbi.agents.fixers import (
    FixResult,
    diagnose_no_trades,
    fix_for_failure,
    package,
)
from rbi.integrity import verify_report
from rbi.prepare.data import load_ohlcv
from rbi.prepare.inspect_code import check_code
from rbi.runner import RunRequest, encode_report, execute

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "operator" / "rbi" / "datasets" / "BTC-USD-15m.csv.gz"
SIZE_MESSAGE = "AssertionError: size must be a positive fraction of equity, or a positive whole number of units"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return load_ohlcv(DATA).iloc[:3000]


def run(code: str, tmp_path: Path, frame: pd.DataFrame, name: str = "strategy.py") -> dict[str, Any]:
    path = tmp_path / name
    path.write_text(code, encoding="utf-8")
    report = execute(RunRequest(mode="class", code_path=str(path), include_series=False), frame=frame)
    # As the host takes it: the statistics are its recomputation of the run's facts.
    return verify_report(json.loads(encode_report(report)), frame=frame)


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def failure(code: str, report: dict[str, Any]) -> FixResult:
    error = report["error"]
    assert error is not None
    return fix_for_failure(code, error_type=error["type"], message=error["message"], line=error["line"])


def assert_idempotent(result: FixResult, fixer: Any) -> None:
    again = fixer(result.code)
    assert again.code == result.code
    assert not again.changed


# --------------------------------------------------------------------------- position_size

SIZE_BROKEN = src('''
    import talib
    from backtesting import Strategy
    from backtesting.lib import crossover


    class SmaCross(Strategy):
        fast = 10
        slow = 30
        risk_pct = 50

        def init(self):
            self.sma1 = self.I(talib.SMA, self.data.Close, self.fast)
            self.sma2 = self.I(talib.SMA, self.data.Close, self.slow)

        def next(self):
            self.position_size = 1_000 / self.data.Close[-1] * 70  # about 2.x units
            if crossover(self.sma1, self.sma2):
                self.buy(size=self.position_size)
            elif crossover(self.sma2, self.sma1):
                self.position.close()
                self.sell(size=1.5)
            elif len(self.data) % 500 == 0 and not self.position:
                self.buy(size=self.risk_pct)
            elif len(self.data) % 777 == 0 and not self.position:
                self.buy(size=100)  # percent of equity
''')


def test_position_size_fails_then_runs(tmp_path: Path, frame: pd.DataFrame) -> None:
    broken = run(SIZE_BROKEN, tmp_path, frame)
    assert broken["error"]["type"] == "runtime_error"
    assert "size must be a positive fraction" in broken["error"]["message"]

    result = failure(SIZE_BROKEN, broken)
    lines = result.code.splitlines()
    assert "            self.buy(size=_rbi_size(self.position_size))" in lines
    assert "            self.sell(size=1)" in lines
    assert "            self.buy(size=_rbi_size(self.risk_pct, percent=True))" in lines
    assert "            self.buy(size=0.9999)  # percent of equity" in lines
    assert result.code.count("def _rbi_size(") == 1
    assert [(f.fixer, f.line) for f in result.fixes] == [
        ("position_size", 18), ("position_size", 21), ("position_size", 23), ("position_size", 25),
        ("position_size", None),
    ]
    # Everything else is untouched, byte for byte.
    assert result.code.endswith(SIZE_BROKEN.split("class SmaCross")[1].replace(
        "size=self.position_size", "size=_rbi_size(self.position_size)").replace("size=1.5", "size=1").replace(
        "size=self.risk_pct", "size=_rbi_size(self.risk_pct, percent=True)").replace("size=100)", "size=0.9999)"))
    assert check_code(result.code) == []

    fixed = run(result.code, tmp_path, frame, "fixed.py")
    assert fixed["error"] is None
    assert fixed["stats"]["num_trades"] > 0
    assert_idempotent(result, lambda c: fix_for_failure(c, error_type="runtime_error", message=SIZE_MESSAGE,
                                                        line=None))


def test_size_helper_values() -> None:
    namespace: dict[str, Any] = {}
    result = fix_for_failure("class S:\n    def next(self):\n        self.buy(size=self.n)\n",
                             error_type="runtime_error", message=SIZE_MESSAGE, line=3)
    exec(compile(result.code, "<fixed>", "exec"), namespace)
    size = namespace["_rbi_size"]
    assert size(0.5) == 0.5
    assert size(2.7) == 2 and size(1.0) == 1 and size(3) == 3
    assert size(0) == 1e-9 and size(-4) == 1e-9 and size(float("nan")) == 1e-9
    assert size(50, percent=True) == 0.5 and size(100, percent=True) == 0.9999


# --------------------------------------------------------------------------- entry_price

ENTRY_BROKEN = src('''
    import talib
    from backtesting import Strategy


    class RsiReversion(Strategy):
        def init(self):
            self.rsi = self.I(talib.RSI, self.data.Close, 14)

        def next(self):
            price = self.data.Close[-1]
            if not self.position and self.rsi[-1] < 30:
                self.buy(size=0.5)
            elif self.position:
                position = self.position
                if price > self.position.entry_price * 1.01 or price < position.entry_price * 0.99:
                    self.position.close()
''')


def test_entry_price_fails_then_runs(tmp_path: Path, frame: pd.DataFrame) -> None:
    broken = run(ENTRY_BROKEN, tmp_path, frame)
    assert broken["error"]["message"] == "AttributeError: 'Position' object has no attribute 'entry_price'"
    assert broken["error"]["line"] == 15

    result = failure(ENTRY_BROKEN, broken)
    assert ("            if price > self.trades[-1].entry_price * 1.01 or price < self.trades[-1].entry_price * 0.99:"
            in result.code.splitlines())
    assert [(f.fixer, f.line) for f in result.fixes] == [("entry_price", 15), ("entry_price", 15)]
    assert result.code.replace("self.trades[-1].entry_price", "X") == \
        ENTRY_BROKEN.replace("self.position.entry_price", "X").replace("position.entry_price", "X")

    fixed = run(result.code, tmp_path, frame, "fixed.py")
    assert fixed["error"] is None
    assert fixed["stats"]["num_trades"] > 0
    assert_idempotent(result, lambda c: fix_for_failure(c, error_type="runtime_error",
                                                        message=broken["error"]["message"], line=15))


# --------------------------------------------------------------------------- freq_alias

FREQ_BROKEN = src('''
    import pandas as pd
    import talib
    from backtesting import Strategy
    from backtesting.lib import resample_apply


    class HourlyTrend(Strategy):
        def init(self):
            self.h_sma = resample_apply('1H', talib.SMA, self.data.Close, 20)
            hourly = self.data.df.Close.resample(rule="4H").last()
            self.daily = self.data.df.Close.resample('1D').last()
            self.label = '1H'  # not a frequency argument: must stay
            self.grid = pd.date_range("2023-01-01", periods=3, freq='15T')

        def next(self):
            if not self.position and self.data.Close[-1] > self.h_sma[-1]:
                self.buy(size=0.5)
            elif self.position and self.data.Close[-1] < self.h_sma[-1]:
                self.position.close()
''')


def test_freq_alias_fails_then_runs(tmp_path: Path, frame: pd.DataFrame) -> None:
    broken = run(FREQ_BROKEN, tmp_path, frame)
    assert broken["error"] is not None
    assert "Invalid frequency" in broken["error"]["message"]

    result = failure(FREQ_BROKEN, broken)
    lines = result.code.splitlines()
    assert "        self.h_sma = resample_apply('1h', talib.SMA, self.data.Close, 20)" in lines
    assert '        hourly = self.data.df.Close.resample(rule="4h").last()' in lines
    assert "        self.daily = self.data.df.Close.resample('1D').last()" in lines
    assert "        self.label = '1H'  # not a frequency argument: must stay" in lines
    assert "        self.grid = pd.date_range(\"2023-01-01\", periods=3, freq='15min')" in lines
    assert [(f.fixer, f.line) for f in result.fixes] == [("freq_alias", 9), ("freq_alias", 10), ("freq_alias", 13)]

    fixed = run(result.code, tmp_path, frame, "fixed.py")
    assert fixed["error"] is None
    assert fixed["stats"]["num_trades"] > 0
    # package() applies the same rewrite before the first run, and a second pass changes nothing.
    assert package(FREQ_BROKEN).code == result.code
    assert_idempotent(result, package)


@pytest.mark.parametrize(("old", "new"), [
    ("1H", "1h"), ("15T", "15min"), ("15min", None), ("5Min", None), ("S", "s"), ("L", "ms"), ("U", "us"),
    ("N", "ns"), ("1D", None), ("M", "ME"), ("A-DEC", "YE-DEC"), ("not a freq", None),
])
def test_modern_freq(old: str, new: str | None) -> None:
    from rbi.agents.fixers import modern_freq

    assert modern_freq(old) == new


# --------------------------------------------------------------------------- pandas_ta + lib_helpers + imports

TA_BROKEN = src('''
    import pandas as pd
    import pandas_ta as ta
    import yfinance as yf
    from backtesting import Strategy
    from backtesting.lib import crossover, crossunder


    class BandsAndMomentum(Strategy):
        def init(self):
            close = pd.Series(self.data.Close)
            self.rsi = self.I(ta.rsi, close, length=14)
            self.fast = self.I(ta.ema, close, length=10)
            self.slow = self.I(ta.sma, self.data.Close, 30)
            self.bb = self.I(ta.bbands, close, length=20, std=2)
            self.macd = self.I(ta.macd, close, fast=12, slow=26, signal=9)
            self.atr = self.I(lambda: ta.atr(pd.Series(self.data.High), pd.Series(self.data.Low), close, length=14))

        def next(self):
            lower, upper = self.bb[0][-1], self.bb[2][-1]
            if not self.position and crossover(self.fast, self.slow) and self.macd[0][-1] > self.macd[2][-1]:
                self.buy(size=0.5, sl=self.data.Close[-1] - 3 * self.atr[-1])
            elif self.position and (crossunder(self.fast, self.slow) or self.data.Close[-1] > upper > lower):
                self.position.close()
''')


NO_PANDAS_TA = "ModuleNotFoundError: No module named 'pandas_ta'"


def test_package_leaves_pandas_ta_alone() -> None:
    # The sandbox serves `import pandas_ta` (pandas-ta-classic): packaging only fixes what would not run.
    result = package(TA_BROKEN)
    assert "import pandas_ta as ta" in result.code and "self.rsi = self.I(ta.rsi, close, length=14)" in result.code
    assert "talib" not in result.code and "yfinance" not in result.code
    assert {f.fixer for f in result.fixes} == {"lib_helpers", "unused_imports"}


def test_pandas_ta_import_error_rewrites_to_talib_then_runs(tmp_path: Path, frame: pd.DataFrame) -> None:
    # Where pandas_ta cannot be imported at all, the TA-Lib rewrite is the repair of that import error.
    packaged = package(TA_BROKEN)
    result = fix_for_failure(packaged.code, error_type="import_error", message=NO_PANDAS_TA, line=2)
    lines = result.code.splitlines()
    assert lines[:4] == ["import pandas as pd", "import talib", "from backtesting import Strategy",
                         "from backtesting.lib import crossover"]
    assert "        self.rsi = self.I(talib.RSI, close, timeperiod=14)" in lines
    assert "        self.fast = self.I(talib.EMA, close, timeperiod=10)" in lines
    assert "        self.slow = self.I(talib.SMA, self.data.Close, 30)" in lines
    assert "        self.bb = self.I(_rbi_ta_bbands, close, length=20, std=2)" in lines
    assert "        self.macd = self.I(_rbi_ta_macd, close, fast=12, slow=26, signal=9)" in lines
    assert ("        self.atr = self.I(lambda: talib.ATR(pd.Series(self.data.High), pd.Series(self.data.Low), close, "
            "timeperiod=14))") in lines
    assert "pandas_ta" not in result.code.split("def _rbi_ta_macd")[0]
    assert [f.fixer for f in result.fixes] == ["pandas_ta"] * 7
    assert check_code(result.code) == []

    fixed = run(result.code, tmp_path, frame, "fixed.py")
    assert fixed["error"] is None
    assert fixed["stats"]["num_trades"] > 0
    again = fix_for_failure(result.code, error_type="import_error", message=NO_PANDAS_TA, line=2)
    assert again.code == result.code and not again.changed


def test_pandas_ta_helpers_match_pandas_ta_columns(frame: pd.DataFrame) -> None:
    result = fix_for_failure("import pandas_ta as ta\nm = ta.macd(close)\nb = ta.bbands(close, length=20)\n",
                             error_type="import_error", message=NO_PANDAS_TA, line=1)
    namespace: dict[str, Any] = {"close": frame.Close}
    exec(compile(result.code, "<fixed>", "exec"), namespace)
    assert list(namespace["m"].columns) == ["MACD_12_26_9", "MACDh_12_26_9", "MACDs_12_26_9"]
    assert list(namespace["b"].columns) == ["BBL_20_2.0", "BBM_20_2.0", "BBU_20_2.0", "BBB_20_2.0", "BBP_20_2.0"]
    bands = namespace["b"].dropna()
    assert (bands["BBL_20_2.0"] <= bands["BBM_20_2.0"]).all() and (bands["BBM_20_2.0"] <= bands["BBU_20_2.0"]).all()
    assert namespace["m"].index.equals(frame.index)


def test_pandas_ta_without_mapping_keeps_import_and_notes() -> None:
    code = "import pandas_ta as ta\nx = ta.supertrend(h, l, c, length=7)\ny = ta.sma(c, length=5, offset=2)\n"
    result = fix_for_failure(code, error_type="import_error", message=NO_PANDAS_TA, line=1)
    assert result.code == code
    assert not result.changed
    notes = [(f.fixer, f.line) for f in result.fixes]
    assert notes == [("pandas_ta", 2), ("pandas_ta", 3)]
    assert "ta.supertrend has no TA-Lib mapping" in result.fixes[0].description


def test_df_ta_accessor_is_noted_not_rewritten() -> None:
    code = "import pandas as pd\nimport pandas_ta as ta\ndf = pd.DataFrame()\ndf.ta.rsi(length=14, append=True)\n"
    result = fix_for_failure(code, error_type="import_error", message=NO_PANDAS_TA, line=2)
    assert result.code == code
    assert [(f.fixer, f.line) for f in result.fixes] == [("pandas_ta", 4)]


def test_lib_helpers_moves_test_names_and_keeps_existing() -> None:
    code = "from backtesting.lib import crossover as xo, crossunder as xu, SMA\nsig = xu(a, b) or xo(b, c)\n"
    result = package(code)
    assert result.code == ("from backtesting.lib import crossover as xo\nfrom backtesting.test import SMA\n"
                           "sig = xo(b, a) or xo(b, c)\n")
    assert [(f.fixer, f.line) for f in result.fixes] == [("lib_helpers", 1), ("lib_helpers", 1), ("lib_helpers", 2)]
    assert_idempotent(result, package)


def test_unused_imports_only_drops_unused_disallowed() -> None:
    code = "import requests\nimport yfinance as yf\nimport numpy as np\ndata = yf.download('BTC')\n"
    result = package(code)
    assert result.code == "import yfinance as yf\nimport numpy as np\ndata = yf.download('BTC')\n"
    assert [(f.fixer, f.line) for f in result.fixes] == [("unused_imports", 1)]


# --------------------------------------------------------------------------- column_names

COLUMNS_BROKEN = src('''
    import talib
    from backtesting import Strategy


    class Breakout(Strategy):
        def init(self):
            self.high20 = self.I(talib.MAX, self.data.high, 20)
            self.vol = self.I(talib.SMA, self.data['volume'], 20)

        def next(self):
            if not self.position and self.data.close[-1] >= self.high20[-2] and self.data.Volume[-1] > self.vol[-1]:
                self.buy(size=0.5)
            elif self.position and self.data.close[-1] < self.high20[-2] * 0.99:
                self.position.close()
''')


def test_column_names_fails_then_runs(tmp_path: Path, frame: pd.DataFrame) -> None:
    broken = run(COLUMNS_BROKEN, tmp_path, frame)
    assert broken["error"]["message"] == "AttributeError: Column 'high' not in data"

    result = failure(COLUMNS_BROKEN, broken)
    assert result.code == (COLUMNS_BROKEN.replace("data.high", "data.High").replace("data['volume']", "data['Volume']")
                           .replace("data.close", "data.Close"))
    assert [(f.fixer, f.line) for f in result.fixes] == [
        ("column_names", 7), ("column_names", 8), ("column_names", 11), ("column_names", 13)]
    fixed = run(result.code, tmp_path, frame, "fixed.py")
    assert fixed["error"] is None
    assert fixed["stats"]["num_trades"] > 0


def test_script_csv_headers_normalised(tmp_path: Path) -> None:
    csv = tmp_path / "BTC.csv"
    csv.write_text("datetime, open, high, low, close, volume,\n2023-01-01 00:00:00, 1, 2, 0.5, 1.5, 10,\n"
                   "2023-01-01 00:15:00, 1.5, 2.5, 1, 2, 11,\n", encoding="utf-8")
    code = src(f'''
        import pandas as pd

        def load():
            df = pd.read_csv({str(csv)!r}, parse_dates=['datetime'])
            df = df.set_index('datetime')
            return df[['Open', 'High', 'Low', 'Close', 'Volume']]

        data = load()
    ''')
    with pytest.raises(KeyError) as excinfo:
        exec(compile(code, "<broken>", "exec"), {})
    message = f"KeyError: {excinfo.value}"
    result = fix_for_failure(code, error_type="runtime_error", message=message, line=6)
    assert [(f.fixer, f.line) for f in result.fixes] == [("column_names", 5)]
    assert result.code.splitlines()[4].startswith("    df = df.rename(columns=lambda c:")
    namespace: dict[str, Any] = {}
    exec(compile(result.code, "<fixed>", "exec"), namespace)
    assert list(namespace["data"].columns) == ["Open", "High", "Low", "Close", "Volume"]
    assert namespace["data"]["Close"].tolist() == [1.5, 2.0]
    again = fix_for_failure(result.code, error_type="runtime_error", message=message, line=6)
    assert again.code == result.code and not again.changed


# --------------------------------------------------------------------------- leave correct code alone

CORRECT = src('''
    """A correct strategy: nothing to fix."""
    import pandas as pd
    import talib
    from backtesting import Strategy
    from backtesting.lib import crossover, resample_apply


    class Fine(Strategy):
        n1 = 10
        n2 = 30

        def init(self):
            self.sma1 = self.I(talib.SMA, self.data.Close, self.n1)
            self.sma2 = self.I(talib.SMA, self.data.Close, self.n2)
            self.h = resample_apply('1h', talib.SMA, self.data.Close, 5)
            self.label = 'Close'  # a string, not a column access

        def next(self):
            if crossover(self.sma1, self.sma2):
                self.buy(size=0.5)
            elif crossover(self.sma2, self.sma1) and self.trades:
                if self.data.Close[-1] > self.trades[-1].entry_price:
                    self.position.close()
            elif not self.position and len(self.data) % 400 == 0:
                self.buy(size=2)
''')


@pytest.mark.parametrize(("error_type", "message"), [
    ("runtime_error", SIZE_MESSAGE),
    ("runtime_error", "ValueError: Invalid frequency: 1H"),
    ("runtime_error", "AttributeError: 'Position' object has no attribute 'entry_price'"),
    ("runtime_error", "KeyError: 'Close'"),
    ("import_error", "ModuleNotFoundError: No module named 'pandas_ta'"),
])
def test_correct_code_is_left_alone(tmp_path: Path, frame: pd.DataFrame, error_type: str, message: str) -> None:
    assert run(CORRECT, tmp_path, frame)["error"] is None
    result = fix_for_failure(CORRECT, error_type=error_type, message=message, line=None)
    if message == SIZE_MESSAGE:
        # size=0.5 and size=2 are valid: nothing to rewrite.
        assert result.fixes == ()
    assert result.code == CORRECT
    assert not result.changed
    assert package(CORRECT).code == CORRECT and package(CORRECT).fixes == ()


def test_unrelated_failure_applies_nothing() -> None:
    result = fix_for_failure(SIZE_BROKEN, error_type="runtime_error", message="ZeroDivisionError: division by zero",
                             line=3)
    assert result.code == SIZE_BROKEN and result.fixes == ()


def test_unparseable_code_is_returned_unchanged() -> None:
    code = "def broken(:\n    self.buy(size=1.5)\n"
    assert package(code).code == code
    assert fix_for_failure(code, error_type="syntax_error", message=SIZE_MESSAGE, line=1).code == code


# --------------------------------------------------------------------------- diagnose_no_trades

NO_TRADES = {
    "self_cross": (src('''
        import talib
        from backtesting import Strategy
        from backtesting.lib import crossover


        class SelfCross(Strategy):
            def init(self):
                self.sma = self.I(talib.SMA, self.data.Close, 20)

            def next(self):
                if crossover(self.sma, self.sma):
                    self.buy()
    '''), "crossover(self.sma, self.sma) compares a series with itself"),
    "units_too_large": (src('''
        import talib
        from backtesting import Strategy


        class BigOrder(Strategy):
            def init(self):
                self.rsi = self.I(talib.RSI, self.data.Close, 14)

            def next(self):
                if not self.position and self.rsi[-1] < 30:
                    self.buy(size=100)
    '''), "size=100 asks for 100 whole units"),
    "only_when_in_position": (src('''
        import talib
        from backtesting import Strategy


        class Pyramid(Strategy):
            def init(self):
                self.rsi = self.I(talib.RSI, self.data.Close, 14)

            def next(self):
                if self.position:
                    if self.rsi[-1] < 30:
                        self.buy(size=0.1)
    '''), "inside `if self.position:`"),
    "period_too_long": (src('''
        import talib
        from backtesting import Strategy


        class SlowTrend(Strategy):
            slow_period = 5000

            def init(self):
                self.slow = self.I(talib.SMA, self.data.Close, timeperiod=self.slow_period)

            def next(self):
                if not self.position and self.data.Close[-1] > self.slow[-1]:
                    self.buy(size=0.5)
    '''), "slow_period = 5000 is longer than the 3000 bars"),
}


@pytest.mark.parametrize("name", sorted(NO_TRADES))
def test_diagnose_no_trades_real_runs(tmp_path: Path, frame: pd.DataFrame, name: str) -> None:
    code, expected = NO_TRADES[name]
    report = run(code, tmp_path, frame)
    assert report["error"] is None
    assert report["stats"]["num_trades"] == 0
    causes = diagnose_no_trades(code, {**report["stats"], "bars": len(frame)})
    assert any(expected in cause for cause in causes), causes


def test_diagnose_no_orders_and_fallback() -> None:
    no_orders = "from backtesting import Strategy\nclass S(Strategy):\n    def init(self):\n        pass\n" \
                "    def next(self):\n        pass\n"
    assert diagnose_no_trades(no_orders, {"# Trades": 0}) == [
        "buy() or sell() is never called: the strategy places no orders"]
    plain = CORRECT.replace("self.buy(size=2)", "self.buy(size=0.2)")
    assert diagnose_no_trades(plain, {"num_trades": 0})[0].startswith("no structural cause found")
