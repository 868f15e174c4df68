"""What the front ends (the ``cxr`` CLI and the Training page) derive from the declarations, beside the
widgets and flags themselves: which slurm options each offers, and the launch form's values <-> a training
config. The declarations stay where they are: :class:`cxrcore.train.config.TrainConfig`,
:data:`cxrcore.jobs.config.SLURM_OPTIONS`, :class:`cxrcore.jobs.sweep.SweepSpec`,
:data:`cxrcore.jobs.store.BACKENDS` and :data:`cxrcore.data.splits.SPLIT_METHODS`. No torch."""
from __future__ import annotations

from pathlib import Path

from .jobs.config import SLURM_OPTIONS, SlurmOption
from .train.config import AUGMENT_OPTIONS, Option, options

POLICIES = ["zeros", "ones", "ignore"]
FROM_CHECKPOINT = "A checkpoint (fine-tune it)"
FROM_SCRATCH = "An architecture (timm, tv:, xrv:)"
SLURM_PREFIX = "slurm_"  # a slurm option's field on the form: slurm_<name>


# --------------------------------------------------------------------------- slurm options

def slurm_fields(visitor_safe: bool) -> list[SlurmOption]:
    """The slurm options a front end offers as one value each, in declared order: every option but the list
    ones (``extra``); ``visitor_safe`` leaves out the ones a shared server's visitor may not set
    (``account``, ``conf``: :data:`cxrcore.hosting.RESTRICTED_SLURM_OPTIONS`). The CLI's ``cxr train`` offers
    all; ``cxr sweep`` and the Training page the visitor-safe ones."""
    return [o for o in SLURM_OPTIONS.values() if list not in o.types and not (visitor_safe and o.restricted)]


def slurm_number(o: SlurmOption) -> bool:
    """Whether the form asks for a whole number (0 = Slurm's default) rather than text."""
    return o.types == (int,)


def slurm_form_defaults() -> dict:
    """The form's slurm fields (``slurm_<name>``) with their empty values."""
    return {SLURM_PREFIX + o.name: 0 if slurm_number(o) else "" for o in slurm_fields(True)}


def slurm_from_form(values: dict) -> dict:
    """The ``slurm`` dict of a config from the form's fields (empty ones left out)."""
    out = {}
    for o in slurm_fields(True):
        v = values.get(SLURM_PREFIX + o.name)
        v = int(v or 0) if slurm_number(o) else str(v or "").strip()
        if v:
            out[o.name] = v
    return out


def slurm_to_form(slurm: dict | None) -> dict:
    """The form's slurm fields from a config's ``slurm`` dict (the inverse of :func:`slurm_from_form`)."""
    slurm = slurm or {}
    return {SLURM_PREFIX + o.name: int(slurm.get(o.name, 0) or 0) if slurm_number(o) else str(slurm.get(o.name, ""))
            for o in slurm_fields(True)}


# --------------------------------------------------------------------------- the launch form

def form_options(cls: type | None = None) -> list[Option]:
    """The declared options the form renders by itself (read each call: a new field shows up at once)."""
    from .train import config

    return [o for o in options(cls or config.TrainConfig) if not o.custom]


def widget_value(o: Option, value):
    """A config value as the widget holds it: None -> 0 (numbers) or '' (text); numbers typed."""
    if o.kind in ("int", "float"):
        return (int if o.kind == "int" else float)(value or 0)
    if o.kind == "bool":
        return bool(value)
    if o.kind == "str":
        return "" if value is None else str(value)
    return value


def config_value(o: Option, value):
    """A widget's value as the config holds it (the inverse of :func:`widget_value`)."""
    if o.kind in ("int", "float"):
        value = (int if o.kind == "int" else float)(value)
        return None if o.optional and value == 0 else value
    if o.kind == "str":
        value = (value or "").strip()
        return None if o.optional and not value else value
    if o.kind == "bool":
        return bool(value)
    return value


def form_defaults() -> dict:
    """The form's initial values: every declared option's, then the page's own fields (the custom options'
    widgets, the backend and the slurm options)."""
    return {
        **{o.name: widget_value(o, o.initial) for o in form_options()},
        "dataset": None, "folder": "", "ckpt": None, "start": None, "labels": "nih14", "arch": "regnetx_002",
        "stride16": True, "policy": "zeros", "policy_mix": "", "views": [], "backend": _backends()[0],
        **slurm_form_defaults(),
        **{"aug_" + k: default for k, (default, _, _) in AUGMENT_OPTIONS.items()},
    }


def _backends() -> tuple:
    from .jobs.store import BACKENDS

    return BACKENDS


def config_from_form(values: dict, data: str, init: str | None) -> tuple[dict, str, list[str]]:
    """The training config the form's ``values`` describe, its backend, and notes on the architecture's own
    defaults (registry.form_arch_defaults) to show after the submit."""
    v = values
    cfg: dict = {"data": data, **{o.name: config_value(o, v[o.name]) for o in form_options()}}
    cfg.update(labels=v["labels"], policy=(v["policy_mix"] or "").strip() or v["policy"],
               views=list(v["views"]) or None,
               augment_options={k: float(v["aug_" + k]) for k in AUGMENT_OPTIONS})
    notes: list[str] = []
    if init:
        cfg["init"] = init
        for kept in ("pretrained", "image_size"):  # the checkpoint's own preprocessing is kept
            cfg.pop(kept, None)
    else:
        from .models.registry import form_arch_defaults

        arch = (v["arch"] or "").strip()
        cfg.update(arch=arch, arch_kwargs={})
        out, notes = form_arch_defaults(arch, cfg.get("image_size"), bool(v["stride16"]))
        cfg.update(out)
    backend = v["backend"]
    if backend == "slurm":
        cfg["slurm"] = slurm_from_form(v)
    return cfg, backend, notes


def form_from_config(config: dict, backend: str = "local", name: str = "", datasets: dict | None = None,
                     checkpoints: dict | None = None) -> tuple[dict, list[str]]:
    """The form's initial values for a clone of a past job, and what the form cannot show (those options keep
    the default)."""
    c = dict(config)
    vals = form_defaults()
    kept = []
    for o in form_options():
        value = c.get(o.name)
        if o.name == "pretrained" and value == "timm":
            value = "hub"  # an alias the form does not offer
        if value is None and not o.optional:
            continue
        if o.kind == "choice" and value is not None and (value not in o.choices or value in o.hidden):
            kept.append(f"{o.name}={value!r}")
            continue
        vals[o.name] = widget_value(o, value)
    vals["name"] = f"{name} (clone)" if name else ""
    vals["labels"] = c.get("labels", vals["labels"])
    vals["arch"] = c.get("arch", vals["arch"])
    policy = c.get("policy", "zeros")
    vals["policy"], vals["policy_mix"] = (policy, "") if policy in POLICIES else ("zeros", str(policy))
    vals["views"] = list(c.get("views") or [])
    vals["stride16"] = (c.get("arch_kwargs") or {}).get("output_stride") == 16
    for k in AUGMENT_OPTIONS:
        if k in (c.get("augment_options") or {}):
            vals["aug_" + k] = float(c["augment_options"][k])
    vals["backend"] = backend
    vals.update(slurm_to_form(c.get("slurm")))
    same = lambda a, b: str(Path(a).resolve()) == str(Path(b).resolve())  # noqa: E731
    data = c.get("data")
    match = [n for n, p in (datasets or {}).items() if data and same(p, data)]
    vals["dataset"], vals["folder"] = (match[0], "") if match else (None, data or "")
    if c.get("init"):
        vals["start"] = FROM_CHECKPOINT
        match = [n for n, p in (checkpoints or {}).items() if p == c["init"] or same(p, c["init"])]
        vals["ckpt"] = match[0] if match else None
        if not match:
            kept.append(f"init={c['init']!r} (not among the checkpoints found)")
    else:
        vals["start"] = FROM_SCRATCH
    return vals, kept


# --------------------------------------------------------------------------- sweeps

def sweep_spec(values: dict, cls: type | None = None, **fixed):
    """A :class:`~cxrcore.jobs.sweep.SweepSpec` (or ``cls``) from its declared options' ``values`` (by field
    name; those left out keep their default) and the ``fixed`` fields (name, base, space, seed, backend),
    checked against its declaration (ConfigError)."""
    from .jobs import sweep

    cls = cls or sweep.SweepSpec
    spec = cls(**fixed, **{o.name: values[o.name] for o, _ in sweep.spec_options(cls) if o.name in values})
    spec.validate()
    return spec


__all__ = ["FROM_CHECKPOINT", "FROM_SCRATCH", "POLICIES", "config_from_form", "config_value", "form_defaults",
           "form_from_config", "form_options", "slurm_fields", "slurm_form_defaults", "slurm_from_form",
           "slurm_to_form", "sweep_spec", "widget_value"]
