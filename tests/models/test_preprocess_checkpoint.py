"""Preprocessing geometry, safetensors checkpoints (never unpickled), atomic writes, head swap."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from cxrcore.checkpoint import Card, load_checkpoint, read_card, save_checkpoint
from cxrcore.data.preprocess import Preprocess
from cxrcore.errors import CheckpointError, ConfigError
from cxrcore.labels import CHEXPERT14, NIH14
from cxrcore.models.registry import build_model, swap_head


def test_pad_keeps_whole_image_and_unsquare_inverts_it():
    prep = Preprocess(size=64, fit="pad")
    img = np.zeros((100, 200), np.float32)
    img[20:40, 150:190] = 1.0  # a bright block at known fractions
    sq = prep.square(img)
    assert sq.shape == (64, 64) and sq.dtype == np.uint8
    g = prep.geometry(100, 200)
    assert (g.height, g.width, g.top, g.left) == (32, 64, 16, 0)
    assert sq[:16].max() == 0 and sq[48:].max() == 0  # letterbox bars
    back = prep.unsquare(sq.astype(np.float32) / 255, 100, 200)
    assert back.shape == (32, 64)
    ys, xs = np.nonzero(back > 0.5)
    assert abs(ys.min() / 32 - 0.2) < 0.05 and abs(xs.min() / 64 - 0.75) < 0.05


def test_crop_and_normalisations():
    prep = Preprocess(size=32, fit="crop")
    sq = prep.square(np.linspace(0, 1, 64 * 128, dtype=np.float32).reshape(64, 128))
    assert sq.shape == (32, 32)
    x = Preprocess(size=32).normalize(torch.from_numpy(sq)[None])
    assert x.shape == (1, 3, 32, 32)
    xr = Preprocess(size=32, norm="xrv", channels=1).normalize(torch.full((1, 32, 32), 255, dtype=torch.uint8))
    assert xr.shape == (1, 1, 32, 32) and float(xr.max()) == pytest.approx(1024.0)
    with pytest.raises(ConfigError):
        Preprocess(fit="stretch")


def _tiny_card(labels):
    return Card(labels=labels, model={"library": "timm", "arch": "regnetx_002", "kwargs": {}}, preprocess=Preprocess(64).to_dict())


def test_checkpoint_round_trip_never_unpickles(tmp_path, monkeypatch):
    model = build_model("regnetx_002", 3)
    save_checkpoint(tmp_path / "ck", model.state_dict(), _tiny_card(["A", "B", "C"]))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["card.json", "weights.safetensors"]
    json.loads((tmp_path / "ck" / "card.json").read_text())

    def forbidden(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    card, state = load_checkpoint(tmp_path / "ck")
    assert card.labels == ["A", "B", "C"]
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)


def test_damaged_or_missing_checkpoints(tmp_path):
    model = build_model("regnetx_002", 2)
    folder = save_checkpoint(tmp_path / "ck", model.state_dict(), _tiny_card(["A", "B"]))
    data = bytearray((folder / "weights.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (folder / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_card(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_card(tmp_path / "empty")


def test_interrupted_swap_falls_back_to_previous_checkpoint(tmp_path):
    model = build_model("regnetx_002", 2)
    folder = save_checkpoint(tmp_path / "ck", model.state_dict(), _tiny_card(["A", "B"]))
    # simulate a kill between the two renames of the next save: only ck.old is left
    folder.rename(tmp_path / "ck.old")
    assert read_card(tmp_path / "ck").labels == ["A", "B"]


def test_head_swap_copies_rows_of_shared_labels():
    model = build_model("regnetx_002", len(NIH14))
    old = model.get_classifier().weight.detach().clone()
    report = swap_head(model, NIH14, CHEXPERT14)
    head = model.get_classifier()
    assert head.out_features == 14
    assert report.copied == {"Cardiomegaly": "Cardiomegaly", "Edema": "Edema", "Consolidation": "Consolidation",
                             "Pneumonia": "Pneumonia", "Atelectasis": "Atelectasis", "Pneumothorax": "Pneumothorax",
                             "Pleural Effusion": "Effusion"}
    assert "Support Devices" in report.new and "Hernia" in report.dropped
    assert torch.equal(head.weight[CHEXPERT14.index("Pleural Effusion")], old[NIH14.index("Effusion")])


def test_unknown_architecture_and_offline_pretrained(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="Unknown architecture"):
        build_model("resnet9000", 3)
    # offline and nothing in the cache: a clear message naming where the weights go
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="cache"):
        build_model("regnetx_002", 3, pretrained="timm")
