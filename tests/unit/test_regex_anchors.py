"""No regular expression in the operator ends a match with `$`: in Python `$` also matches before a trailing
newline, so `^name$` accepts "name\\n" (a value from a spec, a Secret, Ceph or a host then carries a newline
into a command line, a path or a config file). `\\Z` (or fullmatch) ends at the very end; `$` stays allowed
only with re.MULTILINE, where a line's end is what is meant."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "rbd_operator"
RE_CALLS = {"compile", "match", "fullmatch", "search", "findall", "finditer", "sub", "subn", "split"}


def dollar_anchors(pattern: str) -> list[int]:
    """Offsets of unescaped `$` outside character classes."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]" or pattern[i - 1] == "["
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "^":
                i += 1
            if pattern[i + 1:i + 2] == "]":
                i += 1
        elif c == "$":
            out.append(i)
        i += 1
    return out


def _multiline(call: ast.Call) -> bool:
    return "MULTILINE" in ast.unparse(call) or "re.M)" in ast.unparse(call) or "(?m)" in ast.unparse(call)


def offenders() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                    and node.func.attr in RE_CALLS and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, (str, bytes)) \
                    and dollar_anchors(first.value if isinstance(first.value, str) else first.value.decode("latin-1")) \
                    and not _multiline(node):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {first.value!r}")
    return found


def test_the_scanner_sees_anchors_only_outside_classes_and_escapes():
    assert dollar_anchors(r"^a$") == [2]
    assert dollar_anchors(r"^[$]x\$y\Z") == []
    assert dollar_anchors(r"^[^]$]a$") == [7]
    assert dollar_anchors(r"(?=.{1,3}$)a|^b$") == [9, 15]


def test_no_pattern_in_the_operator_ends_with_dollar():
    assert offenders() == []


def test_the_anchor_used_instead_refuses_a_trailing_newline():
    assert re.match(r"^[a-z]+$", "name\n") and not re.match(r"^[a-z]+\Z", "name\n")
