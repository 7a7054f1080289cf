"""Every reason the operator can emit is documented (api/reasons.py), and the generated Argo CD health
checks and README tables are up to date with that registry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from rbd_operator.api.reasons import BY_NAME, EVENT_REASONS, Health, health_of

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "rbd_operator"
# call name -> index of the positional argument holding a condition reason
CONDITION_CALLS = {"condition": 2, "fail": 0, "Waiting": 0, "CephError": 0, "SshError": 0, "PackageError": 0,
                   "Refused": 0, "OperatorError": 0, "CallTimedOut": 0, "cond": 2, "ImportFailed": 0}
EVENT_CALLS = {"note": 0}


def _name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _literals(node: ast.AST) -> list[str]:
    """String literals a reason argument can be: "X", or "X" if ... else "Y"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literals(node.body) + _literals(node.orelse)
    return []


def emitted() -> tuple[dict[str, str], dict[str, str]]:
    """(condition reasons, event reasons) -> where found."""
    conditions, events = {}, {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "reasons.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name, where = _name(node), f"{path.relative_to(ROOT)}:{node.lineno}"
                for kw in node.keywords:
                    if kw.arg == "reason":
                        target = events if name == "event" else conditions
                        target.update({r: where for r in _literals(kw.value)})
                index = CONDITION_CALLS.get(name, EVENT_CALLS.get(name))
                if index is not None and len(node.args) > index:
                    target = events if name in EVENT_CALLS else conditions
                    target.update({r: where for r in _literals(node.args[index])})
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ACTION_REASONS"
                                                    for t in node.targets):
                for value in node.value.values:
                    events[value.value] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return conditions, events


def test_every_condition_reason_is_documented():
    conditions, _ = emitted()
    assert len(conditions) > 40, "the scan found too little: it is broken"
    missing = {r: where for r, where in conditions.items() if r not in BY_NAME and r[:1].isupper()}
    assert not missing, f"undocumented condition reasons (add them to api/reasons.py): {missing}"


def test_every_event_reason_is_documented():
    conditions, events = emitted()
    missing = {r: where for r, where in events.items() if r not in EVENT_REASONS and r not in BY_NAME}
    assert not missing, f"undocumented event reasons (add them to EVENT_REASONS): {missing}"


def test_unknown_reasons_fail_closed_and_transient_ones_are_never_degraded():
    assert health_of("SomethingNobodyWrote") == Health.DEGRADED
    for transient in ("CephUnreachable", "HostUnreachable", "StorageNotFound", "InUse", "PoolNotEmpty"):
        assert health_of(transient) == Health.PROGRESSING
    for person in ("InvalidSpec", "ShrinkNotAllowed", "HostKeyMismatch", "NotOwned", "OwnedByOther"):
        assert health_of(person) == Health.DEGRADED


def test_generated_argocd_files_and_readme_tables_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "gen-argocd.py"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_health_lua_uses_no_library():
    for lua in (ROOT / "deploy" / "argocd" / "resource_customizations").rglob("health.lua"):
        text = lua.read_text()
        for lib in ("string.", "math.", "table.", "os.", "io."):
            assert lib not in text, f"{lua} uses {lib}: not available without Argo CD's open libraries"
