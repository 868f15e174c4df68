"""Model files of the model libraries made the way each library makes them and placed where it looks for them
(no model hub is reachable here): torchxrayvision's DenseNet saved whole, its ResNet-50 as a state dict. Random
weights; the file names are the library's own."""
from __future__ import annotations

from pathlib import Path

import torch

XRV_ALL = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
XRV_RESNET = "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"


def plant_densenet(folder: Path, file: str = XRV_ALL, seed: int = 0):
    """xrv's DenseNet with random weights, saved whole as the library saves its DenseNet files."""
    import torchxrayvision as xrv

    torch.manual_seed(seed)
    model = xrv.models.DenseNet(weights=None)
    with torch.no_grad():
        model.classifier.bias.normal_()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model, folder / file)
    return model.eval()


def plant_resnet(folder: Path, seed: int = 1):
    """xrv's ResNet file: the state dict of its torchvision ResNet-50 (1 input channel, 18 outputs)."""
    from cxrcore.models.xrv_family import random_module

    torch.manual_seed(seed)
    net = random_module("resnet50-res512-all")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.model.state_dict(), folder / XRV_RESNET)
    return net.model.eval()
