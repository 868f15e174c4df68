"""A study's analysis as a figure and a self-contained HTML report (the page shows the same figure and tables)."""
from __future__ import annotations

import html
import json
from datetime import datetime

import pandas as pd
import plotly.graph_objects as go

ARM_STYLE = {"unaided": ("circle-open", "#636efa"), "aided": ("circle", "#ef553b")}


def roc_figure(result: dict) -> go.Figure:
    """The model's ROC curve for the finding with each reader's operating point, unaided and aided (a line joins a
    reader's two points: where the model moved them)."""
    study = result.get("study", {})
    fig = go.Figure()
    model = result.get("roc", {}).get("model")
    if model:
        auc = (result.get("kappa", {}).get("model") or {}).get("auroc", {}).get("estimate")
        fig.add_trace(go.Scatter(x=model["fpr"], y=model["tpr"], mode="lines", name="model" + (
            f" (AUROC {auc:.3f})" if auc is not None else ""), line=dict(color="#222")))
        if "point" in model:
            fig.add_trace(go.Scatter(x=[model["point"]["fpr"]], y=[model["point"]["tpr"]], mode="markers",
                                     name="model at its threshold", marker=dict(symbol="star", size=14, color="#222")))
    shown = set()
    for reader, arms in result.get("roc", {}).get("readers", {}).items():
        if len(arms) == 2:
            fig.add_trace(go.Scatter(x=[arms["unaided"]["fpr"], arms["aided"]["fpr"]],
                                     y=[arms["unaided"]["tpr"], arms["aided"]["tpr"]], mode="lines",
                                     line=dict(color="#aaa", dash="dot"), showlegend=False, hoverinfo="skip"))
        for arm, p in arms.items():
            symbol, colour = ARM_STYLE.get(arm, ("square", "#00cc96"))
            fig.add_trace(go.Scatter(x=[p["fpr"]], y=[p["tpr"]], mode="markers+text", text=[reader],
                                     textposition="top right", name=f"readers, {arm}", legendgroup=arm,
                                     showlegend=arm not in shown, marker=dict(symbol=symbol, size=11, color=colour),
                                     hovertemplate=f"{html.escape(reader)} ({arm}): FPR %{{x:.2f}}, TPR %{{y:.2f}}"))
            shown.add(arm)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#ccc", dash="dash"),
                             showlegend=False, hoverinfo="skip"))
    fig.update_layout(title=f"{study.get('finding', '')}: the model's ROC curve and each reader's operating point "
                            f"(call at rating ≥ {study.get('call_at')})",
                      xaxis=dict(title="1 − specificity (false positive rate)", range=[-0.02, 1.02]),
                      yaxis=dict(title="sensitivity (true positive rate)", range=[-0.02, 1.02], scaleanchor="x"),
                      height=560, legend=dict(orientation="h", y=-0.18))
    return fig


def fom_table(result: dict) -> pd.DataFrame:
    """Per reader: AUROC (DeLong CI), sensitivity and specificity at the call, per arm; then the reader mean."""
    rows = []
    for arm, readers in result.get("per_reader", {}).items():
        for reader, r in readers.items():
            row = {"reader": reader, "arm": arm, "AUROC": r["auroc"]["estimate"],
                   "AUROC 95% CI": _ci(r["auroc"]["ci"])}
            if "sensitivity" in r:
                row.update({"sensitivity": r["sensitivity"]["estimate"], "sens. CI": _ci(r["sensitivity"]["ci"]),
                            "specificity": r["specificity"]["estimate"], "spec. CI": _ci(r["specificity"]["ci"])})
            t = (result.get("reading_time") or {}).get(reader, {}).get(arm)
            row["median s per case"] = None if t is None else round(t, 1)
            rows.append(row)
    return pd.DataFrame(rows)


def _ci(ci) -> str:
    return "–" if not ci or ci[0] is None else f"{ci[0]:.3f} – {ci[1]:.3f}"


def _num(x, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _p(p) -> str:
    return "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def headline(result: dict) -> list[str]:
    """The results in sentences: the aided − unaided difference (random readers and cases, ORH), the readers vs
    the model, per arm."""
    out = []
    rrrc = result.get("rrrc") or {}
    for pair, d in (rrrc.get("diff") or {}).items():
        if d.get("estimate") is None:
            continue
        out.append(f"Reader-averaged AUROC difference {pair}: {d['estimate']:+.3f} (95% CI {_ci(d.get('ci'))}); "
                   f"ORH random readers and cases: F = {_num(rrrc.get('f'), 3)}, ddf = {_num(rrrc.get('ddf'), 2)}, "
                   f"p = {_p(rrrc.get('p'))}.")
    for arm, s in (result.get("standalone") or {}).items():
        d = s.get("diff") or {}
        if d.get("estimate") is not None:
            out.append(f"Readers {arm} − model: {d['estimate']:+.3f} (95% CI {_ci(d.get('ci'))}, p = {_p(d.get('p'))}; "
                       f"{s.get('method', '').split(':')[0]}).")
    return out


def html_report(result: dict, created: float | None = None) -> str:
    """A self-contained HTML report (the figure's script embedded: it opens offline)."""
    study = result.get("study", {})
    parts = [f"<h1>Reader study: {html.escape(str(study.get('name', '')))}</h1>",
             f"<p>Finding <b>{html.escape(str(study.get('finding')))}</b> · design {html.escape(str(study.get('design')))}"
             f" · {result.get('n_cases')} cases ({result.get('n_positive')} positive) · readers "
             f"{html.escape(', '.join(result.get('readers', [])))} · covariance {result.get('covariance')} · "
             f"report made {datetime.fromtimestamp(created).strftime('%Y-%m-%d %H:%M') if created else ''}</p>",
             "<h2>Results</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in headline(result)) + "</ul>",
             "<h2>Per reader</h2>" + fom_table(result).to_html(index=False, float_format=lambda v: f"{v:.3f}"),
             roc_figure(result).to_html(full_html=False, include_plotlyjs=True),
             "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result.get("notes", [])) + "</ul>",
             "<h2>Every number (JSON)</h2><pre>" + html.escape(json.dumps(
                 {k: v for k, v in result.items() if k != "roc"}, indent=1)) + "</pre>"]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Reader study report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>" + "".join(parts) + "</body></html>")
