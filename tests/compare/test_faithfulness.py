"""Faithfulness of heatmaps (ROAD, deletion / insertion) on hand-built models whose answer is known, and on
the shipped checkpoint through the Predictor; `cxr localize` with the new columns."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cxrcore.errors import ConfigError
from cxrcore.explain.faithfulness import (SigmoidOutputTarget, faithfulness, predictor_faithfulness, rank_map,
                                          to_input_size)

from conftest import NIH_SAMPLE, cxr_here

S = 32


class RegionModel(nn.Module):
    """Two outputs; label 0's logit is a steep function of the mean brightness of a small top-left region
    (4 x 4 pixels) only, label 1's of a bottom-right one only. Nothing else in the image matters."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        tl = x[:, :, 4:8, 4:8].mean((1, 2, 3))
        br = x[:, :, 24:28, 24:28].mean((1, 2, 3))
        return torch.stack([8 * (tl - 0.5), 8 * (br - 0.5)], dim=1)


def image(channels: int = 1) -> torch.Tensor:
    x = torch.zeros(1, channels, S, S)
    x[:, :, 4:8, 4:8] = 1.0        # the finding label 0 looks at
    x[:, :, 24:28, 24:28] = 1.0    # the one label 1 looks at
    return x


def region_map(r0: int, c0: int, size: int = 4) -> np.ndarray:
    cam = np.zeros((S, S), np.float32)
    cam[r0:r0 + size, c0:c0 + size] = 1.0
    return cam


RIGHT = region_map(4, 4)       # highlights what label 0 uses
WRONG = region_map(14, 14)     # highlights plain background
OTHER = region_map(24, 24)     # highlights what label 1 uses (not label 0)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_map_on_the_region_the_model_uses_is_scored_more_faithful(channels):
    model, x = RegionModel(channels), image(channels)
    right = faithfulness(model, x, 0, RIGHT, steps=16)
    for bad in (WRONG, OTHER):
        wrong = faithfulness(model, x, 0, bad, steps=16)
        assert right.prob == pytest.approx(wrong.prob) and right.prob > 0.95
        # ROAD: removing the right map's top pixels drops p; removing its bottom pixels keeps it. (The wrong map's
        # LeRF is near 0 too: its ties, broken at random, remove scattered pixels that imputation restores.)
        assert right.road_morf < wrong.road_morf - 0.3
        assert right.road_lerf >= wrong.road_lerf - 1e-6 and right.road_lerf > -0.05
        assert right.road_combined > wrong.road_combined + 0.3
        # deletion falls at once for the right map, insertion rises at once
        assert right.deletion_auc < wrong.deletion_auc - 0.2
        assert right.insertion_auc > wrong.insertion_auc + 0.15
    assert right.road_combined > 0.3
    # the curves start and end where they must: the input, then the mean canvas (deletion) / the input (insertion)
    assert right.deletion_p[0] == pytest.approx(right.prob, abs=1e-6)
    assert right.insertion_p[-1] == pytest.approx(right.prob, abs=1e-6)
    assert len(right.fractions) == 17 and right.fractions[0] == 0 and right.fractions[-1] == 1
    assert right.road_removed == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert right.forward_passes == 1 + 18 + 34


def test_the_scores_follow_the_label_the_map_is_for():
    model, x = RegionModel(), image()
    # the bottom-right map is faithful for label 1 and not for label 0
    assert faithfulness(model, x, 1, OTHER).road_combined > faithfulness(model, x, 0, OTHER).road_combined + 0.3


def test_seeded_scores_repeat_and_a_map_at_feature_grid_resolution_is_upsampled():
    model, x = RegionModel(), image()
    a, b = faithfulness(model, x, 0, RIGHT, seed=3), faithfulness(model, x, 0, RIGHT, seed=3)
    assert a.to_dict() | {"seconds": 0} == b.to_dict() | {"seconds": 0}
    grid = np.zeros((8, 8), np.float32)
    grid[1, 1] = 1.0                      # one cell of an 8 x 8 grid = pixels 4..7 x 4..7
    coarse = faithfulness(model, x, 0, grid)
    assert coarse.road_combined > faithfulness(model, x, 0, WRONG).road_combined + 0.3
    assert to_input_size(grid, (S, S)).shape == (S, S)


def test_matches_pytorch_grad_cams_own_road_combined():
    """Our ROAD combined is pytorch-grad-cam's ROADCombined (same masks, imputer and averaging); only the
    imputation noise (0.01) is drawn differently, so they agree to within that noise."""
    from pytorch_grad_cam.metrics.road import ROADCombined

    model, x = RegionModel(), image()
    # a map without ties, so the library's percentile cut and our rank cut remove the same pixels
    rng = np.random.default_rng(0)
    cam = RIGHT * 2 + rng.random((S, S)).astype(np.float32) * 0.5
    torch.manual_seed(0)
    lib = float(ROADCombined()(x, cam[None], [SigmoidOutputTarget(0)], model)[0])
    ours = faithfulness(model, x, 0, cam).road_combined
    assert ours == pytest.approx(lib, abs=0.02)


def test_rank_map_breaks_ties_so_a_percentile_removes_exactly_that_share():
    cam = np.zeros((10, 10), np.float32)
    cam[:2] = 1.0                                   # 80 % of the map tied at 0
    r = rank_map(cam)
    assert len(np.unique(r)) == 100 and r.min() == 0 and r.max() == 1
    assert (r[:2] > r[2:].max()).all()               # order kept
    assert (r < np.percentile(r, 50)).sum() == 50    # a 50 % cut keeps exactly half


def test_sigmoid_target_and_bad_input():
    out = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    assert SigmoidOutputTarget(1)(out).tolist() == pytest.approx(torch.sigmoid(torch.tensor([2.0, -1.0])).tolist())
    model, x = RegionModel(), image()
    with pytest.raises(ConfigError, match="one image at a time"):
        faithfulness(model, torch.cat([x, x]), 0, RIGHT)
    with pytest.raises(ConfigError, match="finite 2-D"):
        faithfulness(model, x, 0, np.full((S, S), np.nan))
    with pytest.raises(ConfigError, match="percentiles"):
        faithfulness(model, x, 0, RIGHT, percentiles=[0, 50])


def test_predictor_faithfulness_on_the_shipped_checkpoint(shipped):
    """The map the app shows (single-pass GradCAM) and a pytorch-grad-cam method, on a real NIH image.

    Two ROAD percentiles (4 sparse solves) and 4 curve steps keep it to about 1 s of CPU per map; the default 9
    percentiles and 20 steps cost about 4 s per map at the checkpoint's 192 px, most of it in ROAD's 18 sparse
    solves. The defaults on the shipped checkpoint's GradCAM and HiResCAM maps: `cxr localize
    --faithfulness-images 1` scores them through this function in
    test_cli_localize_methods_side_by_side_with_gated_hit_rate_and_faithfulness."""
    from cxrcore.errors import CheckpointError
    from cxrcore.predictor import Predictor

    p = Predictor(shipped["baseline"])
    path = next((NIH_SAMPLE / "images").glob("*.png"))
    for method in ("GradCAM", "HiResCAM"):
        f = predictor_faithfulness(p, path, "Cardiomegaly", method, percentiles=(30, 70), steps=4)
        assert f.method == method and 0 <= f.prob <= 1
        assert f.road_removed == [0.7, 0.3] and len(f.fractions) == 5 and f.forward_passes == 1 + 4 + 10
        assert -1 <= f.road_morf <= 1 and -1 <= f.road_lerf <= 1 and 0 <= f.deletion_auc <= 1
        assert np.isfinite(list(f.scores().values())).all()
    with pytest.raises(CheckpointError, match="no label"):
        predictor_faithfulness(p, path, "Not a label")
    with pytest.raises(ConfigError, match="Unknown CAM method"):
        predictor_faithfulness(p, path, "Cardiomegaly", "NoSuchCAM")


def test_cli_localize_methods_side_by_side_with_gated_hit_rate_and_faithfulness(shipped, capsys):
    # `cxr localize` through its main in this process (cxr_here), as test_localize runs it.
    # the first 17 images with boxes: the 17th has two (Pneumonia and Infiltrate), so pairs and boxes differ
    code, out, err = cxr_here(capsys, "localize", "--checkpoint", str(shipped["baseline"]), "--data", str(NIH_SAMPLE),
                              "--split", "all", "--cam-methods", "GradCAM,HiResCAM", "--gate", "0.0",
                              "--faithfulness-images", "1", "--json", "--max-images", "17")
    assert code == 0, err
    d = json.loads(out)
    assert d["methods"] == ["GradCAM", "HiResCAM"] and d["gate"] == "0"
    rows = {(x["label"], x["method"]): x for x in d["methods_rows"]}
    assert {("Pneumonia", "GradCAM"), ("Pneumonia", "HiResCAM"), ("all boxes", "HiResCAM")} <= set(rows)
    for row in rows.values():
        # cut-off 0: no pair is gated out, so the gated hit rate is the hit rate
        assert row["gated"] == 0 and row["gated_hit_rate"] == row["hit_rate"]
        assert row["faith_n"] >= 1 and -1 <= row["road_combined"] <= 1 and 0 <= row["insertion_auc"] <= 1
    assert rows[("Pneumonia", "GradCAM")]["pairs"] == 17 and rows[("all boxes", "GradCAM")]["boxes"] == 18
    # GradCAM's rows are the classic table's
    assert d["labels"]["Pneumonia"]["pointing"] == rows[("Pneumonia", "GradCAM")]["pointing"]
    assert "how_to_read" in d["faithfulness_note"]

    # the default gate is each label's threshold from the card; a cut-off of 1 gates every pair out
    code, out, err = cxr_here(capsys, "localize", "--checkpoint", str(shipped["baseline"]), "--data", str(NIH_SAMPLE),
                               "--split", "all", "--gate", "1", "--max-images", "17")
    assert code == 0, err
    assert "gated hit rate" in out and "p = 1" in out
    line = next(x for x in out.splitlines() if x.startswith("all boxes") and "GradCAM" in x)
    assert line.split()[6] == "0.000" and line.split()[7] == "18"     # gated hit rate 0, every pair gated out
    assert "--faithfulness-images" in out

    code, out, err = cxr_here(capsys, "localize", "--checkpoint", str(shipped["baseline"]), "--data", str(NIH_SAMPLE),
                               "--cam-methods", "Foo")
    assert code == 2 and "Unknown CAM method" in err and "Traceback" not in err
    code, out, err = cxr_here(capsys, "localize", "--checkpoint", str(shipped["baseline"]), "--data", str(NIH_SAMPLE),
                               "--gate", "2")
    assert code == 2 and "between 0 and 1" in err and "Traceback" not in err


def test_gated_hit_rate_counts_pairs_and_misses_maps_below_the_cut_off():
    """cheXlocalize: per (image, label) pair with a box; below the cut-off the map is zeroed, so a miss."""
    from cxrcore.eval.localize import BoxResult, parse_gate, parse_methods, summarize
    from cxrcore.explain.boxes import Box

    gt = Box(0.1, 0.1, 0.2, 0.2, 1.0)

    def res(image, pointing, prob, cutoff=0.5):
        return BoxResult(image, "Mass", "Mass", gt, 0.0, 0.0, pointing, 1, 0.04, prob=prob, cutoff=cutoff)

    results = [res("a", True, 0.9), res("a", True, 0.9),     # one pair, two boxes: a hit, shown
               res("b", True, 0.3),                           # a hit, but p below the cut-off: no map, a miss
               res("c", False, 0.9)]                          # shown, missed
    s = summarize(results)
    assert s["n"] == 4 and s["pointing"] == pytest.approx(0.75)          # per box
    assert s["pairs"] == 3 and s["hit_rate"] == pytest.approx(2 / 3)     # per pair
    assert s["gated_hit_rate"] == pytest.approx(1 / 3) and s["gated"] == 1
    # at p == cut-off the map is shown (>=, as the decision threshold)
    assert summarize([res("d", True, 0.5)])["gated_hit_rate"] == 1.0

    assert parse_gate(None) == parse_gate("threshold") == "threshold" and parse_gate("0.50") == "0.5"
    for bad in ("x", "1.5", -0.1):
        with pytest.raises(ConfigError):
            parse_gate(bad)
    assert parse_methods("hirescam, GradCAM") == ["GradCAM", "HiResCAM"]
    assert len(parse_methods("all")) == 7
    with pytest.raises(ConfigError, match="Unknown CAM method"):
        parse_methods("GradCAM,Nope")
