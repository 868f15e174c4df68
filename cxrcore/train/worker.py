"""One rank of a data-parallel training: ``torchrun ... -m cxrcore.train.worker RUN_DIR [--resume]``.

The job runner starts it through :func:`launch_command` when a job asks for ``nproc > 1`` (or
several Slurm nodes); each rank reads ``RUN_DIR/config.json`` and calls ``train()``, which sets up
DDP from torchrun's environment. A stop request is the file ``RUN_DIR/STOP`` (the runner writes it
on SIGTERM) or a SIGTERM to a rank; every rank polls its own at each step and the ranks agree
(``Dist.any``: a stop seen by any rank stops all of them at the same step). A job's ranks run it through
:mod:`cxrcore.jobs.rank`, which adds the job layer's per-epoch report (a sweep trial's pruning).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Callable

from .progress import Cancelled, ProgressPrinter, clock

STOP_FILE = "STOP"


def launch_command(cfg, run_dir: str | os.PathLike, resume: bool = False, job_id: str = "cxr",
                   module: str = "cxrcore.train.worker") -> list[str]:
    """The command that runs ``cfg`` data-parallel: torchrun on this node, or srun + torchrun across Slurm nodes;
    each rank runs ``python -m module RUN_DIR`` (this module, or a front end of it such as cxrcore.jobs.rank)."""
    tail = ["-m", module, str(run_dir)] + (["--resume"] if resume else [])
    if int(cfg.nodes) > 1:
        port = os.environ.get("CXR_RDZV_PORT", "29500")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(cfg.nodes),
                    "--nproc-per-node", str(cfg.nproc), "--rdzv-backend", "c10d", "--rdzv-id", job_id]
        # A shell, so the head node's name is looked up inside the allocation (the sbatch script exports it).
        head = '"${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"'
        return ["bash", "-c", f"srun --nodes={int(cfg.nodes)} --ntasks-per-node=1 --kill-on-bad-exit=1 "
                + " ".join(shlex.quote(x) for x in torchrun) + f" --rdzv-endpoint {head}:{port} "
                + " ".join(shlex.quote(x) for x in tail)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(cfg.nproc)] + tail


class RankStop:
    """``should_stop`` of one rank: SIGTERM to this rank, or the run folder's STOP file (the runner writes it).

    The training loop calls it once per step on every rank and stops when any rank says yes
    (``Dist.any``), so all ranks leave the loop at the same step; ``checks`` counts those calls, so each
    rank can say where it stopped.
    """

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self.signalled = False
        self.checks = 0

    def handler(self, signum, frame) -> None:
        self.signalled = True

    def seen(self) -> bool:
        """Whether this rank itself was asked to stop (without counting a check)."""
        return self.signalled or self.stop_file.exists()

    def __call__(self) -> bool:
        self.checks += 1
        return self.seen()


def main(argv: list[str] | None = None, reporter: Callable | None = None) -> int:
    """One rank: train ``RUN_DIR/config.json``. ``reporter(cfg)``: the per-epoch ``report`` to train with (or
    None); returns the exit code (143 when stopped before training, 1 for a CXRError)."""
    parser = argparse.ArgumentParser(prog="python -m cxrcore.train.worker", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    # SIGTERM from torchrun (or scancel) also asks for a stop at the next step.
    stop = RankStop(run_dir / STOP_FILE)
    signal.signal(signal.SIGTERM, stop.handler)
    rank = int(os.environ.get("RANK", "0"))
    print(f"[{clock()}] rank {rank} pid {os.getpid()}", flush=True)

    from ..errors import CXRError
    from .events import EventLog
    from .trainer import TrainConfig, train

    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    printer = ProgressPrinter(stop.seen) if rank == 0 else None
    try:
        train(cfg, run_dir, progress=printer, should_stop=stop, resume=args.resume,
              report=reporter(cfg) if reporter is not None else None)
    except Cancelled as exc:
        print(f"[{clock()}] rank {rank}: stopped before training ({exc})", flush=True)
        if rank == 0:  # what the job runner reads to tell a stopped run from a failed one
            EventLog(run_dir / "events.jsonl")("stopped", before_training=True)
        return 128 + signal.SIGTERM
    except CXRError as exc:
        print(f"error (rank {rank}): {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        # One line per rank: how many steps its loop began (the stopping check included), and whether the
        # stop request reached this rank directly (else through another rank, by Dist.any).
        print(f"[{clock()}] rank {rank}: training loop ended after {stop.checks} step checks; "
              f"stop asked of this rank: {'yes' if stop.seen() else 'no'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
