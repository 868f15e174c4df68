"""Model families (cxrcore.models.family): adding a model library is one family and one ``register`` line.

The toy family below is such a library: a real (tiny) torch network with timm's interface, pretrained
weights in a safetensors file read through the shared weights module, and its own preprocessing. Once
registered it is built, saved as a checkpoint, loaded back and predicted through the normal Predictor,
with no other change anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrcore.checkpoint import Card, load_checkpoint, read_card, save_checkpoint
from cxrcore.data.preprocess import Preprocess
from cxrcore.errors import ConfigError
from cxrcore.models import family, library, names, registry, weights
from cxrcore.models.family import ModelFamily, register
from cxrcore.predictor import Predictor

TOY_ENV = "CXR_TOY_WEIGHTS"  # the toy library's weights folder
LABELS = ["Effusion", "Edema", "Mass"]


class ToyNet(nn.Module):
    """One convolution, global average pooling and a linear head, behind timm's interface."""

    def __init__(self, num_labels: int, width: int):
        super().__init__()
        self.in_chans = 1
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(width, num_labels)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        self.head = nn.Linear(self.head.in_features, num_classes)

    def cam_layer(self) -> nn.Module:
        return self.act


class ToyFamily(ModelFamily):
    """``toy:tiny`` (4 channels) and ``toy:wide`` (8); pretrained weights: ``$CXR_TOY_WEIGHTS/<name>.safetensors``."""

    name = "toy"
    prefixes = ("toy",)
    hint = "toy:<size> for the toy library"
    WIDTHS = {"tiny": 4, "wide": 8}

    def names(self) -> list[str]:
        return list(self.WIDTHS)

    def weights_location(self, arch: str, name: str) -> weights.WeightsLocation:
        folder = Path(os.environ[TOY_ENV])
        f = f"{name}.safetensors"
        return weights.WeightsLocation(self.name, f, folder / f, folder, f"https://toy.invalid/{f}", TOY_ENV,
                                       (folder / f).is_file())

    def build(self, arch, name, num_labels, mode, kwargs, labels):
        if kwargs:
            raise ConfigError(f"toy models take no options; remove {kwargs}.")
        model = ToyNet(num_labels, self.WIDTHS[name])
        if mode == "hub":
            loc = weights.require(arch, self.weights_location(arch, name))
            state = weights.read_tensors(loc.path, arch, self.name)
            model.conv.load_state_dict({k[len("conv."):]: v for k, v in state.items() if k.startswith("conv.")})
        return model

    def facts(self, arch, name, out):
        out.update(input_size=32, one_channel=True, mean=(0.5,), std=(0.25,))
        return out

    def preprocess(self, arch, channels, facts):
        f = facts()
        return {"channels": 1, "norm": "stats", "mean": f["mean"], "std": f["std"], "stats_from": "model"}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy family registered (one line), its pretrained file in place; unregistered afterwards."""
    fam = register(ToyFamily())
    try:
        folder = tmp_path / "toy-weights"
        folder.mkdir()
        monkeypatch.setenv(TOY_ENV, str(folder))
        torch.manual_seed(1)
        pretrained = ToyNet(5, 4)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, str(folder / "tiny.safetensors"))
        yield fam, pretrained
    finally:
        family.unregister(fam.name)
        registry.arch_facts.cache_clear()


def test_a_registered_family_is_built_saved_loaded_and_predicted(toy, tmp_path):
    fam, pretrained = toy
    assert registry.parse_arch("toy:tiny") == ("toy", "tiny") and registry.library_of("toy:wide") == "toy"
    assert {"toy:tiny", "toy:wide"} <= set(registry.offered_names())
    with pytest.raises(ConfigError, match="toy:tiny, toy:wide"):
        registry.parse_arch("toy:huge")
    registry.check_architecture("toy:tiny", "hub")
    model = registry.build_model("toy:tiny", len(LABELS), "hub")
    assert isinstance(model, ToyNet) and model.get_classifier().out_features == len(LABELS)
    assert torch.equal(model.conv.weight, pretrained.conv.weight)  # the library's weights, read safely
    spec = registry.spec_for("toy:tiny", "hub")
    assert spec == {"library": "toy", "arch": "toy:tiny", "kwargs": {}, "pretrained": "hub"}
    prep = Preprocess(size=32, **registry.preprocess_for("toy:tiny"))
    assert prep.channels == 1 and prep.mean == (0.5,) and registry.arch_facts("toy:tiny")["input_size"] == 32

    save_checkpoint(tmp_path / "ck", model.state_dict(), Card(labels=LABELS, model=spec, preprocess=prep.to_dict()))
    card, state = load_checkpoint(tmp_path / "ck")
    rebuilt = registry.model_from_spec(card.model, len(card.labels))  # the family rebuilds it, no download
    assert isinstance(rebuilt, ToyNet)
    rebuilt.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))

    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    p = Predictor(tmp_path / "ck")
    pred = p.predict(image)
    x = prep.normalize(torch.from_numpy(prep.square(image))[None])
    with torch.no_grad():
        expect = torch.sigmoid(model.eval()(x))[0].numpy()
    assert isinstance(p.model, ToyNet) and read_card(tmp_path / "ck").model["library"] == "toy"
    np.testing.assert_allclose(pred.probs, expect, rtol=1e-5, atol=1e-6)
    assert pred.heatmaps.shape[0] == len(LABELS)  # Grad-CAM through the family's cam layer


def test_a_missing_pretrained_file_offline_names_it(toy, monkeypatch, tmp_path):
    monkeypatch.setenv(TOY_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(weights, "online", lambda url, timeout=weights.ONLINE_TIMEOUT_S: False)
    with pytest.raises(ConfigError) as err:
        registry.build_model("toy:tiny", 2, "hub")
    assert "tiny.safetensors" in str(err.value) and TOY_ENV in str(err.value)
    assert isinstance(registry.build_model("toy:tiny", 2, "none"), ToyNet)  # random weights when asked for


def test_names_and_prefixes_belong_to_one_family_only(toy):
    with pytest.raises(ValueError, match="taken"):
        register(type("Clash", (ToyFamily,), {"name": "clash", "prefixes": ("tv",)})())
    with pytest.raises(ValueError, match="new name"):
        register(ToyFamily())
    with pytest.raises(ConfigError, match="toy:<size> for the toy library"):
        registry.parse_arch("nope:resnet18")


def test_every_offered_name_parses_to_exactly_one_family():
    offered = registry.offered_names()
    assert {"resnet18", "tv:resnet50", "xrv:densenet121-res224-all", "clip:ViT-B-32/openai"} <= set(offered)
    assert len(offered) == len(set(offered))
    for name in offered:
        owners = [f.name for f in family.families() if f.claims(name)]
        assert len(owners) == 1, (name, owners)
        assert registry.parse_arch(name)[0] == owners[0], name
    # the two-network family has no names: its models come from checkpoints, found by their spec
    assert family.family_of_spec({"arch": "two_network"}).name == "two_network"


def test_the_library_hint_names_library_models():
    hint = names.library_hint()
    assert hint.startswith("a library model by name: xrv:densenet121-res224-all|")
    forms = [x.strip() for x in hint.split(": ", 1)[1].split(",")]
    full = forms[0].split("|")
    written = [full[0]] + [f"{names.XRV_PREFIX}{w}" for w in full[1:]] + forms[1:]
    assert sorted({library.library_ref(x) for x in written}) == sorted(names.XRV_NAMES)
