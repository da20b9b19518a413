"""The content of an input decides what it is: code, an answer to extract, or a resource; `-` is stdin."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rbi.engine import PreparationFailed, prepare
from rbi.spec import STDIN, load_spec

FILES = Path(__file__).parent / "files"
REPO = Path(__file__).resolve().parents[2]


def test_an_answer_saved_as_py_is_extracted(tmp_path: Path) -> None:
    prepared = prepare(load_spec(FILES / "answer_fixed_hybrid.py"), cache_dir=tmp_path)
    assert prepared.code.startswith("import pandas as pd")
    assert "Here's the fixed code" not in prepared.code and "```" not in prepared.code
    assert prepared.mode == "script"
    # The hybrid's own literal Backtest options travel with the run (class mode uses them).
    assert prepared.backtest == {"cash": 100_000, "commission": 0.001}


def test_code_that_parses_is_taken_as_it_is(tmp_path: Path) -> None:
    source = (FILES / "class_only.py").read_text()
    prepared = prepare(load_spec(FILES / "class_only.py"), cache_dir=tmp_path)
    assert prepared.code == source and prepared.mode == "class"


def test_bare_code_cut_off_fails_at_its_line_instead_of_running_shorter(tmp_path: Path) -> None:
    with pytest.raises(PreparationFailed) as failed:
        prepare(load_spec(FILES / "bare_truncated.py"), cache_dir=tmp_path)
    error = failed.value.outcome.error
    assert error is not None and str(error.type) == "syntax_error" and error.line == 15


def test_a_resource_is_recognised_by_its_content(tmp_path: Path) -> None:
    resource = (REPO / "examples" / "strategies" / "sma_cross.yaml").read_text()
    saved = tmp_path / "strategy.txt"
    saved.write_text(resource)
    (tmp_path / "sma_cross.py").write_text((REPO / "examples" / "strategies" / "sma_cross.py").read_text())
    assert load_spec(saved).name == "sma-cross"
    assert "class SmaCross" in load_spec(saved).code


def test_stdin_holds_an_answer(tmp_path: Path) -> None:
    spec = load_spec(STDIN, stdin=io.StringIO((FILES / "several_blocks_answer.md").read_text()))
    assert spec.name == "stdin"
    prepared = prepare(spec, cache_dir=tmp_path)
    assert "class BollingerSqueeze" in prepared.code and "bt.run()" in prepared.code


@pytest.mark.slow
def test_rbi_run_reads_an_answer_from_stdin(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["RBI_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "rbi", "run", "-", "--json"], cwd=tmp_path, env=env,
                          input=(FILES / "answer_fixed_hybrid.py").read_text(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["mode"] == "script" and result["name"] == "stdin"


def test_errors_also_name_the_line_of_the_file_given(tmp_path: Path) -> None:
    # Line 19 of the extracted code is line 22 of the answer, below its prose and the opening fence.
    with pytest.raises(PreparationFailed) as failed:
        prepare(load_spec(FILES / "truncated_answer.py"), cache_dir=tmp_path)
    error = failed.value.outcome.error
    assert error is not None and error.line == 19
    assert "(line 22 of the input)" in error.message
