"""Labels, readers and splits on the real NIH sample, the shipped torchxrayvision tables and phantoms."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from cxrcore.data.index import patient_split
from cxrcore.data.phantom import generate
from cxrcore.data.readers import builtin_table, read_dataset
from cxrcore.errors import ConfigError, DataError
from cxrcore.labels import CHEXPERT14, NIH14, canonical, match_labels, resolve_label_space

from conftest import NIH_SAMPLE


def test_synonyms_match_across_label_spaces():
    assert canonical("Effusion") == canonical("Pleural Effusion")
    assert canonical("Pleural_Thickening") == canonical("pleural thickening")
    assert canonical("Infiltrate") == canonical("Infiltration")
    shared = {CHEXPERT14[j]: NIH14[i] for j, i in match_labels(NIH14, CHEXPERT14).items()}
    assert shared == {"Cardiomegaly": "Cardiomegaly", "Edema": "Edema", "Consolidation": "Consolidation",
                      "Pneumonia": "Pneumonia", "Atelectasis": "Atelectasis", "Pneumothorax": "Pneumothorax",
                      "Pleural Effusion": "Effusion"}


def test_label_space_errors():
    assert resolve_label_space("chexpert5") == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    assert resolve_label_space("A,B") == ["A", "B"]
    with pytest.raises(ConfigError, match="Unknown label space"):
        resolve_label_space("nih15")
    with pytest.raises(ConfigError, match="twice"):
        resolve_label_space("Effusion,Pleural Effusion")


def test_nih_sample_read_exactly():
    ix = read_dataset(NIH_SAMPLE)
    assert ix.format == "nih" and len(ix) == 250 and ix.frame["patient_id"].nunique() == 172
    counts = ix.frame[ix.labels].sum()
    assert counts["Pneumonia"] == 141 and counts["No Finding"] == 109 and counts["Infiltration"] == 49
    assert counts["Edema"] == 29 and counts["Effusion"] == 28 and counts["Atelectasis"] == 24
    assert counts["Fibrosis"] == 0 and counts["Hernia"] == 0
    assert ix.frame["path"].map(lambda p: p.endswith(".png")).all()
    # the 24 real radiologist boxes, as fractions of the image; "Infiltrate" mapped to the NIH label
    assert len(ix.boxes) == 24
    assert ix.boxes[["x", "y", "w", "h"]].to_numpy().min() >= 0
    assert ((ix.boxes["x"] + ix.boxes["w"]) <= 1.0).all()
    assert set(ix.boxes["label"]) <= set(ix.labels)
    row = ix.frame.set_index("image_id").loc["00000150_002.png"]
    assert row["Atelectasis"] == 1 and row["Infiltration"] == 1 and row["Pneumonia"] == 1 and row["Edema"] == 0
    assert row["sex"] == "F" and row["age"] == 55 and row["view"] == "AP"


def test_missing_images_are_reported_not_fatal(tmp_path):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    table = pd.read_csv(NIH_SAMPLE / "Data_Entry_2017_sample.csv")
    table.to_csv(root / "Data_Entry_2017.csv", index=False)
    for name in table["Image Index"][:10]:
        shutil.copy(NIH_SAMPLE / "images" / name, root / "images" / name)
    ix = read_dataset(root)
    assert len(ix) == 10
    assert any("240 of 250" in n for n in ix.notes)


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="No label table"):
        read_dataset(tmp_path)
    (tmp_path / "Data_Entry_2017.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="lacks the column"):
        read_dataset(tmp_path)
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\nx.png,Edema,1\n")
    with pytest.raises(DataError, match="None of the 1 images"):
        read_dataset(tmp_path)


def test_phantom_layouts_read_by_the_same_readers(tmp_path):
    nih = read_dataset(generate(tmp_path / "n", 40, "nih", size=128, seed=3, workers=1))
    chex = read_dataset(generate(tmp_path / "c", 40, "chexpert", size=128, seed=3, workers=1))
    assert nih.format == "nih" and len(nih) == 40 and len(nih.boxes) > 0
    assert chex.format == "chexpert" and len(chex) == 40
    assert set(np.unique(chex.label_matrix()[~np.isnan(chex.label_matrix())])) <= {-1.0, 0.0, 1.0}
    # uncertainty policies: -1 -> 0 / 1 / ignored (NaN), blanks -> 0
    raw = chex.label_matrix()
    if (raw == -1).any():
        assert (chex.targets(CHEXPERT14, "zeros")[raw == -1] == 0).all()
        assert (chex.targets(CHEXPERT14, "ones")[raw == -1] == 1).all()
        assert np.isnan(chex.targets(CHEXPERT14, "ignore")[raw == -1]).all()
    assert not np.isnan(chex.targets(CHEXPERT14, "zeros")).any()
    # a label space the data lacks is ignored (NaN), shared labels go through synonyms
    t = nih.targets(["Pleural Effusion", "Fracture"])
    assert np.array_equal(t[:, 0], nih.frame["Effusion"].to_numpy()) and np.isnan(t[:, 1]).all()


def test_patient_split_is_patient_level_and_deterministic():
    ix = read_dataset(NIH_SAMPLE)
    a = patient_split(ix.frame["patient_id"], seed=0)
    b = patient_split(ix.frame["patient_id"], seed=0)
    c = patient_split(ix.frame["patient_id"], seed=1)
    assert (a == b).all() and (a != c).any()
    per_patient = pd.Series(a).groupby(ix.frame["patient_id"].to_numpy()).nunique()
    assert (per_patient == 1).all()
    frac = pd.Series(a).value_counts(normalize=True)
    assert 0.5 < frac["train"] < 0.9
    # a subset keeps each image's split
    sub = patient_split(ix.frame["patient_id"][:50], seed=0)
    assert (sub == a[:50]).all()


def test_builtin_tables_have_real_sizes():
    nih = builtin_table("nih")
    assert len(nih) == 112_120 and len(nih.boxes) == 984
    chex = builtin_table("chexpert")
    assert len(chex) == 223_414
    assert (chex.frame["Atelectasis"] == -1).sum() > 1000
