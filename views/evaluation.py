"""Evaluation: metrics with patient-bootstrap CIs, a paired comparison, calibration and a case browser."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrcore.errors import CXRError
from cxrcore.explain.cases import bucket_help, bucket_names
from cxrcore.eval.session import call_is_right, evaluate_with_cases
from cxrcore.eval.subgroups import gap_table, top_gaps
from cxrcore import hosting
from cxrcore.eval.tta import VIEWS as TTA_VIEWS
from cxrcore.hosting import HOW_TO_ENABLE_FOLDERS, resolve_data_path
from cxrcore.models.library import card_stamp
from ui.common import (chart_config, current_user, dataset_choices, ensure_weights, hosting_settings, load_predictor,
                       md_text, model_picker, require_checkpoints, show_error, site_picker)

st.title("Evaluate a model on a dataset split")
st.caption("Every interval is a percentile bootstrap that resamples patients (all images of a drawn patient). "
           "Model outputs are cached in the workspace: a second evaluation of the same split runs no model.")

NONE = "(no comparison)"
OTHER = "A folder path…"

choices = require_checkpoints()
c1, c2 = st.columns(2)
model_name = model_picker(c1, "Model", choices, "eval_model", prefer=("baseline (shipped demo)", "baseline"))
cmp_name = model_picker(c2, "Compare with (ΔAUROC = this − Model)", {NONE: "", **choices}, "eval_compare",
                        prefer=("finetuned (shipped demo)", "finetuned"))
site = site_picker(c1, choices[model_name], "eval_site")   # the Model as used at a site (its profile's thresholds)

try:
    datasets = dataset_choices()
except CXRError as exc:
    show_error(exc)
    datasets = {}
d1, d2, d3, d4 = st.columns([3, 1, 1, 1])
data_name = d1.selectbox("Dataset", list(datasets) + [OTHER], key="eval_data")
access = hosting_settings()
user = current_user(access)
limits = hosting.limits(access, user)  # the operator's ceilings on this visitor's work (none locally by default)
if data_name == OTHER and not access.typed_folders_allowed:
    st.info(HOW_TO_ENABLE_FOLDERS)
    data_path = ""
elif data_name == OTHER:
    data_path = st.text_input("Dataset folder (NIH or CheXpert layout)", key="eval_folder",
                              placeholder="/path/to/nih-sample").strip()
    if access.roots_configured:
        st.caption("This server opens folders inside: " + ", ".join(f"`{r}`" for r in access.data_roots))
else:
    data_path = datasets[data_name]
SPLIT_LABELS = {"test": "test (the model's own)", "val": "val (the model's own)", "all": "all images",
                "official_test": "official test list"}
split = d2.selectbox("Split", list(SPLIT_LABELS), key="eval_split", format_func=SPLIT_LABELS.get,
                     help="The model's own split is the one its training used (hash, stratified or official, from "
                          "its card). The official test list is the dataset's own (NIH test_list.txt, CheXpert "
                          "valid.csv), for figures comparable with papers.")
POLICY_LABELS = {"": "as the model was trained", "zeros": "absent (U-Zeros)", "ones": "present (U-Ones)",
                 "ignore": "left out (U-Ignore)"}
p1, p2 = st.columns(2)
policy_choice = p1.selectbox("Uncertain labels (CheXpert -1)", list(POLICY_LABELS), key="eval_policy",
                             format_func=POLICY_LABELS.get,
                             help="How the dataset's uncertain labels count when scoring. Default: the model's own "
                                  "training policy (from its card), so a model trained with U-Ones is not scored as if "
                                  "uncertain meant absent.")
TTA_LABELS = {"none": "none", "flip": "image + mirror (2 views)", "tencrop": "CheXNet ten-crop (10 views)"}
tta_choice = p2.selectbox("Test-time augmentation", [m for m in TTA_LABELS if limits.allows("tta_views", TTA_VIEWS[m])],
                          key="eval_tta", format_func=TTA_LABELS.get,
                          help="Probabilities averaged over views of each image (cxrcore.eval.tta); each view is one "
                               "more model pass. " + limits.note("tta_views"))
boot_max = limits.widget_max("bootstrap", 10000)
n_boot = int(d3.number_input("Bootstrap replicates", min_value=10, max_value=boot_max, value=min(500, boot_max), step=50,
                             key="eval_nboot", help=limits.note("bootstrap") or None))
clicked = d4.button("Evaluate", type="primary", key="eval_run", width="stretch")


@st.cache_data(show_spinner=False, max_entries=8)
def run_eval(ckpt: str, ckpt_key: tuple, other: str | None, other_key: tuple | None, data: str, split: str,
             n_boot: int, policy: str | None = None, tta: str = "none", site: str | None = None):
    """(result dict, EvalData, Cases for the browser) of one evaluation (cxrcore.eval.session)."""
    with hosting.heavy_slot(user, access):  # a shared server: one heavy computation per visitor at a time
        return evaluate_with_cases(ckpt, data, split, n_boot, other, policy=policy, tta=tta, limits=limits,
                                   load=load_predictor, site=site)


if clicked:
    if not data_path:
        st.error("Enter a dataset folder path first.")
    else:
        try:
            if data_name == OTHER:  # a typed folder: symlinks and .. resolved, then the operator's data roots checked
                data_path = str(resolve_data_path(data_path, access))
            for chosen in (choices[model_name], choices.get(cmp_name)):
                if chosen:
                    ensure_weights(chosen)  # a library model's file: fetched with a progress bar, or a clear error
            keys = (card_stamp(choices[model_name]), card_stamp(choices[cmp_name]) if cmp_name != NONE else None)
            st.session_state["eval_params"] = dict(
                ckpt=choices[model_name], ckpt_key=keys[0], other=choices.get(cmp_name), other_key=keys[1],
                data=data_path, split=split, n_boot=n_boot, policy=policy_choice, tta=tta_choice, site=site,
                names=(model_name, cmp_name if cmp_name != NONE else None), data_name=data_name)
        except CXRError as exc:
            show_error(exc)

params = st.session_state.get("eval_params")
if not params:
    st.info("Choose a model, a dataset and a split, then press **Evaluate**.")
    st.stop()

try:
    with st.spinner(f"Evaluating on the {params['split']} split ({params['n_boot']} patient-bootstrap replicates; "
                    "the first run predicts every image)…"):
        result, ev, cases = run_eval(params["ckpt"], params["ckpt_key"], params["other"], params["other_key"],
                                     params["data"], params["split"], params["n_boot"], params.get("policy", ""),
                                     params.get("tta", "none"), params.get("site"))
except Exception as exc:  # CXRError: the user's input; anything else: reported without a traceback
    st.session_state.pop("eval_params", None)
    show_error(exc)
    st.stop()

name_a = params["names"][0]
name_b = params["names"][1]
if name_b == name_a:
    name_b = f"{name_b} (2)"
current = (choices.get(model_name), choices.get(cmp_name), data_path, split, n_boot, policy_choice, tta_choice, site)
if current != (params["ckpt"], params["other"], params["data"], params["split"], params["n_boot"],
               params.get("policy", ""), params.get("tta", "none"), params.get("site")):
    st.caption(":orange[The selection changed since this evaluation; press Evaluate to update.]")

per = result["per_label"]
summary = result["summary"]
labels = result["labels"]
if not summary["labels_evaluated"]:
    why = md_text("; ".join(f"{k}: {v}" for k, v in summary["labels_not_evaluated"].items()))  # labels: a CSV's
    st.error(f"None of the labels of {name_a} has both positive and negative cases in the {result['split']} split "
             f"of {md_text(result['dataset'])} ({why}). Choose a dataset labelled with this model's findings.")
    st.stop()

# --------------------------------------------------------------------------- summary
conf = int(round(100 * (1 - result["bootstrap"]["alpha"])))


def _point(m: dict | None, signed: bool = False) -> str:
    return "–" if not m or m.get("value") is None else f"{m['value']:{'+' if signed else ''}.3f}"


def _ci_label(name: str, m: dict | None) -> str:
    """A metric's label carrying its interval (the value itself stays short enough to show in full)."""
    if not m or m.get("low") is None:
        return name
    return f"{name} · {conf}% CI {m['low']:.3f} to {m['high']:.3f}"


st.subheader(f"{name_a} on {md_text(result['dataset'])} · {result['split']}")  # a dataset folder's name: anyone's
_pol = result["policy"] if isinstance(result["policy"], str) else json.dumps(result["policy"])
st.caption(f"Images: {result['split_description']}. Uncertain labels scored as **{md_text(_pol)}** "
           f"({result['policy_source']})."
           + (f" Probabilities averaged over test-time views: {TTA_LABELS[result['tta']]}."
              if result.get("tta", "none") != "none" else ""))
if result.get("site"):
    _site = result["site"]
    st.info(f"{md_text(name_a)} evaluated as used at site **{md_text(_site['name'])}**: the thresholds (and "
            f"temperatures) fitted on {md_text(str(_site.get('fitted_on') or ''))} for "
            f"{len(_site.get('labels') or [])} label(s); operating metrics and the case browser use them.")
s1, s2, s3, s4 = st.columns(4)
s1.metric(_ci_label("Mean AUROC", summary["mean_auroc"]), _point(summary["mean_auroc"]))
s2.metric(_ci_label("Mean AUPRC", summary["mean_auprc"]), _point(summary["mean_auprc"]))
s3.metric("Images", result["n_images"])
s4.metric("Patients", result["n_patients"])
m1, m2, m3, m4 = st.columns(4)
m1.metric(_ci_label("Samples precision", summary.get("samples_precision")), _point(summary.get("samples_precision")))
m2.metric(_ci_label("Samples recall", summary.get("samples_recall")), _point(summary.get("samples_recall")))
m3.metric(_ci_label("Samples F1", summary.get("samples_f1")), _point(summary.get("samples_f1")),
          help="Per image over its labels at the card's thresholds, then averaged (seed 004); an image with "
               "nothing to find and nothing predicted counts 1.")
m4.metric(_ci_label("Subset accuracy", summary.get("subset_accuracy")), _point(summary.get("subset_accuracy")))
not_eval = summary["labels_not_evaluated"]
st.caption(f"Means over the {len(summary['labels_evaluated'])} labels with positives and negatives. "
           + (f"Not evaluated: {md_text(', '.join(f'{k} ({v})' for k, v in not_eval.items()))}. " if not_eval else "")
           + f"{result['bootstrap']['n_boot']} replicates resampling patients; up to "
             f"{result['max_images_per_patient']} images per patient.")

# --------------------------------------------------------------------------- per label
rows = []
for x in labels:
    m = per[x]
    rows.append({
        "label": x, "n": m["n"], "positives": m["positives"],
        "AUROC": m["auroc"]["value"], "AUROC low": m["auroc"]["low"], "AUROC high": m["auroc"]["high"],
        "AUPRC": m["auprc"]["value"], "AUPRC low": m["auprc"]["low"], "AUPRC high": m["auprc"]["high"],
        "threshold": m["threshold"],
        "sensitivity": m["sensitivity"]["value"], "specificity": m["specificity"]["value"],
        "PPV": m["ppv"]["value"], "NPV": m["npv"]["value"], "F1": m["f1"]["value"],
        "ECE": m["ece"]["value"], "Brier": m["brier"]["value"],
    })
table = pd.DataFrame(rows)
if result.get("reference"):  # NIH-14: published AUROCs beside the model's (cxrcore.eval.reference)
    for key, ref in result["reference"].items():
        table[f"{ref['title']} AUROC"] = [ref["auroc"].get(x) for x in labels]
num = [c for c in table.columns if c not in ("label", "n", "positives")]
table[num] = table[num].astype(float)
st.markdown("**Per label** (rates at the card's thresholds; None = undefined on this split)")
st.dataframe(table.round(3), hide_index=True, width="stretch", key="eval_table")
if result.get("reference"):
    st.caption("Published AUROCs for reference, not results of this model: "
               + " ".join(f"**{r['title']}** — {r['split']}; {r['citation']}" for r in result["reference"].values()))

ev_labels = [x for x in labels if per[x]["evaluable"] and per[x]["auroc"]["value"] is not None]
fig = go.Figure()
vals = [per[x]["auroc"] for x in ev_labels]
fig.add_scatter(x=[v["value"] for v in vals], y=ev_labels, mode="markers", marker=dict(size=9),
                name=f"AUROC, {conf}% patient-bootstrap CI",
                error_x=dict(type="data", symmetric=False,
                             array=[(v["high"] - v["value"]) if v["high"] is not None else 0 for v in vals],
                             arrayminus=[(v["value"] - v["low"]) if v["low"] is not None else 0 for v in vals]))
fig.add_vline(x=0.5, line_dash="dot", line_color="gray")
fig.update_layout(title="AUROC per label", xaxis=dict(range=[0, 1.02], title="AUROC"),
                  yaxis=dict(autorange="reversed"), height=110 + 28 * len(ev_labels), margin=dict(t=40, b=10))
st.plotly_chart(fig, key="eval_forest", config=chart_config())
with st.expander("ROC and precision-recall curves, one panel per label"):
    from cxrcore.eval.report import curve_grid

    _au = {x: per[x]["auroc"]["value"] for x in labels}
    st.plotly_chart(curve_grid(list(ev.labels), ev.targets, ev.probs, "roc", aurocs=_au), key="eval_roc_grid",
                    config=chart_config())
    st.plotly_chart(curve_grid(list(ev.labels), ev.targets, ev.probs, "pr"), key="eval_pr_grid",
                    config=chart_config())

# --------------------------------------------------------------------------- calibration
st.markdown("**Calibration**")
cal = result.get("calibration") or {}
if cal.get("fitted"):
    crow = [{"label": x, "temperature": v["temperature"], "fitted on val": v["fitted"],
             "ECE": per[x]["ece"]["value"], "ECE after": v["ece_after"],
             "Brier": per[x]["brier"]["value"], "Brier after": v["brier_after"],
             "NLL": v["nll_before"], "NLL after": v["nll_after"]} for x, v in cal["per_label"].items()]
    cal_table = pd.DataFrame(crow)
    for c in ("temperature", "ECE", "ECE after", "Brier", "Brier after", "NLL", "NLL after"):
        cal_table[c] = cal_table[c].astype(float)
    st.caption(f"Per-label temperature fitted on the val split ({cal['n_val_images']} images) and applied to this "
               "split. A temperature of 1 (not fitted) where val lacks a class.")
    st.dataframe(cal_table.round(3), hide_index=True, width="stretch", key="eval_cal_table")
    from cxrcore.eval.thresholds import OWN_COPY, save_target, save_temperatures
    from ui.common import current_user, md_text

    _access = hosting_settings()
    _user = current_user(_access)
    try:  # where Save writes, and why, said before saving (the rule: cxrcore.eval.thresholds.save_target)
        _target = save_target(params["ckpt"], _user, _access)
    except CXRError as exc:
        _target = None
        show_error(exc)
    if _target is not None and _target.kind == OWN_COPY:  # names people and runs: shown as the literal text
        st.info(md_text(_target.reason), icon=":material/person:")
    elif _target is not None and _target.reason:
        st.caption(md_text(_target.reason))
    if _target is not None and st.button(
            "Save these temperatures to the checkpoint card", key="eval_cal_save",
            help="Predictions (app, CLI, API) then also report temperature-scaled probabilities."):
        try:  # a shipped / library model: a workspace copy; someone else's run: your own copy (save_target)
            where = save_temperatures(params["ckpt"], {x: v["temperature"] for x, v in cal["per_label"].items()},
                                      "val", user=_user, settings=_access)
            st.success(f"Saved {len(cal['per_label'])} temperatures to {md_text(where / 'card.json')}"
                       + ("" if _target.in_place else f" (a copy: the card you were looking at stays untouched; "
                                                          f"the copy is in the model lists as “{md_text(_target.display)}”)")
                       + ".")
        except CXRError as exc:
            show_error(exc)
else:
    st.caption(f"Temperature scaling: {cal.get('note', 'not available')}.")
with_bins = [x for x in ev_labels if per[x].get("reliability")]
if with_bins:
    rel_label = st.selectbox("Reliability diagram for", with_bins, key="eval_rel_label")
    r = per[rel_label]["reliability"]
    pts = [(p, o, c) for p, o, c in zip(r["mean_predicted"], r["observed"], r["count"]) if c]
    fig = go.Figure()
    fig.add_scatter(x=[p for p, _, _ in pts], y=[o for _, o, _ in pts], mode="lines+markers",
                    name=f"model (ECE {per[rel_label]['ece']['value']:.3f})", customdata=[c for _, _, c in pts],
                    hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>%{customdata} images")
    if ev.calibrated is not None:
        from cxrcore.eval.calibration import reliability_bins

        j = ev.labels.index(rel_label)
        m = ~np.isnan(ev.targets[:, j])
        rb = reliability_bins(ev.targets[m, j], ev.calibrated[m, j], len(r["count"]))
        pts = [(p, o) for p, o, c in zip(rb["mean_predicted"], rb["observed"], rb["count"]) if c]
        fig.add_scatter(x=[p for p, _ in pts], y=[o for _, o in pts], mode="lines+markers",
                        name="after temperature scaling", line=dict(dash="dash"))
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), name="perfect")
    fig.update_layout(xaxis=dict(range=[0, 1], title="mean predicted"), yaxis=dict(range=[0, 1], title="observed"),
                      height=380, margin=dict(t=30, b=10))
    st.plotly_chart(fig, key="eval_reliability", config=chart_config())

# --------------------------------------------------------------------------- comparison
cmp = result.get("comparison")
if cmp:
    st.subheader(f"Paired comparison: {name_b} − {name_a}")
    crows = []
    for x, m in cmp["per_label"].items():
        d = m["delta_auroc"]
        crows.append({"label": x, f"label ({name_b})": m["label_compare"], "n": m["n"], "positives": m["positives"],
                      f"AUROC {name_a}": m["auroc_checkpoint"], f"AUROC {name_b}": m["auroc_compare"],
                      "ΔAUROC": d["value"], "Δ low": d["low"], "Δ high": d["high"],
                      "DeLong z": m["delong"]["z"], "DeLong p": m["delong"]["p"], "bootstrap p": d["p_bootstrap"]})
    ctable = pd.DataFrame(crows)
    for c in ctable.columns[4:]:
        ctable[c] = ctable[c].astype(float)
    k1, k2, k3, k4 = st.columns(4)
    k1.metric(_ci_label("Mean ΔAUROC", cmp["mean_delta_auroc"]), _point(cmp["mean_delta_auroc"], signed=True))
    k2.metric("Wins", len(cmp["wins"]), help=f"labels where {name_b} has the higher AUROC")
    k3.metric("Losses", len(cmp["losses"]), help=f"labels where {name_b} has the lower AUROC")
    k4.metric("Significant wins / losses", f"{len(cmp['significant_wins'])} / {len(cmp['significant_losses'])}",
              help=f"DeLong p < {result['bootstrap']['alpha']}")
    st.dataframe(ctable.round(4), hide_index=True, width="stretch", key="eval_cmp_table")
    st.caption(f"{len(cmp['shared_labels'])} shared labels, {cmp['n_images']} images of {cmp['n_patients']} "
               f"patients. {cmp['note']}.")
    labs = cmp["evaluable_labels"]
    if labs:
        d = [cmp["per_label"][x]["delta_auroc"] for x in labs]
        fig = go.Figure()
        fig.add_scatter(x=[v["value"] for v in d], y=labs, mode="markers", marker=dict(size=9), name="ΔAUROC",
                        text=[f"DeLong p = {cmp['per_label'][x]['delong']['p']:.3g}"
                              if cmp["per_label"][x]["delong"]["p"] is not None else "" for x in labs],
                        error_x=dict(type="data", symmetric=False,
                                     array=[(v["high"] - v["value"]) if v["high"] is not None else 0 for v in d],
                                     arrayminus=[(v["value"] - v["low"]) if v["low"] is not None else 0 for v in d]))
        fig.add_vline(x=0, line_dash="dot", line_color="gray")
        fig.update_layout(title=f"ΔAUROC ({name_b} − {name_a}), paired patient-bootstrap {conf}% CI",
                          xaxis_title="ΔAUROC", yaxis=dict(autorange="reversed"), height=130 + 28 * len(labs),
                          margin=dict(t=40, b=10))
        st.plotly_chart(fig, key="eval_delta_forest", config=chart_config())

# --------------------------------------------------------------------------- case browser
st.subheader("Case browser")
model_names = [name_a] + ([name_b] if cmp else [])
browse_labels = cases.browsable_labels()
if not browse_labels:
    st.caption("No label with known values to browse.")
else:
    b1, b2 = st.columns([2, 3])
    label = b1.selectbox("Label" + (" (shared)" if cmp else ""), browse_labels, key="eval_case_label")
    j = cases.labels.index(label)
    t = cases.targets[:, j]
    known, bucket_of = cases.buckets(label)
    desc = bucket_help(cases.n_models)
    buckets = bucket_names(cases.n_models)
    cols = st.columns(len(buckets))
    for col, b in zip(cols, buckets):
        col.metric(b, int((bucket_of == b).sum()), help=desc[b])
    st.caption(f"{len(known)} cases with a known {md_text(label)} value, each model at its own threshold "
               + ", ".join(f"({n}: {thr[j]:.2f})" for n, thr in zip(model_names, cases.thresholds)) + ".")
    bucket = b2.radio("Bucket", buckets, horizontal=True, key="eval_bucket",
                      format_func=lambda b: f"{b}: {desc[b]} ({int((bucket_of == b).sum())})")
    rows_in = cases.in_bucket(label, bucket)  # the most wrong first
    if len(rows_in) and st.button(f"Read these {len(rows_in)} cases in a reader study", key="eval_to_study",
                                  help="Open the Reader study page with this bucket's cases and their ground truth "
                                       f"for {label} (add cases of other buckets there by sampling a dataset)."):
        from ui import handoff

        handoff.send_cases(st.session_state, handoff.StudyCases(
            tuple({"image": cases.paths[i], "source_id": cases.image_ids[i], "truth": {label: int(t[i])}}
                  for i in rows_in),
            label, f"the Evaluation case browser: {bucket} cases for {label} "
                   f"({params.get('data_name') or params['data']}, {params['split']} split)"))
        st.switch_page("views/reader_study.py")
    if not len(rows_in):
        st.caption(f"No {bucket} case for {md_text(label)}.")
    else:
        def _fmt_case(i: int) -> str:
            ps = " · ".join(f"{n} p={p[i, j]:.2f}" for n, p in zip(model_names, cases.probs))
            return f"{cases.image_ids[i]} — {'positive' if t[i] == 1 else 'negative'} · {ps}"

        case = st.selectbox(f"Case ({len(rows_in)} in this bucket)", [int(i) for i in rows_in],
                            format_func=_fmt_case, key="eval_case")

        @st.cache_data(show_spinner="Running the models on this image (probabilities and heatmaps)…",
                       max_entries=32)
        def case_comparison(path: str, ckpts: tuple, keys: tuple, names: tuple, truth: tuple):
            from cxrcore.compare import compare
            from cxrcore.data.imageio import read_image

            image = read_image(path)
            preds = {n: load_predictor(c) for n, c in zip(names, ckpts)}
            return compare(image, preds, Path(path).name, list(truth))

        if case is not None:
            i = int(case)
            truth = tuple(cases.truth(i))
            ckpts = (params["ckpt"],) + ((params["other"],) if cmp else ())
            keys = (params["ckpt_key"],) + ((params["other_key"],) if cmp else ())
            try:
                comp = case_comparison(cases.paths[i], ckpts, keys, tuple(model_names), truth)
            except CXRError as exc:
                show_error(exc)
            else:
                from cxrcore.explain.visual import overlay

                preds = comp.for_label(label)
                icols = st.columns(len(preds) + 1)
                icols[0].image(comp.image.pixels, clamp=True, width="stretch",
                               caption=f"{md_text(cases.image_ids[i])} · truth: {md_text(', '.join(truth) or 'none of the shared labels')}")
                for col, (mname, pred) in zip(icols[1:], preds.items()):
                    if label in pred.labels:
                        q = pred.labels.index(label)
                        ok = call_is_right(pred.probs[q], pred.thresholds[q], t[i] == 1)
                        col.image(overlay(comp.image.pixels, pred.heatmaps[q], pred.boxes.get(label), label),
                                  width="stretch",
                                  caption=f"{mname}: {md_text(label)} p={pred.probs[q]:.2f} (threshold {pred.thresholds[q]:.2f})"
                                          f" — {'right' if ok else 'wrong'}")
                    else:
                        col.image(comp.image.pixels, clamp=True, width="stretch", caption=f"{mname}: no '{md_text(label)}' output")
                send_help = ("Open this case on the Explain page: its image, both models (Model as the baseline, "
                             "Compare with as the fine-tuned model) and its ground truth.")
                if not cmp:
                    st.button("Send to Explain", key="eval_send_explain", disabled=True,
                              help="Explain reviews two models (its verdict is the fine-tuned model against the "
                                   "baseline): choose a model in \"Compare with\" and evaluate to send a case.")
                elif st.button("Send to Explain", key="eval_send_explain", help=send_help):
                    from cxrcore.compare import Comparison
                    from ui import handoff

                    roles = dict(zip(("baseline", "fine-tuned"), model_names))
                    paths = {role: comp.model_paths[n] for role, n in roles.items()}
                    handoff.send(st.session_state, handoff.Handoff(
                        Comparison(comp.image, comp.image_name, comp.image_hash,
                                   {role: comp.predictions[n] for role, n in roles.items()}, paths, list(truth),
                                   comp.ood),
                        origin=f"the Evaluation case browser ({params.get('data_name') or params['data']}, "
                               f"{params['split']} split)",
                        image_id=cases.image_ids[i], names=roles, truth_from="the dataset's labels",
                        known=[x for q, x in enumerate(cases.labels) if not np.isnan(cases.targets[i, q])],
                        label=label))
                    st.switch_page("views/explain.py")

# --------------------------------------------------------------------------- subgroups
subgroups = result.get("subgroups")
if subgroups:
    st.subheader("Subgroups")
    gaps = gap_table(subgroups, "auroc")
    if gaps.empty:
        st.info("No label has enough positives (at least "
                f"{result.get('subgroup_min_positives', 5)}) in two or more groups of one kind (sex, age band, "
                "view) to compare AUROC between groups.")
    else:
        flagged = top_gaps(gaps)
        st.caption("AUROC gap per label between the groups of one kind (highest − lowest group), over groups with "
                   "enough positives; largest first. "
                   + (f"Highlighted: the {int(flagged.sum())} largest gap(s) of at least 0.05." if flagged.any()
                      else "No gap reaches 0.05."))
        shown = gaps.rename(columns={"lowest_value": "lowest AUROC", "highest_value": "highest AUROC",
                                     "min_positives_in_group": "min positives"}).drop(columns="metric")
        st.dataframe(shown.style.apply(lambda row: ["background-color: rgba(255, 99, 71, 0.25)"
                                                    if flagged[row.name] else ""] * len(row), axis=1)
                     .format(precision=3), hide_index=True, width="stretch", key="eval_subgroup_gaps")
    with st.expander("Every subgroup: AUROC, sensitivity and specificity per group and label"):
        st.dataframe(pd.DataFrame(subgroups).round(3), hide_index=True, width="stretch", key="eval_subgroups")

# --------------------------------------------------------------------------- localization
@st.cache_data(show_spinner="Predicting every image with ground-truth boxes (and scoring faithfulness when asked)…",
               max_entries=8)
def run_localize(ckpt: str, ckpt_key: tuple, data: str, split: str, methods: tuple = ("GradCAM",),
                 gate: str = "threshold", faith_n: int = 0, max_images: int | None = None) -> dict:
    from cxrcore.eval.localize import localize_checkpoint

    with hosting.heavy_slot(user, access):  # a shared server: one heavy computation per visitor at a time
        return localize_checkpoint(ckpt, data, split, methods=list(methods), gate=gate, faithfulness_n=faith_n,
                                   max_images=max_images, limits=limits).to_dict(boxes=False)


st.subheader("Localization against ground-truth boxes")
st.caption("Boxes cut from each label's heatmap vs the dataset's boxes (NIH BBox_List format; the phantoms write "
           "theirs): accuracy at IoU and IoBB thresholds as in Wang et al. 2017, and the pointing game (the "
           "heatmap's peak inside one of the label's boxes on the image; chance = mean area of their union). Same as `cxr localize`.")
from cxrcore.explain.cam import CAM_METHODS  # noqa: E402

lc1, lc2, lc3, lc4 = st.columns(4)
loc_methods = lc1.multiselect("CAM methods, side by side", CAM_METHODS, default=["GradCAM"], key="eval_loc_methods",
                              help="GradCAM is the map every prediction carries; each other method runs "
                                   "pytorch-grad-cam once per image and label (ScoreCAM: many passes).")
gate_kind = lc2.selectbox("Gated hit rate: cut-off", ["each label's threshold", "one probability"],
                          key="eval_loc_gate_kind",
                          help="cheXlocalize: no map (a miss) when the model's probability is below the cut-off")
gate = "threshold" if gate_kind == "each label's threshold" else str(
    lc2.number_input("cut-off p", 0.0, 1.0, 0.5, 0.05, key="eval_loc_gate"))
faith_max = limits.widget_max("faithfulness", 200)
faith_n = int(lc3.number_input("Faithfulness: images per label (0 = off)", 0, faith_max, min(3, faith_max), 1,
                               key="eval_loc_faith_n",
                               help="ROAD and deletion / insertion for each method's maps of the first N images of "
                                    "every label: about 60 forward passes each, about 4 s per image, label and "
                                    "method on two CPU cores (13 phantom labels x 3 images: about 3 minutes); "
                                    "raise it on a GPU. " + limits.note("faithfulness")))
max_images = int(lc4.number_input("Images with boxes (0 = all)", 0, limits.widget_max("eval_images", 100000), 0, 10,
                                  key="eval_loc_max",
                                  help="only the first N images with boxes (sorted by id), to keep other methods "
                                       "affordable on a CPU. " + limits.note("eval_images")
                                       + (" ScoreCAM: " + limits.note("slow_cam_images")
                                          if limits.get("slow_cam_images") else ""))) or None
loc_params = (params["ckpt"], params["ckpt_key"], params["data"], params["split"], tuple(loc_methods or ["GradCAM"]),
              gate, faith_n, max_images)
if st.button("Score localization", key="eval_loc_run"):
    st.session_state["eval_loc"] = loc_params
loc_key = st.session_state.get("eval_loc")
if loc_key and loc_key == loc_params:
    try:
        loc = run_localize(*loc_key)
    except CXRError as exc:
        show_error(exc)
        loc = None
    if loc is not None and not loc["labels"]:
        st.info(f"No ground-truth boxes of this model's labels on the {params['split']} split "
                f"({loc['n_boxes_dataset']} boxes in the dataset).")
    elif loc is not None:
        rows = []
        for label, m in list(loc["labels"].items()) + [("all boxes", loc["overall"])]:
            rows.append({"label": label, "boxes": m["n"],
                         **{f"IoU ≥ {t}": m["iou_acc"][t] for t in m["iou_acc"]},
                         **{f"IoBB ≥ {t}": m["iobb_acc"][t] for t in m["iobb_acc"]},
                         "pointing": m["pointing"], "chance": m["chance"], "no box": m["no_prediction"]})
        st.caption(f"{loc['methods'][0]}: {loc['n_images']} images"
                   + (f" (the first {loc['max_images']} with boxes)" if loc.get("max_images") else ""))
        st.dataframe(pd.DataFrame(rows).round(3), hide_index=True, width="stretch", key="eval_loc_table")
        if loc["skipped_labels"]:
            st.caption("Boxes of labels the model does not have: "
                       + md_text(", ".join(f"{k} ({v})" for k, v in loc["skipped_labels"].items())))
        st.markdown("**Per label and CAM method**")
        side = pd.DataFrame(loc["methods_rows"]).rename(columns={
            "hit_rate": "hit rate", "gated_hit_rate": "gated hit rate", "gated": "pairs gated out",
            "iou_acc_0.25": "IoU ≥ 0.25", "faith_n": "faithfulness n", "road_combined": "ROAD combined ↑",
            "road_morf": "ROAD MoRF ↓", "road_lerf": "ROAD LeRF ↑", "deletion_auc": "deletion AUC ↓",
            "insertion_auc": "insertion AUC ↑"})
        st.dataframe(side.round(3), hide_index=True, width="stretch", key="eval_loc_methods_table")
        st.caption("Pointing: per box; hit rate: per image-label pair (cheXlocalize); " + loc["gate_note"] + ".")
        if loc.get("faithfulness_note"):
            st.caption(f"Faithfulness on the first {loc['faithfulness_images_per_label']} images of each label, "
                       f"scored on {loc['faithfulness_note']['target']}. {loc['faithfulness_note']['how_to_read']}")
        else:
            st.caption("Faithfulness (ROAD, deletion / insertion) not computed: set images per label above 0.")

# --------------------------------------------------------------------------- downloads
from cxrcore.eval.report import html_report, metrics_json, predictions_frame, predictions_parquet  # noqa: E402

st.subheader("Downloads")
stem = f"eval-{result['model']}-{result['dataset']}-{result['split']}".replace(" ", "_").replace("/", "_")
w1, w2, w3, w4 = st.columns(4)
w1.download_button("Predictions (CSV)", predictions_frame(ev).to_csv(index=False).encode(), file_name=f"{stem}.csv",
                   mime="text/csv", key="eval_dl_csv", on_click="ignore")
w2.download_button("Metrics (JSON)", metrics_json(result).encode(), file_name=f"{stem}.json",
                   mime="application/json", key="eval_dl_json", on_click="ignore")
w4.download_button("Predictions (Parquet)", lambda: predictions_parquet(ev), file_name=f"{stem}.parquet",
                   mime="application/octet-stream", key="eval_dl_parquet", on_click="ignore")
w3.download_button("Report (HTML, opens offline)", lambda: html_report(result, ev).encode("utf-8"),
                   file_name=f"{stem}.html", mime="text/html", key="eval_dl_html", on_click="ignore")
