"""Cohort filters, per-label uncertainty policy mixes, stratified patient splits and the balance report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import NIH_SAMPLE
from cxrcore.data.filters import apply_filters
from cxrcore.data.index import DatasetIndex, parse_policy, patient_split
from cxrcore.data.readers import read_dataset
from cxrcore.data.splits import balance_report, stratified_patient_split
from cxrcore.errors import DataError
from cxrcore.labels import resolve_label_space


@pytest.fixture(scope="module")
def nih():
    return read_dataset(NIH_SAMPLE)


@pytest.fixture(scope="module")
def table():
    t = pd.read_csv(NIH_SAMPLE / "Data_Entry_2017_sample.csv")
    assert len(t) == 250 and t["Patient ID"].nunique() == 172
    return t


def test_each_filter_matches_pandas(nih, table):
    ids = lambda idx: set(idx.frame["image_id"])  # noqa: E731

    out, rep = apply_filters(nih, views=["PA"])
    want = table[table["View Position"] == "PA"]
    assert ids(out) == set(want["Image Index"]) and rep == {"views": 250 - len(want)}

    out, rep = apply_filters(nih, views="pa,AP")
    assert len(out) == 250 and rep == {"views": 0}

    out, rep = apply_filters(nih, frontal_only=True)
    assert len(out) == int(table["View Position"].isin(["PA", "AP"]).sum()) and rep == {"frontal_only": 0}

    out, rep = apply_filters(nih, first_n_studies=1)
    first = table.sort_values(["Patient ID", "Follow-up #"]).groupby("Patient ID").head(1)
    assert ids(out) == set(first["Image Index"]) and len(out) == 172 and rep == {"first_n_studies": 250 - 172}
    out, _ = apply_filters(nih, first_n_studies=2)
    two = table[table.groupby("Patient ID")["Follow-up #"].rank(method="dense") <= 2]
    assert ids(out) == set(two["Image Index"])

    out, rep = apply_filters(nih, age_min=40, age_max=60)
    n_min = int((table["Patient Age"] < 40).sum())
    band = table[(table["Patient Age"] >= 40) & (table["Patient Age"] <= 60)]
    assert ids(out) == set(band["Image Index"]) and rep == {"age_min": n_min, "age_max": 250 - n_min - len(band)}

    for sex in ("M", "F"):
        out, rep = apply_filters(nih, sex=sex)
        want = table[table["Patient Gender"] == sex]
        assert ids(out) == set(want["Image Index"]) and rep == {"sex": 250 - len(want)}

    out, rep = apply_filters(nih, sample_n=50, seed=3)
    again, _ = apply_filters(nih, sample_n=50, seed=3)
    other, _ = apply_filters(nih, sample_n=50, seed=4)
    assert len(out) == 50 and rep == {"sample_n": 200} and ids(out) == ids(again) and ids(out) != ids(other)

    # combined, in order; the report counts each filter's own removals
    out, rep = apply_filters(nih, views=["AP"], sex="F", age_min=50)
    want = table[(table["View Position"] == "AP") & (table["Patient Age"] >= 50) & (table["Patient Gender"] == "F")]
    assert ids(out) == set(want["Image Index"])
    assert list(rep) == ["views", "age_min", "sex"] and sum(rep.values()) == 250 - len(want)
    assert len(nih) == 250  # the input index is untouched


def test_empty_result_names_the_filter(nih):
    with pytest.raises(DataError, match="age_min"):
        apply_filters(nih, age_min=200)
    with pytest.raises(DataError, match="views"):
        apply_filters(nih, views=["LL"])
    with pytest.raises(DataError, match="sex"):
        apply_filters(nih, sex="X")
    with pytest.raises(DataError, match="age_max"):
        apply_filters(nih, age_min=60, age_max=59.5)


def _chexpert_like() -> DatasetIndex:
    nan = np.nan
    frame = pd.DataFrame({
        "image_id": [f"p{i}/study1/view1_frontal.jpg" for i in range(4)], "path": "", "patient_id": list("abcd"),
        "study_id": list("abcd"), "sex": "M", "age": 50.0, "view": "PA", "frontal": True,
        "Atelectasis": [1, -1, 0, nan], "Edema": [-1, -1, nan, 1], "Cardiomegaly": [-1, 0, 1, nan],
        "Pleural Effusion": [-1, nan, 0, 1]})
    return DatasetIndex(Path("/x"), "chexpert", frame, ["Atelectasis", "Edema", "Cardiomegaly", "Pleural Effusion"])


def test_policy_mixes():
    idx = _chexpert_like()
    space = ["Atelectasis", "Edema", "Cardiomegaly", "Effusion", "Hernia"]
    nan = np.nan
    plain = idx.targets(space, "zeros")
    np.testing.assert_array_equal(plain[:, 0], [1, 0, 0, 0])
    mix = idx.targets(space, "ones:Atelectasis,Edema;ignore:Effusion;zeros")
    np.testing.assert_array_equal(mix[:, 0], [1, 1, 0, 0])       # ones
    np.testing.assert_array_equal(mix[:, 1], [1, 1, 0, 1])       # ones
    np.testing.assert_array_equal(mix[:, 2], [0, 0, 1, 0])       # default zeros
    np.testing.assert_array_equal(mix[:, 3], [nan, 0, 0, 1])     # ignore, matched via synonym "Pleural Effusion"
    assert np.isnan(mix[:, 4]).all()                            # not in the dataset
    as_dict = idx.targets(space, {"Atelectasis": "ones", "edema": "ones", "Pleural Effusion": "ignore", "*": "zeros"})
    np.testing.assert_array_equal(as_dict, mix)
    # default last: the rest follow it
    rest = idx.targets(space, "zeros:Edema;ones")
    np.testing.assert_array_equal(rest[:, 1], [0, 0, 0, 1])
    np.testing.assert_array_equal(rest[:, 2], [1, 0, 1, 0])
    np.testing.assert_array_equal(idx.targets(space, "ones"), idx.targets(space, {"*": "ones"}))
    assert parse_policy("ones:Edema") == ({"edema": "ones"}, "zeros")
    for bad in ("maybe", "ones:Edema;zeros;ignore", "zeros;ones:Edema", "ones:", "ones:Edema;zeros:Edema;ignore", "",
                {"Edema": "sometimes"}, 3):
        with pytest.raises(DataError, match="ones:Atelectasis,Edema;zeros"):
            idx.targets(space, bad)


def test_stratified_split_is_patient_level_deterministic_and_better_balanced(nih):
    labels = resolve_label_space("nih14")
    t = nih.targets(labels)
    pid = nih.frame["patient_id"]
    gaps_h, gaps_s = [], []
    for seed in range(3):
        s = stratified_patient_split(nih.frame, t, seed, 0.1, 0.2)
        np.testing.assert_array_equal(s, stratified_patient_split(nih.frame, t, seed, 0.1, 0.2))
        assert (pd.Series(s).groupby(pid.values).nunique() == 1).all()   # one split per patient
        counts = pd.Series(s).value_counts()
        assert abs(counts["test"] - 50) <= 5 and abs(counts["val"] - 25) <= 5
        gaps_s.append(balance_report(t, s, labels)["max_gap"].max())
        gaps_h.append(balance_report(t, patient_split(pid, seed, 0.1, 0.2), labels)["max_gap"].max())
    assert all(g_s < g_h for g_s, g_h in zip(gaps_s, gaps_h)), (gaps_s, gaps_h)
    a, b = (stratified_patient_split(nih.frame, t, k, 0.1, 0.2) for k in (0, 1))
    assert (a != b).any()
    with pytest.raises(DataError):
        stratified_patient_split(nih.frame, t, 0, 0.5, 0.5)


def test_balance_report_flags_gaps():
    labels = ["A", "B"]
    split = np.array(["train"] * 100 + ["val"] * 100 + ["unreadable"] * 5, dtype=object)
    t = np.zeros((205, 2), dtype=np.float32)
    t[:10, 0] = 1            # A: 10% train
    t[100:113, 0] = 1        # A: 13% val -> 3 points: warn
    t[:10, 1] = 1            # B: 10% train
    t[100:111, 1] = 1        # B: 11% val -> 1 point
    t[200:, :] = 1           # unreadable rows are left out
    rep = balance_report(t, split, labels).set_index("label")
    assert rep.loc["A", "warn"] and not rep.loc["B", "warn"]
    assert rep.loc["A", "max_gap"] == pytest.approx(0.03) and rep.loc["A", "train"] == pytest.approx(0.10)
    assert np.isnan(rep.loc["A", "test"]) and rep.loc["A", "val_pos"] == 13


def test_cli_train_with_filters_writes_splits_and_balance(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    from cxrcore.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--data", str(NIH_SAMPLE), "--labels", "nih14", "--epochs", "1", "--image-size", "32",
               "--batch-size", "16", "--views", "PA", "--first-n-studies", "1", "--age-min", "20",
               "--split-method", "stratified", "--policy", "ones:Edema;zeros", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    splits = pd.read_csv(out / "splits.csv")
    table = pd.read_csv(NIH_SAMPLE / "Data_Entry_2017_sample.csv")
    pa = table[table["View Position"] == "PA"]
    pa_first = pa[pa.groupby("Patient ID")["Follow-up #"].rank(method="dense") == 1]
    want = pa_first[pa_first["Patient Age"] >= 20]
    assert set(splits["image_id"]) == set(want["Image Index"])
    assert set(splits["split"]) <= {"train", "val", "test"} and {"train", "val"} <= set(splits["split"])
    balance = pd.read_csv(out / "balance.csv")
    assert len(balance) == 14 and {"label", "train", "val", "test", "max_gap", "warn"} <= set(balance.columns)
    card = json.loads((out / "checkpoint" / "card.json").read_text())
    data = card["data"]
    assert data["split_method"] == "stratified" and data["n_images"] == len(want)
    assert data["filters"]["views"] == int((table["View Position"] != "PA").sum())
    assert isinstance(data["balance_warnings"], list)
    assert len(data["balance_warnings"]) == int(balance["warn"].sum())
    assert card["training"]["config"]["policy"] == "ones:Edema;zeros"


def test_cli_stats_filters_and_config_checks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    from cxrcore.cli import main
    from cxrcore.errors import ConfigError
    from cxrcore.jobs.local import check_config

    table = pd.read_csv(NIH_SAMPLE / "Data_Entry_2017_sample.csv")
    assert main(["stats", str(NIH_SAMPLE), "--views", "PA", "--sex", "F", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = table[(table["View Position"] == "PA") & (table["Patient Gender"] == "F")]
    assert out["filters"]["after"] == len(want) == out["summary"]["images"]
    assert out["filters"]["removed"]["views"] == int((table["View Position"] != "PA").sum())
    assert main(["stats", str(NIH_SAMPLE), "--first-n-studies", "1"]) == 0
    assert "first_n_studies removed 78" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--data", str(NIH_SAMPLE), "--policy", "ones:Edema;maybe"])

    cfg = check_config({"data": str(NIH_SAMPLE), "policy": {"Edema": "ones", "*": "ignore"}, "views": ["PA"],
                        "age_min": 30, "sex": "F", "split_method": "stratified"})
    assert cfg["split_method"] == "stratified" and cfg["views"] == ["PA"]
    for bad in ({"split_method": "random"}, {"policy": "ones:NotALabel;zeros"}, {"sex": "X"}, {"views": "PA"},
                {"age_min": "30"}):
        with pytest.raises(ConfigError):
            check_config({"data": str(NIH_SAMPLE), **bad})


def test_evaluation_uses_the_runs_stratified_split(tmp_path, monkeypatch):
    """A stratified split depends on the whole training set: evaluation reads it from splits.csv."""
    import pandas as pd

    from cxrcore.eval.predictions import model_split_rows
    from cxrcore.predictor import Predictor
    from cxrcore.train.trainer import TrainConfig, train

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    cfg = TrainConfig(data=str(NIH_SAMPLE), labels="nih14", epochs=1, batch_size=16, image_size=48, max_images=80,
                      workers=1, split_method="stratified")
    train(cfg, tmp_path / "run")
    splits = pd.read_csv(tmp_path / "run" / "splits.csv", dtype=str)
    p = Predictor(tmp_path / "run" / "checkpoint")
    index = read_dataset(NIH_SAMPLE)
    rows = model_split_rows(p, index, "test")
    assert set(index.frame["image_id"].iloc[rows]) == set(splits.loc[splits["split"] == "test", "image_id"])
    (tmp_path / "run" / "splits.csv").unlink()
    with pytest.raises(DataError, match="stratified split"):
        model_split_rows(p, index, "test")
