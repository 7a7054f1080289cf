"""Leak scan: is any cephx key or SSH private key anywhere it must not be?

Searched: every process's argv on this machine (sampled all along a run; the test hosts' processes
live in child PID namespaces and are seen here too), the operator's logs, every Event, the status
and annotations of every object of the operator's kinds, and every file a test host changed (its
overlay upper layer) except the places keys belong: /etc/ceph/*.keyring and libvirt's secret store.

A "secret" is a cephx key (the base64 string) or a line of an SSH private key's body: all are read
from the Secrets of the operator's namespace, the admin keyring and the test hosts' key files.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[2]
KEY_PLACES = (re.compile(r"^etc/ceph/ceph\.client\.[^/]+\.keyring$"), re.compile(r"^etc/libvirt/secrets/"),
              # the host's own sshd keys and the client's authorized public key are not leaks of ours
              re.compile(r"^etc/ssh/"), re.compile(r"^root/\.ssh/authorized_keys$"))


def ssh_key_fragments(text: str) -> set[str]:
    """Distinctive pieces of a PEM/OpenSSH private key: its full body lines (60+ base64 chars) but the
    first, which every OpenSSH key of a type shares (magic, cipher "none", key type)."""
    body = [line.strip() for line in text.splitlines() if line.strip() and "-----" not in line]
    return {line for line in body[1:] if len(line) >= 60}


@dataclass
class Findings:
    scanned: int = 0
    found: list[str] = field(default_factory=list)

    def check(self, where: str, text: str, secrets: dict[str, str]) -> None:
        self.scanned += 1
        for value, label in secrets.items():
            if value and value in text:
                self.found.append(f"{label} in {where}")

    def as_dict(self) -> dict:
        return {"scanned": self.scanned, "found": len(self.found), "where": self.found[:50]}


class ArgvSampler:
    """Samples /proc/*/cmdline in a thread; keeps each distinct argv once (to be scanned later)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.seen: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="argv-sampler", daemon=True)

    def __enter__(self) -> "ArgvSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    argv = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if argv:
                self.seen.add(argv)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def collect_secrets(kubectl: Callable[..., str], namespace: str, ceph_dir: Path,
                    host_run_dirs: Iterable[Path]) -> dict[str, str]:
    """secret value -> label, from the cluster's Secrets and the platform's key files."""
    import base64

    secrets: dict[str, str] = {}
    items = json.loads(kubectl("get", "secrets", "-n", namespace, "-o", "json"))["items"]
    for item in items:
        for key, value in (item.get("data") or {}).items():
            text = base64.b64decode(value).decode(errors="replace")
            name = item["metadata"]["name"]
            if key == "userKey":
                secrets[text.strip()] = f"cephx key of Secret {name}"
            elif key == "ssh-privatekey":
                for fragment in ssh_key_fragments(text):
                    secrets[fragment] = f"SSH private key of Secret {name}"
    keyring = ceph_dir / "ceph.client.admin.keyring"
    if keyring.exists():
        for line in keyring.read_text().splitlines():
            if line.strip().startswith("key"):
                secrets[line.split("=", 1)[1].strip()] = "the Ceph admin key"
    for run in host_run_dirs:
        key = run / "id_ed25519"
        if key.exists():
            for fragment in ssh_key_fragments(key.read_text()):
                secrets[fragment] = f"SSH private key for {run.name}"
    return {k: v for k, v in secrets.items() if len(k) >= 20}


def scan_host_files(findings: Findings, run_dir: Path, secrets: dict[str, str]) -> None:
    upper = run_dir / "upper"
    if not upper.is_dir():
        return
    for path in upper.rglob("*"):
        rel = path.relative_to(upper).as_posix()
        if not path.is_file() or path.is_symlink() or any(p.search(rel) for p in KEY_PLACES):
            continue
        try:
            if path.stat().st_size > 8 * 2**20:
                continue
            text = path.read_bytes().decode(errors="replace")
        except OSError:
            continue
        findings.check(f"{run_dir.name}:/{rel}", text, secrets)


def scan_cluster(findings: Findings, kubectl: Callable[..., str], secrets: dict[str, str]) -> None:
    events = json.loads(kubectl("get", "events", "-A", "-o", "json"))["items"]
    for event in events:
        findings.check(f"event {event['metadata']['namespace']}/{event['metadata']['name']}",
                       json.dumps({k: event.get(k) for k in ("message", "reason", "note")}), secrets)
    for kind in ("rbdstorages", "rbdimages", "hypervisornodes"):
        for obj in json.loads(kubectl("get", kind, "-A", "-o", "json"))["items"]:
            meta = obj["metadata"]
            findings.check(f"{kind} {meta.get('namespace', '')}/{meta['name']} status+annotations",
                           json.dumps({"status": obj.get("status"), "annotations": meta.get("annotations")}), secrets)


def scan(kubectl: Callable[..., str], namespace: str, ceph_dir: Path, host_run_dirs: list[Path],
         logs: list[Path], argv: ArgvSampler, extra_secrets: dict[str, str] | None = None) -> Findings:
    secrets = collect_secrets(kubectl, namespace, ceph_dir, host_run_dirs)
    secrets.update(extra_secrets or {})
    findings = Findings()
    for line in sorted(argv.seen):
        findings.check("argv", line, secrets)
    for log in logs:
        if log.exists():
            findings.check(f"log {log.name}", log.read_text(errors="replace"), secrets)
    scan_cluster(findings, kubectl, secrets)
    for run in host_run_dirs:
        scan_host_files(findings, run, secrets)
    return findings


def record(path: Path, findings: Findings, argv: ArgvSampler, suite: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"suite": suite, "time": time.time(), "argv_samples": argv.samples,
                                **findings.as_dict()}, indent=1))
