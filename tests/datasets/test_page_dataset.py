"""The Dataset page, run headless with Streamlit's AppTest.

The app uses ``st.navigation``, so the page file is run directly. AppTest resolves a relative
script path against the calling test file, so the path is absolute; the repository root is the
working directory and on ``sys.path`` (the page imports ``ui.common``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import NIH_SAMPLE
from cxrcore.data.index import patient_split
from cxrcore.data.readers import read_dataset
from cxrcore.data.splits import SPLITS, balance_report, balance_warnings, stratified_patient_split
from cxrcore.mdtext import md_text

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "views" / "dataset.py"
SAMPLE = NIH_SAMPLE
NIH_FULL = "NIH ChestX-ray14 — full label table (torchxrayvision)"
CHEXPERT_FULL = "CheXpert — full train table (torchxrayvision)"
FOLDER = "A folder on this machine…"
SECTIONS = ["Prevalence", "Co-occurrence", "Combinations", "Demographics", "Split balance"]
TIMEOUT = 120


@pytest.fixture(scope="module")
def cxr_home(tmp_path_factory, app_home):
    """A fresh workspace for the whole module holding the session's built-in phantom data (hard links to the
    phantom generated once per run, as ensure_app_data() would find it on the first page run)."""
    from conftest import fresh_workspace

    home = fresh_workspace(app_home, tmp_path_factory.mktemp("cxr_home"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_HOME", str(home))
        mp.chdir(ROOT)
        mp.syspath_prepend(str(ROOT))
        yield home


@pytest.fixture
def app(cxr_home) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def choose(at: AppTest, option: str) -> AppTest:
    at.selectbox(key="dataset_source").set_value(option).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def choose_folder(at: AppTest, path: str) -> AppTest:
    choose(at, FOLDER)
    at.text_input(key="dataset_folder").input(path).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_section(at: AppTest, name: str) -> AppTest:
    """Open one of the page's lazy tabs (what a click on the tab does: set its state and rerun)."""
    at.session_state["dataset_section"] = name
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["dataset_section"] == name
    return at


def downloads(at: AppTest) -> list[str]:
    return [b.label for b in at.download_button]


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The one dataframe on the page that has ``column``."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.dataframe]
    return found[0]


def test_sources_offered(app):
    options = app.selectbox(key="dataset_source").options
    assert options[:2] == [NIH_FULL, CHEXPERT_FULL]
    assert options[-1] == FOLDER
    assert "phantom nih (built-in)" in options and "phantom chexpert (built-in)" in options


def test_nih_full_table(app):
    assert app.selectbox(key="dataset_source").value == NIH_FULL  # the default
    m = metrics(app)
    assert m["Images"] == "112,120"
    assert m["Patients"] == "30,805"
    assert m["Images on disk"] == "0"
    assert not app.error
    assert [t.label for t in app.tabs] == SECTIONS  # no Gallery: a label table without images
    # prevalence table: Infiltration is the most common NIH finding
    prev = app.dataframe[0].value
    assert prev.loc["Infiltration", "images_positive"] == 19_894
    assert prev.loc["No Finding", "images_positive"] == 60_361
    # Lazy tabs: only the open section runs, so only its downloads are on the page; every table
    # keeps its CSV download in its own section.
    assert downloads(app) == ["Download prevalence (CSV)"]  # NIH has no -1 / blank values: no value counts
    want = {"Co-occurrence": ["co-occurrence counts"], "Combinations": ["top combinations", "labels per image"],
            "Demographics": ["age by label", "sex by label", "view by label"]}
    for section, whats in want.items():
        open_section(app, section)
        assert downloads(app) == [f"Download {w} (CSV)" for w in whats]
        assert metrics(app)["Images"] == "112,120"


def test_chexpert_full_table(app):
    choose(app, CHEXPERT_FULL)
    m = metrics(app)
    assert m["Images"] == "223,414"
    assert m["Patients"] == "64,540"
    assert not app.error
    assert "Download value counts (CSV)" in [b.label for b in app.download_button]
    prev = app.dataframe[0].value
    assert prev.loc["Atelectasis", "uncertain"] > 0
    # the toggles re-render without exceptions
    open_section(app, "Co-occurrence")
    app.segmented_control(key="cooc_mode").set_value("P(B | A)").run()
    assert not app.exception
    assert "Download co-occurrence P(B given A) (CSV)" in [b.label for b in app.download_button]
    open_section(app, "Demographics")
    assert app.toggle(key="demo_pct").value is False
    app.selectbox(key="demo_label").set_value("Pleural Effusion").run()
    assert not app.exception
    assert app.toggle(key="demo_pct").value is True  # a label vs all images: shown in percent
    assert metrics(app)["Images"] == "223,414"
    # a label the next source lacks must not break the page
    choose(app, NIH_FULL)
    assert metrics(app)["Images"] == "112,120"
    assert app.selectbox(key="demo_label").value in app.selectbox(key="demo_label").options


def test_folder_nih_sample(app):
    choose_folder(app, "tests/data/nih-sample")  # relative to the repository root
    m = metrics(app)
    assert m["Images"] == "250"
    assert m["Patients"] == "172"
    assert m["Images on disk"] == "250"
    assert not app.error
    prev = app.dataframe[0].value
    assert prev.loc["Pneumonia", "images_positive"] == 141
    assert prev.loc["Hernia", "images_positive"] == 0
    assert md_text(SAMPLE.resolve()) in [s.value for s in app.subheader]  # a path: shown escaped


def test_missing_folder_shows_error(app, tmp_path):
    choose_folder(app, str(tmp_path / "does-not-exist"))
    assert len(app.error) == 1
    assert "does not exist" in app.error[0].value
    assert not app.metric and not app.download_button
    # the page keeps working: another source afterwards
    choose(app, NIH_FULL)
    assert not app.error and metrics(app)["Images"] == "112,120"


def test_folder_with_a_bad_table_shows_error(app, tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text("foo,bar\n1,2\n")
    choose_folder(app, str(tmp_path))
    assert len(app.error) == 1 and "lacks the column" in app.error[0].value
    chex = tmp_path / "chex"
    chex.mkdir()
    (chex / "train.csv").write_text("Sex,Age\nMale,40\n")
    app.text_input(key="dataset_folder").input(str(chex)).run()
    assert not app.exception
    assert len(app.error) == 1 and "Path column" in app.error[0].value
    empty = tmp_path / "empty"
    empty.mkdir()
    app.text_input(key="dataset_folder").input(str(empty)).run()
    assert not app.exception
    assert len(app.error) == 1 and "No label table" in app.error[0].value


def test_phantom_choice(app):
    from cxrcore.demo import APP_DATA_N

    choose(app, "phantom chexpert (built-in)")
    m = metrics(app)
    assert m["Images"] == f"{APP_DATA_N:,}"
    assert m["Images on disk"] == f"{APP_DATA_N:,}"
    assert not app.error
    choose(app, "phantom nih (built-in)")
    assert metrics(app)["Images"] == f"{APP_DATA_N:,}"


# --------------------------------------------------------------------------- sections and split balance

def test_every_section_renders(app):
    """Each section of a phantom (which has images, so also the Gallery) opens without an exception and
    draws its own content only."""
    choose(app, "phantom chexpert (built-in)")
    assert [t.label for t in app.tabs] == SECTIONS + ["Gallery", "Label errors", "Embedding map"]
    expect = {"Prevalence": "Download value counts (CSV)", "Co-occurrence": "Download co-occurrence counts (CSV)",
              "Combinations": "Download top combinations (CSV)", "Demographics": "Download view by label (CSV)",
              "Split balance": "Download split balance (CSV)"}
    for section in SECTIONS + ["Gallery", "Label errors", "Embedding map"]:   # no model runs before a click
        open_section(app, section)
        assert not app.error
        if section in expect:
            assert expect[section] in downloads(app)
        others = {v for k, v in expect.items() if k != section}
        assert not others & set(downloads(app)), section  # the closed sections did not run
    open_section(app, "Gallery")
    assert app.selectbox(key="gallery_label").value is not None and len(app.get("image")) > 0
    # The open Gallery does not exist for a label table: the page falls back to the first section.
    choose(app, NIH_FULL)
    assert app.session_state["dataset_section"] == "Prevalence"
    assert [t.label for t in app.tabs] == SECTIONS and downloads(app) == ["Download prevalence (CSV)"]


def _expected(index, method: str, seed: int = 0, val: float = 0.1, test: float = 0.2, labels=None,
              policy: str = "zeros"):
    labels = list(index.labels) if labels is None else labels
    targets = index.targets(labels, policy)
    if method == "hash":
        split = patient_split(index.frame["patient_id"], seed, val, test)
    else:
        split = stratified_patient_split(index.frame, targets, seed, val, test)
    return split, balance_report(targets, split, labels)


def _check_balance(at: AppTest, index, split, report) -> None:
    shown = frame_with(at, "max_gap")
    assert list(shown.index) == list(report["label"])
    for s in SPLITS:  # the page shows percent; the same rates balance_report computes
        np.testing.assert_allclose(shown[s].to_numpy(float), 100 * report[s].to_numpy(float), rtol=0, atol=1e-9)
        assert shown[f"{s}_pos"].tolist() == report[f"{s}_pos"].tolist()
    np.testing.assert_allclose(shown["max_gap"].to_numpy(float), 100 * report["max_gap"].to_numpy(float), atol=1e-9)
    assert shown["warn"].tolist() == report["warn"].tolist()
    sizes = frame_with(at, "patients")
    pid = index.frame["patient_id"].to_numpy()
    assert sizes["images"].tolist() == [int((split == s).sum()) for s in SPLITS]
    assert sizes["patients"].tolist() == [len(set(pid[split == s])) for s in SPLITS]
    want = balance_warnings(report)
    if want:
        assert len(at.warning) == 1
        text = at.warning[0].value
        assert f"{len(want)} of {len(report)} labels" in text
        assert all(md_text(w) in text for w in want)  # shown escaped: a label is the dataset's own text
    else:
        assert not at.warning and len(at.success) == 1
    assert {"Download split balance (CSV)", "Download split sizes (CSV)"} <= set(downloads(at))


def test_split_balance_nih_sample(app):
    """The real NIH sample (250 images, 172 patients): the page's per-split rates, counts and warnings
    are those of balance_report / balance_warnings on the same split, for hash and stratified splits."""
    index = read_dataset(SAMPLE)
    choose_folder(app, str(SAMPLE))
    open_section(app, "Split balance")
    assert app.segmented_control(key="bal_method").value == "hash"
    assert "bal_policy" not in [b.key for b in app.selectbox]  # NIH has no -1 / blank: no policy to choose
    split, hash_report = _expected(index, "hash")
    _check_balance(app, index, split, hash_report)
    hash_warn = balance_warnings(hash_report)
    assert len(hash_warn) >= 5  # 172 patients hashed into 70/10/20: rare labels come out uneven

    app.segmented_control(key="bal_method").set_value("stratified").run()
    assert not app.exception
    split, strat_report = _expected(index, "stratified")
    _check_balance(app, index, split, strat_report)
    assert len(balance_warnings(strat_report)) < len(hash_warn)  # stratifying evens the rates out
    assert strat_report["max_gap"].mean() < hash_report["max_gap"].mean()

    # other settings: seed, fractions and a named label space
    app.number_input(key="bal_seed").set_value(3).run()
    app.number_input(key="bal_test").set_value(0.3).run()
    app.selectbox(key="bal_space").set_value("chexpert5").run()
    assert not app.exception
    labels = index.shared_labels(["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"])
    assert len(labels) == 5  # Effusion is NIH's spelling of Pleural Effusion
    split, report = _expected(index, "stratified", seed=3, test=0.3, labels=labels)
    _check_balance(app, index, split, report)

    app.segmented_control(key="bal_method").set_value("hash").run()
    split, report = _expected(index, "hash", seed=3, test=0.3, labels=labels)
    _check_balance(app, index, split, report)

    # fractions that leave too little for training (the bounds TrainConfig has: cxrcore.data.splits):
    # a message, no exception, no stale table
    app.number_input(key="bal_test").set_value(0.45).run()
    app.number_input(key="bal_val").set_value(0.5).run()
    assert not app.exception
    assert any("leaves too little for training" in e.value for e in app.error)
    assert not [d for d in app.dataframe if "max_gap" in d.value.columns]


def test_split_balance_phantom_policy(app):
    """CheXpert-style data offers the uncertainty policy; the rates follow it (ignore leaves -1 out)."""
    from cxrcore.demo import app_data

    choose(app, "phantom chexpert (built-in)")
    open_section(app, "Split balance")
    index = read_dataset(app_data()["chexpert"])
    assert app.selectbox(key="bal_policy").value == "zeros"
    split, report = _expected(index, "hash")
    _check_balance(app, index, split, report)
    for policy in ("ones", "ignore"):
        app.selectbox(key="bal_policy").set_value(policy).run()
        assert not app.exception
        split, other = _expected(index, "hash", policy=policy)
        _check_balance(app, index, split, other)
    assert not np.allclose(other["train"], report["train"])  # -1 values exist, so the rates differ


def test_through_app_navigation(cxr_home):
    """The page as the app runs it: app.py (st.navigation, the sidebar's chart format), then the page."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("views/dataset.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert metrics(at)["Images"] == "112,120" and [t.label for t in at.tabs] == SECTIONS
    at.radio(key="chart_format").set_value("svg")
    open_section(at, "Split balance")
    assert len(at.success) == 1 and "Download split balance (CSV)" in downloads(at)  # full NIH: no gap > 2 points
