"""Which replica works, visible to a person: the gauge `rbd_operator_active` on each replica's
/metrics and the Event `ActiveReplica` naming the active pod, checked with two real operator
processes (kopf peering) against kopf's own view (its "Pausing/Resuming operations" log lines)."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from .harness import OPERATOR_NAMESPACE, ROOT, Operator, wait_for

PEERING = "rbd-operator"


def gauge(op: Operator) -> float | None:
    match = re.search(r"^rbd_operator_active ([0-9.]+)$", op.metrics(), re.M)
    return float(match.group(1)) if match else None


_since_start: dict[int, int] = {}  # replica -> where its log's current process begins


def start(op: Operator) -> None:
    _since_start[op.replica] = len(op.log_text()) if op.starts else 0  # the first start truncates it
    op.start()


def kopf_paused(op: Operator) -> bool:
    """kopf's own state, from its log since the process started: it starts paused (silently) and logs
    each pause and resume."""
    text = op.log_text()[_since_start.get(op.replica, 0):]
    resumed = text.rfind("Resuming operations")
    return resumed < 0 or text.rfind("Pausing operations") > resumed


def pod_name(op: Operator) -> str:
    return f"replica-{op.replica}-{op.starts - 1}"  # harness.Operator's POD_NAME


def active_events(platform) -> list[dict]:
    out = platform.kubectl("get", "events", "-n", OPERATOR_NAMESPACE, "-o", "json",
                           "--field-selector", "reason=ActiveReplica")
    return json.loads(out.stdout)["items"]


def test_a_single_operator_is_active(operator):
    wait_for(lambda: gauge(operator) == 1, 30, what="rbd_operator_active 1 without peering")


@pytest.fixture
def pair(platform, operator):
    platform.kubectl("apply", "-f", str(ROOT / "deploy" / "peering.yaml"))
    platform.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    operator.stop()
    ops = [Operator(platform, replica=r, peering=PEERING) for r in (3, 4)]
    try:
        for op in ops:
            start(op)
        yield ops
    finally:
        for op in ops:
            op.stop()
        for op in ops:
            forbidden = op.refusals()
            assert not forbidden, f"replica {op.replica} was refused:\n" + "\n".join(forbidden[:10])
        operator.start()


def settled(ops: list[Operator]) -> tuple[Operator, Operator] | None:
    """(active, standby) once exactly one replica works by kopf's log and the gauges agree with it."""
    live = [op for op in ops if op.proc and op.proc.poll() is None]
    working = [op for op in live if not kopf_paused(op)]
    if len(live) != 2 or len(working) != 1:
        return None
    active = working[0]
    standby = next(op for op in live if op is not active)
    return (active, standby) if (gauge(active), gauge(standby)) == (1, 0) else None


def test_the_gauge_and_the_event_name_the_working_replica_and_follow_a_takeover(platform, pair):
    first, _ = pair
    active, standby = wait_for(lambda: settled(pair), 90, interval=0.5,
                               what="one replica active (gauge 1), the other standing by (gauge 0)")
    assert active is first, "the older replica works (priority from the start time)"
    time.sleep(3)  # stable: neither flips back
    assert settled(pair) == (active, standby)

    def event_for(op: Operator) -> dict | None:
        for ev in active_events(platform):
            if ev["involvedObject"]["name"] == pod_name(op):
                return ev
        return None
    ev = wait_for(lambda: event_for(active), 30, what="an ActiveReplica event on the active pod")
    assert ev["type"] == "Normal" and pod_name(active) in ev["message"]
    assert ev["involvedObject"]["kind"] == "Pod" and ev["involvedObject"]["namespace"] == OPERATOR_NAMESPACE
    assert event_for(standby) is None, "the standby never announced itself"

    # The active replica dies: the standby's gauge flips once kopf resumes it (its peer's entry expired).
    killed_at = time.monotonic()
    active.kill(signal.SIGKILL)
    wait_for(lambda: gauge(standby) == 1, 90, interval=0.2, what="the standby's gauge flips to 1")
    flipped_s = time.monotonic() - killed_at
    wait_for(lambda: not kopf_paused(standby), 10, interval=0.2, what="kopf resumed the standby as well")
    wait_for(lambda: event_for(standby), 30, what="an ActiveReplica event on the new active pod")
    print(f"gauge flipped {flipped_s:.1f}s after the kill (peering lifetime 15 s)")

    # The killed replica comes back: as the standby, gauge 0; the survivor keeps working.
    start(active)
    wait_for(lambda: settled(pair) == (standby, active), 90, interval=0.5, what="the restarted replica stands by")
    assert event_for(active) is None, "the restarted replica (a new pod name) did not announce itself"
