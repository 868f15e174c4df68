"""Box supervision (cxrcore/train/boxes.py): box masks follow the image through the letterbox and the
augmentation, the loss moves where a label's map peaks and not how large it is, training with it makes the
maps point at the boxes, and what it cannot work with is refused with a message."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import cxr_here, job_workspace
from cxrcore.data.index import DatasetIndex
from cxrcore.data.preprocess import Preprocess, to_unit
from cxrcore.errors import ConfigError, DataError
from cxrcore.train.augment import Augment
from cxrcore.train.boxes import MASK_RES, box_loss, box_targets, check_model


def _one_image_index(tmp_path: Path) -> tuple[DatasetIndex, tuple[int, int, int, int]]:
    """A 200 x 100 (w x h) film, black with one white rectangle, and its box labelled Nodule."""
    x, y, w, h = 120, 20, 40, 40
    pixels = np.zeros((100, 200), np.uint8)
    pixels[y:y + h, x:x + w] = 255
    path = tmp_path / "one.png"
    Image.fromarray(pixels).save(path)
    frame = pd.DataFrame({"image_id": ["one.png"], "path": [str(path)], "patient_id": ["p1"], "Nodule": [1.0],
                          "Mass": [0.0]})
    boxes = pd.DataFrame({"image_id": ["one.png", "one.png"], "label": ["Nodule", "Mass"], "x": [x / 200, 0.0],
                          "y": [y / 100, 0.0], "w": [w / 200, 0.05], "h": [h / 100, 0.1]})   # fractions of the image
    return DatasetIndex(tmp_path, "custom", frame, ["Nodule", "Mass"], boxes), (x, y, w, h)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))


def test_masks_follow_the_image_through_the_letterbox_and_the_augmentation(tmp_path):
    index, _ = _one_image_index(tmp_path)
    prep = Preprocess(size=MASK_RES, fit="pad")
    targets = index.targets(["Nodule", "Mass"])
    table = box_targets(index, ["Nodule", "Mass"], targets, prep)
    # Mass is negative on this image: its box is no target; Nodule's is
    assert table.n_pairs == 1 and table.label.tolist() == [0]
    masks, has = table.masks(np.array([0]), 2)
    assert has.tolist() == [[True, False]] and float(masks[0, 1].sum()) == 0
    square = torch.from_numpy(prep.square(np.asarray(Image.open(index.frame["path"][0]))))
    image = to_unit(square[None])                                # (1, 1, 64, 64)
    assert _iou(image[0, 0], masks[0, 0]) > 0.8                  # letterbox: same place
    strong = Augment(p=1.0, degrees=30, translate=0.2, scale=0.3, shear=15, brightness=0, contrast=0)
    for seed in range(5):
        plain = strong(image, torch.Generator().manual_seed(seed))
        warped, moved = strong(image, torch.Generator().manual_seed(seed), masks)
        assert torch.equal(plain, warped)                        # the masks do not change the image's draws
        assert _iou(warped[0, 0], moved[0, 0]) > 0.7, seed       # and go where the rectangle went
        assert float(moved[0, 0].sum()) > 0 and float(moved[0, 1].sum()) == 0


def test_box_loss_moves_the_peak_not_the_level():
    masks = torch.zeros(1, 1, MASK_RES, MASK_RES)
    masks[0, 0, :16, :16] = 1                                    # the top-left quarter
    has = torch.ones(1, 1, dtype=torch.bool)
    on = torch.zeros(1, 1, 4, 4)
    on[0, 0, 0, 0] = 5.0                                         # peak on the box
    off = torch.zeros(1, 1, 4, 4)
    off[0, 0, 3, 3] = 5.0                                        # peak elsewhere
    assert float(box_loss(on, masks, has)) < 0.1 < float(box_loss(off, masks, has))
    assert float(box_loss(off + 7.0, masks, has)) == pytest.approx(float(box_loss(off, masks, has)), abs=1e-5)
    maps = off.clone().requires_grad_(True)
    box_loss(maps, masks, has).backward()
    assert maps.grad[0, 0, 0, 0] < 0 < maps.grad[0, 0, 3, 3]      # descent raises the box cell, lowers the peak
    assert float(box_loss(off, masks, torch.zeros(1, 1, dtype=torch.bool))) == 0.0   # no box: no term


def test_models_without_a_class_activation_map_are_refused():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64)
    with pytest.raises(ConfigError, match="average pooling and one linear classifier"):
        check_model(vit)
    check_model(timm.create_model("resnet18", pretrained=False, num_classes=2))   # a CNN passes


def _pointing_on_the_images_it_trained_on(run: Path, data: Path) -> tuple[float, int]:
    """The pointing game of the run's checkpoint over the images of its own training split (the run's
    splits.csv: the --max-images sample's train rows), and the number of boxes scored."""
    from cxrcore.data.readers import read_dataset
    from cxrcore.eval.localize import localize
    from cxrcore.predictor import Predictor

    split = pd.read_csv(run / "splits.csv", dtype=str)
    trained = set(split.loc[split["split"] == "train", "image_id"])
    index = read_dataset(data)
    index = index.subset(index.frame["image_id"].astype(str).isin(trained).to_numpy())
    overall = localize(Predictor(run / "checkpoint"), index, "all").overall()
    return overall["pointing"], overall["n"]


def test_training_with_box_supervision_points_at_the_boxes(tmp_path, monkeypatch, phantom, capsys):
    """Same data, seed and steps with and without the box term: with it, the maps point at the boxes of the
    images it trained on far more often (2 epochs of 200 images at 96 px; on the 113 boxes of its training
    images: 0.04 without, 0.39 with, on the development machine); the run's events record the term.

    `cxr train` runs through its main in this process (cxr_here), saving a Python start and a torch import per
    run; `cxr train` as a process: test_job_outcomes."""
    job_workspace(tmp_path, monkeypatch)
    base = ["--data", str(phantom), "--labels", "nih14", "--arch", "regnetx_002", "--pretrained", "none",
            "--epochs", "2", "--batch-size", "16", "--image-size", "96", "--output-stride", "16", "--max-images", "200",
            "--lr", "0.003",
            "--pos-weight", "--no-augment", "--workers", "1", "--threads", "1"]
    runs = {}
    for name, weight in (("plain", "0"), ("boxes", "1")):
        out = tmp_path / name
        code, _, err = cxr_here(capsys, "train", *base, "--box-loss", weight, "--out", out)
        assert code == 0, err[-3000:]
        runs[name] = out
    # the same images, split the same way: the two runs differ in the box term only
    assert (runs["plain"] / "splits.csv").read_text() == (runs["boxes"] / "splits.csv").read_text()
    events = [json.loads(line) for line in (runs["boxes"] / "events.jsonl").read_text().splitlines()]
    sup = [e for e in events if e["type"] == "box_supervision"]
    assert sup and sup[0]["weight"] == 1.0 and sup[0]["train_images_with_boxes"] > 20
    steps = [e for e in events if e["type"] == "step"]
    assert all("box" in e["loss_parts"] for e in steps)
    first, last = np.mean([e["loss_parts"]["box"] for e in steps[:5]]), np.mean([e["loss_parts"]["box"] for e in steps[-5:]])
    assert last < first
    from cxrcore.jobs.progress import progress_summary

    shown = progress_summary(events)["box_supervision"]   # what the Training page's caption says
    assert shown["images"] == sup[0]["train_images_with_boxes"] and shown["last"] == steps[-1]["loss_parts"]["box"]
    card = json.loads((runs["boxes"] / "checkpoint" / "card.json").read_text())
    assert card["training"]["config"]["box_loss"] == 1.0
    plain, n = _pointing_on_the_images_it_trained_on(runs["plain"], phantom)
    boxed, n_boxed = _pointing_on_the_images_it_trained_on(runs["boxes"], phantom)
    print(f"pointing on the {n} boxes of the images it trained on, plain vs box-supervised:", plain, boxed)
    assert n == n_boxed > 50
    assert boxed > plain + 0.1, (plain, boxed)


def test_box_supervision_needs_boxes_and_not_lora(tmp_path, monkeypatch, phantom, capsys):
    from cxrcore.jobs.config import check_config

    job_workspace(tmp_path, monkeypatch)
    data = tmp_path / "no-boxes"
    data.mkdir()
    (data / "images").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "images" / "a.png")
    pd.DataFrame({"Image Index": ["a.png"], "Finding Labels": ["Nodule"], "Patient ID": [1]}).to_csv(
        data / "Data_Entry_2017.csv", index=False)
    with pytest.raises(DataError, match="needs ground-truth boxes"):
        check_config({"data": str(data), "labels": "nih14", "box_loss": 1.0})
    with pytest.raises(ConfigError, match="LoRA"):
        check_config({"data": str(phantom), "labels": "nih14", "box_loss": 1.0, "mode": "lora"})
    code, _, err = cxr_here(capsys, "train", "--data", data, "--labels", "nih14", "--box-loss", "1", "--background")
    assert code == 2 and "needs ground-truth boxes" in err and "Traceback" not in err
    from cxrcore.jobs import JobStore

    assert JobStore().list() == []


def test_box_supervision_in_a_two_process_ddp_job(tmp_path, monkeypatch, app_home):
    """Under DDP (torchrun, 2 gloo processes) the model with its maps is what DDP wraps: the job trains with the box
    term on both ranks and succeeds."""
    import time

    from cxrcore.demo import APP_DATA_N
    from cxrcore.jobs import JobStore, refresh, submit, tail_log
    from cxrcore.train.trainer import read_events

    job_workspace(tmp_path, monkeypatch)
    data = app_home / "datasets" / f"phantom-chexpert-seed0-n{APP_DATA_N}"
    cfg = dict(data=str(data), labels="chexpert14", arch="regnetx_002", pretrained="none", epochs=1, batch_size=16,
               image_size=64, max_images=160, policy="ones", workers=1, threads=1, box_loss=1.0, nproc=2)
    store = JobStore()
    job = submit(cfg, name="ddp-boxes", store=store)
    t_end = time.monotonic() + 600
    while not (job := refresh(job.id, store)).ended:
        assert time.monotonic() < t_end, tail_log(job, 40)
        time.sleep(0.25)
    assert job.status == "succeeded", (job.error, tail_log(job, 40))
    events = read_events(Path(job.run_dir) / "events.jsonl")
    assert [e["world_size"] for e in events if e["type"] == "data"] == [2]
    assert [e for e in events if e["type"] == "box_supervision"]
    assert any(e["loss_parts"]["box"] > 0 for e in events if e["type"] == "step")
