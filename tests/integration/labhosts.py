"""Test hypervisors (hack/testhosts) and HypervisorNode manifests, shared by tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .harness import CEPH_ADDR, OPERATOR_NAMESPACE, ROOT, sh
from .manifests import API

TESTHOST = str(ROOT / "hack" / "testhosts" / "testhost.sh")
LABEL = "rbd-operator.io/test-storage"


@dataclass
class LabHost:
    name: str
    address: str
    family: str

    @property
    def run_dir(self) -> Path:
        return ROOT / ".cache" / "testhosts" / "run" / self.name

    @property
    def host_key(self) -> str:
        return (self.run_dir / "host_ed25519.pub").read_text().strip()

    def exec(self, command: str, check: bool = True) -> str:
        return sh(TESTHOST, "exec", self.name, "sh", "-c", command, check=check).stdout

    def ok(self, command: str) -> bool:
        return sh(TESTHOST, "exec", self.name, "sh", "-c", command, check=False).returncode == 0


def ssh_secret(host: LabHost) -> dict:
    """The Secret holding the host's SSH key (sent to kubectl on stdin, never in argv)."""
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"ssh-{host.name}", "namespace": OPERATOR_NAMESPACE},
            "stringData": {"ssh-privatekey": (host.run_dir / "id_ed25519").read_text()}}


def repo_url(family: str) -> str:
    return sh(TESTHOST, "repo-url", family, CEPH_ADDR).stdout.strip()


def hypervisor(host: LabHost, labels: dict | None = None, name: str | None = None, **spec) -> dict:
    body = {"address": host.address, "sshKeySecretRef": {"name": f"ssh-{host.name}", "namespace": OPERATOR_NAMESPACE},
            "hostKey": host.host_key}
    body.update(spec)
    return {"apiVersion": API, "kind": "HypervisorNode",
            "metadata": {"name": name or host.name, "labels": labels or {}}, "spec": body}


def debian_packages(**extra) -> dict:
    return {"repositories": [{"name": "local", "baseURL": repo_url("debian"), "trusted": True}], **extra}


