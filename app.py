"""Chest X-ray classifier workbench: navigation and the home page.

Run with `streamlit run app.py`. Pages are thin views over the `cxrcore` package.
"""
import streamlit as st

st.set_page_config(page_title="CXR workbench", page_icon="🫁", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/dataset.py", title="Dataset", icon="📊"),
    st.Page("pages/training.py", title="Training", icon="🏋️"),
    st.Page("pages/compare.py", title="Compare", icon="🩻"),
    st.Page("pages/thresholds.py", title="Thresholds", icon="🎚️"),
    st.Page("pages/explain.py", title="Explain", icon="💬"),
]
st.navigation(PAGES).run()
