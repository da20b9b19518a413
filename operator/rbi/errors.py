"""Exceptions that carry a precise, user-facing message.

Each maps onto a failure class where a run is involved, so the CLI and the
operator can report them without guessing.
"""

from __future__ import annotations

from rbi.outcome import FailureClass


class RbiError(Exception):
    """Base for every error that rbi reports to a user as a clean message."""

    failure_class: FailureClass | None = None


class SpecError(RbiError):
    """The strategy YAML or the flags are malformed."""

    failure_class = FailureClass.VALIDATION_ERROR


class ExtractionError(RbiError):
    """No Python code could be found in an LLM answer, or the answer was cut off inside its code."""

    failure_class = FailureClass.SYNTAX_ERROR

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class DataError(RbiError):
    """The dataset is missing, unreadable, or not OHLCV."""

    failure_class = FailureClass.DATA_ERROR


class StoreError(RbiError):
    """The results database is unreachable or refused a write."""


class SandboxUnavailable(RbiError):
    """This machine cannot provide the isolation that a run requires."""

    failure_class = FailureClass.SANDBOX_ERROR
