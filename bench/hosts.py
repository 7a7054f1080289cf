"""`make bench` (hosts): HypervisorNode convergence, 1 host vs 8 hosts, and an idle resync.

On the same real platform as the integration tests plus 8 test hosts
(hack/testhosts: netns + overlay rootfs + sshd + libvirtd), in one run:
  1. converge 1 fresh host (default profile: repository, qemu-block-extra, librbd1,
     ceph-common, /etc/ceph, libvirt secret, probe) and time it;
  2. converge 8 fresh hosts at once and time it; ratio = t8 / t1;
  3. the same with profile `none` (configuration only: /etc/ceph, secret), which
     shows the operator's own parallelism without package installs;
  4. with all 8 converged, one idle resync: SSH sessions per host (counted by
     each host's sshd) and Kubernetes API writes (resourceVersion changes of
     the operator's objects plus new Events).
Writes .bench/results.json under "hosts".
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.harness import BRIDGE, Operator, sh, start_platform, stop_platform, wait_for  # noqa: E402
from tests.integration.labhosts import (LABEL, TESTHOST, LabHost, debian_packages, hypervisor,  # noqa: E402
                                        ssh_secret)
from tests.integration.manifests import storage  # noqa: E402

RESYNC = int(os.environ.get("BENCH_RESYNC_SECONDS", "20"))
HOSTS = [LabHost(f"b-{i}", f"10.254.1.{30 + i}", "debian") for i in range(1, 9)]


def fresh(hosts: list[LabHost], platform) -> None:
    """(Re)start hosts from the cached rootfs: nothing installed, new host keys."""
    for host in hosts:
        platform.delete("hvn", host.name)
        sh(TESTHOST, "down", host.name, check=False)
        sh(TESTHOST, "up", host.name, BRIDGE, f"{host.address}/24", "debian", env={"TESTHOST_NO_REPO": "1"},
           timeout=900)
        platform.apply(ssh_secret(host))


def ready_hosts(platform) -> set[str]:
    items = json.loads(platform.kubectl("get", "hvn", "-o", "json").stdout)["items"]
    return {i["metadata"]["name"] for i in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {}).get("conditions", []))}


def converge(platform, hosts: list[LabHost], label: str, packages: dict) -> float:
    """Apply the hosts' HypervisorNodes in one request and time until all are Ready."""
    manifest = {"apiVersion": "v1", "kind": "List",
                "items": [hypervisor(host, {LABEL: label}, packages=packages) for host in hosts]}
    start = time.monotonic()
    platform.apply(manifest)
    names = {h.name for h in hosts}
    wait_for(lambda: names <= ready_hosts(platform), timeout=1800, interval=0.2, what=f"{len(hosts)} hosts Ready")
    return time.monotonic() - start


def accepted_sessions(host: LabHost) -> int:
    return int(host.exec("grep -c 'Accepted publickey' /var/log/sshd.log || true").strip() or 0)


def versions(platform) -> dict[str, str]:
    out = {}
    for kind in ("hypervisornodes", "rbdstorages"):
        for item in json.loads(platform.kubectl("get", kind, "-o", "json").stdout)["items"]:
            out[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def event_count(platform) -> int:
    return len(json.loads(platform.kubectl("get", "events", "-A", "-o", "json").stdout)["items"])


def main() -> int:
    platform = start_platform()
    operator = Operator(platform, resync_seconds=RESYNC, verbose=False)
    results: dict = {}
    try:
        sh(TESTHOST, "prepare", timeout=1800)
        operator.start()
        label = "bench-hosts"
        platform.apply(storage(platform, "benchhosts", client={"name": "benchhosts"},
                               hypervisors={"nodeSelector": {"matchLabels": {LABEL: label}}}))
        platform.wait_condition("rbds", "benchhosts", "True")
        full = debian_packages()
        config_only = {"profile": "none", **debian_packages()}

        fresh(HOSTS[:1], platform)
        t1 = converge(platform, HOSTS[:1], label, full)
        fresh(HOSTS, platform)
        t8 = converge(platform, HOSTS, label, full)
        fresh(HOSTS[:1], platform)
        c1 = converge(platform, HOSTS[:1], label, config_only)
        fresh(HOSTS, platform)
        c8 = converge(platform, HOSTS, label, config_only)

        # Idle: everything converged; let the status settle, then watch exactly one resync interval.
        time.sleep(RESYNC + 2)
        sessions0 = {h.name: accepted_sessions(h) for h in HOSTS}
        versions0, events0 = versions(platform), event_count(platform)
        time.sleep(RESYNC)
        sessions = sum(accepted_sessions(h) - sessions0[h.name] for h in HOSTS)
        versions1, events1 = versions(platform), event_count(platform)
        writes = sum(versions0.get(k) != v for k, v in versions1.items()) + (events1 - events0)
        results = {
            "seconds": {"1_host": t1, "8_hosts": t8, "1_host_config_only": c1, "8_hosts_config_only": c8},
            "ratio_8_to_1": t8 / t1,
            "ratio_8_to_1_config_only": c8 / c1,
            "idle_ssh_sessions_per_host": sessions / len(HOSTS),
            "idle_api_writes": writes,
            "resync_seconds": RESYNC,
        }
    finally:
        for host in HOSTS:
            platform.delete("hvn", host.name)
            sh(TESTHOST, "down", host.name, check=False)
        sh(TESTHOST, "repo-down", check=False)
        operator.stop()
        stop_platform(platform)

    s = results["seconds"]
    print("hosts (default profile qemu-rbd: repository + packages + /etc/ceph + libvirt secret + probe):")
    print(f"  1 host  {s['1_host']:6.1f}s    8 hosts {s['8_hosts']:6.1f}s    ratio {results['ratio_8_to_1']:.2f}"
          "  (goal <= 1.5)")
    print(f"  config only (profile none): 1 host {s['1_host_config_only']:.1f}s, 8 hosts "
          f"{s['8_hosts_config_only']:.1f}s, ratio {results['ratio_8_to_1_config_only']:.2f}")
    print(f"  idle resync: {results['idle_ssh_sessions_per_host']:.2f} SSH session(s) per host, "
          f"{results['idle_api_writes']} API write(s)  (goal: 1 and 0)")
    path = ROOT / ".bench" / "results.json"
    path.parent.mkdir(exist_ok=True)
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged["hosts"] = results
    path.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
