"""Fit a site profile from a page (issue 23 §1; ``cxr site fit`` from a shell): a labelled sample of the site's
films, the threshold rule, a name; the profile's table (temperature and threshold with intervals, before / after)
and how the intervals narrow with the sample. Saved where thresholds are saved (cxrcore.eval.thresholds.save_site)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from cxrcore import hosting
from cxrcore.eval.site import DEFAULT_STRATEGY, profile_table
from cxrcore.eval.thresholds import STRATEGIES, TARGETED
from ui.common import md_text, show_error

SAMPLE_SPLITS = ("all", "val", "test")
NEXT = "site_fit_next"   # after a fit: the model and site the page's pickers show on its next run


def take_next(model_key: str, site_key: str) -> None:
    """Before the page's pickers are drawn: after a fit, choose the model holding the new profile and the site."""
    nxt = st.session_state.pop(NEXT, None)
    if nxt:
        st.session_state[model_key] = nxt["model"]
        st.session_state[site_key] = nxt["site"]


def site_fit_form(ckpt: str, datasets: dict[str, str], user, access) -> None:
    """The form in an expander; on submit the profile is fitted and saved, and its table is shown (kept for this
    browser session until the next fit)."""
    limits = hosting.limits(access, user)
    with st.expander("Fit a site profile on a labelled sample of the site's films"):
        st.caption("Per label, the temperature that makes the model's probabilities honest on the sample and the "
                   "operating threshold by the chosen rule, each with a patient-bootstrap 95 % interval; before / "
                   "after on the sample; how the intervals narrow with the number of cases. Saved by name beside "
                   "the model (a shipped model's copy in the workspace); the model itself is not changed.")
        with st.form("site_fit_form", border=False):
            f1, f2, f3 = st.columns([2, 3, 1])
            name = f1.text_input("Site name", key="site_fit_name", placeholder="e.g. north")
            data = f2.selectbox("Labelled sample (dataset)", list(datasets), key="site_fit_data")
            split = f3.selectbox("Images", SAMPLE_SPLITS, key="site_fit_split",
                                 help="all: every image of the sample (a site's sample is not split)")
            g1, g2, g3 = st.columns(3)
            strategy = g1.selectbox("Threshold rule", list(STRATEGIES), key="site_fit_strategy",
                                    index=list(STRATEGIES).index(DEFAULT_STRATEGY))
            target = g2.number_input("Target (sensitivity / specificity rules)", 0.5, 0.999, 0.9, 0.01,
                                     key="site_fit_target")
            boot_max = limits.widget_max("bootstrap", 2000)
            n_boot = g3.number_input("Bootstrap replicates", 20, boot_max, min(200, boot_max), 20, key="site_fit_boot",
                                     help=limits.note("bootstrap") or None)
            go = st.form_submit_button("Fit and save the site profile")
        if go:
            from cxrcore.eval.site import fit_site_on
            from cxrcore.eval.thresholds import save_site, save_target

            try:
                target_display = save_target(ckpt, user, access).display   # the model list's name of where it goes
                with st.spinner("Predicting the sample (cached afterwards) and bootstrapping…"), \
                        hosting.heavy_slot(user, access):
                    profile = fit_site_on(ckpt, datasets[data], name.strip(), split=split, strategy=strategy,
                                          target=float(target) if strategy in TARGETED else None, n_boot=int(n_boot),
                                          limits=limits)
                    where = save_site(ckpt, name.strip(), profile.to_dict(), user=user, settings=access)
                st.session_state["site_fit_result"] = {"name": name.strip(), "where": str(where / "card.json"),
                                                       "profile": profile.to_dict()}
                # The page reopens on the model that holds the profile (a shipped model's copy) at the new site.
                st.session_state[NEXT] = {"model": target_display, "site": name.strip()}
                st.rerun()
            except Exception as exc:  # noqa: BLE001 - CXRError as a message; anything else without a traceback
                show_error(exc)
        held = st.session_state.get("site_fit_result")
        if held:
            p = held["profile"]
            fitted = sum(1 for v in p["labels"].values() if v.get("fitted"))
            st.success(f"Site profile **{md_text(held['name'])}** fitted on {md_text(p['fitted_on'])} ({p['strategy']}"
                       + (f", target {p['target']}" if p.get("target") is not None else "")
                       + f"): {fitted} of {len(p['labels'])} labels; saved in {md_text(held['where'])}. Choose it in "
                       "**Site profile** to tune its thresholds, or on Compare.")
            st.dataframe(pd.DataFrame(profile_table(p)), hide_index=True, width="stretch", key="site_fit_table")
            if p.get("curve"):
                st.caption("How many cases are enough: the median width over labels of the 95 % intervals when only "
                           "n of the sample's cases are used — "
                           + "; ".join(f"n = {c['n']}: threshold {c['threshold_ci_width']:.3f}, temperature "
                                       f"{c['temperature_ci_width']:.2f}" for c in p["curve"]))
