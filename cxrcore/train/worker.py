"""One rank of a data-parallel training: ``torchrun ... -m cxrcore.train.worker RUN_DIR [--resume]``.

The job runner starts it through :func:`launch_command` when a job asks for ``nproc > 1`` (or
several Slurm nodes); each rank reads ``RUN_DIR/config.json`` and calls ``train()``, which sets up
DDP from torchrun's environment. A stop request is the file ``RUN_DIR/STOP`` (the runner writes it
on SIGTERM); rank 0 polls it and every rank stops at the same step.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

STOP_FILE = "STOP"


def launch_command(cfg, run_dir: str | os.PathLike, resume: bool = False, job_id: str = "cxr") -> list[str]:
    """The command that runs ``cfg`` data-parallel: torchrun on this node, or srun + torchrun across Slurm nodes."""
    tail = ["-m", "cxrcore.train.worker", str(run_dir)] + (["--resume"] if resume else [])
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrcore.train.worker", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    stop_file = run_dir / STOP_FILE
    # SIGTERM from torchrun (or scancel) also asks for a stop at the next step.
    asked = {"sig": False}
    signal.signal(signal.SIGTERM, lambda *_: asked.__setitem__("sig", True))

    from ..errors import CXRError
    from ..jobs.runner import Cancelled, ProgressPrinter
    from .trainer import TrainConfig, train

    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    should_stop = lambda: asked["sig"] or stop_file.exists()  # noqa: E731
    rank = int(os.environ.get("RANK", "0"))
    printer = ProgressPrinter(should_stop) if rank == 0 else None
    try:
        train(cfg, run_dir, progress=printer, should_stop=should_stop, resume=args.resume)
    except Cancelled as exc:
        print(f"stopped (rank {rank}): {exc}", flush=True)
        return 128 + signal.SIGTERM
    except CXRError as exc:
        print(f"error (rank {rank}): {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
