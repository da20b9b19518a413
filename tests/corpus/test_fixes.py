"""`--fix` repairs of backtesting.py API drift, each on a realistic broken file, through the real sandbox.

Every file in `files/fixes/drift_*` fails unchanged with the error real generated code shows; with
`execute_with_fixes` it runs, only the named fixers were applied, and the code that ran (what is
stored) gives the same result when run again as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rbi.agents.fixers import fix_for_failure
from rbi.engine import LocalExecutor, PreparedRun, execute_with_fixes, prepare
from rbi.spec import load_spec

FILES = Path(__file__).parent / "files" / "fixes"

# file -> (failure class unchanged, words in its message, the fixers that repair it)
BROKEN: dict[str, tuple[str, str, set[str]]] = {
    "drift_position_sl_trailing.py": ("runtime_error", "'Position' object has no attribute 'sl'",
                                      {"position_stops"}),
    "drift_data_df_assigned.py": ("runtime_error", "property 'df' of '_Data' object has no setter", {"data_df"}),
    "drift_indicator_shapes.py": ("runtime_error", "Indicators must return", {"indicator_shape"}),
    "drift_pandas_ta_arrays.py": ("runtime_error", "returned value: None", {"pandas_ta_series"}),
    "drift_datetime_index_col.py": ("runtime_error", "KeyError: 'datetime'", {"index_column"}),
    "drift_datetime_set_index_inplace.py": ("runtime_error", "None of ['datetime'] are in the columns",
                                            {"index_column"}),
    "drift_lowercase_backtest.py": ("data_error", "must be a pandas.DataFrame with columns 'Open'",
                                    {"lowercase_columns"}),
    "drift_lowercase_selection.py": ("data_error", "KeyError", {"lowercase_columns"}),
    # What an indicator raised is the failure (not backtesting.py's "Indicator ... See traceback above").
    "drift_indicator_raises.py": ("data_error", "Indicator \"mid\" error: KeyError: 'close'", {"column_names"}),
    # `.iloc` and `.rolling` on backtesting.py's arrays: one round per attribute, each through `.s`.
    "drift_array_pandas_methods.py": ("runtime_error", "'_Array' object has no attribute 'iloc'", {"array_series"}),
}


@pytest.fixture(scope="module")
def executor() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=1) as running:
        yield running


def prepared(name: str, cache: Path) -> PreparedRun:
    return prepare(load_spec(FILES / name), cache_dir=cache)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_file_fails_then_runs_with_fix(name: str, executor: LocalExecutor, tmp_path: Path) -> None:
    failure, words, fixers = BROKEN[name]
    run = prepared(name, tmp_path)
    unchanged = executor.execute(run)
    assert unchanged.error is not None, unchanged
    assert str(unchanged.error.type) == failure and words in unchanged.error.message

    outcome, ran = execute_with_fixes(executor, run)
    assert outcome.error is None, outcome.error
    assert str(outcome.status) == "succeeded" and outcome.stats["num_trades"] > 0
    assert {f["fixer"] for f in outcome.fixes} == fixers
    assert all(isinstance(f["line"], int) and f["description"] for f in outcome.fixes)
    assert ran.code != run.code
    # The stored version is the code that ran: run as it is, it gives the same figures.
    again = executor.execute(ran)
    assert again.error is None and again.stats["return_pct"] == outcome.stats["return_pct"]
    assert again.stats["num_trades"] == outcome.stats["num_trades"]
    # A second repair pass on the repaired code finds nothing more for the same fixers to do.
    again_fixed = fix_for_failure(ran.code, error_type=failure, message=unchanged.error.message,
                                  line=unchanged.error.line)
    assert not again_fixed.changed or fixers.isdisjoint(f.fixer for f in again_fixed.fixes)


def test_position_stops_take_effect(executor: LocalExecutor, tmp_path: Path) -> None:
    # Stops written to `self.position` are silently ignored (one trade held to the end); on the trades they act.
    run = prepared("drift_position_sl_buy_then_set.py", tmp_path)
    plain = executor.execute(run)
    assert plain.error is None and plain.stats["num_trades"] == 1
    repaired = fix_for_failure(run.code, error_type="runtime_error",
                               message="AttributeError: 'Position' object has no attribute 'sl'", line=None)
    assert [f.fixer for f in repaired.fixes] == ["position_stops"] * 5
    stopped = executor.execute(replace(run, code=repaired.code))
    assert stopped.error is None and stopped.stats["num_trades"] > 50


def test_a_file_that_runs_is_not_rewritten_by_fix(executor: LocalExecutor, tmp_path: Path) -> None:
    # `--fix` repairs failures; code that runs keeps its behaviour (and its return), stray position stops included.
    run = prepared("drift_position_sl_buy_then_set.py", tmp_path)
    outcome, ran = execute_with_fixes(executor, run)
    assert ran.code == run.code and outcome.fixes == []
    assert outcome.stats["return_pct"] == executor.execute(run).stats["return_pct"]


def test_indicator_wrapper_changes_no_value(executor: LocalExecutor, tmp_path: Path) -> None:
    # A wrapped indicator that was already right gives exactly the same run as the unwrapped one.
    code = (FILES / "drift_indicator_shapes.py").read_text()
    good = code.replace("return talib.RSI(close, n)[n:]", "return talib.RSI(close, n)")
    run = prepared("drift_indicator_shapes.py", tmp_path)
    plain = executor.execute(replace(run, code=good))
    wrapped = fix_for_failure(good, error_type="runtime_error", message="ValueError: Indicators must return (...)",
                              line=None)
    assert wrapped.changed
    after = executor.execute(replace(run, code=wrapped.code))
    assert plain.error is None and after.error is None
    assert after.stats == plain.stats
