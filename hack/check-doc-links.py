#!/usr/bin/env python3
"""Checks every relative link and #anchor in the repository's Markdown files (README.md, docs/, hack/, …):
the target file exists, and an anchor names a heading of it (GitHub's rule: lower case, punctuation
dropped, spaces to hyphens, -1, -2 … for repeats; headings inside code fences do not count).

  hack/check-doc-links.py          list broken links; exit status 1 if there is any
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", ".cache", ".bench", ".e2e", ".sandbox", "node_modules", ".pytest_cache"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken(md: Path) -> list[str]:
    out = []
    for target in LINK.findall(FENCE.sub("", md.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            out.append(f"{md.relative_to(ROOT)}: {target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            out.append(f"{md.relative_to(ROOT)}: {target}: no such heading")
    return out


def main() -> int:
    files = sorted(p for p in ROOT.rglob("*.md") if not SKIP & set(p.relative_to(ROOT).parts))
    problems = [line for md in files for line in broken(md)]
    print("\n".join(problems + [f"{len(files)} Markdown files, {len(problems)} broken links"]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
