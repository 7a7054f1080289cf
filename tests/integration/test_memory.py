"""The operator counts the objects it holds (metric rbd_operator_objects) and, when the measured formula nears
its memory limit, says so: a Warning Event MemoryNearLimit on its Pod and a log line (handlers/memory.py).
The formula's constants are scaled down here so that three images cross the threshold."""

from __future__ import annotations

import json
import re

from .harness import OPERATOR_NAMESPACE, Operator, wait_for
from .manifests import image, storage


def gauge(text: str, name: str, labels: str = "") -> float | None:
    found = re.search(rf"^{name}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else None


def held(platform) -> int:
    out = platform.kubectl("get", "rbdimages,rbdsnapshots", "-A", "-o", "json").stdout
    return len(json.loads(out)["items"])


def warnings(platform, pod: str) -> list[dict]:
    out = platform.kubectl("get", "events", "-n", OPERATOR_NAMESPACE, "-o", "json",
                           "--field-selector", f"involvedObject.name={pod},reason=MemoryNearLimit").stdout
    return json.loads(out)["items"]


def test_objects_are_counted_and_a_warning_comes_before_the_limit(platform, operator, uniq):
    pod = f"rbd-operator-mem-{uniq}"
    # 40 MiB + 4 MiB per object against 0.8 x 64 MiB = 51.2 MiB: the warning from the third object on.
    env = {"RBD_OPERATOR_MEMORY_LIMIT": str(64 * 2**20), "RBD_OPERATOR_MEMORY_BASE_MIB": "40",
           "RBD_OPERATOR_MEMORY_PER_OBJECT_KIB": "4096", "RBD_OPERATOR_MEMORY_CHECK_SECONDS": "1",
           "POD_NAME": pod, "POD_ID": f"00000000-0000-0000-0000-000000{uniq}"}
    operator.stop()
    watched = Operator(platform, replica=4, env=env)
    name = f"mem-{uniq}"
    try:
        watched.start()
        platform.apply(storage(platform, name, pool={"pgNum": 8}, client={"name": name}))
        platform.wait_condition("rbds", name, "True")
        assert gauge(watched.metrics(), "rbd_operator_memory_limit_bytes") == 64 * 2**20
        wait_for(lambda: gauge(watched.metrics(), "rbd_operator_objects", '{kind="RbdStorage"}') ==
                 len(json.loads(platform.kubectl("get", "rbds", "-o", "json").stdout)["items"]), 30,
                 what="storages counted")
        before = held(platform)
        if before < 3:
            wait_for(lambda: gauge(watched.metrics(), "rbd_operator_objects", '{kind="RbdImage"}') is not None, 30)
            assert not warnings(platform, pod), "no warning below the threshold"
        for i in range(3):
            platform.apply(image(f"{name}-{i}", name, size="8Mi"))
        for i in range(3):
            platform.wait_condition("rbdimg", f"{name}-{i}", "True", namespace="default")
        images = len(json.loads(platform.kubectl("get", "rbdimages", "-A", "-o", "json").stdout)["items"])
        wait_for(lambda: gauge(watched.metrics(), "rbd_operator_objects", '{kind="RbdImage"}') == images, 30,
                 what="images counted")
        found = wait_for(lambda: warnings(platform, pod), 30, what="the MemoryNearLimit event")
        assert len(found) == 1, "once per crossing, not once per check"
        event = found[0]
        assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "Pod"
        assert "memory limit of 64 MiB" in event["message"] and "RbdImages and RbdSnapshots" in event["message"]
        assert "memory: " in watched.log_text() and "memory limit of 64 MiB" in watched.log_text()
        expected = gauge(watched.metrics(), "rbd_operator_memory_expected_bytes")
        assert expected is not None and expected >= 0.8 * 64 * 2**20
    finally:
        for i in range(3):
            platform.delete("rbdimg", f"{name}-{i}", "default", wait=True)
        platform.delete("rbds", name, wait=True)
        watched.stop()
        operator.start()
