"""The optimizer's report: one self-contained HTML page (inline CSS, PNG charts as data URIs, no script).

Everything that reaches the page as text (strategy names, parameters, `changes_made`, guard values) may come
from an LLM, so every such string goes through `html.escape`; a strict Content-Security-Policy is a second
line: even an escaping mistake could not load or run anything.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from rbi.report import charts
from rbi.report.models import Curve, LineageEdge, ReportData, TrialPoint, VersionFigures

__all__ = ["FIGURE_STATS", "LineageEdge", "ReportData", "TrialPoint", "VersionFigures", "render_report",
           "verdict", "write_report"]

FIGURE_STATS: tuple[tuple[str, str], ...] = (
    ("return_pct", "Return [%]"),
    ("sharpe_ratio", "Sharpe ratio"),
    ("max_drawdown_pct", "Max. drawdown [%]"),
    ("win_rate_pct", "Win rate [%]"),
    ("num_trades", "Trades"),
    ("profit_factor", "Profit factor"),
)
_DASH = "—"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:24px;
color:#1d2330;background:#fff;line-height:1.45}
h1{font-size:1.6em;margin:0 0 4px}h3{font-size:1em;margin:16px 0 6px}
h2{font-size:1.2em;margin:32px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
.meta{color:#556;margin:0 0 16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #dde;border-radius:8px;padding:10px 16px;min-width:170px}
.card .k{font-size:.8em;color:#667;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:1.5em;font-weight:600}
.verdict{font-size:1.1em;padding:12px 16px;border-radius:8px;border-left:6px solid}
.verdict.good{background:#eaf6ec;border-color:#2e8540}.verdict.bad{background:#fbeaea;border-color:#c0392b}
.verdict.warn{background:#fff6e0;border-color:#d48a00}.verdict.none{background:#eef1f6;border-color:#6b7a90}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #dde;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f5f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.objective td,tr.best td{background:#fffbe6}.changed{font-weight:600;background:#fff3cd}
.pos{color:#2e8540}.neg{color:#c0392b}
.pre{white-space:pre-wrap;word-break:break-word;max-width:420px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.92em}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#556;font-size:.9em}
.missing{color:#6b5a00;background:#fff8dc;padding:6px 10px;border-radius:6px;display:inline-block}
ul.tree,ul.tree ul{list-style:none;padding-left:22px;margin:0}ul.tree li{margin:3px 0;position:relative}
ul.tree li::before{content:"└─ ";color:#99a}.rejected{color:#888}.tag{font-size:.8em;padding:1px 6px;border-radius:4px;
background:#e6e9f0;margin-left:4px}.tag.best{background:#ffe08a}.tag.promoted{background:#cdebd3}
.tag.rejected{background:#f3d0cc}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


# --------------------------------------------------------------------------- formatting


def _fmt(value: Any) -> str:
    """A value as escaped HTML text; None and non-finite numbers become an em dash."""
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        number = charts.finite(value)
        if number is None:
            return _DASH
        return f"{number:,.2f}" if abs(number) >= 0.01 or number == 0 else f"{number:.4g}"
    if isinstance(value, str):
        return escape(value)
    return escape(json.dumps(value, sort_keys=True, default=str))


def _signed(value: float | None, digits: int = 2) -> str:
    if value is None:
        return _DASH
    if isinstance(value, int):
        return f"{value:+,d}"
    return f"{value:+,.{digits}f}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sign_class(value: float | None) -> str:
    if value is None or value == 0:
        return ""
    return "pos" if value > 0 else "neg"


def _stat(stats: Mapping[str, Any] | None, key: str) -> Any:
    return None if stats is None else stats.get(key)


def _objective_value(figures: VersionFigures | None, objective: str) -> float | None:
    return None if figures is None else charts.finite(_stat(figures.out_of_sample, objective))


def _improvement(data: ReportData) -> tuple[float | None, float | None]:
    """(absolute gain, relative gain in %) of best over parent out-of-sample, positive = better."""
    parent = _objective_value(data.parent, data.objective)
    best = _objective_value(data.best, data.objective)
    if parent is None or best is None:
        return None, None
    gain = best - parent if data.maximize else parent - best
    return gain, (gain / abs(parent) * 100.0 if parent != 0 else None)


def _missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


# --------------------------------------------------------------------------- verdict


def _edge_for(data: ReportData, version: int) -> LineageEdge | None:
    edges = [e for e in data.lineage if e.child_version == version]
    return edges[-1] if edges else None


def _failed(trial: TrialPoint) -> bool:
    return charts.finite(trial.objective) is None


def _trial_count(data: ReportData, guards: Mapping[str, Any]) -> int:
    counted = guards.get("n_trials")
    return counted if isinstance(counted, int) and not isinstance(counted, bool) else len(data.trials)


def _guard_phrases(data: ReportData, guards: Mapping[str, Any]) -> tuple[list[str], bool]:
    """Phrases for the deflated Sharpe and look-ahead guards, and whether a guard raised a warning."""
    phrases: list[str] = []
    deflated = charts.finite(guards.get("deflated_sharpe"))
    if deflated is not None:
        phrases.append(f"deflated Sharpe {deflated:.2f} over {_trial_count(data, guards)} trials")
    else:
        phrases.append("deflated Sharpe not computed")
    lookahead = guards.get("lookahead_suspected")
    if lookahead is True:
        phrases.append("LOOK-AHEAD SUSPECTED")
    elif lookahead is False:
        phrases.append("no look-ahead detected")
    else:
        phrases.append("look-ahead not checked")
    return phrases, lookahead is True


def _rejection(edge: LineageEdge) -> str:
    guards = edge.guards
    reason = guards.get("reason")
    if isinstance(reason, str) and reason.strip():
        return reason.strip()
    if guards.get("lookahead_suspected") is True:
        return "look-ahead suspected"
    deflated = charts.finite(guards.get("deflated_sharpe"))
    if deflated is not None:
        return f"deflated Sharpe {deflated:.2f}"
    return "not promoted"


def _no_child_reason(data: ReportData) -> str:
    failed = sum(1 for t in data.trials if _failed(t))
    rejected = [e for e in data.lineage if e.guards.get("promoted") is False]
    if rejected:
        shown = "; ".join(f"v{e.child_version}: {_rejection(e)}" for e in rejected[:4])
        more = f" and {len(rejected) - 4} more" if len(rejected) > 4 else ""
        return f"{len(rejected)} candidate(s) rejected by the guards ({shown}{more})"
    if not data.trials:
        return "no trials were run"
    if failed == len(data.trials):
        return f"all {len(data.trials)} trial(s) failed"
    scored = len(data.trials) - failed
    return f"none of the {scored} scored trial(s) produced a candidate that passed the promotion checks"


def verdict(data: ReportData) -> tuple[str, str]:
    """(css class, plain-text sentence): does the best child beat its parent out-of-sample, and is it real?"""
    parent_v = data.parent.version
    objective = data.objective
    if data.best is None:
        parent_value = _objective_value(data.parent, objective)
        stays = f"v{parent_v} stays the best version"
        if parent_value is not None:
            stays += f" (out-of-sample {objective} {parent_value:.3g})"
        return "none", f"No child was promoted: {_no_child_reason(data)}. {stays}."
    best_v = data.best.version
    edge = _edge_for(data, best_v)
    phrases, warning = _guard_phrases(data, edge.guards if edge else {})
    gain, relative = _improvement(data)
    parent_value = _objective_value(data.parent, objective)
    best_value = _objective_value(data.best, objective)
    if gain is None or parent_value is None or best_value is None:
        which = " and ".join(f"v{v}" for v, val in ((parent_v, parent_value), (best_v, best_value)) if val is None)
        head = (f"v{best_v} was promoted, but the out-of-sample {objective} of {which} is missing, "
                "so the gain cannot be checked")
        return "warn", "; ".join([head, *phrases]) + "."
    amount = f"{relative:+.0f}%" if relative is not None else f"{gain:+.3g}"
    values = f"({parent_value:.3g} → {best_value:.3g})"
    if gain > 0:
        head = f"v{best_v} beats v{parent_v} out-of-sample by {amount} on {objective} {values}"
        css = "warn" if warning else "good"
    elif gain == 0:
        head = f"v{best_v} only ties v{parent_v} out-of-sample on {objective} {values}"
        css = "bad"
    else:
        head = f"v{best_v} does not beat v{parent_v} out-of-sample: {amount} on {objective} {values}"
        css = "bad"
    return css, "; ".join([head, *phrases]) + "."


# --------------------------------------------------------------------------- sections


def _headline(data: ReportData) -> str:
    direction = "higher is better" if data.maximize else "lower is better"
    iterations = len({t.iteration for t in data.trials})
    meta = (f"Objective <code>{escape(data.objective)}</code> ({direction}) · {len(data.trials)} trial(s) in "
            f"{iterations} iteration(s) · {len(data.lineage)} lineage edge(s)")
    if data.oos_start:
        meta += f" · out-of-sample from {escape(data.oos_start)}"
    objective = escape(data.objective)
    cards = [(f"parent v{data.parent.version} · out-of-sample {objective}",
              _fmt(_objective_value(data.parent, data.objective)), "")]
    if data.best is not None:
        gain, relative = _improvement(data)
        delta = _signed(gain, 3) + (f" ({relative:+.1f}%)" if relative is not None else "")
        cards.append((f"best v{data.best.version} · out-of-sample {objective}",
                      _fmt(_objective_value(data.best, data.objective)), ""))
        cards.append(("improvement (positive = better)", delta, _sign_class(gain)))
    else:
        cards.append(("best child", "none promoted", ""))
    card_html = "".join(f'<div class="card"><div class="k">{k}</div><div class="v{" " + css if css else ""}">{v}'
                        "</div></div>" for k, v, css in cards)
    css, sentence = verdict(data)
    return (f"<h1>Optimization report: {escape(data.strategy_name)}</h1>\n<p class=\"meta\">{meta}</p>\n"
            f'<div class="cards">{card_html}</div>\n<p class="verdict {css}" id="verdict">{escape(sentence)}</p>')


def _figures_table(data: ReportData) -> str:
    stats = list(FIGURE_STATS)
    if data.objective not in {key for key, _ in stats}:
        stats.insert(0, (data.objective, data.objective))
    columns: list[tuple[str, Mapping[str, Any] | None]] = [
        (f"v{data.parent.version} parent\nin-sample", data.parent.in_sample),
        (f"v{data.parent.version} parent\nout-of-sample", data.parent.out_of_sample),
    ]
    if data.best is not None:
        columns += [
            (f"v{data.best.version} best\nin-sample", data.best.in_sample),
            (f"v{data.best.version} best\nout-of-sample", data.best.out_of_sample),
        ]
    head = "".join(f"<th>{escape(title).replace(chr(10), '<br>')}</th>" for title, _ in columns)
    if data.best is not None:
        head += "<th>Δ out-of-sample<br>(best − parent)</th>"
    rows = []
    for key, label in stats:
        cells = "".join(f'<td class="num">{_fmt(_stat(values, key))}</td>' for _, values in columns)
        if data.best is not None:
            p, b = _stat(data.parent.out_of_sample, key), _stat(data.best.out_of_sample, key)
            diff: float | None = None
            if _is_int(p) and _is_int(b):
                diff = b - p  # counts stay whole numbers
            elif charts.finite(p) is not None and charts.finite(b) is not None:
                diff = float(b) - float(p)
            cells += f'<td class="num">{_signed(diff)}</td>'
        marker = ' class="objective"' if key == data.objective else ""
        rows.append(f"<tr{marker}><th>{escape(label)}</th>{cells}</tr>")
    notes = [f"{title.replace(chr(10), ' ')} figures were not recorded" for title, values in columns if not values]
    if data.best is None:
        notes.append("no child was promoted, so only the parent is shown")
    body = f"<table><tr><th>statistic</th>{head}</tr>{''.join(rows)}</table>"
    return "<h2>In-sample and out-of-sample figures</h2>\n" + body + "".join(_missing(n) for n in notes)


def _params_table(data: ReportData) -> str:
    parent, best = data.parent.params, data.best.params if data.best is not None else None
    names = sorted(set(parent) | set(best or {}))
    if not names:
        return "<h2>Parameters</h2>\n" + _missing("No parameters were recorded.")
    head = f"<th>v{data.parent.version} parent</th>" + (f"<th>v{data.best.version} best</th>" if data.best else "")
    rows = []
    for name in names:
        cells = f'<td class="num">{_fmt(parent.get(name))}</td>'
        if best is not None:
            changed = parent.get(name) != best.get(name)
            cells += f'<td class="num{" changed" if changed else ""}">{_fmt(best.get(name))}</td>'
        rows.append(f"<tr><th>{escape(name)}</th>{cells}</tr>")
    return f"<h2>Parameters</h2>\n<table><tr><th>parameter</th>{head}</tr>{''.join(rows)}</table>"


def _image(png: bytes, alt: str, caption: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _curves(data: ReportData) -> tuple[list[tuple[str, Curve]], list[str]]:
    series: list[tuple[str, Curve]] = []
    notes: list[str] = []
    versions: list[tuple[str, VersionFigures]] = [("parent", data.parent)]
    if data.best is not None:
        versions.append(("best child", data.best))
    for role, figures in versions:
        curve = figures.equity_curve
        if curve is not None and len(curve) >= 2:
            series.append((f"v{figures.version} ({role})", curve))
        else:
            notes.append(f"No equity curve was recorded for v{figures.version} ({role}).")
    return series, notes


def _equity_sections(data: ReportData) -> str:
    series, notes = _curves(data)
    parts = ["<h2>Equity</h2>"]
    if not series:
        parts += [_missing(n) for n in notes]
        parts += ["<h2>Drawdown</h2>", _missing("No equity curves, so no drawdown chart.")]
        return "\n".join(parts)
    caption = "Equity of " + " and ".join(label for label, _ in series) + " on the same axes."
    if data.oos_start:
        if all(charts.curve_has_times(curve) for _, curve in series):
            caption += f" Shaded: out-of-sample from {data.oos_start}."
        else:
            notes.append("The equity curves carry bar numbers, not times: the out-of-sample boundary is marked "
                         "only if oos_start is a bar number inside the data.")
    else:
        notes.append("No oos_start was given, so the in-sample/out-of-sample boundary is not marked.")
    parts.append(_image(charts.equity_chart(series, oos_start=data.oos_start), "equity curves", caption))
    parts += [_missing(n) for n in notes]
    parts.append("<h2>Drawdown</h2>")
    parts.append(_image(charts.drawdown_chart(series, oos_start=data.oos_start), "drawdowns",
                        "Drawdown from the running equity peak, in percent (underwater chart)."))
    return "\n".join(parts)


def _trials_section(data: ReportData) -> str:
    parts = ["<h2>Objective over trials</h2>"]
    trials = data.trials
    if not trials:
        return "\n".join([*parts, _missing("No trials were recorded.")])
    failed = [t for t in trials if _failed(t)]
    statuses = Counter(t.status for t in failed)
    failed_text = ", ".join(f"{escape(status)} × {count}" for status, count in sorted(statuses.items()))
    summary = (f"<p>{len(trials)} trial(s) in {len({t.iteration for t in trials})} iteration(s); "
               f"{len(trials) - len(failed)} scored, {len(failed)} without an objective"
               + (f" ({failed_text})" if failed else "") + ".</p>")
    parts.append(summary)
    if len(failed) == len(trials):
        parts.append(_missing(f"All {len(trials)} trial(s) failed: there is no objective to plot."))
        return "\n".join(parts)
    if len(trials) == 1:
        parts.append(_missing("Only one trial was run: there is no search progress to show."))
    png = charts.trials_chart(trials, objective=data.objective, maximize=data.maximize)
    parts.append(_image(png, "objective over trials", f"{data.objective} of every trial in run order, coloured by "
                 "iteration; the black step line is the best so far; grey x marks at the bottom are trials "
                 "without an objective."))
    parts.append(_best_trial(data))
    return "\n".join(parts)


def _best_trial(data: ReportData) -> str:
    scored = [t for t in data.trials if not _failed(t)]
    ranked = sorted(scored, key=lambda t: charts.finite(t.objective) or 0.0, reverse=data.maximize)
    best = ranked[0]
    position = sorted(data.trials, key=lambda t: (t.iteration, t.trial_number)).index(best) + 1
    params = ", ".join(f"{escape(str(k))}={_fmt(v)}" for k, v in sorted(best.params.items()))
    return (f"<p>Best trial: iteration {best.iteration}, trial {best.trial_number} (point {position} above), "
            f"{escape(data.objective)} {_fmt(best.objective)} with <code>{params}</code>.</p>")


def _varied_params(trials: Sequence[TrialPoint]) -> list[str]:
    values: dict[str, set[str]] = {}
    for trial in trials:
        for name, value in trial.params.items():
            values.setdefault(name, set()).add(json.dumps(value, sort_keys=True, default=str))
    return sorted(name for name, seen in values.items() if len(seen) > 1)


def _heatmap_section(data: ReportData) -> str:
    parts = ["<h2>Parameter heatmap</h2>"]
    if data.grid_params is None:
        varied = _varied_params(data.trials)
        if not data.trials:
            reason = "No trials, so there is no heatmap."
        elif len(varied) == 1:
            reason = (f"One-parameter search (only {varied[0]} varied): a heatmap needs two parameters; "
                      "see the objective over trials instead.")
        elif not varied:
            reason = "No parameter varied between trials, so there is no heatmap."
        else:
            reason = (f"The search was not a two-parameter grid ({len(varied)} parameters varied: "
                      f"{', '.join(varied)}), so there is no heatmap.")
        return "\n".join([*parts, _missing(reason)])
    x_param, y_param = data.grid_params
    if not charts.grid_cells(data.trials, x_param, y_param, maximize=data.maximize):
        return "\n".join([*parts, _missing(f"No scored trial carries both {x_param} and {y_param}: "
                                           "nothing to pivot.")])
    png = charts.heatmap_chart(data.trials, x_param, y_param, objective=data.objective, maximize=data.maximize)
    caption = (f"{data.objective} over {x_param} × {y_param} (best trial per cell); blank cells had no "
               "scored trial; the red outline marks the best cell.")
    parts.append(_image(png, "parameter heatmap", caption))
    return "\n".join(parts)


def _guards_text(guards: Mapping[str, Any]) -> str:
    if not guards:
        return _DASH
    return "<br>".join(f"{escape(str(k))}: {_fmt(v)}" for k, v in guards.items())


def _edge_state(edge: LineageEdge, best: int | None) -> str:
    tags = []
    promoted = edge.guards.get("promoted")
    if promoted is True:
        tags.append('<span class="tag promoted">promoted</span>')
    elif promoted is False:
        tags.append('<span class="tag rejected">rejected</span>')
    if edge.child_version == best:
        tags.append('<span class="tag best">best</span>')
    return "".join(tags)


def _lineage_section(data: ReportData) -> str:
    parts = ["<h2>Lineage</h2>"]
    if not data.lineage:
        return "\n".join([*parts, _missing("No lineage was recorded: no child version was created.")])
    best = data.best.version if data.best is not None else None
    rows = []
    for edge in sorted(data.lineage, key=lambda e: (e.child_version, e.parent_version)):
        marker = ' class="best"' if edge.child_version == best else ""
        delta = charts.finite(edge.performance_delta)
        rows.append(
            f'<tr{marker}><td>v{edge.child_version}{_edge_state(edge, best)}</td><td>v{edge.parent_version}</td>'
            f"<td>{escape(edge.optimization_type)}</td><td class=\"pre\">{escape(edge.changes_made)}</td>"
            f'<td class="num {_sign_class(delta)}">{_signed(delta, 3)}</td><td>{_guards_text(edge.guards)}</td></tr>'
        )
    parts.append("<table><tr><th>version</th><th>parent</th><th>type</th><th>changes</th>"
                 f"<th>Δ {escape(data.objective)}</th><th>guards</th></tr>{''.join(rows)}</table>")
    parts.append("<h3>Version tree</h3>")
    parts.append(_tree(data, best))
    return "\n".join(parts)


def _tree(data: ReportData, best: int | None) -> str:
    children: dict[int, list[LineageEdge]] = {}
    for edge in data.lineage:
        children.setdefault(edge.parent_version, []).append(edge)
    child_versions = {e.child_version for e in data.lineage}
    roots = sorted(v for v in children if v not in child_versions) or [data.parent.version]
    seen: set[int] = set()

    def node(version: int, edge: LineageEdge | None) -> str:
        label = f"<strong>v{version}</strong>"
        if edge is None:
            label += " <span class=\"tag\">root</span>" if version != data.parent.version else \
                " <span class=\"tag\">parent of this run</span>"
        else:
            delta = charts.finite(edge.performance_delta)
            label += (f" · {escape(edge.optimization_type)} · <span class=\"{_sign_class(delta)}\">"
                      f"Δ {_signed(delta, 3)}</span>{_edge_state(edge, best)}")
        if version in seen:
            return f"<li>{label} (repeated)</li>"
        seen.add(version)
        kids = sorted(children.get(version, []), key=lambda e: e.child_version)
        css = ' class="rejected"' if edge is not None and edge.guards.get("promoted") is False else ""
        inner = f"<ul>{''.join(node(e.child_version, e) for e in kids)}</ul>" if kids else ""
        return f"<li{css}>{label}{inner}</li>"

    return f'<ul class="tree">{"".join(node(root, None) for root in roots)}</ul>'


# --------------------------------------------------------------------------- page


def render_report(data: ReportData) -> str:
    """The whole page as a string."""
    sections = [
        _headline(data),
        _figures_table(data),
        _params_table(data),
        _equity_sections(data),
        _trials_section(data),
        _heatmap_section(data),
        _lineage_section(data),
    ]
    title = escape(f"rbi optimization report: {data.strategy_name}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def write_report(data: ReportData, path: Path) -> Path:
    """Write the report to `path` (atomically, parents created) and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(data)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
