"""Inference on real X-rays with the shipped checkpoints; the single-pass Grad-CAM equals
pytorch-grad-cam's GradCAM for every label; boxes from heatmaps; bad uploads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrcore.data.imageio import read_image
from cxrcore.errors import ImageError
from cxrcore.explain.boxes import Box, boxes_from_heatmap, iou
from cxrcore.explain.cam import forward_with_cams, scale_maps, supports_fast_cam, target_layer
from cxrcore.models.registry import build_model
from cxrcore.predictor import Predictor

from conftest import FORMATS


@pytest.mark.parametrize("arch,kwargs", [("regnetx_002", {"output_stride": 16}), ("resnet18", {})])
def test_single_pass_gradcam_equals_pytorch_grad_cam(arch, kwargs):
    torch.manual_seed(0)
    model = build_model(arch, 5, kwargs=kwargs).eval()
    assert supports_fast_cam(model)
    x = torch.randn(2, 3, 96, 96)
    logits, fast = forward_with_cams(model, x)
    assert torch.allclose(logits, model(x), atol=1e-5)
    h, w = fast.shape[-2:]
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        for j in range(5):
            ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(j)] * 2)  # (2, 96, 96), resized by cv2
            ours_up = torch.nn.functional.interpolate(torch.from_numpy(fast[:, j:j + 1]), size=(96, 96),
                                                      mode="bilinear", align_corners=False)[:, 0].numpy()
            ours_up = scale_maps(ours_up)
            # cv2 and torch bilinear differ slightly at borders; the maps must agree closely everywhere
            assert np.abs(ours_up - ref).mean() < 0.02, (arch, j, np.abs(ours_up - ref).mean())
            if ref.std() < 1e-6:  # relu removed everything: both maps must be empty
                assert ours_up.max() < 1e-3
            else:
                assert np.corrcoef(ours_up.ravel(), ref.ravel())[0, 1] > 0.995


def test_grid_level_equality_with_gradcam_weights():
    """Exact check: pytorch-grad-cam's weights x activations at the feature grid equal our maps."""
    torch.manual_seed(1)
    model = build_model("regnetx_002", 4, kwargs={"output_stride": 16}).eval()
    x = torch.randn(1, 3, 64, 64)
    _, fast = forward_with_cams(model, x)
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        for j in range(4):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(j)])
            acts = cam.activations_and_grads.activations[0].numpy()
            grads = cam.activations_and_grads.gradients[0].numpy()
            weights = cam.get_cam_weights(x, [target_layer(model)], None, acts, grads)
            ref = scale_maps((weights[:, :, None, None] * acts).sum(1))
            # equal up to float32 rounding and the 1e-7 guard in the min-max scaling (relative to
            # Grad-CAM's raw maps, which are smaller than CAM's by the number of cells)
            assert np.allclose(ref[0], fast[0, j], atol=1e-3)


def test_predict_real_png_with_both_shipped_models(shipped):
    image = read_image(FORMATS / "00000001_000.png")
    for name, path in shipped.items():
        pred = Predictor(path).predict(image)
        assert pred.probs.shape == (len(pred.labels),) and ((pred.probs >= 0) & (pred.probs <= 1)).all()
        assert pred.cam_grid[0] >= 8 and pred.cam_grid[1] >= 8, "heatmaps too coarse to draw boxes from"
        assert pred.heatmaps.shape[0] == len(pred.labels)
        peaks = pred.heatmaps.max(axis=(1, 2))
        # Grad-CAM maps are scaled to [0, 1] on the feature grid (bilinear upsampling lowers the peak a
        # little); an all-zero map means no region raises that label's score
        assert (((peaks > 0.85) & (peaks <= 1.0)) | (peaks == 0)).all()
        assert peaks[int(np.argmax(pred.probs))] > 0.9  # the top label has evidence somewhere
        assert any(pred.boxes.values())
        for boxes in pred.boxes.values():
            for b in boxes:
                assert 0 <= b.x and 0 <= b.y and b.x + b.w <= 1.0001 and b.y + b.h <= 1.0001
        d = pred.to_dict()
        assert set(d["probabilities"]) == set(pred.labels)


def test_non_square_and_dicom_inputs(shipped):
    p = Predictor(shipped["finetuned"])
    jpg = p.predict(FORMATS / "nih_rgb_1036x885.jpg")
    assert jpg.image_shape == (885, 1036)
    assert abs(jpg.heatmaps.shape[2] / jpg.heatmaps.shape[1] - 1036 / 885) < 0.05  # heatmap keeps the aspect
    dcm = p.predict(FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    assert dcm.image_shape == (1024, 1024)


@pytest.mark.parametrize("payload,match", [(b"", "empty"), (b"hello, not an image", "not"),
                                           (None, "truncated|corrupt")])
def test_bad_uploads_raise_image_error(shipped, payload, match):
    if payload is None:
        payload = (FORMATS / "00000001_000.png").read_bytes()[:5000]
    with pytest.raises(ImageError, match=match):
        Predictor(shipped["baseline"]).predict(payload)


def test_one_pixel_image_rejected(shipped):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    with pytest.raises(ImageError, match="too small"):
        Predictor(shipped["baseline"]).predict(buf.getvalue())


def test_boxes_from_heatmap():
    heat = np.zeros((40, 40), np.float32)
    heat[5:15, 5:15] = 1.0
    heat[25:35, 20:38] = 0.8
    heat[0, 39] = 0.9  # a single hot cell: below the minimum area
    boxes = boxes_from_heatmap(heat, threshold=0.5, min_area=0.01)
    assert len(boxes) == 2
    assert iou(boxes[0], Box(5 / 40, 5 / 40, 10 / 40, 10 / 40, 1)) > 0.99 and boxes[0].score == 1.0
    assert iou(boxes[1], Box(20 / 40, 25 / 40, 18 / 40, 10 / 40, 1)) > 0.99
    assert boxes_from_heatmap(np.zeros((8, 8))) == []
    assert len(boxes_from_heatmap(heat, method="otsu")) >= 1


def test_every_pytorch_grad_cam_method_and_vits():
    from cxrcore.explain.cam import CAM_METHODS, gradcam_loop

    torch.manual_seed(0)
    cnn = build_model("regnetx_002", 3, kwargs={"output_stride": 16}).eval()
    x = torch.randn(1, 3, 64, 64)
    for method in CAM_METHODS:
        _, maps = gradcam_loop(cnn, x, [1], method)
        assert maps.shape == (1, 1, 4, 4) and 0 <= maps.min() and maps.max() <= 1
    # ViT: tokens reshaped to the 14x14 patch grid; the target is the last block's norm1
    vit = build_model("vit_tiny_patch16_224", 3).eval()
    assert not supports_fast_cam(vit)
    from cxrcore.explain.cam import fast_cam_check

    assert fast_cam_check(vit) == (False, "its features are 3-D (tokens), not a 2-D map")  # said, not silent
    _, maps = gradcam_loop(vit, torch.randn(1, 3, 224, 224), [0, 2], "GradCAM")
    assert maps.shape == (1, 2, 14, 14) and maps.max() > 0.9


def test_predictor_says_why_heatmaps_take_the_per_label_loop(tmp_path):
    from cxrcore.checkpoint import Card, save_checkpoint
    from cxrcore.models.registry import spec_for

    model = build_model("tv:convnext_tiny", 2, "none")
    save_checkpoint(tmp_path / "c", model.state_dict(),
                    Card(labels=["Edema", "Effusion"], model=spec_for("tv:convnext_tiny"), preprocess={"size": 64}))
    p = Predictor(tmp_path / "c")
    assert not p.fast_cam and p.fast_cam_reason == "its head is not global average pooling of the feature map"
    pred = p.predict(np.random.default_rng(0).random((80, 64)).astype(np.float32))
    assert pred.cam_method.endswith(f"per label: {p.fast_cam_reason})")


def test_predictor_heatmap_with_another_method(shipped):
    p = Predictor(shipped["finetuned"])
    image = read_image(FORMATS / "nih_rgb_1036x885.jpg")
    heat, boxes = p.heatmap(image, "Lung Opacity", "HiResCAM")
    assert heat.shape == p.predict(image).heatmaps.shape[1:] and 0 <= heat.min() and heat.max() <= 1
    with pytest.raises(Exception, match="no label"):
        p.heatmap(image, "Hernia", "GradCAM")
