"""Every reason the operator can emit is documented (api/reasons.py), and the generated Argo CD health
checks and the reason tables (docs/reference.md) are up to date with that registry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from rbd_operator.api.reasons import BY_NAME, EVENT_REASONS, ConditionType, EventReason, Health, Reason, health_of

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "rbd_operator"
ENUMS = {"Reason": Reason, "EventReason": EventReason, "ConditionType": ConditionType}
# call name -> index of the positional argument holding a condition reason (a typed Reason, never a literal)
CONDITION_CALLS = {"condition": 2, "fail": 0, "Waiting": 0, "CephError": 0, "SshError": 0, "PackageError": 0,
                   "Refused": 0, "OperatorError": 0, "CallTimedOut": 0, "cond": 2, "ImportFailed": 0, "LeaseLost": 0}
EVENT_CALLS = {"note": 0}


def _name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _trees():
    for path in PACKAGE.rglob("*.py"):
        if path.name != "reasons.py":
            yield path, ast.parse(path.read_text())


def _reason_args(call: ast.Call) -> list[ast.AST]:
    args = [kw.value for kw in call.keywords if kw.arg == "reason"]
    index = CONDITION_CALLS.get(_name(call), EVENT_CALLS.get(_name(call)))
    if index is not None and len(call.args) > index:
        args.append(call.args[index])
    return args


def test_no_reason_is_a_string_literal():
    """Reasons are typed (api/reasons.py): a literal where a reason goes would escape the registry."""
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for arg in _reason_args(node):
                for sub in ast.walk(arg):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value[:1].isupper():
                        found.append(f"{path.relative_to(ROOT)}:{sub.lineno}: {sub.value!r}")
    assert not found, "reasons as string literals (use Reason/EventReason members):\n" + "\n".join(found)


def test_every_enum_member_named_in_the_code_exists_and_every_reason_is_used():
    used: dict[str, set[str]] = {name: set() for name in ENUMS}
    missing = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ENUMS:
                enum = ENUMS[node.value.id]
                if node.attr.isupper():
                    used[node.value.id].add(node.attr)
                    if node.attr not in enum.__members__:
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not missing, "members that do not exist (a typo fails only when that line runs):\n" + "\n".join(missing)
    assert len(used["Reason"]) > 60, "the scan found too little: it is broken"
    unused = sorted(set(Reason.__members__) - used["Reason"])
    assert not unused, f"documented reasons the operator never reports (remove them): {unused}"
    unused = sorted(set(EventReason.__members__) - used["EventReason"])
    assert not unused, f"documented event reasons never posted (remove them): {unused}"


def test_every_reason_is_documented():
    assert set(BY_NAME) == {r.value for r in Reason}
    assert set(EVENT_REASONS) == set(EventReason) and all(EVENT_REASONS.values())
    # Warning events repeat a condition's Reason; an EventReason is only ever a Normal event's. One name is both:
    # HostKeyPinned (the Normal event of trust on first use, and Ready=False for that pass).
    assert {r.value for r in EventReason} & set(BY_NAME) == {"HostKeyPinned"}


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
