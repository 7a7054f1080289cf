"""Generated bad inputs (hypothesis) for all three kinds, sent to the real API server with the operator running.

Each spec is a working base with one or two fields replaced by something generated: wrong types,
boundary and huge numbers, unicode, injection strings, conflicting fields. Every object must be
rejected by the API server or get a Ready condition with a reason; the operator must never crash or
log an unexpected error; and nothing may appear in Ceph or on a host for a spec it refused.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import hypothesis
import kubernetes
import rados
import rbd
from hypothesis import strategies as st
from kubernetes.client.rest import ApiException

from tests.integration import cephcheck
from tests.integration.harness import OPERATOR_NAMESPACE, Operator, Platform
from tests.integration.labhosts import LabHost

GROUP, VERSION = "rbd-operator.io", "v1alpha1"
INJECTIONS = ["$(touch /tmp/pwned)", "`id`", "a;rm -rf /", "../../etc/passwd", "x\nmon_host = evil:1",
              "client.admin", "admin", "bootstrap-osd", "-rf", "' OR 1=1 --", "\u202eevil", "a" * 300, "",
              "0", "-1", "1e400", "9" * 40 + "Gi", "99999999999Ei", "NaN", "null", "{}", "[]", "\x00", "é" * 70,
              "rbdop-new-0000000000000000", "http://169.254.169.254/latest/", "file:///etc/shadow"]
JUNK = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(max_size=80),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.none(),
    st.lists(st.text(max_size=12), max_size=3),
    st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=3),
)
BOUNDARY = st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63, 2 ** 64, 32768, 32769, "0", "1Ki", "16Ei", "1e18",
                            "0.5", "-1Gi", 10 ** 30, 4095, "33Mi"])

STORAGE_PATHS = [("pool", "name"), ("pool", "pgNum"), ("pool", "replicas"), ("pool", "quota", "maxBytes"),
                 ("pool", "quota", "maxObjects"), ("pool", "parameters", "compression_mode"),
                 ("pool", "parameters", "x"), ("pool", "application"), ("pool", "adopt"), ("client", "name"),
                 ("client", "capsProfile"), ("client", "caps", "mon"), ("client", "caps", "osd"),
                 ("client", "cachePool"), ("client", "secretName"), ("client", "adopt"), ("cluster", "monitors"),
                 ("cluster", "monitors", 0), ("cluster", "adminSecretRef", "namespace"),
                 ("cluster", "adminSecretRef", "name"), ("deletionPolicy",), ("imageNamespaces",),
                 ("hypervisors", "nodeSelector"), ("adoption", "namespaces"), ("imageLimits", "maxSize"),
                 ("imageLimits", "minTrashRetention"), ("imageLimits", "qos", "iopsLimit"),
                 ("imageLimits", "qos", "bpsLimit"), ("imageLimits", "dataPools"), ("imageLimits", "dataPools", 0),
                 ("imageLimits", "perNamespace", "maxImages"), ("imageLimits", "perNamespace", "maxBytes")]
IMAGE_PATHS = [("size",), ("name",), ("features",), ("features", 0), ("objectSize",), ("dataPool",), ("source",),
               ("source", "image"), ("source", "snapshot"), ("allowShrink",), ("deletionPolicy",),
               ("trashRetention",), ("storage",), ("adopt",), ("qos", "iopsLimit"), ("qos", "readBpsLimit")]
HOST_PATHS = [("address",), ("port",), ("user",), ("hostKey",), ("hostKeyPolicy",), ("sshKeySecretRef", "name"),
              ("sshKeySecretRef", "namespace"), ("packages", "profile"), ("packages", "install", 0),
              ("packages", "remove", 0), ("packages", "repositories", 0, "name"),
              ("packages", "repositories", 0, "baseURL"), ("packages", "repositories", 0, "gpgKey"),
              ("packages", "repositories", 0, "priority"), ("maintenance", "allowDisruption"),
              ("deletionPolicy",), ("paused",)]
# Fields validated before the operator opens any connection: injection values there, on a spec
# that names a real host, must never lead to a login (each such spec has a user name of its own).
PRE_CONNECT_PATHS = [("packages", "install", 0), ("packages", "remove", 0), ("packages", "repositories", 0, "name"),
                     ("packages", "repositories", 0, "baseURL"), ("packages", "repositories", 0, "gpgKey"),
                     ("packages", "profile")]


def _set(spec: dict, path: tuple, value: Any) -> None:
    node: Any = spec
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            while len(node) <= key:
                node.append({} if not isinstance(nxt, int) else [])
            node = node[key]
        else:
            if not isinstance(node.get(key), (dict, list)):
                node[key] = [] if isinstance(nxt, int) else {}
            node = node[key]
    last = path[-1]
    if isinstance(node, list):
        while len(node) <= last:
            node.append(None)
    node[last] = value


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value))


def generate(n: int, seed: int) -> list[tuple[str, tuple, Any, tuple | None, Any]]:
    """(kind, path, value, second path, second value) drawn by hypothesis, deterministically."""
    out: list = []
    kinds = st.sampled_from(["RbdStorage", "RbdImage", "HypervisorNode"])
    value = st.one_of(JUNK, BOUNDARY)

    @st.composite
    def case(draw: Any) -> tuple:
        kind = draw(kinds)
        paths = {"RbdStorage": STORAGE_PATHS, "RbdImage": IMAGE_PATHS, "HypervisorNode": HOST_PATHS}[kind]
        first = draw(st.sampled_from(paths))
        two = draw(st.booleans()) and draw(st.booleans())  # a quarter get a conflicting second field
        second = draw(st.sampled_from(paths)) if two else None
        return kind, first, draw(value), second, draw(value) if two else None

    @hypothesis.settings(max_examples=n, database=None, derandomize=False, deadline=None,
                         suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
    @hypothesis.seed(seed)
    @hypothesis.given(case())
    def collect(c: tuple) -> None:
        out.append(c)

    collect()
    return out[:n]


def run(platform: Platform, operator: Operator, ceph: rados.Rados, host: LabHost, n: int, seed: int) -> dict:
    kubernetes.config.load_kube_config(str(platform.kubeconfig))
    api = kubernetes.client.CustomObjectsApi()
    cases = generate(n, seed)
    while len(cases) < n:  # hypothesis may yield fewer distinct examples: draw again with another seed
        cases += generate(n - len(cases), seed + len(cases) + 1)
    monitors = platform.monitors
    store = "faults"
    store_status = platform.get("rbds", store)["status"]
    pools_before = {p["pool_name"] for p in cephcheck.mon(ceph, "osd dump")["pools"]}
    accepted: list[tuple[str, str, str | None, dict, bool]] = []  # kind, name, namespace, spec, real host
    rejected = 0
    log_before = len(operator.log_text())
    for i, (kind, path, value, path2, value2) in enumerate(cases):
        name = f"bi-{i}"
        real_host = False
        if kind == "RbdStorage":
            spec = {"cluster": {"monitors": monitors, "adminSecretRef": {"name": "ceph-admin"}},
                    "pool": {"name": f"bi-pool-{i}", "pgNum": 8}, "client": {"name": f"bi-client-{i}"},
                    "deletionPolicy": "Delete"}
        elif kind == "RbdImage":
            spec = {"storage": store, "name": f"bi-image-{i}", "size": "8Mi", "trashRetention": "1s"}
        else:
            spec = {"address": "127.0.0.1", "port": 1, "sshKeySecretRef": {"name": f"ssh-{host.name}"},
                    "hostKey": host.host_key, "packages": {"profile": "none"}}
            if path in PRE_CONNECT_PATHS and isinstance(value, str) and value in INJECTIONS:
                real_host = True  # a real host: an injection here must be refused before any login
                spec.update(address=host.address, port=22, user=f"bi{i}")
        _set(spec, path, _json_safe(value))
        if path2 is not None:
            _set(spec, path2, _json_safe(value2))
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        try:
            if kind == "RbdImage":
                body["metadata"]["namespace"] = "default"
                api.create_namespaced_custom_object(GROUP, VERSION, "default", "rbdimages", body)
            else:
                plural = "rbdstorages" if kind == "RbdStorage" else "hypervisornodes"
                api.create_cluster_custom_object(GROUP, VERSION, plural, body)
        except ApiException as exc:
            if exc.status in (400, 422):
                rejected += 1
                continue
            raise
        except ValueError:  # the client refuses to send it (e.g. a NUL in a string): never reaches the API
            rejected += 1
            continue
        accepted.append((kind, name, "default" if kind == "RbdImage" else None, spec, real_host))

    def conditions() -> dict[tuple[str, str], dict]:
        out: dict = {}
        for plural, kind in (("rbdstorages", "RbdStorage"), ("rbdimages", "RbdImage"),
                             ("hypervisornodes", "HypervisorNode")):
            for obj in json.loads(platform.kubectl("get", plural, "-A", "-o", "json").stdout)["items"]:
                for cond in (obj.get("status") or {}).get("conditions") or []:
                    if cond["type"] == "Ready":
                        out[(kind, obj["metadata"]["name"])] = cond
        return out

    deadline = time.monotonic() + 900
    while True:
        conds = conditions()
        missing = [a for a in accepted if (a[0], a[1]) not in conds]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(3)
    reported = len(accepted) - len(missing)
    refused = [a for a in accepted if conds.get((a[0], a[1]), {}).get("status") != "True"]
    reasons: dict[str, int] = {}
    for a in accepted:
        reason = conds.get((a[0], a[1]), {}).get("reason", "(none)")
        reasons[reason] = reasons.get(reason, 0) + 1

    # Nothing in Ceph or on a host for a refused spec.
    leftovers = []
    pools_now = {p["pool_name"] for p in cephcheck.mon(ceph, "osd dump")["pools"]}
    images_now = set()
    with ceph.open_ioctx(store) as ioctx:
        images_now = set(rbd.RBD().list(ioctx))
    sshd_log = host.exec("cat /var/log/sshd.log", check=False)
    for kind, name, _, spec, real_host in refused:
        if kind == "RbdStorage":
            pool = (spec.get("pool") or {}).get("name") if isinstance(spec.get("pool"), dict) else None
            if isinstance(pool, str) and pool in pools_now - pools_before:
                leftovers.append(f"pool {pool} of refused {name}")
        elif kind == "RbdImage":
            img = spec.get("name")
            if isinstance(img, str) and img in images_now:
                leftovers.append(f"image {img} of refused {name}")
        elif real_host and f" bi{name[3:]} " in sshd_log:
            leftovers.append(f"{name} logged in to {host.name} although refused")

    log = operator.log_text()[log_before:]
    crashes = int(operator.proc.poll() is not None) + log.count("Traceback") + log.count("UnexpectedError")

    # Clean up: delete everything (valid storages delete their pools: deletionPolicy Delete).
    for kind, name, namespace, _, _ in accepted:
        plural = {"RbdStorage": "rbds", "RbdImage": "rbdimg", "HypervisorNode": "hvn"}[kind]
        platform.delete(plural, name, namespace)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        left = [a for a in accepted if platform.get({"RbdStorage": "rbds", "RbdImage": "rbdimg",
                                                      "HypervisorNode": "hvn"}[a[0]], a[1], a[2]) is not None]
        if not left:
            break
        time.sleep(3)
    return {"tried": len(cases), "rejected_by_api": rejected, "accepted": len(accepted), "reported": reported,
            "unreported": len(missing), "refused_by_operator": len(refused),
            "accepted_and_converged": len(accepted) - len(refused), "crashes": crashes,
            "leftovers_for_refused": len(leftovers), "leftover_detail": leftovers[:10],
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])), "storage_status_kept":
            platform.get("rbds", store)["status"].get("poolId") == store_status.get("poolId")}
