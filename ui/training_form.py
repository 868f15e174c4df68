"""The Training page's launch form: one widget per declared training option (cxrcore/train/config.py
TrainConfig), the page's own fields beside them (dataset, starting point, the custom options, the backend
and the slurm options of cxrcore/jobs/config.py SLURM_OPTIONS), and the sweep part (ui/sweeps.py). What the
values mean (defaults, config <-> form) is cxrcore.launch's; this module only draws the widgets."""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from cxrcore import hosting, launch
from cxrcore.jobs.store import BACKENDS
from cxrcore.labels import LABEL_SPACES
from cxrcore.launch import FROM_CHECKPOINT, FROM_SCRATCH, POLICIES
from cxrcore.train.config import AUGMENT_OPTIONS, GROUPS, SUGGESTED_ARCHS, Option, option
from ui.common import LIBRARY_TAG, choice_label, md_text
from ui.job_view import flash
from ui.sweeps import sweep_form

ARCHS = list(SUGGESTED_ARCHS)  # suggestions: any timm / tv: / xrv: name can be typed
VIEWS = ["PA", "AP", "AP Supine", "LL", "LATERAL"]
K = "tf_"  # widget key prefix of the job form


def _gen() -> int:
    """The form's generation: a clone starts a new one, so its widgets are new and take the clone's values."""
    return int(st.session_state.get("tf_gen", 0))


def _k(name: str) -> str:
    """Widget key of a form field (tests address generation 0 as ``tf_<name>``)."""
    g = _gen()
    return f"{K}{name}" if g == 0 else f"tf{g}_{name}"


def _vals() -> dict:
    """Initial values of the form's widgets: the defaults, or the options of the job being cloned."""
    return st.session_state.get("tf_vals") or launch.form_defaults()


def value(name: str):
    """A form field's current value (its widget's, else its initial value)."""
    return st.session_state.get(_k(name), _vals()[name])


def values() -> dict:
    """Every form field's current value."""
    return {name: value(name) for name in launch.form_defaults()}


def clone_into_form(config: dict, backend: str, name: str, datasets: dict, checkpoints: dict) -> None:
    """Start a new form generation holding a past job's options (what the form cannot show: a note)."""
    vals, kept = launch.form_from_config(config, backend, name, datasets, checkpoints)
    if kept:
        flash("info", "The form cannot show " + md_text(", ".join(kept)) + "; the defaults are shown instead.")
    st.session_state["tf_vals"] = vals
    st.session_state["tf_gen"] = _gen() + 1


# Form widgets get their initial value as an argument, never through Session State: a widget inside
# st.form whose value came only from Session State is sent back by the browser with its own default
# (min value, first option) on the next rerun caused by a widget outside the form.
def _num(col, label: str, name: str, **kw):
    v, hi = _vals()[name], kw.get("max_value")
    if hi is not None and v is not None and v > hi:  # a clone's value over this server's ceiling
        v = type(v)(hi)
    return col.number_input(label, value=v, key=_k(name), **kw)


def _sel(col, label: str, options: list, name: str, **kw):
    v = _vals()[name]
    return col.selectbox(label, options, index=options.index(v) if v in options else 0, key=_k(name), **kw)


def _chk(col, label: str, name: str, **kw):
    return col.checkbox(label, value=bool(_vals()[name]), key=_k(name), **kw)


def _txt(col, label: str, name: str, **kw):
    return col.text_input(label, value=str(_vals()[name] or ""), key=_k(name), **kw)


def option_widget(col, o: Option, access, user, **kw):
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


def option_grid(group: str, access, user, skip: tuple = (), per_row: int = 4, overrides: dict | None = None) -> None:
    """Every declared, non-custom option of ``group``, ``per_row`` to a row."""
    shown = [o for o in launch.form_options() if o.group == group and o.name not in skip]
    for i in range(0, len(shown), per_row):
        for col, o in zip(st.columns(per_row), shown[i:i + per_row]):
            option_widget(col, o, access, user, **(overrides or {}).get(o.name, {}))


def placement_widgets() -> None:
    """The backend (cxrcore.jobs.store.BACKENDS) and one widget per slurm option the form offers
    (cxrcore.launch.slurm_fields: declared in cxrcore/jobs/config.py SLURM_OPTIONS)."""
    slurm = launch.slurm_fields(True)
    cols = st.columns(1 + len(slurm))
    _sel(cols[0], "Backend", list(BACKENDS), "backend",
         help="local: a process on this machine; slurm: sbatch on the cluster this machine submits to.")
    for col, o in zip(cols[1:], slurm):
        label = "Slurm " + o.what.split(" (")[0]
        name = launch.SLURM_PREFIX + o.name
        if launch.slurm_number(o):
            _num(col, f"{label} (0 = default)", name, min_value=0, step=1, help=o.help)
        else:
            _txt(col, label, name, placeholder=f"e.g. {o.example}" if o.example else "default", help=o.help)


@dataclass
class FormInput:
    """What the launch form was submitted with, beside the option values (:func:`values`)."""

    submitted: bool
    sweep_submitted: bool
    folder: str
    dataset: str | None
    checkpoint: str | None
    from_ckpt: bool
    sweep_space: str
    sweep_values: dict


def launch_form(datasets: dict, checkpoints: dict, access, user, blocked: str | None) -> FormInput:
    """The launch form: starting point, the declared options by group, placement, the sweep part, and the
    two submit buttons."""
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
        option_widget(c1, option("name"), access, user, placeholder="e.g. nih-regnet-3ep")
        labels_now = _vals()["labels"]
        _sel(c2, option("labels").label,
             list(LABEL_SPACES) + ([labels_now] if isinstance(labels_now, str) and labels_now not in LABEL_SPACES else []),
             "labels", help=option("labels").help)
        d1, d2 = st.columns(2)
        ds_names = list(datasets)
        ds_index = ds_names.index(_vals()["dataset"]) if _vals()["dataset"] in ds_names else (0 if ds_names else None)
        dataset_name = d1.selectbox("Dataset", ds_names, key=_k("dataset"), index=ds_index,
                                    placeholder="no built-in dataset" if not ds_names else "Choose a dataset")
        folder = _txt(d2, "…or a dataset folder on this machine", "folder", disabled=not access.typed_folders_allowed,
                      placeholder="/path/to/dataset (overrides the choice on the left)",
                      help=option("data").help + (
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
            _sel(a1, option("arch").label, ARCHS + ([arch_now] if arch_now and arch_now not in ARCHS else []),
                 "arch", accept_new_options=True, help=option("arch").help + " Type a name that is not in the list.")
            option_widget(a2, option("pretrained"), access, user)
            _chk(a3, "Output stride 16", "stride16",
                 help="Finer Grad-CAM maps for timm models that have the option (ResNet, RegNet, ConvNeXt, "
                      "EfficientNet); left out, with a note, for those that do not (DenseNet, ViT, tv:, xrv:).")
            option_grid("model", access, user, skip=("pretrained",))
        option_grid("basic", access, user, skip=("name",), per_row=5)

        groups = {**GROUPS, **{o.group: o.group for o in launch.form_options() if o.group not in GROUPS}}
        for group, title in groups.items():
            if group in ("basic", "model"):
                continue
            with st.expander(title):
                if group == "data":
                    u1, u2 = st.columns([1, 3])
                    _sel(u1, option("policy").label, POLICIES, "policy",
                         help="zeros: negative; ones: positive; ignore: left out of loss and metrics.")
                    _txt(u2, "…or a per-label mix", "policy_mix", placeholder="ones:Atelectasis,Edema;zeros",
                         help="Overrides the choice on the left: `policy:Label,Label;default`.")
                    st.multiselect(option("views").label + " (empty = all)",
                                   list(dict.fromkeys(VIEWS + list(_vals()["views"]))),
                                   default=list(_vals()["views"]), key=_k("views"), accept_new_options=True,
                                   help=option("views").help)
                option_grid(group, access, user, overrides={"image_size": {"disabled": from_ckpt}})
                if group == "augmentation":
                    for col, (k, (_, hi, what)) in zip(st.columns(len(AUGMENT_OPTIONS)), AUGMENT_OPTIONS.items()):
                        _num(col, {"p": "probability"}.get(k, k), "aug_" + k, min_value=0.0, max_value=hi,
                             step=0.01 if hi <= 1 else 1.0, help=what)
                if group == "placement":
                    placement_widgets()
        with st.expander("Sweep: many jobs over ranges of these options (Optuna)"):
            sweep_space, sweep_values = sweep_form()
        b_job, b_sweep = st.columns([1, 1])
        submitted = b_job.form_submit_button("Start training", type="primary", key="train_submit",
                                             disabled=blocked is not None)
        sweep_submitted = b_sweep.form_submit_button("Start sweep", key="train_sweep_submit",
                                                     disabled=blocked is not None,
                                                     help="Launch the trials of the sweep set in the Sweep section.")
    return FormInput(bool(submitted), bool(sweep_submitted), folder, dataset_name, ckpt_name, from_ckpt,
                     sweep_space, sweep_values)
