"""What a shard pays for another shard's objects (docs/scaling.md): the RSS of an operator of shard `a`, idle, with
no other objects and with N RbdImages of shard `b` present (N=2000 by default, env N), whether its (verbose) log
names any of them (kopf logs every event body it processes), and an unsharded operator's RSS with the same
objects (it handles them: each gets StorageNotFound). Each RSS 25 s after the start (resync 5 s).

Writes .bench/results.json under "shards". `RBD_TEST_SLOT=N .venv/bin/python bench/shards.py`
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import record  # noqa: E402
from tests.integration.harness import Operator, Platform, start_platform, stop_platform, wait_for  # noqa: E402
from tests.integration.manifests import image  # noqa: E402

N = int(os.environ.get("N", "2000"))
SETTLE_S = 25
LABEL = "rbd-operator.io/shard"


def rss_mib(op: Operator) -> float:
    assert op.proc is not None
    for line in open(f"/proc/{op.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def idle_rss(op: Operator) -> float:
    time.sleep(SETTLE_S)
    return rss_mib(op)


def create_foreign(platform: Platform) -> list[str]:
    names = [f"shard-b-{i}" for i in range(N)]
    for start in range(0, N, 500):
        items = []
        for name in names[start:start + 500]:
            manifest = image(name, "nowhere", size="1Gi")
            manifest["metadata"]["labels"] = {LABEL: "b"}
            items.append(manifest)
        platform.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return names


def reasons(platform: Platform) -> str:
    return platform.kubectl("get", "rbdimg", "-n", "default", "-o",
                            "jsonpath={range .items[*]}{.status.conditions[0].reason}{\"\\n\"}{end}").stdout


def measure(platform: Platform) -> dict:
    out: dict = {"foreign_images": N}
    shard = Operator(platform, replica=1, env={"RBD_OPERATOR_SHARD": "a"})
    shard.start()
    out["shard_rss_mib_no_foreign"] = idle_rss(shard)
    shard.stop()
    names = create_foreign(platform)
    shard.start()
    out["shard_rss_mib_with_foreign"] = idle_rss(shard)
    out["shard_log_lines_naming_foreign"] = sum(1 for line in shard.log_text().splitlines()
                                                if any(f"'{n}'" in line for n in names[:50]) or "shard-b-" in line)
    shard.stop()
    unsharded = Operator(platform, replica=2)
    unsharded.start()
    wait_for(lambda: reasons(platform).count("StorageNotFound") >= N, 900, interval=5, what="every image handled")
    out["unsharded_rss_mib_with_them"] = idle_rss(unsharded)
    platform.kubectl("delete", "rbdimg", "-n", "default", "-l", f"{LABEL}=b", "--wait=false")
    wait_for(lambda: not platform.kubectl("get", "rbdimg", "-n", "default", "-l", f"{LABEL}=b", "-o", "name").stdout.strip(),
             900, interval=5, what="images deleted")
    unsharded.stop()
    return out


def main() -> int:
    platform = start_platform()
    try:
        results = measure(platform)
    finally:
        stop_platform(platform)
    print(json.dumps(results, indent=2))
    print(f"written to {record('shards', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
