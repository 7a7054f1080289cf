"""deploy/rbac.yaml grants exactly what the README's permission table lists (tests/e2e checks the same
against a live cluster's `kubectl auth can-i --list`)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _granted() -> set[tuple[str, str, str, str]]:
    out = set()
    for doc in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()):
        if not doc or doc["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = "cluster" if doc["kind"] == "ClusterRole" else "namespace"
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((scope, group, resource, verb))
    return out


def _documented() -> set[tuple[str, str, str, str]]:
    section = (ROOT / "README.md").read_text().split("## Permissions", 1)[1].split("\n## ", 1)[0]
    out = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] == "scope" or set(cells[0]) <= {"-"}:
            continue
        scope = "cluster" if cells[0] == "cluster" else "namespace"
        for group in (g.strip().strip('"') for g in cells[1].split(",")):
            for resource in (r.strip() for r in cells[2].split(",")):
                for verb in (v.strip() for v in cells[3].split(",")):
                    out.add((scope, group, resource, verb))
    return out


def test_rbac_yaml_and_the_readme_table_agree():
    granted, documented = _granted(), _documented()
    assert granted == documented, (f"granted, not in the README: {sorted(granted - documented)}; "
                                   f"in the README, not granted: {sorted(documented - granted)}")


def test_snapshot_schedules_may_create_and_delete_rbdsnapshots():
    granted = _granted()
    for verb in ("create", "delete", "get", "list", "watch", "patch"):
        assert ("cluster", "rbd-operator.io", "rbdsnapshots", verb) in granted, verb
