"""Test-time augmentation (issue 13 §5): flips and CheXNet's ten-crop, for predict and eval."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import ten_crop

from conftest import cxr_here
from cxrcore.errors import ConfigError
from cxrcore.eval.evaluate import run_evaluation
from cxrcore.eval.tta import tta_sigmoid, tta_views
from cxrcore.predictor import Predictor


def test_views_are_the_mirror_and_the_ten_crops():
    x = torch.randn(2, 3, 32, 32)
    flip = tta_views(x, "flip")
    assert len(flip) == 2 and torch.equal(flip[0], x) and torch.equal(flip[1], x.flip(-1))
    crops = tta_views(x, "tencrop")
    up = torch.nn.functional.interpolate(x, size=(37, 37), mode="bilinear", align_corners=False)  # 32 * 256 / 224
    assert len(crops) == 10 and all(c.shape == x.shape for c in crops)
    for a, b in zip(crops, ten_crop(up, [32, 32])):
        assert torch.equal(a, b)
    assert torch.equal(crops[5], crops[1].flip(-1))               # torchvision: crops of the mirror follow
    with pytest.raises(ConfigError, match="tencrop"):
        tta_views(x, "rotate")


def test_predict_and_eval_average_over_the_views(shipped, app_env):
    p = Predictor(shipped["baseline"])
    rng = np.random.default_rng(0)
    squares = (rng.random((3, p.prep.size, p.prep.size)) * 255).astype(np.uint8)
    x = p.prep.normalize(torch.from_numpy(squares))
    with torch.no_grad():
        want = (torch.sigmoid(p.model(x)) + torch.sigmoid(p.model(x.flip(-1)))) / 2
    np.testing.assert_allclose(p.predict_squares(squares, tta="flip"), want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.predict_squares(squares, tta="tencrop"),
                               tta_sigmoid(p.model, x, "tencrop").numpy(), rtol=1e-5, atol=1e-6)
    from cxrcore.data.readers import read_dataset
    from cxrcore.demo import app_data

    # the first 500 images of the app's NIH phantom (a patient's split does not depend on the others: the val
    # split here is part of the full one), 45 in val: what is shown is the averaging, not a figure over 350 images
    index = read_dataset(app_data()["nih"])
    nih = index.subset(np.arange(len(index)) < 500)
    plain, _ = run_evaluation(shipped["baseline"], nih, "val", n_boot=10)
    tta, ev = run_evaluation(shipped["baseline"], nih, "val", n_boot=10, tta="flip")
    assert tta["tta"] == "flip" and plain["tta"] == "none"
    assert tta["summary"]["mean_auroc"]["value"] != plain["summary"]["mean_auroc"]["value"]
    assert tta["n_images"] == plain["n_images"] == len(ev.image_ids)


def test_cli_predict_says_the_probabilities_are_averaged(shipped, app_env, capsys):
    from cxrcore.demo import sample_cases

    image = sample_cases("nih", limit=1)[0]["path"]
    code, out, err = cxr_here(capsys, "predict", image, "--checkpoint", shipped["baseline"], "--tta", "tencrop")
    assert code == 0, err
    assert "mean over 10 test-time views (tencrop)" in out
