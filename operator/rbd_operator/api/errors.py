"""The operator's one error family: every failure carries the condition reason it is reported with.

Handlers catch `OperatorError` and report `reason`/`message` as `Ready=False`; `retry` says
whether waiting can help (`None`: only a change of the spec or of the world by a person can).
Reasons are documented in `api/reasons.py`.
"""

from __future__ import annotations
from .reasons import Reason


class OperatorError(Exception):
    """A failure with a condition reason and a message safe to show (never a secret)."""

    #: seconds until a retry is worth it; None: permanent until something changes
    retry: float | None = 10.0

    def __init__(self, reason: str, message: str, *, retry: float | None | bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        if retry is not True:
            self.retry = None if retry is False else retry  # type: ignore[assignment]

    @property
    def permanent(self) -> bool:
        return self.retry is None


class SpecError(OperatorError):
    """A spec that can never converge as written (bad input, not a transient failure)."""

    retry = None

    def __init__(self, field: str, message: str, reason: str = Reason.INVALID_SPEC) -> None:
        super().__init__(reason, f"{field}: {message}")
        self.field = field


class Refused(OperatorError):
    """The operator will not act: ownership, tenancy, Secrets outside its namespace, conflicts.

    Permanent like a SpecError, but about the world rather than the spec's syntax.
    """

    retry = None


class Waiting(OperatorError):
    """Something the spec refers to is not there yet: report it and retry later."""

    def __init__(self, reason: str, message: str, delay: float = 10.0) -> None:
        super().__init__(reason, message, retry=delay)

    @property
    def delay(self) -> float:
        return float(self.retry or 0.0)
