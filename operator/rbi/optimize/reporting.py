"""Assemble the HTML report of a strategy's optimisation from the store.

Equity curves are not stored (they are large and cheap to recompute), so the
parent and the best child are run once more on the whole dataset, in the sandbox.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rbi.engine import LocalExecutor, PreparedRun
from rbi.report import LineageEdge, ReportData, TrialPoint, VersionFigures, write_report


def _sample_stats(runs: list[Any], version: int, sample: str) -> dict[str, Any] | None:
    for run in runs:  # newest first
        if run.version == version and run.sample == sample and run.status != "failed":
            return dict(run.stats)
    return None


def _chain_root(edges: dict[int, Any], version: int) -> int:
    seen = set()
    while version in edges and version not in seen:
        seen.add(version)
        version = edges[version].parent_version
    return version


def build_report(store: Any, name: str, *, run: PreparedRun, executor: LocalExecutor, out: Path,
                 index_times: list[str] | None = None, oos_start_row: int | None = None) -> Path:
    versions = {v.version: v for v in store.versions(name)}
    if not versions:
        raise LookupError(f"no stored strategy named {name!r}; see `rbi results`")
    lineage = store.lineage(name)
    edges = {e.child_version: e for e in lineage}
    best_version = max(edges) if edges else max(versions)
    parent_version = _chain_root(edges, best_version)
    details = edges[best_version].details or {} if edges else {}
    objective = str(details.get("objective", "sharpe_ratio"))
    runs = store.list_runs(name=name, limit=10_000)

    def figures(version: int) -> VersionFigures:
        record = versions[version]
        job = replace(run, code=record.code, params=dict(record.params), include_series=True, data_range=None)
        outcome = executor.execute(job)
        return VersionFigures(version=version, params=dict(record.params),
                              in_sample=_sample_stats(runs, version, "in_sample"),
                              out_of_sample=_sample_stats(runs, version, "out_of_sample"),
                              equity_curve=outcome.equity_curve)

    trials = store.trials(name)
    names = sorted({key for t in trials for key in t.params})
    # The promoted child's record knows where out-of-sample began; a run that promoted nothing is told.
    oos_row = details.get("oos_start_row", oos_start_row)
    known_row = index_times is not None and isinstance(oos_row, int) and 0 <= oos_row < len(index_times)
    oos_start = index_times[oos_row] if known_row and index_times is not None and isinstance(oos_row, int) else None
    data = ReportData(
        strategy_name=name,
        objective=objective,
        maximize=bool(details.get("maximize", True)),
        parent=figures(parent_version),
        best=figures(best_version) if best_version != parent_version else None,
        trials=[TrialPoint(iteration=t.iteration, trial_number=t.trial_number, params=t.params, objective=t.objective,
                           status=t.status) for t in trials],
        lineage=[LineageEdge(parent_version=e.parent_version, child_version=e.child_version,
                             optimization_type=e.optimization_type, changes_made=e.changes_made,
                             performance_delta=e.performance_delta,
                             guards={**(e.details or {}).get("guards", {}), "promoted": True}) for e in lineage],
        grid_params=(names[0], names[1]) if len(names) == 2 else None,
        oos_start=oos_start,
    )
    return write_report(data, out)
