"""`make bench` (scale): what thousands of converged RbdImages cost the operator, idle and after a restart.

With BENCH_SCALE_IMAGES (default 2000) RbdImages converged in one storage, at the default resync
interval (60 s):
  idle_cpu_percent   operator CPU (user+system, /proc) as % of one core over 3 resync intervals
  rss_mib            operator resident memory at the end of the idle window
  idle_api_writes    writes to the API server during the idle window: objects of the operator's
                     kinds whose resourceVersion changed, plus Events created
then the operator is restarted (SIGTERM, start):
  resume_s           from the restart until every image is re-verified (the storage's sweep logs it)
  resume_api_writes  writes during that time, counted the same way
Written to .bench/results.json under "scale".
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kubernetes  # noqa: E402

from bench.images import submit, wait_ready  # noqa: E402
from tests.integration.harness import Operator, start_platform, stop_platform  # noqa: E402
from tests.integration.manifests import storage  # noqa: E402

IMAGES = int(os.environ.get("BENCH_SCALE_IMAGES", "2000"))
RESYNC = int(os.environ.get("BENCH_SCALE_RESYNC", "60"))
NAMESPACE = "scale"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def versions(api: kubernetes.client.CustomObjectsApi) -> dict[str, str]:
    out = {}
    for plural in ("rbdstorages", "rbdimages", "hypervisornodes"):
        for item in api.list_cluster_custom_object("rbd-operator.io", "v1alpha1", plural)["items"]:
            meta = item["metadata"]
            out[f"{plural}/{meta.get('namespace', '')}/{meta['name']}"] = meta["resourceVersion"]
    return out


def event_count(core: kubernetes.client.CoreV1Api) -> int:
    return len(core.list_event_for_all_namespaces().items)


def writes_between(before: tuple[dict, int], after: tuple[dict, int]) -> int:
    changed = [key for key, version in after[0].items() if before[0].get(key) != version]
    if changed:
        print(f"    changed: {changed[:10]}", flush=True)
    return len(changed) + max(0, after[1] - before[1])


def snapshot(api: kubernetes.client.CustomObjectsApi, core: kubernetes.client.CoreV1Api) -> tuple[dict, int]:
    return versions(api), event_count(core)


def main() -> int:
    platform = start_platform()
    operator = Operator(platform, resync_seconds=RESYNC, verbose=False)
    client = kubernetes.config.new_client_from_config(str(platform.kubeconfig))
    api, core = kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)
    result: dict = {"images": IMAGES, "resync_seconds": RESYNC}
    try:
        operator.start()
        pool = f"scale{int(time.time())}"
        platform.apply(storage(platform, pool, pool={"pgNum": 32}, client={"name": pool}))
        platform.wait_condition("rbds", pool, "True")
        platform.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        bodies = [{"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdImage",
                   "metadata": {"name": f"s-{i}", "namespace": NAMESPACE}, "spec": {"storage": pool, "size": "1Gi"}}
                  for i in range(IMAGES)]
        start = time.monotonic()
        submit(platform, NAMESPACE, bodies)
        wait_ready(platform, NAMESPACE, IMAGES, timeout=3600)
        result["converge_s"] = round(time.monotonic() - start, 1)
        print(f"  {IMAGES} images converged in {result['converge_s']}s", flush=True)
        time.sleep(RESYNC)  # let the last status writes land (and Ceph's pool statistics catch up)

        pid = operator.proc.pid
        before, cpu0, t0 = snapshot(api, core), cpu_seconds(pid), time.monotonic()
        time.sleep(3 * RESYNC)
        cpu1, t1, after = cpu_seconds(pid), time.monotonic(), snapshot(api, core)
        result["idle_cpu_percent"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
        result["rss_mib"] = round(rss_mib(pid), 1)
        result["idle_api_writes"] = writes_between(before, after)
        print(f"  idle over {3 * RESYNC}s: {result['idle_cpu_percent']}% of a core, {result['rss_mib']} MiB, "
              f"{result['idle_api_writes']} API writes", flush=True)

        # Restart: until the storage's sweep has re-verified every image.
        before = snapshot(api, core)
        log_mark = len(operator.log_text())
        operator.stop()
        start = time.monotonic()
        operator.start()
        pattern = re.compile(rf"swept (\d+) image\(s\) of {re.escape(pool)}")
        deadline = start + 600
        while time.monotonic() < deadline:
            match = pattern.search(operator.log_text()[log_mark:])
            if match and int(match.group(1)) >= IMAGES:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the images were not re-verified after the restart")
        result["resume_s"] = round(time.monotonic() - start, 1)
        time.sleep(5)
        result["resume_api_writes"] = writes_between(before, snapshot(api, core))
        print(f"  restart: every image re-verified in {result['resume_s']}s, "
              f"{result['resume_api_writes']} API writes", flush=True)
    finally:
        operator.stop()
        stop_platform(platform)
    results_path = ROOT / ".bench" / "results.json"
    results_path.parent.mkdir(exist_ok=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["scale"] = result
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"scale (goals: idle_cpu_percent <= 5, rss_mib <= 400, idle_api_writes 0, resume_s <= 60, "
          f"resume_api_writes 0): {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
