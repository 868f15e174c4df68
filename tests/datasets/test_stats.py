"""Tests for cxrcore.data.stats: exact answers on hand-built indexes, the real NIH sample and
the full CheXpert train table shipped with torchxrayvision."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcore.data import stats
from cxrcore.data.index import DatasetIndex
from cxrcore.data.readers import builtin_table, read_dataset

from conftest import NIH_SAMPLE as SAMPLE  # noqa: E402
NAN = np.nan


def make_index(rows: list[dict], labels: list[str], notes: list[str] | None = None, fmt: str = "nih") -> DatasetIndex:
    frame = pd.DataFrame(rows)
    for c in ("path", "sex", "age", "view"):
        if c not in frame:
            frame[c] = True if c == "frontal" else np.nan
    if "frontal" not in frame:
        frame["frontal"] = True
    if "study_id" not in frame:
        frame["study_id"] = frame["image_id"]
    for lab in labels:
        frame[lab] = frame[lab].astype(np.float32)
    return DatasetIndex(Path("/nowhere/hand"), fmt, frame, list(labels), notes=list(notes or []))


@pytest.fixture
def six() -> DatasetIndex:
    """6 images of 3 patients; labels A, B and No Finding."""
    L = ["A", "B", "No Finding"]
    raw = [  # image, patient, A, B, NF, sex, age, view, on disk
        ("i1", "p1", 1, 1, 0, "M", 5, "PA", True),
        ("i2", "p1", 1, 0, 0, "M", 15, "AP", True),
        ("i3", "p2", 0, 1, 0, "F", 95, "PA", True),
        ("i4", "p2", 0, 0, 1, "F", NAN, "LL", True),
        ("i5", "p3", 0, 0, 1, NAN, 130, NAN, False),  # implausible age -> unknown
        ("i6", "p3", 1, 1, 0, "M", 45, "PA", False),
    ]
    rows = [{"image_id": i, "patient_id": p, "study_id": f"{p}_{i}", "A": a, "B": b, "No Finding": nf,
             "sex": s, "age": age, "view": v, "frontal": v in ("PA", "AP"),
             "path": f"/img/{i}.png" if disk else None}
            for i, p, a, b, nf, s, age, v, disk in raw]
    return make_index(rows, L)


# --------------------------------------------------------------------------- hand-built, known answers

def test_prevalence_per_image_and_per_patient(six):
    prev = stats.prevalence(six)
    assert list(prev.index) == ["A", "B", "No Finding"]
    assert prev.index.name == "label"
    assert prev["images_positive"].tolist() == [3, 3, 2]
    assert prev["pct_images"].tolist() == pytest.approx([50.0, 50.0, 100 * 2 / 6])
    assert prev["patients_positive"].tolist() == [2, 3, 2]  # A: p1, p3; B: all three; NF: p2, p3
    assert prev["pct_patients"].tolist() == pytest.approx([100 * 2 / 3, 100.0, 100 * 2 / 3])
    # NIH-style data (only 0/1): no raw value-count columns
    assert not {"negative", "uncertain", "unmentioned"} & set(prev.columns)


def test_cooccurrence_counts_and_conditional(six):
    counts, cond = stats.cooccurrence(six)
    expected = pd.DataFrame([[3, 2, 0], [2, 3, 0], [0, 0, 2]], index=six.labels, columns=six.labels)
    pd.testing.assert_frame_equal(counts, expected, check_dtype=False, check_index_type=False,
                                  check_column_type=False)
    assert cond.loc["A", "B"] == pytest.approx(2 / 3)  # P(B | A)
    assert cond.loc["B", "A"] == pytest.approx(2 / 3)
    assert cond.loc["A", "No Finding"] == 0.0
    assert np.diag(cond.to_numpy()).tolist() == [1.0, 1.0, 1.0]


def test_conditional_is_asymmetric():
    rows = [{"image_id": f"i{k}", "patient_id": f"p{k}", "A": a, "B": b}
            for k, (a, b) in enumerate([(1, 1), (1, 0), (1, 0), (1, 0), (0, 1)])]
    counts, cond = stats.cooccurrence(make_index(rows, ["A", "B"]))
    assert counts.loc["A", "B"] == 1 and counts.loc["A", "A"] == 4 and counts.loc["B", "B"] == 2
    assert cond.loc["A", "B"] == pytest.approx(1 / 4)  # P(B | A): row A
    assert cond.loc["B", "A"] == pytest.approx(1 / 2)  # P(A | B): row B


def test_labels_per_image_excludes_no_finding(six):
    per = stats.labels_per_image(six)
    assert per["n_labels"].tolist() == [0, 1, 2]
    assert per["images"].tolist() == [2, 2, 2]  # i4, i5 | i2, i3 | i1, i6
    assert per["pct"].tolist() == pytest.approx([100 / 3] * 3)


def test_top_combinations(six):
    top = stats.top_combinations(six, k=10)
    assert top["combination"].tolist() == ["A | B", "No Finding", "A", "B"]
    assert top["images"].tolist() == [2, 2, 1, 1]
    assert top["n_labels"].tolist() == [2, 1, 1, 1]
    assert top["pct"].tolist() == pytest.approx([100 / 3, 100 / 3, 100 / 6, 100 / 6])
    assert stats.top_combinations(six, k=2)["combination"].tolist() == ["A | B", "No Finding"]


def test_summary(six):
    s = stats.summary(six)
    assert s["images"] == 6 and s["patients"] == 3 and s["studies"] == 6
    assert s["images_on_disk"] == 4
    assert s["frontal"] == 4 and s["lateral"] == 2
    assert s["views"] == {"PA": 3, "AP": 1, "LL": 1, "unknown": 1}
    assert s["sex"] == {"M": 3, "F": 2, "unknown": 1}
    assert s["age_mean"] == pytest.approx((5 + 15 + 95 + 45) / 4)  # 130 years is not a plausible age
    assert s["age_median"] == pytest.approx(30.0)
    assert s["format"] == "nih" and s["uncertainty"] is False
    assert any("2 of 6 images are not on disk" in n for n in s["notes"])
    assert any("implausible age" in n for n in s["notes"])


def test_demographics(six):
    demo = stats.demographics(six)
    age, sex, view = demo["age"], demo["sex"], demo["view"]
    assert list(age.index) == stats.AGE_BINS + ["unknown"]
    assert list(age.columns) == ["all", "A", "B", "No Finding"]
    assert age["all"].to_dict() == {**{b: 0 for b in stats.AGE_BINS}, "0–9": 1, "10–19": 1, "40–49": 1, "90+": 1,
                                    "unknown": 2}
    assert age["A"].to_dict() == {**{b: 0 for b in stats.AGE_BINS}, "0–9": 1, "10–19": 1, "40–49": 1, "unknown": 0}
    assert age["No Finding"]["unknown"] == 2
    assert sex["all"].to_dict() == {"M": 3, "F": 2, "unknown": 1}
    assert sex["A"].to_dict() == {"M": 3, "F": 0, "unknown": 0}
    assert view["all"].to_dict() == {"PA": 3, "AP": 1, "LL": 1, "unknown": 1}
    assert view["B"].to_dict() == {"PA": 3, "AP": 0, "LL": 0, "unknown": 0}
    for table in demo.values():
        assert table["all"].sum() == 6


def test_chexpert_style_value_counts():
    rows = [{"image_id": f"i{k}", "patient_id": f"p{k}", "X": x, "Y": y}
            for k, (x, y) in enumerate([(1, NAN), (0, NAN), (-1, -1), (NAN, 1)])]
    ix = make_index(rows, ["X", "Y"], fmt="chexpert")
    assert stats.has_uncertainty(ix)
    prev = stats.prevalence(ix)
    assert prev.loc["X", ["positive", "negative", "uncertain", "unmentioned"]].tolist() == [1, 1, 1, 1]
    assert prev.loc["Y", ["positive", "negative", "uncertain", "unmentioned"]].tolist() == [1, 0, 1, 2]
    assert prev["images_positive"].tolist() == [1, 1]  # -1 is not positive
    counts, _ = stats.cooccurrence(ix)
    assert counts.loc["X", "Y"] == 0  # image 2 is uncertain for both: no co-occurrence


# --------------------------------------------------------------------------- degenerate input

def test_no_positive_label_and_single_image():
    one = make_index([{"image_id": "x", "patient_id": "p", "A": 0, "B": 0}], ["A", "B"])
    prev = stats.prevalence(one)
    assert prev["images_positive"].tolist() == [0, 0] and prev["pct_patients"].tolist() == [0.0, 0.0]
    counts, cond = stats.cooccurrence(one)
    assert counts.to_numpy().sum() == 0 and cond.isna().all().all()
    assert stats.labels_per_image(one).to_dict("list") == {"n_labels": [0], "images": [1], "pct": [100.0]}
    top = stats.top_combinations(one)
    assert top["combination"].tolist() == [stats.NO_POSITIVE] and top["images"].tolist() == [1]
    s = stats.summary(one)
    assert s["images"] == 1 and s["patients"] == 1 and s["age_mean"] is None
    demo = stats.demographics(one)
    assert demo["age"].loc["unknown", "all"] == 1 and demo["sex"].loc["unknown", "all"] == 1


def test_empty_index_and_no_labels():
    frame = pd.DataFrame(columns=["image_id", "path", "patient_id", "study_id", "sex", "age", "view", "frontal", "A"])
    empty = DatasetIndex(Path("/nowhere/empty"), "nih", frame, ["A"])
    assert stats.summary(empty)["images"] == 0
    prev = stats.prevalence(empty)
    assert prev["images_positive"].tolist() == [0] and np.isnan(prev["pct_images"].iloc[0])
    assert stats.cooccurrence(empty)[0].shape == (1, 1)
    assert stats.labels_per_image(empty)["images"].tolist() == [0]
    assert len(stats.top_combinations(empty)) == 0
    assert stats.demographics(empty)["age"]["all"].sum() == 0

    nolabels = make_index([{"image_id": "x", "patient_id": "p"}], [])
    assert stats.prevalence(nolabels).empty
    assert stats.cooccurrence(nolabels)[0].shape == (0, 0)
    assert stats.labels_per_image(nolabels)["images"].tolist() == [1]
    assert stats.top_combinations(nolabels)["combination"].tolist() == [stats.NO_POSITIVE]
    assert list(stats.demographics(nolabels)["sex"].columns) == ["all"]
    assert stats.all_statistics(nolabels)["summary"]["labels"] == []


# --------------------------------------------------------------------------- the real NIH sample

@pytest.fixture(scope="module")
def sample() -> DatasetIndex:
    return read_dataset(SAMPLE)


def test_nih_sample_known_counts(sample):
    s = stats.summary(sample)
    assert s["images"] == 250 and s["patients"] == 172 and s["images_on_disk"] == 250
    prev = stats.prevalence(sample)["images_positive"]
    assert prev["Pneumonia"] == 141
    assert prev["No Finding"] == 109
    assert prev["Infiltration"] == 49
    assert prev["Edema"] == 29
    assert prev["Effusion"] == 28
    assert prev["Atelectasis"] == 24
    assert prev["Fibrosis"] == 0 and prev["Hernia"] == 0


def test_nih_sample_matches_naive_computation(sample):
    f, labels = sample.frame, sample.labels
    prev = stats.prevalence(sample)
    counts, cond = stats.cooccurrence(sample)
    for lab in labels:
        pos = f[lab] == 1
        assert prev.loc[lab, "patients_positive"] == f.loc[pos, "patient_id"].nunique()
    for a, b in combinations(labels, 2):
        both = int(((f[a] == 1) & (f[b] == 1)).sum())
        assert counts.loc[a, b] == counts.loc[b, a] == both
        if (f[a] == 1).any():
            assert cond.loc[a, b] == pytest.approx(both / (f[a] == 1).sum())
    assert np.diag(counts.to_numpy()).tolist() == prev["images_positive"].tolist()
    per = stats.labels_per_image(sample)
    assert per["images"].sum() == 250
    assert per.loc[per["n_labels"] == 0, "images"].item() == 109  # exactly the No Finding images
    top = stats.top_combinations(sample, k=1000)
    assert top["images"].sum() == 250
    assert top["images"].is_monotonic_decreasing
    demo = stats.demographics(sample)
    assert demo["age"]["Pneumonia"].sum() == 141 and demo["sex"]["all"].sum() == 250


# --------------------------------------------------------------------------- the full CheXpert train table

@pytest.fixture(scope="module")
def chexpert() -> DatasetIndex:
    return builtin_table("chexpert")


def test_chexpert_full_table(chexpert):
    out = {name: getattr(stats, name)(chexpert)
           for name in ("summary", "prevalence", "cooccurrence", "labels_per_image", "top_combinations", "demographics")}
    s, prev = out["summary"], out["prevalence"]
    assert s["images"] == 223_414 and s["images_on_disk"] == 0 and s["uncertainty"] is True
    assert prev.loc["Atelectasis", "uncertain"] > 0
    totals = prev[["positive", "negative", "uncertain", "unmentioned"]].sum(axis=1)
    assert (totals == 223_414).all()
    assert (prev["patients_positive"] <= prev["images_positive"]).all()
    counts, _ = out["cooccurrence"]
    assert (np.diag(counts.to_numpy()) == prev["images_positive"].to_numpy()).all()
    assert out["labels_per_image"]["images"].sum() == 223_414
    for table in out["demographics"].values():
        assert table["all"].sum() == 223_414


def test_chexpert_patient_prevalence_matches_groupby(chexpert):
    prev = stats.prevalence(chexpert)
    f = chexpert.frame
    naive = (f[chexpert.labels] == 1).groupby(f["patient_id"]).any().sum()
    assert prev["patients_positive"].tolist() == naive.tolist()


def test_combination_tail_counts_distinct_sets_and_the_rare_ones():
    import numpy as np
    import pandas as pd

    from cxrcore.data.index import DatasetIndex
    from cxrcore.data.stats import all_statistics, combination_tail

    rows = [[1, 0, 0]] * 6 + [[1, 1, 0]] * 3 + [[0, 1, 1]] + [[0, 0, 1]] + [[0, 0, 0]] * 4
    labels = ["A", "B", "C"]
    frame = pd.DataFrame(np.array(rows, dtype=float), columns=labels)
    frame["image_id"] = [f"i{k}" for k in range(len(rows))]
    frame["patient_id"] = [f"p{k}" for k in range(len(rows))]
    for c in ("path", "study_id", "sex", "age", "view", "frontal"):
        frame[c] = True if c == "frontal" else np.nan
    ix = DatasetIndex(Path("tail"), "csv", frame, labels)
    t = combination_tail(ix)
    assert t["distinct"] == 5 and t["images"] == 15
    assert t["tail"][0] == {"at_most": 1, "combinations": 2, "images": 2, "pct_images": pytest.approx(100 * 2 / 15)}
    assert t["tail"][1]["combinations"] == 4 and t["tail"][1]["images"] == 9     # 3 + 1 + 1 + 4
    assert all_statistics(ix)["combination_tail"] == t
