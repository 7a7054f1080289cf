"""The monitor and OSD fault cases of `make faults` (bench/faults.py), one trial each, as tests.

`make test-ceph-matrix` runs them on every Ceph release (the Makefile's `make test` leaves this file
out: `make faults` runs them there, three trials each). The case functions are bench/faults.py's own,
on this session's platform and operator: the monitor SIGKILLed for 30-45 s while images and a
storage are asked for, and the OSD stopped (SIGSTOP) while images are; afterwards everything is
Ready, exactly once, without staging leftovers.
"""

from __future__ import annotations

import os
import random
import sys

import pytest

from .harness import ROOT, wait_for
from .manifests import storage

_slot = os.environ.get("RBD_TEST_SLOT")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench import faults  # noqa: E402 - it sets a default RBD_TEST_SLOT for its own runs: undone
if _slot is None:
    os.environ.pop("RBD_TEST_SLOT", None)


@pytest.fixture(scope="module")
def ctx(platform, operator, ceph, leaks):
    seed = int(os.environ.get("FAULTS_SEED", str(random.randrange(1 << 30))))
    print(f"FAULTS_SEED={seed}")
    # Retain (as make faults does): the cases leave their images in the trash for an hour.
    platform.apply(storage(platform, faults.STORE, pool={"pgNum": 16}, client={"name": faults.STORE}))
    platform.wait_condition("rbds", faults.STORE, "True")
    context = faults.Ctx(platform, operator, ceph, [], random.Random(seed), leaks.argv)
    yield context
    platform.delete("rbds", faults.STORE)
    wait_for(lambda: platform.get("rbds", faults.STORE) is None, 120, what="the faults storage deleted")


@pytest.mark.parametrize("case", [faults.ceph_mon_down, faults.osd_down], ids=["ceph-mon-down", "osd-down"])
def test_fault(ctx, case):
    trial = case(ctx, 0)
    assert ctx.alive(), "the operator process died"
    assert trial.survived and not trial.lost, f"lost {trial.lost}: " + "; ".join(trial.notes)
