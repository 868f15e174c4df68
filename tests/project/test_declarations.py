"""One declaration per concept: a new sweep option (SweepSpec), a new Slurm option (SLURM_OPTIONS) and a new
split method (SPLIT_METHODS) each appear in the CLI and on the pages with no other edit. Each test adds one
entry to the declaration (the declaration is what is under test) and looks at both surfaces."""
from __future__ import annotations

from dataclasses import make_dataclass

import pytest
from streamlit.testing.v1 import AppTest

from conftest import NIH_SAMPLE, REPO
from cxrcore import launch
from cxrcore.cli import build_parser, main
from cxrcore.cli.common import slurm_values
from cxrcore.data import splits
from cxrcore.jobs import sweep
from cxrcore.jobs.config import SLURM_OPTIONS, SlurmOption, check_slurm_options
from cxrcore.train.config import option


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def _training_page() -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.switch_page("views/training.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def new_sweep_option(monkeypatch):
    """SweepSpec plus one option, declared the way every sweep option is."""
    spec = make_dataclass("SweepSpec", [("max_failures", int, sweep.spec_field(
        3, "Failures allowed", "failed trials before the sweep stops starting new ones", "--max-failures",
        "max_failures", min=0, max=50))], bases=(sweep.SweepSpec,))
    monkeypatch.setattr(sweep, "SweepSpec", spec)
    return spec


def test_a_new_sweep_option_is_a_cxr_sweep_flag_with_its_bounds_checked(new_sweep_option, capsys):
    text = _help(capsys, "sweep")
    assert "--max-failures MAX_FAILURES" in text and "failed trials before the sweep stops" in text
    a = build_parser().parse_args(["sweep", "start", "--max-failures", "7"])
    assert a.sweep_max_failures == 7 and a.sweep_n_trials == 8  # the declared defaults for flags not given
    assert main(["sweep", "start", "--data", str(NIH_SAMPLE), "--space", "lr = 0.001, 0.01",
                 "--max-failures", "51"]) == 2
    assert "max_failures must be at most 50" in capsys.readouterr().err
    spec = launch.sweep_spec({"max_failures": 5}, name="s", base={}, space={})
    assert isinstance(spec, new_sweep_option) and spec.max_failures == 5 and spec.to_dict()["max_failures"] == 5


def test_a_new_sweep_option_has_a_widget_on_the_training_page(new_sweep_option, app_env):
    at = _training_page()
    widget = at.number_input(key="sweep_max_failures")
    assert (widget.label, widget.value, widget.min, widget.max) == ("Failures allowed", 3, 0, 50)
    assert widget.help == "failed trials before the sweep stops starting new ones"
    trials = at.number_input(key="sweep_trials")  # the declared default, as on the CLI (the page said 6)
    assert trials.value == sweep.SweepSpec.__dataclass_fields__["n_trials"].default == 8
    assert at.selectbox(key="sweep_sampler").options == ["grid", "random", "TPE (Optuna)"]
    assert at.selectbox(key="sweep_sampler").value == "tpe"


@pytest.fixture
def new_slurm_option(monkeypatch):
    o = SlurmOption("licenses", (str,), "licenses the job needs", "license names with counts, e.g. matlab:2",
                    pattern=r"[A-Za-z0-9_:@,-]+", sbatch="--licenses", example="matlab:2")
    monkeypatch.setitem(SLURM_OPTIONS, o.name, o)
    return o


def test_a_new_slurm_option_is_a_flag_of_cxr_train_and_cxr_sweep(new_slurm_option, capsys):
    for command in ("train", "sweep"):
        text = _help(capsys, command)
        assert "--licenses LICENSES" in text and "slurm: licenses the job needs: license names" in text
    a = build_parser().parse_args(["train", "--backend", "slurm", "--licenses", "matlab:2", "--partition", "gpu"])
    assert slurm_values(a) == {"partition": "gpu", "licenses": "matlab:2"}
    check_slurm_options(slurm_values(a))  # its form is checked where every option's is


def test_a_new_slurm_option_has_a_field_on_the_training_page(new_slurm_option, app_env):
    at = _training_page()
    field = at.text_input(key="tf_slurm_licenses")
    assert field.label == "Slurm licenses the job needs" and field.placeholder == "e.g. matlab:2"
    assert field.help == new_slurm_option.help
    values = {**launch.form_defaults(), "slurm_licenses": " matlab:2 ", "backend": "slurm"}
    assert launch.slurm_from_form(values) == {"licenses": "matlab:2"}
    assert launch.form_from_config({"slurm": {"licenses": "matlab:2"}})[0]["slurm_licenses"] == "matlab:2"


@pytest.fixture
def new_split_method(monkeypatch):
    monkeypatch.setitem(splits.SPLIT_METHODS, "site", "by hospital site")
    return "site"


def test_a_new_split_method_is_a_choice_of_cxr_train(new_split_method, capsys):
    assert "{hash,stratified,official,site}" in _help(capsys, "train")
    assert build_parser().parse_args(["train", "--split-method", "site"]).split_method == "site"
    assert "site" in option("split_method").choices  # TrainConfig's validation reads the same mapping
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--split-method", "by-ward"])


def test_a_new_split_method_is_offered_on_the_training_and_dataset_pages(new_split_method, app_env):
    at = _training_page()
    box = at.selectbox(key="tf_split_method")
    assert box.options == ["hash by patient", "stratified by label", "official test split", "by hospital site"]
    page = AppTest.from_file(str(REPO / "views" / "dataset.py"), default_timeout=120)
    page.run()
    page.selectbox(key="dataset_source").set_value("A folder on this machine…").run()
    page.text_input(key="dataset_folder").input(str(NIH_SAMPLE)).run()
    page.session_state["dataset_section"] = "Split balance"
    page.run()
    assert not page.exception, [e.value for e in page.exception]
    assert page.segmented_control(key="bal_method").options == ["hash", "stratified", "official", "site"]
    val = page.number_input(key="bal_val")  # one set of bounds: TrainConfig's are the Dataset page's
    assert (val.min, val.max) == (option("val_fraction").min, option("val_fraction").max)
