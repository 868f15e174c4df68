"""What a training run raises when it is stopped, and how it prints its progress (no torch import).

``Cancelled`` is raised from a progress callback when a stop was asked for outside the training loop
(while the image cache is built); the loop itself polls ``should_stop`` and ends cleanly.
``ProgressPrinter`` is a ``progress(phase, done, total, info)`` callback for logs: one concise line
per ~5 % of each phase. The job runner (:mod:`cxrcore.jobs.runner`) and each data-parallel rank
(:mod:`cxrcore.train.worker`) use both.
"""
from __future__ import annotations

import sys
import time
from typing import Callable


class Cancelled(Exception):
    """Raised from the progress callback when a stop was asked for outside the training loop."""


def clock() -> str:
    return time.strftime("%H:%M:%S")


class ProgressPrinter:
    """``progress(phase, done, total, info)`` that prints one concise line per ~5% of each phase.

    ``stop``: a callable that says whether a stop was asked for; outside the training phase (which
    polls ``should_stop`` itself) a stop raises :class:`Cancelled`.
    """

    def __init__(self, stop: Callable[[], bool], every: float = 0.05, out=None):
        self.stop = stop
        self.every = every
        self.out = out
        self._last: dict[str, int] = {}
        self._t0: dict[str, float] = {}

    def __call__(self, phase: str, done: int, total: int, info: dict | None = None) -> None:
        if self.stop() and phase != "train":
            # The training loop polls should_stop itself; elsewhere (cache building) stop here.
            raise Cancelled(f"Stopped while in phase {phase!r}.")
        info = info or {}
        self._t0.setdefault(phase, time.time())
        bucket = int(done / max(1, total) / self.every)
        if done < total and self._last.get(phase) == bucket:
            return
        if done >= total and self._last.get(phase) == -1:
            return
        self._last[phase] = -1 if done >= total else bucket
        parts = [f"[{clock()}] {phase:5s} {done}/{total} ({100.0 * done / max(1, total):5.1f}%)"]
        if "epoch" in info:
            parts.append(f"epoch {info['epoch']}")
        if info.get("loss") is not None:
            parts.append(f"loss {info['loss']:.4f}")
        if info.get("images_per_s") is not None:
            parts.append(f"{info['images_per_s']:.1f} img/s")
        if phase != "train":
            parts.append(f"{time.time() - self._t0[phase]:.0f}s")
        print("  ".join(parts), file=self.out or sys.stdout, flush=True)


__all__ = ["Cancelled", "ProgressPrinter", "clock"]
