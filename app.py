"""Chest X-ray classifier workbench: navigation and the home page.

Run with `streamlit run app.py` (or ./run.sh). Pages are thin views over the `cxrcore` package.
They live in views/, not pages/: Streamlit treats a pages/ folder as the old automatic
multipage layout, and a first visit to a page's URL on a fresh server then skips this file
(no navigation, no page config). Streamlit's own advice for apps using st.navigation is to
name the folder something else.
"""
import streamlit as st

from ui.common import account_box, current_user

st.set_page_config(page_title="CXR workbench", page_icon=":material/pulmonology:", layout="wide")

READER_STUDY = st.Page("views/reader_study.py", title="Reader study", icon=":material/groups:", url_path="reader_study")
PAGES = [
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/dataset.py", title="Dataset", icon=":material/bar_chart:"),
    st.Page("views/training.py", title="Training", icon=":material/model_training:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/followup.py", title="Follow-up", icon=":material/history:"),
    st.Page("views/thresholds.py", title="Thresholds", icon=":material/tune:"),
    st.Page("views/evaluation.py", title="Evaluation", icon=":material/analytics:"),
    st.Page("views/monitoring.py", title="Monitoring", icon=":material/monitor_heart:"),
    st.Page("views/explain.py", title="Explain", icon=":material/chat:"),
    READER_STUDY,
]
token = st.query_params.get("token")
if token:
    # A reader's link (issue 21): the reading screen alone. No navigation, no account box, and any other page's
    # address with the token lands there too: a reader sees only their own cases and answers, nothing of the
    # models, datasets or other studies.
    page = st.navigation(PAGES, position="hidden")
    if page.url_path != READER_STUDY.url_path:
        st.switch_page(READER_STUDY, query_params={"token": token})
    page.run()
    st.stop()
page = st.navigation(PAGES)
st.sidebar.radio("Chart downloads (camera button)", ["png", "svg"], key="chart_format", horizontal=True,
                 format_func=str.upper)
account_box(current_user())  # who you are; Sign in / out when the operator configured a login (every page)
page.run()
