"""Localization scores: IoU / IoBB / pointing game on hand-made boxes and heatmaps with known
answers, and `cxr localize` on the real NIH sample (24 radiologist boxes) and on the NIH phantom."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cxrcore.cli import main
from cxrcore.data.readers import read_dataset
from cxrcore.explain.boxes import Box, iou
from cxrcore.eval.localize import (BoxResult, LocalizationReport, clip_box, inside, iobb, localize, peak_point,
                                      pointing_hit, score_box, summarize, union_area)
from cxrcore.labels import find_label

from conftest import NIH_SAMPLE


def B(x, y, w, h, s=1.0):
    return Box(x, y, w, h, s)


# --------------------------------------------------------------------------- known answers

def test_iou_and_iobb_known_values():
    gt = B(0.2, 0.2, 0.4, 0.4)                      # area 0.16
    inner = B(0.3, 0.3, 0.1, 0.1)                   # inside gt, area 0.01
    half = B(0.4, 0.2, 0.4, 0.4)                    # overlaps gt in 0.2 x 0.4 = 0.08
    apart = B(0.7, 0.7, 0.2, 0.2)
    # IoBB = intersection / area of the detected box: a small box inside the GT scores 1
    assert iobb(gt, inner) == pytest.approx(1.0)
    assert iou(gt, inner) == pytest.approx(0.01 / 0.16)
    assert iobb(gt, half) == pytest.approx(0.08 / 0.16)
    assert iou(gt, half) == pytest.approx(0.08 / (0.16 + 0.16 - 0.08))
    # a detected box four times the GT, containing it: IoBB = 0.25, IoU = 0.25
    big = B(0.1, 0.1, 0.8, 0.8)                     # area 0.64
    assert iobb(gt, big) == pytest.approx(0.16 / 0.64)
    assert iou(gt, big) == pytest.approx(0.16 / 0.64)
    # IoBB is not symmetric: over the GT's area this would be 1
    assert iobb(big, gt) == pytest.approx(1.0)
    assert iobb(gt, apart) == 0.0 and iou(gt, apart) == 0.0
    assert iobb(gt, B(0.3, 0.3, 0.0, 0.1)) == 0.0   # degenerate detected box


def test_score_box_takes_the_best_predicted_box_and_thresholds_are_inclusive():
    gt = B(0.2, 0.2, 0.4, 0.4)
    preds = [B(0.7, 0.7, 0.2, 0.2), B(0.4, 0.2, 0.4, 0.4), B(0.3, 0.3, 0.1, 0.1)]
    s = score_box(gt, preds, None)
    assert s["iou"] == pytest.approx(1 / 3)          # from the half-overlapping box
    assert s["iobb"] == pytest.approx(1.0)           # from the small inner box
    assert s["area"] == pytest.approx(0.16) and s["n_pred"] == 3 and s["pointing"] is False
    empty = score_box(gt, [], None)
    assert empty["iou"] == 0.0 and empty["iobb"] == 0.0 and empty["n_pred"] == 0

    def res(i, b, p):
        return BoxResult("img", "Mass", "Mass", gt, i, b, p, 1, 0.16)

    # accuracies count a hit at >= T (IoU exactly 0.25 and IoBB exactly 0.5 are hits)
    summary = summarize([res(0.25, 0.5, True), res(0.1, 0.1, False), res(0.0, 0.0, False), res(0.6, 1.0, True)])
    assert summary["n"] == 4
    assert summary["iou_acc"] == {"0.1": 0.75, "0.25": 0.5, "0.5": 0.25}
    assert summary["iobb_acc"] == {"0.1": 0.75, "0.25": 0.5, "0.5": 0.5}
    assert summary["pointing"] == 0.5 and summary["chance"] == pytest.approx(0.16)


def test_clip_box_to_the_image():
    b = clip_box(B(0.9, -0.1, 0.3, 0.3))
    assert (b.x, b.y) == (pytest.approx(0.9), 0.0)
    assert b.w == pytest.approx(0.1) and b.h == pytest.approx(0.2)


def test_pointing_game_on_hand_made_heatmaps():
    heat = np.zeros((100, 200), np.float32)          # image 200 wide, 100 high
    heat[30, 150] = 1.0                              # peak at x = 150.5 / 200, y = 30.5 / 100
    assert peak_point(heat) == pytest.approx((150.5 / 200, 30.5 / 100))
    assert pointing_hit(heat, B(0.7, 0.2, 0.1, 0.2))
    assert not pointing_hit(heat, B(0.1, 0.2, 0.5, 0.5))
    assert not pointing_hit(heat, B(0.7, 0.31, 0.1, 0.2))  # just below the peak
    # an all-zero heatmap (every cell removed by the ReLU) never hits, even a box covering the image
    assert not pointing_hit(np.zeros((10, 10)), B(0, 0, 1, 1))
    # a Gaussian blob: its maximum is inside a box around its centre
    yy, xx = np.mgrid[0:64, 0:64]
    blob = np.exp(-((xx - 40) ** 2 + (yy - 20) ** 2) / 50.0)
    assert pointing_hit(blob, B(0.55, 0.25, 0.15, 0.15))
    assert score_box(B(0.55, 0.25, 0.15, 0.15), [], blob)["pointing"] is True


def test_union_area_known_values():
    assert union_area([]) == 0.0
    assert union_area([B(0.1, 0.1, 0.2, 0.3)]) == pytest.approx(0.06)
    # two boxes overlapping in 0.1 x 0.2: 0.04 + 0.04 - 0.02
    assert union_area([B(0.0, 0.0, 0.2, 0.2), B(0.1, 0.0, 0.2, 0.2)]) == pytest.approx(0.06)
    assert union_area([B(0.0, 0.0, 0.2, 0.2), B(0.5, 0.5, 0.1, 0.1)]) == pytest.approx(0.05)   # apart: sum
    assert union_area([B(0.0, 0.0, 0.5, 0.5), B(0.1, 0.1, 0.1, 0.1)]) == pytest.approx(0.25)   # nested: outer
    assert union_area([B(0.0, 0.0, 0.0, 0.5), B(0.1, 0.1, 0.1, 0.1)]) == pytest.approx(0.01)   # empty box ignored


class _PeakOnFirstBox:
    """A stand-in predictor, shaped as :meth:`cxrcore.predictor.Predictor.predict`'s answer: every label's
    heatmap (in the image frame) peaks at the centre of the first ground-truth box of that label on the image,
    and its one predicted box is the middle of that box (half its width and height, the same centre: IoU 1/4 and
    IoBB 1 against it). Labels without a box get an empty map and no predicted box; every probability is 0.9
    against a threshold of 0.5."""

    def __init__(self, index, labels):
        self.labels = list(labels)
        self.index = index
        self.id_of = dict(zip(index.frame["path"], index.frame["image_id"].astype(str)))
        self.calls = 0

    def predict(self, path, heatmaps=True, top_k_boxes=3, box_threshold=0.5):
        from types import SimpleNamespace

        self.calls += 1
        size = 128
        maps = np.zeros((len(self.labels), size, size), np.float32)
        boxes: dict[str, list[Box]] = {x: [] for x in self.labels}
        gt = self.index.boxes[self.index.boxes["image_id"].astype(str) == self.id_of[path]]
        for row in gt.itertuples(index=False):
            j = find_label(str(row.label), self.labels)
            if j is not None and not maps[j].any():
                g = clip_box(B(row.x, row.y, row.w, row.h))
                cx, cy = g.x + g.w / 2, g.y + g.h / 2
                maps[j, min(int(cy * size), size - 1), min(int(cx * size), size - 1)] = 1.0
                boxes[self.labels[j]] = [B(g.x + g.w / 4, g.y + g.h / 4, g.w / 2, g.h / 2, 1.0)][:top_k_boxes]
        n = len(self.labels)
        return SimpleNamespace(labels=self.labels, boxes=boxes, heatmaps=maps, probs=np.full(n, 0.9, np.float32),
                               thresholds=np.full(n, 0.5, np.float32))


def test_pointing_game_counts_a_hit_on_any_instance_of_the_label(tmp_path):
    """Zhang et al. 2016: the maximum on one of the label's boxes on the image is a hit for the label there; the
    per-box variant (pointing_box) cannot win every box of a label with several boxes (devices, bilateral signs)."""
    from cxrcore.data.phantom import generate
    from cxrcore.labels import CHEXPERT14

    index = read_dataset(generate(tmp_path / "chex", 30, "chexpert", 128, seed=3, workers=1))
    predictor = _PeakOnFirstBox(index, CHEXPERT14)
    rep = localize(predictor, index, "all", seed=0)
    d = rep.to_dict()
    assert d["n_boxes_scored"] == len(index.boxes) == d["overall"]["n"] and predictor.calls == d["n_images"]
    assert d["overall"]["pointing"] == 1.0 and d["macro"]["pointing"] == 1.0
    groups: dict = {}
    for r in rep.results:
        groups.setdefault((r.image_id, r.label), []).append(r)
    multi = [g for g in groups.values() if len(g) > 1]
    assert multi, "the phantom draws several boxes for devices and bilateral signs"
    for g in groups.values():
        union = union_area([r.gt for r in g])
        assert all(r.area == pytest.approx(union) for r in g)           # chance: the union of the label's boxes
        assert max(r.gt.w * r.gt.h for r in g) - 1e-9 <= union <= sum(r.gt.w * r.gt.h for r in g) + 1e-9
        assert g[0].pointing_box                                        # the peak sits on the first box
        assert all(r.pointing_box == inside(r.peak, r.gt) for r in g)
    assert d["overall"]["pointing_box"] < 1.0                           # not on every box of a multi-box label
    assert d["overall"]["pointing_box"] == pytest.approx(np.mean([r.pointing_box for r in rep.results]))
    # IoU and IoBB against the predicted boxes: the middle of each label's first box scores 1/4 and 1 there; the
    # label's other boxes on the image score against that same predicted box (apart: 0)
    for g in groups.values():
        first = g[0].gt
        inner = B(first.x + first.w / 4, first.y + first.h / 4, first.w / 2, first.h / 2)
        assert g[0].iou == pytest.approx(0.25) and g[0].iobb == pytest.approx(1.0) and g[0].n_pred == 1
        for r in g[1:]:
            assert r.iou == pytest.approx(iou(r.gt, inner)) and r.iobb == pytest.approx(iobb(r.gt, inner))
    assert any(r.iou == 0.0 for g in multi for r in g[1:]) and any(r.iou > 0.0 for g in multi for r in g[1:])
    firsts = len(groups) / len(rep.results)
    overall = d["overall"]
    assert overall["no_prediction"] == 0 and overall["iou_acc"]["0.1"] >= firsts and overall["iou_acc"]["0.5"] < firsts
    assert overall["iobb_acc"]["0.5"] >= firsts
    assert overall["mean_iou"] == pytest.approx(np.mean([r.iou for r in rep.results]))
    assert overall["mean_iobb"] == pytest.approx(np.mean([r.iobb for r in rep.results]))
    assert overall["hit_rate"] == overall["gated_hit_rate"] == 1.0 and overall["gated"] == 0  # p 0.9 > threshold 0.5


def test_report_table_and_json_shape():
    gt = B(0.2, 0.2, 0.4, 0.4)
    rs = [BoxResult("a", "Mass", "Mass", gt, 0.3, 0.6, True, 2, 0.16),
          BoxResult("b", "Effusion", "Pleural Effusion", gt, 0.0, 0.0, False, 0, 0.16)]
    rep = LocalizationReport("ck", "ds", "all", 3, 0.5, rs, skipped={"Nodule": 2}, n_boxes_split=4, n_boxes_dataset=4,
                             n_images=2)
    d = rep.to_dict()
    assert list(d["labels"]) == ["Mass", "Effusion"] and d["labels"]["Effusion"]["model_label"] == "Pleural Effusion"
    assert d["overall"]["n"] == 2 and d["overall"]["pointing"] == 0.5 and d["macro"]["n_labels"] == 2
    assert d["skipped_labels"] == {"Nodule": 2} and len(d["boxes"]) == 2
    table = rep.table()
    assert "T(IoBB)=0.25" in table and "pointing game" in table and "Effusion" in table


# --------------------------------------------------------------------------- real NIH sample

def test_cxr_localize_on_real_nih_sample(shipped, capsys):
    index = read_dataset(NIH_SAMPLE)
    assert len(index.boxes) == 24
    labels = json.loads((shipped["baseline"] / "card.json").read_text())["labels"]
    scorable = [x for x in index.boxes["label"] if find_label(x, labels) is not None]

    assert main(["localize", "--checkpoint", str(shipped["baseline"]), "--data", str(NIH_SAMPLE),
                 "--split", "all", "--json", "--boxes"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["labels"]) == set(index.boxes["label"])           # Pneumonia and Infiltration (from Infiltrate)
    assert sum(s["n"] for s in out["labels"].values()) == len(scorable) == out["n_boxes_scored"] == 24
    assert out["overall"]["n"] == 24 and out["n_images"] == 23 and out["skipped_labels"] == {}
    for s in out["labels"].values():
        for acc in list(s["iou_acc"].values()) + list(s["iobb_acc"].values()) + [s["pointing"], s["chance"]]:
            assert 0.0 <= acc <= 1.0
        # looser thresholds never score lower
        assert s["iou_acc"]["0.1"] >= s["iou_acc"]["0.25"] >= s["iou_acc"]["0.5"]
        assert s["iobb_acc"]["0.1"] >= s["iobb_acc"]["0.25"] >= s["iobb_acc"]["0.5"]
    assert len(out["boxes"]) == 24
    # the table form runs too, and the fine-tuned (CheXpert-14) model scores Pneumonia but not Infiltration
    assert main(["localize", "--checkpoint", str(shipped["finetuned"]), "--data", str(NIH_SAMPLE), "--split", "all"]) == 0
    text = capsys.readouterr().out
    assert "pointing game" in text and "Pneumonia" in text and "Infiltration (1)" in text


def test_cxr_localize_errors_exit_2(shipped, tmp_path, capsys):
    # an NIH folder without BBox_List_2017*.csv: nothing to score, one message, exit 2
    (tmp_path / "images").mkdir()
    name = "00000001_000.png"
    (tmp_path / "images" / name).write_bytes((NIH_SAMPLE.parent / "formats" / name).read_bytes())
    (tmp_path / "Data_Entry_2017.csv").write_text(f"Image Index,Finding Labels,Patient ID\n{name},Cardiomegaly,1\n")
    assert main(["localize", "--checkpoint", str(shipped["baseline"]), "--data", str(tmp_path), "--split", "all"]) == 2
    assert "no ground-truth boxes" in capsys.readouterr().err
    assert main(["localize", "--checkpoint", str(shipped["baseline"]), "--data", str(NIH_SAMPLE),
                 "--top-k", "0"]) == 2
    assert "top_k" in capsys.readouterr().err


# --------------------------------------------------------------------------- phantom

@pytest.fixture(scope="module")
def phantom_nih_test(app_home, shipped) -> dict:
    """`cxr localize --json` of the shipped baseline on the test split of the app's NIH phantom (run once for the
    module: both tests below read the same report)."""
    import contextlib
    import io

    from conftest import workspace_env
    from cxrcore.demo import app_data

    out = io.StringIO()
    with workspace_env(app_home), contextlib.redirect_stdout(out):
        assert main(["localize", "--checkpoint", str(shipped["baseline"]), "--data", str(app_data()["nih"]),
                     "--split", "test", "--json"]) == 0
    return json.loads(out.getvalue())


def test_pointing_game_on_nih_phantom_beats_chance(phantom_nih_test):
    out = phantom_nih_test
    assert out["overall"]["n"] == sum(s["n"] for s in out["labels"].values()) == out["n_boxes_scored"] >= 50
    # chance = mean area fraction of the label's boxes on the image (a point dropped uniformly on the image);
    # the shipped figures on fresh phantom sets are in checkpoints/BUILD.json
    inf = out["labels"]["Infiltration"]
    assert inf["n"] >= 20 and inf["pointing"] >= inf["chance"] + 0.15, inf
    assert out["overall"]["pointing"] >= 2 * out["overall"]["chance"], out["overall"]


def test_pointing_game_for_cardiomegaly_on_nih_phantom_beats_chance(phantom_nih_test):
    """The baseline's Cardiomegaly map points at the heart. (Before the demo models were trained with pos_weight,
    this map was empty on every Cardiomegaly box: the class activation map, whose mean is the label's logit, stayed
    negative everywhere on a rare label's positives, and Grad-CAM's ReLU left nothing.)"""
    cardio = phantom_nih_test["labels"]["Cardiomegaly"]
    assert cardio["n"] >= 10, cardio
    assert cardio["pointing"] >= cardio["chance"] + 0.25, cardio
