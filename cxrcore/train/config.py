"""Training options, each declared once: type, default, bounds or choices, help text and group.

:class:`TrainConfig` is the single source of truth. Its fields carry an :class:`Option` in their
metadata, from which are derived:

* the ``cxr train`` flags (:func:`add_cli_flags`, :func:`config_from_args`),
* the Training page's form widgets (``views/training.py`` loops over :func:`options`),
* the generic part of the validation (:meth:`TrainConfig.validate`: choices and bounds).

A new field declared with :func:`opt` appears in ``cxr train --help``, on the form and in the
validation with no other edit. Options whose widget or flag needs more than a number, a choice, a
tick or a line of text (the dataset, the starting checkpoint, the per-label policy mix, the
augmentation and Slurm dictionaries) are marked ``custom``: the page and the CLI render them
themselves. This module does not import torch (the page imports it).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ..data.index import MAX_FOLDS
from ..data.splits import MAX_HELD_OUT, SPLIT_METHODS, TEST_FRACTION, VAL_FRACTION  # declared there, once
from ..errors import ConfigError, DataError

MODES = ("full", "head", "lora")
HIERARCHIES = ("none", "penalty", "two_stage", "two_network")
SCHEDULES = ("cosine", "plateau", "step", "constant")
MONITORS = ("auroc", "loss")
OPTIMIZERS = ("adamw", "adam")
REDUCTIONS = ("mean", "sum")
PRECISIONS = ("fp32", "bf16", "fp16")
LOSS_CHOICES = ("bce", "focal")          # train.losses.LOSSES must match (a test checks)
SAMPLER_CHOICES = ("shuffle", "weighted")  # train.sampling.SAMPLERS must match (a test checks)
INTERNAL_FIELDS = ("sweep", "crossfit")  # set by the program (a sweep's trial), not options: no flag, no widget

# Architectures the Training form suggests (any timm / tv: / xrv: name can be typed); each trains with the
# form's defaults (a test runs one real step of every one).
SUGGESTED_ARCHS = (
    "regnetx_002", "resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0", "convnext_tiny",
    "vit_small_patch16_224", "vit_base_patch16_224", "tv:resnet50", "tv:densenet121",
    "xrv:densenet121-res224-all", "xrv:densenet121-res224-nih", "xrv:densenet121-res224-chex",
    "xrv:densenet121-res224-pc", "xrv:densenet121-res224-mimic_ch", "xrv:densenet121-res224-rsna",
    "xrv:resnet50-res512-all",
)

# Augmentation parameters (train/augment.py's Augment): name -> (default, maximum, help); minimum 0.
AUGMENT_OPTIONS = {
    "p": (0.8, 1.0, "probability an image is augmented at all"),
    "degrees": (7.0, 45.0, "rotation, +/- degrees"),
    "translate": (0.06, 0.5, "+/- fraction of the image size"),
    "scale": (0.08, 0.5, "zoom in [1 - scale, 1 + scale]"),
    "shear": (5.0, 30.0, "+/- degrees"),
    "brightness": (0.1, 0.5, "additive, +/- fraction of the intensity range"),
    "contrast": (0.1, 0.9, "multiplicative around the image mean, 1 +/- contrast"),
}

# group -> title on the Training form ("basic" is shown outside the expanders)
GROUPS = {
    "basic": "Basics",
    "model": "Model and starting point",
    "optimisation": "Optimisation: LoRA, schedule, early stopping, accumulation",
    "loss": "Loss, class imbalance and label hierarchy",
    "data": "Data: uncertainty policy, filters, split, image size",
    "augmentation": "Augmentation",
    "placement": "Where it runs: backend, GPUs, precision",
}


@dataclass(frozen=True)
class Option:
    name: str
    kind: str                      # bool | int | float | str | choice | list | dict | policy
    default: Any
    label: str
    help: str
    group: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    optional: bool = False         # None allowed: "off"; shown on the form as 0 (numbers) or blank (text)
    zero: str = "off"              # what 0 means on the form for an optional number ("all", "any")
    custom: bool = False           # the page / CLI render it themselves
    form_default: Any = None       # a different initial value on the form (e.g. fewer epochs for a CPU run)
    choice_labels: tuple = ()      # (choice, label on the form) pairs
    hidden: tuple = ()             # choices accepted but not offered on the form (aliases)
    fmt: str | None = None         # number format on the form, e.g. "%.5f"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def initial(self) -> Any:
        return self.default if self.form_default is None else self.form_default


def opt(default, label: str, help: str, group: str, **kw):
    """A dataclass field carrying its :class:`Option` (the name is filled in by :func:`options`)."""
    factory = isinstance(default, (dict, list))
    kind = kw.pop("kind", None)
    if kind is None and default is MISSING:
        kind = "str"
    if kind is None:
        kind = ("choice" if kw.get("choices") else "bool" if isinstance(default, bool) else
                "int" if isinstance(default, int) else "float" if isinstance(default, float) else
                "dict" if isinstance(default, dict) else "list" if isinstance(default, list) else "str")
    meta = {"option": dict(kind=kind, default=default, label=label, help=help, group=group, **kw)}
    if default is MISSING:  # a required option
        return field(metadata=meta)
    if factory:
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    data: str = opt(MISSING, "Dataset folder", "An NIH- or CheXpert-style folder, or a folder of images with a CSV of "
                    "labels.", "basic", custom=True)
    labels: str | list = opt("nih14", "Label space", "The labels the model predicts: nih14, chexpert14, chexpert5 "
                             "or a comma-separated list. Labels the dataset lacks are left out of the loss.",
                             "basic", kind="str", custom=True)
    name: str = opt("", "Job name", "Shown in the jobs table and on the checkpoint card; empty: the dataset "
                    "folder's name.", "basic")
    arch: str = opt("regnetx_002", "Architecture", "Any timm name, tv:<name> for torchvision, xrv:<weights> for "
                    "torchxrayvision's chest X-ray models.", "model", custom=True)
    arch_kwargs: dict = opt({}, "Architecture options", "Options for the model constructor, e.g. "
                            '{"output_stride": 16} for finer heatmaps (ResNet/RegNet-like timm models).', "model",
                            custom=True)
    pretrained: str = opt("auto", "Pretrained weights", "hub: the library's own weights (from its local cache when "
                          "offline); none: random initialisation; auto: hub for xrv: models, none otherwise.",
                          "model", choices=("auto", "none", "hub", "timm"), hidden=("timm",))
    init: str | None = opt(None, "Start from checkpoint", "A checkpoint folder or library model (xrv:...) whose "
                           "head is swapped to the label space.", "model", kind="str", optional=True, custom=True)
    mode: str = opt("full", "Train", "full network, head only, or LoRA adapters (peft).", "basic", choices=MODES,
                    choice_labels=(("full", "full network"), ("head", "head only"), ("lora", "LoRA (peft)")))
    epochs: int = opt(5, "Epochs", "Passes over the training split.", "basic", min=1, max=10_000, form_default=3)
    batch_size: int = opt(32, "Batch size", "Images per step.", "basic", min=1, max=4096)
    lr: float = opt(2e-3, "Learning rate", "Optimizer learning rate (positive).", "basic", min=0.0, max=1.0,
                    step=1e-4, fmt="%.5f")
    max_images: int | None = opt(None, "Max images", "A random subset of this many images after the filters "
                                 "(keeps a CPU run to a few minutes); 0 / empty: all.", "basic", kind="int",
                                 optional=True, min=10, step=50, form_default=400, zero="all")
    lora_r: int = opt(8, "LoRA rank", "LoRA mode only.", "optimisation", min=1, max=1024)
    lora_alpha: float = opt(16.0, "LoRA alpha", "LoRA scaling numerator.", "optimisation", min=0.0)
    lora_dropout: float = opt(0.0, "LoRA dropout", "Dropout on the LoRA path.", "optimisation", min=0.0, max=0.9,
                              step=0.05)
    lora_targets: str | None = opt(None, "LoRA targets (regex)", "Regex over module names; empty: attention "
                                   "projections for ViTs, dense convolutions for CNNs.", "optimisation", kind="str",
                                   optional=True)
    schedule: str = opt("cosine", "Schedule", "cosine: warmup then cosine decay; plateau: reduce the LR when the "
                        "monitored validation metric stalls; step: multiply the LR by the step factor every N "
                        "epochs (StepLR); constant.", "optimisation", choices=SCHEDULES)
    step_epochs: int = opt(3, "Step every (epochs)", "Step schedule: epochs between LR drops.", "optimisation",
                           min=1, max=10_000)
    step_gamma: float = opt(0.1, "Step factor", "Step schedule: the LR is multiplied by this at each drop.",
                            "optimisation", min=0.001, max=0.99, step=0.05)
    warmup_steps: int = opt(20, "Warmup steps", "Linear warmup steps (cosine schedule).", "optimisation", min=0,
                            step=10)
    plateau_patience: int = opt(1, "Plateau patience (epochs)", "Epochs without improvement before the LR drops.",
                                "optimisation", min=0)
    plateau_factor: float = opt(0.5, "Plateau factor", "The LR is multiplied by this on a plateau.", "optimisation",
                                min=0.01, max=0.99, step=0.05)
    early_stopping: int = opt(0, "Early stopping patience", "Stop after this many validations (epochs, unless "
                              "validating every N steps) without a better monitored metric; 0: off.",
                              "optimisation", min=0)
    monitor: str = opt("auroc", "Watch", "The validation metric that picks the best checkpoint and drives early "
                       "stopping and the plateau schedule: mean AUROC (higher is better) or loss (lower is better).",
                       "optimisation", choices=MONITORS,
                       choice_labels=(("auroc", "validation mean AUROC"), ("loss", "validation loss")))
    val_every: int | None = opt(None, "Validate every N steps", "Also validate (and checkpoint when better) every N "
                                "training steps, as well as at each epoch's end; 0 / empty: at epoch ends only.",
                                "optimisation", kind="int", optional=True, min=1, step=50)
    optimizer: str = opt("adamw", "Optimizer", "adamw: decoupled weight decay; adam: Adam with the weight decay "
                         "as an L2 penalty in the gradient (torch.optim.Adam).", "optimisation", choices=OPTIMIZERS)
    accum_steps: int = opt(1, "Gradient accumulation (batches)", "Optimizer step every N batches.", "optimisation",
                           min=1)
    weight_decay: float = opt(1e-4, "Weight decay", "AdamW's decoupled weight decay, or Adam's L2 penalty.",
                              "optimisation", min=0.0, step=1e-4, fmt="%.5f")
    channels: int = opt(3, "Input channels", "3: the gray image repeated (as pretrained weights expect); 1: timm "
                        "models built with in_chans=1 (timm sums a pretrained first layer over RGB). torchxrayvision "
                        "models always take 1.", "model", min=1, max=3)
    normalize: str = opt("model", "Normalisation", "model: the mean / sd the architecture was pretrained with "
                         "(ImageNet's for most timm models, 0.5 for ViTs; torchxrayvision's own scale for xrv: models); "
                         "dataset: the training split's own pixel mean and sd (seed 004).", "model",
                         choices=("model", "dataset"))
    drop_rate: float = opt(0.0, "Classifier dropout", "Dropout before the classifier (timm's drop_rate); 0: none.",
                           "model", min=0.0, max=0.9, step=0.05)
    seed: int = opt(0, "Seed", "Seeds the split, sampling, augmentation and initialisation.", "optimisation", min=0)
    loss: str = opt("bce", "Loss", "bce: binary cross-entropy; focal: torchvision's sigmoid focal loss.", "loss",
                    choices=LOSS_CHOICES)
    loss_reduction: str = opt("mean", "Loss reduction", "mean over the known labels of the batch, or their sum "
                              "(seed 004; scale the learning rate down accordingly).", "loss", choices=REDUCTIONS)
    pos_weight: bool = opt(False, "pos_weight from prevalence (bce)", "Weight each label's positives by negatives / "
                           "positives in the training split.", "loss")
    focal_gamma: float = opt(2.0, "Focal gamma", "Focusing parameter of the focal loss.", "loss", min=0.0, max=10.0,
                             step=0.5)
    sampler: str = opt("shuffle", "Sampler", "weighted: images with rare findings are drawn as often as common "
                       "ones.", "loss", choices=SAMPLER_CHOICES)
    oversample_min: int = opt(0, "Oversample rare combinations to (rows)", "Repeat rare label combinations up to "
                              "this many rows per epoch; 0: off.", "loss", min=0, step=5)
    hierarchy: str = opt("none", "Hierarchy", "penalty: CheXpert's tree, a child predicted above its parent costs "
                         "loss; two_stage: an 'Any finding' gate output plus diseases trained on abnormal images, "
                         "in one network; two_network: the same with two separate networks (a binary gate model, "
                         "then a disease model on abnormal images), each with its own optimiser and checkpoint, "
                         "combined at inference.", "loss",
                         choices=HIERARCHIES, choice_labels=(("penalty", "parent/child penalty"),
                                                             ("two_stage", "two-stage gate, one network"),
                                                             ("two_network", "two-stage gate, two networks")))
    hierarchy_weight: float = opt(1.0, "Penalty weight", "Weight of the hierarchy penalty.", "loss", min=0.0,
                                  step=0.5)
    box_loss: float = opt(0.0, "Box supervision weight", "Where the dataset has ground-truth boxes (NIH's "
                          "BBox_List_2017.csv, the phantoms'), teach each label's heatmap to peak on its boxes (Li et al. "
                          "2018): -log of the share of the label's softmax map on the boxes, times this weight, added to "
                          "the loss. 0: off. Needs a CNN whose head is average pooling + one linear layer (timm CNNs); "
                          "not with LoRA.", "loss", min=0.0, max=10.0, step=0.1)
    gate_threshold: float = opt(0.5, "Gate threshold (while training)", "Two-stage: the gate threshold used for "
                                "validation during training; the saved model's is tuned on validation (max F1 of "
                                "'Any finding') and can be edited on the Thresholds page.", "loss", min=0.0, max=1.0,
                                step=0.05)
    gate_mode: str = opt("soft", "Below the gate", "Two-stage: soft: a disease probability is gate x disease; "
                         "hard: reported as 0, not assessed (seed 000).", "loss", choices=("soft", "hard"),
                         choice_labels=(("soft", "scaled by the gate (soft)"), ("hard", "not assessed (hard)")))
    policy: str | dict = opt("zeros", "Uncertain labels (CheXpert -1)", "zeros: negative; ones: positive; ignore: "
                             "left out of loss and metrics; or a per-label mix such as 'ones:Atelectasis,Edema;zeros' "
                             "(the bare policy last is the default).", "data", kind="policy", custom=True)
    relabel: str | None = opt(None, "Relabel table (CSV)", "Corrections to the dataset's labels: a CSV with image_id, "
                              "label, corrected, as the Dataset page's label review exports it. The corrected values "
                              "replace the dataset's for training and validation; the dataset's files are not changed "
                              "and the card records the table's digest.", "data", kind="str", optional=True)
    fit: str = opt("pad", "Image fit", "Aspect kept: letterbox (pad) or centre crop.", "data", choices=("pad", "crop"))
    image_size: int = opt(160, "Image size (px)", "Training resolution (ignored when starting from a checkpoint: "
                          "its preprocessing is kept).", "data", min=32, max=2048, step=16)
    frontal_only: bool = opt(True, "Frontal views only", "Keep frontal (PA/AP) images only.", "data")
    views: list | None = opt(None, "Views", "Keep only these view positions, e.g. PA or PA,AP; empty: all.", "data",
                             kind="list", optional=True, custom=True)
    first_n_studies: int | None = opt(None, "First N studies per patient", "Keep each patient's first N studies "
                                      "(by study order); 0 / empty: all.", "data", kind="int", optional=True, min=1,
                                      zero="all")
    age_min: float | None = opt(None, "Age from", "Keep patients at least this old; 0 / empty: any.", "data",
                                kind="float", optional=True, min=0, max=130, step=5.0, zero="any")
    age_max: float | None = opt(None, "Age to", "Keep patients at most this old; 0 / empty: any.", "data",
                                kind="float", optional=True, min=0, max=130, step=5.0, zero="any")
    sex: str | None = opt(None, "Sex", "Keep one sex only: M or F; empty: both.", "data", choices=("M", "F"),
                          optional=True)
    split_method: str = opt("hash", "Split", "All are patient-level. hash: by a hash of the patient; stratified: "
                            "balances each label's positive rate across splits; official: the dataset's own test "
                            "list (NIH test_list.txt, CheXpert valid.csv) is the test split and the rest is split "
                            "into train / val by patient (the test fraction is not used).", "data",
                            choices=SPLIT_METHODS, choice_labels=SPLIT_METHODS)  # the live mapping: name -> label
    val_fraction: float = opt(VAL_FRACTION.default, "Validation fraction", "Share of patients in the validation "
                              "split.", "data", min=VAL_FRACTION.min, max=VAL_FRACTION.max, step=0.05)
    test_fraction: float = opt(TEST_FRACTION.default, "Test fraction", "Share of patients in the test split.", "data",
                               min=TEST_FRACTION.min, max=TEST_FRACTION.max, step=0.05)
    augment: bool = opt(True, "Augment training images", "Random affine, brightness and contrast per image.",
                        "augmentation")
    augment_options: dict = opt({}, "Augmentation options", "Any of " + ", ".join(
        f"{k} ({h}; default {d:g}, at most {m:g})" for k, (d, m, h) in AUGMENT_OPTIONS.items()) + ".", "augmentation",
        custom=True)
    device: str = opt("auto", "Device", "auto, cpu or cuda[:N].", "placement", kind="str")
    gpus: int = opt(0, "GPUs", "GPUs the job needs (local: it waits until this many are free, as "
                    "CUDA_VISIBLE_DEVICES; slurm: --gres=gpu:N per node).", "placement", min=0, max=64)
    share_gpus: bool = opt(False, "Share GPUs with other jobs", "Local: allow running on GPUs another job holds.",
                           "placement")
    nproc: int = opt(1, "Processes (DDP)", "Processes per node: torchrun data-parallel when more than one (gloo on "
                     "CPU, NCCL on GPUs).", "placement", min=1, max=64)
    nodes: int = opt(1, "Slurm nodes", "Slurm only: nodes (srun torchrun).", "placement", min=1, max=1024)
    precision: str = opt("fp32", "Precision", "Autocast; fp16 (with a grad scaler) needs a GPU.", "placement",
                         choices=PRECISIONS)
    channels_last: bool = opt(False, "channels_last", "Channels-last memory format.", "placement")
    compile: bool = opt(False, "torch.compile", "Compile the model with torch.compile.", "placement")
    threads: int = opt(0, "CPU threads", "torch CPU threads; 0: all cores but one.", "placement", min=0, max=1024)
    workers: int = opt(2, "Cache workers", "Processes that build the image cache.", "placement", min=1, max=256)
    slurm: dict = opt({}, "Slurm options", "partition, cpus, mem, time, account, extra sbatch options, conf (their "
                      "forms: cxrcore/jobs/config.py SLURM_OPTIONS).", "placement",
                      custom=True)
    # Set by a sweep (cxrcore/jobs/sweep.py) on its trials' jobs: where the trial lives, so each epoch's
    # validation metric is reported to the study and the run stops when Optuna prunes it. Not an option
    # (no flag, no widget): a clone of a trial into the form drops it.
    sweep: dict | None = None
    # Set by cross-fitting (cxrcore/lens/crossfit.py) on each fold's training: {"fold": k, "folds": K}; the
    # patients of fold k are the test split (cxrcore.data.index.crossfit_split), the model never sees them.
    crossfit: dict | None = None

    def validate(self) -> None:
        """Choices and bounds from the declarations, then the rules that tie options together."""
        for o in options(type(self)):
            check_option(o, getattr(self, o.name))
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, not {self.lr:g}.")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, not {self.channels}.")
        if self.channels == 1 and str(self.arch).startswith("tv:") and not self.init:
            raise ConfigError(f"One input channel is a timm option (in_chans=1); {self.arch} takes 3. Set channels "
                              "to 3.")
        if self.normalize == "dataset" and str(self.arch).startswith("xrv:") and not self.init:
            raise ConfigError(f"{self.arch} takes torchxrayvision's own scale ([-1024, 1024]); dataset normalisation "
                              "would feed it inputs it was not trained on. Use normalize=model.")
        if self.drop_rate and str(self.arch).startswith(("tv:", "xrv:")) and not self.init:
            raise ConfigError(f"Classifier dropout (drop_rate) is a timm option; {self.arch} has none. Set it to 0.")
        if self.box_loss and self.mode == "lora":
            raise ConfigError("Box supervision shapes the classifier's class activation maps through the whole network; "
                              "LoRA adapters wrap it. Use mode full or head, or set box_loss to 0.")
        if self.loss == "focal" and self.pos_weight:
            raise ConfigError("pos_weight is for the bce loss; focal loss weights hard examples itself. Choose one.")
        if self.age_min is not None and self.age_max is not None and self.age_min > self.age_max:
            raise ConfigError(f"age_min ({self.age_min}) is above age_max ({self.age_max}).")
        if self.views is not None and (not isinstance(self.views, list) or not self.views):
            raise ConfigError(f"views must be a non-empty list of view positions such as ['PA'], not {self.views!r}.")
        if self.val_fraction + self.test_fraction >= MAX_HELD_OUT:
            raise ConfigError(f"val_fraction + test_fraction ({self.val_fraction + self.test_fraction:g}) leaves "
                              f"too little for training; keep them below {MAX_HELD_OUT:g} together.")
        from ..data.index import POLICIES, parse_policy
        from ..labels import canonical, resolve_label_space

        if not (isinstance(self.policy, str) and self.policy in POLICIES):
            try:
                per, _ = parse_policy(self.policy)
            except DataError as exc:
                raise ConfigError(str(exc)) from exc
            known = {canonical(x) for x in resolve_label_space(self.labels)}
            unknown = sorted(set(per) - known)
            if unknown:
                raise ConfigError(f"policy names label(s) {', '.join(unknown)} that are not in the label space "
                                  f"{self.labels!r}.")
        resolve_label_space(self.labels)
        if self.crossfit is not None:
            cf = self.crossfit
            if not (isinstance(cf, dict) and set(cf) == {"fold", "folds"} and all(
                    isinstance(cf[k], int) and not isinstance(cf[k], bool) for k in cf)
                    and 2 <= cf["folds"] <= MAX_FOLDS and 0 <= cf["fold"] < cf["folds"]):
                raise ConfigError(f"crossfit is {{'fold': k, 'folds': K}} with 2 <= K <= {MAX_FOLDS} and 0 <= k < K, "
                                  f"not {cf!r}.")
            if self.split_method != "hash":
                raise ConfigError("Cross-fitting makes its own patient-level folds; use split_method hash.")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], not {self.device!r}.")
        check_augment_options(self.augment_options)
        import torch

        if self.precision == "fp16" and not (torch.cuda.is_available() and self.device != "cpu"):
            raise ConfigError("fp16 autocast needs a GPU; on CPU use precision bf16 or fp32.")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("A GPU was asked for (device=cuda) but none is available here; use device=cpu or auto.")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config of the options in ``d``; those left out take their declared default, except
        ``image_size``, which is the model's own (:func:`default_image_size`)."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"Unknown training option(s): {', '.join(sorted(unknown))}.")
        if not d.get("data"):
            raise ConfigError("A training config needs data (the dataset folder).")
        d = dict(d)
        if "image_size" not in d and not d.get("init"):
            d["image_size"] = default_image_size(d.get("arch", option("arch", cls).default))
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def check_augment_options(d: dict | None) -> dict[str, float]:
    """The augmentation options ``d`` as numbers (:data:`AUGMENT_OPTIONS` names, each in its bounds);
    ConfigError naming what is wrong. :meth:`cxrcore.train.augment.Augment.from_dict` reads them through this."""
    d = dict(d or {})
    unknown = set(d) - set(AUGMENT_OPTIONS)
    if unknown:
        raise ConfigError(f"Unknown augmentation option(s): {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(AUGMENT_OPTIONS)}.")
    try:
        values = {k: float(v) for k, v in d.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Augmentation options must be numbers: {exc}.") from exc
    check_augment_values({k: values.get(k, default) for k, (default, _, _) in AUGMENT_OPTIONS.items()})
    return values


def check_augment_values(values: dict[str, float]) -> None:
    """ConfigError unless every augmentation parameter lies in its bounds ([0, 1] for ``p``)."""
    if not 0 <= values["p"] <= 1:
        raise ConfigError(f"augmentation probability must be in [0, 1], not {values['p']}.")
    for name, (_, hi, _) in AUGMENT_OPTIONS.items():
        v = values[name]
        if not 0 <= v <= hi:
            raise ConfigError(f"augmentation {name} must be in [0, {hi:g}], not {v}.")


def default_image_size(arch) -> int:
    """The image size a training of ``arch`` takes when none is given: the model's own for one that
    takes a single input size (a ViT's fixed patch grid, a CLIP tower), else the declared default. A name
    no library knows gets the declared default (the submit check refuses the name with suggestions).
    Builds the model on the meta device (imports torch)."""
    from ..models.registry import arch_facts

    fallback = option("image_size").default
    if not isinstance(arch, str) or not arch:
        return fallback
    try:
        facts = arch_facts(arch)
    except ConfigError:
        return fallback
    return int(facts["input_size"]) if facts["fixed_size"] else fallback


def timm_channels(cfg: TrainConfig) -> int:
    """Input channels the model is built with: 1 for a timm model asked for one channel (``in_chans=1``),
    else 3 (torchvision models take 3; xrv models set their own 1 through preprocess_for)."""
    from ..models.registry import library_of

    return 1 if cfg.channels == 1 and library_of(cfg.arch) == "timm" else 3


# ------------------------------------------------------------------------------ declarations
def options(cls: type = TrainConfig, group: str | None = None) -> list[Option]:
    """Every declared option of ``cls`` in declaration order (of one group)."""
    out = []
    for f in fields(cls):
        meta = f.metadata.get("option")
        if meta is None:
            continue
        o = Option(name=f.name, **meta)
        if group is None or o.group == group:
            out.append(o)
    return out


def option(name: str, cls: type = TrainConfig) -> Option:
    return next(o for o in options(cls) if o.name == name)


def _number(o: Option, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{o.name} must be a number, not {value!r}.")
    if o.kind == "int" and int(value) != value:
        raise ConfigError(f"{o.name} must be a whole number, not {value!r}.")
    return value


def check_option(o: Option, value) -> None:
    """ConfigError when ``value`` breaks the declaration of ``o`` (type, choices, bounds)."""
    if value is None:
        if o.optional or o.default is None:
            return
        raise ConfigError(f"{o.name} needs a value ({o.help})")
    if o.kind == "choice":
        if value not in o.choices:
            raise ConfigError(f"{o.name} must be one of {', '.join(map(str, o.choices))}, not {value!r}.")
        return
    if o.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{o.name} must be true or false, not {value!r}.")
        return
    if o.kind in ("int", "float"):
        v = _number(o, value)
        if o.min is not None and v < o.min:
            raise ConfigError(f"{o.name} must be at least {o.min:g}, not {v:g}.")
        if o.max is not None and v > o.max:
            raise ConfigError(f"{o.name} must be at most {o.max:g}, not {v:g}.")
        return
    if o.kind == "dict" and not isinstance(value, dict):
        raise ConfigError(f"{o.name} must be a JSON object, not {value!r}.")


# ------------------------------------------------------------------------------ command line
def _cli_value(o: Option, text: str):
    if o.kind == "int":
        return int(text)
    if o.kind == "float":
        return float(text)
    if o.kind == "list":
        items = [v.strip().upper() for v in str(text).split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{o.flag} needs values such as PA or PA,AP, not {text!r}")
        return items
    if o.kind == "dict":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{o.flag} takes a JSON object, e.g. '{{\"p\": 0.5}}' ({exc})") from exc
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{o.flag} takes a JSON object, not {text!r}")
        return value
    if o.kind == "policy":
        from ..data.index import parse_policy

        try:
            parse_policy(text)
        except DataError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def add_cli_flags(parser: argparse.ArgumentParser, cls: type = TrainConfig, skip: tuple = ()) -> None:
    """One flag per declared option (``--lr``, ``--no-augment`` / ``--augment``, ``--views PA,AP``, …),
    grouped as on the form. Unset flags stay None: :func:`config_from_args` keeps the declared default."""
    groups = {}
    for o in options(cls):
        if o.name in skip:
            continue
        g = groups.get(o.group)
        if g is None:
            g = groups[o.group] = parser.add_argument_group(GROUPS.get(o.group, o.group))
        default_text = "" if o.default in (None, "", {}, [], MISSING) else f" (default: {o.default})"
        help_text = o.help.replace("%", "%%") + default_text
        kw: dict = {"dest": o.name, "default": None, "help": help_text}
        if o.kind == "bool":
            g.add_argument(o.flag, action=argparse.BooleanOptionalAction, **kw)
        elif o.kind == "choice":
            g.add_argument(o.flag, choices=list(o.choices), **kw)
        else:
            meta = {"int": "N", "float": "X", "list": "A,B", "dict": "JSON", "policy": "POLICY"}.get(o.kind, "TEXT")
            g.add_argument(o.flag, type=lambda t, o=o: _cli_value(o, t), metavar=meta, **kw)


def config_from_args(args: argparse.Namespace, cls: type = TrainConfig, **fixed) -> dict:
    """The options given on the command line (and ``fixed`` ones), as a dict for ``cls.from_dict``;
    flags not given keep the declared default."""
    cfg = {}
    for o in options(cls):
        value = getattr(args, o.name, None)
        if value is not None:
            cfg[o.name] = value
    cfg.update(fixed)
    return cfg
