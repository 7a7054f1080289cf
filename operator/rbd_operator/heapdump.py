"""Where the operator's memory goes, measured in the running process (bench/scale.py, docs/performance.md).

RBD_OPERATOR_TRACEMALLOC=<frames> starts tracemalloc at startup (it costs CPU and memory of its own: a
diagnostic, never for production figures); SIGUSR2 then writes the top allocations, by line and by
traceback, with the counts of the most common object types the garbage collector tracks and the process'
RSS, to RBD_OPERATOR_TRACEMALLOC_FILE (default /tmp/rbd-operator-heap.txt). Without the variable SIGUSR2
writes the type counts and RSS only. Both add pymalloc's totals (arenas held, bytes in used and free blocks)
and the largest resident mappings ([heap]: glibc's main heap, where blocks over 512 bytes go; anonymous:
pymalloc's arenas and threads' malloc arenas) — what told the O(snapshots^2) start apart from the rest
(docs/performance.md). Nothing of any object's content is written: file names, line numbers, type names,
mapping paths and sizes.
"""

from __future__ import annotations

import collections
import gc
import os
import signal
import time
import tracemalloc
from pathlib import Path
from typing import Any

TOP = 40


def install() -> None:
    frames = int(os.environ.get("RBD_OPERATOR_TRACEMALLOC", "0") or 0)
    if frames > 0:
        tracemalloc.start(frames)
    if hasattr(signal, "SIGUSR2"):
        signal.signal(signal.SIGUSR2, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    path = Path(os.environ.get("RBD_OPERATOR_TRACEMALLOC_FILE", "/tmp/rbd-operator-heap.txt"))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(report())
    tmp.replace(path)


def rss_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _describe(obj: Any) -> str:
    kind = type(obj).__qualname__
    if isinstance(obj, dict):
        return f"{kind}(keys {sorted(map(str, list(obj)[:6]))})"
    if hasattr(obj, "__code__"):
        return f"{kind} {obj.__code__.co_filename}:{obj.__code__.co_firstlineno}"
    if type(obj).__name__ == "frame":
        return f"frame {obj.f_code.co_filename}:{obj.f_lineno}"
    return kind


def _referrers(type_name: str, depth: int = 5) -> list[str]:
    """What holds one object of the type: its referrers' types, a few levels up (type names and dict keys)."""
    kind, _, body_kind = type_name.partition(":")  # "dict:RbdImage": a raw body of that kind
    found = [o for o in gc.get_objects() if type(o).__qualname__ == kind and (
        not body_kind or isinstance(o, dict) and o.get("kind") == body_kind and "metadata" in o)]
    sample = found[len(found) // 2] if found else None
    lines = [f"## referrers of one {type_name} (of {len(found)})"]
    level, seen = [sample] if sample is not None else [], set()
    for step in range(depth):
        upward = []
        for obj in level:
            for ref in gc.get_referrers(obj):
                own_frame = type(ref).__name__ == "frame" and ref.f_code is _referrers.__code__
                if id(ref) in seen or ref is level or own_frame:
                    continue
                seen.add(id(ref))
                upward.append(ref)
        upward = [r for r in upward if not (isinstance(r, list) and len(r) > 10000)][:6]
        lines += [f"  {'  ' * step}<- {_describe(r)}" for r in upward]
        level = upward
    return lines


def _pymalloc() -> list[str]:
    """pymalloc's own totals (sys._debugmallocstats, which writes to fd 2: captured through a temporary file):
    arenas held, their high-water mark, and bytes in used blocks against free ones (fragmentation). Only the
    lines named here are kept; what another thread writes to stderr during the call (milliseconds) is lost
    with the temporary file — a diagnostic's price, paid only on SIGUSR2."""
    import sys
    import tempfile

    keep = ("# arenas allocated total", "# arenas reclaimed", "# arenas highwater mark", "# arenas allocated current",
            "# bytes in allocated blocks", "# bytes in available blocks", "# bytes lost to pool headers",
            "# bytes lost to quantization")
    try:
        with tempfile.TemporaryFile("w+") as out:
            saved = os.dup(2)
            try:
                sys.stderr.flush()
                os.dup2(out.fileno(), 2)
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            out.seek(0)
            text = out.read()
    except (OSError, AttributeError):
        return []
    return ["## pymalloc"] + [f"  {' '.join(line.split())}" for line in text.splitlines() if line.startswith(keep)]


def _mappings(top: int = 8) -> list[str]:
    """The largest resident mappings (/proc/self/smaps: Rss per mapping, by path or [heap]/anonymous)."""
    sizes: list[tuple[int, str]] = []
    name, total = "", 0
    try:
        for line in Path("/proc/self/smaps").read_text().splitlines():
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                name = head[5] if len(head) > 5 else f"[anon {head[0].split('-')[0]}]"
            elif head and head[0] == "Rss:":
                sizes.append((int(head[1]), name))
                total += int(head[1])
    except (OSError, ValueError, IndexError):
        return []
    sizes.sort(reverse=True)
    return [f"## mappings rss_kib {total}"] + [f"  {kib:9d} KiB {where}" for kib, where in sizes[:top]]


def report() -> str:
    lines = [f"# rbd-operator heap report {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
             f"rss_kib {rss_kib()}"]
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    lines.append(f"gc_tracked_objects {sum(counts.values())}")
    lines += [f"  {n:9d} {name}" for name, n in counts.most_common(TOP)]
    lines += _pymalloc() + _mappings()
    for name in filter(None, os.environ.get("RBD_OPERATOR_HEAP_REFERRERS", "").split(",")):
        lines += _referrers(name)
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        traced, peak = tracemalloc.get_traced_memory()
        lines.append(f"tracemalloc_traced_kib {traced // 1024} peak_kib {peak // 1024}")
        lines.append("## by line")
        lines += [f"  {s.size // 1024:9d} KiB {s.count:9d} {s.traceback[0]}" for s in snap.statistics("lineno")[:TOP]]
        lines.append("## by traceback")
        for stat in snap.statistics("traceback")[:TOP // 2]:
            lines.append(f"  {stat.size // 1024:9d} KiB {stat.count:9d}")
            lines += [f"      {f}" for f in stat.traceback.format()[-12:]]
    return "\n".join(lines) + "\n"


_libc: Any = None


def trim() -> None:
    """Give freed memory back to the system: a full garbage collection (kopf's per-event bodies and patches are
    reference cycles; with the raised young-generation threshold of __main__._tune_gc they wait for a full pass
    that, at a steady object count, rarely comes), then glibc's malloc_trim (free pages inside the heap and the
    threads' arenas stay resident otherwise). Called once per resync interval (handlers/memory.py)."""
    global _libc
    gc.collect()
    if _libc is None:
        try:
            import ctypes
            import ctypes.util

            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
