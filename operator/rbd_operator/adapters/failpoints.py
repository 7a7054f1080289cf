"""Named points where a test can have the operator killed (SIGKILL, by itself) between two object steps, to
prove that a re-run finishes what the killed one left (tests/integration/test_raw_steps.py).

Set only by tests: RBD_OPERATOR_FAILPOINTS=<name>[,<name>...]; read once at start; empty in deploy/ and
in every normal run, where `hit` is a set lookup.
"""

from __future__ import annotations

import os
import signal

ACTIVE = frozenset(filter(None, os.environ.get("RBD_OPERATOR_FAILPOINTS", "").split(",")))
# The points, in the order a creation passes them.
POINTS = ("create:made", "create:tagged", "rename:id-written", "rename:listed")
# Not a crash: the fast-path probe reports a layout mismatch (the slow path, on a cluster where none exists).
PROBE_MISMATCH = "probe:mismatch"


def hit(name: str) -> None:
    if name in ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)


def active(name: str) -> bool:
    return name in ACTIVE
