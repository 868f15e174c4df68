"""Training: launch background fine-tuning jobs, watch them live and cancel them.

A thin view over :mod:`cxrcore.jobs`: ``local.submit`` validates a config and starts a detached
runner process; this page only reads the job table (SQLite in the workspace), each job's
``events.jsonl`` and ``log.txt``. Jobs keep running when the tab closes, and past jobs are
listed again after an app restart.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrcore.errors import CXRError
from cxrcore.jobs import JobStore
from cxrcore.jobs import local
from cxrcore.labels import LABEL_SPACES
from ui.common import checkpoint_choices, dataset_choices, show_error

ARCHS = ["regnetx_002", "resnet18", "densenet121", "efficientnet_b0", "convnext_atto", "mobilenetv3_small_100"]
POLICIES = ["zeros", "ones", "ignore"]
FROM_CHECKPOINT = "A checkpoint (fine-tune it)"
FROM_SCRATCH = "A fresh timm architecture"
STATUS_COLOR = {"queued": "gray", "running": "blue", "succeeded": "green", "failed": "red", "cancelled": "orange"}
STATUS_ICON = {"queued": ":material/schedule:", "running": ":material/directions_run:",
               "succeeded": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/block:"}
REFRESH_S = 2


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
    p = Path(job.run_dir) / local.EVENTS_NAME
    try:
        s = p.stat()
    except OSError:
        return (0, 0)
    return (s.st_mtime_ns, s.st_size)


@st.cache_data(show_spinner=False, max_entries=256)
def _summary(run_dir: str, stamp: tuple, _job) -> dict:
    """The progress summary of a job's events; cached until events.jsonl changes."""
    return local.progress_summary(local.events(_job))


def summary_of(job) -> dict:
    return _summary(job.run_dir, _events_stamp(job), job)


def _md_escape(text: str) -> str:
    """Plain text inside st.error / st.warning: no markdown emphasis or LaTeX from `__init__` or `$`."""
    return "".join("\\" + c if c in "\\`*_[]<>#~$|" else c for c in text)


def _flash(kind: str, text: str) -> None:
    st.session_state.setdefault("train_flash", []).append((kind, text))


def _show_flash() -> None:
    for kind, text in st.session_state.pop("train_flash", []):
        getattr(st, kind)(text)


# --------------------------------------------------------------------------- page

st.title("Train a classifier in the background")
st.caption("Jobs run as separate processes on this machine: closing the tab does not stop them, and past jobs "
           "are listed again after an app restart. A finished job's checkpoint appears in the model pickers "
           "on the Compare and Thresholds pages.")

try:
    store = JobStore()
except CXRError as exc:
    show_error(exc)
    st.stop()

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

# Outside the form so that switching it shows the right fields at once.
start_options = [FROM_CHECKPOINT, FROM_SCRATCH]
start = st.radio("Start from", start_options, index=1 if not checkpoints else 0, horizontal=True,
                 key="train_start")
from_ckpt = start == FROM_CHECKPOINT
if from_ckpt and not checkpoints:
    st.info("No checkpoints yet: run `cxr demo build`, or train a fresh architecture first.")

with st.form("train_form"):
    c1, c2 = st.columns(2)
    name = c1.text_input("Job name", key="train_name", placeholder="e.g. nih-regnet-3ep",
                         help="Shown in the jobs table and on the checkpoint card; empty: the dataset folder's name.")
    labels = c2.selectbox("Label space", list(LABEL_SPACES), key="train_labels",
                          help="The labels the model predicts. Labels the dataset lacks are left out of the loss.")
    d1, d2 = st.columns(2)
    ds_names = list(datasets)
    dataset_name = d1.selectbox("Dataset", ds_names, key="train_dataset", index=0 if ds_names else None,
                                placeholder="no built-in dataset" if not ds_names else "Choose a dataset")
    folder = d2.text_input("…or a dataset folder on this machine", key="train_folder",
                           placeholder="/path/to/dataset (overrides the choice on the left)",
                           help="An NIH- or CheXpert-style folder: a label table and the images.")

    ckpt_name = arch = pretrained = None
    stride16 = True
    if from_ckpt:
        ckpt_name = st.selectbox("Checkpoint", list(checkpoints), key="train_ckpt",
                                 index=0 if checkpoints else None, placeholder="no checkpoints")
        st.caption("The checkpoint's classifier head is swapped to the chosen label space: rows of labels both "
                   "share are kept, new labels start fresh. Its preprocessing (image size, fit) is kept, so the "
                   "image size below is ignored.")
    else:
        a1, a2, a3 = st.columns([2, 1, 1])
        arch = a1.selectbox("Architecture (any timm name)", ARCHS, key="train_arch", accept_new_options=True,
                            help="Pick one or type any name `timm.list_models()` knows.")
        pretrained = a2.radio("Pretrained weights", ["none", "timm"], key="train_pretrained", horizontal=True,
                              help="timm: timm's pretrained weights (must be in the local cache when offline).")
        stride16 = a3.checkbox("Output stride 16", value=True, key="train_stride16",
                               help="Finer Grad-CAM maps. Not every architecture supports it "
                                    "(e.g. densenet121 and mobilenetv3 do not): untick it for those.")
    m1, m2, m3, m4 = st.columns(4)
    mode = m1.radio("Train", ["full", "head"], key="train_mode", horizontal=True,
                    format_func=lambda m: {"full": "full network", "head": "head only"}[m])
    epochs = m2.number_input("Epochs", min_value=1, max_value=500, value=3, step=1, key="train_epochs")
    batch_size = m3.number_input("Batch size", min_value=1, max_value=1024, value=32, step=1, key="train_batch")
    lr = m4.number_input("Learning rate", min_value=0.0, max_value=1.0, value=2e-3, step=1e-4, format="%.5f",
                         key="train_lr")
    n1, n2, n3, n4 = st.columns(4)
    image_size = n1.number_input("Image size (px)", min_value=32, max_value=1024, value=160, step=16,
                                 key="train_size", disabled=from_ckpt,
                                 help="Ignored when starting from a checkpoint: its preprocessing is kept.")
    policy = n2.selectbox("Uncertain labels (CheXpert −1)", POLICIES, key="train_policy",
                          help="zeros: treat as negative; ones: as positive; ignore: leave out of the loss.")
    max_images = n3.number_input("Max images (0 = all)", min_value=0, value=400, step=50, key="train_max",
                                 help="A random subset keeps a CPU run to a few minutes.")
    seed = n4.number_input("Seed", min_value=0, value=0, step=1, key="train_seed")
    submitted = st.form_submit_button("Start training", type="primary", key="train_submit")

if submitted:
    data = folder.strip() or (datasets.get(dataset_name) if dataset_name else None)
    config: dict = {"data": data or "", "labels": labels, "mode": mode, "epochs": int(epochs),
                    "batch_size": int(batch_size), "lr": float(lr), "policy": policy,
                    "max_images": int(max_images) or None, "seed": int(seed)}
    if from_ckpt:
        config["init"] = checkpoints.get(ckpt_name) if ckpt_name else None
    else:
        config.update(arch=(arch or "").strip(), pretrained=pretrained, image_size=int(image_size),
                      arch_kwargs={"output_stride": 16} if stride16 else {})
    try:
        if not data:
            raise CXRError("Choose a dataset or type the path of a dataset folder.")
        if from_ckpt and not config["init"]:
            raise CXRError("Choose a checkpoint to start from, or start from a fresh architecture.")
        with st.spinner("Checking the configuration and starting the job…"):
            job = local.submit(config, name=name.strip())
    except Exception as exc:  # noqa: BLE001 - CXRError as a message; anything else without a traceback
        show_error(exc)
    else:
        st.success(f"Started job **{job.id}** ({job.name}). It runs in the background; watch it below.")
        st.session_state["train_watch"] = job.id

# ---- jobs table ------------------------------------------------------------------------------------------------
st.subheader("Jobs")
try:
    local.refresh_all(store)
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
        best = summary_of(j)["best_val_mean_auroc"]
    except Exception:  # noqa: BLE001 - an unreadable events file must not break the table
        best = None
    rows.append({"id": j.id, "name": j.name, "status": j.status,
                 "created": _fmt_time(j.created), "duration": _fmt_seconds(j.duration),
                 "best val AUROC": best})
st.dataframe(pd.DataFrame(rows), hide_index=True, placeholder="–",
             column_config={"best val AUROC": st.column_config.NumberColumn(format="%.3f")})

by_id = {j.id: j for j in jobs}
ids = list(by_id)
if st.session_state.get("train_watch") not in by_id:
    st.session_state["train_watch"] = ids[0]
watch = st.selectbox("Watch job", ids, key="train_watch",
                     format_func=lambda i: f"{i} — {by_id[i].name or 'unnamed'}")


# ---- live view -------------------------------------------------------------------------------------------------

def _loss_figure(s: dict) -> go.Figure:
    fig = go.Figure()
    if s["loss_curve"]:
        steps, losses = zip(*s["loss_curve"])
        fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name="train loss (step)"))
    fig.update_layout(title="Training loss per step", xaxis_title="step", yaxis_title="BCE loss", height=320,
                      margin=dict(l=10, r=10, t=40, b=10), showlegend=False)
    return fig


def _auroc_figure(s: dict) -> go.Figure:
    fig = go.Figure()
    pts = [(e, a) for e, a in s["auroc_curve"] if a is not None]
    if pts:
        ep, au = zip(*pts)
        fig.add_trace(go.Scatter(x=ep, y=au, mode="lines+markers", name="val mean AUROC"))
    fig.update_layout(title="Validation mean AUROC per epoch", xaxis_title="epoch", yaxis_title="mean AUROC",
                      height=320, margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
                      xaxis=dict(dtick=1), yaxis=dict(range=[0, 1]))
    return fig


def _progress_text(s: dict, job) -> str:
    phase = s["phase"]
    if job.ended and phase not in ("done", "stopped"):
        phase = f"{job.status} while {phase}"
    parts = [phase]
    if s["epochs"]:
        parts.append(f"epoch {s['epoch'] or 0}/{s['epochs']}")
    if s["total_steps"]:
        parts.append(f"step {s['step']}/{s['total_steps']}")
    if s["images_per_s"] is not None:
        parts.append(f"{s['images_per_s']:.1f} images/s")
    if s["eta_seconds"] is not None and s["phase"] == "training":
        parts.append(f"ETA {_fmt_seconds(s['eta_seconds'])}")
    if s["phase"] == "preparing" and job.active:
        parts.append("reading the data and building the image cache")
    return " · ".join(parts)


def render_job(job_id: str, live: bool) -> None:
    try:
        job = local.refresh(job_id, store)
    except CXRError as exc:
        show_error(exc)
        return
    if live and job.ended:
        st.rerun()  # the job just ended: redraw the whole page once (table too), without auto refresh
    _show_flash()
    try:
        s = summary_of(job)
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
        s = local.progress_summary([])

    h1, h2 = st.columns([3, 1])
    h1.markdown(f"#### {job.name or 'unnamed'} · `{job.id}`")
    with h2:
        st.badge(job.status, icon=STATUS_ICON.get(job.status), color=STATUS_COLOR.get(job.status, "gray"))
    st.caption(f"Created {_fmt_time(job.created)} · started {_fmt_time(job.started)} · "
               f"duration {_fmt_seconds(job.duration)}" + (f" · pid {job.pid}" if job.pid and job.active else ""))

    st.progress(float(s["fraction"]), text=_progress_text(s, job))
    if job.active:
        if st.button("Cancel job", key=f"train_cancel_{job.id}", type="secondary"):
            try:
                with st.spinner("Stopping the job…"):
                    done = local.cancel(job.id, store)
            except CXRError as exc:
                show_error(exc)
            else:
                _flash("warning", f"Job {done.id} is {done.status}.")
                st.rerun()

    if job.status == "failed":
        first, _, rest = (job.error or "no message").partition("\n")
        st.error(f"The job failed: {_md_escape(first)}")
        if rest.strip():
            st.code(rest, language=None)
    elif job.status == "cancelled":
        st.warning(_md_escape(job.error or "The job was cancelled."))
    ckpt = Path(job.run_dir) / "checkpoint"
    if job.ended and (ckpt / "card.json").exists():
        msg = (f"Checkpoint: `{ckpt}`  \nIt now appears in the model pickers on the Compare and Thresholds "
               f"pages as **run {job.id}**.")
        if job.status == "succeeded":
            st.success(msg)
        else:
            st.info("The best checkpoint so far was kept. " + msg)

    m = st.columns(4)
    m[0].metric("Best val mean AUROC", "–" if s["best_val_mean_auroc"] is None else f"{s['best_val_mean_auroc']:.3f}",
                help=f"epoch {s['best_epoch']}" if s["best_epoch"] else None)
    m[1].metric("Test mean AUROC", "–" if s["test_mean_auroc"] is None else f"{s['test_mean_auroc']:.3f}")
    m[2].metric("Last loss", "–" if s["last_loss"] is None else f"{s['last_loss']:.4f}")
    m[3].metric("Images", "–" if s["n_images"] is None else s["n_images"])

    g1, g2 = st.columns(2)
    if s["loss_curve"]:
        g1.plotly_chart(_loss_figure(s), key=f"train_loss_{job.id}")
    else:
        g1.caption("The loss curve appears with the first training step.")
    if any(a is not None for _, a in s["auroc_curve"]):
        g2.plotly_chart(_auroc_figure(s), key=f"train_auroc_{job.id}")
    else:
        g2.caption("Validation AUROC appears after the first epoch.")

    if s["per_label_auroc"]:
        last_epoch = s["auroc_curve"][-1][0] if s["auroc_curve"] else s["epoch"]
        st.markdown(f"**Per-label validation AUROC, epoch {last_epoch}**")
        table = pd.DataFrame({"label": list(s["per_label_auroc"]), "AUROC": list(s["per_label_auroc"].values())})
        st.dataframe(table, hide_index=True, key=f"train_perlabel_{job.id}", height=35 * (len(table) + 1) + 3,
                     placeholder="n/a", column_config={"AUROC": st.column_config.NumberColumn(
                         format="%.3f", help="n/a: no positive (or no negative) case in the validation split.")})

    st.markdown("**Log** (last 40 lines)")
    st.code(local.tail_log(job, 40) or "(no output yet)", language=None)
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
    watched = local.refresh(watch, store)
except CXRError as exc:
    show_error(exc)
    st.stop()
if watched.active:
    live_view(watched.id)
else:
    ended_view(watched.id)
