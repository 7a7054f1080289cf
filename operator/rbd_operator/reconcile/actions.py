"""A step of a plan: what to do, with which arguments, described for humans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Action:
    kind: str
    target: str
    args: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.args.items() if k != "caps") if self.args else ""
        if "caps" in self.args:
            shown = ", ".join(filter(None, [shown, "caps=" + "; ".join(f"{s} '{c}'" for s, c in self.args["caps"].items())]))
        return f"{self.kind} {self.target}" + (f" ({shown})" if shown else "")
