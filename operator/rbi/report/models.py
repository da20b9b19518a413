"""Plain data that the optimizer hands to the report. No store, no optimizer imports: only values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Curve", "LineageEdge", "ReportData", "TrialPoint", "VersionFigures"]

# `rbi.stats.equity_curve`: [[ISO time or bar number, equity, drawdown % (<= 0)], ...]
Curve = Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class VersionFigures:
    """One strategy version: its parameters, its statistics on both samples, its equity curve."""

    version: int
    params: Mapping[str, Any] = field(default_factory=dict)
    in_sample: Mapping[str, Any] | None = None
    out_of_sample: Mapping[str, Any] | None = None
    equity_curve: Curve | None = None


@dataclass(frozen=True, slots=True)
class TrialPoint:
    """One optimizer trial; `objective` is None when the trial failed or could not be scored."""

    iteration: int
    trial_number: int
    params: Mapping[str, Any]
    objective: float | None
    status: str


@dataclass(frozen=True, slots=True)
class LineageEdge:
    """A child version made from a parent, with the guards that decided whether it was promoted.

    `guards` holds whatever the optimizer checked, e.g. {"deflated_sharpe": 0.97, "lookahead_suspected": False,
    "promoted": True}; the report reads those three keys when present and shows every key as given.
    """

    parent_version: int
    child_version: int
    optimization_type: str
    changes_made: str
    performance_delta: float | None
    guards: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReportData:
    strategy_name: str
    objective: str
    maximize: bool
    parent: VersionFigures
    best: VersionFigures | None = None
    trials: Sequence[TrialPoint] = ()
    lineage: Sequence[LineageEdge] = ()
    # The two parameter names of a two-parameter grid search: the heatmap's x and y axes.
    grid_params: tuple[str, str] | None = None
    # Where the out-of-sample period starts (ISO time, or a bar number for curves without times).
    oos_start: str | None = None
