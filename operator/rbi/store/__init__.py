"""The results store: strategy versions, runs, trials and lineage in SQLite or PostgreSQL."""

from rbi.store.repository import (
    OptimizationRecord,
    ResultStore,
    RunRecord,
    TrialRecord,
    VersionRecord,
    code_hash,
)

__all__ = [
    "OptimizationRecord",
    "ResultStore",
    "RunRecord",
    "TrialRecord",
    "VersionRecord",
    "code_hash",
]
