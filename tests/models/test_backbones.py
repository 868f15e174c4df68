"""Backbones that work with their defaults (issue 13 §3): image size, normalisation and output stride come
from the model's own configuration; every architecture the Training form suggests trains with the form's
defaults; a size a model cannot take is refused at submit; one-channel input and dataset normalisation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrcore.data import phantom
from cxrcore.data.preprocess import IMAGENET_MEAN, Preprocess
from cxrcore.errors import ConfigError
from cxrcore.jobs.config import check_config
from cxrcore.models.registry import arch_facts, form_arch_defaults, preprocess_for
from cxrcore.predictor import Predictor
from cxrcore.train.config import SUGGESTED_ARCHS, TrainConfig, options
from cxrcore.train.trainer import read_events, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return phantom.generate(tmp_path_factory.mktemp("bb") / "nih", 40, domain="nih", size=64, seed=11, workers=1)


def form_config(arch: str, data: Path) -> dict:
    """What the Training form submits for ``arch`` with every other widget at its initial value (few images: 10 of
    the tiny phantom split 8 / 1 / 1, so one training step of a full batch of 8, a validation and a test pass)."""
    cfg = {o.name: o.initial for o in options() if not o.custom}
    cfg.update(data=str(data), arch=arch, labels="nih14", policy="zeros", epochs=1, max_images=10, batch_size=8,
               workers=1, threads=1)
    over, _ = form_arch_defaults(arch, cfg["image_size"], stride16=True)  # the form's "Output stride 16" is ticked
    cfg.update(over)
    if arch.startswith("xrv:"):
        cfg["pretrained"] = "none"  # their weights cannot be downloaded here; loading them is tested in test_library_models
    return cfg


def test_facts_come_from_the_models_own_configuration():
    vit = arch_facts("vit_small_patch16_224")
    assert vit["fixed_size"] and vit["input_size"] == 224 and not vit["output_stride"]
    assert vit["mean"] == (0.5, 0.5, 0.5)
    assert preprocess_for("vit_small_patch16_224")["mean"] == (0.5, 0.5, 0.5)
    dn = arch_facts("densenet121")
    assert not dn["fixed_size"] and not dn["output_stride"] and dn["mean"] == IMAGENET_MEAN
    assert arch_facts("regnetx_002")["output_stride"] and arch_facts("resnet18")["output_stride"]
    assert arch_facts("xrv:resnet50-res512-all")["input_size"] == 512
    over, notes = form_arch_defaults("vit_small_patch16_224", 160, stride16=True)
    assert over == {"arch_kwargs": {}, "image_size": 224} and len(notes) == 2
    assert form_arch_defaults("regnetx_002", 160, True) == ({"arch_kwargs": {"output_stride": 16}}, [])


# Suggested architectures whose network another trains already, built by the same code with the same form
# defaults: torchxrayvision's DenseNet121 weight sets differ only in their weights (not loaded here, see
# test_library_models), ViT-B/16 is ViT-S/16 wider and ResNet-34 is ResNet-18 deeper (same family, blocks, size,
# output stride, normalisation). They pass the submit check, which builds them and runs the configured size, in
# the test below; training them again would check nothing new at the cost of a ViT-B epoch, a ResNet-34 epoch and
# six DenseNet121 epochs.
SAME_NETWORK_AS = {**{a: "xrv:densenet121-res224-all" for a in SUGGESTED_ARCHS
                      if a.startswith("xrv:densenet121-res224-") and a != "xrv:densenet121-res224-all"},
                   "vit_base_patch16_224": "vit_small_patch16_224", "resnet34": "resnet18"}
TRAINED = [a for a in SUGGESTED_ARCHS if a not in SAME_NETWORK_AS]


@pytest.mark.parametrize("arch", SUGGESTED_ARCHS)
def test_every_suggested_architecture_passes_the_submit_check_with_the_form_defaults(arch, tiny):
    cfg = check_config(form_config(arch, tiny))   # builds the model on the meta device at the configured size
    assert cfg["image_size"] == arch_facts(arch)["input_size"] or not arch_facts(arch)["fixed_size"]
    if arch in SAME_NETWORK_AS:
        twin = check_config(form_config(SAME_NETWORK_AS[arch], tiny))
        assert {k: cfg[k] for k in ("image_size", "arch_kwargs", "normalize", "channels")} == \
            {k: twin[k] for k in ("image_size", "arch_kwargs", "normalize", "channels")}
        assert preprocess_for(arch) == preprocess_for(SAME_NETWORK_AS[arch])


@pytest.mark.parametrize("arch", TRAINED)
def test_every_suggested_architecture_trains_with_the_form_defaults(arch, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    cfg = check_config(form_config(arch, tiny))  # the submit check: builds on meta, runs the configured size
    card = train(TrainConfig.from_dict(cfg), tmp_path / "run")
    steps = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "step"]
    assert steps and all(np.isfinite(e["loss"]) for e in steps)
    assert card.preprocess["size"] == cfg["image_size"]
    p = Predictor(tmp_path / "run" / "checkpoint")
    assert p.predict_squares(np.zeros((1, cfg["image_size"], cfg["image_size"]), np.uint8)).shape == (1, 14)


def test_a_size_the_model_cannot_take_is_refused_at_submit(tiny):
    cfg = form_config("vit_small_patch16_224", tiny)
    cfg["image_size"] = 160
    with pytest.raises(ConfigError, match="takes 224 px images only"):
        check_config(cfg)
    cfg = form_config("densenet121", tiny)
    cfg["arch_kwargs"] = {"output_stride": 16}
    with pytest.raises(ConfigError, match="output_stride"):
        check_config(cfg)


def test_one_channel_input_and_dataset_normalisation(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    cfg = form_config("resnet18", tiny)
    cfg.update(channels=1, normalize="dataset")
    card = train(TrainConfig.from_dict(check_config(cfg)), tmp_path / "run")
    prep = Preprocess.from_dict(card.preprocess)
    assert prep.channels == 1 and prep.norm == "stats" and prep.stats_from == "dataset"
    assert card.model["kwargs"]["in_chans"] == 1
    ev = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "normalization"][0]
    # the mean and sd of the training images' gray values
    import pandas as pd

    from cxrcore.data.cache import build_cache
    from cxrcore.data.readers import read_dataset

    ids = set(pd.read_csv(tmp_path / "run" / "splits.csv", dtype=str).query("split == 'train'")["image_id"])
    ix = read_dataset(tiny)
    ix = ix.subset(ix.frame["image_id"].isin(ids).to_numpy())
    x = np.asarray(build_cache(ix, Preprocess(size=cfg["image_size"]), workers=1).array, dtype=np.float64) / 255
    assert ev["mean"][0] == pytest.approx(x.mean(), rel=1e-6) and ev["std"][0] == pytest.approx(x.std(), rel=1e-6)
    z = prep.normalize(torch.from_numpy(np.asarray(x * 255, np.uint8)))
    assert z.shape[1] == 1 and abs(float(z.mean())) < 0.05
    with pytest.raises(ConfigError, match="in_chans"):
        TrainConfig(data="x", arch="tv:resnet50", channels=1).validate()
    with pytest.raises(ConfigError, match="torchxrayvision's own scale"):
        TrainConfig(data="x", arch="xrv:densenet121-res224-all", normalize="dataset").validate()
