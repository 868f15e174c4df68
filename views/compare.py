"""Compare: upload an X-ray; baseline and fine-tuned predictions, Grad-CAM overlays and boxes."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrcore import hosting
from cxrcore.data.imageio import read_image
from cxrcore.errors import CXRError
from cxrcore.explain.cam import CAM_METHODS, SLOW_CAM_METHODS, model_cam_methods
from cxrcore.explain.visual import comparison_panel, overlay, png_bytes
from cxrcore.models.library import card_stamp
from ui import handoff
from ui.common import (chart_config, current_user, hosting_settings, image_compare_slider, load_predictor, model_picker,
                       md_text, require_checkpoints, run_comparison, run_uncertainty, show_error, show_model_cards,
                       site_picker)
from ui.pacs import pacs_config, pacs_picker, send_results
from ui.similar import similar_cases

st.title("Compare a baseline with a fine-tuned model")
st.caption("Upload a chest radiograph (PNG, JPEG or DICOM), or open one from the PACS where the operator set one up. "
           "Nothing is stored; DICOM metadata never leaves this process, except inside results you send to the PACS.")

choices = require_checkpoints()
c1, c2 = st.columns(2)
base_name = model_picker(c1, "Baseline model", choices, "compare_base", prefer=("baseline",))
tuned_name = model_picker(c2, "Fine-tuned model", choices, "compare_tuned", prefer=("finetuned",))
sites = (site_picker(c1, choices[base_name], "compare_base_site"), site_picker(c2, choices[tuned_name],
                                                                             "compare_tuned_site"))

mc = st.toggle("Uncertainty: Monte-Carlo dropout, 20 passes per model (shown as ± one standard deviation)",
               value=True, key="compare_mc")
pacs = pacs_config()   # the operator's PACS (CXR_DICOMWEB_URL), or None
FROM_PACS = "A study from the PACS"
source = st.radio("Image", ["Upload a file", "A held-out phantom test image (ground truth known)"]
                  + ([FROM_PACS] if pacs is not None else []), horizontal=True, key="compare_source")
raw, name, truth = None, None, None
second = None  # (bytes, name) of a second view of the same study
if source == FROM_PACS:
    picked = pacs_picker(pacs)
    if picked is not None:
        (raw, name), second = picked
elif source == "Upload a file":
    up = st.file_uploader("Chest X-ray", type=["png", "jpg", "jpeg", "dcm", "dicom"], key="compare_upload")
    if up is not None:
        try:  # the operator's limit (CXR_MAX_UPLOAD_MB), also Streamlit's server.maxUploadSize through run.sh
            hosting.check_upload_size(up.size, hosting_settings(), up.name)
        except CXRError as exc:
            show_error(exc)
            st.stop()
        raw, name = up.getvalue(), up.name
    up2 = st.file_uploader("Another view of the same study (optional, e.g. the lateral): both views' predictions are "
                           "combined into the study's", type=["png", "jpg", "jpeg", "dcm", "dicom"],
                           key="compare_upload2")
    if up2 is not None:
        try:
            hosting.check_upload_size(up2.size, hosting_settings(), up2.name)
        except CXRError as exc:
            show_error(exc)
            st.stop()
        second = (up2.getvalue(), up2.name)
else:
    from cxrcore.demo import sample_cases

    try:
        cases = sample_cases()
    except CXRError as exc:
        show_error(exc)
        st.stop()
    labels_of = {c["image_id"]: c for c in cases}
    pick = st.selectbox("Test image", list(labels_of), key="compare_sample",
                        format_func=lambda k: f"{k.split('/')[-3]} — {', '.join(labels_of[k]['truth']) or 'No Finding'}")
    case = labels_of[pick]
    raw, name, truth = Path(case["path"]).read_bytes(), Path(case["path"]).name, case["truth"]


def models_at_a_glance(paths: dict[str, str], key: str) -> None:
    """Per label, each model's operating threshold and the AUROC its card records on its own held-out split
    (test, else validation), with what that split was: how far each label's output can be trusted at all
    (:func:`cxrcore.compare.held_out`)."""
    from cxrcore.checkpoint import read_card
    from cxrcore.compare import glance_rows, held_out

    models = {}
    for who, path in paths.items():
        try:
            models[who] = held_out(read_card(path))
        except CXRError as exc:
            show_error(exc)
    rows = glance_rows(models)
    if not rows:
        return
    fig = go.Figure()
    notes = []
    for who, h in models.items():
        if h.split:
            where = md_text(h.dataset or "its dataset")  # a dataset folder's name: anyone's
            notes.append(f"{who}: AUROC on the {'test' if h.split == 'test' else 'validation'} split of {where}"
                         + (f" ({h.n} images)" if h.n else "") + f" — {md_text(h.trained_on or 'training data not recorded')}")
            shown = [lab for lab, v in h.auroc.items() if v is not None]
            fig.add_bar(y=shown, x=[h.auroc[lab] for lab in shown], name=who, orientation="h")
        else:
            notes.append(f"{who}: its card records no held-out AUROC (e.g. a library model as published); "
                         "measure it on your data on the Evaluation page")
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch", key=f"{key}_table", placeholder="–",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if c != "label"})
    if fig.data:
        fig.add_vline(x=0.5, line_dash="dot", annotation_text="chance", annotation_position="top")
        fig.update_layout(title="Held-out AUROC per label, as recorded in each model's card", barmode="group",
                          height=22 * len(rows) * max(1, len(fig.data)) // 2 + 120, margin=dict(l=10, r=10, t=50, b=10),
                          xaxis=dict(range=[0, 1], title="AUROC"), yaxis=dict(autorange="reversed"),
                          legend=dict(orientation="h", y=-0.15))
        st.plotly_chart(fig, key=f"{key}_chart", config=chart_config())
    for note in notes:
        st.caption(note)


if raw is None:
    st.info("Upload an image to start, or pick a held-out phantom test image.")
    st.subheader("The two models at a glance")
    models_at_a_glance({"baseline": choices[base_name], "fine-tuned": choices[tuned_name]}, "compare_glance")
    st.stop()


@st.cache_data(show_spinner="Computing the heatmap with pytorch-grad-cam…", max_entries=64)
def _method_map(raw: bytes, name: str, path: str, stamp: tuple, label: str, method: str):
    if method in SLOW_CAM_METHODS:  # ScoreCAM: a forward pass per channel; a shared server: one heavy job per visitor
        access = hosting_settings()
        with hosting.heavy_slot(current_user(access), access):
            return load_predictor(path).heatmap(read_image(raw, name), label, method)
    heat, boxes = load_predictor(path).heatmap(read_image(raw, name), label, method)
    return heat, boxes


def with_method(pred, raw: bytes, name: str, path: str, label: str, method: str):
    """``pred`` with ``label``'s heatmap and boxes replaced by another CAM method's."""
    if label not in pred.labels:
        return pred
    heat, boxes = _method_map(raw, name, path, card_stamp(path), label, method)
    maps = pred.heatmaps.copy()
    maps[pred.labels.index(label)] = heat
    return replace(pred, heatmaps=maps, boxes={**pred.boxes, label: boxes})


@st.cache_data(show_spinner="Scoring the heatmap's faithfulness (ROAD and deletion / insertion: about 60 forward "
                            "passes per model)…", max_entries=32)
def _faithfulness(raw: bytes, name: str, path: str, stamp: tuple, label: str, method: str) -> dict:
    from cxrcore.explain.faithfulness import predictor_faithfulness

    access = hosting_settings()
    with hosting.heavy_slot(current_user(access), access):  # a shared server: one heavy computation per visitor
        return predictor_faithfulness(load_predictor(path), read_image(raw, name), label, method).to_dict()


def _faithfulness_figure(scores: dict) -> go.Figure:
    """ROAD (p after removing a share of pixels, most / least relevant first) and deletion / insertion curves."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("ROAD: p after removing a share", "Deletion / insertion"))
    dashes = ["solid", "dot"]
    for k, (mname, f) in enumerate(scores.items()):
        dash = dashes[k % 2]
        fig.add_scatter(x=[0.0] + f["road_removed"][::-1], y=[f["prob"]] + f["road_morf_p"][::-1], row=1, col=1,
                        name=f"{mname}: MoRF", line=dict(color="#d62728", dash=dash))
        fig.add_scatter(x=[0.0] + f["road_removed"][::-1], y=[f["prob"]] + f["road_lerf_p"][::-1], row=1, col=1,
                        name=f"{mname}: LeRF", line=dict(color="#2ca02c", dash=dash))
        fig.add_scatter(x=f["fractions"], y=f["deletion_p"], row=1, col=2, name=f"{mname}: deletion",
                        line=dict(color="#9467bd", dash=dash))
        fig.add_scatter(x=f["fractions"], y=f["insertion_p"], row=1, col=2, name=f"{mname}: insertion",
                        line=dict(color="#1f77b4", dash=dash))
    fig.update_xaxes(title_text="share of pixels removed", range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="share of pixels removed / inserted, most relevant first", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="probability", range=[0, 1])
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), legend=dict(font=dict(size=10)))
    return fig


def _faithfulness_section(raw: bytes, name: str, models: dict, label: str, method: str) -> None:
    """``models``: name -> (checkpoint path, the model's spelling of ``label`` or None when it lacks it)."""
    # On demand (it costs about 60 forward passes per model): is this heatmap what the model uses?
    from cxrcore.explain.faithfulness import HOW_TO_READ, TARGET_NOTE
    from cxrcore.models.library import card_stamp

    key = (hash(raw), name, tuple(models.values()), label, method)
    with st.expander(f"Is the {method} heatmap of {md_text(label)} faithful to the model? (ROAD, deletion / insertion)",
                     expanded=st.session_state.get("compare_faith") == key):
        st.caption("Perturbs the model's input in the order the heatmap ranks the pixels and follows the label's "
                   "probability: a faithful map's top pixels matter to the model, its bottom ones do not. "
                   "About 60 forward passes per model, a few seconds each on a CPU.")
        if st.button("Score faithfulness", key="compare_faith_run"):
            st.session_state["compare_faith"] = key
        if st.session_state.get("compare_faith") != key:
            return
        scores, rows = {}, []
        for mname, (path, own) in models.items():
            if own is None:
                st.caption(f"{mname} has no '{md_text(label)}' output: nothing to score.")
                continue
            try:
                f = _faithfulness(raw, name, path, card_stamp(path), own, method)
            except CXRError as exc:
                show_error(exc)
                continue
            scores[mname] = f
            rows.append({"model": mname, "p": f["prob"], "ROAD combined ↑": f["road_combined"],
                         "ROAD MoRF ↓": f["road_morf"], "ROAD LeRF ↑": f["road_lerf"],
                         "deletion AUC ↓": f["deletion_auc"], "insertion AUC ↑": f["insertion_auc"],
                         "seconds": f["seconds"]})
        if not rows:
            return
        st.dataframe(pd.DataFrame(rows).round(3), hide_index=True, width="stretch", key="compare_faith_table")
        st.caption(HOW_TO_READ + f" Scored on {TARGET_NOTE}; ROAD removes pixels by noisy linear imputation "
                   "(pytorch-grad-cam's), deletion fills them with the mean, insertion starts from a blurred copy.")
        st.plotly_chart(_faithfulness_figure(scores), key="compare_faith_chart", config=chart_config())


MC_SAMPLES = 20
try:  # the first answer: both models' probabilities and every label's heatmap (one pass each)
    result = run_comparison(raw, name, choices[base_name], choices[tuned_name], truth, 0, sites=sites)
except CXRError as exc:
    show_error(exc)
    st.stop()

image = result.image


def hand_to_explain(res) -> None:
    """``res`` for the Explain page, with the names of the two models (the roles stay baseline / fine-tuned)."""
    handoff.send(st.session_state, handoff.Handoff(res, origin="the Compare page", image_id=name,
                                                   names={"baseline": base_name, "fine-tuned": tuned_name}))


hand_to_explain(result)
h, w = image.original_shape
st.caption(f"{md_text(name)}: {image.source_format}, {w}×{h}, {image.bit_depth}-bit"  # the file's own name and notes
           + (f" · {md_text('; '.join(image.notes))}" if image.notes else ""))
if truth is not None:
    st.caption(f"Ground truth: {md_text(', '.join(truth) or 'No Finding')}")
if result.ood is not None and result.ood.is_suspect:
    st.warning("This image may not be a frontal chest radiograph: " + "; ".join(result.ood.reasons)
               + ". The models were not made for it; treat their outputs with care.")

for text in dict.fromkeys(w.text for p in result.predictions.values() for w in p.warnings):
    st.warning(md_text(text), icon="⚠️")  # above the numbers, never folded away; it names the model (anyone's job)
st.caption(" · ".join(f"{m} trained on: {md_text(p.trained_on or 'not recorded')}" for m, p in result.predictions.items()))
for m, p in result.predictions.items():   # which site profile gave a model's thresholds and calibrated probabilities
    if p.site:
        st.info(f"{m}: used at site **{md_text(p.site['name'])}**: thresholds and temperatures fitted on "
                f"{md_text(str(p.site.get('fitted_on') or ''))} ({p.site.get('n')} cases) for "
                f"{len(p.site.get('labels') or [])} label(s); the model itself is unchanged.")

table = result.table()
left, right = st.columns([3, 2])
with left:
    label = st.selectbox("Heatmap for label", result.labels(), key="compare_label",
                         index=int(np.nanargmax(table["fine-tuned p"].fillna(-1).to_numpy())))
    # a model's own maps (CLIP: patch-token similarity to the label's text embedding) after pytorch-grad-cam's
    own = {m: model_cam_methods(load_predictor(str(pth)).model) for m, pth in result.model_paths.items()}
    method = st.selectbox("Heatmap method", CAM_METHODS + tuple(dict.fromkeys(x for v in own.values() for x in v)),
                          key="compare_method",
                          help="GradCAM comes with the prediction (one pass gives every label's map). The other "
                               "pytorch-grad-cam methods run for the chosen label when you pick them. "
                               "PatchTextSimilarity (CLIP models only): how similar each image patch, projected into "
                               "CLIP's joint space, is to the label's text embedding (present minus absent prompts).")
    preds = result.for_label(label)
    if method != "GradCAM":
        try:
            preds = {m: (with_method(p, raw, name, result.model_paths[m], label, method)
                         if method in CAM_METHODS or method in own.get(m, ()) else p) for m, p in preds.items()}
        except CXRError as exc:
            show_error(exc)
        for m in preds:
            if method not in CAM_METHODS and method not in own.get(m, ()):
                st.caption(f"{m} has no {method} map (not a CLIP model): its GradCAM map is shown.")
    cols = st.columns(len(preds) + 1)
    cols[0].image(image.pixels, caption="Input", clamp=True, width="stretch")
    overlays = {}
    for col, (mname, pred) in zip(cols[1:], preds.items()):
        if label in pred.labels:
            i = pred.labels.index(label)
            overlays[mname] = overlay(image.pixels, pred.heatmaps[i], pred.boxes.get(label), label)
            col.image(overlays[mname], width="stretch",
                      caption=f"{mname}: {md_text(label)} p={pred.probs[i]:.2f} (threshold {pred.thresholds[i]:.2f}) · {method}")
            if pred.heatmaps[i].max() <= 0:
                col.caption("Empty heatmap: no region raises this label's score (Grad-CAM keeps positive evidence only).")
            for b in pred.boxes.get(label, []):
                col.caption(f"box x={b.x:.2f} y={b.y:.2f} w={b.w:.2f} h={b.h:.2f} · peak {b.score:.2f}")
        else:
            col.image(image.pixels, clamp=True, width="stretch", caption=f"{mname}: has no '{md_text(label)}' output")
    st.caption(f"Heatmap method: {method}" + (" (with the prediction, every label in one pass)" if method == "GradCAM"
                                              else " (pytorch-grad-cam, this label only)" if method in CAM_METHODS
                                              else " (the model's own map, this label only)"))
    if len(overlays) == 2:
        with st.expander("Slide between the two overlays", expanded=False):
            (n1, o1), (n2, o2) = overlays.items()
            image_compare_slider(png_bytes(o1), png_bytes(o2), n1, n2)
    _faithfulness_section(raw, name, {m: (result.model_paths[m], result.label_in(m, label)) for m in preds},
                          label, method)
    panel = comparison_panel(image.pixels, preds, label, truth)
    st.download_button("Download comparison panel (PNG)", png_bytes(panel), file_name=f"compare-{label}.png",
                       mime="image/png", key="compare_panel_dl")
with right:
    bars_slot, mc_slot = st.empty(), st.empty()
table_slot = st.empty()
st.caption("Heatmaps: " + ", ".join(f"{m}: {p.cam_method}, {p.cam_grid[0]}×{p.cam_grid[1]} feature cells "
                                    f"upsampled over the image, {p.seconds * 1000:.0f} ms" for m, p in result.predictions.items()))


def show_numbers(res, stage: str) -> None:
    """The probability bars and the table of ``res``; ``stage``: "first" (the Monte-Carlo spread is still being
    computed, said so) or "final"."""
    tab = res.table()
    fig = go.Figure()
    for mname in res.predictions:
        err = tab.get(f"{mname} ± sd")
        fig.add_bar(y=tab["label"], x=tab[f"{mname} p"], name=mname, orientation="h",
                    error_x=dict(type="data", array=err.fillna(0).tolist(), visible=True) if err is not None else None)
    fig.update_layout(title="Probability per label" + (" ± one standard deviation (Monte-Carlo dropout)"
                                                       if stage == "final" and mc else ""),
                      barmode="group", height=36 * len(tab) + 100, margin=dict(l=10, r=10, t=60, b=10),
                      xaxis=dict(range=[0, 1], title="probability"), yaxis=dict(autorange="reversed"),
                      legend=dict(orientation="h", y=1.02))
    bars_slot.plotly_chart(fig, key=f"compare_bars_{stage}", config=chart_config())
    with mc_slot.container():
        if stage == "first" and mc:
            st.info(f"Monte-Carlo dropout spread: coming ({MC_SAMPLES} passes per model). The probabilities and "
                    "heatmaps shown are final; the ± one standard deviation bars and column are added when ready.",
                    icon=":material/hourglass_top:")
        for m, p in res.predictions.items():
            if p.mc:
                st.caption(f"{m}: {p.mc['note']}")
    shown = tab.copy()
    for col in shown.columns:
        if col.endswith(" p") or col.endswith("± sd"):
            shown[col] = shown[col].round(3)
    table_slot.dataframe(shown, hide_index=True, width="stretch", key=f"compare_table_{stage}")


show_numbers(result, "first")
if mc:  # the slow part, after the first answer is on screen
    try:
        result = run_uncertainty(raw, name, choices[base_name], choices[tuned_name], truth, MC_SAMPLES, sites=sites)
    except CXRError as exc:
        show_error(exc)
    else:
        hand_to_explain(result)
        show_numbers(result, "final")


@st.cache_data(show_spinner="Predicting the second view…", max_entries=16)
def _second_view(raw: bytes, name: str, base_path: str, tuned_path: str, stamps: tuple):
    """The second view through both models (probabilities only): the same pipeline as the first."""
    from cxrcore.compare import compare, load_image

    image, data = load_image(raw, name)
    return compare(image, {"baseline": load_predictor(base_path), "fine-tuned": load_predictor(tuned_path)}, name,
                   raw=data, heatmaps=False)


if second is not None:
    from cxrcore.compare import study

    st.subheader("The study: both views combined")
    how = st.radio("Combine the two views' probabilities by", ["mean", "max"], horizontal=True, key="compare_fuse",
                   help="seed 003's study-level fusion of frontal and lateral predictions")
    try:
        other = _second_view(second[0], second[1], choices[base_name], choices[tuned_name],
                             (card_stamp(choices[base_name]), card_stamp(choices[tuned_name])))
        fused = study([result, other], how)
    except CXRError as exc:
        show_error(exc)
    else:
        for mname, pred in other.predictions.items():
            for w in pred.warnings:
                st.warning(f"{md_text(second[1])} ({mname}): {md_text(w.text)}", icon="⚠️")
        st.dataframe(fused.table(), hide_index=True, width="stretch", key="compare_study")
        st.caption(f"Study probability = the {how} of the two views' (the heatmaps above are the first view's).")

if source == FROM_PACS:
    send_results(pacs, result, label, raw, name, {"baseline": base_name, "fine-tuned": tuned_name})
similar_cases(image, {"baseline": choices[base_name], "fine-tuned": choices[tuned_name]})   # ui/similar.py
show_model_cards({"baseline": choices[base_name], "fine-tuned": choices[tuned_name]})
with st.expander("The two models at a glance: thresholds and held-out AUROC per label", expanded=False):
    models_at_a_glance({"baseline": choices[base_name], "fine-tuned": choices[tuned_name]}, "compare_glance_after")
st.page_link("views/explain.py", label="Explain this comparison →")
