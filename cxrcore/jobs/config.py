"""Checks of a training job's config before anything is created: options, data, init checkpoint, placement.

``check_config(config)`` is what every backend runs first (and what the Training page can run to
check a form): it returns the config normalised (defaults filled in, paths absolute) or raises
ConfigError / DataError / CheckpointError with a message that says what to change. Importing this
module does not import torch; calling ``check_config`` does.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..errors import ConfigError


def check_config(config: dict, settings=None) -> dict:
    """Validate a training config without starting anything; returns it normalised.

    Normalised: every option present (defaults filled in), ``data`` and ``init`` as absolute
    paths (the runner's working directory is the run folder). Raises ConfigError for bad
    options (unknown option, epochs < 1, unknown labels, mode, policy, device, architecture,
    pretrained), DataError for a data folder that is missing or holds no label table, and
    CheckpointError for an ``init`` that is not a checkpoint. AccessError for a ``data`` or ``init``
    folder outside the folders the operator lets jobs read (``CXR_DATA_ROOTS`` and the workspace;
    :func:`cxrcore.hosting.check_job_paths`, with ``settings`` or the environment's), whoever calls.
    """
    from .. import hosting

    from ..train.trainer import TrainConfig  # imports torch

    if not isinstance(config, dict):
        raise ConfigError(f"A training config is a dict of options, not {type(config).__name__}.")
    if not config.get("data"):
        raise ConfigError("The training config needs `data`: the dataset folder to train on.")
    hosting.check_job_paths(config, settings or hosting.settings())  # before anything reads the folder
    try:
        cfg = TrainConfig.from_dict(dict(config))
    except TypeError as exc:
        raise ConfigError(f"Invalid training options: {exc}.") from exc
    _check_types(cfg)
    _check_placement(cfg)
    try:
        cfg.validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid training option value: {exc}.") from exc

    from ..data.readers import detect_format

    data = Path(cfg.data).expanduser().resolve()
    detect_format(data)  # DataError: missing folder, a file, or no label table
    cfg.data = str(data)
    from ..data.readers import read_dataset
    from ..errors import DataError
    from ..labels import resolve_label_space

    # The label table (not the images): a label space the data does not have is refused now, not mid-run.
    table = read_dataset(data, check_files=False)
    wanted = resolve_label_space(cfg.labels)
    if not table.shared_labels(wanted):
        raise DataError(f"The dataset at {data} has none of the labels {', '.join(wanted)}; its labels are "
                        f"{', '.join(table.labels)}. Choose a label space it has (e.g. nih14 for NIH, chexpert14 "
                        "for CheXpert) or list its labels.")
    if cfg.box_loss > 0 and (table.boxes is None or not len(table.boxes)):
        raise DataError(f"Box supervision (box_loss {cfg.box_loss:g}) needs ground-truth boxes, and the dataset at "
                        f"{data} has none (NIH: BBox_List_2017*.csv beside the label table; the CheXpert phantom: "
                        "phantom_boxes.csv). Set box_loss to 0.")
    if cfg.init:
        from ..checkpoint import read_card

        from ..models.library import library_ref

        name = library_ref(cfg.init)  # a library model (xrv:...) stays a name, not a path
        init = name or str(Path(cfg.init).expanduser().resolve())
        read_card(init)  # CheckpointError when it is not a checkpoint (or a known library model)
        cfg.init = init
    else:
        from ..data.preprocess import Preprocess

        Preprocess(size=cfg.image_size, fit=cfg.fit)  # ConfigError: fit, image size out of range
        from ..models.registry import check_architecture

        if not isinstance(cfg.arch, str):
            raise ConfigError(f"arch must be a timm architecture name, not {cfg.arch!r}.")
        from ..train.trainer import timm_channels

        channels = timm_channels(cfg)
        # unknown name, options it refuses, and an image size it cannot take (run on the meta device)
        check_architecture(cfg.arch, cfg.pretrained, {**cfg.arch_kwargs, **({"in_chans": 1} if channels == 1 else {})},
                           size=cfg.image_size, channels=channels)
    out = asdict(cfg)
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"The training config must be plain JSON values: {exc}.") from exc
    return out


_TYPE_NAMES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,),
               "dict": (dict,), "None": (type(None),)}


def _check_types(cfg) -> None:
    """Option values of the declared types (validate() would let epochs="3" through to fail mid-run)."""
    from dataclasses import fields

    for f in fields(cfg):
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        names = [t.strip() for t in ann.split("|")]
        if not names or any(n not in _TYPE_NAMES for n in names):
            continue  # a type this check does not know: leave it to validate()
        value = getattr(cfg, f.name)
        allowed = tuple(t for n in names for t in _TYPE_NAMES[n])
        if isinstance(value, bool) and bool not in allowed:
            ok = False  # True is an int to Python, not to a training option
        else:
            ok = isinstance(value, allowed)
        if not ok:
            raise ConfigError(f"Training option {f.name} must be {' or '.join(names)}, not {value!r}.")


# slurm options: name -> (allowed types, what it is)
SLURM_OPTIONS = {
    "partition": ((str,), "partition name"),
    "cpus": ((int,), "CPUs per task (also the job's torch/OpenMP threads)"),
    "mem": ((str, int), "memory per node, e.g. '16G' (a number is MiB)"),
    "time": ((str, int), "time limit, e.g. '2:00:00' (a number is minutes)"),
    "account": ((str,), "account to charge"),
    "extra": ((list, str), "extra sbatch options, e.g. ['--qos=high']"),
    "conf": ((str,), "the cluster's slurm.conf (default: $SLURM_CONF or Slurm's own default)"),
}


def _check_placement(cfg) -> None:
    """gpus, share_gpus, nproc, nodes and the slurm options (types were checked by _check_types)."""
    if cfg.gpus < 0:
        raise ConfigError(f"gpus must be 0 (CPU) or more, not {cfg.gpus}.")
    if cfg.nproc < 1:
        raise ConfigError(f"nproc (processes per node) must be at least 1, not {cfg.nproc}.")
    if cfg.nodes < 1:
        raise ConfigError(f"nodes must be at least 1, not {cfg.nodes}.")
    unknown = sorted(set(cfg.slurm) - set(SLURM_OPTIONS))
    if unknown:
        known = ", ".join(SLURM_OPTIONS)
        raise ConfigError(f"Unknown slurm option(s): {', '.join(map(str, unknown))}. Known: {known}.")
    for key, value in cfg.slurm.items():
        types, what = SLURM_OPTIONS[key]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("a list of strings" if t is list else t.__name__ for t in types)
            raise ConfigError(f"slurm option {key} ({what}) must be {names}, not {value!r}.")
        items = value if isinstance(value, list) else [value]
        for item in items:
            if key == "extra" and not isinstance(item, str):
                raise ConfigError(f"slurm option extra must be a list of strings, not {value!r}.")
            if isinstance(item, str) and ("\n" in item or "\r" in item or "\0" in item):
                raise ConfigError(f"slurm option {key} must be a single line, not {item!r}.")
            if isinstance(item, str) and key != "extra" and not item.strip():
                raise ConfigError(f"slurm option {key} must not be empty.")
        if key == "cpus" and value < 1:
            raise ConfigError(f"slurm option cpus must be at least 1, not {value}.")
        if key in ("mem", "time") and isinstance(value, int) and value < 1:
            raise ConfigError(f"slurm option {key} must be positive, not {value}.")
    if str(cfg.device).startswith("cuda") and cfg.gpus == 0:
        raise ConfigError(f"device={cfg.device} needs a GPU: set gpus to 1 or more (gpus=0 runs on the CPU).")


__all__ = ["SLURM_OPTIONS", "check_config"]
