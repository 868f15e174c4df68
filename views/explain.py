"""Explain: an LLM (OpenAI or any OpenAI-compatible server) reviews the comparison the way seed 002 asks.

The case type (easy / average / hard) picks the instructions; the answer is a verdict for the fine-tuned
model against the baseline, a judgement of each Grad-CAM box and the written explanation, validated
against a JSON schema before anything of it is shown as a verdict (cxrcore.explain.review)."""
import hashlib
import json
from pathlib import Path

import streamlit as st

from cxrcore.errors import CXRError
from cxrcore.explain.llm import DISCLAIMER, template_summary
from cxrcore.explain.review import (CASE_TYPES, DEFAULT_CASE_INSTRUCTIONS, DEFAULT_TEMPLATE, PLACEHOLDERS,
                                    PromptTemplate, classify_case, prompt_values, review_events, review_facts,
                                    review_record, save_review, truth_for, verdict_check)
from cxrcore.explain.visual import comparison_panel, png_bytes
from ui import handoff
from ui.common import checkpoint_choices, current_user, hosting_settings, md_text, run_comparison, show_error
from ui.llm import llm_settings, stream_answer

VERDICT_COLORS = {"IMPROVED": "green", "WORSE": "red", "NO CHANGE": "gray"}
TRUTH_OPTIONS = ["unknown", "present", "absent"]

st.title("Explain a comparison")
st.caption(DISCLAIMER)

sent = handoff.received(st.session_state)
if sent is None:
    st.info("No comparison yet: run one on the Compare page, send a case from the Evaluation page's case browser, "
            "or use a held-out phantom test image here.")
    st.page_link("views/compare.py", label="Open the Compare page (upload an image or pick a phantom) →")
    if st.button("Compare the shipped models on a phantom test image", key="explain_sample"):
        from cxrcore.demo import sample_cases

        try:
            choices = checkpoint_choices()
            base = next(p for n, p in choices.items() if n.startswith("baseline"))
            tuned = next(p for n, p in choices.items() if n.startswith("finetuned"))
            case = next((c for c in sample_cases() if c["truth"]), sample_cases()[0])
            handoff.send(st.session_state, handoff.Handoff(
                run_comparison(Path(case["path"]).read_bytes(), Path(case["path"]).name, base, tuned, case["truth"])))
            st.rerun()
        except StopIteration:
            st.error("The shipped baseline and fine-tuned checkpoints are missing; run `cxr demo build`.")
        except CXRError as exc:
            show_error(exc)
    st.stop()

# Where the comparison came from: the Compare page sends the models' names; the Evaluation page's case browser
# also the labels whose ground truth is known for that image, and the label it was browsing.
comparison = sent.comparison
names = sent.names
known = set(sent.known) if sent.known is not None else None
if sent.origin:
    st.caption(f"Sent from {md_text(sent.origin)}: {md_text(sent.image_id or comparison.image_name)} · baseline: "
               f"{names.get('baseline', 'baseline')} · fine-tuned: {names.get('fine-tuned', 'fine-tuned')}")
    wanted = handoff.take_label(st.session_state)
    if wanted in comparison.labels():
        st.session_state["explain_label"] = wanted

labels = comparison.labels()
best = max(labels, key=lambda x: max((float(p.probs[p.labels.index(comparison.label_in(n, x))])
                                      for n, p in comparison.predictions.items() if comparison.label_in(n, x)),
                                     default=0.0))
if st.session_state.get("explain_label") not in labels:
    st.session_state["explain_label"] = best
label = st.selectbox("Label to explain", labels, key="explain_label")
preds = comparison.for_label(label)

# ----------------------------------------------------------------- ground truth and case type
given = truth_for(comparison.truth, label, known)
where_from = (sent.truth_from or "the phantom image's labels") if given is not None \
    else "not known for this image"
truth_key = f"explain_truth_{comparison.image_hash}_{label}"
if truth_key not in st.session_state:
    st.session_state[truth_key] = {None: "unknown", True: "present", False: "absent"}[given]
t1, t2 = st.columns([2, 3])
choice = t1.radio(f"Ground truth of {md_text(label)}", TRUTH_OPTIONS, key=truth_key, horizontal=True,
                  help=f"From {where_from}. Set it when you know it: the case type then follows from it.")
truth_present = {"unknown": None, "present": True, "absent": False}[choice]
if truth_present != given:
    t1.caption(f"Set by you (the data says: {'unknown' if given is None else ('present' if given else 'absent')}).")
else:
    t1.caption(f"From {where_from}.")
try:
    case = classify_case(preds, label, truth_present)
except CXRError as exc:
    show_error(exc)
    st.stop()
t2.markdown(f"**Case type: {case.name}** ({case.basis_text})  \n{md_text(case.detail)}")  # it names the label

panel = comparison_panel(comparison.image.pixels, preds, label, comparison.truth)
st.image(panel, caption=f"{md_text(comparison.image_name)}: the panel sent to the LLM (boxes numbered as in the facts)",
         width="stretch")
facts = review_facts(preds, label, case, names)
for warning in facts.get("warnings", []):  # also in the panel and in what the LLM is told
    st.warning(md_text(warning))  # it names the models (a card's name: a job's)

# ----------------------------------------------------------------- LLM settings
settings = hosting_settings()
config, key_input = llm_settings(settings)
if config is None:   # the operator's policy refused the base URL (said above)
    st.markdown("Written summary from the same facts instead:  \n"
                + md_text(template_summary(facts), single_line=False))
    st.stop()


# ----------------------------------------------------------------- the prompt template (this session's own)
# The text areas carry the default text as their own default value (not only through the session state):
# in Chromium, a rerun triggered right after the page loads can report a text area in a collapsed expander
# with its widget default, which was "" and emptied the template. "Reset to default" makes new widgets.
def _reset_template() -> None:
    st.session_state["explain_template_version"] = st.session_state.get("explain_template_version", 0) + 1


version = st.session_state.get("explain_template_version", 0)
with st.expander("Prompt template (editable for this session)"):
    st.caption("Placeholders: " + " · ".join(f"`${{{k}}}` {v}" for k, v in PLACEHOLDERS.items())
               + ". The structured facts and the panel are always attached; the answer's JSON schema is sent "
                 "with the request (or added to the prompt when the server does not take structured output).")
    template_text = st.text_area("Template", value=DEFAULT_TEMPLATE, key=f"explain_template_{version}", height=320)
    case_texts = {c: st.text_area(f"Steps for an {c} case" if c != "hard" else "Steps for a hard case",
                                  value=DEFAULT_CASE_INSTRUCTIONS[c], key=f"explain_case_{c}_{version}", height=110)
                  for c in CASE_TYPES}
    st.button("Reset to default", key="explain_reset", on_click=_reset_template)
template = PromptTemplate(template_text, case_texts)
try:
    prompt = template.render(prompt_values(facts, case, names))
except CXRError as exc:
    show_error(exc)
    st.stop()
if not template.is_default:
    st.caption("Your edited prompt template is in use (this session only).")
with st.expander("Prompt as sent"):
    st.code(prompt, language=None, wrap_lines=True)
with st.expander("Structured facts sent with the panel"):
    st.json(facts)

if not config.enabled:
    st.warning("No LLM configured. Set OPENAI_API_KEY (and OPENAI_BASE_URL for a local OpenAI-compatible server) "
               "before starting the app, or enter a key in the settings above. Meanwhile, a written summary "
               "from the same facts:")
    st.markdown(md_text(template_summary(facts), single_line=False))
    st.stop()


# ----------------------------------------------------------------- the explanation
def show_result(entry: dict, text_col, side_col) -> None:
    """A validated review as verdict badge, box table and text; an invalid one as an error and the raw
    text marked unvalidated (never a verdict)."""
    outcome = entry["outcome"]
    how = ("structured output (JSON schema)" if outcome.mode == "structured"
           else "the JSON schema in the prompt (the server does not take structured output)")
    if outcome.fallback_reason:
        side_col.caption(md_text(outcome.fallback_reason))  # the server's words
    if not outcome.valid:
        text_col.error(md_text(outcome.error[0].upper() + outcome.error[1:]) + " No verdict is shown.")  # quotes the model
        with text_col.expander("The model's raw answer (unvalidated)", expanded=True):
            st.code(outcome.raw_text or "(empty)", language=None, wrap_lines=True)
        side_col.caption(f"Asked with {how} · {config.model} · {outcome.seconds:.1f} s")
    else:
        review = outcome.review
        text_col.markdown(md_text(review.explanation, single_line=False))  # the model's words as text, not Markdown
        side_col.markdown(f"**Verdict** (fine-tuned vs baseline): "
                          f":{VERDICT_COLORS[review.verdict]}-badge[{review.verdict}]")
        check = verdict_check(review, case)
        if check:
            side_col.warning(md_text(check))
        rows = outcome.box_rows(facts)
        if rows:
            side_col.dataframe(rows, hide_index=True, width="stretch", key="explain_boxes",
                               column_config={
                                   "relevant": st.column_config.CheckboxColumn(
                                       "relevant", help="The box covers anatomy where this label shows"),
                                   "consistent with finding location": st.column_config.CheckboxColumn(
                                       "location", help="Consistent with where the finding lies in this image"),
                                   "why": st.column_config.TextColumn("why", width="large")})
        else:
            side_col.caption("No model drew a box for this label: no box to judge.")
        for note in outcome.notes:
            side_col.caption(md_text(note))  # box ids the model wrote
        side_col.caption(f"Validated against the schema · asked with {how} · {config.model} · {outcome.seconds:.1f} s")
    if entry.get("path"):
        side_col.caption(f"Saved with the comparison: `{entry['path']}`")
    side_col.download_button("Download this explanation (JSON)", json.dumps(entry["record"], indent=1),
                             file_name=Path(entry.get("path") or "explanation.json").name, mime="application/json",
                             key="explain_download")


cache = st.session_state.setdefault("reviews", {})
cache_key = (comparison.image_hash, tuple(sorted(comparison.model_paths.values())), label, truth_present,
             hashlib.sha256(prompt.encode()).hexdigest()[:16], config.model, config.base_url, config.isolated)
go = st.button("Explain with the LLM", type="primary", key="explain_go",
                help="Asks again when an explanation of this label, ground truth and prompt is shown already.")
if cache_key in cache and not go:
    text_col, side_col = st.columns([1, 1])
    show_result(cache[cache_key], text_col, side_col)
elif go:
    text_col, side_col = st.columns([1, 1])
    outcome = stream_answer(lambda stop: review_events(png_bytes(panel), facts, prompt, config, stop), config,
                            key_input, settings, text_col, side_col)
    if outcome is None:
        st.markdown("Written summary from the same facts instead:  \n"
                    + md_text(template_summary(facts), single_line=False))
    if outcome is not None:
        record = review_record(comparison=comparison, label=label, facts=facts, case=case, prompt=prompt,
                               template=template, config=config, outcome=outcome, names=names,
                               source=sent.origin or "Compare", owner=current_user(settings).display)
        entry = {"outcome": outcome, "record": record, "path": None}
        try:
            entry["path"] = str(save_review(record))
        except OSError as exc:
            side_col.warning(f"The explanation could not be saved in the workspace ({exc.strerror}); download it "
                             "below instead.")
        cache[cache_key] = entry
        show_result(entry, text_col, side_col)
st.caption(DISCLAIMER)
