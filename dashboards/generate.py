"""Write the Grafana dashboards of the Helm chart (charts/rbi-operator/dashboards/*.json).

This script is their one source: edit it, run `python dashboards/generate.py`, commit both. A chart test
regenerates them and fails when the JSON files differ, and another checks that every metric the queries name
is exported by operator/rbi/metrics.py. Only the standard library is used, so it runs anywhere.

Every query selects the operator's series with the dashboard variables $namespace and $job, so the
dashboards work for any release name and for several releases side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent.parent / "charts" / "rbi-operator" / "dashboards"
SEL = 'namespace=~"$namespace", job=~"$job"'
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


class Grid:
    """Lays panels out left to right on Grafana's 24-column grid, wrapping to the next row."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos

    def row(self, title: str) -> dict[str, Any]:
        if self.x:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        panel = {"type": "row", "title": title, "id": self.take_id(), "collapsed": False, "panels": [],
                 "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}}
        self.y += 1
        return panel

    def take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref, "range": True, **extra}


def timeseries(grid: Grid, title: str, targets: list[dict[str, Any]], *, unit: str = "short", w: int = 12,
               h: int = 8, description: str = "", stack: bool = False, minimum: float | None = 0) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                         "showPoints": "never",
                                                         "stacking": {"mode": "normal" if stack else "none"}}}
    if minimum is not None:
        defaults["min"] = minimum
    return {"type": "timeseries", "title": title, "description": description, "id": grid.take_id(),
            "datasource": DS, "gridPos": grid.place(w, h), "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(grid: Grid, title: str, expr: str, *, unit: str = "short", w: int = 6, h: int = 4, description: str = "",
         decimals: int | None = None, thresholds: list[tuple[float | None, str]] | None = None) -> dict[str, Any]:
    steps = [{"value": value, "color": color} for value, color in (thresholds or [(None, "blue")])]
    defaults: dict[str, Any] = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                "color": {"mode": "thresholds"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "stat", "title": title, "description": description, "id": grid.take_id(), "datasource": DS,
            "gridPos": grid.place(w, h), "targets": [target(expr, instant=True)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "auto"}}


def bargauge(grid: Grid, title: str, expr: str, legend: str, *, unit: str = "short", w: int = 12, h: int = 8,
             description: str = "") -> dict[str, Any]:
    return {"type": "bargauge", "title": title, "description": description, "id": grid.take_id(),
            "datasource": DS, "gridPos": grid.place(w, h),
            "targets": [target(expr, legend, instant=True, format="time_series")],
            "fieldConfig": {"defaults": {"unit": unit, "min": 0, "color": {"mode": "palette-classic"}},
                            "overrides": []},
            "options": {"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}}


def heatmap(grid: Grid, title: str, expr: str, *, w: int = 12, h: int = 8, description: str = "") -> dict[str, Any]:
    return {"type": "heatmap", "title": title, "description": description, "id": grid.take_id(), "datasource": DS,
            "gridPos": grid.place(w, h), "targets": [target(expr, "{{le}}", format="heatmap")],
            "options": {"calculate": False, "yAxis": {"unit": "percentunit"}, "cellGap": 1,
                        "color": {"scheme": "Oranges", "mode": "scheme"}, "tooltip": {"show": True}},
            "fieldConfig": {"defaults": {}, "overrides": []}}


def quantiles(metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[dict[str, Any]]:
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [target(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
                   f"p{round(q * 100)}{suffix}", chr(ord("A") + i)) for i, q in enumerate(qs)]


def variables() -> dict[str, Any]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {"name": name, "label": label, "type": "query", "datasource": DS, "refresh": 2, "sort": 1,
                "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
                "includeAll": True, "multi": True, "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": []}

    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "options": [], "refresh": 1, "regex": ""},
        query_var("namespace", "Namespace", "label_values(rbi_queue_depth, namespace)"),
        query_var("job", "Job", 'label_values(rbi_queue_depth{namespace=~"$namespace"}, job)'),
    ]}


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["rbi"], "editable": True,
        "schemaVersion": 39, "version": 1, "graphTooltip": 1, "refresh": "30s", "timezone": "browser",
        "time": {"from": "now-6h", "to": "now"}, "fiscalYearStartMonth": 0, "liveNow": False,
        "annotations": {"list": []}, "templating": variables(), "panels": panels,
        "links": [{"title": "rbi dashboards", "type": "dashboards", "tags": ["rbi"], "asDropdown": True,
                   "includeVars": True, "keepTime": True}],
    }


def runs_dashboard() -> dict[str, Any]:
    g = Grid()
    failed = f'{SEL}, status="failed"'
    panels = [
        g.row("Runs"),
        stat(g, "Runs finished", f"sum(increase(rbi_runs_total{{{SEL}}}[$__range]))", decimals=0,
             description="Backtest runs that finished in the selected time range, local and in Jobs."),
        stat(g, "Success rate", f'sum(increase(rbi_runs_total{{{SEL}, status="succeeded"}}[$__range])) '
             f"/ sum(increase(rbi_runs_total{{{SEL}}}[$__range]))", unit="percentunit",
             thresholds=[(None, "red"), (0.5, "orange"), (0.8, "green")],
             description="Runs that succeeded with at least one trade."),
        stat(g, "Failed runs", f"sum(increase(rbi_runs_total{{{failed}}}[$__range]))", decimals=0,
             thresholds=[(None, "green"), (1, "orange")]),
        stat(g, "Median run time", f"histogram_quantile(0.5, sum by (le) "
             f"(increase(rbi_run_duration_seconds_bucket{{{SEL}}}[$__range])))", unit="s"),
        timeseries(g, "Run throughput by status",
                   [target(f"sum by (status) (rate(rbi_runs_total{{{SEL}}}[{RATE}]))", "{{status}}")],
                   unit="ops", stack=True, description="Runs finished per second: succeeded, no_trades, failed."),
        timeseries(g, "Success rate",
                   [target(f'sum(rate(rbi_runs_total{{{SEL}, status="succeeded"}}[{RATE}])) '
                           f"/ sum(rate(rbi_runs_total{{{SEL}}}[{RATE}]))", "succeeded"),
                    target(f'sum(rate(rbi_runs_total{{{SEL}, status="no_trades"}}[{RATE}])) '
                           f"/ sum(rate(rbi_runs_total{{{SEL}}}[{RATE}]))", "no trades", "B")],
                   unit="percentunit"),
        g.row("Failures"),
        timeseries(g, "Failures by class",
                   [target(f"sum by (failure_class) (rate(rbi_runs_total{{{failed}}}[{RATE}]))",
                           "{{failure_class}}")], unit="ops", stack=True,
                   description="sandbox_error is the platform's fault; the other classes are the strategy's "
                               "or its limits'."),
        bargauge(g, "Failures by class in range",
                 f"sort_desc(sum by (failure_class) (increase(rbi_runs_total{{{failed}}}[$__range])))",
                 "{{failure_class}}"),
        g.row("Duration"),
        timeseries(g, "Run duration percentiles", quantiles("rbi_run_duration_seconds", "executor"), unit="s",
                   description="Wall-clock time of one run, start to parsed result, by executor."),
        timeseries(g, "Mean run duration",
                   [target(f"sum by (executor) (rate(rbi_run_duration_seconds_sum{{{SEL}}}[{RATE}])) / "
                           f"sum by (executor) (rate(rbi_run_duration_seconds_count{{{SEL}}}[{RATE}]))",
                           "{{executor}}")], unit="s"),
        g.row("Queue and Jobs"),
        timeseries(g, "Queue depth and active Jobs",
                   [target(f"sum(rbi_queue_depth{{{SEL}}})", "queued"),
                    target(f"sum(rbi_active_jobs{{{SEL}}})", "active Jobs", "B")],
                   description="Runs waiting for a Job slot, and Jobs created and not yet finished."),
        timeseries(g, "Queue wait percentiles", quantiles("rbi_queue_wait_seconds"), unit="s",
                   description="Time a run waited in the queue before its Job was created."),
        timeseries(g, "Jobs created", [target(f"sum(rate(rbi_jobs_created_total{{{SEL}}}[{RATE}]))", "Jobs/s")],
                   unit="ops"),
        timeseries(g, "Strategies by phase", [target(f"sum by (phase) (rbi_strategies{{{SEL}}})", "{{phase}}")],
                   stack=True),
    ]
    return dashboard("rbi-runs", "rbi / Runs", "Backtest runs: throughput, success, failures by class, duration, "
                     "queue and Jobs.", panels)


def optimization_dashboard() -> dict[str, Any]:
    g = Grid()
    panels = [
        g.row("Optimisation"),
        stat(g, "Trials run", f"sum(increase(rbi_optimization_trials_total{{{SEL}}}[$__range]))", decimals=0),
        stat(g, "Iterations promoted", f'sum(increase(rbi_optimization_iterations_total{{{SEL}, result="promoted"}}'
             "[$__range]))", decimals=0),
        stat(g, "Promotion rate", f'sum(increase(rbi_optimization_iterations_total{{{SEL}, result="promoted"}}'
             f"[$__range])) / sum(increase(rbi_optimization_iterations_total{{{SEL}}}[$__range]))",
             unit="percentunit", description="Share of optimisation iterations whose child was promoted."),
        stat(g, "Median improvement", f"histogram_quantile(0.5, sum by (le) "
             f"(increase(rbi_optimization_improvement_ratio_bucket{{{SEL}}}[$__range])))", unit="percentunit",
             description="Relative improvement of the objective of a promoted child over its parent."),
        timeseries(g, "Iterations by result",
                   [target(f"sum by (result) (increase(rbi_optimization_iterations_total{{{SEL}}}[{RATE}]))",
                           "{{result}}")], stack=True),
        timeseries(g, "Trials by source",
                   [target(f"sum by (source) (rate(rbi_optimization_trials_total{{{SEL}}}[{RATE}]))",
                           "{{source}}")], unit="ops", stack=True,
                   description="params: parameter search; llm_code: LLM-proposed code changes."),
        timeseries(g, "Improvement per promoted child",
                   quantiles("rbi_optimization_improvement_ratio", qs=(0.1, 0.5, 0.9)),
                   unit="percentunit", minimum=None,
                   description="How much each promoted version improved on its parent, over time. (The histogram "
                               "has negative buckets, so it exports no _sum and there is no mean.)"),
        heatmap(g, "Improvement distribution",
                f"sum by (le) (increase(rbi_optimization_improvement_ratio_bucket{{{SEL}}}[{RATE}]))"),
        g.row("LLM"),
        stat(g, "LLM calls", f"sum(increase(rbi_llm_calls_total{{{SEL}}}[$__range]))", decimals=0),
        stat(g, "LLM call success", f'sum(increase(rbi_llm_calls_total{{{SEL}, outcome="ok"}}[$__range])) '
             f"/ sum(increase(rbi_llm_calls_total{{{SEL}}}[$__range]))", unit="percentunit",
             thresholds=[(None, "red"), (0.75, "orange"), (0.95, "green")]),
        stat(g, "Tokens", f"sum(increase(rbi_llm_tokens_total{{{SEL}}}[$__range]))", decimals=0),
        stat(g, "Cost", f"sum(increase(rbi_llm_cost_dollars_total{{{SEL}}}[$__range]))", unit="currencyUSD",
             decimals=2, description="Estimated from the token counts and the model's price."),
        timeseries(g, "LLM calls by agent and outcome",
                   [target(f"sum by (agent, outcome) (rate(rbi_llm_calls_total{{{SEL}}}[{RATE}]))",
                           "{{agent}} {{outcome}}")], unit="ops"),
        timeseries(g, "Tokens by agent and kind",
                   [target(f"sum by (agent, kind) (rate(rbi_llm_tokens_total{{{SEL}}}[{RATE}]))",
                           "{{agent}} {{kind}}")], unit="short", stack=True),
        timeseries(g, "Cost by agent (per hour)",
                   [target(f"sum by (agent) (rate(rbi_llm_cost_dollars_total{{{SEL}}}[{RATE}])) * 3600",
                           "{{agent}}")], unit="currencyUSD", stack=True),
        bargauge(g, "Cost by agent in range",
                 f"sort_desc(sum by (agent) (increase(rbi_llm_cost_dollars_total{{{SEL}}}[$__range])))",
                 "{{agent}}", unit="currencyUSD"),
        timeseries(g, "Ideas by result",
                   [target(f"sum by (result) (increase(rbi_ideas_total{{{SEL}}}[{RATE}]))", "{{result}}")],
                   stack=True, w=24, description="Ideas that finished the hands-free loop."),
    ]
    return dashboard("rbi-optimization-llm", "rbi / Optimisation and LLM",
                     "Optimisation trials, promotions and improvement; LLM calls, tokens and cost.", panels)


def health_dashboard() -> dict[str, Any]:
    g = Grid()
    panels = [
        g.row("Operator"),
        stat(g, "Operator up", f"min(up{{{SEL}}})", thresholds=[(None, "red"), (1, "green")],
             description="1 when Prometheus scraped the operator's /metrics successfully."),
        stat(g, "Active Jobs", f"sum(rbi_active_jobs{{{SEL}}})"),
        stat(g, "Queued runs", f"sum(rbi_queue_depth{{{SEL}}})", thresholds=[(None, "green"), (10, "orange")]),
        stat(g, "Handler errors", f'sum(increase(rbi_handler_errors_total{{{SEL}, kind!="temporary"}}[$__range]))',
             decimals=0, thresholds=[(None, "green"), (1, "red")],
             description="Permanent and unexpected handler errors in the range (temporary ones are retried)."),
        timeseries(g, "Scrape status", [target(f"up{{{SEL}}}", "{{instance}}")],
                   description="0: the operator is down or not reachable."),
        timeseries(g, "Handler errors by handler and kind",
                   [target(f"sum by (handler, kind) (rate(rbi_handler_errors_total{{{SEL}}}[{RATE}]))",
                           "{{handler}} {{kind}}")], unit="ops"),
        timeseries(g, "Queue depth and active Jobs",
                   [target(f"sum(rbi_queue_depth{{{SEL}}})", "queued"),
                    target(f"sum(rbi_active_jobs{{{SEL}}})", "active Jobs", "B")]),
        timeseries(g, "Jobs created", [target(f"sum(rate(rbi_jobs_created_total{{{SEL}}}[{RATE}]))", "Jobs/s")],
                   unit="ops"),
        timeseries(g, "Strategies by phase", [target(f"sum by (phase) (rbi_strategies{{{SEL}}})", "{{phase}}")],
                   stack=True, w=24),
    ]
    return dashboard("rbi-operator-health", "rbi / Operator health",
                     "Is the operator up, are its handlers failing, is the queue moving.", panels)


DASHBOARDS = {
    "rbi-runs.json": runs_dashboard,
    "rbi-optimization-llm.json": optimization_dashboard,
    "rbi-operator-health.json": health_dashboard,
}


def render() -> Iterator[tuple[str, str]]:
    for name, build in DASHBOARDS.items():
        yield name, json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs, write nothing")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
