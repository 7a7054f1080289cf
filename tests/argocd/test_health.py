"""Every health_test.yaml case, evaluated by Argo CD's own code (the controller's Lua path):
`argocd admin settings resource-overrides health OBJECT --argocd-cm-path deploy/argocd/argocd-cm.yaml`.

The argocd binary is built from Argo CD's Go module by hack/build-argocd.sh (cached)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CUSTOM = ROOT / "deploy" / "argocd" / "resource_customizations"
CASES = [(test_file.parent, case) for test_file in sorted(CUSTOM.rglob("health_test.yaml"))
         for case in yaml.safe_load(test_file.read_text())["tests"]]


@pytest.fixture(scope="session")
def argocd() -> Path:
    out = subprocess.run([str(ROOT / "hack" / "build-argocd.sh")], capture_output=True, text=True, timeout=5400)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip()) / "argocd"


def evaluate(argocd: Path, obj: Path) -> tuple[str, str]:
    result = subprocess.run([str(argocd), "admin", "settings", "resource-overrides", "health", str(obj),
                             "--argocd-cm-path", str(ROOT / "deploy" / "argocd" / "argocd-cm.yaml")],
                            capture_output=True, text=True, timeout=120, env={"HOME": "/tmp", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    fields = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip().upper()] = value.strip()
    return fields.get("STATUS", ""), fields.get("MESSAGE", "")


def test_cases_exist_for_every_kind():
    kinds = {d.name for d, _ in CASES}
    assert kinds == {"RbdStorage", "RbdImage", "HypervisorNode", "RbdSnapshot", "RbdSnapshotSchedule"} and len(CASES) > 60


@pytest.mark.parametrize("directory,case", CASES, ids=[f"{d.name}/{c['inputPath']}" for d, c in CASES])
def test_health(argocd, directory, case):
    status, message = evaluate(argocd, directory / case["inputPath"])
    assert status == case["healthStatus"]["status"]
    assert message == case["healthStatus"]["message"]
