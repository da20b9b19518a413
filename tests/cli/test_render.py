"""Output that reads in any terminal: the CLI's tables at 40, 80 and 200 columns, in a pipe and in a terminal.

The commands run as a user runs them (real processes, the real sandbox, the scripted model for `rbi loop`); the
terminal is a pseudo-terminal of that width. The check is the one a reader makes: no line wider than the
terminal, and every value the command prints shows up whole (each of its words intact), never cut into slivers.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text
from tests.cli.test_cli import json_lines
from tests.conftest import EXAMPLES
from tests.llm.fake_openai import Reply, ScriptedOpenAI
from tests.loop.answers import fenced, research_answer, strategy_code

from rbi.cli.render import _short, fmt
from rbi.cli.tables import EMPTY, Column, FitTable
from rbi.prepare.data import load_ohlcv

WIDTHS = (40, 80, 200)
MODES = ("pipe", "terminal")
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>78]")
CURSOR_MOVES = re.compile(r"\x1b\[\d*[ABK]")
LOOP_LOG_LINES = ("idea ", "2 idea(s) from ")  # `rbi loop`'s log lines: one line each, whatever the width
IDEAS = ("Trade crossovers of a 10-bar and a 40-bar SMA", "Buy oversold RSI dips and sell the overbought rallies")


# --- running the CLI ------------------------------------------------------------------------------------------


def _env(columns: int, db: Path, extra: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "RBI_DB_URL": f"sqlite:///{db}", "COLUMNS": str(columns), **(extra or {})}
    env.pop("CI", None)  # CI counts as "no terminal" (see rbi.cli.tables.interactive); these tests pick the mode
    return env


def in_terminal(args: Iterable[str], *, columns: int, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `rbi ARGS` on a pseudo-terminal `columns` wide; returns the exit status and everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "rbi", *args], stdin=slave, stdout=slave, stderr=slave,
                               env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                process.kill()
                raise AssertionError(f"rbi {' '.join(args)} wrote nothing for {timeout} s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            chunks.append(data)
        process.wait(timeout=timeout)
    finally:
        os.close(master)
    return process.returncode, b"".join(chunks).decode("utf-8", "replace")


def run_cli(*args: str, columns: int, mode: str, db: Path, env: dict[str, str] | None = None,
            timeout: float = 300) -> tuple[int, str]:
    """`rbi ARGS` in a pipe (what CI sees) or a terminal; the text as a reader sees it, without escape codes."""
    full_env = _env(columns, db, env)
    if mode == "terminal":
        code, raw = in_terminal(args, columns=columns, env=full_env, timeout=timeout)
        return code, screen_text(raw)
    result = subprocess.run([sys.executable, "-m", "rbi", *args], capture_output=True, text=True, env=full_env,
                            timeout=timeout, check=False)
    assert "\x1b" not in result.stdout + result.stderr, "escape codes in a pipe"
    return result.returncode, result.stderr + result.stdout


def screen_text(raw: str) -> str:
    # A live view redraws by moving the cursor; each frame it drew is kept, one after another.
    return ANSI.sub("", raw.replace("\r\n", "\n")).replace("\r", "\n")


# --- what a reader checks -------------------------------------------------------------------------------------


def _tokens(text: str) -> set[str]:
    tokens: set[str] = set()
    for token in re.split(r"[\s·│]+", text):
        tokens |= {token, token.lstrip("#"), token.strip("():;,")}
    return tokens


def assert_readable(text: str, width: int, values: Iterable[str], *, log_lines: tuple[str, ...] = ()) -> None:
    """No line wider than the terminal (but for log lines: never cut, the terminal wraps them); every word of every
    value printed whole."""
    too_wide = [line for line in text.splitlines() if cell_len(line) > width and not line.startswith(log_lines)]
    assert not too_wide, f"lines wider than {width}: {too_wide[:3]}"
    tokens = _tokens(text)
    for value in values:
        if value == EMPTY:  # a folded row leaves empty cells out
            continue
        for word in value.split():
            assert word in tokens, f"{word!r} (of {value!r}) is not printed whole:\n{text}"


def test_the_check_catches_slivers() -> None:
    """What the issue saw: a plain rich table squeezed into 40 columns breaks words. The check must say so."""
    table = Table(title="squeezed")
    for header in ("idea", "strategy", "stage", "status", "note"):
        table.add_column(header, overflow="fold")
    table.add_row(IDEAS[0], "render-sma", "optimize", "succeeded", "iteration 1 found nothing better than v1")
    console = Console(file=io.StringIO(), width=40, color_system=None)
    console.print(table)
    with pytest.raises(AssertionError, match="not printed whole"):
        assert_readable(console.file.getvalue(), 40, [IDEAS[0], "render-sma", "succeeded"])  # type: ignore[attr-defined]


# --- the policy itself, in-process --------------------------------------------------------------------------


def _render(table: FitTable, width: int, *, terminal: bool) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=terminal,
                      force_interactive=terminal)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def _sample() -> FitTable:
    table = FitTable([Column("id", justify="right", key=True, heading="#{}"), Column("name", key=True),
                      Column("figures", justify="right"), Column("when", drop=2), Column("code", drop=1),
                      Column("note", wrap=True)], title="sample")
    table.add_row("7", "sma-cross", "1,234.50", "2026-12-02 15:37", "f9e35ad4d5ef",
                  "the out-of-sample Sharpe difference is not significant")
    table.add_row("8", "rsi-revert", None, "2026-12-02 15:38", "0123456789ab", "")
    return table


@pytest.mark.parametrize("terminal", [False, True])
def test_a_table_that_fits_is_printed_as_a_table(terminal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    text = _render(_sample(), 200, terminal=terminal)
    lines = text.splitlines()
    assert lines[0].strip() == "sample" and lines[1].split() == ["id", "name", "figures", "when", "code", "note"]
    assert "hidden" not in text
    assert any("sma-cross" in line and "the out-of-sample Sharpe difference is not significant" in line
               for line in lines)


def test_a_narrow_terminal_hides_marked_columns_highest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert _render(_sample(), 78, terminal=True).splitlines()[1].split() == [
        "id", "name", "figures", "when", "code", "note"]  # all of it, the note wrapped
    text = _render(_sample(), 70, terminal=True)
    assert text.splitlines()[1].split() == ["id", "name", "figures", "code", "note"]
    assert "hidden at this width: when" in text
    narrower = _render(_sample(), 55, terminal=True)
    assert narrower.splitlines()[1].split() == ["id", "name", "figures", "note"]
    assert "hidden at this width: when, code" in narrower
    # The note wraps between words, in a column wide enough to read.
    assert_readable(narrower, 55, ["sma-cross", "rsi-revert", "1,234.50",
                                   "the out-of-sample Sharpe difference is not significant"])


@pytest.mark.parametrize(("width", "terminal"), [(70, False), (40, False), (40, True)])
def test_too_narrow_or_no_terminal_folds_rows_and_keeps_every_value(
        width: int, terminal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    text = _render(_sample(), width, terminal=terminal)
    assert "hidden" not in text  # folding hides nothing
    assert "#7  sma-cross" in text and "#8  rsi-revert" in text
    assert "figures: 1,234.50" in text and "code: 0123456789ab" in text
    assert "figures: —" not in text  # an empty cell is left out, not printed as a dash
    assert_readable(text, width, ["2026-12-02 15:37", "f9e35ad4d5ef", "2026-12-02 15:38",
                                  "the out-of-sample Sharpe difference is not significant"])


def test_ci_counts_as_no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert "hidden" not in _render(_sample(), 80, terminal=True)  # folded like a log, not trimmed like a screen


def test_a_key_value_listing_folds_into_key_value_lines() -> None:
    table = FitTable([Column("statistic", key=True), Column("value", justify="right")], show_header=False,
                     title="all statistics")
    table.add_row("buy_hold_return_pct", "12,345,678.90")
    table.add_row("sharpe_ratio", Text("1.25", style="green"))
    assert _render(table, 34, terminal=False).splitlines()[1].split() == ["buy_hold_return_pct", "12,345,678.90"]
    text = _render(table, 30, terminal=False)  # too narrow for the two columns side by side
    assert [line.rstrip() for line in text.splitlines()] == [
        "all statistics", "buy_hold_return_pct:", "12,345,678.90", "sharpe_ratio: 1.25"]


def test_rows_must_match_the_columns() -> None:
    with pytest.raises(ValueError, match="2 cells for 6 columns"):
        _sample().add_row("1", "2")


# --- the commands -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory, bundled_data: Path) -> Path:
    path = tmp_path_factory.mktemp("render-data") / "small.csv"
    load_ohlcv(bundled_data).iloc[:3000].to_csv(path)
    return path


@pytest.fixture(scope="module")
def runs_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with good and failed runs, and the --json view of them (what the tables must show)."""
    folder = tmp_path_factory.mktemp("render-runs")
    db = folder / "rbi.db"
    broken = folder / "broken.py"
    broken.write_text("from backtesting import Strategy\n\nclass Broken(Strategy)\n    pass\n")
    code, _ = run_cli("run", "--json", str(EXAMPLES / "sma_cross.yaml"), str(EXAMPLES / "llm_answer.md"),
                      str(broken), columns=200, mode="pipe", db=db)
    assert code == 1  # the broken one failed
    return db


def _records(db: Path) -> list[dict[str, Any]]:
    code, text = run_cli("results", "--json", columns=200, mode="pipe", db=db)
    assert code == 0
    records: list[dict[str, Any]] = json.loads(text)
    return records


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("width", WIDTHS)
def test_results_reads_at_any_width(runs_db: Path, width: int, mode: str) -> None:
    records = _records(runs_db)
    code, text = run_cli("results", columns=width, mode=mode, db=runs_db)
    assert code == 0
    values = []
    for r in records:  # the columns no width hides
        values += [str(r["id"]), r["strategy_name"], r["status"], _short(r["total_return"]),
                   _short(r["sharpe_ratio"]), fmt(r["num_trades"])]
        if r["error_type"]:
            values.append(f"{r['error_type']}@{r['error_line']}")
        if width == 200 or mode == "pipe":  # a log keeps every value
            values += [_short(r["max_drawdown"]), r["created_at"][:16].replace("T", " ")]
    assert {"sma-cross", "llm-answer", "broken"} <= {r["strategy_name"] for r in records}
    assert_readable(text, width, values)
    table_form = "strategy" in text.split() and "status" in text.split()
    assert table_form == (width == 200 or (mode == "terminal" and width == 80)), text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("width", WIDTHS)
def test_show_reads_at_any_width(runs_db: Path, width: int, mode: str) -> None:
    code, text = run_cli("show", "sma-cross", columns=width, mode=mode, db=runs_db)
    assert code == 0
    _, raw = run_cli("show", "sma-cross", "--json", columns=200, mode="pipe", db=runs_db)
    (version,) = json.loads(raw)
    stats = version["latest_run"]["stats"]
    values = ["v1", json.dumps(version["params"]), "succeeded", fmt(stats["sharpe_ratio"])]
    values += [f"{key} {fmt(value)}" for key, value in stats.items()]  # the statistics listing, whole
    if width == 200 or mode == "pipe":
        values.append(version["code_hash"][:12])
    assert_readable(text, width, values)


def test_run_panel_reads_in_a_narrow_log(runs_db: Path) -> None:
    code, text = run_cli("run", "--no-store", str(EXAMPLES / "sma_cross.yaml"), columns=40, mode="pipe",
                         db=runs_db)
    assert code == 0
    assert_readable(text, 40, ["sma-cross", "succeeded", "Return %", "Max drawdown %", "Profit factor"])


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory, small_data: Path) -> dict[str, Any]:
    db = tmp_path_factory.mktemp("render-opt") / "rbi.db"
    code, text = run_cli("optimize", str(EXAMPLES / "sma_cross.yaml"), "--data", str(small_data), "--method",
                         "grid", "--max-trials", "2", "--max-iterations", "1", "--workers", "1", "--json",
                         columns=200, mode="pipe", db=db)
    assert code == 0, text
    result: dict[str, Any] = json_lines(text)[-1]
    return result


@pytest.mark.parametrize(("width", "mode"), [(80, "pipe"), (40, "terminal")])
def test_optimize_reads_at_any_width(tmp_path: Path, small_data: Path, optimized: dict[str, Any], width: int,
                                     mode: str) -> None:
    code, text = run_cli("optimize", str(EXAMPLES / "sma_cross.yaml"), "--data", str(small_data), "--method",
                         "grid", "--max-trials", "2", "--max-iterations", "1", "--workers", "1",
                         columns=width, mode=mode, db=tmp_path / "rbi.db")
    assert code == 0, text
    values = [optimized["stop_reason"]]
    for it in optimized["iterations"]:
        params = " ".join(f"{k}={v}" for k, v in (it.get("best_params") or {}).items())
        values += [params, f"{it['feasible_trials']}/{it['trials']}"]
    assert_readable(text, width, values)


# --- rbi loop -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def looped(tmp_path_factory: pytest.TempPathFactory, small_data: Path) -> dict[str, Any]:
    """One real loop in a pipe 80 columns wide (a CI log): one idea succeeds, one fails with a long message."""
    folder = tmp_path_factory.mktemp("render-loop")
    ideas = folder / "ideas.txt"
    ideas.write_text("\n".join(IDEAS) + "\n")
    config = folder / "llm.yaml"
    config.write_text("max_retries: 0\ntimeout: 5\n")
    db = folder / "rbi.db"
    broken = strategy_code("RenderBroken", next_extra="        undefined_helper(self.data.Close)\n")
    replies = [Reply.text(research_answer("render-sma")), Reply.text(fenced(strategy_code("RenderSma"))),
               Reply.text(research_answer("render-broken")), Reply.text(fenced(broken))]
    args = ["loop", str(ideas), "--llm-config", str(config), "--data", str(small_data), "--method", "grid",
            "--max-trials", "2", "--max-iterations", "1", "--concurrency", "1", "--max-debug-attempts", "1"]
    with ScriptedOpenAI(*replies) as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-render", "RBI_MODEL": "gpt-4o-mini"}
        code, log = run_cli(*args, columns=80, mode="pipe", db=db, env=env)
        # The failed idea stopped while the model was unreachable, so the next run resumes it (and gives up, with
        # no model call left); from then on both are restored from the store: the rows the reruns below show.
        run_cli(*args, "--json", columns=80, mode="pipe", db=db, env=env)
        again, raw = run_cli(*args, "--json", columns=80, mode="pipe", db=db, env=env)
    rows = json_lines(raw)[-1]["results"]
    assert again == 0 and all(r["skipped"] for r in rows), rows
    return {"args": args, "db": db, "code": code, "log": log, "rows": rows}


def _loop_values(rows: list[dict[str, Any]], *, all_columns: bool) -> list[str]:
    """What the table shows of each idea, from --json rows."""
    values: list[str] = []
    for row in rows:
        note = f"{row['failure_class']}: {row['message']}" if row["failure_class"] else row["message"]
        values += [row["title"], row["status"] + (" (skipped)" if row["skipped"] else ""), note]
        if all_columns:
            values += [row["name"], str(row["attempts"])]
            if row["baseline"] is not None:
                values.append(f"{fmt(row['baseline'])} → {fmt(row['best'])}")
    return values


def test_loop_in_a_log_prints_a_line_per_stage_and_folds_its_table(looped: dict[str, Any]) -> None:
    assert looped["code"] == 1  # one idea failed
    log: str = looped["log"]
    assert not CURSOR_MOVES.search(log) and "\r" not in log  # nothing redrawn
    lines = log.splitlines()
    for stage in ("research", "backtest", "package", "execute", "optimize"):
        assert lines.count(f"idea 1/2 {stage} (running): " + ("render-sma" if stage != "research" else IDEAS[0])) \
            == 1, log
    assert sum(line.startswith("idea 1/2 done (succeeded): render-sma; ") for line in lines) == 1
    assert any(line.startswith("idea 2/2 debug (running): render-broken") for line in lines)
    # Each stage line is whole: a log wraps long lines itself.
    failed = next(line for line in lines if line.startswith("idea 2/2") and "llm_bad_response" in line)
    assert "ScriptedOpenAI: no scripted reply left" in failed
    rows = looped["rows"]
    assert [r["name"] for r in rows] == ["render-sma", "render-broken"]
    table = log[log.index("rbi loop: 2 idea(s)"):]
    assert "#1  " + IDEAS[0] in table and "#2  " + IDEAS[1] in table  # folded: one block per idea
    stage_lines = [line for line in lines if line.startswith("idea ")]
    assert_readable(log, 80, [], log_lines=LOOP_LOG_LINES)
    # The table holds what the last stage line of each idea said (its note last), every word whole.
    notes = [[line for line in stage_lines if line.startswith(f"idea {n}/2 ")][-1].rsplit("; ", 1)[-1]
             for n in (1, 2)]
    figures = [f"{fmt(r['baseline'])} → {fmt(r['best'])}" for r in rows if r["baseline"] is not None]
    assert_readable(table, 80, [*IDEAS, "render-sma", "render-broken", *figures, *notes])
    assert "succeeded: 1 of 2 in this run" in log and "failures by class: llm_bad_response 1" in log


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("width", WIDTHS)
def test_loop_table_reads_at_any_width(looped: dict[str, Any], width: int, mode: str) -> None:
    with ScriptedOpenAI() as server:  # nothing scripted: every idea was processed before
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-render", "RBI_MODEL": "gpt-4o-mini"}
        code, text = run_cli(*looped["args"], columns=width, mode=mode, db=looped["db"], env=env)
        assert server.requests == []
    assert code == 0  # nothing failed in this run
    assert "succeeded (skipped)" in text and "already processed" in text
    assert_readable(text, width, _loop_values(looped["rows"], all_columns=width == 200 or mode == "pipe"),
                    log_lines=LOOP_LOG_LINES)
    if mode == "pipe":
        assert "idea 1/2 done (succeeded, skipped): render-sma" in text


def test_lineage_reads_in_a_narrow_terminal(looped: dict[str, Any]) -> None:
    code, text = run_cli("lineage", "render-sma", columns=40, mode="terminal", db=looped["db"])
    assert code == 0
    assert_readable(text, 40, ["v1", "gpt-4o-mini", "research_idea@v1"])

