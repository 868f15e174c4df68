"""The one check of a training config, run by every way of starting a training before anything is created.

:func:`check_training` is run by :func:`cxrcore.train.trainer.train` itself and by the job layer's submit
(:func:`cxrcore.jobs.config.check_config`, which adds what only a job has: who may read which folders, the
Slurm options, the operator's ceilings). So the Training form, ``cxr train`` in the foreground, in the
background or on Slurm, a sweep's trials and Python callers all meet the same checks, with a ConfigError /
DataError / CheckpointError that names the option to change instead of a traceback mid-run. Importing this
module does not import torch; calling the check does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path

from ..errors import ConfigError, DataError
from .config import TrainConfig, timm_channels

_TYPE_NAMES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,),
               "dict": (dict,), "None": (type(None),)}


def check_types(cfg: TrainConfig) -> None:
    """Option values of the declared types (validate() would let epochs="3" through to fail mid-run)."""
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


def check_training(cfg: TrainConfig) -> TrainConfig:
    """Validate a training config without training; returns a normalised copy (``data`` and ``init`` as
    absolute paths; ``cfg`` itself is not changed).

    ConfigError for bad options (types, choices and bounds, the rules that tie options together, an unknown
    architecture, options or an image size the model cannot take, box supervision on a model whose heatmaps
    it cannot shape), DataError for a data folder that is missing, holds no label table, none of the labels
    or (with ``box_loss``) no boxes, CheckpointError for an ``init`` that is not a checkpoint.
    """
    check_types(cfg)
    try:
        cfg.validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid training option value: {exc}.") from exc
    out = dataclasses.replace(cfg)

    from ..data.readers import detect_format, read_dataset
    from ..labels import resolve_label_space

    data = Path(cfg.data).expanduser().resolve()
    detect_format(data)  # DataError: missing folder, a file, or no label table
    out.data = str(data)
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
    if cfg.relabel:
        from ..data.relabel import read_relabel

        read_relabel(cfg.relabel)  # DataError: missing, no such columns, a corrected value not 0 / 1
        out.relabel = str(Path(cfg.relabel).expanduser().resolve())
    if cfg.init:
        from ..checkpoint import read_card
        from ..models.library import library_ref

        name = library_ref(cfg.init)  # a library model (xrv:...) stays a name, not a path
        out.init = name or str(Path(cfg.init).expanduser().resolve())
        card = read_card(out.init)  # CheckpointError when it is not a checkpoint (or a known library model)
        if cfg.box_loss > 0:
            _check_box_model(f"the checkpoint {out.init}", cfg.box_loss, lambda: _init_model(card))
    else:
        from ..data.preprocess import Preprocess
        from ..models.registry import check_architecture

        Preprocess(size=cfg.image_size, fit=cfg.fit)  # ConfigError: fit, image size out of range
        if not isinstance(cfg.arch, str):
            raise ConfigError(f"arch must be a timm architecture name, not {cfg.arch!r}.")
        channels = timm_channels(cfg)
        kwargs = {**cfg.arch_kwargs, **({"in_chans": 1} if channels == 1 else {})}
        # unknown name, options it refuses, and an image size it cannot take (run on the meta device)
        check_architecture(cfg.arch, cfg.pretrained, kwargs, size=cfg.image_size, channels=channels)
        if cfg.box_loss > 0:
            _check_box_model(cfg.arch, cfg.box_loss, lambda: _scratch_model(cfg.arch, kwargs))
    return out


def _scratch_model(arch: str, kwargs: dict):
    from ..models.registry import build_model

    return build_model(arch, 2, "none", kwargs)  # random weights: no download, the same layers


def _init_model(card):
    from ..models.registry import model_from_spec

    return model_from_spec(card.model, len(card.labels))  # its layers; the weights do not matter here


def _check_box_model(what: str, weight: float, build) -> None:
    """ConfigError naming ``box_loss`` unless the model (built by ``build()``) has heatmaps box supervision can
    shape: global average pooling and one linear classifier (its class activation map)."""
    from .boxes import check_model

    try:
        check_model(build())
    except ConfigError as exc:
        raise ConfigError(f"box_loss {weight:g} cannot be used with {what}: {exc}") from None


__all__ = ["check_training", "check_types"]
