"""Evaluation outputs: predictions CSV, metrics JSON and a self-contained HTML report.

The HTML report embeds plotly.js (no CDN, no external script), so it opens offline and can be
mailed or archived as one file.
"""
from __future__ import annotations

import html
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .evaluate import RATES, EvalData

MAX_CURVE_POINTS = 400


# --------------------------------------------------------------------------- JSON / CSV

def to_jsonable(obj):
    """Plain JSON types; NaN / inf become None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def metrics_json(result: dict) -> str:
    return json.dumps(to_jsonable(result), indent=1, allow_nan=False)


def write_metrics_json(path: str | Path, result: dict) -> Path:
    path = Path(path)
    path.write_text(metrics_json(result))
    return path


def predictions_frame(data: EvalData) -> pd.DataFrame:
    """One row per image: ids, then per label the target (blank = not labelled), the probability,
    the decision at the card's threshold and, when fitted, the temperature-scaled probability."""
    cols = {"image_id": data.image_ids, "patient_id": data.patient_ids.astype(str)}
    for j, x in enumerate(data.labels):
        cols[f"{x}_target"] = data.targets[:, j]
        cols[f"{x}_prob"] = np.round(data.probs[:, j], 6)
        cols[f"{x}_pred"] = (data.probs[:, j] >= data.thresholds[j]).astype(int)
        if data.calibrated is not None:
            cols[f"{x}_prob_calibrated"] = np.round(data.calibrated[:, j], 6)
    return pd.DataFrame(cols)


def predictions_parquet(data: EvalData) -> bytes:
    """:func:`predictions_frame` as Parquet bytes (pyarrow)."""
    buf = io.BytesIO()
    predictions_frame(data).to_parquet(buf, index=False)
    return buf.getvalue()


def write_predictions_csv(path: str | Path, data: EvalData) -> Path:
    path = Path(path)
    predictions_frame(data).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- HTML

def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _p(p, n_boot: int | None = None) -> str:
    """A p-value: 4 decimals, scientific below 1e-4; at the bootstrap's resolution 1/n shown as an upper bound."""
    if p is None:
        return "–"
    if n_boot and p <= 1.0 / n_boot + 1e-12:
        return f"≤{p:.2g}"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _ci_cell(m: dict | None, digits: int = 3) -> str:
    if not m or m.get("value") is None:
        return "–"
    ci = f" <span class=ci>[{_fmt(m.get('low'), digits)}, {_fmt(m.get('high'), digits)}]</span>" \
        if m.get("low") is not None else ""
    return f"{_fmt(m['value'], digits)}{ci}"


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(f"<tr class='{(classes or [''] * len(rows))[i]}'>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                   for i, r in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= MAX_CURVE_POINTS:
        return x, y
    keep = np.unique(np.r_[np.linspace(0, len(x) - 1, MAX_CURVE_POINTS).astype(int), len(x) - 1])
    return x[keep], y[keep]


def _err(points: list[dict], lo: list[dict] | None = None) -> dict:
    """Asymmetric error bars from {value, low, high} dicts (0 where an end is missing)."""
    lo = lo or points
    plus = [(b["high"] - a["value"]) if b.get("high") is not None else 0.0 for a, b in zip(points, lo)]
    minus = [(a["value"] - b["low"]) if b.get("low") is not None else 0.0 for a, b in zip(points, lo)]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus)


def curve_grid(labels: list[str], targets: np.ndarray, probs: np.ndarray, kind: str = "roc", per_row: int = 7,
               aurocs: dict | None = None):
    """One small ROC (``kind="roc"``) or precision-recall (``"pr"``) panel per label, ``per_row`` to a row
    (seed 001's 2 x 7 for 14 labels); labels without positives and negatives get an empty panel saying so.
    sklearn's roc_curve / precision_recall_curve; chance drawn (the diagonal, or the prevalence)."""
    import math

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    rows = max(1, math.ceil(len(labels) / per_row))
    titles = []
    curves = []
    for j, x in enumerate(labels):
        m = ~np.isnan(targets[:, j])
        y, s = targets[m, j], probs[m, j]
        if not (y.size and 0 < y.sum() < y.size):
            titles.append(f"{x}<br>(not evaluable)")
            curves.append(None)
            continue
        if kind == "roc":
            a, b, _ = roc_curve(y, s)
            au = (aurocs or {}).get(x)
            titles.append(f"{x}<br>AUROC {au:.3f}" if au is not None else x)
            curves.append((a, b, None))
        else:
            prec, rec, _ = precision_recall_curve(y, s)
            titles.append(f"{x}<br>AP {average_precision_score(y, s):.3f}")
            curves.append((rec, prec, float(y.mean())))
    fig = make_subplots(rows=rows, cols=per_row, subplot_titles=titles, horizontal_spacing=0.02,
                        vertical_spacing=0.12 if rows > 1 else 0.0)
    for k, c in enumerate(curves):
        r, col = k // per_row + 1, k % per_row + 1
        if c is None:
            continue
        a, b, prevalence = c
        a, b = _thin(a, b)
        fig.add_trace(go.Scatter(x=a, y=b, mode="lines", showlegend=False, line=dict(width=1.5),
                                 line_shape="linear" if kind == "roc" else "hv"), row=r, col=col)
        chance = [0, 1] if kind == "roc" else [prevalence, prevalence]
        fig.add_trace(go.Scatter(x=[0, 1], y=chance, mode="lines", showlegend=False,
                                 line=dict(dash="dot", color="grey", width=1)), row=r, col=col)
    fig.update_xaxes(range=[0, 1], showticklabels=False)
    fig.update_yaxes(range=[0, 1.02], showticklabels=False)
    fig.update_annotations(font_size=10)
    what = ("ROC per label (x: 1 − specificity, y: sensitivity; dotted: chance)" if kind == "roc" else
            "Precision-recall per label (x: recall, y: precision; dotted: prevalence)")
    fig.update_layout(title=what, height=60 + 190 * rows, margin=dict(l=10, r=10, t=70, b=10))
    return fig


def _figures(result: dict, data: EvalData) -> list[tuple[str, object]]:
    import plotly.graph_objects as go
    from sklearn.metrics import roc_curve

    figs = []
    per = result["per_label"]
    ev = [x for x in data.labels if per[x]["evaluable"]]
    if ev:
        # forest plot of AUROC with the patient-bootstrap CI (and DeLong's, assuming independent images)
        vals = [per[x]["auroc"] for x in ev]
        fig = go.Figure()
        fig.add_trace(go.Scatter(
            x=[v["value"] for v in vals], y=ev, mode="markers", name="AUROC, patient-bootstrap CI",
            error_x=_err(vals)))
        dl = [per[x]["auroc_delong_ci"] for x in ev]
        fig.add_trace(go.Scatter(
            x=[v["value"] for v in vals], y=ev, mode="markers", marker=dict(symbol="line-ns-open", size=1),
            name="DeLong CI (images independent)", opacity=0.5,
            error_x={**_err(vals, dl), "color": "grey", "thickness": 1}))
        fig.add_vline(x=0.5, line_dash="dot", line_color="grey")
        fig.update_layout(title="AUROC per label with 95% CI", xaxis_title="AUROC", xaxis_range=[0, 1.02],
                          height=120 + 28 * len(ev), yaxis_autorange="reversed", legend_orientation="h")
        figs.append(("AUROC", fig))

        fig = go.Figure()
        for x in ev:
            j = data.labels.index(x)
            m = ~np.isnan(data.targets[:, j])
            fpr, tpr, _ = roc_curve(data.targets[m, j], data.probs[m, j])
            fpr, tpr = _thin(fpr, tpr)
            fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{x} ({per[x]['auroc']['value']:.2f})"))
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="chance"))
        fig.update_layout(title="ROC curves", xaxis_title="1 − specificity", yaxis_title="sensitivity", height=520)
        figs.append(("ROC", fig))
        au = {x: per[x]["auroc"]["value"] for x in data.labels}
        figs.append(("ROC per label", curve_grid(list(data.labels), data.targets, data.probs, "roc", aurocs=au)))
        figs.append(("PR per label", curve_grid(list(data.labels), data.targets, data.probs, "pr")))

        fig = go.Figure()
        for x in ev:
            r = per[x]["reliability"]
            pts = [(p, o, c) for p, o, c in zip(r["mean_predicted"], r["observed"], r["count"]) if c]
            fig.add_trace(go.Scatter(x=[p for p, _, _ in pts], y=[o for _, o, _ in pts], mode="lines+markers",
                                     name=f"{x} (ECE {per[x]['ece']['value']:.3f})",
                                     customdata=[c for _, _, c in pts],
                                     hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>%{customdata} images"))
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                                 name="perfect calibration"))
        fig.update_layout(title="Reliability (equal-width bins; empty bins omitted)", xaxis_title="mean predicted",
                          yaxis_title="observed frequency", height=520)
        figs.append(("Reliability", fig))

    cmp = result.get("comparison")
    if cmp and cmp["evaluable_labels"]:
        labs = cmp["evaluable_labels"]
        d = [cmp["per_label"][x]["delta_auroc"] for x in labs]
        fig = go.Figure(go.Scatter(
            x=[v["value"] for v in d], y=labs, mode="markers", name="ΔAUROC",
            text=[f"DeLong p = {_p(cmp['per_label'][x]['delong']['p'])}" for x in labs],
            error_x=_err(d)))
        fig.add_vline(x=0, line_dash="dot", line_color="grey")
        fig.update_layout(title=f"ΔAUROC ({html.escape(cmp['compare_model'])} − {html.escape(result['model'])}), "
                                "paired patient-bootstrap 95% CI",
                          xaxis_title="ΔAUROC", height=140 + 28 * len(labs), yaxis_autorange="reversed")
        figs.append(("Comparison", fig))
    return figs


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left} th{background:#f5f5f5;position:sticky;top:0}
tr.muted td{color:#aaa} tr.flag td{background:rgba(255,99,71,.25)} .ci{color:#777;font-size:11px} .cards{display:flex;gap:16px;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:180px}
.card b{font-size:1.3em;display:block} .note{color:#666;font-size:12px;max-width:1000px}
"""


def html_report(result: dict, data: EvalData) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    r = result
    e = html.escape
    s = r["summary"]
    b = r["bootstrap"]
    conf = int(round(100 * (1 - b["alpha"])))
    parts = [f"<h1>Evaluation: {e(r['model'])}</h1>",
             f"<p>{e(r['dataset'])} ({e(r['dataset_root'])}), split <b>{e(r['split'])}</b>: {r['n_images']} images of "
             f"{r['n_patients']} patients (up to {r['max_images_per_patient']} images per patient). "
             f"Checkpoint <code>{e(r['checkpoint'])}</code>. Written {time.strftime('%Y-%m-%d %H:%M')}.</p>",
             f"<p class=note>Images: {e(str(r.get('split_description', r['split'])))}. Uncertain labels scored as "
             f"<b>{e(json.dumps(r.get('policy', 'zeros')) if not isinstance(r.get('policy', 'zeros'), str) else r.get('policy', 'zeros'))}</b> "
             f"({e(str(r.get('policy_source', '')))}).</p>",
             "<div class=cards>"]
    for name, key in (("mean AUROC", "mean_auroc"), ("mean AUPRC", "mean_auprc"), ("Hamming loss", "hamming_loss"),
                      ("subset accuracy", "subset_accuracy"), ("samples precision", "samples_precision"),
                      ("samples recall", "samples_recall"), ("samples F1", "samples_f1")):
        parts.append(f"<div class=card>{name}<b>{_ci_cell(s.get(key))}</b></div>")
    parts.append("</div>")
    parts.append(f"<p class=note>{conf}% intervals: percentile bootstrap with {b['n_boot']} replicates resampling "
                 f"<b>patients</b> (all images of a drawn patient; seed {b['seed']}). Means over the "
                 f"{len(s['labels_evaluated'])} labels with positives and negatives: "
                 f"{e(', '.join(s['labels_evaluated']))}. Not evaluated: "
                 f"{e(', '.join(f'{k} ({v})' for k, v in s['labels_not_evaluated'].items())) or 'none'}. "
                 f"Hamming loss, subset accuracy and the samples-averaged precision / recall / F1 (per image over "
                 f"its labels, then averaged; an image with nothing to find and nothing predicted counts 1) at the "
                 f"card's thresholds over those labels.</p>")

    header = ["label", "n", "pos", "AUROC", "DeLong CI", "AUPRC", "thr", "sensitivity", "specificity", "PPV",
              "NPV", "F1", "ECE", "Brier"]
    refs = r.get("reference") or {}
    header += [f"published: {ref['title']}" for ref in refs.values()]
    rows, classes = [], []
    for x in data.labels:
        m = r["per_label"][x]
        dl = m["auroc_delong_ci"]
        rows.append([e(x), str(m["n"]), str(m["positives"]), _ci_cell(m["auroc"]),
                     f"[{_fmt(dl['low'])}, {_fmt(dl['high'])}]" if dl["low"] is not None else "–",
                     _ci_cell(m["auprc"]), f"{m['threshold']:.3f}" + ("" if m["threshold_source"] == "card" else "*"),
                     *[_ci_cell(m[k]) for k in RATES], _ci_cell(m["ece"]), _ci_cell(m["brier"]),
                     *[_fmt(ref["auroc"].get(x)) for ref in refs.values()]])
        classes.append("" if m["evaluable"] else "muted")
    parts += ["<h2>Per label</h2>", _table(header, rows, classes),
              *(["<p class=note>Published AUROCs, for reference (not this model): "
                 + " ".join(f"{e(ref['title'])}: {e(ref['split'])}. {e(ref['citation'])}" for ref in refs.values())
                 + "</p>"] if refs else []),
              "<p class=note>Thresholds from the checkpoint card (* = none stored, 0.5 used). n_valid (replicates "
              "in which a metric was defined, e.g. a rare label drawn with no positive patient) is in metrics.json. "
              "The DeLong interval treats images as independent and is narrower when patients have several images."
              "</p>"]

    cal = r.get("calibration") or {}
    if cal.get("fitted"):
        mark = lambda v: ("" if v["fitted"] else "*") + ("†" if v.get("at_bound") else "")  # noqa: E731
        rows = [[e(x), _fmt(v["temperature"], 2) + mark(v), _fmt(v["nll_before"]),
                 _fmt(v["nll_after"]), _fmt(r["per_label"][x]["ece"]["value"]), _fmt(v["ece_after"]),
                 _fmt(r["per_label"][x]["brier"]["value"]), _fmt(v["brier_after"])]
                for x, v in cal["per_label"].items()]
        parts += ["<h2>Temperature scaling</h2>",
                  f"<p class=note>Per-label temperature fitted on the val split ({cal['n_val_images']} images), "
                  "applied here (* = val lacks a class, T = 1; † = at the search bound).</p>",
                  _table(["label", "T", "NLL", "NLL after", "ECE", "ECE after", "Brier", "Brier after"], rows)]
    elif cal.get("note"):
        parts.append(f"<p class=note>Temperature scaling: {e(cal['note'])}.</p>")

    cmp = r.get("comparison")
    if cmp:
        rows = []
        for x, m in cmp["per_label"].items():
            rows.append([e(x), e(m["label_compare"]), str(m["n"]), str(m["positives"]), _fmt(m["auroc_checkpoint"]),
                         _fmt(m["auroc_compare"]), _ci_cell(m["delta_auroc"]), _fmt(m["delong"]["z"], 2),
                         _p(m["delong"]["p"]), _p(m["delta_auroc"]["p_bootstrap"], m["delta_auroc"]["n_valid"])])
        md = cmp["mean_delta_auroc"]
        parts += [f"<h2>Comparison with {e(cmp['compare_model'])}</h2>",
                  f"<p>{len(cmp['shared_labels'])} shared labels, {cmp['n_images']} images of {cmp['n_patients']} "
                  f"patients. ΔAUROC = {e(cmp['compare_model'])} − {e(r['model'])}; mean ΔAUROC {_ci_cell(md)}. "
                  f"Wins {len(cmp['wins'])}, losses {len(cmp['losses'])}; significant (DeLong p &lt; {b['alpha']}): "
                  f"{len(cmp['significant_wins'])} wins ({e(', '.join(cmp['significant_wins'])) or '–'}), "
                  f"{len(cmp['significant_losses'])} losses ({e(', '.join(cmp['significant_losses'])) or '–'}).</p>",
                  _table(["label", "label (compare)", "n", "pos", f"AUROC {e(r['model'])}",
                          f"AUROC {e(cmp['compare_model'])}", "ΔAUROC [paired CI]", "DeLong z", "DeLong p",
                          "bootstrap p"], rows),
                  f"<p class=note>{e(cmp['note'])}.</p>"]

    if r.get("subgroups"):
        parts += _subgroup_section(r["subgroups"])

    parts.append("<h2>Figures</h2>")
    for _, fig in _figures(r, data):
        parts.append(pio.to_html(fig, include_plotlyjs=False, full_html=False, config={"displaylogo": False}))

    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>Evaluation: {e(r['model'])} on {e(r['dataset'])} ({e(r['split'])})</title>"
            f"<style>{CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            + "\n".join(parts) + "</body></html>")


def _subgroup_section(records: list[dict]) -> list[str]:
    """The gap per label between the groups of one kind, largest first, the largest highlighted (as on the page)."""
    from .subgroups import gap_table, top_gaps

    e = html.escape
    gaps = gap_table(records, "auroc")
    if gaps.empty:
        return ["<h2>Subgroups</h2>", "<p class=note>No label has enough positives in two or more groups of one kind "
                "(sex, age band, view) to compare AUROC between groups.</p>"]
    flagged = top_gaps(gaps)
    rows = [[e(str(g.kind)), e(str(g.label)), _fmt(g.gap), f"{e(str(g.lowest))} ({_fmt(g.lowest_value)})",
             f"{e(str(g.highest))} ({_fmt(g.highest_value)})", str(g.groups), str(g.min_positives_in_group)]
            for g in gaps.itertuples()]
    return ["<h2>Subgroups</h2>",
            "<p class=note>AUROC gap per label between the groups of one kind (highest − lowest), over groups with "
            "enough positives; largest first; highlighted: the largest gaps of at least 0.05. Per-group values "
            "(AUROC, sensitivity, specificity) are in metrics.json.</p>",
            _table(["kind", "label", "AUROC gap", "lowest group", "highest group", "groups", "min positives"], rows,
                   ["flag" if f else "" for f in flagged])]


def write_html_report(path: str | Path, result: dict, data: EvalData) -> Path:
    path = Path(path)
    path.write_text(html_report(result, data), encoding="utf-8")
    return path


def write_all(out: str | Path, result: dict, data: EvalData) -> dict[str, Path]:
    """predictions.csv, metrics.json and report.html in ``out`` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {"predictions": write_predictions_csv(out / "predictions.csv", data),
            "metrics": write_metrics_json(out / "metrics.json", result),
            "report": write_html_report(out / "report.html", result, data)}
