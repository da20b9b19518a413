"""The results store: strategy versions, runs, trials and lineage in SQLite or PostgreSQL."""

from rbi.store.repository import (
    IdeaRecord,
    LlmCallRecord,
    OptimizationRecord,
    ResultStore,
    RunRecord,
    TrialRecord,
    VersionRecord,
    code_hash,
)

__all__ = [
    "IdeaRecord",
    "LlmCallRecord",
    "OptimizationRecord",
    "ResultStore",
    "RunRecord",
    "TrialRecord",
    "VersionRecord",
    "code_hash",
]
