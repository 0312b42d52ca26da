"""The event log and parameter snapshots every benchmarked process writes.

One JSON object per line, flushed as written, so a process killed at teardown loses nothing it
already reported. Every event has ``kind`` and absolute unix times (``t`` or ``t0``/``t1``) so
events of processes in different namespaces line up. Kinds:

- ``start``: the worker begins training (its time zero).
- ``step``: one optimizer step (``t0``, ``t1``, ``compute_s``, ``loss``, ``samples``).
- ``window``: one barnraise compute window (``t0``, ``t1``, ``compute_s``, ``samples``, ``steps``).
- ``allreduce``: one barnraise exchange (``t0``, ``t1``, ``members``, ``codec``, ``numel``, ``ok``).
- ``snapshot``: parameters at ``t`` are in ``file`` (several processes may name the same file).
- ``epoch``: a hivemind.Optimizer epoch transition.

Snapshots are flat fp32 parameter vectors saved with ``torch.save``; a file that already exists
is not written again, which lets every member of a barnraise group report the same agreed state
while only the first one pays for the disk write.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class EventLog:
    """Append-only JSON Lines file, safe to write from several threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, **fields}, allow_nan=True)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete event in ``path`` (a line cut short by a kill is skipped)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "kind" in event:
            events.append(event)
    return events


def read_all(paths: list[Path]) -> list[dict[str, Any]]:
    """Events of several files, each tagged with ``source`` (the file's parent directory name)."""
    out = []
    for path in paths:
        for event in read_events(path):
            event.setdefault("source", path.parent.name)
            out.append(event)
    return out


def save_snapshot(path: Path, params: torch.Tensor) -> bool:
    """Write ``params`` to ``path`` unless it exists; True if this call wrote it.

    Written to a temporary name and linked into place, so a reader never sees half a file and two
    writers of the same snapshot cannot both win.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    torch.save(params.detach().to("cpu", torch.float32).clone(), tmp)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def load_snapshot(path: Path) -> torch.Tensor:
    """A flat fp32 parameter vector written by ``save_snapshot``."""
    return torch.load(path, map_location="cpu", weights_only=True)
