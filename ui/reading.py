"""The reader's side of a reader study (the Reader study page opened with a reader's link): one case at a time,
a viewer fit for a radiograph, the rating of each finding, the model's output only in an aided read."""
from __future__ import annotations

import secrets
import time
from datetime import datetime

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cxrcore.errors import CXRError
from cxrcore.readerstudy import session
from cxrcore.readerstudy.design import SCALES
from cxrcore.readerstudy.setup import aided_image
from cxrcore.readerstudy.store import StudyStore
from ui.common import chart_config, md_text, show_error

MARK_GRID = 48   # a click on the image is taken at the nearest of MARK_GRID x MARK_GRID points


@st.cache_data(show_spinner="Opening the image at full resolution…", max_entries=8)
def _pixels(path: str) -> np.ndarray:
    from cxrcore.data.imageio import read_image

    return read_image(path).pixels


def viewer(pixels: np.ndarray, key: str, marks: dict | None = None, clickable: bool = False):
    """The radiograph with window / level and invert (redrawn here) and zoom / pan (in the browser: drag a box to
    zoom, double-click to see it whole); ``clickable``: a click marks a point (returned as fractions x, y)."""
    from cxrcore.explain.visual import window_level

    c1, c2, c3 = st.columns([3, 3, 1])
    level = c1.slider("Level (brightness)", 0.0, 1.0, 0.5, 0.01, key=f"{key}_level",
                      help="The centre of the display window. Keys: click the slider, then ← / →.")
    width = c2.slider("Window (contrast)", 0.05, 1.0, 1.0, 0.01, key=f"{key}_width",
                      help="The width of the display window: narrower is more contrast.")
    invert = c3.toggle("Invert", key=f"{key}_invert")
    shown = window_level(pixels, level, width, invert)
    h, w = shown.shape
    fig = go.Figure(go.Image(z=np.stack([shown] * 3, axis=-1), hoverinfo="skip"))
    if clickable:   # invisible points to click on: Streamlit returns the one chosen
        gx, gy = np.meshgrid((np.arange(MARK_GRID) + 0.5) * w / MARK_GRID, (np.arange(MARK_GRID) + 0.5) * h / MARK_GRID)
        fig.add_trace(go.Scatter(x=gx.ravel(), y=gy.ravel(), mode="markers", marker=dict(size=6, opacity=0.01),
                                 hoverinfo="none", showlegend=False, name="grid"))
    for finding, mark in (marks or {}).items():
        if mark is not None:
            fig.add_trace(go.Scatter(x=[mark[0] * w], y=[mark[1] * h], mode="markers+text", text=[finding],
                                     textposition="top center", marker=dict(symbol="x", size=14, color="#ff4b4b"),
                                     textfont=dict(color="#ff4b4b"), showlegend=False, hoverinfo="skip"))
    fig.update_layout(height=720, margin=dict(l=0, r=0, t=0, b=0), dragmode="zoom",
                      xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"))
    event = st.plotly_chart(fig, key=f"{key}_fig", config=chart_config() | {"scrollZoom": True},
                            on_select="rerun" if clickable else "ignore", selection_mode="points")
    if clickable and event and event.selection and event.selection.points:
        p = event.selection.points[0]
        return float(p["x"]) / w, float(p["y"]) / h
    return None


def rating_input(finding: str, scale: str, key: str, value=None, disabled: bool = False):
    lo, hi, words = SCALES[scale]
    if scale == "5-point":
        options = list(range(lo, hi + 1))
        return st.radio(f"**{finding}**", options, index=options.index(int(value)) if value is not None else None,
                        key=key, horizontal=True, disabled=disabled, help=words,
                        format_func=lambda v: f"{v} · {words.split(' · ')[v - 1].split(' ', 1)[1]}")
    return st.slider(f"**{finding}**: {words}", lo, hi, int(value) if value is not None else 50, key=key,
                     disabled=disabled)


def _model_panel(study, case, findings: list[str]) -> None:
    shown = study.source.get("aided", {})
    st.markdown("**The model's output** (fixed when the study was set up)")
    for f in findings:
        p, t = case.model.get(f), shown.get("thresholds", {}).get(f)
        if p is None:
            continue
        call = "positive" if t is not None and p >= t else "negative"
        st.markdown(f"- {md_text(f)}: probability **{p:.2f}** (threshold {t:.2f}: {call})")
    if study.design.heatmap != "none":
        pick = st.selectbox("Heatmap of", findings, key=f"heat_{case.number}")
        path = aided_image(study.id, case.number, pick)
        if path.exists():
            st.image(str(path), caption=f"{shown.get('cam_method', 'Grad-CAM')}: where the model looked for {pick}")


def reader_page(store: StudyStore, study_id: str, reader) -> None:
    """Reader ``reader`` of study ``study_id`` (found from their link's token, or their signed-in account)."""
    study = store.study(study_id)
    d = study.design
    st.title(study.name)
    st.caption(f"Reading as **{md_text(reader.name)}**. Your answers are saved the moment you give them: you can "
               "close this page and come back with the same link, on any device.")
    pos = st.session_state.get("rs_revisit")
    # The viewing this read is on screen in: new in each browser session and after each move between reads
    # (reading time counts from it), kept while the reader adjusts the image.
    visit = st.session_state.setdefault("rs_visit", secrets.token_hex(8))
    try:
        task = session.revisit(store, study_id, reader.number, pos, time.time(), visit) if pos else \
            session.next_read(store, study_id, reader.number, time.time(), visit)
    except CXRError as exc:
        show_error(exc)
        return
    if isinstance(task, session.Done):
        st.success(f"All {task.total} reads are done. Thank you — you can close this page.")
        return
    if isinstance(task, session.Waiting):
        st.progress(task.done / task.total, text=f"{task.done} of {task.total} reads")
        st.info("Session 1 is done. Session 2 opens after the wash-out, on "
                f"{datetime.fromtimestamp(task.until):%Y-%m-%d %H:%M}; come back then with the same link.")
        return
    st.progress((task.position - 1) / task.total, text=f"Read {task.position} of {task.total}"
                + (f" · session {task.session}" if d.design == "crossover" else ""))
    case = store.case(study_id, task.case)
    lock = session.locked(store, study, reader.number, task)
    if lock and task.given:
        st.warning(lock)
    left, right = st.columns([3, 2]) if task.arm == "aided" else (st.container(), None)
    key = f"rs_{study_id}_{task.case}_{task.arm}"
    marks = dict(st.session_state.get(f"{key}_marks", {}))
    with left:
        try:
            pixels = _pixels(case.image)
        except CXRError as exc:
            show_error(exc)
            return
        clicked = viewer(pixels, key, marks, clickable=d.mark_location and not lock)
    if right is not None:
        with right:
            _model_panel(study, case, list(d.findings))
            if task.unaided:
                st.caption("Your unaided ratings of this case: " + ", ".join(
                    f"{f} {v:g}" for f, v in task.unaided.items()))
    if d.mark_location and not lock:
        target = st.radio("A click on the image marks", list(d.findings), horizontal=True, key=f"{key}_target")
        if clicked is not None and marks.get(target) != clicked:
            marks[target] = clicked
            st.session_state[f"{key}_marks"] = marks
            st.rerun()
    arm_words = "with the model's output" if task.arm == "aided" else "on your own (no model output)"
    with st.form(f"{key}_form", border=True):
        st.markdown(f"**Your reading, {arm_words}**")
        ratings = {f: rating_input(f, d.scale, f"{key}_{f}", task.given.get(f), disabled=bool(lock)) for f in d.findings}
        go_on = st.form_submit_button("Save and go on", type="primary", disabled=bool(lock and not task.given),
                                      shortcut="Mod+Enter")
    quick = None
    if d.scale == "5-point" and len(d.findings) == 1 and not lock:   # one key per rating: press it and go on
        lo, hi, words = SCALES[d.scale]
        st.caption(f"Or press a key from {lo} to {hi}: that rating of {d.findings[0]}, saved, and the next read.")
        cols = st.columns(hi - lo + 1)
        for col, v in zip(cols, range(lo, hi + 1)):
            if col.button(words.split(" · ")[v - lo], key=f"{key}_quick_{v}", shortcut=str(v)):
                quick = v
    st.caption("Keys: Ctrl+Enter (⌘+Enter) saves and goes on · Page Up: the previous read · Page Down: back to "
               "the next unread one.")
    nav = st.columns(4)
    if task.position > 1 and nav[0].button("← Previous read", key=f"{key}_back", shortcut="PageUp"):
        st.session_state["rs_revisit"] = task.position - 1
        st.session_state.pop("rs_visit", None)
        st.rerun()
    if pos and nav[1].button("Back to the next unread case", key=f"{key}_resume", shortcut="PageDown"):
        st.session_state.pop("rs_revisit", None)
        st.session_state.pop("rs_visit", None)
        st.rerun()
    if quick is not None:
        go_on, ratings = True, {d.findings[0]: quick}
    if go_on:
        if lock:
            st.session_state.pop("rs_revisit", None)
            st.session_state.pop("rs_visit", None)
            st.rerun()
        try:
            session.submit(store, study_id, reader.number, task, ratings, marks, now=time.time())
        except CXRError as exc:
            show_error(exc)
            return
        st.session_state.pop("rs_revisit", None)
        st.session_state.pop(f"{key}_marks", None)
        st.session_state.pop("rs_visit", None)
        st.rerun()
