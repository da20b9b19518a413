"""Real-looking generated files, each shape end to end through the sandbox on the bundled data.

The files in `files/` are written in the shapes LLM research pipelines save (see issue 10): whole answers
saved as `.py`, hybrids that read a hard-coded CSV path and run their own Backtest, several fenced blocks,
fragments, answers cut off by max tokens. For every file that runs unchanged under a bare `python`, the
return `rbi run` reports must equal the file's own printout.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rbi.engine import LocalExecutor, PreparationFailed, prepare
from rbi.outcome import RunOutcome
from rbi.prepare.extract import extract_code
from rbi.spec import load_spec

FILES = Path(__file__).parent / "files"
DATA_NAME = "BTC-USD-15m.csv"

# name → (status, mode, failure class, line of the failure)
EXPECTED: dict[str, tuple[str, str | None, str | None, int | None]] = {
    "answer_fixed_hybrid.py": ("succeeded", "script", None, None),
    "hybrid_main_guard.py": ("no_trades", "script", None, None),
    "hybrid_path_exists.py": ("succeeded", "script", None, None),
    "relative_name_script.py": ("succeeded", "script", None, None),
    "several_blocks_answer.md": ("succeeded", "script", None, None),
    "fragments_answer.txt": ("succeeded", "script", None, None),
    "optimize_script.py": ("succeeded", "script", None, None),
    "class_only.py": ("succeeded", "class", None, None),
    "saves_results.py": ("succeeded", "script", None, None),
    "truncated_answer.py": ("failed", None, "syntax_error", 19),
    "bare_truncated.py": ("failed", None, "syntax_error", 15),
    # Cut between two statements: it parses, but it imported Backtest for a run section it never reached.
    "cut_between_statements.md": ("failed", None, "syntax_error", 31),
}
_RETURN_LINE = re.compile(r"^Return \[%\]\s+(?P<value>[-+0-9.eE]+)\s*$", re.MULTILINE)
_AUTHOR_FOLDER = re.compile(r"""(?P<q>['"])/(?:Users|home)/[^'"\n]*(?<!\.csv)(?P=q)""")
_DATA_LITERAL = re.compile(r"""(?P<q>['"])(?:/[^'"\n]*/)?(?:data/(?:rbi/)?)?BTC-USD-15m\.csv(?P=q)""")


def test_the_corpus_covers_every_file() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in FILES.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def executor() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def data_home(tmp_path_factory: pytest.TempPathFactory, bundled_data: Path) -> Path:
    """A directory laid out like an author's project: the CSV beside the script, in data/ and data/rbi/."""
    home = tmp_path_factory.mktemp("author")
    plain = home / DATA_NAME
    with gzip.open(bundled_data, "rb") as source, plain.open("wb") as target:
        shutil.copyfileobj(source, target)
    for sub in ("data", "data/rbi"):
        (home / sub).mkdir(parents=True)
        shutil.copyfile(plain, home / sub / DATA_NAME)
    return home


def _run(executor: LocalExecutor, path: Path, tmp_path: Path, *, mode: str | None = None) -> RunOutcome:
    spec = load_spec(path)
    if mode:
        spec = replace(spec, mode=mode)
    try:
        prepared = prepare(spec, cache_dir=tmp_path)
    except PreparationFailed as failed:
        return failed.outcome
    return executor.execute(prepared)


def _in_process(path: Path, data_home: Path) -> float:
    """A module with only a Strategy: what backtesting.py gives in-process with the runner's defaults."""
    from backtesting import Backtest

    from rbi.prepare.data import load_ohlcv
    from rbi.runner import DEFAULT_BACKTEST

    namespace: dict[str, object] = {"__name__": "corpus_module"}
    exec(compile(extract_code(path.read_text()), str(path), "exec"), namespace)
    (strategy,) = [v for v in namespace.values() if isinstance(v, type) and v.__module__ == "corpus_module"]
    stats = Backtest(load_ohlcv(data_home / DATA_NAME), strategy, **DEFAULT_BACKTEST).run()
    return float(stats["Return [%]"])


def _own_printout(path: Path, data_home: Path) -> float:
    """The return the file prints when a bare interpreter runs it with its data where it expects it."""
    code = _DATA_LITERAL.sub(lambda m: repr(str(data_home / DATA_NAME)), extract_code(path.read_text()))
    code = _AUTHOR_FOLDER.sub(lambda m: repr(str(data_home)), code)
    if "Backtest(" not in code:
        return _in_process(path, data_home)
    script = data_home / f"run_{path.stem}.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=data_home, capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-2000:]
    printed = _RETURN_LINE.findall(done.stdout)
    assert printed, done.stdout[-2000:]
    return float(printed[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_shape_runs_as_its_author_wrote_it(name: str, executor: LocalExecutor, tmp_path: Path,
                                                 data_home: Path) -> None:
    status, mode, failure, line = EXPECTED[name]
    outcome = _run(executor, FILES / name, tmp_path)
    assert str(outcome.status) == status, (outcome.error, outcome.stderr_tail[-1500:])
    if failure is None:
        assert outcome.error is None
        assert outcome.mode == mode
        # Every figure is the file's own: same data, same Backtest arguments, same return as its printout.
        assert outcome.stats["return_pct"] == pytest.approx(_own_printout(FILES / name, data_home), abs=1e-4)
    else:
        assert outcome.error is not None and str(outcome.error.type) == failure
        assert outcome.error.line == line
        assert f"line {line}" in outcome.error.message


@pytest.mark.slow
@pytest.mark.parametrize("name", ["answer_fixed_hybrid.py", "hybrid_path_exists.py"])
def test_a_hybrid_driven_in_class_mode_keeps_its_own_backtest(name: str, executor: LocalExecutor, tmp_path: Path,
                                                               data_home: Path) -> None:
    # The optimizer drives a hybrid's Strategy class itself: its top-level CSV read must still be served,
    # and its own cash and commission (literal, or built at import time) must still hold.
    outcome = _run(executor, FILES / name, tmp_path, mode="class")
    assert outcome.error is None, outcome.error
    assert outcome.mode == "class"
    assert outcome.stats["return_pct"] == pytest.approx(_own_printout(FILES / name, data_home), abs=1e-4)


@pytest.mark.slow
def test_writes_the_sandbox_cannot_make_land_in_scratch_and_read_back(executor: LocalExecutor,
                                                                      tmp_path: Path) -> None:
    # The script saves stats, trades and a plot under /Users/<someone>/results, next to itself (read-only
    # here), then reads its trades back: it must get the file it wrote, not the dataset served for CSVs.
    outcome = _run(executor, FILES / "saves_results.py", tmp_path)
    assert outcome.error is None, outcome.error
    assert f"saved {outcome.stats['num_trades']} trades" in outcome.stdout_tail


def test_a_cut_off_answer_never_runs_half_a_strategy() -> None:
    answer = (FILES / "answer_fixed_hybrid.py").read_text()
    # Cut mid-word where the rest still parses: `self.position.clo` is a valid expression.
    cut = answer[: answer.index("self.position.close()") + len("self.position.clo")]
    with pytest.raises(Exception, match=r"line \d+: the answer was cut off"):
        extract_code(cut)
