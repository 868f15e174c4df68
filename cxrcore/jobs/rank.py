"""One rank of a job's data-parallel training: ``torchrun ... -m cxrcore.jobs.rank RUN_DIR [--resume]``.

The job runner (:mod:`cxrcore.jobs.runner`) starts its ranks with this module: the trainer's own rank
(:func:`cxrcore.train.worker.main`) with the job layer's per-epoch report, so a sweep trial trained
data-parallel is reported to its study and pruned like a single-process one (:func:`cxrcore.jobs.sweep.trial_reporter`).
"""
from __future__ import annotations

import sys

from ..train import worker
from .sweep import trial_reporter


def main(argv: list[str] | None = None) -> int:
    return worker.main(argv, reporter=trial_reporter)


if __name__ == "__main__":
    sys.exit(main())
