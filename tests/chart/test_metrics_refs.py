"""Dashboards and alert rules use only metrics that rbi really exports, and the PromQL is valid.

promtool (Debian's prometheus package; .ci/run installs it) parses every alert rule and every dashboard
query, and `promtool test rules` fires the alerts on synthetic series.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helm import CHART, NAMESPACE, RELEASE, REPO, render, require
from .promql import (
    dashboard_queries,
    exported_names,
    families,
    for_grafana_promtool,
    metric_names,
    query_metric_names,
)
from .test_chart import SCENARIOS

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# `up` is written by Prometheus for every scrape target: the one series not exported by rbi itself.
ALLOWED = {"up"}


def promtool() -> str:
    return require("promtool", shutil.which("promtool"), "apt-get install prometheus (.ci/run does)")


def load(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def rule_groups(scenario: str = "cluster-wide") -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = render(SCENARIOS[scenario]).one("PrometheusRule")["spec"]["groups"]
    return groups


# --- the extractor itself ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (le, executor) (rate(rbi_run_duration_seconds_bucket{job=~"$job"}[$__rate_interval]))',
     {"rbi_run_duration_seconds_bucket"}),
    ("max(rbi_queue_depth) > 0 and on() sum(increase(rbi_jobs_created_total[15m])) == 0",
     {"rbi_queue_depth", "rbi_jobs_created_total"}),
    ('absent(up{namespace="rbi"} == 1)', {"up"}),
    ("histogram_quantile(0.99, sum without (instance) (rate(a_bucket[5m] offset 1h))) * 1e+06 / b",
     {"a_bucket", "b"}),
    ('{__name__="rbi_strategies", phase="Failed"}', {"rbi_strategies"}),
    ('sum(rate(x{label="rate(not_a_metric)"}[1m])) / ignoring(kind) group_left(agent) y', {"x", "y"}),
])
def test_metric_names_extractor(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_label_values_variable() -> None:
    assert query_metric_names('label_values(rbi_queue_depth{namespace=~"$namespace"}, job)') == {"rbi_queue_depth"}


def test_exported_names_are_real_samples() -> None:
    names = exported_names()
    assert {"rbi_runs_total", "rbi_run_duration_seconds_bucket", "rbi_queue_depth"} <= names
    assert "rbi_llm_cost_dollars_total" in names
    assert "rbi_runs" not in names  # a counter is exposed as rbi_runs_total only
    assert "rbi_run_duration_seconds_sum" in names
    assert "rbi_optimization_improvement_ratio_sum" not in names  # negative buckets: no _sum


# --- dashboards ----------------------------------------------------------------------------------------------


def test_dashboards_are_generated_from_their_source() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "dashboards" / "generate.py"), "--check"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in DASHBOARDS] == ["rbi-operator-health.json", "rbi-optimization-llm.json", "rbi-runs.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_metrics_exist(path: Path) -> None:
    dashboard = load(path)
    exported = exported_names() | ALLOWED
    queries = list(dashboard_queries(dashboard))
    assert len(queries) >= 8
    for where, expr in queries:
        names = query_metric_names(expr)
        assert names, f"{path.name} {where}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{path.name} {where}: {sorted(unknown)} not exported by rbi.metrics"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] == path.stem and dashboard["title"].startswith("rbi / ")
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace", "job"}
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert 'namespace=~"$namespace"' in target["expr"] and 'job=~"$job"' in target["expr"], panel["title"]
    assert len(ids) == len(set(ids))


def test_a_made_up_metric_is_caught() -> None:
    target = {"refId": "A", "expr": "sum(rate(rbi_runs_failed_total[5m]))"}
    dashboard = {"panels": [{"title": "t", "targets": [target]}]}
    ((_, expr),) = dashboard_queries(dashboard)
    assert query_metric_names(expr) - exported_names() == {"rbi_runs_failed_total"}


def test_every_metric_family_is_on_a_dashboard() -> None:
    used: set[str] = set()
    for path in DASHBOARDS:
        for _, expr in dashboard_queries(load(path)):
            used |= query_metric_names(expr)
    suffixes = ("_total", "_bucket", "_sum", "_count")
    shown = {next((n[: -len(s)] for s in suffixes if n.endswith(s)), n) for n in used}
    assert families() - shown == set()


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    # Each query becomes a recording rule, so promtool's PromQL parser checks it.
    rules = []
    for path in DASHBOARDS:
        for i, (_, expr) in enumerate(dashboard_queries(load(path))):
            if not expr.startswith("label_values("):
                rules.append({"record": f"dashboard_check:{path.stem.replace('-', '_')}:{i}",
                              "expr": for_grafana_promtool(expr)})
    file = tmp_path / "dashboards.rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    proc = subprocess.run([promtool(), "check", "rules", str(file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


# --- alert rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["cluster-wide", "namespaced"])
def test_alert_metrics_exist(scenario: str) -> None:
    exported = exported_names() | ALLOWED
    for group in rule_groups(scenario):
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names and not names - exported, f"{rule['alert']}: {sorted(names - exported)} not exported"


@pytest.mark.parametrize("scenario", ["cluster-wide", "namespaced"])
def test_promtool_checks_the_rules(tmp_path: Path, scenario: str) -> None:
    file = tmp_path / "rules.yaml"
    file.write_text(yaml.safe_dump({"groups": rule_groups(scenario)}), encoding="utf-8")
    proc = subprocess.run([promtool(), "check", "rules", str(file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    # Annotations are left out here (promtool would compare their expanded text); check rules covers them.
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    sel = f'namespace="{NAMESPACE}", job="{RELEASE}-metrics", instance="10.0.0.7:9090"'

    def runs(status: str, failure_class: str, values: str) -> dict[str, str]:
        return {"series": f'rbi_runs_total{{{sel}, executor="kubernetes", status="{status}", '
                          f'failure_class="{failure_class}"}}', "values": values}

    def fires(alert: str, severity: str = "warning", **labels: str) -> dict[str, Any]:
        expected = {"exp_labels": {"severity": severity, **labels}}
        return {"eval_time": "80m", "alertname": alert, "exp_alerts": [expected]}

    healthy = {"interval": "1m", "input_series": [
        runs("succeeded", "none", "0+10x90"),
        runs("failed", "runtime_error", "0+1x90"),
        {"series": f"up{{{sel}}}", "values": "1x90"},
        {"series": f"rbi_queue_depth{{{sel}}}", "values": "3x90"},
        {"series": f"rbi_jobs_created_total{{{sel}}}", "values": "0+2x90"},
        {"series": f'rbi_llm_calls_total{{{sel}, agent="refine", outcome="ok"}}', "values": "0+5x90"},
    ], "alert_rule_test": [{"eval_time": "80m", "alertname": name, "exp_alerts": []} for name in (
        "RbiRunFailureRateHigh", "RbiSandboxErrors", "RbiQueueStuck", "RbiOperatorDown", "RbiHandlerErrors",
        "RbiLlmErrorRateHigh")]}
    broken = {"interval": "1m", "input_series": [
        runs("succeeded", "none", "0+1x90"),
        runs("failed", "timeout", "0+5x90"),
        runs("failed", "sandbox_error", "0x30 1+1x60"),
        {"series": f"up{{{sel}}}", "values": "1x30 0x60"},
        {"series": f"rbi_queue_depth{{{sel}}}", "values": "7x90"},
        {"series": f"rbi_jobs_created_total{{{sel}}}", "values": "4x90"},
        {"series": f'rbi_handler_errors_total{{{sel}, handler="on_create", kind="permanent"}}',
         "values": "0x30 1+1x60"},
        {"series": f'rbi_llm_calls_total{{{sel}, agent="refine", outcome="rate_limited"}}', "values": "0+3x90"},
        {"series": f'rbi_llm_calls_total{{{sel}, agent="refine", outcome="ok"}}', "values": "0+1x90"},
    ], "alert_rule_test": [
        fires("RbiRunFailureRateHigh"), fires("RbiSandboxErrors"), fires("RbiQueueStuck"),
        fires("RbiOperatorDown", severity="critical", job=f"{RELEASE}-metrics", namespace=NAMESPACE,
              instance="10.0.0.7:9090"),
        fires("RbiHandlerErrors", handler="on_create"), fires("RbiLlmErrorRateHigh"),
    ]}
    # The operator gone entirely: no series at all, `up` absent.
    gone = {"interval": "1m", "input_series": [{"series": f"up{{{sel}}}", "values": "1x10"}],
            "alert_rule_test": [{"eval_time": "40m", "alertname": "RbiOperatorDown",
                                 "exp_alerts": [{"exp_labels": {"severity": "critical", "job": f"{RELEASE}-metrics",
                                                                "namespace": NAMESPACE}}]}]}
    tests = tmp_path / "alerts.test.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                     "tests": [healthy, broken, gone]}), encoding="utf-8")
    proc = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
