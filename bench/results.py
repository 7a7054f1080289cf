"""`.bench/results.json`: every benchmark's figures under its own key, the other keys kept."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parents[1] / ".bench" / "results.json"


def record(key: str, value: Any, path: Path = PATH) -> Path:
    """Write `value` under `key` (replacing only that key) atomically: a run cut short never leaves the file
    half written."""
    path.parent.mkdir(exist_ok=True)
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged[key] = value
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(tmp, path)
    return path
