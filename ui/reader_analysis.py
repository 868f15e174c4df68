"""The Reader study page's analysis section: the headline, the tables, the ROC figure with the readers' points,
agreement, notes, and the downloads (HTML report, JSON, ratings in the long and iMRMC formats)."""
from __future__ import annotations

import json
import time

import pandas as pd
import streamlit as st

from cxrcore.readerstudy.analysis import export
from cxrcore.readerstudy.design import EXPORT_FORMATS
from cxrcore.readerstudy.report import fom_table, headline, html_report, roc_figure
from ui.common import chart_config, md_text


def _ci(ci) -> str:
    return "–" if not ci or ci[0] is None else f"{ci[0]:.3f} – {ci[1]:.3f}"


def show_analysis(result: dict, study, finding: str, store) -> None:
    for line in headline(result):
        st.markdown(f"- {md_text(line)}")
    st.markdown("**Per reader** (AUROC with DeLong's interval; sensitivity and specificity at the reader's call, "
                f"rating ≥ {result['study']['call_at']}, Wilson intervals)")
    st.dataframe(fom_table(result), hide_index=True)
    st.plotly_chart(roc_figure(result), config=chart_config(), key=f"rs_roc_{study.id}_{finding}")
    rows = []
    for name in ("rrrc", "frrc", "rrfc"):
        sec = result.get(name) or {}
        for pair, d in (sec.get("diff") or {}).items():
            rows.append({"analysis": name.upper(), "comparison": pair, "estimate": d.get("estimate"),
                         "95% CI": _ci(d.get("ci")), "p": d.get("p")})
        for arm, d in (sec.get("per_modality") or {}).items():
            rows.append({"analysis": name.upper(), "comparison": f"{arm} (reader mean)", "estimate": d.get("estimate"),
                         "95% CI": _ci(d.get("ci")), "p": None})
    if rows:
        st.markdown("**Obuchowski–Rockette–Hillis**: RRRC random readers and cases (generalises to both), FRRC these "
                    "readers only, RRFC these cases only")
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    kappa = result.get("kappa", {}).get("per_modality", {})
    krows = []
    for arm, entry in kappa.items():
        if entry.get("fleiss"):
            krows.append({"arm": arm, "between": "all readers (Fleiss)", "kappa": entry["fleiss"]["kappa"],
                          "95% CI": _ci(entry["fleiss"]["ci"])})
        for pair, k in entry.get("cohen", {}).items():
            krows.append({"arm": arm, "between": pair, "kappa": k["kappa"], "95% CI": _ci(k["ci"])})
        for reader, k in entry.get("model", {}).items():
            krows.append({"arm": arm, "between": f"{reader} ~ model", "kappa": k["kappa"], "95% CI": _ci(k["ci"])})
    if krows:
        st.markdown("**Agreement** (Cohen's and Fleiss' kappa on the calls; case-bootstrap intervals)")
        st.dataframe(pd.DataFrame(krows), hide_index=True)
    if result.get("location"):
        st.markdown("**Location marks**: hits inside a ground-truth box, on positive cases that have boxes")
        st.dataframe(pd.DataFrame([{"reader": r, "arm": arm, "hits": v["hits"], "of": v["positives_with_boxes"],
                                    "rate": v["rate"]} for r, arms in result["location"].items()
                                   for arm, v in arms.items()]), hide_index=True)
    for note in result.get("notes", []):
        st.caption(md_text(note))
    c1, c2, *cols = st.columns(2 + len(EXPORT_FORMATS))
    c1.download_button("HTML report", html_report(result, time.time()), f"{study.id}-{finding}.html", "text/html",
                       key=f"rs_dl_html_{study.id}_{finding}")
    c2.download_button("Analysis (JSON)", json.dumps(result, indent=1), f"{study.id}-{finding}.json",
                       "application/json", key=f"rs_dl_json_{study.id}_{finding}")
    for col, (kind, fmt) in zip(cols, EXPORT_FORMATS.items()):
        col.download_button(fmt.title, export(store, study.id, finding, kind), f"{study.id}-{finding}{fmt.suffix}",
                            fmt.mime, key=f"rs_dl_{kind}_{study.id}_{finding}", help=fmt.what)
