"""Monitoring: has what a deployed model scores drifted away from its validation split? (issue 23 §3;
cxrcore.eval.drift; `cxr monitor` from a shell). Per window: the drift score, the families behind it, the alarms
and why, and the images that contribute most."""
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrcore import hosting
from cxrcore.checkpoint import read_card
from cxrcore.errors import CXRError, DataError
from cxrcore.eval.drift import ALARM_AT, FAMILIES, MIN_WINDOW, WINDOWS
from ui.common import (chart_config, current_user, dataset_choices, ensure_weights, hosting_settings, md_text,
                       model_picker, require_checkpoints, show_error, show_film, site_picker)

WINDOW_CHOICES = list(WINDOWS) + ["50 images", "100 images", "200 images", "500 images"]
TYPED = "(type the path of a table instead)"
LOG = "(what the REST service and the PACS watch scored with this model)"

st.title("Drift monitoring")
st.caption("The images a model scored in use (a scoring job's table, `cxr score`, a folder scored as it grows) are "
           "cut into windows and each is compared with the model's validation split: its outputs (per label, KS and "
           "PSI), the images' statistics (brightness, contrast, noise, edges, symmetry) and the model's embedding "
           "(MMD with a permutation test). The drift score is in standard deviations of the reference's own "
           "window-to-window variation; a window at or above the alarm level alarms. No labels are needed.")

choices = require_checkpoints()
access = hosting_settings()
user = current_user(access)


def scored_tables() -> dict[str, str]:
    """Display name -> table of every scoring job that finished with its table on disk (newest first)."""
    from cxrcore.jobs.scoring import is_scoring, out_path
    from cxrcore.jobs.store import JobStore

    out = {}
    for job in JobStore().list(limit=200, status="succeeded"):
        if is_scoring(job.config):
            path = out_path(job.config, job.run_dir)
            if path.is_file():
                out[f"{job.id} · {job.name} ({path.name})"] = str(path)
    return out


c1, c2 = st.columns([3, 2])
model_name = model_picker(c1, "Model", choices, "mon_model", prefer=("finetuned",))
ckpt = choices[model_name]
try:
    ensure_weights(ckpt)
    card = read_card(ckpt)
    datasets = dataset_choices()
    tables = scored_tables()
except CXRError as exc:
    show_error(exc)
    st.stop()
site = site_picker(c2, ckpt, "mon_site")

t1, t2 = st.columns(2)
picked = t1.selectbox("Scored images (a scoring job's table, or the monitoring log)", list(tables) + [LOG, TYPED],
                      key="mon_table")
typed = t2.text_input("… or the path of a table `cxr score` wrote (.parquet)", key="mon_typed",
                      disabled=picked != TYPED)
fmt = card.data.get("format")
ds_names = list(datasets)
r1, r2, r3, r4 = st.columns([3, 1, 2, 1])
# keyed by the model, so the default follows the model chosen: the dataset of its own format (its validation split)
data_name = r1.selectbox("Reference: the labelled dataset the model was validated on", ds_names,
                         key=f"mon_data::{ckpt}", index=next((i for i, n in enumerate(ds_names) if fmt and fmt in n), 0))
split = r2.selectbox("Split", ["val", "test", "all"], key="mon_split")
window = r3.selectbox("Window", WINDOW_CHOICES, key="mon_window",
                      help=f"day / week: by the time each image was scored (UTC); N images: every N in the order "
                           f"they were scored (at least {MIN_WINDOW})")
alarm_at = r4.number_input("Alarm at", min_value=1.0, max_value=10.0, value=ALARM_AT, step=0.5, key="mon_alarm",
                           help="the drift score (standard deviations of the reference's own windows) that alarms")


@st.cache_data(show_spinner=False, max_entries=16)
def analyse(ckpt: str, weights: str, site: str | None, data: str, split: str, table: str, stamp: float,
            window: str, alarm_at: float) -> dict:
    from cxrcore.eval.drift import monitor, read_log, read_stream, reference_table
    from cxrcore.runtime import network_digest

    with hosting.heavy_slot(user, access):
        ref = read_stream(reference_table(ckpt, data, split, site=site))
        stream = (read_log(network_digest(read_card(ckpt)), ref.labels) if table == LOG
                  else read_stream(table, labels=ref.labels))
        return monitor(stream, ref, window, alarm_at=alarm_at).to_dict()


go_ = st.button("Analyse drift", type="primary", key="mon_go")
if go_:
    try:
        if picked == TYPED:
            if not typed.strip():
                raise DataError("Type the path of a scored table (the .parquet file `cxr score` wrote), or choose a "
                                "scoring job's table.")
            table = hosting.resolve_data_path(typed, access)   # the operator's data roots on a shared server
            if not table.is_file():
                raise DataError(f"{typed} is not a file: give the .parquet table `cxr score` wrote.")
        elif picked == LOG:
            from cxrcore.monitorlog import db_path

            table = db_path()
        else:
            table = Path(tables[picked])
        win = window.split()[0]
        stamp = table.stat().st_mtime if table.exists() else 0.0
        with st.spinner("Scoring the reference once (cached afterwards) and comparing each window…"):
            result = analyse(ckpt, card.weights_sha256, site, datasets[data_name], split,
                             LOG if picked == LOG else str(table), stamp, win, float(alarm_at))
        st.session_state["mon_result"] = {"result": result, "model": model_name, "site": site,
                                          "table": "the monitoring log" if picked == LOG else Path(table).name}
    except Exception as exc:  # noqa: BLE001 - CXRError as a message; anything else without a traceback
        show_error(exc)
        st.stop()

held = st.session_state.get("mon_result")
if not held:
    st.info("Choose the scored images and the reference, then **Analyse drift**.")
    st.stop()
result = held["result"]
wins = result["windows"]
scored = [w for w in wins if w["score"] is not None]
st.markdown(f"**{result['stream_rows']}** scored images of {md_text(held['table'])} in **{len(wins)}** "
            f"window(s) of {md_text(result['window'])}, against **{result['reference_rows']}** reference images; "
            f"model {md_text(held['model'])}" + (f" at site **{md_text(held['site'])}**" if held["site"] else "")
            + f"; families: {', '.join(result['families'])}.")
for note in result["notes"]:
    st.caption(md_text(note))
if result["latest_alarm"]:
    st.error(f"The latest window alarms (drift score {wins[-1]['score']:.1f} ≥ {result['alarm_at']:g}).")
elif result["alarms"]:
    st.warning(f"{len(result['alarms'])} window(s) alarmed; the latest is quiet.")
else:
    st.success(f"No window alarms (every drift score below {result['alarm_at']:g}).")

fig = go.Figure()
xs = [w["start"] if w["start"] == w["end"] else f"{w['start']}…{w['end']}" for w in scored]
for fam in FAMILIES:
    ys = [w["families"].get(fam) for w in scored]
    if any(y is not None for y in ys):
        fig.add_trace(go.Scatter(x=xs, y=ys, name=f"{fam} (z)", mode="lines", line={"width": 1, "dash": "dot"}))
fig.add_trace(go.Scatter(x=xs, y=[w["score"] for w in scored], name="drift score", mode="lines+markers",
                         line={"width": 3}, marker={"size": 9, "color": ["#d62728" if w["alarm"] else "#1f77b4"
                                                                         for w in scored]}))
fig.add_hline(y=result["alarm_at"], line_dash="dash", line_color="#d62728", annotation_text="alarm")
fig.update_layout(height=380, margin={"t": 30, "b": 10}, yaxis_title="standard deviations of the reference",
                  xaxis_title="window", legend={"orientation": "h"})
st.plotly_chart(fig, use_container_width=True, config=chart_config())

if result["alarms"]:
    st.subheader("Windows that alarm, and why")
    st.dataframe(pd.DataFrame([{"window": w["start"] if w["start"] == w["end"] else f"{w['start']} … {w['end']}",
                                "images": w["n"], "drift score": w["score"],
                                "why": "; ".join(w["why"]) or "several components together"}
                               for w in wins if w.get("alarm")]), hide_index=True, use_container_width=True)

st.subheader("A window in detail")
names = [f"{w['index']}: {w['start']}" + ("" if w["start"] == w["end"] else f" … {w['end']}")
         + (f" (alarm, {w['score']:.1f})" if w.get("alarm") else "") for w in wins]
first = result["alarms"][0] if result["alarms"] else len(wins) - 1
chosen = wins[names.index(st.selectbox("Window", names, index=first, key="mon_detail"))]
if chosen["score"] is None:
    st.info(md_text(chosen["note"]))
else:
    rows = []
    for key, c in chosen["components"].items():
        family, name = key.split(":", 1)
        rows.append({"family": family, "component": name, "z": c.get("z"), "KS": c.get("ks"), "p": c.get("p"),
                     "PSI": c.get("psi"), "MMD²": c.get("mmd"),
                     "window / reference mean": (f"{c['window_mean']:.3f} / {c['reference_mean']:.3f}"
                                                 if "window_mean" in c else
                                                 " / ".join(f"{v:.3f}" for v in chosen["mean_probability"][name])
                                                 if family == "outputs" else "")})
    st.dataframe(pd.DataFrame(rows).sort_values("z", ascending=False), hide_index=True, use_container_width=True)
    if chosen["top_images"]:
        st.markdown("**The images that contribute most** (where the window's embedding is densest compared with the "
                    "reference: the MMD's witness function)")
        cols = st.columns(len(chosen["top_images"]))
        roots = hosting.job_roots(access)   # a shared server shows only files inside the folders it opens
        for col, item in zip(cols, chosen["top_images"]):
            # the last three parts: CheXpert's files are all named view1_frontal.jpg, their folders tell them apart
            caption = md_text("/".join(Path(item["path"]).parts[-3:])
                              + (f" · OOD: {item['ood']}" if item["ood"] else ""))
            try:
                if roots is not None:
                    hosting.check_inside(Path(item["path"]).resolve(), roots)
            except CXRError:
                col.caption(caption + " (outside the folders this server opens)")
                continue
            show_film(col, item["path"], caption)
st.download_button("Download the report (JSON)", data=json.dumps(result, indent=1), file_name="drift.json",
                   mime="application/json", key="mon_download")
