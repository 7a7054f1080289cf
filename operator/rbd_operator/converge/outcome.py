"""What a converge pass found and did, for the handler to write into status: conditions, events, fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api.reasons import ConditionType, EventReason, Reason


@dataclass(frozen=True)
class Cond:
    type: ConditionType
    ok: bool
    reason: Reason
    message: str = ""
    bad: bool | None = None  # a Warning event when it changes to this (default: when not ok)
    event: bool = True


@dataclass(frozen=True)
class Note:
    reason: EventReason | Reason
    message: str
    type: str = "Normal"


@dataclass
class Outcome:
    conditions: list[Cond] = field(default_factory=list)
    events: list[Note] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # metadata.annotations to set
    retry: str | None = None        # a pass that must be tried again soon (not an error): why
    retry_in: float | None = None   # after how long (None: the handler's backoff)

    def cond(self, type_: ConditionType, ok: bool, reason: Reason, message: str = "", *, bad: bool | None = None,
             event: bool = True) -> None:
        self.conditions.append(Cond(type_, ok, reason, message, bad, event))

    def note(self, reason: EventReason | Reason, message: str) -> None:
        self.events.append(Note(reason, message))

    def warn(self, reason: Reason, message: str) -> None:
        self.events.append(Note(reason, message, "Warning"))

    def set(self, **fields: Any) -> None:
        self.status.update(fields)

    def failing(self, required: tuple[ConditionType, ...]) -> list[Cond]:
        return [c for c in self.conditions if c.type in required and not c.ok]
