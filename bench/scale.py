"""`make bench` (scale): what thousands of converged RbdImages cost the operator, idle and after a SIGKILL,
as a curve over sizes (docs/performance.md).

One platform run grows the fleet through BENCH_SCALE_SIZES (default 2000,10000,20000) RbdImages, spread
round-robin over BENCH_SCALE_STORAGES (4) RbdStorages, with one RbdSnapshot per BENCH_SCALE_SNAPSHOT_EVERY
(10) images, at the resync interval BENCH_SCALE_RESYNC (60 s). Per size:
  converge_s         from the first new object until the added images are Ready and their snapshots ready
                     (added_images of them: the growth from the previous size)
  idle_cpu_percent   operator CPU (user+system, /proc) as % of one core over 3 resync intervals, once settled:
                     every storage swept twice since the used-space sweep last measured anything (it catches
                     up with new images at RBD_OPERATOR_USED_PER_SWEEP per storage and sweep), and at least
                     BENCH_SCALE_SETTLE (120) s after convergence
  rss_mib            operator resident memory at the end of that idle window
  idle_api_writes    writes to the API server during the idle window: objects of the operator's kinds whose
                     resourceVersion changed, plus Events created or updated
  kib_per_image      the slope: RSS growth from the previous point (the operator with no image for the first)
                     per image added
  apiserver_rss_mib, etcd_rss_mib   the control plane's resident memory beside the operator's
then the operator is SIGKILLed and started again:
  resume_s           from the new start until every storage's sweep has re-verified all of its images
  resume_api_writes  writes from the kill until then (+5 s), counted the same way
  resume_rss_mib     the operator's RSS then
Written to .bench/results.json under "scale" (the other keys kept), a plot to .bench/scale.svg, and a
Markdown table printed. BENCH_SCALE_HEAP=1 runs the operator with tracemalloc and keeps its heap report
per size in .bench/scale-heap-<n>.txt (tracemalloc costs memory and CPU: not for the recorded figures).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kubernetes  # noqa: E402
import kubernetes.watch  # noqa: E402

from bench.results import PATH as RESULTS, record  # noqa: E402
from bench.images import is_ready, submit  # noqa: E402
from rbd_operator.reconcile import used  # noqa: E402
from tests.integration.harness import WORK, Operator, start_platform, stop_platform  # noqa: E402
from tests.integration.manifests import storage  # noqa: E402

SIZES = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES", "2000,10000,20000").split(",") if s.strip()]
STORAGES = int(os.environ.get("BENCH_SCALE_STORAGES", "4"))
SNAPSHOT_EVERY = int(os.environ.get("BENCH_SCALE_SNAPSHOT_EVERY", "10"))
RESYNC = int(os.environ.get("BENCH_SCALE_RESYNC", "60"))
IDLE_INTERVALS = int(os.environ.get("BENCH_SCALE_IDLE_INTERVALS", "3"))
SETTLE = int(os.environ.get("BENCH_SCALE_SETTLE", "120"))  # RECENT_SECONDS of reconcile/used.py
HEAP = os.environ.get("BENCH_SCALE_HEAP") == "1"
NAMESPACE = "scale"
GROUP, VERSION = "rbd-operator.io", "v1alpha1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOALS = {"rss_mib": 400, "idle_cpu_percent": 5, "idle_api_writes": 0, "resume_api_writes": 0, "resume_s": 120,
         "converge_s": 180}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_mib(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def control_plane_pid(component: str) -> int | None:
    """The slot's etcd / kube-apiserver (hack/kube.sh's pid files)."""
    try:
        return int((WORK / "kube" / "run" / f"{component}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def uptime() -> str:
    return Path("/proc/loadavg").read_text().strip()


def listing(api: kubernetes.client.CustomObjectsApi, plural: str) -> dict[str, str]:
    out, token = {}, None
    while True:
        page = api.list_cluster_custom_object(GROUP, VERSION, plural, limit=2000, _continue=token)
        for item in page["items"]:
            meta = item["metadata"]
            out[f"{plural}/{meta.get('namespace', '')}/{meta['name']}"] = meta["resourceVersion"]
        token = page["metadata"].get("continue")
        if not token:
            return out


def events(core: kubernetes.client.CoreV1Api) -> set[tuple[str, str]]:
    out, token = set(), None
    while True:
        page = core.list_event_for_all_namespaces(limit=2000, _continue=token)
        out |= {(f"{e.metadata.namespace}/{e.metadata.name}", e.metadata.resource_version) for e in page.items}
        token = page.metadata._continue
        if not token:
            return out


def snapshot(api, core) -> tuple[dict[str, str], set]:
    versions: dict[str, str] = {}
    for plural in ("rbdstorages", "rbdimages", "rbdsnapshots", "hypervisornodes"):
        versions.update(listing(api, plural))
    return versions, events(core)


def writes_between(before: tuple[dict, set], after: tuple[dict, set]) -> int:
    changed = [key for key, version in after[0].items() if before[0].get(key) != version]
    new_events = after[1] - before[1]
    if changed or new_events:
        print(f"    changed: {changed[:10]}; events: {sorted(new_events)[:5]}", flush=True)
    return len(changed) + len(new_events)


def wait_ready(api, plural: str, names: set[str], since: str, timeout: float = 3600) -> None:
    """Until every named object is Ready (RbdImage) / readyToUse (RbdSnapshot), from one watch from `since`."""
    ready: set[str] = set()
    deadline = time.monotonic() + timeout
    version = since
    while ready < names and time.monotonic() < deadline:
        stream = kubernetes.watch.Watch().stream(api.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE,
                                                 plural, resource_version=version,
                                                 timeout_seconds=max(1, int(min(300, deadline - time.monotonic()))))
        try:
            for event in stream:
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                done = is_ready(obj) if plural == "rbdimages" else bool((obj.get("status") or {}).get("readyToUse"))
                if done and obj["metadata"]["name"] in names:
                    ready.add(obj["metadata"]["name"])
                if ready >= names:
                    break
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status != 410:
                raise
            listed = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)
            version = listed["metadata"]["resourceVersion"]
            ready |= {o["metadata"]["name"] for o in listed["items"] if o["metadata"]["name"] in names and (
                is_ready(o) if plural == "rbdimages" else (o.get("status") or {}).get("readyToUse"))}
    if not ready >= names:
        raise AssertionError(f"only {len(ready)}/{len(names)} {plural} ready after {timeout}s")


def grow(platform, api, pools: list[str], have: int, want: int) -> float:
    """Create images have..want-1 (and their snapshots); seconds until all of them are ready."""
    images = [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdImage",
               "metadata": {"name": f"s-{i}", "namespace": NAMESPACE},
               "spec": {"storage": pools[i % len(pools)], "size": "1Gi"}} for i in range(have, want)]
    snaps = [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdSnapshot",
              "metadata": {"name": f"s-{i}-snap", "namespace": NAMESPACE}, "spec": {"image": f"s-{i}"}}
             for i in range(have, want) if SNAPSHOT_EVERY and i % SNAPSHOT_EVERY == 0]
    since = {p: api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, p, limit=1)["metadata"]["resourceVersion"]
             for p in ("rbdimages", "rbdsnapshots")}
    start = time.monotonic()
    submit(platform, NAMESPACE, images)
    submit(platform, NAMESPACE, snaps, plural="rbdsnapshots")
    print(f"  ({len(images)} RbdImages and {len(snaps)} RbdSnapshots created in {time.monotonic() - start:.1f}s)",
          flush=True)
    wait_ready(api, "rbdimages", {b["metadata"]["name"] for b in images}, since["rbdimages"])
    wait_ready(api, "rbdsnapshots", {b["metadata"]["name"] for b in snaps}, since["rbdsnapshots"])
    return round(time.monotonic() - start, 1)


def heap_report(operator: Operator, n: int) -> None:
    target = WORK / "operator-heap.txt"
    target.unlink(missing_ok=True)
    operator.proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 300
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(1)
    if target.exists():
        out = ROOT / ".bench" / f"scale-heap-{n}.txt"
        out.write_text(target.read_text())
        print(f"  heap report: {out}", flush=True)


def resume(operator: Operator, api, core, pools: list[str], per_pool: dict[str, int]) -> dict:
    """SIGKILL, start again, until every storage's sweep re-verified all of its images."""
    before = snapshot(api, core)
    mark = len(operator.log_text())
    operator.kill(signal.SIGKILL)
    start = time.monotonic()
    operator.start()
    patterns = {p: re.compile(rf"swept (\d+) image\(s\) of {re.escape(p)}:") for p in pools}
    deadline = start + 900
    while time.monotonic() < deadline:
        text = operator.log_text()[mark:]
        if all(any(int(m) >= per_pool[p] for m in patterns[p].findall(text)) for p in pools):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the images were not re-verified after the restart")
    out = {"resume_s": round(time.monotonic() - start, 1)}
    out["resume_rss_mib"] = rss_mib(operator.proc.pid)
    time.sleep(5)
    out["resume_api_writes"] = writes_between(before, snapshot(api, core))
    return out


def settle(operator: Operator, pools: list[str], mark: int) -> None:
    """Until the idle state: the last status writes landed and the used-space sweep has caught up with the new
    images (it measures at most RBD_OPERATOR_USED_PER_SWEEP per storage and sweep, and again while an object
    map is younger than reconcile/used.py RECENT_SECONDS): every storage swept twice since the last "used
    space" measurement, and at least BENCH_SCALE_SETTLE (120) s after convergence."""
    start = time.monotonic()
    time.sleep(RESYNC)
    while time.monotonic() - start < 1800:
        text = operator.log_text()[mark:]
        last = max((m.end() for m in re.finditer(r"used space of \S+: \d+ image", text)), default=0)
        after = text[last:]
        if time.monotonic() - start >= SETTLE and all(len(re.findall(rf"swept \d+ image\(s\) of {re.escape(p)}:",
                                                                     after)) >= 2 for p in pools):
            break
        time.sleep(5)
    print(f"  settled {time.monotonic() - start:.0f}s after convergence", flush=True)


def measure(platform, operator: Operator, api, core, pools: list[str], have: int, n: int, prev_rss: float) -> dict:
    point: dict = {"images": n, "snapshots": len([i for i in range(n) if SNAPSHOT_EVERY and i % SNAPSHOT_EVERY == 0]),
                   "added_images": n - have, "load_before": uptime()}
    mark = len(operator.log_text())
    point["converge_s"] = grow(platform, api, pools, have, n)
    print(f"  {n - have} images (to {n}) converged in {point['converge_s']}s", flush=True)
    settle(operator, pools, mark)
    pid = operator.proc.pid
    before, cpu0, t0 = snapshot(api, core), cpu_seconds(pid), time.monotonic()
    time.sleep(IDLE_INTERVALS * RESYNC)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    point["rss_mib"] = rss_mib(pid)
    point["idle_cpu_percent"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
    point["idle_api_writes"] = writes_between(before, snapshot(api, core))
    point["kib_per_image"] = round((point["rss_mib"] - prev_rss) * 1024 / max(1, n - have), 1)
    point["apiserver_rss_mib"] = rss_mib(control_plane_pid("kube-apiserver"))
    point["etcd_rss_mib"] = rss_mib(control_plane_pid("etcd"))
    print(f"  idle over {IDLE_INTERVALS * RESYNC}s: {point['idle_cpu_percent']}% of a core, {point['rss_mib']} MiB "
          f"({point['kib_per_image']} KiB/image), {point['idle_api_writes']} API writes; kube-apiserver "
          f"{point['apiserver_rss_mib']} MiB, etcd {point['etcd_rss_mib']} MiB", flush=True)
    if HEAP:
        heap_report(operator, n)
    per_pool = {p: len(range(i, n, len(pools))) for i, p in enumerate(pools)}
    point.update(resume(operator, api, core, pools, per_pool))
    point["load_after"] = uptime()
    print(f"  SIGKILL + start: every image re-verified in {point['resume_s']}s, {point['resume_api_writes']} API "
          f"writes, {point['resume_rss_mib']} MiB", flush=True)
    return point


def table(result: dict) -> str:
    cols = ["images", "snapshots", "converge_s", "added_images", "rss_mib", "kib_per_image", "idle_cpu_percent",
            "idle_api_writes", "resume_s", "resume_api_writes", "resume_rss_mib", "apiserver_rss_mib", "etcd_rss_mib"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines.append("| 0 | 0 | | | " + f"{result['base_rss_mib']} |" + " |" * (len(cols) - 5))
    for p in result["sizes"]:
        lines.append("| " + " | ".join(str(p.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def svg(result: dict) -> str:
    """The curve: RSS of the operator, kube-apiserver and etcd over the number of images (plain SVG)."""
    points = [{"images": 0, "rss_mib": result["base_rss_mib"]}] + result["sizes"]
    series = {"operator": ("rss_mib", "#1f77b4"), "kube-apiserver": ("apiserver_rss_mib", "#ff7f0e"),
              "etcd": ("etcd_rss_mib", "#2ca02c")}
    w, h, left, bottom, top, right = 640, 400, 60, 50, 30, 150
    xmax = max(p["images"] for p in points) or 1
    ymax = max([p.get(k) or 0 for p in points for k, _ in series.values()] + [GOALS["rss_mib"]]) * 1.1

    def x(v: float) -> float:
        return left + (w - left - right) * v / xmax

    def y(v: float) -> float:
        return h - bottom - (h - bottom - top) * v / ymax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">rbd-operator: resident memory over RbdImages (resync '
           f'{result["resync_seconds"]} s, {result["storages"]} storages)</text>',
           f'<line x1="{left}" y1="{y(0)}" x2="{w - right}" y2="{y(0)}" stroke="black"/>',
           f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{top}" stroke="black"/>',
           f'<text x="{(w - right + left) / 2}" y="{h - 12}" text-anchor="middle">RbdImages</text>',
           f'<text x="14" y="{(h - bottom + top) / 2}" transform="rotate(-90 14 {(h - bottom + top) / 2})" '
           f'text-anchor="middle">RSS (MiB)</text>']
    for i in range(6):
        xv, yv = xmax * i / 5, ymax * i / 5
        out.append(f'<text x="{x(xv):.0f}" y="{y(0) + 16:.0f}" text-anchor="middle">{xv:,.0f}</text>')
        out.append(f'<text x="{left - 6}" y="{y(yv) + 4:.0f}" text-anchor="end">{yv:.0f}</text>')
        out.append(f'<line x1="{left}" y1="{y(yv):.1f}" x2="{w - right}" y2="{y(yv):.1f}" stroke="#ddd"/>')
    out.append(f'<line x1="{left}" y1="{y(GOALS["rss_mib"]):.1f}" x2="{w - right}" y2="{y(GOALS["rss_mib"]):.1f}" '
               f'stroke="red" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{w - right + 6}" y="{y(GOALS["rss_mib"]) + 4:.0f}" fill="red">'
               f'goal {GOALS["rss_mib"]} MiB</text>')
    for row, (label, (key, colour)) in enumerate(series.items()):
        pts = [(x(p["images"]), y(p[key])) for p in points if p.get(key)]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                   + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in pts]
        out.append(f'<text x="{w - right + 6}" y="{top + 20 + 16 * row}" fill="{colour}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def setup(platform, pools: list[str]) -> None:
    for pool in pools:
        platform.apply(storage(platform, pool, pool={"pgNum": 32}, client={"name": pool}))
    for pool in pools:
        platform.wait_condition("rbds", pool, "True")
    platform.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})


def run(platform) -> dict:
    env = {"RBD_OPERATOR_TRACEMALLOC": "12", "RBD_OPERATOR_TRACEMALLOC_FILE": str(WORK / "operator-heap.txt")} \
        if HEAP else {}
    env["RBD_OPERATOR_USED_IDLE_SECONDS"] = str(used.IDLE_SECONDS)  # the production cadence (tests look every sweep)
    operator = Operator(platform, resync_seconds=RESYNC, verbose=False, env=env)
    client = kubernetes.config.new_client_from_config(str(platform.kubeconfig))
    api, core = kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)
    result: dict = {"resync_seconds": RESYNC, "storages": STORAGES, "snapshot_every": SNAPSHOT_EVERY,
                    "ceph_release": os.environ.get("CEPH_RELEASE", "reef"), "cores": os.cpu_count(),
                    "heap_profiling": HEAP, "sizes": []}
    try:
        operator.start()
        stamp = int(time.time())
        pools = [f"scale{stamp}-{i}" for i in range(STORAGES)]
        setup(platform, pools)
        time.sleep(RESYNC)
        result["base_rss_mib"] = rss_mib(operator.proc.pid)
        have, prev = 0, result["base_rss_mib"]
        for n in SIZES:
            print(f"scale: {n} images", flush=True)
            point = measure(platform, operator, api, core, pools, have, n, prev)
            result["sizes"].append(point)
            have, prev = n, point["rss_mib"]
            save(result)  # a partial curve survives a later failure
    finally:
        operator.stop()
    return result


def save(result: dict, path: Path = RESULTS) -> None:
    """The run under "scale"; what earlier ad-hoc runs recorded beside it there (keys this run does not write,
    e.g. `restart_levers_20000`, `restart_points`) is kept."""
    previous = json.loads(path.read_text()).get("scale") if path.exists() else None
    kept = {k: v for k, v in previous.items() if k not in result} if isinstance(previous, dict) else {}
    record("scale", {**result, **kept}, path)
    if result["sizes"]:
        (ROOT / ".bench" / "scale.svg").write_text(svg(result))


def main() -> int:
    platform = start_platform()
    try:
        result = run(platform)
    finally:
        stop_platform(platform)
    save(result)
    print(table(result))
    print(f"scale (goals at 20,000 images: {json.dumps(GOALS)}): written to .bench/results.json, .bench/scale.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
