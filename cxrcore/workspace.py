"""The workspace: one root folder for everything written at run time.

``CXR_HOME`` names it; the default is ``~/.cxr``. Datasets, caches, runs, prediction
caches and the job database all live below it; nothing is written next to the code.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` (created), across threads and processes of this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def root() -> Path:
    path = Path(os.environ.get("CXR_HOME") or Path.home() / ".cxr").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sub(name: str) -> Path:
    path = root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets() -> Path:
    return sub("datasets")


def runs() -> Path:
    return sub("runs")


def cache() -> Path:
    return sub("cache")


def jobs_db() -> Path:
    return root() / "jobs.sqlite"


def repo_root() -> Path:
    """The folder holding app.py and checkpoints/ (read-only at run time)."""
    return Path(__file__).resolve().parent.parent


def shipped_checkpoints() -> Path:
    return Path(os.environ.get("CXR_CHECKPOINTS") or repo_root() / "checkpoints")
