"""``cxr train``: its flags derive from TrainConfig (cxrcore/train/config.py), the backends and the slurm
options from their declarations."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CXRError
from .common import Command, add_backend_flag, add_slurm_flags, slurm_values, train_progress


def train_config(a):
    """TrainConfig from the flags derived from its declaration (train/config.py), plus --output-stride,
    --init resolution and --set KEY=JSON for anything else."""
    from ..train import config as train_config_module  # the module's TrainConfig, read now

    if not a.data:
        raise CXRError("cxr train needs --data DIR (an NIH- or CheXpert-style folder, or images + a CSV).")
    cfg = train_config_module.config_from_args(a, train_config_module.TrainConfig, data=str(Path(a.data).resolve()))
    if a.output_stride:
        cfg["arch_kwargs"] = {**cfg.get("arch_kwargs", {}), "output_stride": a.output_stride}
    if a.init:
        from ..models.library import library_ref

        cfg["init"] = library_ref(a.init) or str(Path(a.init).resolve())  # xrv:<weights>: the library model as is
    for item in a.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CXRError(f"--set takes KEY=VALUE (VALUE as JSON, e.g. --set augment_options='{{\"p\": 0.5}}'), not {item!r}.")
        try:
            cfg[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key.strip()] = value  # a bare string
    return train_config_module.TrainConfig.from_dict(cfg)


def cmd_train(a) -> int:
    from dataclasses import asdict

    cfg = train_config(a)
    # The one submit check (train.checks.check_training) runs inside dispatch.submit and train() themselves.
    if a.backend == "slurm":
        from ..jobs import dispatch

        opts = slurm_values(a)  # every slurm flag given but --slurm-conf (the cluster)
        cfg.slurm = {**(cfg.slurm or {}), **opts}
        job = dispatch.submit(asdict(cfg), name=a.name or Path(a.data).name, backend="slurm",
                              cluster=a.slurm_conf)  # recorded as launched by the OS user
        print(f"submitted job {job.id} to Slurm as job {job.backend_id} (run folder {job.run_dir}); "
              f"watch it with `cxr jobs show {job.id}`")
        return 0
    if a.backend == "local" and a.background:
        from ..jobs import dispatch

        job = dispatch.submit(asdict(cfg), name=a.name or Path(a.data).name)  # recorded as launched by the OS user
        print(f"submitted job {job.id} (run folder {job.run_dir}); watch it with `cxr jobs show {job.id}`")
        return 0
    from ..train.trainer import train

    out = Path(a.out)
    if a.resume:
        from ..train.state import state_path

        if state_path(out) is None:
            raise CXRError(f"{out} has no saved epoch to resume from; run without --resume to start it.")
    elif out.exists() and any(out.iterdir()):
        raise CXRError(f"The run folder {out} already exists and is not empty. Choose another --out, remove it, "
                       "or add --resume to continue it.")
    if cfg.nproc > 1:
        raise CXRError("--nproc > 1 runs data-parallel under torchrun: add --background (or --backend slurm), or "
                       "start `torchrun --nproc-per-node N -m cxrcore.train.worker RUN_DIR` yourself.")
    card = train(cfg, out, progress=train_progress(), resume=a.resume)
    val = card.metrics.get("val", {}).get("mean_auroc")
    test = card.metrics.get("test", {}).get("mean_auroc")
    print(f"best epoch {card.training['best_epoch']}: val mean AUROC {val:.3f}"
          + (f", test mean AUROC {test:.3f}" if test is not None else "") + f"; checkpoint in {out / 'checkpoint'}")
    return 0



def _train_flags(s) -> None:
    from ..train import config as train_config_module  # the module's TrainConfig, read now

    train_config_module.add_cli_flags(s, train_config_module.TrainConfig)
    s.add_argument("--output-stride", type=int, choices=[8, 16, 32],
                   help="shorthand for --arch-kwargs '{\"output_stride\": N}': dilate the last stage (ResNet/RegNet-"
                        "like timm backbones) for finer heatmaps; 16 doubles the grid")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any training option by name, VALUE as JSON (repeatable), e.g. --set augment_options='{\"p\":0.5}'")
    s.add_argument("--resume", action="store_true", help="foreground: continue --out from its last complete epoch")
    s.add_argument("--out", default="run", help="run folder (foreground runs)")
    add_backend_flag(s, help="local: this machine (foreground, or detached with --background); slurm: submit with sbatch")
    add_slurm_flags(s, visitor_safe=False)
    s.add_argument("--background", action="store_true", help="run as a detached job (see `cxr jobs`)")
    s.set_defaults(func=cmd_train)


TRAIN = Command("train", "fine-tune a backbone on a dataset folder", _train_flags,
                description="Every training option below is declared once in cxrcore/train/config.py "
                            "(TrainConfig); the Training page's form shows the same options.")
