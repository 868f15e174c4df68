"""Explain: an LLM (OpenAI or any OpenAI-compatible server) explains the comparison panel."""
import time
from pathlib import Path

import streamlit as st

from cxrcore import hosting
from cxrcore.errors import AccessError, CXRError, LLMError
from cxrcore.explain.llm import DISCLAIMER, LLMConfig, build_facts, explain_stream, template_summary
from cxrcore.explain.visual import comparison_panel, png_bytes
from ui.common import checkpoint_choices, hosting_settings, run_comparison, show_error

st.title("Explain a comparison")
st.caption(DISCLAIMER)

comparison = st.session_state.get("comparison")
if comparison is None:
    st.info("No comparison yet: run one on the Compare page, or use a held-out phantom test image here.")
    st.page_link("views/compare.py", label="Open the Compare page (upload an image or pick a phantom) →")
    if st.button("Compare the shipped models on a phantom test image", key="explain_sample"):
        from cxrcore.demo import sample_cases

        try:
            choices = checkpoint_choices()
            base = next(p for n, p in choices.items() if n.startswith("baseline"))
            tuned = next(p for n, p in choices.items() if n.startswith("finetuned"))
            case = next((c for c in sample_cases() if c["truth"]), sample_cases()[0])
            run_comparison(Path(case["path"]).read_bytes(), Path(case["path"]).name, base, tuned, case["truth"])
            st.rerun()
        except StopIteration:
            st.error("The shipped baseline and fine-tuned checkpoints are missing; run `cxr demo build`.")
        except CXRError as exc:
            show_error(exc)
    st.stop()

labels = comparison.labels()
best = max(labels, key=lambda x: max((float(p.probs[p.labels.index(comparison.label_in(n, x))])
                                      for n, p in comparison.predictions.items() if comparison.label_in(n, x)),
                                     default=0.0))
label = st.selectbox("Label to explain", labels, index=labels.index(best), key="explain_label")
preds = comparison.for_label(label)
panel = comparison_panel(comparison.image.pixels, preds, label, comparison.truth)
st.image(panel, caption=f"{comparison.image_name}: the panel sent to the LLM", width="stretch")
facts = build_facts(preds, label, comparison.truth)
for warning in facts.get("warnings", []):  # also in the panel and in what the LLM is told
    st.warning(warning)

settings = hosting_settings()
with st.expander("LLM settings (OpenAI or any OpenAI-compatible server)"):
    env = LLMConfig.from_env()
    own = env.base_url or hosting.OPENAI_BASE_URL
    st.caption("Defaults come from OPENAI_API_KEY, OPENAI_BASE_URL and CXR_LLM_MODEL. "
               "A key is used for the request only; it is never shown or logged.")
    model = st.text_input("Model", value=env.model, key="llm_model")
    editable = hosting.llm_base_url_editable(settings)
    base_url = st.text_input("Base URL (blank: this server's endpoint)", value=env.base_url or "",
                             key="llm_base_url", disabled=not editable)
    if not editable:
        base_url = ""
        st.caption(f"This server sends explanations only to its own endpoint ({own}). The operator can allow other "
                   f"OpenAI-compatible servers with {hosting.ENV_LLM_ALLOWED}.")
    elif settings.llm_allowed_set or settings.hosted:
        st.caption(f"Besides this server's endpoint ({own}), allowed: {', '.join(settings.llm_allowed)}. Another "
                   "base URL is used only with the API key you type below: the server's key goes to its own "
                   "endpoint only.")
    else:
        st.caption(f"Another base URL than {own} is used only with the API key you type below: the key from "
                   "OPENAI_API_KEY goes to its own endpoint only.")
    key_input = st.text_input("API key (blank: the server's key, for its own endpoint only)", value="",
                              type="password", key="llm_key")
try:
    config = hosting.llm_config_for(base_url, key_input, settings, model=model or None)
except AccessError as exc:
    show_error(exc)
    st.markdown("Written summary from the same facts instead:  \n" + template_summary(facts).replace("\n", "  \n"))
    st.stop()

with st.expander("Structured facts sent with the panel"):
    st.json(facts)

cache = st.session_state.setdefault("explanations", {})
cache_key = (comparison.image_hash, tuple(sorted(comparison.model_paths.values())), label, config.model, config.base_url,
             config.isolated)

if not config.enabled:
    st.warning("No LLM configured. Set OPENAI_API_KEY (and OPENAI_BASE_URL for a local OpenAI-compatible server) "
               "before starting the app, or enter a key in the settings above. Meanwhile, a written summary "
               "from the same facts:")
    st.markdown(template_summary(facts).replace("\n", "  \n"))
    st.stop()

if cache_key in cache:
    text, seconds = cache[cache_key]
    st.markdown(text)
    st.caption(f"Cached explanation ({seconds:.1f} s when generated) · {config.model}")
elif st.button("Explain with the LLM", type="primary", key="explain_go"):
    t0 = time.perf_counter()
    try:
        text = st.write_stream(explain_stream(png_bytes(panel), facts, config))
        seconds = time.perf_counter() - t0
        cache[cache_key] = (text if isinstance(text, str) else "".join(map(str, text)), seconds)
        st.caption(f"Generated in {seconds:.1f} s · {config.model}")
    except LLMError as exc:
        show_error(exc)
        st.markdown("Written summary from the same facts instead:  \n" + template_summary(facts).replace("\n", "  \n"))
st.caption(DISCLAIMER)
