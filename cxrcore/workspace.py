"""The workspace: one root folder for everything written at run time.

``CXR_HOME`` names it; the default is ``~/.cxr``. Datasets, caches, runs, prediction
caches and the job database all live below it; nothing is written next to the code.
"""
from __future__ import annotations

import fcntl
import json
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


# The two networks of a two-network run (``runs/<run>/gate``, ``runs/<run>/disease``; the combined model is the
# run's own ``checkpoint``), in training order, named for what they are.
SUB_NETWORKS = {"gate": "gate (normal vs abnormal)", "disease": "disease model"}


def sub_network(checkpoint: Path) -> str | None:
    """"gate" or "disease" when the checkpoint folder ``checkpoint`` is one of the two networks of a two-network
    run (``<run>/<role>/checkpoint`` trained with hierarchy ``two_network``, as its card says), else None."""
    checkpoint = Path(checkpoint)
    role = checkpoint.parent.name
    if checkpoint.name != "checkpoint" or role not in SUB_NETWORKS:
        return None
    try:
        card = json.loads((checkpoint / "card.json").read_text())
        hierarchy = card["training"]["config"]["hierarchy"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return role if hierarchy == "two_network" else None


def run_label(parts, checkpoint: Path | None = None) -> str:
    """How the model lists name the run ``runs/<a>[/<b>]`` (``parts``): "run a", "run a/b", and for the networks
    of a two-network run "run a · gate (normal vs abnormal)" / "run a · disease model" (``checkpoint``: the
    run's checkpoint folder, default ``runs/<parts>/checkpoint``, whose card tells)."""
    parts = tuple(parts)
    name = f"run {'/'.join(parts)}"
    if len(parts) != 2:
        return name
    role = sub_network(Path(checkpoint) if checkpoint is not None else runs() / Path(*parts) / "checkpoint")
    return f"run {parts[0]} · {SUB_NETWORKS[role]}" if role else name


def finished_runs() -> list[tuple[tuple[str, ...], Path]]:
    """(parts, checkpoint folder) of every run under ``runs/`` with a card (``runs/<a>/checkpoint``,
    ``runs/<a>/<b>/checkpoint``): the runs newest first, each followed by its two networks when it is a
    two-network run (gate, then disease), then the other nested runs newest first."""
    top = runs()

    def newest_first(pattern: str) -> list[tuple[tuple[str, ...], Path]]:
        cards = sorted(top.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
        return [(card.parent.parent.relative_to(top).parts, card.parent) for card in cards]

    nested = newest_first("*/*/checkpoint/card.json")
    networks = {(parts[0], parts[1]): (parts, ckpt) for parts, ckpt in nested if sub_network(ckpt)}
    out = []
    for parts, ckpt in newest_first("*/checkpoint/card.json"):
        out.append((parts, ckpt))
        out += [networks.pop((parts[0], role)) for role in SUB_NETWORKS if (parts[0], role) in networks]
    listed = {parts for parts, _ in out}
    return out + [(parts, ckpt) for parts, ckpt in nested if parts not in listed]
