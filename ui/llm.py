"""The LLM's settings and the streamed answer, shared by the pages that ask an LLM (Explain, Follow-up).

Only view code: the request, its checks and the answer's validation are in ``cxrcore.explain.review``; which
endpoint a visitor may use is the operator's policy (``cxrcore.hosting``)."""
from __future__ import annotations

import streamlit as st

from cxrcore import hosting
from cxrcore.errors import AccessError, LLMError
from cxrcore.explain import budget
from cxrcore.explain.review import with_heartbeat
from ui.common import current_user, md_text, show_error


def llm_settings(settings, prefix: str = "llm"):
    """The settings expander (model, base URL, key, time limit; widget keys ``{prefix}_model`` ...) and the
    :class:`cxrcore.explain.llm.LLMConfig` they give, with the key typed (None when the operator's policy refuses
    the base URL: the error is shown). Returns (config or None, key typed)."""
    from cxrcore.explain.llm import LLMConfig

    with st.expander("LLM settings (OpenAI or any OpenAI-compatible server)"):
        env = LLMConfig.from_env()
        own = env.base_url or hosting.OPENAI_BASE_URL
        st.caption("Defaults come from OPENAI_API_KEY, OPENAI_BASE_URL and CXR_LLM_MODEL. "
                   "A key is used for the request only; it is never shown, logged or saved.")
        model = st.text_input("Model", value=env.model, key=f"{prefix}_model")
        editable = hosting.llm_base_url_editable(settings)
        base_url = st.text_input("Base URL (blank: this server's endpoint)", value=env.base_url or "",
                                 key=f"{prefix}_base_url", disabled=not editable)
        if not editable:
            base_url = ""
            st.caption(f"This server sends explanations only to its own endpoint ({own}). The operator can allow "
                       f"other OpenAI-compatible servers with {hosting.ENV_LLM_ALLOWED}.")
        elif settings.llm_allowed_set or settings.hosted:
            st.caption(f"Besides this server's endpoint ({own}), allowed: {', '.join(settings.llm_allowed)}. Another "
                       "base URL is used only with the API key you type below: the server's key goes to its own "
                       "endpoint only.")
        else:
            st.caption(f"Another base URL than {own} is used only with the API key you type below: the key from "
                       "OPENAI_API_KEY goes to its own endpoint only.")
        key_input = st.text_input("API key (blank: the server's key, for its own endpoint only)", value="",
                                  type="password", key=f"{prefix}_key")
        timeout = st.number_input("Give up after (seconds)", min_value=1, max_value=600, value=int(env.timeout),
                                  step=5, key=f"{prefix}_timeout",
                                  help="The whole answer must arrive within this time; a server that stops sending "
                                       "is abandoned after it too.")
    try:
        config = hosting.llm_config_for(base_url, key_input, settings, model=model or None)
    except AccessError as exc:
        show_error(exc)
        return None, key_input
    config.timeout = float(timeout)
    return config, key_input


def stream_answer(make_events, config, key_input: str, settings, text_col, side_col):
    """Ask through ``make_events(stop)`` (:func:`cxrcore.explain.review.review_events` with its arguments) and show
    the answer as it comes: the explanation so far in ``text_col``, the waiting and a fallback in ``side_col``.
    Counts a request with the server's own key against the visitor's hour (``CXR_LLM_REQUESTS_PER_HOUR``).
    Returns the validated Outcome, or None after showing the error (no key, unreachable, the hour used up)."""
    progress = side_col.empty()
    text_box = text_col.empty()
    where = config.base_url or "the OpenAI API"
    outcome = None
    try:
        if not (key_input or "").strip():  # the server's own key: counted per visitor (CXR_LLM_REQUESTS_PER_HOUR)
            left = budget.take(budget.pool_of(current_user(settings)), settings.llm_hour_cap)
            if left >= 0:
                side_col.caption(f"{left} more request{'s' if left != 1 else ''} with the server's key this hour.")
        progress.caption(f"Asking {config.model} at {where}…")
        for event in with_heartbeat(make_events):
            if event.kind == "waiting":
                progress.caption(f"Waiting for {config.model} at {where}: {event.elapsed:.0f} s "
                                 f"(gives up after {config.timeout:.0f} s)…")
            elif event.kind == "fallback":
                side_col.info(md_text(event.text))
            elif event.kind == "text":
                text_box.markdown(md_text(event.text, single_line=False) + " ▌")  # as text, not Markdown
                progress.caption(f"Receiving the answer ({event.elapsed:.0f} s); it is validated when complete…")
            elif event.kind == "done":
                outcome = event.outcome
    except (LLMError, AccessError) as exc:  # AccessError: the hour's requests with the server's key are used up
        progress.empty()
        text_box.empty()
        show_error(exc)
        return None
    progress.empty()
    text_box.empty()
    return outcome
