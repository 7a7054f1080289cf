#!/usr/bin/env python3
"""Does the platform start first time? Fresh starts, counted, and the finalizer policy's 503 windows.

    .venv/bin/python hack/selftest-start.py [--starts 20] [--sandbox 3] [--windows 3] [--no-policy]

--starts N   N fresh starts of the test platform, each step once, no retry: hack/kube.sh up,
             hack/net.sh up, hack/ceph.sh up, hack/bootstrap.sh (then everything down again).
             `--no-policy` runs bootstrap with RBD_FINALIZER_POLICY=0 (the default installs the policy).
--sandbox N  N times `hack/sandbox.sh up` then `hack/sandbox.sh down` (slot 0: .sandbox, bridge
             rbdop0, ports 3300/6789/8080/9090 must be free).
--windows N  How long the API server refuses RbdImage creations (503 from the finalizer policy) on N
             fresh API servers (from the CRDs' creation on, bootstrap included), after N restarts of
             one, after N identical CRD re-applies and after N that change a schema (an upgrade):
             dry-run creations every 50 ms, refusals timed.

The platform uses RBD_TEST_SLOT's bridge and ports (default 9; not while a test run uses that slot)
and its own directory .cache/selftest-slotN. Results: .bench/selftest-start.json (and stdout); the
exit code is 1 when any start needed more than its one try.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("RBD_TEST_SLOT", "9")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.integration import harness  # noqa: E402  (slot -> bridge, ports, Ceph address)

WORK = ROOT / ".cache" / f"selftest-slot{harness.SLOT}"
KUBE, CEPH = WORK / "kube", WORK / "ceph"
RESULTS = ROOT / ".bench" / "selftest-start.json"


def run(*args: str, env: dict | None = None, timeout: float = 900) -> dict:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(args, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = -1, f"timed out after {timeout}s\n{exc.stderr or ''}"
    return {"rc": rc, "seconds": round(time.monotonic() - t0, 1), "stderr": err}


def kubectl() -> str:
    return str(KUBE / "kubectl")


def down() -> None:
    run(str(ROOT / "hack" / "ceph.sh"), "down", str(CEPH), env=harness.CEPH_ENV)
    run(str(ROOT / "hack" / "kube.sh"), "down", str(KUBE), env=harness.TEST_PORTS)
    run(str(ROOT / "hack" / "net.sh"), "down", harness.BRIDGE)


def one_start(no_policy: bool) -> dict:
    """One fresh platform start, every step once. A step's own waits (bootstrap logs "... after Ns
    (N tries)") are waits, not retries: they are recorded as such."""
    down()
    steps = [
        ("kube.sh up", [str(ROOT / "hack" / "kube.sh"), "up", str(KUBE)], harness.TEST_PORTS),
        ("net.sh up", [str(ROOT / "hack" / "net.sh"), "up", harness.BRIDGE, f"{harness.CEPH_ADDR}/24"], {}),
        ("ceph.sh up", [str(ROOT / "hack" / "ceph.sh"), "up", str(CEPH)], harness.CEPH_ENV),
        ("bootstrap.sh", [str(ROOT / "hack" / "bootstrap.sh"), str(KUBE / "kubeconfig"), str(CEPH)],
         {"KUBECTL": kubectl(), **({"RBD_FINALIZER_POLICY": "0"} if no_policy else {})}),
    ]
    result: dict = {"ok": True, "steps": {}}
    for name, args, env in steps:
        step = run(*args, env=env)
        waits = [line for line in step["stderr"].splitlines() if re.search(r"after [0-9.]+s \(([2-9]|[1-9][0-9]+) tries\)", line)]
        result["steps"][name] = {"rc": step["rc"], "seconds": step["seconds"], "waits": waits}
        if step["rc"] != 0:
            result["ok"] = False
            result["failed"] = name
            result["error"] = step["stderr"][-3000:]
            log = KUBE / "log" / "kube-apiserver.log"
            if log.exists():
                keep = WORK / f"kube-apiserver-failed-{int(time.time())}.log"
                keep.write_bytes(log.read_bytes())
                result["apiserver_log"] = str(keep.relative_to(ROOT))
            break
    down()
    return result


def one_sandbox() -> dict:
    up = run(str(ROOT / "hack" / "sandbox.sh"), "up", timeout=1800)
    result = {"ok": up["rc"] == 0, "up_seconds": up["seconds"], "rc": up["rc"]}
    if up["rc"] != 0:
        result["error"] = up["stderr"][-3000:]
    result["waits"] = [line for line in up["stderr"].splitlines() if re.search(r"after [0-9.]+s \(", line)]
    dn = run(str(ROOT / "hack" / "sandbox.sh"), "down", timeout=600)
    result["down_rc"] = dn["rc"]
    return result


# ---------------------------------------------------------------------------------- 503 windows --
class Prober(threading.Thread):
    """Dry-run RbdImage creations every 50 ms; remembers (time, HTTP status, finalizer added)."""

    def __init__(self, kubeconfig: Path) -> None:
        super().__init__(daemon=True)
        import yaml
        conf = yaml.safe_load(kubeconfig.read_text())
        cluster, user = conf["clusters"][0]["cluster"], conf["users"][0]["user"]
        self.ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        self.url = cluster["server"] + "/apis/rbd-operator.io/v1alpha1/namespaces/default/rbdimages?dryRun=All"
        self.headers = {"Authorization": f"Bearer {user['token']}", "Content-Type": "application/json"}
        self.body = json.dumps({"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdImage",
                                "metadata": {"generateName": "probe-", "namespace": "default"},
                                "spec": {"storage": "probe", "size": "1Gi"}}).encode()
        self.samples: list[tuple[float, int, bool]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            req = urllib.request.Request(self.url, data=self.body, method="POST", headers=self.headers)
            t = time.monotonic()
            try:
                with urllib.request.urlopen(req, context=self.ctx, timeout=5) as resp:
                    obj = json.load(resp)
                    self.samples.append((t, resp.status,
                                         "rbd-operator.io/finalizer" in (obj["metadata"].get("finalizers") or [])))
            except urllib.error.HTTPError as exc:
                self.samples.append((t, exc.code, False))
            except Exception:  # noqa: BLE001 - the API server is down (restart): no answer
                self.samples.append((t, 0, False))
            self.stopping.wait(0.05)

    def refused_after(self, t0: float, until: float) -> dict:
        """Refusals (503) of creations sent in [t0, until]: how many, and the last one's offset."""
        window = [s for s in self.samples if t0 <= s[0] <= until]
        refused = [s for s in window if s[1] == 503]
        statuses: dict[str, int] = {}
        for s in window:
            key = f"{s[1] or 'no answer'}" + (" with finalizer" if s[2] else "")
            statuses[key] = statuses.get(key, 0) + 1
        return {"sent": len(window), "refused": len(refused), "statuses": statuses,
                "refused_until_s": round(refused[-1][0] - t0, 2) if refused else 0.0,
                "without_finalizer": sum(1 for s in window if s[1] == 201 and not s[2])}


def apiserver_ready() -> bool:
    r = subprocess.run([kubectl(), "--kubeconfig", str(KUBE / "kubeconfig"), "get", "--raw", "/readyz"],
                       capture_output=True, text=True)
    return r.returncode == 0


def restart_apiserver() -> float:
    """TERM the kube-apiserver, start it again with the same command line; the moment /readyz passes."""
    pid = int((KUBE / "run" / "kube-apiserver.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
        if ") Z " in stat:
            break
        time.sleep(0.1)
    log = open(KUBE / "log" / "kube-apiserver.log", "ab")
    proc = subprocess.Popen([a.decode() for a in argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    (KUBE / "run" / "kube-apiserver.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 120
    while not apiserver_ready():
        if time.monotonic() > deadline:
            raise RuntimeError("the API server did not come back")
        time.sleep(0.1)
    return time.monotonic()


def changed_crd(text: str, n: int) -> str:
    import yaml
    crd = yaml.safe_load(text)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["description"] = f"{schema.get('description', '')} (selftest revision {n})".strip()
    return yaml.safe_dump(crd)


def fresh_server(fake: Path) -> tuple[Prober, dict]:
    """A fresh API server, the prober started before bootstrap: refusals from the CRDs' creation on."""
    down()
    res = run(str(ROOT / "hack" / "kube.sh"), "up", str(KUBE), env=harness.TEST_PORTS)
    if res["rc"]:
        raise RuntimeError(res["stderr"])
    prober = Prober(KUBE / "kubeconfig")
    prober.start()
    t0 = time.monotonic()
    boot = run(str(ROOT / "hack" / "bootstrap.sh"), str(KUBE / "kubeconfig"), str(fake),
               env={"KUBECTL": kubectl(), "RBD_FINALIZER_POLICY": "1"})
    t1 = time.monotonic()
    time.sleep(5)
    served = next((s[0] for s in prober.samples if s[0] >= t0 and s[1] not in (0, 404)), t1)
    return prober, {"bootstrap_rc": boot["rc"], "bootstrap_s": boot["seconds"],
                    **prober.refused_after(served, time.monotonic()),
                    "policy_wait": [ln for ln in boot["stderr"].splitlines() if "policy in effect" in ln]}


def windows(n: int) -> dict:
    fake = WORK / "fake-ceph"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "ceph.client.admin.keyring").write_text("[client.admin]\n\tkey = AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n")
    out: dict = {"fresh": []}
    k = [kubectl(), "--kubeconfig", str(KUBE / "kubeconfig")]
    prober = None
    try:
        for i in range(n):
            if prober:
                prober.stopping.set()
                prober.join(10)
            prober, fresh = fresh_server(fake)
            out["fresh"].append(fresh)
        out["restart"] = []
        for _ in range(n):
            ready = restart_apiserver()
            time.sleep(15)
            out["restart"].append(prober.refused_after(ready, time.monotonic()))
        crd = (ROOT / "crds" / "rbdimages.yaml").read_text()
        for kind, text_of in (("reapply_identical", lambda i: None), ("reapply_changed", lambda i: changed_crd(crd, i))):
            out[kind] = []
            for i in range(n):
                text = text_of(i)
                args = k + ["apply", "--server-side", "--force-conflicts"] + \
                    (["-f", "-"] if text else ["-k", str(ROOT / "crds")])
                subprocess.run(args, input=text, capture_output=True, text=True, check=True)
                applied = time.monotonic()
                time.sleep(15)
                out[kind].append(prober.refused_after(applied, time.monotonic()))
        subprocess.run(k + ["apply", "--server-side", "--force-conflicts", "-k", str(ROOT / "crds")],
                       capture_output=True, check=True)
    finally:
        if prober:
            prober.stopping.set()
            prober.join(10)
        down()
    summary = {}
    for kind, runs in out.items():
        summary[kind] = {"runs": len(runs), "refused": [r["refused"] for r in runs],
                         "refused_until_s": [r["refused_until_s"] for r in runs],
                         "max_refused_until_s": max((r["refused_until_s"] for r in runs), default=0.0),
                         "created_without_finalizer": sum(r["without_finalizer"] for r in runs)}
    return {"summary": summary, "runs": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--sandbox", type=int, default=0)
    ap.add_argument("--windows", type=int, default=0)
    ap.add_argument("--no-policy", action="store_true", help="bootstrap with RBD_FINALIZER_POLICY=0")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    report: dict = {"slot": harness.SLOT, "policy": not args.no_policy, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    starts = []
    for i in range(args.starts):
        r = one_start(args.no_policy)
        starts.append(r)
        steps = ", ".join(f"{k} {v['seconds']}s" + (f" (waited: {len(v['waits'])})" if v["waits"] else "")
                          for k, v in r["steps"].items())
        print(f"start {i + 1}/{args.starts}: {'ok' if r['ok'] else 'FAILED in ' + r['failed']}: {steps}", flush=True)
        if not r["ok"]:
            print(r["error"], flush=True)
    report["starts"] = {"total": len(starts), "first_try": sum(r["ok"] for r in starts),
                        "needed_more": sum(not r["ok"] for r in starts),
                        "with_waits": sum(any(v["waits"] for v in r["steps"].values()) for r in starts),
                        "runs": starts}

    sandboxes = []
    for i in range(args.sandbox):
        r = one_sandbox()
        sandboxes.append(r)
        print(f"sandbox {i + 1}/{args.sandbox}: {'ok' if r['ok'] else 'FAILED'} in {r['up_seconds']}s"
              + (f"\n{r['error']}" if not r["ok"] else ""), flush=True)
    report["sandbox"] = {"total": len(sandboxes), "first_try": sum(r["ok"] for r in sandboxes),
                         "needed_more": sum(not r["ok"] for r in sandboxes), "runs": sandboxes}

    if args.windows:
        report["windows"] = windows(args.windows)
        print(json.dumps(report["windows"]["summary"], indent=1), flush=True)

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"starts: {report['starts']['first_try']}/{report['starts']['total']} first try; "
          f"sandbox: {report['sandbox']['first_try']}/{report['sandbox']['total']} first try; {RESULTS}")
    return 0 if report["starts"]["needed_more"] == 0 and report["sandbox"]["needed_more"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
