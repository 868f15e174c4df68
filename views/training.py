"""Training: launch background fine-tuning jobs, watch them live, cancel, resume, clone and compare them.

A thin view over :mod:`cxrcore.jobs`: ``local.submit`` / ``slurm.submit`` validate a config and start
a job; this page only reads the job table (SQLite in the workspace), each job's ``events.jsonl``
and ``log.txt``. Jobs keep running when the tab closes, and past jobs are listed again after an app
restart. The form is derived from the declaration of :class:`cxrcore.train.config.TrainConfig`: every
option has a widget (its kind, bounds, choices, label and help decide which), so a new option shows
up here with no edit; a clone fills the form with a past job's options.
"""
from __future__ import annotations

import datetime as dt
import json
from functools import partial
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cxrcore.checkpoint import read_card
from cxrcore.errors import CXRError
from cxrcore.jobs import JobStore
from cxrcore.jobs import dispatch, logfiles, sweep
from cxrcore.jobs.config import SLURM_OPTIONS
from cxrcore.jobs.sweep import sweepable
from cxrcore.jobs.progress import progress_summary
from cxrcore.labels import LABEL_SPACES
from cxrcore.train.config import AUGMENT_OPTIONS, GROUPS, SUGGESTED_ARCHS, Option, TrainConfig, option, options
from cxrcore import hosting
from ui.common import (LIBRARY_TAG, chart_config, checkpoint_choices, choice_label, current_user,
                       dataset_choices, hosting_settings, md_text, show_error)

ARCHS = list(SUGGESTED_ARCHS)  # suggestions: any timm / tv: / xrv: name can be typed
POLICIES = ["zeros", "ones", "ignore"]
VIEWS = ["PA", "AP", "AP Supine", "LL", "LATERAL"]
FROM_CHECKPOINT = "A checkpoint (fine-tune it)"
FROM_SCRATCH = "An architecture (timm, tv:, xrv:)"
STATUS_COLOR = {"queued": "gray", "running": "blue", "succeeded": "green", "failed": "red", "cancelled": "orange"}
STATUS_ICON = {"queued": ":material/schedule:", "running": ":material/directions_run:",
               "succeeded": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/block:"}
REFRESH_S = 2
K = "tf_"  # widget key prefix of the job form

# The form shows every declared training option (cxrcore/train/config.py) that is not `custom`, with a
# widget derived from its declaration; these are the page's own fields beside them (the custom options'
# widgets and where the job runs). Widget keys are K + name (generation 0); a clone starts a new generation.
PAGE_FIELDS: dict = {
    "dataset": None, "folder": "", "ckpt": None, "start": None, "labels": "nih14", "arch": "regnetx_002",
    "stride16": True, "policy": "zeros", "policy_mix": "", "views": [], "backend": "local",
    "slurm_partition": "", "slurm_time": "", "slurm_mem": "", "slurm_cpus": 0,
    **{"aug_" + k: default for k, (default, _, _) in AUGMENT_OPTIONS.items()},
}


def form_options() -> list[Option]:
    """The declared options the form renders by itself (read each run: a new field shows up at once)."""
    return [o for o in options(TrainConfig) if not o.custom]


def _widget_value(o: Option, value):
    """A config value as the widget holds it: None -> 0 (numbers) or '' (text); numbers typed."""
    if o.kind in ("int", "float"):
        return (int if o.kind == "int" else float)(value or 0)
    if o.kind == "bool":
        return bool(value)
    if o.kind == "str":
        return "" if value is None else str(value)
    return value


def _config_value(o: Option, value):
    """A widget's value as the config holds it (the inverse of :func:`_widget_value`)."""
    if o.kind in ("int", "float"):
        value = (int if o.kind == "int" else float)(value)
        return None if o.optional and value == 0 else value
    if o.kind == "str":
        value = (value or "").strip()
        return None if o.optional and not value else value
    if o.kind == "bool":
        return bool(value)
    return value


def defaults() -> dict:
    return {**{o.name: _widget_value(o, o.initial) for o in form_options()}, **PAGE_FIELDS}


# --------------------------------------------------------------------------- small helpers

def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _fmt_time(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "–"


def _events_stamp(job) -> tuple:
    p = Path(job.run_dir) / logfiles.EVENTS_NAME
    try:
        s = p.stat()
    except OSError:
        return (0, 0)
    return (s.st_mtime_ns, s.st_size)


@st.cache_data(show_spinner=False, max_entries=256)
def _summary(run_dir: str, stamp: tuple, _job) -> dict:
    """The progress summary of a job's events; cached until events.jsonl changes."""
    return progress_summary(logfiles.events(_job))


def summary_of(job) -> dict:
    return _summary(job.run_dir, _events_stamp(job), job)


def _md_escape(text: str) -> str:
    """Plain text inside st.error / st.warning: no markdown, link or LaTeX from `__init__` or `$` (ui.common.md_text)."""
    return md_text(text, single_line=False)


def _flash(kind: str, text: str) -> None:
    st.session_state.setdefault("train_flash", []).append((kind, text))


def _show_flash() -> None:
    for kind, text in st.session_state.pop("train_flash", []):
        getattr(st, kind)(text)


def _gen() -> int:
    """The form's generation: a clone starts a new one, so its widgets are new and take the clone's values."""
    return int(st.session_state.get("tf_gen", 0))


def _k(option: str) -> str:
    """Widget key of a form option (tests address generation 0 as ``tf_<option>``)."""
    g = _gen()
    return f"{K}{option}" if g == 0 else f"tf{g}_{option}"


def _vals() -> dict:
    """Initial values of the form's widgets: the defaults, or the options of the job being cloned."""
    return st.session_state.get("tf_vals") or defaults()


def _v(option: str):
    return st.session_state.get(_k(option), _vals()[option])


# Form widgets get their initial value as an argument, never through Session State: a widget inside
# st.form whose value came only from Session State is sent back by the browser with its own default
# (min value, first option) on the next rerun caused by a widget outside the form.
def _num(col, label: str, option: str, **kw):
    value, hi = _vals()[option], kw.get("max_value")
    if hi is not None and value is not None and value > hi:  # a clone's value over this server's ceiling
        value = type(value)(hi)
    return col.number_input(label, value=value, key=_k(option), **kw)


def _sel(col, label: str, options: list, option: str, **kw):
    value = _vals()[option]
    return col.selectbox(label, options, index=options.index(value) if value in options else 0, key=_k(option), **kw)


def _chk(col, label: str, option: str, **kw):
    return col.checkbox(label, value=bool(_vals()[option]), key=_k(option), **kw)


def _txt(col, label: str, option: str, **kw):
    return col.text_input(label, value=str(_vals()[option] or ""), key=_k(option), **kw)


def option_widget(col, o: Option, **kw):
    """The widget of a declared option: its kind, bounds, choices, label and help decide it."""
    if o.kind == "choice":
        offered = [c for c in o.choices if c not in o.hidden]
        names = dict(o.choice_labels)
        return _sel(col, o.label, ([None] if o.optional else []) + offered, o.name, help=o.help,
                    format_func=lambda c: "any" if c is None else names.get(c, c), **kw)
    if o.kind == "bool":
        return _chk(col, o.label, o.name, help=o.help, **kw)
    if o.kind in ("int", "float"):
        num = int if o.kind == "int" else float
        lo = 0 if o.optional else o.min
        hi, note, lim = o.max, "", hosting.limits(access, user)
        for c in hosting.CEILINGS:  # the operator's ceilings on a visitor's job (CXR_MAX_JOB_*): the form's maxima
            if o.name in c.options:
                hi, note = lim.widget_max(c.name, hi), lim.note(c.name)
        bounds = {"min_value": None if lo is None else num(lo), "max_value": None if hi is None else num(hi),
                  "step": num(o.step or 1)}
        if o.fmt:
            bounds["format"] = o.fmt
        return _num(col, o.label + (f" (0 = {o.zero})" if o.optional else ""), o.name,
                    help=o.help + (f" {note}" if note else ""), **bounds, **kw)
    kw.setdefault("placeholder", "auto" if o.optional else None)
    return _txt(col, o.label, o.name, help=o.help, **kw)


def option_grid(group: str, skip: tuple = (), per_row: int = 4, overrides: dict | None = None) -> None:
    """Every declared, non-custom option of ``group``, ``per_row`` to a row."""
    shown = [o for o in form_options() if o.group == group and o.name not in skip]
    for i in range(0, len(shown), per_row):
        for col, o in zip(st.columns(per_row), shown[i:i + per_row]):
            option_widget(col, o, **(overrides or {}).get(o.name, {}))


# --------------------------------------------------------------------------- config <-> form

def config_from_form(data: str, init: str | None) -> tuple[dict, str]:
    """The training config the form describes, and the backend."""
    cfg: dict = {"data": data, **{o.name: _config_value(o, _v(o.name)) for o in form_options()}}
    cfg.update(labels=_v("labels"), policy=(_v("policy_mix") or "").strip() or _v("policy"),
               views=list(_v("views")) or None,
               augment_options={k: float(_v("aug_" + k)) for k in AUGMENT_OPTIONS})
    if init:
        cfg["init"] = init
        for kept in ("pretrained", "image_size"):  # the checkpoint's own preprocessing is kept
            cfg.pop(kept, None)
    else:
        arch = (_v("arch") or "").strip()
        cfg.update(arch=arch, arch_kwargs={})
        cfg.update(_arch_defaults(arch, cfg, bool(_v("stride16"))))
    backend = _v("backend")
    if backend == "slurm":
        slurm = {"partition": _v("slurm_partition").strip(), "time": _v("slurm_time").strip(),
                 "mem": _v("slurm_mem").strip(), "cpus": int(_v("slurm_cpus"))}
        cfg["slurm"] = {k: v for k, v in slurm.items() if v}
    return cfg, backend


def _arch_defaults(arch: str, cfg: dict, stride16: bool) -> dict:
    """The model's own configuration over the form's generic defaults (registry.form_arch_defaults); the
    notes are shown after the submit."""
    from cxrcore.models.registry import form_arch_defaults

    out, notes = form_arch_defaults(arch, cfg.get("image_size"), stride16)
    st.session_state["train_arch_notes"] = notes
    return out


def form_from_config(config: dict, backend: str = "local", name: str = "", datasets: dict | None = None,
                     checkpoints: dict | None = None) -> dict:
    """The form's initial values for a clone of a past job (options the form cannot show keep the default)."""
    c = dict(config)
    vals = defaults()
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
        vals[o.name] = _widget_value(o, value)
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
    slurm = c.get("slurm") or {}
    for k in ("partition", "time", "mem"):
        vals["slurm_" + k] = str(slurm.get(k, ""))
    vals["slurm_cpus"] = int(slurm.get("cpus", 0) or 0)
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
    if kept:
        _flash("info", "The form cannot show " + md_text(", ".join(kept)) + "; the defaults are shown instead.")
    return vals


def _submit(config: dict, backend: str, name: str):
    """Through the job layer's entry point, as this visitor: it checks the operator's launch rights, the
    data roots and the per-person cap before anything is created, and records who launched the job."""
    return dispatch.submit(config, name=name, backend=backend, user=user, settings=access)


# --------------------------------------------------------------------------- page

st.title("Train a classifier in the background")
st.caption("Jobs run as separate processes (or Slurm jobs): closing the tab does not stop them, and past jobs "
           "are listed again after an app restart. A finished job's checkpoint appears in the model pickers "
           "on the Compare, Thresholds and Evaluation pages.")

try:
    store = JobStore()
except CXRError as exc:
    show_error(exc)
    st.stop()
access = hosting_settings()  # the operator's settings: who may launch / cancel / resume, data roots, cap
user = current_user(access)
launch_blocked = hosting.why_not(user, "launch", None, access)


# ---- launch form ---------------------------------------------------------------------------------------------
st.subheader("Launch a training job")
try:
    datasets = dataset_choices()
except CXRError as exc:
    show_error(exc)
    datasets = {}
try:
    checkpoints = checkpoint_choices()
except CXRError as exc:
    show_error(exc)
    checkpoints = {}
if "train_clone" in st.session_state:  # set by the Clone button: a new form generation with the job's options
    st.session_state["tf_vals"] = form_from_config(*st.session_state.pop("train_clone"), datasets=datasets,
                                                   checkpoints=checkpoints)
    st.session_state["tf_gen"] = _gen() + 1
_show_flash()
if launch_blocked:
    st.info(launch_blocked + " You can still watch the jobs below.")
elif access.hosted and hosting.cap_for(user, access):
    st.caption(f"Launching as **{user.display}**; at most {hosting.cap_for(user, access)} queued or running job(s) "
               "per person on this server.")

# Outside the form so that switching it shows the right fields at once.
start_options = [FROM_CHECKPOINT, FROM_SCRATCH]
own = [n for n in checkpoints if not n.endswith(LIBRARY_TAG)]  # trained or shipped (library models may need weights)
start = st.radio("Start from", start_options, horizontal=True,
                 index=start_options.index(_vals()["start"]) if _vals()["start"] else (0 if own else 1),
                 key="train_start" if _gen() == 0 else f"train_start{_gen()}")
from_ckpt = start == FROM_CHECKPOINT
if from_ckpt and not checkpoints:
    st.info("No checkpoints yet: run `cxr demo build`, or train an architecture first.")

with st.form("train_form"):
    c1, c2 = st.columns(2)
    option_widget(c1, option("name", TrainConfig), placeholder="e.g. nih-regnet-3ep")
    labels_now = _vals()["labels"]
    _sel(c2, option("labels", TrainConfig).label,
         list(LABEL_SPACES) + ([labels_now] if isinstance(labels_now, str) and labels_now not in LABEL_SPACES else []),
         "labels", help=option("labels", TrainConfig).help)
    d1, d2 = st.columns(2)
    ds_names = list(datasets)
    ds_index = ds_names.index(_vals()["dataset"]) if _vals()["dataset"] in ds_names else (0 if ds_names else None)
    dataset_name = d1.selectbox("Dataset", ds_names, key=_k("dataset"), index=ds_index,
                                placeholder="no built-in dataset" if not ds_names else "Choose a dataset")
    folder = _txt(d2, "…or a dataset folder on this machine", "folder", disabled=not access.typed_folders_allowed,
                  placeholder="/path/to/dataset (overrides the choice on the left)",
                  help=option("data", TrainConfig).help + (
                      "" if access.typed_folders_allowed else " " + hosting.HOW_TO_ENABLE_FOLDERS) + (
                      " Folders inside: " + ", ".join(map(str, access.data_roots)) if access.roots_configured else ""))
    ckpt_name = None
    if from_ckpt:
        ck_names = list(checkpoints)
        ck_index = ck_names.index(_vals()["ckpt"]) if _vals()["ckpt"] in ck_names else (0 if ck_names else None)
        ckpt_name = st.selectbox("Checkpoint", ck_names, key=_k("ckpt"), index=ck_index,
                                 placeholder="no checkpoints", format_func=choice_label)
        st.caption("The checkpoint's classifier head is swapped to the chosen label space: rows of labels both "
                   "share are kept, new labels start fresh. Its preprocessing (image size, fit) is kept.")
    else:
        a1, a2, a3 = st.columns([2, 1, 1])
        arch_now = _vals()["arch"]
        _sel(a1, option("arch", TrainConfig).label, ARCHS + ([arch_now] if arch_now and arch_now not in ARCHS else []),
             "arch", accept_new_options=True,
             help=option("arch", TrainConfig).help + " Type a name that is not in the list.")
        option_widget(a2, option("pretrained", TrainConfig))
        _chk(a3, "Output stride 16", "stride16",
             help="Finer Grad-CAM maps for timm models that have the option (ResNet, RegNet, ConvNeXt, "
                  "EfficientNet); left out, with a note, for those that do not (DenseNet, ViT, tv:, xrv:).")
        option_grid("model", skip=("pretrained",))
    option_grid("basic", skip=("name",), per_row=5)

    for group, title in {**GROUPS, **{o.group: o.group for o in form_options() if o.group not in GROUPS}}.items():
        if group in ("basic", "model"):
            continue
        with st.expander(title):
            if group == "data":
                u1, u2 = st.columns([1, 3])
                _sel(u1, option("policy", TrainConfig).label, POLICIES, "policy",
                     help="zeros: negative; ones: positive; ignore: left out of loss and metrics.")
                _txt(u2, "…or a per-label mix", "policy_mix", placeholder="ones:Atelectasis,Edema;zeros",
                     help="Overrides the choice on the left: `policy:Label,Label;default`.")
                st.multiselect(option("views", TrainConfig).label + " (empty = all)",
                               list(dict.fromkeys(VIEWS + list(_vals()["views"]))),
                               default=list(_vals()["views"]), key=_k("views"), accept_new_options=True,
                               help=option("views", TrainConfig).help)
            option_grid(group, overrides={"image_size": {"disabled": from_ckpt}})
            if group == "augmentation":
                for col, (k, (_, hi, what)) in zip(st.columns(len(AUGMENT_OPTIONS)), AUGMENT_OPTIONS.items()):
                    _num(col, {"p": "probability"}.get(k, k), "aug_" + k, min_value=0.0, max_value=hi,
                         step=0.01 if hi <= 1 else 1.0, help=what)
            if group == "placement":
                y0, y1, y2, y3, y4 = st.columns(5)
                _sel(y0, "Backend", ["local", "slurm"], "backend",
                     help="local: a process on this machine; slurm: sbatch on the cluster this machine submits to.")
                _txt(y1, "Slurm partition", "slurm_partition", placeholder="default",
                     help=SLURM_OPTIONS["partition"].help)
                _txt(y2, "Slurm time", "slurm_time", placeholder=f"e.g. {SLURM_OPTIONS['time'].example}",
                     help=SLURM_OPTIONS["time"].help)
                _txt(y3, "Slurm memory", "slurm_mem", placeholder=f"e.g. {SLURM_OPTIONS['mem'].example}",
                     help=SLURM_OPTIONS["mem"].help)
                _num(y4, "Slurm CPUs per task (0 = default)", "slurm_cpus", min_value=0, step=1,
                     help=SLURM_OPTIONS["cpus"].help)
    with st.expander("Sweep: many jobs over ranges of these options (Optuna)"):
        st.caption("Every trial is an ordinary job with the options above, except those listed here. One per line: "
                   "`option = low .. high` (add `log` for a log scale; random / TPE) or `option = v1, v2, …` "
                   "(any sampler; a grid tries every combination).")
        sweep_space = st.text_area("Options to vary", key="sweep_space", height=100,
                                   placeholder="lr = 1e-4 .. 1e-2 log\nimage_size = 48, 64, 96",
                                   help="Options a sweep can vary: " + ", ".join(sorted(sweepable())))
        w1, w2, w3, w4, w5 = st.columns(5)
        sweep_sampler = w1.selectbox("Sampler", ["tpe", "random", "grid"], key="sweep_sampler",
                                     format_func={"tpe": "TPE (Optuna)", "random": "random", "grid": "grid"}.get)
        sweep_trials = w2.number_input("Trials", min_value=1, max_value=500, value=6, step=1, key="sweep_trials")
        sweep_parallel = w3.number_input("At once", min_value=1, max_value=64, value=2, step=1, key="sweep_parallel")
        sweep_metric = w4.selectbox("Judged on", ["auroc", "loss"], key="sweep_metric",
                                    format_func={"auroc": "val mean AUROC", "loss": "val loss"}.get)
        sweep_prune = w5.checkbox("Prune", value=True, key="sweep_prune",
                                  help="Stop an unpromising trial early: Optuna's median pruner on each epoch's "
                                       "validation metric, after the first completed trials (below).")
        sweep_prune_after = w5.number_input("…after completed trials", min_value=0, max_value=100, value=2, step=1,
                                            key="sweep_prune_after")
    b_job, b_sweep = st.columns([1, 1])
    submitted = b_job.form_submit_button("Start training", type="primary", key="train_submit",
                                         disabled=launch_blocked is not None)
    sweep_submitted = b_sweep.form_submit_button("Start sweep", key="train_sweep_submit",
                                                 disabled=launch_blocked is not None,
                                                 help="Launch the trials of the sweep set in the Sweep section.")

if submitted or sweep_submitted:
    data = folder.strip() or (datasets.get(dataset_name) if dataset_name else None)
    init = (checkpoints.get(ckpt_name) if ckpt_name else None) if from_ckpt else None
    try:
        if folder.strip():  # typed: symlinks and .. resolved, the operator's data roots checked (the job layer too)
            data = str(hosting.resolve_data_path(folder, access))
        if not data:
            raise CXRError("Choose a dataset or type the path of a dataset folder.")
        if from_ckpt and not init:
            raise CXRError("Choose a checkpoint to start from, or start from an architecture.")
        hosting.check_model_ref(init, access)  # a shared server: listed names and folders inside the roots only,
        hosting.check_model_ref(None if from_ckpt else _v("arch"), access, arch=True)  # before anything reads it
        config, backend = config_from_form(data, init)
        if sweep_submitted:
            spec = sweep.SweepSpec(name=_v("name").strip() or "sweep", base=config, space=sweep.parse_space(sweep_space),
                                   sampler=sweep_sampler, n_trials=int(sweep_trials), parallel=int(sweep_parallel),
                                   metric=sweep_metric, prune=bool(sweep_prune), prune_after=int(sweep_prune_after),
                                   backend=backend)
            with st.spinner("Checking the configuration and starting the first trials…"):
                sweep_id = sweep.create(spec, store, user=user, settings=access)
            job = None
        else:
            with st.spinner("Checking the configuration and starting the job…"):
                job = _submit(config, backend, _v("name").strip())
    except Exception as exc:  # noqa: BLE001 - CXRError as a message; anything else without a traceback
        show_error(exc)
    else:
        if job is None:
            st.success(f"Started sweep **{sweep_id}**: {spec.n_trials} trials, {spec.parallel} at a time. Its "
                       "trials are listed with the jobs below; the results are under **Sweeps** at the end of the page.")
            st.session_state["train_sweep"] = sweep_id
        else:
            waiting = job.status == "queued" and not job.pid
            st.success(f"{'Queued' if waiting else 'Started'} job **{job.id}** ({md_text(job.name)}) on {job.backend}. "
                       "It runs in the background; watch it below.")
            st.session_state["train_watch"] = job.id
        for note in st.session_state.pop("train_arch_notes", []):
            st.info(note)

# ---- machine -----------------------------------------------------------------------------------------------------


@st.fragment(run_every=5)
def gpu_panel() -> None:
    from cxrcore.jobs import gpus

    rows = gpus.utilisation()
    if not rows:
        why = gpus.nvml_problem()  # None: NVML answered and counts no GPU
        st.caption("GPUs: none visible through NVML on this machine" + (f" — {why}" if why else "")
                   + "; local jobs train on the CPU.")
        return
    st.dataframe(pd.DataFrame([{"GPU": r["index"], "name": r["name"], "busy %": r["util_percent"],
                                "memory used (MiB)": r["mem_used_mib"], "memory total (MiB)": r["mem_total_mib"]}
                               for r in rows]), hide_index=True)


gpu_panel()

# ---- jobs table ------------------------------------------------------------------------------------------------
st.subheader("Jobs")
try:
    dispatch.refresh_all(store)
    jobs = store.list(limit=200)
except CXRError as exc:
    show_error(exc)
    st.stop()

if not jobs:
    st.info("No jobs yet. Launch one above.")
    st.stop()

rows = []
for j in jobs:
    try:
        s = summary_of(j)
    except Exception:  # noqa: BLE001 - an unreadable events file must not break the table
        s = progress_summary([])
    note = (getattr(j, "note", None) or "") if j.active else ""
    rows.append({"id": j.id, "name": j.name, "status": j.status, "launched by": hosting.owner_display(j.owner),
                 "backend": j.backend,
                 "mode": (j.config or {}).get("mode", "full"), "progress": float(s["fraction"]),
                 "best val AUROC": s["best_val_mean_auroc"], "created": _fmt_time(j.created),
                 "duration": _fmt_seconds(j.duration), "note": note})
st.dataframe(pd.DataFrame(rows), hide_index=True, placeholder="–",
             column_config={"best val AUROC": st.column_config.NumberColumn(format="%.3f"),
                            "progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent")})

by_id = {j.id: j for j in jobs}
ids = list(by_id)
if st.session_state.get("train_watch") not in by_id:
    st.session_state["train_watch"] = ids[0]
watch = st.selectbox("Watch job", ids, key="train_watch",
                     format_func=lambda i: f"{i} — {by_id[i].name or 'unnamed'} ({by_id[i].status})")
# The states the table and this list show; the job view reruns the page when the watched job has moved on.
st.session_state["train_listed_status"] = {i: j.status for i, j in by_id.items()}


# ---- live view -------------------------------------------------------------------------------------------------

def _layout(fig: go.Figure, title: str, height: int = 320) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def _curves_figure(s: dict) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if s["loss_curve"]:
        steps, losses = zip(*s["loss_curve"])
        fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name="loss"), secondary_y=False)
    if s["lr_curve"]:
        steps, lrs = zip(*s["lr_curve"])
        fig.add_trace(go.Scatter(x=steps, y=lrs, mode="lines", name="learning rate", line=dict(dash="dot")),
                      secondary_y=True)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="training loss", secondary_y=False)
    fig.update_yaxes(title_text="learning rate", secondary_y=True, exponentformat="e")
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return _layout(fig, "Loss and learning rate per step")


def _mark_best(fig: go.Figure, s: dict) -> None:
    if s.get("best_x") is not None:
        fig.add_vline(x=s["best_x"], line=dict(color="green", dash="dash", width=1),
                      annotation_text=f"best (epoch {s['best_x']:g})", annotation_position="top left")


def _val_loss_figure(s: dict) -> go.Figure:
    """Training loss (mean per epoch) and validation loss (each validation) against epochs, best marked."""
    fig = go.Figure()
    if s["epoch_loss_curve"]:
        ep, lo = zip(*s["epoch_loss_curve"])
        fig.add_trace(go.Scatter(x=ep, y=lo, mode="lines+markers", name="training loss (epoch mean)"))
    if s["val_loss_curve"]:
        ep, lo = zip(*s["val_loss_curve"])
        fig.add_trace(go.Scatter(x=ep, y=lo, mode="lines+markers", name="validation loss"))
    _mark_best(fig, s)
    fig.update_layout(xaxis_title="epoch", yaxis_title="loss (same masked loss as training)",
                      legend=dict(orientation="h", y=-0.25))
    return _layout(fig, "Training and validation loss", 360)


def _metrics_figure(s: dict) -> go.Figure:
    fig = go.Figure()
    pts = [(e, a) for e, a in s["auroc_curve"] if a is not None]
    if pts:
        ep, au = zip(*pts)
        fig.add_trace(go.Scatter(x=ep, y=au, mode="lines+markers", name="mean AUROC"))
    for name, curve in s["metric_curves"].items():
        if curve:
            ep, v = zip(*curve)
            fig.add_trace(go.Scatter(x=ep, y=v, mode="lines+markers", name=name if name != "F1" else
                                     "macro F1 (val-tuned thresholds)"))
    _mark_best(fig, s)
    fig.update_layout(xaxis_title="epoch", yaxis=dict(range=[0, 1]), legend=dict(orientation="h", y=-0.25))
    return _layout(fig, "Validation metrics", 360)


def _history_csv(s: dict) -> bytes:
    rows = [{**{k: v for k, v in h.items() if k != "val_auroc"},
             **{f"val_auroc[{k}]": v for k, v in (h.get("val_auroc") or {}).items()}} for h in s["history"]]
    return pd.DataFrame(rows).to_csv(index=False).encode()


def _auroc_figure(s: dict) -> go.Figure:
    fig = go.Figure()
    for label, pts in s["auroc_history"].items():
        pts = [(e, a) for e, a in pts if a is not None]
        if pts:
            ep, au = zip(*pts)
            fig.add_trace(go.Scatter(x=ep, y=au, mode="lines", name=label, opacity=0.45, line=dict(width=1)))
    pts = [(e, a) for e, a in s["auroc_curve"] if a is not None]
    if pts:
        ep, au = zip(*pts)
        fig.add_trace(go.Scatter(x=ep, y=au, mode="lines+markers", name="mean", line=dict(width=3, color="black")))
    fig.update_layout(xaxis_title="epoch", yaxis_title="AUROC", xaxis=dict(dtick=1), yaxis=dict(range=[0, 1]))
    return _layout(fig, "Validation AUROC per epoch (mean and per label)", 380)


def _progress_text(s: dict, job) -> str:
    phase = s["phase"]
    if job.ended and phase not in ("done", "stopped"):
        phase = f"{job.status} while {phase}"
    parts = [phase]
    if s.get("network") and phase != "done":
        k = list(s["networks"]).index(s["network"]) + 1
        parts.append(f"{s['network']} network ({k}/2)")
    if s["epochs"]:
        parts.append(f"epoch {s['epoch'] or 0}/{s['epochs']}")
    if s["total_steps"]:
        parts.append(f"step {s['step']}/{s['total_steps']}")
    if s["images_per_s"] is not None:
        parts.append(f"{s['images_per_s']:.1f} images/s")
    if s["eta_seconds"] is not None and s["phase"] == "training":
        parts.append(f"ETA {_fmt_seconds(s['eta_seconds'])}")
    if s["resumes"]:
        parts.append(f"resumed {s['resumes']}×")
    if s["phase"] == "preparing" and job.active:
        parts.append("reading the data and building the image cache")
    return " · ".join(parts)


def _run_action(action, job, spinner: str, kind: str, message) -> None:
    """Run ``action(job_id, store)``; on success flash ``message(job)`` and redraw the page."""
    try:
        with st.spinner(spinner):
            after = action(job.id, store)
    except CXRError as exc:
        show_error(exc)
    else:
        _flash(kind, message(after))
        st.rerun()


def _actions(job) -> None:
    b1, b2 = st.columns(2)
    # The buttons follow the operator's rights; dispatch.cancel / resume check them again for this user.
    no_cancel = hosting.why_not(user, "cancel", job, access)
    no_resume = hosting.why_not(user, "resume", job, access)
    if job.active and b1.button("Cancel job", key=f"train_cancel_{job.id}", disabled=no_cancel is not None,
                                help=no_cancel):
        _run_action(partial(dispatch.cancel, user=user, settings=access), job, "Stopping the job…", "warning",
                    lambda j: f"Job {j.id} is {j.status}.")
    if job.status in ("cancelled", "failed") and b1.button(
            "Resume job", key=f"train_resume_{job.id}", type="primary", disabled=no_resume is not None,
            help=no_resume or "Continue from the last complete epoch."):
        _run_action(partial(dispatch.resume, user=user, settings=access), job, "Resuming…", "success",
                    lambda j: f"Job {j.id} resumes from its last complete epoch.")
    if b2.button("Clone into the form", key=f"train_clone_{job.id}",
                 help="Fill the launch form with this job's options, to change some and launch a new job."):
        st.session_state["train_clone"] = (job.config, job.backend, job.name)
        st.rerun()


def _curves(s: dict, key: str) -> None:
    """Loss / AUROC curves, per-validation history and per-label AUROC of one training (one network)."""
    g1, g2 = st.columns(2)
    if s["loss_curve"]:
        g1.plotly_chart(_curves_figure(s), key=f"train_loss_{key}", config=chart_config())
    else:
        g1.caption("The loss curve appears with the first training step.")
    if any(a is not None for _, a in s["auroc_curve"]):
        g2.plotly_chart(_auroc_figure(s), key=f"train_auroc_{key}", config=chart_config())
    else:
        g2.caption("Validation AUROC appears after the first epoch.")
    if s["history"]:
        best = (f"best checkpoint: epoch {s['best_x']:g}, chosen on "
                + ("validation loss" if s["monitor"] == "loss" else "validation mean AUROC")) if s["best_x"] is not None else ""
        st.caption("Per validation: " + best)
        h1, h2 = st.columns(2)
        h1.plotly_chart(_val_loss_figure(s), key=f"train_valloss_{key}", config=chart_config())
        h2.plotly_chart(_metrics_figure(s), key=f"train_metrics_{key}", config=chart_config())
        st.download_button("History as CSV", _history_csv(s), file_name=f"history-{key}.csv", mime="text/csv",
                           key=f"train_history_csv_{key}",
                           help="One row per validation: losses, mean AUROC / AP, macro F1 and accuracy at the "
                                "validation-tuned thresholds, learning rate, and AUROC per label.")

    if s["per_label_auroc"]:
        last_epoch = s["auroc_curve"][-1][0] if s["auroc_curve"] else s["epoch"]
        with st.expander(f"Per-label validation AUROC, epoch {last_epoch}"):
            table = pd.DataFrame({"label": list(s["per_label_auroc"]), "AUROC": list(s["per_label_auroc"].values())})
            st.dataframe(table, hide_index=True, key=f"train_perlabel_{key}", placeholder="n/a",
                         column_config={"AUROC": st.column_config.NumberColumn(
                             format="%.3f", help="n/a: no positive (or no negative) case in the validation split.")})



def render_job(job_id: str, live: bool) -> None:
    try:
        job = dispatch.refresh(job_id, store)
    except CXRError as exc:
        show_error(exc)
        return
    if live and job.ended:
        st.rerun()  # the job just ended: redraw the whole page once (table too), without auto refresh
    if st.session_state.get("train_listed_status", {}).get(job.id, job.status) != job.status:
        st.rerun()  # it moved on since the table and the watch list were drawn: redraw them with its state
    _show_flash()
    try:
        s = summary_of(job)
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
        s = progress_summary([])

    h1, h2 = st.columns([3, 1])
    h1.markdown(f"#### {md_text(job.name or 'unnamed')} · `{job.id}`")  # a name any visitor typed: escaped
    with h2:
        st.badge(job.status, icon=STATUS_ICON.get(job.status), color=STATUS_COLOR.get(job.status, "gray"))
    where = job.backend + (f" job {job.backend_id}" if getattr(job, "backend_id", None) else "")
    if job.pid and job.active and job.backend == "local":
        where += f" · pid {job.pid}"
    gpu_ids = getattr(job, "gpu_ids", None)
    if gpu_ids:
        where += f" · GPUs {gpu_ids}"
    st.caption(f"Created {_fmt_time(job.created)} · started {_fmt_time(job.started)} · "
               f"duration {_fmt_seconds(job.duration)} · {where}")

    st.progress(float(s["fraction"]), text=_progress_text(s, job))
    _actions(job)

    if job.status == "failed":
        first, _, rest = (job.error or "no message").partition("\n")
        st.error(f"The job failed: {_md_escape(first)}")
        if rest.strip():
            st.code(rest, language=None)
    elif job.status == "cancelled":
        st.warning(_md_escape(job.error or "The job was cancelled."))
    elif job.status == "queued" and getattr(job, "note", None):
        st.info(_md_escape(job.note))
    ckpt = Path(job.run_dir) / "checkpoint"
    if job.ended and (ckpt / "card.json").exists():
        msg = (f"Checkpoint: `{ckpt}`  \nIt now appears in the model pickers on the Compare and Thresholds "
               f"pages as **run {job.id}**.")
        if job.status == "succeeded":
            st.success(msg)
        else:
            st.info("The best checkpoint so far was kept. " + msg)

    m = st.columns(6)
    m[0].metric("Best val mean AUROC", "–" if s["best_val_mean_auroc"] is None else f"{s['best_val_mean_auroc']:.3f}",
                help=f"epoch {s['best_epoch']}" if s["best_epoch"] else None)
    m[1].metric("Test mean AUROC", "–" if s["test_mean_auroc"] is None else f"{s['test_mean_auroc']:.3f}")
    m[2].metric("Last loss", "–" if s["last_loss"] is None else f"{s['last_loss']:.4f}")
    m[3].metric("Images/s", "–" if s["images_per_s"] is None else f"{s['images_per_s']:.1f}",
                help=f"{s['world_size']} processes" if s["world_size"] > 1 else None)
    m[4].metric("ETA", _fmt_seconds(s["eta_seconds"]) if job.active else "–")
    trainable = s["trainable_params"]
    m[5].metric("Trainable parameters", "–" if trainable is None else f"{trainable / 1e6:.2f} M",
                help=None if trainable is None else
                f"{trainable:,} of {s['total_params']:,} ({100 * trainable / max(1, s['total_params']):.1f} %), "
                f"mode {s['mode']}")
    if s["gpu_mem_mib"] is not None:
        st.caption(f"Peak GPU memory this epoch: {s['gpu_mem_mib']:.0f} MiB")
    box = s.get("box_supervision")
    if box:
        last = "" if box["last"] is None else f"; last step's box term {box['last']:.3f} (0 = every map's mass on its boxes)"
        st.caption(f"Box supervision, weight {box['weight']:g}: {box['images']} training images with boxes, "
                   f"{box['pairs']} image-label pairs{last}.")
    if s["early_stopped"]:
        watched = "validation loss" if s["monitor"] == "loss" else "validation mean AUROC"
        st.caption(f"Early stopping: no better {watched} after epoch {s['best_epoch']}.")
    if s["overfitting"]:
        st.warning(s["overfitting"])

    if s.get("networks"):
        names = {"gate": "Gate network (Any finding, every image)", "disease": "Disease network (abnormal images)"}
        st.caption("Two networks, trained one after the other, each with its own optimiser and checkpoint "
                   f"(`{job.run_dir}/gate`, `{job.run_dir}/disease`); the combined model is the run's checkpoint.")
        tabs = st.tabs([names.get(r, r) for r in s["networks"]])
        for tab, (role, sub) in zip(tabs, s["networks"].items()):
            with tab:
                _curves(sub, f"{job.id}_{role}")
    else:
        _curves(s, job.id)

    st.markdown("**Log** (last 40 lines)")
    st.code(dispatch.logs(job, 40) or "(no output yet)", language=None)
    with st.expander("Configuration"):
        st.code(json.dumps(job.config, indent=2), language="json")


@st.fragment(run_every=REFRESH_S)
def live_view(job_id: str) -> None:
    render_job(job_id, live=True)


@st.fragment
def ended_view(job_id: str) -> None:
    render_job(job_id, live=False)


st.subheader("Selected job")
try:
    watched = dispatch.refresh(watch, store)
except CXRError as exc:
    show_error(exc)
    st.stop()
if watched.active:
    live_view(watched.id)
else:
    ended_view(watched.id)


# ---- comparison ------------------------------------------------------------------------------------------------

def _config_diff(a: dict, b: dict) -> pd.DataFrame:
    keys = sorted(set(a) | set(b))
    rows = [{"option": k, "A": json.dumps(a.get(k)), "B": json.dumps(b.get(k))} for k in keys
            if a.get(k) != b.get(k) and k not in ("name",)]
    return pd.DataFrame(rows, columns=["option", "A", "B"])


def compare_runs(a, b) -> None:
    sa, sb = summary_of(a), summary_of(b)
    names = {"A": f"A · {a.name or a.id}", "B": f"B · {b.name or b.id}"}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Validation mean AUROC per epoch", "Training loss per epoch"))
    for tag, s, color in (("A", sa, "#1f77b4"), ("B", sb, "#d62728")):
        pts = [(e, v) for e, v in s["auroc_curve"] if v is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=names[tag], line=dict(color=color), legendgroup=tag), row=1, col=1)
        if s["epoch_loss_curve"]:
            fig.add_trace(go.Scatter(x=[p[0] for p in s["epoch_loss_curve"]], y=[p[1] for p in s["epoch_loss_curve"]],
                                     mode="lines+markers", name=names[tag], line=dict(color=color), legendgroup=tag,
                                     showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
    st.plotly_chart(fig, key="train_cmp_fig", config=chart_config())

    def final(job, s) -> dict:
        try:
            metrics = read_card(Path(job.run_dir) / "checkpoint").metrics
            return {"val": metrics.get("val", {}), "test": metrics.get("test", {})}
        except CXRError:  # no checkpoint yet (or a damaged one): the live summary of the events
            return {"val": {"auroc": s["per_label_auroc"], "mean_auroc": s["best_val_mean_auroc"]}, "test": {}}

    fa, fb = final(a, sa), final(b, sb)
    labels = list(dict.fromkeys(list((fa["val"].get("auroc") or {})) + list((fb["val"].get("auroc") or {}))))
    rows = [{"": "mean", "A val": fa["val"].get("mean_auroc"), "B val": fb["val"].get("mean_auroc"),
             "A test": fa["test"].get("mean_auroc"), "B test": fb["test"].get("mean_auroc")}]
    for x in labels:
        rows.append({"": x, "A val": (fa["val"].get("auroc") or {}).get(x), "B val": (fb["val"].get("auroc") or {}).get(x),
                     "A test": (fa["test"].get("auroc") or {}).get(x), "B test": (fb["test"].get("auroc") or {}).get(x)})
    table = pd.DataFrame(rows)
    table["B − A (test)"] = pd.to_numeric(table["B test"], errors="coerce") - pd.to_numeric(table["A test"], errors="coerce")
    fmt = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(table, hide_index=True, placeholder="–", key="train_cmp_table",
                 column_config={c: fmt for c in table.columns if c})
    st.download_button("Download the comparison (CSV)", table.to_csv(index=False).encode(), "run_comparison.csv",
                       "text/csv", key="train_cmp_csv")
    diff = _config_diff(a.config or {}, b.config or {})
    st.markdown("**Options that differ**")
    if diff.empty:
        st.caption("The two runs have the same options.")
    else:
        st.dataframe(diff, hide_index=True, key="train_cmp_diff")


st.subheader("Compare two runs")
if len(ids) < 2:
    st.caption("Two or more jobs are needed for a comparison.")
else:
    r1, r2 = st.columns(2)
    fmt = lambda i: f"{i} — {by_id[i].name or 'unnamed'} ({by_id[i].status})"  # noqa: E731
    run_a = r1.selectbox("Run A", ids, index=min(1, len(ids) - 1), key="train_cmp_a", format_func=fmt)
    run_b = r2.selectbox("Run B", ids, index=0, key="train_cmp_b", format_func=fmt)
    if run_a == run_b:
        st.caption("Pick two different runs.")
    else:
        try:
            compare_runs(by_id[run_a], by_id[run_b])
        except Exception as exc:  # noqa: BLE001 - an unreadable run must not break the page
            show_error(exc)


# ---- sweeps ------------------------------------------------------------------------------------------------------

def render_sweep(sweep_id: str) -> bool:
    """A sweep's trials table, Optuna's plots and the best trial; True while trials are at work."""
    try:
        # Records ended trials and starts due ones, as the sweep's owner (not this visitor), within their cap.
        sweep.advance(sweep_id, store, settings=access)
        table = sweep.results(sweep_id, store)
        study, spec = sweep.load(sweep_id, store)
    except Exception as exc:  # noqa: BLE001 - a damaged sweep database must not break the page
        show_error(exc)
        return False
    states = table["state"].tolist() if len(table) else []
    at_work = sum(x in ("queued", "running", "finishing") for x in states)
    n = {x: states.count(x) for x in set(states)}
    st.caption(f"{spec.sampler} sampler over " + "; ".join(md_text(f"{k} = {p.describe()}") for k, p in spec.space.items())
               + f" · {len(table)}/{spec.n_trials} trials made, {spec.parallel} at a time · "
               + ", ".join(f"{v} {k}" for k, v in sorted(n.items()))
               + (f" · judged on {'validation mean AUROC' if spec.metric == 'auroc' else 'validation loss'}")
               + (" · pruning on" if spec.prune else "") + (" · stopped" if study.user_attrs.get("stopped") else ""))
    waiting = study.user_attrs.get("waiting")
    if waiting and not study.user_attrs.get("stopped"):
        st.info(waiting[:1].upper() + waiting[1:])  # its trials are launched as its owner: their cap, their right
    metric_col = [c for c in table.columns if c.startswith("best val")]
    st.dataframe(table, hide_index=True, placeholder="–", key=f"train_sweep_table_{sweep_id}",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in metric_col})
    st.download_button("Trials as CSV", table.to_csv(index=False).encode(), f"{sweep_id}.csv", "text/csv",
                       key=f"train_sweep_csv_{sweep_id}")
    figs = sweep.figures(sweep_id, store)
    f1, f2 = st.columns(2)
    for col, key, title in ((f1, "parallel", "Parallel coordinates"), (f2, "importance", "Option importance")):
        fig = figs[key]
        with col:
            st.markdown(f"**{title}**")
            if isinstance(fig, str):
                st.caption(fig)
            else:
                fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), title=None)
                st.plotly_chart(fig, key=f"train_sweep_{key}_{sweep_id}", config=chart_config())
    best = sweep.best_job(sweep_id, store)
    if best is not None:
        value = study.best_value
        st.success(f"Best trial: job **{best.id}** ({md_text(best.name)}), "
                   f"{'val mean AUROC' if spec.metric == 'auroc' else 'val loss'} {value:.4f}. Its checkpoint is in "
                   f"the model pickers as **run {best.id}**.")
        if st.button("Clone the best trial into the form", key=f"train_sweep_clone_{sweep_id}", type="primary"):
            st.session_state["train_clone"] = (best.config, best.backend, best.name)
            st.rerun()
    # Stopping is cancelling the owner's work: the owner or an admin (sweep.stop checks it again).
    no_stop = sweep.why_not_stop(sweep_id, user, store, access)
    if st.button("Stop the sweep (no new trials)", key=f"train_sweep_stop_{sweep_id}", help=no_stop,
                 disabled=bool(study.user_attrs.get("stopped")) or no_stop is not None):
        try:
            sweep.stop(sweep_id, store, user=user, settings=access)
        except CXRError as exc:
            show_error(exc)
        else:
            st.rerun()
    if no_stop and not study.user_attrs.get("stopped"):
        st.caption(no_stop)
    return at_work > 0 or bool(waiting and not study.user_attrs.get("stopped"))


@st.fragment(run_every=REFRESH_S * 2)
def live_sweep(sweep_id: str) -> None:
    if not render_sweep(sweep_id):
        st.rerun()  # the sweep has ended: redraw the page once, without auto refresh


@st.fragment
def ended_sweep(sweep_id: str) -> None:
    render_sweep(sweep_id)


try:
    sweeps = sweep.list_sweeps(store)
except Exception as exc:  # noqa: BLE001
    show_error(exc)
    sweeps = []
if sweeps:
    st.subheader("Sweeps")
    sweep_ids = [r["id"] for r in sweeps]
    names = {r["id"]: f"{r['name']} · {r['id']} ({r['trials']}/{r['planned']} trials)" for r in sweeps}
    if st.session_state.get("train_sweep") not in sweep_ids:
        st.session_state["train_sweep"] = sweep_ids[0]
    chosen = st.selectbox("Sweep", sweep_ids, key="train_sweep", format_func=names.get)
    trials = sweep.results(chosen, store)
    waits = any(r["id"] == chosen and r["waiting"] and not r["stopped"] for r in sweeps)  # for a job slot
    busy = waits or (len(trials) and trials["state"].isin(["queued", "running", "finishing", "waiting"]).any())
    if busy:
        live_sweep(chosen)
    else:
        ended_sweep(chosen)
