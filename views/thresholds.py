"""Thresholds: per-label sliders over cached validation predictions; save them into the card."""
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sklearn.metrics import roc_curve

from cxrcore.checkpoint import read_card
from cxrcore.errors import CXRError
from cxrcore.eval.metrics import confusion_at, per_label_auroc
from cxrcore.eval.thresholds import STRATEGIES, save_thresholds
from ui.common import checkpoint_choices, dataset_choices, load_predictor, show_error

st.title("Per-label decision thresholds")
st.caption("Move a slider: sensitivity, specificity, PPV, NPV, F1 and the confusion counts are recomputed from "
           "cached predictions of the validation split. No model runs while you tune.")

choices = checkpoint_choices()
if not choices:
    st.error("No checkpoints found. Run `cxr demo build` or train a model on the Training page.")
    st.stop()
names = list(choices)
default = next((i for i, n in enumerate(names) if n.startswith("finetuned")), 0)
c1, c2, c3 = st.columns([2, 2, 1])
model_name = c1.selectbox("Model", names, index=default, key="thr_model")
ckpt = choices[model_name]
card = read_card(ckpt)
try:
    datasets = dataset_choices()
except CXRError as exc:
    show_error(exc)
    st.stop()
fmt = card.data.get("format")
ds_names = list(datasets)
ds_default = next((i for i, n in enumerate(ds_names) if fmt and fmt in n), 0)
data_name = c2.selectbox("Dataset", ds_names, index=ds_default, key="thr_data")
split = c3.selectbox("Split", ["val", "test"], key="thr_split")


@st.cache_data(show_spinner="Predicting the split once (cached afterwards)…", max_entries=8)
def split_predictions(ckpt: str, weights: str, data: str, split: str):
    from cxrcore.eval.predictions import predict_split

    p = predict_split(load_predictor(ckpt), data, split)
    return p.labels, p.targets, p.probs, len(p.image_ids)


try:
    labels, targets, probs, n = split_predictions(ckpt, card.weights_sha256, datasets[data_name], split)
except CXRError as exc:
    show_error(exc)
    st.stop()

usable = [j for j in range(len(labels)) if np.nansum(targets[:, j]) > 0 and np.nansum(1 - targets[:, j]) > 0]
if not usable:
    st.warning(f"No label of this model has both positive and negative cases in the {split} split of {data_name}.")
    st.stop()
st.caption(f"{n} images in the {split} split of {data_name}; {len(usable)} of {len(labels)} labels have positives "
           "and negatives there (the others cannot be tuned on it).")

# Slider state lives in session state, keyed by model + label, so it survives reruns and page switches.
def key(label: str) -> str:
    return f"thr::{ckpt}::{label}"


for j in usable:
    st.session_state.setdefault(key(labels[j]), float(round(card.thresholds.get(labels[j], 0.5), 2)))

b1, b2, b3, b4 = st.columns(4)
strategy = b1.selectbox("Suggest", list(STRATEGIES), key="thr_strategy", label_visibility="collapsed")
if b2.button(f"Set all by {strategy}", key="thr_suggest"):
    suggested = STRATEGIES[strategy](targets[:, usable], probs[:, usable])
    for j, t in zip(usable, suggested):
        st.session_state[key(labels[j])] = float(np.clip(round(float(t), 2), 0.0, 1.0))
    st.rerun()
if b3.button("Reset to saved", key="thr_reset"):
    for j in usable:
        st.session_state[key(labels[j])] = float(round(card.thresholds.get(labels[j], 0.5), 2))
    st.rerun()

slider_cols = st.columns(3)
for k, j in enumerate(usable):
    slider_cols[k % 3].slider(labels[j], 0.0, 1.0, step=0.01, key=key(labels[j]))

thr = np.array([st.session_state[key(labels[j])] for j in usable])
t_use, p_use = targets[:, usable], probs[:, usable]
m = confusion_at(t_use, p_use, thr)
auroc = per_label_auroc(t_use, p_use)
table = pd.DataFrame({
    "label": [labels[j] for j in usable],
    "threshold": thr,
    "AUROC": auroc,
    "sensitivity": m["sensitivity"], "specificity": m["specificity"], "PPV": m["ppv"], "NPV": m["npv"],
    "F1": m["f1"], "TP": m["tp"], "FP": m["fp"], "FN": m["fn"], "TN": m["tn"],
})
st.dataframe(table.round(3), hide_index=True, width="stretch", key="thr_table")

if b4.button("Save thresholds to the checkpoint card", type="primary", key="thr_save"):
    try:
        where = save_thresholds(ckpt, {labels[j]: float(t) for j, t in zip(usable, thr)})
        note = "" if Path(where).resolve() == Path(ckpt).resolve() else (
            " (the shipped model stays untouched; the copy with your thresholds is now in the model lists)")
        st.success(f"Saved {len(usable)} thresholds to {where / 'card.json'}{note}.")
    except CXRError as exc:
        show_error(exc)

focus = st.selectbox("ROC curve for", [labels[j] for j in usable], key="thr_focus")
jj = [labels[j] for j in usable].index(focus)
mask = ~np.isnan(t_use[:, jj])
fpr, tpr, _ = roc_curve(t_use[mask, jj], p_use[mask, jj])
fig = go.Figure()
fig.add_scatter(x=fpr, y=tpr, mode="lines", name=f"ROC (AUROC {auroc[jj]:.3f})")
fig.add_scatter(x=[1 - m["specificity"][jj]], y=[m["sensitivity"][jj]], mode="markers", marker=dict(size=12),
                name=f"operating point at {thr[jj]:.2f}")
fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), showlegend=False)
fig.update_layout(xaxis_title="1 - specificity", yaxis_title="sensitivity", height=420, margin=dict(t=30, b=10))
st.plotly_chart(fig, key="thr_roc")
