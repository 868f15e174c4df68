"""Official test splits (NIH test_list.txt, CheXpert valid.csv), evaluation that honours the model's
training uncertainty policy, and published reference AUROCs beside NIH-14 figures (issue 13 §2, §5)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import cxr_here
from cxrcore.data import phantom
from cxrcore.data.readers import official_test_mask, read_dataset
from cxrcore.data.splits import official_patient_split
from cxrcore.errors import DataError
from cxrcore.eval.evaluate import run_evaluation
from cxrcore.eval.predictions import predict_split
from cxrcore.eval.reference import AUROC, mean_published, published_auroc
from cxrcore.predictor import Predictor
from cxrcore.train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("official")
    return {d: phantom.generate(root / d, 300, domain=d, size=64, seed=7, workers=1) for d in ("nih", "chexpert")}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    """One small model per domain trained with the official split (CheXpert: U-Ones), one NIH model with a hash split."""
    root = tmp_path_factory.mktemp("official-runs")
    out = {}
    for name, d, kw in (("nih", "nih", {}), ("chexpert", "chexpert", {"policy": "ones"}),
                        ("nih_hash", "nih", {"split_method": "hash"})):
        kw = {"split_method": "official", **kw}
        cfg = TrainConfig(data=str(data[d]), labels="nih14" if d == "nih" else "chexpert14", epochs=1, batch_size=32,
                          image_size=48, workers=1, threads=1, **kw)
        train(cfg, root / name)
        out[name] = root / name
    return out


def _split_ids(run: Path, split: str) -> set[str]:
    t = pd.read_csv(run / "splits.csv", dtype=str)
    return set(t.loc[t["split"] == split, "image_id"])


def test_nih_official_split_is_test_list_and_patient_disjoint(data, runs):
    listed = set((data["nih"] / "test_list.txt").read_text().split())
    train_val = set((data["nih"] / "train_val_list.txt").read_text().split())
    assert listed and train_val and not listed & train_val
    assert _split_ids(runs["nih"], "test") == listed
    assert _split_ids(runs["nih"], "train") | _split_ids(runs["nih"], "val") == train_val
    frame = read_dataset(data["nih"]).frame.set_index("image_id")
    pids = {s: set(frame.loc[list(_split_ids(runs["nih"], s)), "patient_id"]) for s in ("train", "val", "test")}
    assert not pids["train"] & pids["val"] and not pids["train"] & pids["test"] and not pids["val"] & pids["test"]
    card = Predictor(runs["nih"] / "checkpoint").card
    assert card.data["split_method"] == "official" and card.metrics["test"]["n"] == len(listed)


def test_chexpert_official_split_is_valid_csv(data, runs):
    valid = pd.read_csv(data["chexpert"] / "valid.csv")["Path"]
    assert _split_ids(runs["chexpert"], "test") == set(valid)


def test_evaluation_uses_the_official_split_the_model_trained_with(data, runs):
    result, _ = run_evaluation(runs["nih"] / "checkpoint", data["nih"], "test", n_boot=20)
    assert result["split_description"] == "official test split (test_list.txt)"
    listed = set((data["nih"] / "test_list.txt").read_text().split())
    assert result["n_images"] == len(listed)
    # the same rows as official_test chosen explicitly, for a model trained with any split
    ids = predict_split(Predictor(runs["nih_hash"] / "checkpoint"), data["nih"], "official_test").image_ids
    assert set(ids) == listed
    other, _ = run_evaluation(runs["nih_hash"] / "checkpoint", data["nih"], "official_test", n_boot=20)
    assert other["split_description"].startswith("official test split (test_list.txt)")
    assert "may have been in its training split" in other["split_description"]


def test_hand_made_lists_with_a_shared_patient_keep_it_out_of_training(data, tmp_path):
    index = read_dataset(data["nih"])
    frame = index.frame.copy()
    pid = frame["patient_id"].iloc[0]
    rows = np.flatnonzero(frame["patient_id"].eq(pid).to_numpy())
    if len(rows) < 2:
        pytest.skip("the first phantom patient has one image")
    frame.loc[frame.index[rows[0]], "official_split"] = "test"
    frame.loc[frame.index[rows[1:]], "official_split"] = "train_val"
    split = official_patient_split(frame, 0, 0.1)
    assert split[rows[0]] == "test" and set(split[rows[1:]]) == {"unlisted"}


def test_no_official_list_is_refused_with_what_to_add(data, tmp_path):
    import shutil

    copy = tmp_path / "nolists"
    shutil.copytree(data["nih"], copy)
    (copy / "test_list.txt").unlink()
    (copy / "train_val_list.txt").unlink()
    with pytest.raises(DataError, match="test_list.txt"):
        official_patient_split(read_dataset(copy).frame)
    cfg = TrainConfig(data=str(copy), epochs=1, image_size=48, workers=1, threads=1, split_method="official")
    with pytest.raises(DataError, match="official test list"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert official_test_mask(read_dataset(data["chexpert"])).sum() == len(pd.read_csv(data["chexpert"] / "valid.csv"))


def test_evaluation_scores_uncertain_labels_as_the_model_was_trained(data, runs):
    ckpt = runs["chexpert"] / "checkpoint"
    index = read_dataset(data["chexpert"])
    assert (index.label_matrix() == -1).any()
    result, ev = run_evaluation(ckpt, index, "all", n_boot=20)
    assert result["policy"] == "ones" and result["policy_source"] == "the model's training policy"
    raw = index.label_matrix()
    col = list(index.labels).index("Atelectasis")
    j = result["labels"].index("Atelectasis")
    order = {x: i for i, x in enumerate(index.frame["image_id"])}
    rows = [order[x] for x in ev.image_ids]
    unc = raw[rows, col] == -1
    assert unc.any() and (ev.targets[unc, j] == 1).all()
    chosen, ev2 = run_evaluation(ckpt, index, "all", n_boot=20, policy="ignore")
    assert chosen["policy"] == "ignore" and chosen["policy_source"] == "chosen" and np.isnan(ev2.targets[unc, j]).all()
    assert chosen["per_label"]["Atelectasis"]["n"] == result["per_label"]["Atelectasis"]["n"] - int(unc.sum())
    with pytest.raises(DataError, match="policy"):
        run_evaluation(ckpt, index, "all", n_boot=20, policy="maybe")


def test_published_reference_auroc_beside_nih_figures(data, runs):
    assert published_auroc(["Pleural Effusion", "Pleural_Thickening", "Fracture"], "chexnet") == \
        {"Pleural Effusion": 0.8638, "Pleural_Thickening": 0.8062, "Fracture": None}
    assert mean_published("chexnet") == pytest.approx(0.841, abs=5e-4)      # CheXNet's reported mean
    assert len(AUROC["wang2017"]) == len(AUROC["chexnet"]) == 14
    result, _ = run_evaluation(runs["nih"] / "checkpoint", data["nih"], "test", n_boot=20)
    ref = result["reference"]
    assert set(ref) == {"wang2017", "chexnet"} and ref["chexnet"]["auroc"]["Cardiomegaly"] == 0.9248
    assert "1711.05225" in ref["chexnet"]["citation"] and "test_list" in ref["wang2017"]["split"]
    chex, _ = run_evaluation(runs["chexpert"] / "checkpoint", data["chexpert"], "test", n_boot=20)
    assert chex["reference"] is None


def test_cli_eval_official_test_with_a_chosen_policy(data, runs, tmp_path, capsys):
    code, out, err = cxr_here(capsys, "eval", "--checkpoint", runs["nih_hash"] / "checkpoint", "--data", data["nih"],
                              "--split", "official_test", "--n-boot", "20", "--policy", "zeros", "--out", tmp_path / "ev")
    assert code == 0, err
    assert "official test split (test_list.txt)" in out and "scored as zeros (chosen)" in out
    assert "published (CheXNet (Rajpurkar et al. 2017)" in out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["split"] == "official_test" and metrics["policy"] == "zeros"
    html = next((tmp_path / "ev").glob("*.html")).read_text()
    assert "published: CheXNet" in html and "official test split" in html


def test_samples_averaged_metrics_match_sklearn_and_grids_have_a_panel_per_label(data, runs):
    from sklearn.metrics import precision_recall_fscore_support

    from cxrcore.eval.evaluate import samples_prf
    from cxrcore.eval.report import curve_grid

    rng = np.random.default_rng(0)
    true = rng.random((60, 5)) < 0.3
    pred = rng.random((60, 5)) < 0.3
    true[:5], pred[:5] = False, False                      # nothing to find, nothing predicted
    p, r, f = samples_prf(true, pred)
    want = precision_recall_fscore_support(true, pred, average="samples", zero_division=1)
    assert (p.mean(), r.mean(), f.mean()) == pytest.approx(want[:3])
    result, ev = run_evaluation(runs["nih"] / "checkpoint", data["nih"], "test", n_boot=20)
    s = result["summary"]
    for k in ("samples_precision", "samples_recall", "samples_f1"):
        assert 0 <= s[k]["value"] <= 1 and s[k]["low"] <= s[k]["value"] <= s[k]["high"]
    fig = curve_grid(list(ev.labels), ev.targets, ev.probs, "roc",
                     aurocs={x: result["per_label"][x]["auroc"]["value"] for x in ev.labels})
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == len(ev.labels) == 14
    evaluable = [x for x in ev.labels if result["per_label"][x]["evaluable"]]
    assert all(f"AUROC {result['per_label'][x]['auroc']['value']:.3f}" in t for x, t in zip(ev.labels, titles)
               if x in evaluable)
    assert sum("not evaluable" in t for t in titles) == 14 - len(evaluable)
    assert len(curve_grid(list(ev.labels), ev.targets, ev.probs, "pr").data) == 2 * len(evaluable)


def test_study_level_fusion_of_frontal_and_lateral_views(data, runs, tmp_path):
    """Two views per study (a CSV layout: study = patient), laterals kept, probabilities fused by mean
    and max; targets are the study's labels (the maximum over its views)."""
    import shutil

    from cxrcore.eval.predictions import fuse_studies
    from cxrcore.predictor import fuse_views

    src = read_dataset(data["chexpert"])
    rows = src.frame.head(40)
    (tmp_path / "img").mkdir()
    table = []
    for k, (_, r) in enumerate(rows.iterrows()):
        name = f"img/{k:03d}.jpg"
        shutil.copy(r["path"], tmp_path / name)
        table.append({"path": name, "patient_id": f"s{k // 2}", "view": "PA" if k % 2 == 0 else "LATERAL",
                      **{x: r[x] for x in ("Cardiomegaly", "Edema", "Pleural Effusion", "Support Devices")}})
    pd.DataFrame(table).to_csv(tmp_path / "labels.csv", index=False)
    ckpt = runs["chexpert"] / "checkpoint"
    frontal, _ = run_evaluation(ckpt, tmp_path, "all", n_boot=10)
    assert frontal["n_images"] == 20 and not frontal["laterals"]            # trained frontal-only: laterals left out
    views, ev_views = run_evaluation(ckpt, tmp_path, "all", n_boot=10, laterals=True)
    assert views["n_images"] == 40
    for how in ("mean", "max"):
        study, ev = run_evaluation(ckpt, tmp_path, "all", n_boot=10, laterals=True, fuse=how)
        assert study["n_images"] == 20 and study["n_views"] == 40 and study["fusion"] == how
        assert ev.image_ids == [f"s{k}" for k in range(20)]
        j = ev_views.labels.index("Edema")
        a, b = ev_views.probs[0, j], ev_views.probs[1, j]                    # the two views of study s0
        assert ev.probs[0, j] == pytest.approx(float(np.mean([a, b]) if how == "mean" else max(a, b)), abs=1e-6)
        assert ev.targets[0, j] == np.nanmax(ev_views.targets[:2, j])
        assert study["n_patients"] == 20
    np.testing.assert_allclose(fuse_views([[0.2, 0.9], [0.4, 0.1]], "max"), [0.4, 0.9])
    with pytest.raises(DataError, match="mean or max"):
        fuse_studies(None, None, "median")


def test_cli_predict_fuses_the_views_of_one_study(data, runs, capsys):
    imgs = [str(p) for p in sorted((data["chexpert"]).rglob("*.jpg"))[:2]]
    code, out, err = cxr_here(capsys, "predict", *imgs, "--checkpoint", runs["chexpert"] / "checkpoint", "--fuse", "max")
    assert code == 0, err
    assert "study of 2 views, fused by max" in out
    code, _, err = cxr_here(capsys, "predict", *imgs, "--checkpoint", runs["chexpert"] / "checkpoint")
    assert code == 2 and "--fuse mean or max" in err
