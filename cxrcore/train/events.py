"""A run's event stream (``out_dir/events.jsonl``) and how a run ended (no torch import).

The trainer appends one JSON line per event (:class:`EventLog`); the Training page, ``cxr jobs`` and the
job runner read them back (:func:`read_events`). A run's end is one of :data:`ENDINGS`, recorded in its
``done`` event and on its checkpoint card (``training.ended``): the job runner turns it into the job's
final state (:func:`ending_of`, :func:`stopped_since`).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

# How a run ended: every epoch run, early stopping (the monitored metric stopped improving), pruned by its
# sweep, or stopped by a request (SIGTERM to the runner or to a rank, the STOP file, a cancel).
ENDINGS = ("completed", "early_stopping", "pruned", "stopped")


class EventLog:
    """Append-only JSON lines: what the Training page and `cxr jobs` read."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, kind: str, **payload) -> dict:
        event = {"type": kind, "time": time.time(), **payload}
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=_jsonable) + "\n")
        return event


def _jsonable(o):
    """numpy numbers and arrays as JSON (a NaN as null); anything else as its text."""
    if isinstance(o, (np.floating, np.integer)):
        v = o.item()
        return None if isinstance(v, float) and math.isnan(v) else v
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_events(path: Path) -> list[dict]:
    """The events of ``path``, oldest first ([] before it exists; a line being written is skipped)."""
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return out


def ending_of(training: dict) -> str:
    """How the run of a card's ``training`` section ended (one of :data:`ENDINGS`); a card from before
    ``ended`` was recorded: from its ``stopped_early`` / ``pruned`` / ``early_stopping`` entries."""
    ended = training.get("ended")
    if ended in ENDINGS:
        return ended
    if training.get("stopped_early"):
        return "stopped"
    if training.get("pruned"):
        return "pruned"
    if (training.get("early_stopping") or {}).get("triggered"):
        return "early_stopping"
    return "completed"


def stopped_since(events: list[dict], start: int = 0) -> bool:
    """Whether ``events[start:]`` (one attempt's events) record a stop request reaching the run: a ``stopped``
    event, or a ``done`` event of a stopped run."""
    return any(e.get("type") == "stopped" or (e.get("type") == "done" and e.get("ended") == "stopped")
               for e in events[start:])


__all__ = ["ENDINGS", "EventLog", "ending_of", "read_events", "stopped_since"]
