"""Pull the metric names out of PromQL expressions and Grafana dashboards, and list what rbi exports."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right",
             "offset", "inf", "nan", "start", "end"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\b(?:offset|@)\s*-?[\w.$()]+")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?![\w:])")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression selects by name (functions, keywords and labels left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        token = match.group(0)
        if text[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if token.lower() in _KEYWORDS:
            continue
        names.add(token)
    # {__name__="x"} selects by name too.
    names.update(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    return names


def dashboard_queries(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target, nested rows included, and every query variable."""

    def panels(items: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    for panel in panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        query = variable.get("query")
        text = query.get("query") if isinstance(query, Mapping) else query
        if variable.get("type") == "query" and text:
            yield f"variable {variable.get('name')!r}", text


def query_metric_names(expr: str) -> set[str]:
    """metric_names for PromQL and for Grafana's label_values(metric, label) variable queries."""
    found = set(_LABEL_VALUES.findall(expr))
    if found:
        return found
    return metric_names(expr)


def exported_names() -> set[str]:
    """The sample names rbi's registry really exposes: a counter's base name is not one, its `_total` is."""
    from rbi import metrics

    families = {family.name: family.type for family in metrics.REGISTRY.collect()}
    bare = {name for name, kind in families.items() if kind in {"counter", "histogram", "summary"}}
    return metrics.metric_names() - bare


def families() -> set[str]:
    from rbi import metrics

    return {family.name for family in metrics.REGISTRY.collect()}


def for_grafana_promtool(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so promtool can parse it."""
    for variable, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")):
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)
