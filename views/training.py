"""Training: launch background fine-tuning jobs, watch them live, cancel, resume, clone and compare them.

A thin view over :mod:`cxrcore.jobs`: ``dispatch.submit`` validates a config and starts a job; this page
only reads the job table (SQLite in the workspace), each job's ``events.jsonl`` and ``log.txt``. Jobs keep
running when the tab closes, and past jobs are listed again after an app restart. The launch form
(ui/training_form.py) is derived from the declarations: every option of :class:`cxrcore.train.config.TrainConfig`
has a widget, as do the slurm options (SLURM_OPTIONS) and the sweep's (:class:`cxrcore.jobs.sweep.SweepSpec`,
ui/sweeps.py), so a new one shows up here with no edit; a clone fills the form with a past job's options.
The job view and the run comparison are ui/job_view.py's.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from cxrcore import hosting, launch
from cxrcore.errors import CXRError
from cxrcore.jobs import JobStore, dispatch, sweep
from cxrcore.jobs.progress import progress_summary
from cxrcore.jobs.scoring import TRAIN, is_training, task_of
from cxrcore.runs import fmt_seconds, fmt_time
from ui import training_form
from ui.common import checkpoint_choices, current_user, dataset_choices, hosting_settings, md_text, show_error
from ui.job_view import compare_runs, ended_view, live_view, show_flash, summary_of
from ui.score_form import score_launcher, watch_launcher
from ui.sweeps import sweeps_section

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
if "train_clone" in st.session_state:  # set by a Clone button: a new form generation with the job's options
    training_form.clone_into_form(*st.session_state.pop("train_clone"), datasets=datasets, checkpoints=checkpoints)
show_flash()
if launch_blocked:
    st.info(launch_blocked + " You can still watch the jobs below.")
elif access.hosted and hosting.cap_for(user, access):
    st.caption(f"Launching as **{user.display}**; at most {hosting.cap_for(user, access)} queued or running job(s) "
               "per person on this server.")

form = training_form.launch_form(datasets, checkpoints, access, user, launch_blocked)
score_launcher(datasets, checkpoints, access, user, launch_blocked)
watch_launcher(checkpoints, access, user, launch_blocked)

if form.submitted or form.sweep_submitted:
    data = form.folder.strip() or (datasets.get(form.dataset) if form.dataset else None)
    init = (checkpoints.get(form.checkpoint) if form.checkpoint else None) if form.from_ckpt else None
    notes: list[str] = []
    try:
        if form.folder.strip():  # typed: symlinks and .. resolved, the operator's data roots checked (the job layer too)
            data = str(hosting.resolve_data_path(form.folder, access))
        if not data:
            raise CXRError("Choose a dataset or type the path of a dataset folder.")
        if form.from_ckpt and not init:
            raise CXRError("Choose a checkpoint to start from, or start from an architecture.")
        values = training_form.values()
        hosting.check_model_ref(init, access)  # a shared server: listed names and folders inside the roots only,
        hosting.check_model_ref(None if form.from_ckpt else values["arch"], access, arch=True)  # before anything reads it
        config, backend, notes = launch.config_from_form(values, data, init)
        if form.sweep_submitted:
            spec = launch.sweep_spec(form.sweep_values, name=values["name"].strip() or "sweep", base=config,
                                     space=sweep.parse_space(form.sweep_space), backend=backend)
            with st.spinner("Checking the configuration and starting the first trials…"):
                sweep_id = sweep.create(spec, store, user=user, settings=access)
            job = None
        else:
            with st.spinner("Checking the configuration and starting the job…"):
                # as this visitor: the job layer checks the operator's launch rights, the data roots and the
                # per-person cap before anything is created, and records who launched the job
                job = dispatch.submit(config, name=values["name"].strip(), backend=backend, user=user, settings=access)
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
        for note in notes:
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
    task = task_of(j.config)
    rows.append({"id": j.id, "name": j.name, "status": j.status, "launched by": hosting.owner_display(j.owner),
                 "backend": j.backend, "task": task,
                 "mode": (j.config or {}).get("mode", "full") if task == TRAIN else None,
                 "progress": float(s["fraction"]),
                 "best val AUROC": s["best_val_mean_auroc"], "created": fmt_time(j.created),
                 "duration": fmt_seconds(j.duration), "note": note})
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


# ---- selected job -----------------------------------------------------------------------------------------------
st.subheader("Selected job")
try:
    watched = dispatch.refresh(watch, store)
except CXRError as exc:
    show_error(exc)
    st.stop()
if watched.active:
    live_view(watched.id, store, user, access)
else:
    ended_view(watched.id, store, user, access)


# ---- comparison ------------------------------------------------------------------------------------------------
st.subheader("Compare two runs")
runs = [i for i in ids if is_training(by_id[i].config)]   # trainings: a scoring job or a watch has no curves
if len(runs) < 2:
    st.caption("Two or more training jobs are needed for a comparison.")
else:
    r1, r2 = st.columns(2)
    fmt = lambda i: f"{i} — {by_id[i].name or 'unnamed'} ({by_id[i].status})"  # noqa: E731
    run_a = r1.selectbox("Run A", runs, index=min(1, len(runs) - 1), key="train_cmp_a", format_func=fmt)
    run_b = r2.selectbox("Run B", runs, index=0, key="train_cmp_b", format_func=fmt)
    if run_a == run_b:
        st.caption("Pick two different runs.")
    else:
        try:
            compare_runs(by_id[run_a], by_id[run_b])
        except Exception as exc:  # noqa: BLE001 - an unreadable run must not break the page
            show_error(exc)


# ---- sweeps ------------------------------------------------------------------------------------------------------
sweeps_section(store, user, access)
