"""Thresholds: per-label sliders over cached validation predictions; save them into the card."""
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cxrcore.checkpoint import read_card, shipped_copy_state
from cxrcore.errors import CXRError
from cxrcore.eval.metrics import per_label_auroc
from cxrcore.eval.thresholds import (MANUAL, OWN_COPY, STRATEGIES, TARGETED, ThresholdSweep, label_curves,
                                     operating_table, own_copies_root, save_site, save_target, save_thresholds, snap,
                                     suggest_thresholds, tunable_labels)
from cxrcore.eval.tuning import (gate_of, moved_thresholds, recombine, saved_threshold, slider_grid,
                                 threshold_origin, thresholds_to_save)
from cxrcore.models.library import default_thresholds
from ui.site_fit import site_fit_form, take_next
from ui.common import (chart_config, current_user, dataset_choices, ensure_weights, hosting_settings, load_predictor,
                       md_text, model_picker, require_checkpoints, show_error, site_picker)

st.title("Per-label decision thresholds")
st.caption("Move a slider: sensitivity, specificity, PPV, NPV, F1 and the confusion counts are recomputed from "
           "cached predictions of the validation split. No model runs while you tune.")

choices = require_checkpoints()
access = hosting_settings()
user = current_user(access)

for _name in ("baseline", "finetuned"):
    if shipped_copy_state(_name, own_copies_root(user, access)) == "older":
        st.info(f"Your saved thresholds for the shipped `{_name}` model were made for an earlier build of it (other "
                "weights), so they are not offered. Saving thresholds for it again makes a new copy; the old one is "
                f"kept as `checkpoints/{_name}.older-…` in the workspace.")
take_next("thr_model", "thr_site")   # after a site profile was fitted below: its model and site
c1, c2, c3, c4 = st.columns([2, 2, 1, 2])
model_name = model_picker(c1, "Model", choices, "thr_model", prefer=("finetuned",))
ckpt = choices[model_name]
try:
    ensure_weights(ckpt)  # a library model (xrv:…): its file fetched with a progress bar, or a clear error
    stored = read_card(ckpt)
except CXRError as exc:
    show_error(exc)
    st.stop()
# At a site (cxr site fit): the sliders start at the site profile's thresholds and Save writes into the profile;
# the model's own thresholds are left as they are.
site = site_picker(c4, ckpt, "thr_site")
card = stored.with_site(site)
# A library model's own operating points (torchxrayvision's op_threshs) are its defaults (a finer slider grid).
library_defaults = default_thresholds(card)
STEP, DIGITS = slider_grid(library_defaults)
try:
    datasets = dataset_choices()
except CXRError as exc:
    show_error(exc)
    st.stop()
site_fit_form(ckpt, datasets, user, access)   # a new site profile from a labelled sample (ui/site_fit.py)
fmt = card.data.get("format")
ds_names = list(datasets)
ds_default = next((i for i, n in enumerate(ds_names) if fmt and fmt in n), 0)
data_name = c2.selectbox("Dataset", ds_names, index=ds_default, key="thr_data")
split = c3.selectbox("Split", ["val", "test"], key="thr_split")


@st.cache_data(show_spinner="Predicting the split once (cached afterwards)…", max_entries=8)
def split_predictions(ckpt: str, weights: str, data: str, split: str):
    from cxrcore import hosting
    from cxrcore.eval.predictions import predict_split

    with hosting.heavy_slot(user, access):  # a shared server: one heavy computation per visitor at a time
        p = predict_split(load_predictor(ckpt), data, split, raw=True,  # a two-stage gate is applied below
                          limits=hosting.limits(access, user))  # CXR_MAX_EVAL_IMAGES for a visitor
    return p.labels, p.targets, p.probs, len(p.image_ids)


try:
    labels, targets, raw_probs, n = split_predictions(ckpt, card.weights_sha256, datasets[data_name], split)
except CXRError as exc:
    show_error(exc)
    st.stop()

usable = tunable_labels(targets)
if not usable:
    st.warning(f"No label of this model has both positive and negative cases in the {split} split of {md_text(data_name)}.")
    st.stop()
st.caption(f"{n} images in the {split} split of {md_text(data_name)}; {len(usable)} of {len(labels)} labels have positives "
           "and negatives there (the others cannot be tuned on it).")

# Slider state lives in session state, keyed by model + label, so it survives reruns and page switches.
def key(label: str) -> str:
    return f"thr::{ckpt}::{label}" if not site else f"thr::{ckpt}::site:{site}::{label}"


for j in usable:
    st.session_state.setdefault(key(labels[j]), saved_threshold(card.thresholds, labels[j], DIGITS))

# A two-stage model's disease probabilities depend on its one gate threshold (the gate label's slider):
# they are recombined from the raw outputs whenever it moves.
gate = gate_of(card.model, card.thresholds, labels,
               {x: st.session_state[key(x)] for x in labels if key(x) in st.session_state})
gate_t = gate.threshold if gate is not None else None
probs = recombine(raw_probs, card.model, gate)
if gate is not None:
    st.caption(f"Two-stage model: below the gate **{md_text(gate.label)}** at {gate_t:.2f} a finding's probability "
               "is " + ("reported as 0 (not assessed)" if gate.mode == "hard" else "scaled by the gate's")
               + "; moving the gate's slider recomputes every finding's figures.")


@st.cache_resource(max_entries=8, show_spinner=False)
def threshold_independent(ckpt: str, weights: str, data: str, split: str, usable: tuple[int, ...],
                          gate: float | None = None):
    """Everything a slider move does not change (but a two-stage gate move does): per-label sorted scores
    (for O(log N) confusion counts), AUROC, ROC and PR curves. Keyed by strings: no array hashing on reruns."""
    _, t_all, p_all, _ = split_predictions(ckpt, weights, data, split)
    p_all = recombine(p_all, read_card(ckpt).model, gate)
    t, p = t_all[:, list(usable)], p_all[:, list(usable)]
    return ThresholdSweep(t, p), per_label_auroc(t, p), label_curves(t, p)


b1, b5, b2, b3, b4 = st.columns([2, 1, 2, 2, 3])
strategy = b1.selectbox("Suggest", list(STRATEGIES) + [MANUAL], key="thr_strategy", label_visibility="collapsed")
target = b5.number_input("Target", min_value=0.0, max_value=1.0, value=0.9, step=0.01, format="%.2f",
                         key="thr_target", disabled=strategy not in TARGETED, label_visibility="collapsed",
                         help="Target sensitivity / specificity for the 'target …' strategies")
label_all = f"Set all by {strategy}" + (f" {target:.2f}" if strategy in TARGETED else "")
if b2.button(label_all, key="thr_suggest", disabled=strategy == MANUAL,
             help="Manual: move the sliders yourself" if strategy == MANUAL else None):
    suggested = snap(suggest_thresholds(strategy, targets[:, usable], probs[:, usable], target), strategy, STEP)
    for j, t in zip(usable, suggested):
        st.session_state[key(labels[j])] = float(t)
    st.rerun()
if b3.button("Reset to saved", key="thr_reset"):
    for j in usable:
        st.session_state[key(labels[j])] = saved_threshold(card.thresholds, labels[j], DIGITS)
    st.rerun()
if library_defaults and st.button("Reset to library default", key="thr_library_reset",
                                  help="torchxrayvision's operating points (op_threshs) for this weight set"):
    for j in usable:
        if labels[j] in library_defaults:
            st.session_state[key(labels[j])] = float(round(library_defaults[labels[j]], DIGITS))
    st.rerun()
if strategy in TARGETED:
    st.caption(f"{strategy.capitalize()} ≥ {target:.2f}: per label the "
               + ("highest threshold whose sensitivity reaches the target (rounded down to the slider's 0.01 grid)"
                  if strategy == "target sensitivity" else
                  "lowest threshold whose specificity reaches the target (rounded up to the slider's 0.01 grid)")
               + " on this split.")

slider_cols = st.columns(3)
for k, j in enumerate(usable):
    slider_cols[k % 3].slider(md_text(labels[j]), 0.0, 1.0,  # a label from someone's CSV: a Markdown label
                              step=STEP, key=key(labels[j]), format=f"%.{DIGITS}f")

thr = np.array([st.session_state[key(labels[j])] for j in usable])
sweep, auroc, curves = threshold_independent(ckpt, card.weights_sha256, datasets[data_name], split, tuple(usable),
                                             gate_t)
m = sweep.at(thr)
table = operating_table([labels[j] for j in usable], thr, m, auroc)


table.insert(2, "threshold origin", [threshold_origin(labels[j], t, card.thresholds, library_defaults, DIGITS)
                                     for j, t in zip(usable, thr)])
if library_defaults:
    st.caption("Library default: torchxrayvision's operating point (op_threshs) for this weight set, on its raw "
               "probabilities. Saving writes your thresholds to a copy in the workspace; the library model keeps its own.")
st.dataframe(table.round(DIGITS + 1), hide_index=True, width="stretch", key="thr_table")

# Where Save writes, and why, said before saving (the rule: cxrcore.eval.thresholds.save_target).
try:
    target = save_target(ckpt, user, access)
except CXRError as exc:
    show_error(exc)
    st.stop()
if target.kind == OWN_COPY:  # the reason names people and runs: escaped, shown as the literal text
    st.info(md_text(target.reason), icon=":material/person:")
elif target.reason:
    st.caption(md_text(target.reason))
if site:
    fitted_on = md_text(str(stored.sites[site].get("fitted_on", "")))
    st.caption(f"At site **{md_text(site)}**: the sliders start at its profile's thresholds (fitted on {fitted_on}; "
               "labels it did not fit start at the model's own), "
               "and Save writes them into the profile, each moved one marked as set by hand. The model's own "
               "thresholds are not changed.")
save_words = f"Save thresholds to site profile {site}" if site else "Save thresholds to the checkpoint card"
if b4.button(save_words, type="primary", key="thr_save", help=md_text(target.reason) or None):
    try:
        # a library default left as it is keeps its exact value (the slider shows it rounded)
        chosen = thresholds_to_save({labels[j]: float(t) for j, t in zip(usable, thr)}, card.thresholds,
                                    library_defaults, DIGITS)
        if site:
            from cxrcore.eval.site import with_thresholds

            moved = moved_thresholds({labels[j]: float(t) for j, t in zip(usable, thr)}, card.thresholds,
                                     library_defaults, DIGITS)   # sliders left alone record nothing
            where = save_site(ckpt, site, with_thresholds(stored.sites[site], moved,
                                                          f"Thresholds page, {split} split of {data_name}"),
                              user=user, settings=access)
        else:
            where = save_thresholds(ckpt, chosen, user=user, settings=access)
        note = "" if target.in_place else (
            f" (the {'card you were looking at' if target.kind == OWN_COPY else 'shipped / library model'} stays "
            f"untouched; the copy with your thresholds is now in the model lists as “{md_text(target.display)}”)")
        st.success(f"Saved {len(moved) if site else len(usable)} thresholds to {md_text(where / 'card.json')}"
                   + (f" (site profile {md_text(site)})" if site else "") + f"{note}.")
    except CXRError as exc:
        show_error(exc)

st.download_button("Download the table as CSV", table.to_csv(index=False).encode(), key="thr_csv",
                   file_name=f"thresholds_{Path(ckpt).name}_{split}.csv", mime="text/csv")

focus = st.selectbox("ROC and PR curves for", [labels[j] for j in usable], key="thr_focus")
jj = [labels[j] for j in usable].index(focus)
cv = curves[jj]
sens, spec, ppv = m["sensitivity"][jj], m["specificity"][jj], m["ppv"][jj]
roc = go.Figure()
roc.add_scatter(x=cv["fpr"], y=cv["tpr"], mode="lines", name=f"ROC (AUROC {auroc[jj]:.3f})")
roc.add_scatter(x=[1 - spec], y=[sens], mode="markers", marker=dict(size=12), name=f"operating point at {thr[jj]:.2f}")
roc.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), showlegend=False)
roc.update_layout(title=f"ROC: {focus}", xaxis_title="1 - specificity", yaxis_title="sensitivity", height=420,
                  margin=dict(t=40, b=10), legend=dict(orientation="h", y=-0.2))
pr = go.Figure()
pr.add_scatter(x=cv["recall"], y=cv["precision"], mode="lines", line_shape="hv", name="precision-recall")
pr.add_scatter(x=[sens], y=[0.0 if np.isnan(ppv) else ppv], mode="markers", marker=dict(size=12),
               name=f"operating point at {thr[jj]:.2f}")
pr.add_scatter(x=[0, 1], y=[cv["prevalence"]] * 2, mode="lines", line=dict(dash="dot", color="gray"),
               name=f"prevalence {cv['prevalence']:.3f}")
pr.update_layout(title=f"Precision-recall: {focus}", xaxis_title="recall (sensitivity)", yaxis_title="precision (PPV)",
                 yaxis_range=[0, 1.02], height=420, margin=dict(t=40, b=10), legend=dict(orientation="h", y=-0.2))
g1, g2 = st.columns(2)
with g1:
    st.plotly_chart(roc, key="thr_roc", config=chart_config())
with g2:
    st.plotly_chart(pr, key="thr_pr", config=chart_config())
st.caption("The marker is the current slider threshold. Use the camera icon in a chart's toolbar (top right, on "
           "hover) to download it as PNG or SVG (choose in the sidebar).")
