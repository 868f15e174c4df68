"""Tests for cxrcore.data.phantom: layouts, determinism, labels, boxes and visible signs."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from cxrcore.data import phantom
from cxrcore.data.phantom import generate, render, sample_table
from cxrcore.data.phantom.renderer import _Renderer
from cxrcore.data.phantom.writing import _pool_context
from cxrcore.errors import ConfigError
from cxrcore.labels import CHEXPERT14, NIH14, canonical

SIZE = 128
N = 40

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h]"
CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT14)


@pytest.fixture(scope="module")
def nih_ds(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("nih") / "ds", N, "nih", SIZE, seed=0, workers=2)


@pytest.fixture(scope="module")
def chex_ds(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("chex") / "ds", N, "chexpert", SIZE, seed=0, workers=2)


def _first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]


def _chex_table(root: Path) -> pd.DataFrame:
    parts = [pd.read_csv(root / f"{s}.csv") for s in ("train", "valid")]
    return pd.concat(parts, ignore_index=True)


def _box_frame(boxes, size):
    """Boolean mask (size x size) covering all boxes."""
    m = np.zeros((size, size), bool)
    for _, x, y, w, h in boxes:
        m[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = True
    return m


# ---------------------------------------------------------------------------------- NIH layout

def test_nih_layout_and_table(nih_ds):
    assert sorted(p.name for p in nih_ds.iterdir()) == [
        "BBox_List_2017.csv", "Data_Entry_2017.csv", "PHANTOM.json", "images", "test_list.txt", "train_val_list.txt"]
    assert _first_line(nih_ds / "Data_Entry_2017.csv") == NIH_HEADER
    t = pd.read_csv(nih_ds / "Data_Entry_2017.csv")
    # NIH's official split: two patient-disjoint image lists covering every image
    test = (nih_ds / "test_list.txt").read_text().split()
    rest = (nih_ds / "train_val_list.txt").read_text().split()
    assert sorted(test + rest) == sorted(t["Image Index"]) and test and rest
    by_patient = t.set_index("Image Index")["Patient ID"]
    assert not set(by_patient[test]) & set(by_patient[rest])
    assert list(t.columns) == ["Image Index", "Finding Labels", "Follow-up #", "Patient ID",
                               "Patient Age", "Patient Gender", "View Position",
                               "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    assert len(t) == N and t["Image Index"].is_unique
    for _, r in t.iterrows():
        m = re.fullmatch(r"(\d{8})_(\d{3})\.png", r["Image Index"])
        assert m, r["Image Index"]
        assert int(m.group(1)) == r["Patient ID"] and int(m.group(2)) == r["Follow-up #"]
        labels = r["Finding Labels"].split("|")
        assert labels == ["No Finding"] or set(labels) <= set(NIH14)
    assert set(t["Patient Gender"]) <= {"M", "F"}
    assert set(t["View Position"]) <= {"PA", "AP"}
    assert (t["OriginalImage[Width"] == SIZE).all() and (t["Height]"] == SIZE).all()
    assert (t["OriginalImagePixelSpacing[x"] > 0).all()
    # patients: 1-4 consecutive follow-ups, one sex and age per patient
    for _, g in t.groupby("Patient ID"):
        assert list(g["Follow-up #"]) == list(range(len(g))) and 1 <= len(g) <= 4
        assert g["Patient Gender"].nunique() == 1 and g["Patient Age"].nunique() == 1
    files = sorted(p.name for p in (nih_ds / "images").iterdir())
    assert files == sorted(t["Image Index"])
    for name in t["Image Index"]:
        with Image.open(nih_ds / "images" / name) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (SIZE, SIZE)
    meta = json.loads((nih_ds / "PHANTOM.json").read_text())
    assert meta["domain"] == "nih" and meta["n"] == N and meta["size"] == SIZE and meta["seed"] == 0
    assert meta["version"] == phantom.GENERATOR_VERSION


def test_nih_boxes(nih_ds):
    assert _first_line(nih_ds / "BBox_List_2017.csv") == BOX_HEADER
    b = pd.read_csv(nih_ds / "BBox_List_2017.csv")
    assert list(b.columns) == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    t = pd.read_csv(nih_ds / "Data_Entry_2017.csv").set_index("Image Index")
    assert len(b) > 0
    assert set(b["Image Index"]) <= set(t.index)
    assert "Infiltration" not in set(b["Finding Label"])  # NIH's box file spells it Infiltrate
    xywh = b[["Bbox [x", "y", "w", "h]"]].to_numpy(float) / 1024 * SIZE  # the reader's conversion
    assert (xywh[:, :2] >= 0).all() and (xywh[:, 2:] > 0).all()
    assert (xywh[:, 0] + xywh[:, 2] <= SIZE + 1e-6).all() and (xywh[:, 1] + xywh[:, 3] <= SIZE + 1e-6).all()
    for _, r in b.iterrows():
        drawn = {canonical(s) for s in t.loc[r["Image Index"], "Finding Labels"].split("|")}
        assert canonical(r["Finding Label"]) in drawn, (r["Image Index"], r["Finding Label"])


# ----------------------------------------------------------------------------- CheXpert layout

def test_chexpert_layout_and_table(chex_ds):
    assert sorted(p.name for p in chex_ds.iterdir()) == [
        "PHANTOM.json", "phantom_boxes.csv", "train", "train.csv", "valid", "valid.csv"]
    for split in ("train", "valid"):
        assert _first_line(chex_ds / f"{split}.csv") == CHEXPERT_HEADER
        t = pd.read_csv(chex_ds / f"{split}.csv")
        assert list(t.columns) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT14
        assert t["Path"].str.startswith(f"CheXpert-v1.0-small/{split}/").all()
    t = _chex_table(chex_ds)
    assert len(t) == N and t["Path"].is_unique
    assert (t["Frontal/Lateral"] == "Frontal").all()
    assert set(t["Sex"]) <= {"Male", "Female", "Unknown"}
    vals = t[CHEXPERT14].to_numpy(float)
    assert (np.isnan(vals) | np.isin(vals, [1.0, 0.0, -1.0])).all()
    pat = re.compile(r"CheXpert-v1\.0-small/(train|valid)/patient(\d{5})/study(\d+)/view1_frontal\.jpg")
    studies: dict[int, list[int]] = {}
    splits: dict[int, set] = {}
    for p in t["Path"]:
        m = pat.fullmatch(p)
        assert m, p
        studies.setdefault(int(m.group(2)), []).append(int(m.group(3)))
        splits.setdefault(int(m.group(2)), set()).add(m.group(1))
        with Image.open(chex_ds / p.split("/", 1)[1]) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (SIZE, SIZE)
    for pid, s in studies.items():
        assert sorted(s) == list(range(1, len(s) + 1)) and len(s) <= 4
        assert len(splits[pid]) == 1  # a patient lives in one split
    # every image on disk is listed
    on_disk = {str(p.relative_to(chex_ds)) for p in chex_ds.rglob("*.jpg")}
    assert on_disk == {p.split("/", 1)[1] for p in t["Path"]}


def test_chexpert_valid_fraction():
    t = sample_table(2000, "chexpert", 0)
    frac = (t["_split"] == "valid").mean()
    assert 0.02 < frac < 0.09
    assert t.groupby("_patient")["_split"].nunique().max() == 1


def test_chexpert_boxes(chex_ds):
    assert _first_line(chex_ds / "phantom_boxes.csv") == BOX_HEADER
    b = pd.read_csv(chex_ds / "phantom_boxes.csv")
    t = _chex_table(chex_ds).set_index("Path")
    assert len(b) > 0 and set(b["Image Index"]) <= set(t.index)
    assert set(b["Finding Label"]) <= set(CHEXPERT14)
    xywh = b[["Bbox [x", "y", "w", "h]"]].to_numpy(float) / 1024 * SIZE
    assert (xywh[:, :2] >= 0).all() and (xywh[:, 2:] > 0).all()
    assert (xywh[:, 0] + xywh[:, 2] <= SIZE + 1e-6).all() and (xywh[:, 1] + xywh[:, 3] <= SIZE + 1e-6).all()
    for _, r in b.iterrows():
        assert t.loc[r["Image Index"], r["Finding Label"]] in (1.0, -1.0), (r["Image Index"], r["Finding Label"])


# ------------------------------------------------------------------------------- determinism

def _images(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in (".png", ".jpg")}


def test_prefix_property_nih(nih_ds, tmp_path):
    small = generate(tmp_path / "small", 20, "nih", SIZE, seed=0, workers=1)
    a = pd.read_csv(small / "Data_Entry_2017.csv")
    b = pd.read_csv(nih_ds / "Data_Entry_2017.csv")
    pd.testing.assert_frame_equal(a, b.iloc[:20].reset_index(drop=True))
    for name in a["Image Index"]:
        pa = np.asarray(Image.open(small / "images" / name))
        pb = np.asarray(Image.open(nih_ds / "images" / name))
        assert np.array_equal(pa, pb), name
    ba = pd.read_csv(small / "BBox_List_2017.csv")
    bb = pd.read_csv(nih_ds / "BBox_List_2017.csv")
    bb = bb[bb["Image Index"].isin(set(a["Image Index"]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(ba, bb)


def test_prefix_property_chexpert(chex_ds):
    small = sample_table(20, "chexpert", 0)
    big = sample_table(N, "chexpert", 0)
    pd.testing.assert_frame_equal(small, big.iloc[:20].reset_index(drop=True))
    rows = set(small["Path"])
    t = _chex_table(chex_ds)
    assert rows <= set(t["Path"])


def test_same_seed_same_bytes_other_seed_differs(chex_ds, tmp_path):
    again = generate(tmp_path / "again", N, "chexpert", SIZE, seed=0, workers=1)
    for f in ("train.csv", "valid.csv", "phantom_boxes.csv", "PHANTOM.json"):
        assert (again / f).read_bytes() == (chex_ds / f).read_bytes(), f
    assert _images(again) == _images(chex_ds)
    other = generate(tmp_path / "other", 10, "chexpert", SIZE, seed=1, workers=1)
    t0 = _chex_table(chex_ds).iloc[:10]
    t1 = _chex_table(other)
    assert not t0[CHEXPERT14].fillna(9).equals(t1[CHEXPERT14].fillna(9).iloc[: len(t0)])
    a = np.asarray(Image.open(chex_ds / t0["Path"].iloc[0].split("/", 1)[1]), dtype=float)
    b = np.asarray(Image.open(other / t1["Path"].iloc[0].split("/", 1)[1]), dtype=float)
    assert np.abs(a - b).mean() > 2


def test_render_is_deterministic():
    a, ba = render({"Nodule": 1, "Effusion": 1}, [3, 4], "nih", 128)
    b, bb = render({"Nodule": 1, "Effusion": 1}, [3, 4], "nih", 128)
    assert np.array_equal(a, b) and ba == bb
    c, _ = render({"Nodule": 1, "Effusion": 1}, [3, 5], "nih", 128)
    assert not np.array_equal(a, c)


# -------------------------------------------------------------------------------- visible signs

LOCALIZED = ["Cardiomegaly", "Effusion", "Pneumothorax", "Nodule", "Mass", "Atelectasis",
             "Consolidation", "Pneumonia", "Edema", "Infiltration", "Pleural_Thickening", "Hernia",
             "Fibrosis"]
CHEX_LOCALIZED = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Lung Opacity",
                  "Enlarged Cardiomediastinum", "Fracture", "Support Devices", "Pleural Other"]


@pytest.mark.parametrize("domain,label", [("nih", x) for x in LOCALIZED] + [("chexpert", x) for x in CHEX_LOCALIZED])
def test_finding_changes_pixels_inside_its_box(domain, label):
    size = 256
    for k in range(3):
        seed, patient = [11, k], [12, k]
        base, none = render({}, seed, domain, size, patient)
        img, boxes = render({label: 1.0}, seed, domain, size, patient)
        assert none == []
        assert boxes and all(b[0] == label for b in boxes)
        for _, x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= size and y + h <= size
        inside = _box_frame(boxes, size)
        diff = np.abs(img.astype(float) - base.astype(float))
        din, dout = diff[inside].mean(), diff[~inside].mean()
        assert din > 2.0, (label, k, din)
        assert din > 8 * dout, (label, k, din, dout)


def test_uncertain_is_drawn_at_about_half_intensity():
    size = 256
    base, _ = render({}, [5, 1], "chexpert", size, [5, 2])
    full, bf = render({"Lung Lesion": 1.0}, [5, 1], "chexpert", size, [5, 2])
    half, bh = render({"Lung Lesion": -1.0}, [5, 1], "chexpert", size, [5, 2])
    zero, bz = render({"Lung Lesion": 0.0, "Edema": float("nan")}, [5, 1], "chexpert", size, [5, 2])
    assert np.array_equal(zero, base) and bz == []
    assert [b[1:] for b in bf] == [b[1:] for b in bh]  # same place
    m = _box_frame(bf, size)
    d1 = np.abs(full.astype(float) - base)[m].mean()
    d2 = np.abs(half.astype(float) - base)[m].mean()
    assert 0.25 * d1 < d2 < 0.8 * d1


def test_cardiomegaly_enlarges_the_heart():
    size = 256
    for k in range(3):
        _, b_full = render({"Cardiomegaly": 1}, [7, k], "nih", size, [8, k])
        _, b_half = render({"Cardiomegaly": -1}, [7, k], "nih", size, [8, k])
        r = _Renderer({}, [7, k], [8, k], "nih", size, None)
        g = r.g
        normal_ctr = g["hw"] / g["tw"]
        assert 0.35 < normal_ctr < 0.5
        (_, _, _, wf, _), (_, _, _, wh, _) = b_full[0], b_half[0]
        thorax_px = 2 * g["tw"] * size * r.cv.zoom
        assert wf / thorax_px > 0.5      # cardiothoracic ratio above 0.5
        assert wf > wh * 1.1


def test_label_names_and_no_finding():
    img, boxes = render({"No Finding": 1, "Effusion": 0}, 1, "nih", 128)
    assert boxes == [] and img.dtype == np.uint8 and img.shape == (128, 128)
    _, b1 = render({"Effusion": 1}, 1, "nih", 128)
    _, b2 = render({"Pleural Effusion": 1}, 1, "chexpert", 128)
    assert {b[0] for b in b1} == {"Effusion"} and {b[0] for b in b2} == {"Pleural Effusion"}
    with pytest.raises(ConfigError, match="does not know"):
        render({"Broken Heart": 1}, 1, "nih", 128)


def test_domains_differ():
    def stats(domain):
        contrast, noise = [], []
        for i in range(20):
            a, _ = render({}, [1, i], domain, 128)
            a = a.astype(float) / 255
            contrast.append(a[16:112, 16:112].std())
            noise.append(np.median(np.abs(a - ndimage.uniform_filter(a, 3))))
        return np.mean(contrast), np.mean(noise)

    c_nih, n_nih = stats("nih")
    c_chx, n_chx = stats("chexpert")
    assert c_nih > 1.25 * c_chx
    assert n_chx > 1.25 * n_nih


def test_prevalence_matches_real_tables():
    t = sample_table(300, "nih", 0)
    labels = t["Finding Labels"].str.split("|")
    nf = (t["Finding Labels"] == "No Finding").mean()
    assert 0.40 <= nf <= 0.68
    assert 0.10 <= labels.apply(lambda s: "Infiltration" in s).mean() <= 0.27   # real: 0.18
    assert 0.05 <= labels.apply(lambda s: "Effusion" in s).mean() <= 0.20       # real: 0.12
    c = sample_table(300, "chexpert", 0)
    assert (c["Frontal/Lateral"] == "Frontal").all()
    assert 0.40 <= (c["Support Devices"] == 1).mean() <= 0.70                  # real: 0.56
    assert 0.38 <= (c["Lung Opacity"] == 1).mean() <= 0.60                     # real: 0.49
    assert 0.03 <= (c["No Finding"] == 1).mean() <= 0.16                       # real: 0.09
    assert c["Pneumonia"].isna().mean() > 0.6                                  # blanks are kept
    assert (c["Atelectasis"] == -1).any()                                      # and uncertain values


def test_patients_share_body_shape():
    t = sample_table(30, "nih", 0)
    pid = t["_patient"].value_counts().index[0]  # a patient with several images
    idx = t.index[t["_patient"] == pid].tolist()
    assert len(idx) >= 2
    r = [_Renderer({}, [0, 1, 0, i], [0, 1, 1, int(pid)], "nih", 128, None) for i in idx]
    assert r[0].g["tw"] == r[1].g["tw"] and r[0].g["ctr"] == r[1].g["ctr"]
    other = _Renderer({}, [0, 1, 0, 0], [0, 1, 1, int(pid) + 1], "nih", 128, None)
    assert other.g["tw"] != r[0].g["tw"]


# ------------------------------------------------------------------------------ errors, atomicity

@pytest.mark.parametrize("kwargs,match", [
    (dict(n=0), "at least 1"),
    (dict(n=-3), "at least 1"),
    (dict(domain="mimic"), "Unknown phantom domain"),
    (dict(size=32), "out of range"),
    (dict(size=2048), "out of range"),
    (dict(workers=0), "workers"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(n=5, domain="nih", size=64, seed=0, workers=1) | kwargs
    with pytest.raises(ConfigError, match=match):
        generate(tmp_path / "ds", **args)
    assert not (tmp_path / "ds").exists()


def test_non_empty_out_is_refused_and_untouched(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        generate(out, 3, "nih", 64)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        generate(f, 3, "nih", 64)


def test_empty_existing_out_and_progress(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    calls = []
    assert generate(out, 6, "chexpert", 64, workers=2, progress=lambda d, t: calls.append((d, t))) == out
    assert calls == [(i, 6) for i in range(1, 7)]
    assert len(_chex_table(out)) == 6


def test_interrupted_run_leaves_nothing(tmp_path):
    def boom(done, total):
        if done == 3:
            raise KeyboardInterrupt

    for workers in (1, 2):
        with pytest.raises(KeyboardInterrupt):
            generate(tmp_path / "ds", 12, "nih", 64, workers=workers, progress=boom)
        assert list(tmp_path.iterdir()) == []  # no dataset, no partial sibling


def test_pool_from_a_threaded_process_matches_in_process(tmp_path):
    # With other threads alive (as in the Streamlit server) no fork here: a clean child process renders.
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        assert _pool_context() is None
        a = generate(tmp_path / "pool", 4, "nih", 64, seed=3, workers=2)
        with pytest.raises(KeyboardInterrupt):  # stopped from here: the child removes its partial folder
            generate(tmp_path / "stopped", 40, "nih", 64, seed=3, workers=2, progress=_interrupt_at_3)
    finally:
        stop.set()
        t.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool"]
    b = generate(tmp_path / "inproc", 4, "nih", 64, seed=3, workers=1)
    assert _images(a) == _images(b)
    assert (a / "Data_Entry_2017.csv").read_bytes() == (b / "Data_Entry_2017.csv").read_bytes()


def _interrupt_at_3(done, total):
    if done >= 3:
        raise KeyboardInterrupt


def test_official_lists_are_added_to_an_older_nih_phantom(nih_ds, tmp_path):
    import shutil

    from cxrcore.data.phantom.writing import add_missing_nih_lists

    old = tmp_path / "old"
    shutil.copytree(nih_ds, old)
    want = {n: (old / n).read_text() for n in ("test_list.txt", "train_val_list.txt")}
    for n in want:
        (old / n).unlink()
    assert add_missing_nih_lists(old)
    assert {n: (old / n).read_text() for n in want} == want      # the same lists the generator writes
    assert not add_missing_nih_lists(old)


def test_workers_in_a_threaded_process_do_not_run_the_callers_main(tmp_path, monkeypatch):
    """Inside Streamlit the page being run is ``__main__`` and the server has many threads; the phantom's
    workers must not run that page again (forkserver / spawn re-run ``__main__`` in every worker), and the
    result and the progress are those of the one-thread path."""
    import threading
    import types

    from cxrcore.data.phantom.writing import generate

    marker = tmp_path / "page-ran"
    page = tmp_path / "page.py"
    page.write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(page)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)  # what Streamlit's script runner does
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    seen = []
    try:
        generate(tmp_path / "threaded", 12, "nih", 64, 3, workers=2, progress=lambda d, n: seen.append((d, n)))
    finally:
        release.set()
        other.join()
    assert not marker.exists()
    assert seen[-1] == (12, 12) and len(seen) == 12
    generate(tmp_path / "plain", 12, "nih", 64, 3, workers=1)
    for f in sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*") if p.is_file()):
        assert (tmp_path / "threaded" / f).read_bytes() == (tmp_path / "plain" / f).read_bytes(), f


def test_label_noise_flips_the_share_asked_and_keeps_the_truth_beside(nih_ds, tmp_path):
    """`cxr phantom --label-noise` (cxrcore.data.phantom.noise): the share of (film, finding) pairs asked is flipped in
    Data_Entry_2017.csv and nothing else; label_noise.csv names each with the value given now and the true one; the
    images untouched; a folder already noised, a CheXpert layout or a share outside (0, 1) is refused."""
    import shutil

    from cxrcore.data.phantom.noise import NOISE_FILE, add_label_noise
    from cxrcore.data.readers import read_dataset
    from cxrcore.errors import DataError

    data = tmp_path / "ds"
    shutil.copytree(nih_ds, data)
    before = read_dataset(data)
    flipped = add_label_noise(data, 0.1, seed=3)
    after = read_dataset(data)
    truth = pd.read_csv(data / NOISE_FILE)
    assert len(flipped) == len(truth) == round(0.1 * N * 14)
    a = before.frame.set_index("image_id")[NIH14].fillna(0).astype(int)
    b = after.frame.set_index("image_id")[NIH14].fillna(0).astype(int)
    changed = {(i, x) for x in NIH14 for i in a.index[a[x] != b[x]]}
    assert changed == flipped
    for r in truth.itertuples():
        assert b.at[r.image_id, r.label] == r.given and a.at[r.image_id, r.label] == r.true == 1 - r.given
    assert sorted(p.name for p in (data / "images").iterdir()) == sorted(p.name for p in (nih_ds / "images").iterdir())
    with pytest.raises(DataError, match="already has flipped labels"):
        add_label_noise(data, 0.1)
    with pytest.raises(DataError, match="between 0 and 1"):
        add_label_noise(nih_ds, 1.5)
    with pytest.raises(DataError, match="NIH-layout"):
        add_label_noise(tmp_path, 0.1)
