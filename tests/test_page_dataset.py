"""The Dataset page, run headless with Streamlit's AppTest.

The app uses ``st.navigation``, so the page file is run directly. AppTest resolves a relative
script path against the calling test file, so the path is absolute; the repository root is the
working directory and on ``sys.path`` (the page imports ``ui.common``).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "views" / "dataset.py"
SAMPLE = ROOT.parent / "shared" / "data" / "nih-sample"
NIH_FULL = "NIH ChestX-ray14 — full label table (torchxrayvision)"
CHEXPERT_FULL = "CheXpert — full train table (torchxrayvision)"
FOLDER = "A folder on this machine…"
TIMEOUT = 120


@pytest.fixture(scope="module")
def cxr_home(tmp_path_factory):
    """A fresh workspace for the whole module, with the built-in phantom data generated once."""
    home = tmp_path_factory.mktemp("cxr_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_HOME", str(home))
        mp.chdir(ROOT)
        mp.syspath_prepend(str(ROOT))
        from cxrcore.demo import app_data

        app_data()  # what ensure_app_data() would do on the first page run, without the progress bar
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
    labels = [b.label for b in app.download_button]
    for what in ("prevalence", "co-occurrence counts", "top combinations", "labels per image",
                 "age by label", "sex by label", "view by label"):
        assert f"Download {what} (CSV)" in labels
    assert "Download value counts (CSV)" not in labels  # NIH has no -1 / blank values
    assert [t.label for t in app.tabs] == ["Prevalence", "Co-occurrence", "Combinations", "Demographics"]
    # prevalence table: Infiltration is the most common NIH finding
    prev = app.dataframe[0].value
    assert prev.loc["Infiltration", "images_positive"] == 19_894
    assert prev.loc["No Finding", "images_positive"] == 60_361


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
    app.segmented_control(key="cooc_mode").set_value("P(B | A)").run()
    assert not app.exception
    assert "Download co-occurrence P(B given A) (CSV)" in [b.label for b in app.download_button]
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
    if not SAMPLE.exists():
        pytest.skip(f"NIH sample not found at {SAMPLE}")
    choose_folder(app, "../shared/data/nih-sample")  # relative to the repository root
    m = metrics(app)
    assert m["Images"] == "250"
    assert m["Patients"] == "172"
    assert m["Images on disk"] == "250"
    assert not app.error
    prev = app.dataframe[0].value
    assert prev.loc["Pneumonia", "images_positive"] == 141
    assert prev.loc["Hernia", "images_positive"] == 0
    assert str(SAMPLE.resolve()) in [s.value for s in app.subheader]


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
