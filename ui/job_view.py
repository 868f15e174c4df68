"""The Training page's job view: a job's progress, curves and actions, and two runs compared."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cxrcore import hosting
from cxrcore.checkpoint import read_card
from cxrcore.errors import CXRError
from cxrcore.jobs import dispatch, logfiles
from cxrcore.jobs.progress import job_summary, progress_summary
from cxrcore.jobs.scoring import (LENS_TASKS, SCORE, WATCH, is_training, out_path, read_summary, resume_words,
                                  task_of)
from cxrcore.runs import config_diff, fmt_seconds, fmt_time, history_table, progress_text
from ui.common import chart_config, md_text, show_error

STATUS_COLOR = {"queued": "gray", "running": "blue", "succeeded": "green", "failed": "red", "cancelled": "orange"}
STATUS_ICON = {"queued": ":material/schedule:", "running": ":material/directions_run:",
               "succeeded": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/block:"}
REFRESH_S = 2
DOWNLOAD_LIMIT = 200 * 2**20   # a larger table is read from its file, not through the browser


def _events_stamp(job) -> tuple:
    p = Path(job.run_dir) / logfiles.EVENTS_NAME
    try:
        s = p.stat()
    except OSError:
        return (0, 0)
    return (s.st_mtime_ns, s.st_size)


@st.cache_data(show_spinner=False, max_entries=256)
def _summary(run_dir: str, stamp: tuple, task: str, _job) -> dict:
    """The progress summary of a job's events (a training's or a scoring's); cached until events.jsonl changes."""
    return job_summary(_job.config, logfiles.events(_job))


def summary_of(job) -> dict:
    return _summary(job.run_dir, _events_stamp(job), task_of(job.config), job)


def _md_escape(text: str) -> str:
    """Plain text inside st.error / st.warning: no markdown, link or LaTeX from `__init__` or `$` (ui.common.md_text)."""
    return md_text(text, single_line=False)


def flash(kind: str, text: str) -> None:
    """A message shown at the next run of the page (after an st.rerun)."""
    st.session_state.setdefault("train_flash", []).append((kind, text))


def show_flash() -> None:
    for kind, text in st.session_state.pop("train_flash", []):
        getattr(st, kind)(text)


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


def _run_action(action, job, store, spinner: str, kind: str, message) -> None:
    """Run ``action(job_id, store)``; on success flash ``message(job)`` and redraw the page."""
    try:
        with st.spinner(spinner):
            after = action(job.id, store)
    except CXRError as exc:
        show_error(exc)
    else:
        flash(kind, message(after))
        st.rerun()


def _actions(job, store, user, access) -> None:
    b1, b2 = st.columns(2)
    # The buttons follow the operator's rights; dispatch.cancel / resume check them again for this user.
    no_cancel = hosting.why_not(user, "cancel", job, access)
    no_resume = hosting.why_not(user, "resume", job, access)
    if job.active and b1.button("Cancel job", key=f"train_cancel_{job.id}", disabled=no_cancel is not None,
                                help=no_cancel):
        _run_action(partial(dispatch.cancel, user=user, settings=access), job, store, "Stopping the job…", "warning",
                    lambda j: f"Job {j.id} is {j.status}.")
    if job.status in ("cancelled", "failed") and b1.button(
            "Resume job", key=f"train_resume_{job.id}", type="primary", disabled=no_resume is not None,
            help=no_resume or f"Continue {resume_words(job.config)}."):
        _run_action(partial(dispatch.resume, user=user, settings=access), job, store, "Resuming…", "success",
                    lambda j: f"Job {j.id} resumes {resume_words(j.config)}.")
    if is_training(job.config) and b2.button("Clone into the form", key=f"train_clone_{job.id}",
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
        st.download_button("History as CSV", history_table(s).to_csv(index=False).encode(), file_name=f"history-{key}.csv", mime="text/csv",
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



def _training_body(job, s: dict) -> None:
    """A training job's checkpoint, metrics and curves."""
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
    m[4].metric("ETA", fmt_seconds(s["eta_seconds"]) if job.active else "–")
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


def _scoring_body(job, s: dict) -> None:
    """A scoring job's counts, speed and, at its end, its table: where it is, its first rows, the downloads."""
    m = st.columns(4)
    m[0].metric("Images in the table", "–" if not s["total"] else f"{s['scored']:,} of {s['total']:,}",
                help="rows written so far (and unreadable files), every attempt")
    m[1].metric("Unreadable", f"{s['errors']:,}", help="files that could not be read, listed with the reason")
    m[2].metric("Images/s", "–" if s["images_per_s"] is None else f"{s['images_per_s']:.1f}")
    m[3].metric("ETA", fmt_seconds(s["eta_seconds"]) if job.active else "–")
    if s["input"]:
        st.caption(f"Scoring {md_text(s['input'])} with {md_text(s['model'] or '')} on {s['runtime'] or 'torch'}."
                   + (f" {md_text(s['runtime_note'])}" if s["runtime_note"] else ""))
    done = read_summary(job.run_dir)
    if job.status != "succeeded" or done is None:
        if job.status in ("cancelled", "failed") and s["scored"]:
            st.caption(f"{s['scored']:,} image(s) are in the table's parts; **Resume** scores the rest, each image once.")
        return
    out = out_path(job.config, job.run_dir)
    st.success(f"{done['rows']:,} image(s) scored in {fmt_seconds(done['seconds'])}: `{done['out']}` (and "
               f"`{done['csv']}`)" + (f"; {done['errors']:,} unreadable, listed in `{done['errors_csv']}`."
                                      if done["errors"] else "."))
    try:
        table = pd.read_parquet(out)
    except Exception as exc:  # noqa: BLE001 - moved or removed since: say so, keep the page
        show_error(CXRError(f"The table {out} cannot be read now ({type(exc).__name__}); was it moved?"))
        return
    st.dataframe(table.head(200), hide_index=True, key=f"score_rows_{job.id}")
    st.caption(f"The first {min(200, len(table))} of {len(table):,} rows: each label's probability, its call at "
               "the model's threshold, calibrated probabilities where the card has temperatures, OOD reasons and "
               "the model's notices.")
    c1, c2 = st.columns(2)
    csv_path = Path(done["csv"])
    if csv_path.exists() and csv_path.stat().st_size <= DOWNLOAD_LIMIT:
        c1.download_button("The table as CSV", csv_path.read_bytes(), file_name=csv_path.name, mime="text/csv",
                           key=f"score_csv_{job.id}")
    if done["errors"] and Path(done["errors_csv"]).exists():
        errors = pd.read_csv(done["errors_csv"], dtype=str)
        with st.expander(f"Unreadable files ({len(errors):,})"):
            st.dataframe(errors.head(500), hide_index=True, key=f"score_errors_{job.id}")
        c2.download_button("Unreadable files as CSV", Path(done["errors_csv"]).read_bytes(),
                           file_name=Path(done["errors_csv"]).name, mime="text/csv", key=f"score_errors_csv_{job.id}")


def _watch_body(job) -> None:
    """A watch's studies (:mod:`cxrcore.pacs.watch`): each new study it took, scored, skipped or failed."""
    from cxrcore.pacs.watch import WatchTable

    try:
        digest = read_card(job.config["checkpoint"]).sha256()
        rows = WatchTable().rows(digest, limit=200)
    except Exception as exc:  # noqa: BLE001 - an unreadable table or card must not break the page
        show_error(exc)
        return
    scored = sum(r["state"] == "scored" for r in rows)
    st.caption(f"Scores new CR/DX studies in the PACS every {job.config.get('interval', 60):g} s with "
               f"`{md_text(job.config['checkpoint'])}`; the results (a Structured Report per image, the heatmap of the "
               "most probable finding called) go into each study, unverified and not for diagnostic use.")
    st.metric("Studies scored by this model", scored)
    if not rows:
        st.caption("No new study yet.")
        return
    table = pd.DataFrame([{"study": r["study_uid"], "state": r["state"], "images": r["images"],
                           "called": "; ".join(sorted({x for c in r["calls"].values() for x in c})),
                           "when": fmt_time(r["scored_at"] or r["claimed_at"]), "tries": r["tries"],
                           "error": r["error"] or ""} for r in rows])
    st.dataframe(table, hide_index=True, key=f"watch_rows_{job.id}")


def _lens_body(job) -> None:
    """An index or cross-fitting job (:mod:`cxrcore.jobs.lensjobs`): what it made, and where it is used."""
    from cxrcore.jobs.lensjobs import read_result

    done = read_result(job.run_dir)
    what = (f"Indexes `{md_text(job.config.get('data', ''))}` with `{md_text(job.config.get('checkpoint', ''))}`"
            if task_of(job.config) == LENS_TASKS[0] else
            f"Cross-fits `{md_text(job.config.get('checkpoint', ''))}` over `{md_text(job.config.get('data', ''))}` in "
            f"{job.config.get('folds')} folds, then ranks the likely label errors")
    st.caption(what + "; the result is used on the Dataset page.")
    if not done:
        return
    if "issues" in done:
        c1, c2 = st.columns(2)
        c1.metric("Films judged", f"{done['images']:,}")
        c2.metric("Likely label errors", f"{len(done['issues']):,}")
        folds = pd.DataFrame(done.get("fold_runs") or [])
        if len(folds):
            st.dataframe(folds, hide_index=True, key=f"lens_folds_{job.id}")
    else:
        c1, c2, c3 = st.columns(3)
        c1.metric("Films in the index", f"{done['images']:,}")
        c2.metric("Embedded now", f"{done['embedded']:,}")
        c3.metric("Kind", done["kind"])


def render_job(job_id: str, live: bool, store, user, access) -> None:
    """A job's header, progress, actions, metrics, curves, log and configuration."""
    try:
        job = dispatch.refresh(job_id, store)
    except CXRError as exc:
        show_error(exc)
        return
    if live and job.ended:
        st.rerun()  # the job just ended: redraw the whole page once (table too), without auto refresh
    if st.session_state.get("train_listed_status", {}).get(job.id, job.status) != job.status:
        st.rerun()  # it moved on since the table and the watch list were drawn: redraw them with its state
    show_flash()
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
    st.caption(f"Created {fmt_time(job.created)} · started {fmt_time(job.started)} · "
               f"duration {fmt_seconds(job.duration)} · {where}")

    st.progress(float(s["fraction"]), text=progress_text(s, job))
    _actions(job, store, user, access)

    if job.status == "failed":
        first, _, rest = (job.error or "no message").partition("\n")
        st.error(f"The job failed: {_md_escape(first)}")
        if rest.strip():
            st.code(rest, language=None)
    elif job.status == "cancelled":
        st.warning(_md_escape(job.error or "The job was cancelled."))
    elif job.status == "queued" and getattr(job, "note", None):
        st.info(_md_escape(job.note))
    task = task_of(job.config)
    if task == SCORE:
        _scoring_body(job, s)
    elif task == WATCH:
        _watch_body(job)
    elif task in LENS_TASKS:
        _lens_body(job)
    else:
        _training_body(job, s)


    st.markdown("**Log** (last 40 lines)")
    st.code(dispatch.logs(job, 40) or "(no output yet)", language=None)
    with st.expander("Configuration"):
        st.code(json.dumps(job.config, indent=2), language="json")


@st.fragment(run_every=REFRESH_S)
def live_view(job_id: str, store, user, access) -> None:
    render_job(job_id, True, store, user, access)


@st.fragment
def ended_view(job_id: str, store, user, access) -> None:
    render_job(job_id, False, store, user, access)


def compare_runs(a, b) -> None:
    """Two runs side by side: curves, per-label AUROC table and the options they differ in."""
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
    diff = config_diff(a.config or {}, b.config or {})
    st.markdown("**Options that differ**")
    if diff.empty:
        st.caption("The two runs have the same options.")
    else:
        st.dataframe(diff, hide_index=True, key="train_cmp_diff")
