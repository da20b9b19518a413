"""The optimizer's HTML report, built from real backtesting.py runs on the bundled BTC-USD 15m data.

The expected verdicts come from the live statistics of those runs, never from numbers copied out of an
earlier run: if the data or backtesting.py change, the direction checks still hold or fail for a reason.
"""

from __future__ import annotations

import base64
import re
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from backtesting import Backtest, Strategy
from backtesting.lib import crossover

from rbi.prepare.data import load_ohlcv
from rbi.report import LineageEdge, ReportData, TrialPoint, VersionFigures, charts, render_report, verdict, write_report
from rbi.stats import equity_curve, stats_to_dict

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
SCRIPT_CHANGE = 'Widened the slow SMA <script>alert("pwned")</script> & tightened exits'
PARENT_PARAMS = {"n1": 30, "n2": 120}
CHILD_PARAMS = {"n1": 50, "n2": 200}
GRID_N1 = (5, 10, 20)
GRID_N2 = (30, 50, 80)
GRID_ROWS = 5_000


def _sma(values: Any, n: int) -> Any:
    return pd.Series(values).rolling(n).mean().to_numpy()


class SmaCross(Strategy):  # type: ignore[misc]
    n1 = 10
    n2 = 40

    def init(self) -> None:
        self.fast = self.I(_sma, self.data.Close, self.n1)
        self.slow = self.I(_sma, self.data.Close, self.n2)

    def next(self) -> None:
        if crossover(self.fast, self.slow):
            self.buy(size=0.5)
        elif crossover(self.slow, self.fast):
            self.position.close()


def _run(frame: pd.DataFrame, params: dict[str, int]) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backtest = Backtest(frame, SmaCross, cash=1_000_000, commission=0.001, finalize_trades=True)
        return backtest.run(**params)


@dataclass(frozen=True)
class Fixture:
    data: ReportData
    oos_start: str

    @property
    def best(self) -> VersionFigures:
        assert self.data.best is not None
        return self.data.best

    def curve(self, figures: VersionFigures) -> list[list[Any]]:
        assert figures.equity_curve is not None
        return [list(row) for row in figures.equity_curve]


def _figures(version: int, params: dict[str, int], frame: pd.DataFrame, cut: int) -> VersionFigures:
    return VersionFigures(
        version=version,
        params=params,
        in_sample=stats_to_dict(_run(frame.iloc[:cut], params)),
        out_of_sample=stats_to_dict(_run(frame.iloc[cut:], params)),
        equity_curve=equity_curve(_run(frame, params)),
    )


def _grid_trials(frame: pd.DataFrame) -> list[TrialPoint]:
    head = frame.iloc[:GRID_ROWS]
    trials = []
    number = 0
    for iteration, n1 in enumerate(GRID_N1, start=1):
        for n2 in GRID_N2:
            stats = stats_to_dict(_run(head, {"n1": n1, "n2": n2}))
            status = "succeeded" if stats["num_trades"] else "no_trades"
            trials.append(TrialPoint(iteration, number, {"n1": n1, "n2": n2}, stats["sharpe_ratio"], status))
            number += 1
    # A real run that cannot trade: the slow SMA never warms up on 5,000 bars, so Sharpe is undefined.
    stats = stats_to_dict(_run(head, {"n1": 50, "n2": GRID_ROWS + 1_000}))
    assert stats["num_trades"] == 0 and stats["sharpe_ratio"] is None
    trials.append(TrialPoint(3, number, {"n1": 50, "n2": GRID_ROWS + 1_000}, stats["sharpe_ratio"], "no_trades"))
    return trials


@pytest.fixture(scope="module")
def real(bundled_data: Path) -> Fixture:
    frame = load_ohlcv(bundled_data)
    cut = int(len(frame) * 0.7)
    oos_start = frame.index[cut].isoformat()
    parent = _figures(1, PARENT_PARAMS, frame, cut)
    best = _figures(3, CHILD_PARAMS, frame, cut)
    lineage = [
        LineageEdge(1, 2, "llm_rewrite", SCRIPT_CHANGE, 0.41,
                    {"deflated_sharpe": 0.55, "lookahead_suspected": True, "promoted": False}),
        LineageEdge(1, 3, "param_grid", "n1 30 -> 50, n2 120 -> 200", 0.83,
                    {"deflated_sharpe": 0.97, "lookahead_suspected": False, "promoted": True, "n_trials": 240}),
        LineageEdge(3, 4, "param_grid", "n1 50 -> 55", -0.12,
                    {"deflated_sharpe": 0.31, "lookahead_suspected": False, "promoted": False}),
    ]
    data = ReportData(
        strategy_name="SmaCross <b>&</b> friends",
        objective="sharpe_ratio",
        maximize=True,
        parent=parent,
        best=best,
        trials=_grid_trials(frame),
        lineage=lineage,
        grid_params=("n1", "n2"),
        oos_start=oos_start,
    )
    return Fixture(data, oos_start)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(encoded, validate=True) for encoded in IMG_RE.findall(page)]


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def _assert_self_contained(page: str) -> None:
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    # Every src is a data URI, there is no href, no stylesheet link, no script.
    assert all(v.startswith("data:image/png;base64,") for v in re.findall(r'src="([^"]*)"', page))
    assert "href=" not in page
    assert "<link" not in page.lower()
    assert "<script" not in page.lower()
    assert "url(" not in page


# --------------------------------------------------------------------------- the full report


def test_full_report_from_real_runs(real: Fixture, tmp_path: Path) -> None:
    data = real.data
    assert data.parent.out_of_sample is not None and real.best.out_of_sample is not None
    parent_oos = data.parent.out_of_sample["sharpe_ratio"]
    best_oos = real.best.out_of_sample["sharpe_ratio"]
    # The chosen parameters must really give a child that wins out-of-sample, else this test proves nothing.
    assert parent_oos is not None and best_oos is not None and best_oos > parent_oos

    target = write_report(data, tmp_path / "nested" / "report.html")
    assert target == tmp_path / "nested" / "report.html"
    assert target.is_file()
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temporary file left behind
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    _assert_self_contained(page)

    images = _images(page)
    assert len(images) == 4  # equity, drawdown, objective over trials, heatmap
    for png in images:
        width, height = _png_size(png)
        assert width >= 500 and height >= 300
        assert len(png) > 5_000

    gain = (best_oos - parent_oos) / abs(parent_oos) * 100
    assert f"v3 beats v1 out-of-sample by {gain:+.0f}% on sharpe_ratio" in page
    assert "deflated Sharpe 0.97 over 240 trials; no look-ahead detected" in page
    assert 'class="verdict good"' in page

    # Lineage: one row per edge, in version order, with its parent, type and guards.
    rows = re.findall(r"<tr(?: class=\"best\")?><td>v(\d+)<span[^>]*>.*?</td><td>v(\d+)</td><td>([^<]*)</td>", page)
    assert rows == [("2", "1", "llm_rewrite"), ("3", "1", "param_grid"), ("4", "3", "param_grid")]
    assert "deflated_sharpe: 0.97" in page and "lookahead_suspected: yes" in page
    assert '<ul class="tree">' in page

    # Untrusted text is escaped, never markup.
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; tightened exits" in page
    assert "SmaCross &lt;b&gt;&amp;&lt;/b&gt; friends" in page
    assert "<b>&</b>" not in page

    # The figures table shows both samples of both versions, the missing-value dash included.
    assert "<th>v1 parent<br>in-sample</th>" in page and "<th>v3 best<br>out-of-sample</th>" in page
    assert f"{best_oos:,.2f}" in page and f"{parent_oos:,.2f}" in page
    # The no-trades trial is counted, and the out-of-sample boundary is named.
    assert "no_trades × 1" in page
    assert f"out-of-sample from {real.oos_start}" in page


def test_verdict_direction_follows_the_numbers(real: Fixture) -> None:
    swapped = replace(real.data, parent=replace(real.best, version=1), best=replace(real.data.parent, version=3))
    css, sentence = verdict(swapped)
    assert css == "bad"
    assert sentence.startswith("v3 does not beat v1 out-of-sample: -")

    suspicious = replace(real.data, lineage=[replace(e, guards={**e.guards, "lookahead_suspected": True})
                                             for e in real.data.lineage])
    css, sentence = verdict(suspicious)
    assert css == "warn" and "LOOK-AHEAD SUSPECTED" in sentence and "beats" in sentence


def test_minimised_objective_reads_lower_as_better() -> None:
    data = ReportData("S", "ulcer_index", False,
                      VersionFigures(1, {"n": 1}, {"ulcer_index": 2.2}, {"ulcer_index": 2.0}),
                      VersionFigures(2, {"n": 2}, {"ulcer_index": 1.0}, {"ulcer_index": 1.5}))
    css, sentence = verdict(data)
    assert sentence.startswith("v2 beats v1 out-of-sample by +25% on ulcer_index (2 → 1.5)")
    assert "deflated Sharpe not computed" in sentence and "look-ahead not checked" in sentence
    assert css == "good"


def test_script_in_changes_made_is_escaped(tmp_path: Path) -> None:
    edge = LineageEdge(1, 2, "llm<img src=x onerror=alert(1)>", "<script>alert(1)</script>", None,
                       {"note</td><script>": "<script>x</script>"})
    data = ReportData("<script>name</script>", "sharpe_ratio", True, VersionFigures(1, {"<p>": "<i>"}),
                      lineage=[edge], trials=[TrialPoint(1, 0, {"<k>": "<v>"}, 0.5, "<s>")])
    page = write_report(data, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;name&lt;/script&gt;" in page
    assert "&lt;p&gt;" in page and "&lt;i&gt;" in page and "&lt;k&gt;" in page
    assert "<i>" not in page and "<k>" not in page and "<v>" not in page and "<s>" not in page


# --------------------------------------------------------------------------- degenerate inputs


def _page(data: ReportData, tmp_path: Path) -> str:
    page = write_report(data, tmp_path / "report.html").read_text(encoding="utf-8")
    _assert_self_contained(page)
    for png in _images(page):
        _png_size(png)
    return page


def test_no_child_promoted(real: Fixture, tmp_path: Path) -> None:
    data = replace(real.data, best=None)
    page = _page(data, tmp_path)
    assert "No child was promoted: 2 candidate(s) rejected by the guards (v2: look-ahead suspected; " \
           "v4: deflated Sharpe 0.31)" in page
    assert "v1 stays the best version" in page
    assert "no child was promoted, so only the parent is shown" in page
    assert "v3 best" not in page and "out-of-sample<br>(best − parent)" not in page
    assert len(_images(page)) == 4  # the parent's curves, the trials and the heatmap are still there


def test_no_equity_curves(real: Fixture, tmp_path: Path) -> None:
    data = replace(real.data, parent=replace(real.data.parent, equity_curve=None),
                   best=replace(real.best, equity_curve=[]))
    page = _page(data, tmp_path)
    assert "No equity curve was recorded for v1 (parent)." in page
    assert "No equity curve was recorded for v3 (best child)." in page
    assert "No equity curves, so no drawdown chart." in page
    assert len(_images(page)) == 2  # trials and heatmap


def test_only_one_equity_curve(real: Fixture, tmp_path: Path) -> None:
    page = _page(replace(real.data, parent=replace(real.data.parent, equity_curve=None)), tmp_path)
    assert "No equity curve was recorded for v1 (parent)." in page
    assert len(_images(page)) == 4


def test_no_trials(real: Fixture, tmp_path: Path) -> None:
    page = _page(replace(real.data, trials=[], grid_params=None), tmp_path)
    assert "No trials were recorded." in page
    assert "No trials, so there is no heatmap." in page
    assert len(_images(page)) == 2  # equity and drawdown


def test_single_trial(real: Fixture, tmp_path: Path) -> None:
    page = _page(replace(real.data, trials=real.data.trials[:1]), tmp_path)
    assert "Only one trial was run" in page
    assert len(_images(page)) == 4  # a one-cell heatmap is still a heatmap


def test_all_trials_failed(real: Fixture, tmp_path: Path) -> None:
    failed = [TrialPoint(1, i, {"n1": 5 + i, "n2": 30}, None, "failed") for i in range(3)]
    page = _page(replace(real.data, best=None, lineage=[], trials=failed), tmp_path)
    assert "All 3 trial(s) failed: there is no objective to plot." in page
    assert "No child was promoted: all 3 trial(s) failed." in page
    assert "failed × 3" in page
    assert "No scored trial carries both n1 and n2: nothing to pivot." in page
    assert "No lineage was recorded" in page
    assert len(_images(page)) == 2


def test_one_parameter_search(real: Fixture, tmp_path: Path) -> None:
    trials = [t for t in real.data.trials if t.params["n2"] == GRID_N2[0]]
    trials = [replace(t, params={"n1": t.params["n1"], "n2": 30}) for t in trials]
    page = _page(replace(real.data, trials=trials, grid_params=None), tmp_path)
    assert "One-parameter search (only n1 varied)" in page
    assert len(_images(page)) == 3


def test_many_parameter_search_is_not_a_grid(real: Fixture, tmp_path: Path) -> None:
    trials = [replace(t, params={**t.params, "size": 0.1 * (i + 1)}) for i, t in enumerate(real.data.trials)]
    page = _page(replace(real.data, trials=trials, grid_params=None), tmp_path)
    assert "not a two-parameter grid (3 parameters varied: n1, n2, size)" in page


def test_minimal_data_renders(tmp_path: Path) -> None:
    page = _page(ReportData("bare", "sharpe_ratio", True, VersionFigures(1)), tmp_path)
    assert "No child was promoted: no trials were run." in page
    assert "v1 parent in-sample figures were not recorded" in page
    assert "No parameters were recorded." in page
    assert page.count("—") >= 12  # every figure cell is a dash
    assert _images(page) == []


def test_best_without_out_of_sample_figures(real: Fixture) -> None:
    data = replace(real.data, best=replace(real.best, out_of_sample=None))
    css, sentence = verdict(data)
    assert css == "warn"
    assert "out-of-sample sharpe_ratio of v3 is missing" in sentence


def test_bar_indexed_curves_mark_the_boundary_by_bar(real: Fixture, tmp_path: Path) -> None:
    curve = [[i, 100.0 + i, -float(i % 7)] for i in range(200)]
    data = replace(real.data, parent=replace(real.data.parent, equity_curve=curve),
                   best=replace(real.best, equity_curve=curve), oos_start="140")
    page = _page(data, tmp_path)
    assert "carry bar numbers, not times" in page
    assert len(_images(page)) == 4


# --------------------------------------------------------------------------- charts on their own


def test_chart_functions_return_png_and_refuse_empty_input(real: Fixture) -> None:
    series = [("parent", real.curve(real.data.parent))]
    for png in (charts.equity_chart(series, oos_start=real.oos_start), charts.drawdown_chart(series),
                charts.trials_chart(real.data.trials, objective="sharpe_ratio", maximize=True),
                charts.heatmap_chart(real.data.trials, "n1", "n2", objective="sharpe_ratio", maximize=False)):
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5_000
    with pytest.raises(ValueError):
        charts.equity_chart([("x", [])])
    with pytest.raises(ValueError):
        charts.trials_chart([TrialPoint(1, 0, {}, None, "failed")], objective="s", maximize=True)
    with pytest.raises(ValueError):
        charts.heatmap_chart(real.data.trials, "n1", "missing", objective="s", maximize=True)


def test_heatmap_keeps_the_best_trial_per_cell() -> None:
    trials = [TrialPoint(1, 0, {"a": 1, "b": 2}, 0.5, "succeeded"),
              TrialPoint(2, 1, {"a": 1, "b": 2}, 0.9, "succeeded"),
              TrialPoint(2, 2, {"a": 2, "b": 2}, float("nan"), "failed")]
    assert charts.grid_cells(trials, "a", "b", maximize=True) == {(1, 2): 0.9}
    assert charts.grid_cells(trials, "a", "b", maximize=False) == {(1, 2): 0.5}


def test_charts_render_concurrently(real: Fixture) -> None:
    series = [("parent", real.curve(real.data.parent)), ("best", real.curve(real.best))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        pngs = list(pool.map(lambda _: charts.equity_chart(series, oos_start=real.oos_start), range(4)))
    assert all(p.startswith(PNG_SIGNATURE) for p in pngs)
    # Same input, same picture: no figure state leaks between threads.
    assert len({len(p) for p in pngs}) == 1


def test_render_report_is_a_string_without_writing(tmp_path: Path) -> None:
    page = render_report(ReportData("s", "sharpe_ratio", True, VersionFigures(1)))
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
    assert list(tmp_path.iterdir()) == []
