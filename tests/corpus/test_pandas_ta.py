"""`import pandas_ta as ta` runs as written: served by pandas-ta-classic, in the sandbox and in the Job runner.

The values computed inside the sandbox (pandas 3, numpy 2) equal pandas-ta-classic's own on the host, with
pandas_ta's column names (BBL_20_2.0, MACD_12_26_9, SUPERTd_10_3.0, ...). `--fix` leaves such code alone.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from rbi.engine import LocalExecutor, execute_with_fixes, prepare
from rbi.prepare.data import load_ohlcv
from rbi.prepare.inspect_code import check_code
from rbi.spec import load_spec

FILES = Path(__file__).parent / "files" / "fixes"
DATA = Path(__file__).resolve().parents[2] / "operator" / "rbi" / "datasets" / "BTC-USD-15m.csv.gz"


@pytest.fixture(scope="module")
def executor() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=1) as running:
        yield running


def host_values() -> dict[str, object]:
    import pandas_ta_classic as ta

    df = load_ohlcv(DATA)
    high, low, c = df["High"], df["Low"], df["Close"]
    series = {"rsi": ta.rsi(c, length=14), "ema": ta.ema(c, length=50), "sma": ta.sma(c, length=200),
              "atr": ta.atr(high, low, c, length=14), "accessor": ta.rsi(c, length=7)}
    frames = {"bbands": ta.bbands(c, length=20, std=2), "adx": ta.adx(high, low, c, length=14),
              "supertrend": ta.supertrend(high, low, c, length=10, multiplier=3),
              "macd": ta.macd(c, fast=12, slow=26, signal=9), "stoch": ta.stoch(high, low, c)}
    values: dict[str, object] = {k: [float(s.iloc[-1]), int(s.isna().sum())] for k, s in series.items()}
    for name, frame in frames.items():
        assert isinstance(frame, pd.DataFrame)
        values[name] = {col: [float(frame[col].iloc[-1]), int(frame[col].isna().sum())] for col in frame.columns}
    return values


def close(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    assert isinstance(a, int | float) and isinstance(b, int | float)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))


def test_pandas_ta_values_in_the_sandbox_equal_the_library(executor: LocalExecutor, tmp_path: Path) -> None:
    run = prepare(load_spec(FILES / "pandas_ta_values.py"), cache_dir=tmp_path)
    assert check_code(run.code) == []
    outcome = executor.execute(run)
    assert outcome.error is None, outcome.error
    [line] = [ln for ln in outcome.stdout_tail.splitlines() if ln.startswith("PANDAS_TA ")]
    inside = json.loads(line.removeprefix("PANDAS_TA "))
    assert list(inside["bbands"]) == ["BBL_20_2.0", "BBM_20_2.0", "BBU_20_2.0", "BBB_20_2.0", "BBP_20_2.0"]
    assert list(inside["macd"]) == ["MACD_12_26_9", "MACDh_12_26_9", "MACDs_12_26_9"]
    assert list(inside["supertrend"])[:2] == ["SUPERT_10_3.0", "SUPERTd_10_3.0"]
    assert next(iter(inside["adx"])) == "ADX_14" and list(inside["stoch"]) == ["STOCHk_14_3_3", "STOCHd_14_3_3"]
    assert close(inside, host_values())


@pytest.mark.parametrize("name", ["pandas_ta_class.py", "pandas_ta_script.py"])
def test_pandas_ta_strategies_run_unchanged_with_and_without_fix(name: str, executor: LocalExecutor,
                                                                 tmp_path: Path) -> None:
    run = prepare(load_spec(FILES / name), cache_dir=tmp_path)
    plain = executor.execute(run)
    assert plain.error is None, plain.error
    assert plain.stats["num_trades"] > 0
    outcome, ran = execute_with_fixes(executor, run)
    assert ran.code == run.code and outcome.fixes == []
    assert outcome.stats["return_pct"] == plain.stats["return_pct"]


def test_the_job_runner_serves_pandas_ta(tmp_path: Path) -> None:
    code = tmp_path / "strategy.py"
    code.write_text((FILES / "pandas_ta_class.py").read_text())
    request = {"mode": "class", "code_path": str(code), "data_path": "bundled:BTC-USD-15m", "include_series": False,
               "data_range": [0, 5000]}
    (tmp_path / "request.json").write_text(json.dumps(request))
    subprocess.run([sys.executable, "-m", "rbi.runner", "--request", str(tmp_path / "request.json"), "--result",
                    str(tmp_path / "result.json"), "--scratch", str(tmp_path)], check=True, timeout=300,
                   capture_output=True)
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["error"] is None and report["facts"]["trades"]


ALIAS_PROBE = """
import json, sys
from rbi.compat import pandas_ta
installed = pandas_ta.install()
import pandas_ta as ta
from pandas_ta import rsi
from pandas_ta.overlap import ema
print(json.dumps({"installed": installed, "module": ta.__name__, "real": getattr(ta, "REAL", False),
                  "same": rsi is getattr(ta, "rsi", None) if not getattr(ta, "REAL", False) else None,
                  "ema": ema.__module__}))
"""


def alias_probe(extra_path: Path | None = None) -> dict[str, object]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", ALIAS_PROBE], capture_output=True, text=True, env=env,
                          timeout=120, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_alias_serves_every_import_form() -> None:
    assert alias_probe() == {"installed": True, "module": "pandas_ta_classic", "real": False, "same": True,
                             "ema": "pandas_ta_classic.overlap.ema"}


def test_a_real_pandas_ta_wins(tmp_path: Path) -> None:
    package = tmp_path / "pandas_ta"
    (package / "overlap").mkdir(parents=True)
    (package / "__init__.py").write_text("REAL = True\ndef rsi(x):\n    return x\n")
    (package / "overlap" / "__init__.py").write_text("def ema(x):\n    return x\n")
    result = alias_probe(tmp_path)
    assert result["installed"] is False and result["module"] == "pandas_ta" and result["real"] is True
    assert result["ema"] == "pandas_ta.overlap"
