"""The result of one run: its status, its failure class and its statistics.

Everything here is plain data that crosses process boundaries as JSON, so the
local executor, the Kubernetes runner and the store all speak the same shape.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Status(enum.StrEnum):
    SUCCEEDED = "succeeded"
    NO_TRADES = "no_trades"
    FAILED = "failed"


class FailureClass(enum.StrEnum):
    """Exactly one of these is attached to every failed run."""

    SYNTAX_ERROR = "syntax_error"
    IMPORT_ERROR = "import_error"
    VALIDATION_ERROR = "validation_error"
    DATA_ERROR = "data_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    DISK_LIMIT = "disk_limit"
    SANDBOX_ERROR = "sandbox_error"
    # The run's own figures disagree with the host's recomputation, or a fill is impossible for the data.
    INTEGRITY_ERROR = "integrity_error"

    @property
    def is_infrastructure(self) -> bool:
        """True when the platform failed, not the strategy."""
        return self is FailureClass.SANDBOX_ERROR


@dataclass(frozen=True, slots=True)
class RunError:
    type: FailureClass
    message: str
    line: int | None = None
    # The Python exception type (runtime_error) or the missing module (import_error).
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": str(self.type), "message": self.message, "line": self.line, "detail": self.detail}


@dataclass(slots=True)
class RunOutcome:
    """One run, as reported by `rbi run --json` and stored in `backtest_results`."""

    status: Status
    error: RunError | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    execution_time: float = 0.0
    peak_memory_bytes: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    code_hash: str = ""
    version: int = 1
    mode: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # Deterministic repairs applied before this run (`rbi run --fix`): {fixer, line, description}.
    fixes: list[dict[str, Any]] = field(default_factory=list)
    # Why a run made no trades, in one line, from the run's own diagnostics (rbi.diagnostics.explain).
    no_trades_reason: str | None = None
    # Series for reports (equity curve, trades); not part of the stable JSON keys.
    equity_curve: list[list[Any]] | None = None
    trades: list[dict[str, Any]] | None = None
    # The Python traceback of a failed run (size-capped), for the debug agent; not part of the stable JSON keys.
    traceback: str | None = None

    def to_json(self, *, include_series: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["error"] = self.error.to_json() if self.error else None
        data.pop("traceback")
        if not include_series:
            data.pop("equity_curve")
            data.pop("trades")
        return data

    @classmethod
    def failed(cls, error: RunError, **fields: Any) -> RunOutcome:
        return cls(status=Status.FAILED, error=error, **fields)
