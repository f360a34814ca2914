"""`<data_dir>/run/stack.json`: what a running `macp up` started, for `macp status` and the next `macp up`.

It names the supervisor (the `macp up` process) and every component with its pid, start time,
address and how to check its health. It holds no secrets: a configured server is recorded by
its host and port only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psutil

from services.stack.process import PidRecord

VERSION = 1


def stack_file(data_dir: Path) -> Path:
    return data_dir / "run" / "stack.json"


def write(data_dir: Path, document: dict[str, Any]) -> None:
    path = stack_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps({"version": VERSION, **document}, indent=2) + "\n")
    scratch.replace(path)  # status never reads half a file


def read(data_dir: Path) -> dict[str, Any] | None:
    """The document, or None when there is none (or it cannot be read)."""
    try:
        document = json.loads(stack_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def remove(data_dir: Path) -> None:
    stack_file(data_dir).unlink(missing_ok=True)


def this_process() -> dict[str, Any]:
    """pid and start time of the calling process, as recorded for the supervisor."""
    return {"pid": os.getpid(), "create_time": psutil.Process().create_time()}


def alive(entry: dict[str, Any] | None) -> bool:
    """True when the process an entry (with pid and create_time) names still runs."""
    if not entry or entry.get("pid") is None or entry.get("create_time") is None:
        return False
    return PidRecord(int(entry["pid"]), float(entry["create_time"])).process() is not None
