"""The files of a job's run folder that the app and the CLI read: ``log.txt``, ``events.jsonl``, ``config.json``.

Both backends write the same files (a Slurm job's output is appended to ``run_dir/log.txt`` too),
so reading a job's log or events does not depend on where it ran. No torch import at module load.
"""
from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path

from .store import Job

LOG_NAME = "log.txt"
EVENTS_NAME = "events.jsonl"
CONFIG_NAME = "config.json"


def tail_log(job: Job, n: int = 50) -> str:
    """The last ``n`` lines of the job's log.txt ('' before it exists)."""
    path = Path(job.run_dir) / LOG_NAME
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            chunk = min(size, max(8192, 400 * max(1, n)))
            f.seek(size - chunk)
            data = f.read()
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if chunk < size and lines:
        lines = lines[1:]  # first line may be cut
    return "\n".join(deque(lines, maxlen=max(0, n)))


def append_log(job: Job, line: str) -> None:
    """Append one line to the job's log (e.g. "resume requested"), creating the run folder if needed."""
    folder = Path(job.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOG_NAME, "a") as log:
        log.write(line.rstrip("\n") + "\n")


def write_config(folder: Path, config: dict) -> None:
    """The job's normalised training config as ``run_dir/config.json`` (what the runner and each rank read)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def events(job: Job) -> list[dict]:
    """The job's training events (``events.jsonl``), oldest first."""
    from ..train.events import read_events  # no torch

    return read_events(Path(job.run_dir) / EVENTS_NAME)


__all__ = ["CONFIG_NAME", "EVENTS_NAME", "LOG_NAME", "append_log", "events", "tail_log", "write_config"]
