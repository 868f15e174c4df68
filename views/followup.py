"""Follow-up: a current film against the same patient's prior (cxrcore.prior).

Two films of one patient, from a dataset folder (a patient's studies in order), two uploads or the PACS: the prior registered
onto the current film (SimpleITK) with the registration's quality, a slider and a checkerboard between them, the
subtraction image, each label's heatmap change, and per label both probabilities, the change with its spread and
the call (new, resolved, worse, better, unchanged). An LLM can read the pair (the same structured answer and checks
as the Explain page's)."""
import json
import re
from pathlib import Path

import pandas as pd
import streamlit as st

from cxrcore import hosting
from cxrcore.compare import image_hash
from cxrcore.errors import CXRError
from cxrcore.explain.llm import DISCLAIMER
from cxrcore.explain.review import review_events
from cxrcore.explain.visual import film_rgb, png_bytes
from cxrcore.labels import CHANGES
from cxrcore.models.library import card_stamp
from cxrcore.prior.explain import (ChangeReview, change_facts, change_prompt, change_summary,
                                   validate_change_answer)
from cxrcore.prior.pictures import change_panel, checkerboard, signed_overlay, subtraction_image
from ui.common import (current_user, dataset_choices, hosting_settings, image_compare_slider, load_predictor, md_text,
                       model_picker, require_checkpoints, show_error, site_picker)
from ui.llm import llm_settings, stream_answer
from ui.pacs import pacs_config, pacs_pair_picker

CALL_COLOURS = {"new": "#c0392b", "worse": "#e67e22", "better": "#2e86c1", "resolved": "#1e8449", "unchanged": "#7f8c8d"}
assert set(CALL_COLOURS) == set(CHANGES)
BUILT_IN = "phantom follow-up pairs (built-in, change known)"

st.title("Compare with the prior study")
st.caption("Two films of one patient: what changed since the prior, per label, with the prior registered onto the "
           "current film. Nothing is stored; DICOM metadata never leaves this process.")

choices = require_checkpoints()
c1, c2 = st.columns(2)
model = model_picker(c1, "Model", choices, "fu_model", prefer=("baseline",))
site = site_picker(c2, choices[model], "fu_site")
mc = st.toggle("Spread of each change: Monte-Carlo dropout with test-time augmentation, 20 passes per film",
               value=True, key="fu_mc")

FOLDER, UPLOAD, PACS = "Two studies of a patient in a dataset folder", "Upload the two films", "Two studies from the PACS"
pacs = pacs_config()   # the operator's PACS (CXR_DICOMWEB_URL), or None
source = st.radio("Films", [FOLDER, UPLOAD] + ([PACS] if pacs is not None else []), horizontal=True, key="fu_source")


def _order(study: str) -> tuple:
    """A study's place in the patient's sequence: NIH's follow-up number and CheXpert's study number end its id."""
    m = re.search(r"(\d+)$", str(study))
    return (int(m.group(1)) if m else -1, str(study))


@st.cache_data(show_spinner="Reading the dataset's studies…", max_entries=8)
def _studies(folder: str, mtime: float) -> pd.DataFrame:
    from cxrcore.data.readers import read_dataset

    index = read_dataset(folder)
    f = index.frame
    frontal = f[f["frontal"]] if "frontal" in f.columns else f
    findings = frontal[index.labels].apply(lambda r: ", ".join(x for x, v in r.items() if v == 1) or "No Finding",
                                           axis=1)
    out = pd.DataFrame({"patient": frontal["patient_id"].astype(str), "study": frontal["study_id"].astype(str),
                        "view": frontal.get("view", pd.Series("", index=frontal.index)).fillna("").astype(str),
                        "labels in the table": findings, "path": frontal["path"].astype(str)})
    out = out.drop_duplicates("study")   # one frontal film per study
    out["order"] = out["study"].map(lambda s: _order(s)[0])
    return out.sort_values(["patient", "order", "study"]).reset_index(drop=True)


@st.cache_data(show_spinner=False, max_entries=8)
def _truth(folder: str, mtime: float) -> dict:
    """(prior, current) relative paths -> {label: change}, from the folder's pairs.csv (none: {})."""
    from cxrcore.data.phantom.pairs import PAIRS_FILE, read_pairs

    if not (Path(folder) / PAIRS_FILE).is_file():
        return {}
    t = read_pairs(folder)
    out: dict = {}
    for prior, current, label, change in zip(t["prior"], t["current"], t["label"], t["change"]):
        out.setdefault((str(prior), str(current)), {})[str(label)] = str(change)
    return out


prior = current = None   # (bytes, name)
truth: dict = {}
if source == FOLDER:
    try:
        from cxrcore.demo import ensure_pairs

        folders = {BUILT_IN: str(ensure_pairs())}
        folders.update({k: v for k, v in dataset_choices().items() if v not in folders.values()})
    except CXRError as exc:
        show_error(exc)
        st.stop()
    folder = folders[st.selectbox("Dataset folder", list(folders), key="fu_folder")]
    try:
        studies = _studies(folder, Path(folder).stat().st_mtime)
        known = _truth(folder, Path(folder).stat().st_mtime)
    except (CXRError, OSError) as exc:
        show_error(exc)
        st.stop()
    counts = studies.groupby("patient")["study"].nunique()
    several = [p for p in counts.index if counts[p] >= 2]
    if not several:
        st.info("No patient in this folder has two studies (the table's Follow-up # or the CheXpert study numbers). "
                "Pick another folder or upload the two films.")
        st.stop()
    patient = st.selectbox(f"Patient ({len(several)} with two studies or more)", several, key="fu_patient",
                           index=None, placeholder="Choose a patient (type to search)",
                           format_func=lambda p: f"{p} — {counts[p]} studies")
    if patient is None:
        st.info("Choose a patient: their studies are listed in order, the last two compared by default.")
        st.stop()
    mine = studies[studies["patient"] == patient].reset_index(drop=True)
    st.caption("The patient's studies in order (NIH's follow-up number, CheXpert's study number: the datasets give "
               "no dates).")
    st.dataframe(mine[["study", "view", "labels in the table"]], hide_index=True, width="stretch", key="fu_studies")
    names = list(mine["study"])
    a, b = st.columns(2)
    prior_study = a.selectbox("Prior", names, index=len(names) - 2, key=f"fu_prior_{patient}")
    current_study = b.selectbox("Current", names, index=len(names) - 1, key=f"fu_current_{patient}")
    if prior_study == current_study:
        st.error("The prior and the current film are the same study; pick two different ones.")
        st.stop()
    pp, cp = (mine.loc[mine["study"] == s, "path"].iloc[0] for s in (prior_study, current_study))
    if _order(prior_study) > _order(current_study):
        st.warning("The film picked as the prior comes after the current one in the patient's sequence: changes "
                   "read backwards.")
    try:
        prior = (Path(pp).read_bytes(), Path(pp).name)
        current = (Path(cp).read_bytes(), Path(cp).name)
    except OSError as exc:
        st.error(f"A film of this patient could not be read ({exc.strerror}); pick another study.")
        st.stop()
    try:
        rel = tuple(str(Path(p).resolve().relative_to(Path(folder).resolve())) for p in (pp, cp))
    except ValueError:   # a film outside the folder (a table's absolute path): no truth for it
        rel = None
    truth = known.get(rel, {})
elif source == PACS:
    picked = pacs_pair_picker(pacs)
    if picked is not None:
        prior, current = picked
else:
    a, b = st.columns(2)
    ups = []
    for col, what, key in ((a, "Prior (earlier) film", "fu_up_prior"), (b, "Current (later) film", "fu_up_current")):
        up = col.file_uploader(what, type=["png", "jpg", "jpeg", "dcm", "dicom"], key=key)
        if up is not None:
            try:
                hosting.check_upload_size(up.size, hosting_settings(), up.name)
            except CXRError as exc:
                show_error(exc)
                st.stop()
            ups.append((up.getvalue(), up.name))
        else:
            ups.append(None)
    prior, current = ups

if prior is None or current is None:
    st.info("Pick a patient's two studies, or upload the prior and the current film.")
    st.stop()


@st.cache_resource(show_spinner="Registering the prior onto the current film and reading both…", max_entries=8)
def _pair(prior_hash: str, current_hash: str, path: str, stamp: tuple, site: str | None, mc_samples: int,
          _prior: tuple, _current: tuple):
    from cxrcore.compare import load_image
    from cxrcore.prior.change import compare_prior

    a, ra = load_image(_prior[0], _prior[1])
    b, rb = load_image(_current[0], _current[1])
    return compare_prior(a, b, load_predictor(path).at_site(site), model, prior_raw=ra, current_raw=rb,
                         mc_samples=mc_samples)


path = choices[model]
films = (image_hash(prior[0]), image_hash(current[0]))   # the pair's key: its cached comparison, its LLM answer
try:
    load_predictor(path)   # a library model's weights, fetched with a progress bar first
    result = _pair(*films, path, card_stamp(path), site, 20 if mc else 0, prior, current)
except CXRError as exc:
    show_error(exc)
    st.stop()

reg = result.registration
if reg.warning:
    st.warning(reg.warning)
if reg.caution:
    st.info(reg.caution)
for notice in result.notices():
    st.warning(md_text(notice.text))
m1, m2, m3, m4 = st.columns(4)
m1.metric("Registration: NCC over the lung fields", f"{reg.ncc_after:.2f}", f"{reg.ncc_after - reg.ncc_before:+.2f}",
          help="Normalised cross-correlation of the two films over the current film's lung fields, after "
               "registration (the change: against no registration). Below 0.25, or not raised: a warning; below "
               "0.5: a caution.")
if reg.params:
    m2.metric("Current vs prior: rotation", f"{reg.params['rotation_deg']:+.1f}°")
    m3.metric("Scale", f"{reg.params['scale']:.3f}")
m4.metric("Labels called changed", len(result.changed()))

# ----------------------------------------------------------------- per-label changes
st.subheader("What changed, per label")
rows = result.rows()
by_label = {r["label"]: r for r in rows}
called = result.changed()
st.markdown("**Called:** " + ("; ".join(f"{md_text(x)}: {by_label[x]['call']} ({by_label[x]['prior']:.2f} → "
                                         f"{by_label[x]['current']:.2f})" for x in called)
                              if called else "no label changed (every change below its threshold)"))
if truth:
    changed_here = [x for x, c in truth.items() if c != "unchanged"]
    st.markdown("**Known change** (the folder's pairs.csv): "
                + ("; ".join(f"{md_text(x)}: {truth[x]}" for x in changed_here) if changed_here else "none"))
table = pd.DataFrame({
    "label": [r["label"] for r in rows],
    "call": [r["call"] for r in rows],
    "prior": [r["prior"] for r in rows],
    "current": [r["current"] for r in rows],
    "change Δp": [r["delta"] for r in rows],
    "± (95 %)": [1.96 * r["delta_sd"] if "delta_sd" in r else None for r in rows],
    "sure": [r.get("confident") for r in rows],
    "τ": [r["change_threshold"] for r in rows],
})
if truth:
    table["known change"] = table["label"].map(lambda x: truth.get(x, ""))
table = table.reindex(table["change Δp"].abs().sort_values(ascending=False).index)
st.dataframe(table.style.map(lambda v: f"color: {CALL_COLOURS.get(v, 'inherit')}; font-weight: 600",
                             subset=["call"] + (["known change"] if truth else [])),
             hide_index=True, width="stretch", key="fu_table",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                            ("prior", "current", "change Δp", "± (95 %)", "τ")})
st.caption(
    "The call reads Δp = p(current) − p(prior) against the label's change threshold τ ("
    + ("tuned on phantom pairs" if result.tuned else "0.1 for every label: not tuned for this model; cxr eval-change "
       "--tune --save tunes it") + "): new / worse when Δp ≥ τ and the finding counts as there now (the decision "
    "threshold, at most 0.5), resolved / better when Δp ≤ −τ, else unchanged. *sure*: Δp ± 1.96 sd stays on one "
    "side of τ. The probabilities are the model's on each film as taken; registration changes only the pictures.")
if truth:
    right = (table["call"] == table["known change"]).mean()
    st.caption(f"Known change (the folder's pairs.csv): the call matches it for {right:.0%} of the labels here.")

# ----------------------------------------------------------------- the registered pair
st.subheader("The registered pair")
cur_pixels = result.current.image.pixels
c1, c2, c3 = st.columns(3)
c1.image(film_rgb(result.prior.image.pixels, 384), caption="Prior, as taken", width="stretch")
c2.image(film_rgb(reg.warped, 384), caption="Prior, registered onto the current film", width="stretch")
c3.image(film_rgb(cur_pixels, 384), caption="Current", width="stretch")
s1, s2 = st.columns(2)
with s1:
    image_compare_slider(png_bytes(film_rgb(reg.warped, 420)), png_bytes(film_rgb(cur_pixels, 420)),
                         "registered prior", "current", height=480)
with s2:
    st.image(checkerboard(result, cur_pixels, height=420), caption="Checkerboard of the two: edges run on across the "
             "squares where the registration holds", width="stretch")

# ----------------------------------------------------------------- subtraction and change maps
st.subheader("Subtraction and change map")
order = [x for x in table["label"]]
s1, s2 = st.columns(2)
s1.image(subtraction_image(result.subtraction, 420), caption="Subtraction: current − registered prior (white: "
         "brighter now, black: darker now)", width="stretch")
label = s2.selectbox("Heatmap change for", order, key="fu_label")
i = result.labels.index(label)
if result.change_maps.size:
    s2.image(signed_overlay(cur_pixels, result.change_maps[i], 420),
             caption=f"{label}: current heatmap × p minus the registered prior's (red: more now, blue: less)",
             width="stretch")

# ----------------------------------------------------------------- downloads
panel = change_panel(result.prior.image.pixels, cur_pixels, result, label)
d1, d2 = st.columns(2)
d1.download_button("Download the comparison (JSON)", json.dumps(result.to_dict(), indent=1), "prior_comparison.json",
                   "application/json", key="fu_json")
d2.download_button("Download the panel (PNG)", png_bytes(panel), "prior_comparison.png", "image/png", key="fu_png")

# ----------------------------------------------------------------- the LLM's reading
st.subheader("Explain the change")

facts = change_facts(result)
facts_panel = change_panel(result.prior.image.pixels, cur_pixels, result, facts["label"])
settings = hosting_settings()
config, key_input = llm_settings(settings, prefix="fu_llm")
if config is None:
    st.markdown("Written summary from the same facts instead:  \n" + md_text(change_summary(facts), single_line=False))
    st.stop()
cache = st.session_state.setdefault("fu_answers", {})
cache_key = (*films, path, site, config.model, config.base_url)
go = st.button("Explain the change with the LLM", type="primary", key="fu_go")
text_col, side_col = st.columns([1, 1])
if go:
    prompt = change_prompt(facts)
    outcome = stream_answer(lambda stop: review_events(png_bytes(facts_panel), facts, prompt, config, stop,
                                                       ChangeReview, validate_change_answer),
                            config, key_input, settings, text_col, side_col)
    if outcome is None:
        st.markdown("Written summary from the same facts instead:  \n"
                    + md_text(change_summary(facts), single_line=False))
    else:
        cache[cache_key] = outcome
elif cache_key not in cache:
    st.caption("Without the LLM: " + md_text(change_summary(facts)))
outcome = cache.get(cache_key)
if outcome is not None:
    if outcome.valid:
        review = outcome.review
        colour = {"IMPROVED": "green", "WORSE": "red", "NO CHANGE": "gray"}[review.verdict]
        side_col.markdown(f"**Verdict:** :{colour}[{review.verdict}]")
        text_col.markdown(md_text(review.explanation, single_line=False))
        side_col.dataframe(pd.DataFrame([j.model_dump() for j in review.changes]), hide_index=True, width="stretch",
                           key="fu_judged")
        for note in outcome.notes:
            side_col.info(md_text(note))
    else:
        side_col.error(f"The answer was not used: {outcome.error}")
        text_col.text(outcome.raw_text[:4000])
    st.caption(f"Asked {md_text(config.model)} by {md_text(current_user(settings).display)}; "
               f"{outcome.seconds:.1f} s.")
st.caption(DISCLAIMER)
