"""Fenced disruption (reconcile/disruption.py, adapters/lease.py) on an injected clock: no sleeps.

Expiry is judged by the observer's own clock since it last saw the Lease record change (clock skew
between replicas cannot shorten it); a holder starts a step only while its own last renewal leaves a
margin; the Lease names the host a new holder must verify first."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from kubernetes.client.rest import ApiException

from rbd_operator.adapters import lease as lease_mod
from rbd_operator.adapters.lease import ADDRESS_ANNOTATION, HOST_ANNOTATION, LeaseLock, LeaseLost
from rbd_operator.reconcile.disruption import LeaseObserver, LeaseRecord, Tenure


class Clock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def record(holder="a/10.0.0.1", renew="2020-01-01T00:00:00.000000Z", rv="1", duration=60.0) -> LeaseRecord:
    return LeaseRecord(holder, renew, rv, duration)


# -- the observer ---------------------------------------------------------------------------------------

def test_expiry_counts_from_when_this_replica_first_saw_the_record():
    clock = Clock()
    seen = LeaseObserver(clock)
    # The holder's renewTime is years old (its clock is wrong, or ours): that alone expires nothing.
    assert seen.remaining(record(renew="1999-01-01T00:00:00.000000Z")) == 60
    clock.advance(59.9)
    assert seen.remaining(record(renew="1999-01-01T00:00:00.000000Z")) == pytest.approx(0.1)
    clock.advance(0.1)
    assert seen.remaining(record(renew="1999-01-01T00:00:00.000000Z")) <= 0


def test_a_renewal_in_the_future_does_not_lengthen_it_either():
    clock = Clock()
    seen = LeaseObserver(clock)
    assert seen.remaining(record(renew="2999-01-01T00:00:00.000000Z")) == 60
    clock.advance(61)
    assert seen.remaining(record(renew="2999-01-01T00:00:00.000000Z")) < 0


@pytest.mark.parametrize("change", [dict(holder="b/10.0.0.2"), dict(renew="2020-01-01T00:00:20.000000Z"),
                                    dict(rv="2")])
def test_any_change_of_the_record_restarts_the_count(change):
    clock = Clock()
    seen = LeaseObserver(clock)
    seen.remaining(record())
    clock.advance(50)
    assert seen.remaining(record(**change)) == 60
    clock.advance(50)
    assert seen.remaining(record(**change)) == pytest.approx(10)


def test_a_released_lease_is_free_at_once_and_a_fresh_observer_waits_a_full_duration():
    clock = Clock()
    assert LeaseObserver(clock).remaining(record(holder="")) == 0
    assert LeaseObserver(clock).remaining(record(duration=15)) == 15  # just started: fail closed


# -- the holder -----------------------------------------------------------------------------------------

def test_a_holder_starts_steps_only_with_margin_by_its_own_clock():
    clock = Clock()
    tenure = Tenure(60, clock, margin=15)
    assert tenure.may_start() is not None  # never renewed
    tenure.renewed(clock())
    assert tenure.may_start() is None
    clock.advance(44.9)
    assert tenure.may_start() is None
    clock.advance(0.2)  # frozen (SIGSTOP), cut off: 45.1 s since the last renewal it sent
    assert "45s ago" in tenure.may_start()
    tenure.renewed(clock() - 100)  # an older send time than the one recorded changes nothing
    assert tenure.may_start() is not None
    tenure.renewed(clock())
    assert tenure.may_start() is None
    tenure.lose("b/10.0.0.2 holds it now")
    tenure.renewed(clock())  # lost stays lost
    assert tenure.may_start() == "b/10.0.0.2 holds it now" and tenure.left() == 0


# -- LeaseLock against an in-memory Lease API (resourceVersion conflicts like the API server's) -------------

class FakeLeases:
    def __init__(self) -> None:
        self.body: dict | None = None
        self.rv = 0
        self.down = False

    def _view(self) -> SimpleNamespace:
        meta, spec = self.body["metadata"], self.body["spec"]
        return SimpleNamespace(
            metadata=SimpleNamespace(resource_version=str(self.rv), annotations=dict(meta.get("annotations") or {})),
            spec=SimpleNamespace(holder_identity=spec.get("holderIdentity"), renew_time=spec.get("renewTime"),
                                 acquire_time=spec.get("acquireTime"),
                                 lease_duration_seconds=spec.get("leaseDurationSeconds")))

    def read_namespaced_lease(self, name, namespace):
        if self.down:
            raise ApiException(status=503)
        if self.body is None:
            raise ApiException(status=404)
        return self._view()

    def create_namespaced_lease(self, namespace, body):
        if self.body is not None:
            raise ApiException(status=409)
        self.body, self.rv = copy.deepcopy(body), self.rv + 1

    def replace_namespaced_lease(self, name, namespace, body):
        if self.down:
            raise ApiException(status=503)
        if body["metadata"].get("resourceVersion") != str(self.rv):
            raise ApiException(status=409)
        self.body, self.rv = copy.deepcopy(body), self.rv + 1


@pytest.fixture
def api(monkeypatch):
    fake = FakeLeases()
    monkeypatch.setattr(LeaseLock, "_api", lambda self: fake)
    monkeypatch.setattr(LeaseLock, "_start_renewing", lambda self: None)  # renewals are driven by the test
    return fake


def lock(identity: str, address: str, clock: Clock, observer: LeaseObserver | None = None) -> LeaseLock:
    return LeaseLock("disruption", address, duration=60, namespace="ns", identity=identity, clock=clock,
                     observer=observer)


def test_skewed_renew_time_cannot_shorten_the_lease(api):
    clock_a, clock_b = Clock(), Clock(5_000_000)
    a, b = lock("a", "10.0.0.1", clock_a), lock("b", "10.0.0.2", clock_b)
    assert a.try_acquire() is None
    api.body["spec"]["renewTime"] = "1970-01-01T00:00:00.000000Z"  # a's wall clock is decades behind
    held = b.try_acquire()
    assert held is not None and held.holder == "a/10.0.0.1" and held.expires_in == 60
    clock_b.advance(59)
    assert b.try_acquire() is not None
    clock_b.advance(1)  # unchanged for a full duration on b's clock: expired
    assert b.try_acquire() is None and api.body["spec"]["holderIdentity"] == "b/10.0.0.2"


def test_a_renewing_holder_keeps_it_and_a_frozen_one_starts_nothing(api):
    clock_a, clock_b = Clock(), Clock()
    a, b = lock("a", "10.0.0.1", clock_a), lock("b", "10.0.0.2", clock_b)
    assert a.try_acquire() is None
    a.check("installing x")
    for _ in range(6):  # 120 s of renewals every 20 s: b never sees the same record for 60 s
        clock_a.advance(20), clock_b.advance(20)
        assert a.renew()
        assert b.try_acquire() is not None
    a.check("installing x")
    clock_a.advance(46), clock_b.advance(46)  # a is frozen (SIGSTOP): no renewal for 46 s
    with pytest.raises(LeaseLost) as lost:
        a.check("restarting libvirtd")
    assert lost.value.reason == "DisruptionLeaseLost" and "not restarting libvirtd" in lost.value.message
    clock_b.advance(14)
    assert b.try_acquire() is None  # expired by b's clock; b takes it
    clock_a.advance(14)  # a wakes up (SIGCONT): its renewal finds b's name and stops for good
    assert not a.renew()
    assert api.body["spec"]["holderIdentity"] == "b/10.0.0.2"
    with pytest.raises(LeaseLost) as lost:
        a.check("anything")
    assert "b/10.0.0.2 holds it now" in lost.value.message


def test_a_renewal_that_fails_lets_the_holders_own_clock_run_out(api):
    clock = Clock()
    a = lock("a", "10.0.0.1", clock)
    assert a.try_acquire() is None
    api.down = True  # the API server is unreachable from a
    for _ in range(3):
        clock.advance(20)
        assert a.renew()  # it keeps trying...
    with pytest.raises(LeaseLost):  # ...but starts nothing: 60 s since its last successful renewal
        a.check("removing qemu-kvm")


def test_the_lease_names_the_host_to_verify_and_a_clean_release_clears_it(api):
    clock = Clock()
    observer = LeaseObserver(clock)
    a = lock("a", "10.0.0.1", clock, observer)
    assert a.try_acquire() is None and a.pending is None
    a.record_host("hv-a", "10.0.0.1")
    assert api.body["metadata"]["annotations"] == {HOST_ANNOTATION: "hv-a", ADDRESS_ANNOTATION: "10.0.0.1"}
    a.release(clean=False)  # a command's end was not seen (timeout, lost connection): the next one verifies hv-a
    assert "holderIdentity" not in api.body["spec"]
    b = lock("b", "10.0.0.2", clock, observer)
    assert b.try_acquire() is None and b.pending == ("hv-a", "10.0.0.1")
    assert api.body["metadata"]["annotations"][HOST_ANNOTATION] == "hv-a"  # still named until b records its own
    b.release(clean=False)  # b found hv-a busy and gives up: hv-a stays named
    c = lock("c", "10.0.0.3", clock, observer)
    assert c.try_acquire() is None and c.pending == ("hv-a", "10.0.0.1")
    c.record_host("hv-c", "10.0.0.3")
    c.release(clean=True)
    assert HOST_ANNOTATION not in api.body["metadata"]["annotations"]
    d = lock("d", "10.0.0.4", clock, observer)
    assert d.try_acquire() is None and d.pending is None


def test_an_unreadable_lease_is_held_and_a_lost_update_fences(api):
    clock = Clock()
    a = lock("a", "10.0.0.1", clock)
    assert a.try_acquire() is None
    api.down = True
    assert lock("b", "10.0.0.2", clock).try_acquire().holder.startswith("unknown")
    with pytest.raises(LeaseLost):
        a.record_host("hv-a", "10.0.0.1")  # could not write: not sure it is ours any more


def test_the_fence_is_one_holder_per_process(api, monkeypatch):
    clock = Clock()
    fence = lease_mod.DisruptionFence("disruption", 60, clock)
    monkeypatch.setattr(lease_mod.kube, "operator_namespace", lambda: "ns")
    first = fence.acquire("10.0.0.1")
    assert isinstance(first, LeaseLock)
    assert fence.acquire("10.0.0.2").holder == "another host of this replica"
    fence.release(first, clean=True)
    second = fence.acquire("10.0.0.2")
    assert isinstance(second, LeaseLock)
    fence.release(second, clean=True)
