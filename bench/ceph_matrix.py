"""`make test-ceph-matrix`: the Ceph-facing integration tests on every Ceph release, into
.bench/ceph-matrix.json.

For each release (CEPH_MATRIX_RELEASES, default "pacific reef tentacle"; hack/ceph.sh's
CEPH_RELEASE) one pytest session on a fresh platform (control plane, the release's micro-cluster,
the operator with this machine's 16.2 client libraries) runs:
  test_ceph_release.py   which release runs (`ceph versions`), which libraries the operator uses
  test_storage.py, test_image.py (images, snapshots, clones, the operator SIGKILLed mid-creation,
  a rename cut short), test_import.py, test_safety.py (ownership), test_tenancy.py, test_raw_steps.py
  (librbd's object steps the operator takes itself: killed between every two, a concurrent client, v1;
  the open-probe case, ~45 s of waiting out a dead watch, only on the default release: DESELECT),
  test_ha.py::test_standby_takes_over_and_nothing_is_done_twice (the active replica SIGKILLed
  mid-burst), and, unless CEPH_MATRIX_FAULTS=0, test_ceph_faults.py (bench/faults.py's monitor and
  OSD cases).
Counts come from pytest's junit XML (.bench/ceph-matrix/<release>.xml); the version string is the
one `ceph versions` printed in that session. Each release's entry:
  {"ceph_version", "passed", "failed", "skipped", "faults", "failures": [test ids], "duration_s",
   "measured"}
Entries of releases not run this time are kept as they were (each has its own "measured" date).
Runs in test slot RBD_TEST_SLOT (default 6). Exit status 1 if anything failed.

  python bench/ceph_matrix.py            run, write the JSON
  python bench/ceph_matrix.py --readme   rewrite the table in docs/ceph-releases.md (between the ceph-matrix
                                         markers; the README links it)
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".bench" / "ceph-matrix.json"
XML_DIR = ROOT / ".bench" / "ceph-matrix"
RELEASES = {"pacific": ("16.2", "Debian 12 bookworm"), "reef": ("18.2", "Debian 13 trixie"),
            "tentacle": ("20.2", "Debian testing")}
TESTS = ["tests/integration/test_ceph_release.py", "tests/integration/test_storage.py",
         "tests/integration/test_image.py", "tests/integration/test_import.py",
         "tests/integration/test_safety.py", "tests/integration/test_tenancy.py",
         "tests/integration/test_raw_steps.py",
         "tests/integration/test_ha.py::test_standby_takes_over_and_nothing_is_done_twice"]
FAULTS = ["tests/integration/test_ceph_faults.py"]
# Left to the default release (`make test`): ~45 s each of waiting out a dead client's watch (the OSDs' timeout,
# not librbd's layout, which test_raw_steps' other cases check on every release).
DESELECT = ["tests/integration/test_raw_steps.py::"
            "test_a_probe_image_a_killed_process_left_open_is_removed_once_its_watch_expires"]
TABLE_DOC = ROOT / "docs" / "ceph-releases.md"  # the table the README links
BEGIN, END = "<!-- ceph-matrix -->", "<!-- /ceph-matrix -->"


def counts(xml: Path) -> dict:
    """passed/failed/skipped and the failed test ids from a junit XML file (errors count as failed)."""
    out = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "ceph_version": None}
    if not xml.exists():
        return out
    # A test that errs in its teardown has a second <testcase> of the same name: one outcome per test,
    # the worst.
    outcome: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        for prop in case.iter("property"):
            if prop.get("name") == "ceph_version":
                out["ceph_version"] = prop.get("value")
        if case.find("failure") is not None or case.find("error") is not None:
            outcome[test_id] = "failed"
        elif case.find("skipped") is not None:
            outcome.setdefault(test_id, "skipped")
        else:
            outcome.setdefault(test_id, "passed")
    for test_id, result in outcome.items():
        out[result] += 1
        if result == "failed":
            out["failures"].append(test_id)
    return out


def debian_package(release: str) -> str | None:
    """The Debian version of the release's ceph-mon that hack/ceph.sh runs (its root's, or this machine's)."""
    root = subprocess.run([str(ROOT / "hack" / "ceph-root.sh"), release], capture_output=True, text=True,
                          check=False).stdout.strip()
    if root == "/":
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "ceph-mon"], capture_output=True, text=True,
                             check=False)
        return out.stdout.strip() or None
    pins = Path(root, ".ceph-root-packages") if root else None
    if pins and pins.exists():
        for pin in pins.read_text().split():
            if pin.startswith("ceph-mon="):
                return pin.split("=", 1)[1]
    return None


def run_release(release: str, faults: bool) -> dict:
    slot = os.environ.get("RBD_TEST_SLOT", "6")
    env = {**os.environ, "CEPH_RELEASE": release, "RBD_TEST_SLOT": slot}
    XML_DIR.mkdir(parents=True, exist_ok=True)
    xml = XML_DIR / f"{release}.xml"
    xml.unlink(missing_ok=True)
    # Whatever an interrupted run of this slot left behind goes first.
    subprocess.run([sys.executable, "-m", "tests.integration.harness"], cwd=ROOT, env=env, check=False)
    print(f"ceph-matrix: {release} (slot {slot}{', with the fault cases' if faults else ''})", flush=True)
    start = time.monotonic()
    rc = subprocess.run([sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", f"--junitxml={xml}",
                         "-o", "junit_family=xunit1", *TESTS, *(FAULTS if faults else []),
                         *(f"--deselect={test}" for test in DESELECT)],
                        cwd=ROOT, env=env, check=False).returncode
    result = counts(xml)
    if rc != 0 and not result["failed"]:  # pytest itself failed (collection, platform start, ...)
        result["failed"] += 1
        result["failures"].append(f"pytest exit status {rc}")
    return {"ceph_version": result["ceph_version"], "debian_package": debian_package(release),
            "passed": result["passed"], "failed": result["failed"],
            "skipped": result["skipped"], "faults": faults, "failures": result["failures"],
            "duration_s": round(time.monotonic() - start),
            "measured": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def host_client() -> str:
    out = subprocess.run(["ceph", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return out or "unknown"


def readme_table(data: dict) -> str:
    rows = ["| release | Debian suite: package | daemons (`ceph versions`) | passed | failed | skipped | fault cases "
            "| run | measured |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for release, (major, suite) in RELEASES.items():
        entry = data.get("releases", {}).get(release)
        if not entry:
            rows.append(f"| {release} ({major}) | {suite} | not measured | | | | | | |")
            continue
        version = entry.get("ceph_version") or "unknown"
        m = re.match(r"ceph version (\S+) \(([0-9a-f]{7})", version)
        shown = f"{m.group(1)} ({m.group(2)})" if m else version
        package = f": `{entry['debian_package']}`" if entry.get("debian_package") else ""
        rows.append(f"| {release} ({major}) | {suite}{package} | {shown} | {entry['passed']} | {entry['failed']} | "
                    f"{entry['skipped']} | {'yes' if entry.get('faults') else 'no'} | {entry.get('duration_s', '')} s "
                    f"| {entry['measured']} |")
    rows.append("| squid (19.2) | none | untested: in no Debian suite | | | | | | |")
    client = data.get("client", "").replace("ceph version ", "Ceph ", 1)
    return "\n".join(rows) + (f"\n\nClient side in every row: {client}, this machine's librados/librbd (the operator) "
                              "and CLIs." if client else "")


def write_readme() -> None:
    data = json.loads(OUT.read_text())
    text = TABLE_DOC.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{TABLE_DOC.relative_to(ROOT)} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    TABLE_DOC.write_text(f"{head}{BEGIN}\n{readme_table(data)}\n{END}{tail}")
    print(f"{TABLE_DOC.relative_to(ROOT)}: table from {OUT.relative_to(ROOT)}")


def main() -> int:
    if sys.argv[1:] == ["--readme"]:
        write_readme()
        return 0
    releases = os.environ.get("CEPH_MATRIX_RELEASES", "pacific reef tentacle").split()
    unknown = [r for r in releases if r not in RELEASES]
    if unknown:
        sys.exit(f"unknown release(s) {unknown}: {', '.join(RELEASES)} (squid is in no Debian suite)")
    faults = os.environ.get("CEPH_MATRIX_FAULTS", "1") != "0"
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data.setdefault("releases", {})
    data["client"] = host_client()
    OUT.parent.mkdir(exist_ok=True)
    for release in releases:
        data["releases"][release] = run_release(release, faults)
        OUT.write_text(json.dumps(data, indent=1) + "\n")
        entry = data["releases"][release]
        print(f"ceph-matrix: {release}: {entry['ceph_version']}: {entry['passed']} passed, "
              f"{entry['failed']} failed, {entry['skipped']} skipped in {entry['duration_s']}s", flush=True)
    failed = sum(data["releases"][r]["failed"] for r in releases)
    passed = sum(data["releases"][r]["passed"] for r in releases)
    skipped = sum(data["releases"][r]["skipped"] for r in releases)
    print(f"ceph-matrix ({' '.join(releases)}) written to {OUT.relative_to(ROOT)}")
    print(f"ceph-matrix: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
