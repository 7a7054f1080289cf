"""`make bench`: RbdImage throughput, operator vs raw librbd vs the seed's qemu-img.

Starts the same real platform as the integration tests (control plane, Ceph,
the operator process), then in one run:
  1. applies N RbdImages at once and times until all are Ready;
  2. creates N images through librbd in one process;
  3. runs `qemu-img create -f rbd` N times (VMmanager's command, without its SSH hop).
Steps 1 and 2 run in interleaved rounds (--rounds, default 3) and their medians are reported.
Prints images/s for each and the ratios; writes .bench/results.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kubernetes  # noqa: E402
import kubernetes.watch  # noqa: E402
import rados  # noqa: E402
import rbd  # noqa: E402

from bench.results import record  # noqa: E402
from tests.integration.harness import Operator, start_platform, stop_platform  # noqa: E402
from tests.integration.manifests import storage  # noqa: E402

SIZE = 2 * 2**30


def is_ready(obj: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions") or [])


def _custom_api(platform) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(str(platform.kubeconfig)))


def wait_ready(platform, namespace: str, n: int, timeout: float = 1800, since: str | None = None) -> None:
    """Until n RbdImages of the namespace are Ready, from one watch (not a listing every half second,
    which on two cores costs the operator and the API server time of their own). `since`: a
    resourceVersion from before the objects were created, to watch from (no listing at all)."""
    api = _custom_api(platform)
    ready: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(ready) < n and time.monotonic() < deadline:
        if since is None:
            listed = api.list_namespaced_custom_object("rbd-operator.io", "v1alpha1", namespace, "rbdimages")
            ready = {o["metadata"]["name"] for o in listed["items"] if is_ready(o)}
            version = listed["metadata"]["resourceVersion"]
        else:
            version, since = since, None
        stream = kubernetes.watch.Watch().stream(api.list_namespaced_custom_object, "rbd-operator.io", "v1alpha1",
                                                 namespace, "rbdimages", resource_version=version,
                                                 timeout_seconds=max(1, int(deadline - time.monotonic())))
        for event in stream:
            obj = event["object"]
            if is_ready(obj):
                ready.add(obj["metadata"]["name"])
            if len(ready) >= n:
                break
    if len(ready) < n:
        raise AssertionError(f"only {len(ready)}/{n} images Ready after {timeout}s")


def resource_version(platform, namespace: str) -> str:
    listed = _custom_api(platform).list_namespaced_custom_object("rbd-operator.io", "v1alpha1", namespace,
                                                                 "rbdimages", limit=1)
    return listed["metadata"]["resourceVersion"]


def submit(platform, namespace: str, bodies: list[dict], workers: int = 16, plural: str = "rbdimages") -> None:
    """Create the objects concurrently, as fast as the API server accepts them: plain keep-alive HTTPS
    connections with the bodies serialised up front (the kubernetes client's own per-call work cost
    0.8 ms of CPU per object on this 2-core machine: time the operator under test did not get)."""
    config = kubernetes.config.new_client_from_config(str(platform.kubeconfig)).configuration
    url = urllib.parse.urlsplit(config.host)
    context = ssl.create_default_context(cafile=config.ssl_ca_cert)
    if config.cert_file:
        context.load_cert_chain(config.cert_file, config.key_file)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    token = config.api_key.get("authorization") or config.api_key.get("BearerToken")
    if token:
        headers["Authorization"] = token if " " in token else f"Bearer {token}"
    path = f"/apis/rbd-operator.io/v1alpha1/namespaces/{namespace}/{plural}"
    payloads = [json.dumps(b).encode() for b in bodies]

    def create(chunk: list[bytes]) -> None:
        conn = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=60)
        try:
            for payload in chunk:
                conn.request("POST", path, body=payload, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 201:
                    raise AssertionError(f"creating in {plural}: HTTP {resp.status}: {body[:300]!r}")
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, [payloads[i::workers] for i in range(workers)]))


def bench_operator(platform, pool: str, n: int, round_: int = 0) -> float:
    namespace = f"bench-{round_}"
    platform.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    bodies = [{"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdImage",
               "metadata": {"name": f"op-{round_}-{i}", "namespace": namespace},
               "spec": {"storage": pool, "size": "2Gi"}}
              for i in range(n)]
    since = resource_version(platform, namespace)  # the watch starts before the first object: no listing
    with concurrent.futures.ThreadPoolExecutor(1) as waiter:
        start = time.monotonic()
        waiting = waiter.submit(wait_ready, platform, namespace, n, since=since)
        submit(platform, namespace, bodies)
        print(f"  (creating {n} RbdImage objects took {time.monotonic() - start:.1f}s)")
        waiting.result()
    return n / (time.monotonic() - start)


def bench_librbd(cluster: rados.Rados, pool: str, n: int, round_: int = 0) -> float:
    with cluster.open_ioctx(pool) as ioctx:
        start = time.monotonic()
        for i in range(n):
            rbd.RBD().create(ioctx, f"lib-{round_}-{i}", SIZE, old_format=False,
                             features=rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK |
                             rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF | rbd.RBD_FEATURE_DEEP_FLATTEN)
        return n / (time.monotonic() - start)


def bench_qemu_img(ceph_conf: Path, pool: str, n: int) -> float:
    start = time.monotonic()
    for i in range(n):
        subprocess.run(["qemu-img", "create", "-q", "-f", "rbd", f"rbd:{pool}/qemu-{i}:id=admin:conf={ceph_conf}", "2G"],
                       check=True, capture_output=True)
    return n / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=int(os.environ.get("BENCH_N", "500")))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")),
                        help="operator and librbd rounds, interleaved; the medians are reported (default: %(default)s)")
    args = parser.parse_args()
    n = args.n

    platform = start_platform()
    operator = Operator(platform, resync_seconds=600, verbose=False)
    cluster = rados.Rados(conffile=str(platform.ceph_conf))
    try:
        operator.start()
        cluster.connect(timeout=15)
        pool = f"bench{int(time.time())}"
        platform.apply(storage(platform, pool, pool={"pgNum": 32}, client={"name": pool}))
        platform.wait_condition("rbds", pool, "True")
        # Interleaved rounds, medians reported: on this shared 2-core machine one round of either varies by
        # up to a third between runs (librbd alone 220-348/s); each round uses new names, same pool.
        rounds: dict[str, list[float]] = {"operator": [], "librbd": []}
        for r in range(args.rounds):
            rounds["operator"].append(bench_operator(platform, pool, n, r))
            rounds["librbd"].append(bench_librbd(cluster, pool, n, r))
            print(f"  round {r + 1}: operator {rounds['operator'][-1]:.1f}/s, librbd {rounds['librbd'][-1]:.1f}/s")
        per_s = {key: statistics.median(values) for key, values in rounds.items()}
        per_s["qemu_img"] = bench_qemu_img(platform.ceph_conf, pool, n)
    finally:
        cluster.shutdown()
        operator.stop()
        stop_platform(platform)

    ratios = {"operator_to_librbd": per_s["operator"] / per_s["librbd"],
              "operator_to_qemu_img": per_s["operator"] / per_s["qemu_img"]}
    print(f"images (n={n}, 2 GiB each, thin; medians of {args.rounds} interleaved rounds):")
    for key, value in per_s.items():
        print(f"  {key:10s} {value:8.1f} images/s")
    print(f"  operator/librbd   {ratios['operator_to_librbd']:.2f}  (goal >= 0.5)")
    print(f"  operator/qemu-img {ratios['operator_to_qemu_img']:.2f}")
    print(f"written to {record('images', {'n': n, 'per_s': per_s, 'ratios': ratios, 'rounds': rounds})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
