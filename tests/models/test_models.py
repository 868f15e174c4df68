"""Backbones by name through timm, torchvision (tv:) and torchxrayvision (xrv:).

The pretrained paths are the libraries' own: a state dict (or, for xrv's DenseNets, xrv's pickled
module) is put where each library looks for it (torch.hub's checkpoints folder under TORCH_HOME,
the Hugging Face hub cache under HF_HUB_CACHE, xrv's cache folder), and the model built with
``pretrained="hub"`` must hold exactly those weights. Nothing here touches the network.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from library_files import XRV_ALL, XRV_RESNET
from cxrcore.checkpoint import Card, load_checkpoint, save_checkpoint
from cxrcore.errors import ConfigError
from cxrcore.explain.cam import forward_with_cams, gradcam_loop, scale_maps, supports_fast_cam, target_layer
from cxrcore.models import registry, weights, xrv_family
from cxrcore.models.registry import (build_model, check_architecture, model_from_spec, preprocess_for,
                                     resolve_pretrained, spec_for)

TV_RESNET18 = "resnet18-f37072fd.pth"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test runs offline: the reachability probe says no, and records that it was asked."""
    asked = []

    def offline(url, timeout=weights.ONLINE_TIMEOUT_S):
        asked.append(url)
        return False

    monkeypatch.setattr(weights, "online", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("torch.hub tried to download"))
    return asked


def _xin(arch: str, n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, preprocess_for(arch).get("channels", 3), size, size)


# ------------------------------------------------------------------------------ torchvision
def test_tv_hub_loads_the_file_in_torch_home(tmp_path, monkeypatch, no_network):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(ref.state_dict(), folder / TV_RESNET18)  # the exact name torchvision's DEFAULT weights use
    model = build_model("tv:resnet18", 3, "hub").eval()
    assert torch.equal(model.net.conv1.weight, ref.conv1.weight)
    assert torch.equal(model.net.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    assert model.get_classifier().out_features == 3
    assert no_network == []  # cached: the network was not even probed
    # "timm" stays an alias of "hub"
    again = build_model("tv:resnet18", 3, "timm")
    assert torch.equal(again.net.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_tv_hub_missing_offline_names_file_and_folder(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        build_model("tv:resnet18", 3, "hub")
    msg = str(err.value)
    assert TV_RESNET18 in msg and str(tmp_path / "hub" / "checkpoints") in msg and "TORCH_HOME" in msg
    assert "--pretrained none" in msg
    assert no_network == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


# ------------------------------------------------------------------------------------ timm
def test_timm_hub_loads_from_the_hf_cache(tmp_path, monkeypatch, no_network):
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    torch.manual_seed(1)
    ref = timm.create_model("resnet18", pretrained=False)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--timm--resnet18.a1_in1k"  # resnet18's default tag on the hub
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(repo / "snapshots" / commit / "model.safetensors"))
    model = build_model("resnet18", 3, "hub")
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    assert torch.equal(model.layer3[0].downsample[1].running_mean, ref.layer3[0].downsample[1].running_mean)
    assert model.get_classifier().out_features == 3
    assert no_network == []


def test_timm_hub_missing_offline_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        build_model("resnet18", 3, "hub")
    msg = str(err.value)
    assert "model.safetensors" in msg and str(tmp_path / "models--timm--resnet18.a1_in1k") in msg
    assert "HF_HUB_CACHE" in msg and "refs/main" in msg


# ------------------------------------------------------------------------------------- xrv
@pytest.fixture
def xrv_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(xrv_family.XRV_CACHE_ENV, str(tmp_path))
    return tmp_path


def test_xrv_densenet_hub_loads_xrv_file_and_copies_shared_rows(xrv_cache, no_network):
    import torchxrayvision as xrv

    torch.manual_seed(2)
    ref = xrv.models.DenseNet(weights=None)
    with torch.no_grad():
        ref.classifier.bias.normal_()
    torch.save(ref, xrv_cache / XRV_ALL)  # xrv's own format for its DenseNets: the pickled module
    labels = ["Pleural Effusion", "Cardiomegaly", "Hernia", "Foo"]
    model = build_model("xrv:densenet121-res224-all", 4, "hub", labels=labels).eval()
    assert no_network == []
    assert torch.equal(model.net.features.conv0.weight, ref.features.conv0.weight)
    pathologies = xrv.models.model_urls["densenet121-res224-all"]["labels"]
    head = model.get_classifier()
    assert head.out_features == 4
    for j, name in enumerate(["Effusion", "Cardiomegaly", "Hernia"]):
        i = pathologies.index(name)
        assert torch.equal(head.weight[j], ref.classifier.weight[i]) and head.bias[j] == ref.classifier.bias[i]
    assert not torch.equal(head.weight[3], ref.classifier.weight[pathologies.index("Atelectasis")])
    rep = model.head_swap_report
    assert rep.copied == {"Pleural Effusion": "Effusion", "Cardiomegaly": "Cardiomegaly", "Hernia": "Hernia"}
    assert rep.new == ["Foo"] and "" not in rep.dropped and "Atelectasis" in rep.dropped
    # raw logits for our labels: no sigmoid, no op_threshs, same features as xrv's own module
    x = torch.randn(2, 1, 64, 64) * 500
    ref.eval()
    with torch.no_grad():
        ours, theirs = model(x), ref(x)  # ref: no weights name, so no resizing and no calibration
    cols = [pathologies.index(n) for n in ("Effusion", "Cardiomegaly", "Hernia")]
    assert torch.allclose(ours[:, :3], theirs[:, cols], atol=1e-4)
    assert "net.op_threshs" not in model.state_dict()
    thr = xrv.models.model_urls["densenet121-res224-all"]["op_threshs"]
    assert model.xrv_op_threshs["Effusion"] == pytest.approx(thr[pathologies.index("Effusion")])


def test_xrv_resnet_hub_loads_and_rebuilds_with_the_same_keys(xrv_cache, no_network):
    torch.manual_seed(3)
    shell = xrv_family.random_module("resnet50-res512-all")
    torch.save(shell.model.state_dict(), xrv_cache / XRV_RESNET)  # xrv's ResNet file: a state dict
    model = build_model("xrv:resnet50-res512-all", 2, "hub", labels=["Mass", "Nodule"])
    assert no_network == []
    assert torch.equal(model.net.model.layer4[2].conv3.weight, shell.model.layer4[2].conv3.weight)
    assert model.head_swap_report.copied == {"Mass": "Mass", "Nodule": "Nodule"}
    rebuilt = model_from_spec(spec_for("xrv:resnet50-res512-all", "hub"), 2)
    a, b = model.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    rebuilt.load_state_dict(a)


def test_xrv_missing_offline_names_file_and_folder(xrv_cache):
    with pytest.raises(ConfigError) as err:
        build_model("xrv:densenet121-res224-nih", 3, "auto")  # auto = hub for xrv names
    msg = str(err.value)
    assert "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt" in msg
    assert str(xrv_cache) in msg and xrv_family.XRV_CACHE_ENV in msg


def test_xrv_random_init_only_when_asked():
    model = build_model("xrv:densenet121-res224-chex", 3, "none")
    assert model.head_swap_report is None and model.get_classifier().out_features == 3
    assert model.in_chans == 1


# --------------------------------------------------------------------- interface, specs
FAMILIES = [
    ("resnet18", {}), ("vit_small_patch16_224", {"img_size": 64}),
    ("tv:resnet18", {}), ("tv:densenet121", {}), ("tv:efficientnet_b0", {}), ("tv:convnext_tiny", {}),
    ("tv:regnet_x_400mf", {}), ("tv:mobilenet_v3_small", {}), ("tv:vit_b_16", {"image_size": 64}),
    ("xrv:densenet121-res224-all", {}), ("xrv:resnet50-res512-all", {}),
]


@pytest.mark.parametrize("arch,kwargs", FAMILIES)
def test_timm_interface_and_spec_round_trip(arch, kwargs, tmp_path):
    torch.manual_seed(4)
    model = build_model(arch, 3, "none", kwargs).eval()
    x = _xin(arch)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        assert logits.shape == (2, 3)
        assert feats.ndim == (3 if "vit" in arch else 4)
        assert torch.allclose(model.forward_head(feats), logits, atol=1e-5)
        head = model.get_classifier()
        assert isinstance(head, nn.Linear) and head.out_features == 3
        assert model.forward_head(feats, pre_logits=True).shape == (2, head.in_features)
    # the saved model comes back identical, through safetensors and the card's spec
    spec = spec_for(arch, "none", kwargs)
    save_checkpoint(tmp_path / "ck", model.state_dict(), Card(labels=["a", "b", "c"], model=spec, preprocess={}))
    card, state = load_checkpoint(tmp_path / "ck")
    rebuilt = model_from_spec(card.model, 3)
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), logits)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    with torch.no_grad():
        assert model(x).shape == (2, 5)


def test_specs_preprocess_and_pretrained_values():
    assert spec_for("tv:resnet50", "timm") == {"library": "torchvision", "arch": "tv:resnet50", "kwargs": {},
                                              "pretrained": "hub"}
    assert spec_for("xrv:densenet121-res224-all", "auto")["library"] == "xrv"
    assert spec_for("xrv:densenet121-res224-all", "auto")["pretrained"] == "hub"
    assert spec_for("resnet18", "auto") == {"library": "timm", "arch": "resnet18", "kwargs": {}, "pretrained": "none"}
    assert preprocess_for("xrv:resnet50-res512-all") == {"norm": "xrv", "channels": 1}
    assert preprocess_for("tv:resnet50") == {} and preprocess_for("resnet18") == {}
    assert resolve_pretrained("tv:resnet50", "timm") == "hub"
    with pytest.raises(ConfigError, match="pretrained must be"):
        resolve_pretrained("resnet18", "imagenet")
    # older cards: a bare name with its library
    assert type(model_from_spec({"library": "torchvision", "arch": "resnet18"}, 2)).__name__ == "TorchvisionWrapper"
    with pytest.raises(ConfigError, match="not supported"):
        model_from_spec({"library": "keras", "arch": "resnet18"}, 2)


@pytest.mark.parametrize("arch,pretrained", [("tv:vit_b_16", "hub"), ("tv:vit_b_16", "none"), ("tv:resnet50", "hub"),
                                             ("tv:regnet_y_128gf", "none"), ("vit_base_patch16_224", "hub"),
                                             ("xrv:resnet50-res512-all", "auto"), ("xrv:densenet121-res224-rsna", "hub"),
                                             ("xrv:densenet121-res224-mimic_ch", "none"), ("convnext_tiny", "timm")])
def test_check_architecture_on_meta(arch, pretrained, no_network):
    check_architecture(arch, pretrained)  # no weights, no download, no memory
    assert no_network == []


@pytest.mark.parametrize("arch,hint", [("tv:resnet5", "tv:resnet50"), ("xrv:densenet121-res224-foo", "xrv:densenet121-res224-nih"),
                                       ("vit_b_16", "tv:vit_b_16"), ("densenet121-res224-all", "xrv:densenet121-res224-all"),
                                       ("resnet5x", "resnet"), ("tv:squeezenet1_0", "supported torchvision families"),
                                       ("keras:resnet50", "prefix")])
def test_unknown_names_suggest_from_the_right_library(arch, hint):
    with pytest.raises(ConfigError, match=hint.replace("(", r"\(")):
        check_architecture(arch)


def test_options_a_model_refuses_are_config_errors():
    with pytest.raises(ConfigError, match="does not accept"):
        check_architecture("tv:resnet18", "none", {"output_stride": 16})
    with pytest.raises(ConfigError, match="no options"):
        check_architecture("xrv:densenet121-res224-all", "none", {"drop_rate": 0.1})


# --------------------------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("arch", ["tv:resnet18", "tv:densenet121", "xrv:densenet121-res224-all"])
def test_single_pass_gradcam_equals_pytorch_grad_cam_for_wrappers(arch):
    torch.manual_seed(5)
    model = build_model(arch, 3, "none").eval()
    assert supports_fast_cam(model)
    x = _xin(arch, 2, 96)
    logits, fast = forward_with_cams(model, x)
    assert torch.allclose(logits, model(x), atol=1e-5)
    assert fast.shape == (2, 3, 3, 3)
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        for j in range(3):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(j)] * 2)
            acts = cam.activations_and_grads.activations[0].numpy()
            grads = cam.activations_and_grads.gradients[0].numpy()
            weights = cam.get_cam_weights(x, [target_layer(model)], None, acts, grads)
            ref = scale_maps((weights[:, :, None, None] * acts).sum(1))
            assert np.allclose(ref, fast[:, j], atol=1e-3), (arch, j)


def test_gradcam_loop_for_heads_that_are_not_gap_linear():
    torch.manual_seed(6)
    model = build_model("tv:convnext_tiny", 2, "none").eval()
    assert not supports_fast_cam(model)  # LayerNorm between pooling and the linear layer
    logits, maps = gradcam_loop(model, torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 2) and maps.shape == (1, 2, 2, 2) and 0 <= maps.min() and maps.max() <= 1


def test_predictor_runs_an_xrv_checkpoint(tmp_path):
    from cxrcore.data.preprocess import Preprocess
    from cxrcore.predictor import Predictor

    arch = "xrv:densenet121-res224-all"
    model = build_model(arch, 2, "none")
    prep = Preprocess(64, "pad", **preprocess_for(arch))
    save_checkpoint(tmp_path / "ck", model.state_dict(),
                    Card(labels=["Effusion", "Mass"], model=spec_for(arch, "none"), preprocess=prep.to_dict()))
    p = Predictor(tmp_path / "ck")
    assert p.fast_cam  # one-channel input found, GAP + linear head
    pred = p.predict(np.random.default_rng(0).random((80, 70)).astype(np.float32))
    assert pred.probs.shape == (2,) and pred.heatmaps.shape[0] == 2 and pred.cam_grid == (2, 2)


# ------------------------------------------------------- building models in a server (threads)
def _plant_hub_files(tmp_path, monkeypatch) -> dict:
    """Pretrained files in each library's cache (one temp folder per library), as the libraries store them."""
    import timm
    import torchvision
    import torchxrayvision as xrv
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(xrv_family.XRV_CACHE_ENV, str(tmp_path / "xrv"))
    torch.manual_seed(11)
    ref_timm = timm.create_model("resnet18", pretrained=False)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ref_timm.state_dict().items()},
              str(repo / "snapshots" / commit / "model.safetensors"))
    ref_tv = torchvision.models.resnet18(weights=None)
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ref_tv.state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / TV_RESNET18)
    ref_xrv = xrv.models.DenseNet(weights=None)
    (tmp_path / "xrv").mkdir()
    torch.save(ref_xrv, tmp_path / "xrv" / XRV_ALL)
    return {"timm": ref_timm, "tv": ref_tv, "xrv": ref_xrv}


def _devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in list(model.parameters()) + list(model.buffers())}


def test_models_built_from_many_threads_at_once_are_each_right(tmp_path, monkeypatch, no_network):
    """App sessions are threads of one process: pretrained and random builds, and meta-device
    architecture checks (incl. the CPU-then-meta fallback of torchvision's RegNet), run at the same
    time; each model holds exactly what it should and nothing leaks between threads."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    refs = _plant_hub_files(tmp_path, monkeypatch)
    ref_timm, ref_tv, ref_xrv = refs["timm"].conv1.weight, refs["tv"].conv1.weight, refs["xrv"].features.conv0.weight

    def timm_hub():
        m = build_model("resnet18", 3, "hub")
        assert torch.equal(m.conv1.weight, ref_timm) and _devices(m) == {"cpu"}

    def timm_none():
        m = build_model("resnet18", 3, "none")
        assert not torch.equal(m.conv1.weight, ref_timm) and _devices(m) == {"cpu"}

    def tv_hub():
        m = build_model("tv:resnet18", 3, "hub")
        assert torch.equal(m.net.conv1.weight, ref_tv) and _devices(m) == {"cpu"}

    def tv_none():
        m = build_model("tv:resnet18", 3, "none")
        assert not torch.equal(m.net.conv1.weight, ref_tv) and _devices(m) == {"cpu"}

    def xrv_hub():
        m = build_model("xrv:densenet121-res224-all", 2, "hub", labels=["Mass", "Hernia"])
        assert torch.equal(m.net.features.conv0.weight, ref_xrv) and _devices(m) == {"cpu"}

    def xrv_none():
        m = build_model("xrv:densenet121-res224-all", 2, "none")
        assert not torch.equal(m.net.features.conv0.weight, ref_xrv) and _devices(m) == {"cpu"}

    def meta_check():
        check_architecture("tv:resnet50", "hub")
        check_architecture("vit_small_patch16_224", "none", {"img_size": 64})

    def meta_fallback():
        check_architecture("tv:regnet_x_400mf", "none")  # cannot run on meta: CPU, parameters moved at once

    def meta_model():
        with registry.on_meta():
            m = build_model("tv:densenet121", 2, "none")
        assert _devices(m) == {"meta"}
        with registry.params_on_meta():
            m = build_model("tv:regnet_x_400mf", 2, "none")
        assert _devices(m) == {"meta"}

    tasks = [timm_hub, timm_none, tv_hub, tv_none, xrv_hub, xrv_none, meta_check, meta_fallback, meta_model] * 3
    random.Random(0).shuffle(tasks)
    with ThreadPoolExecutor(max_workers=6) as pool:
        for future in [pool.submit(t) for t in tasks]:
            future.result()  # re-raises a failed check of any thread
    # nothing left behind on this thread either
    assert torch.get_default_device().type == "cpu" and torch.empty(1).device.type == "cpu"
    assert _devices(build_model("resnet18", 2, "none")) == {"cpu"}
    assert no_network == []


def test_building_changes_no_global_attribute(tmp_path, monkeypatch):
    """While a model is being built (observed from inside the build, at every parameter it
    registers), nn.Module's attributes, huggingface_hub's constants and torch's current-device
    global are exactly what they were before."""
    import huggingface_hub.constants as hf_constants
    import torch.utils._device as torch_device

    _plant_hub_files(tmp_path, monkeypatch)

    def snapshot() -> dict:
        return {**{f"nn.Module.{k}": v for k, v in vars(nn.Module).items()},
                **{f"hf.{k}": v for k, v in vars(hf_constants).items() if not k.startswith("__")},
                "torch.utils._device.CURRENT_DEVICE": torch_device.CURRENT_DEVICE}

    before = snapshot()
    seen = {"calls": 0, "changed": set()}

    def spy(module, name, param):
        seen["calls"] += 1
        now = snapshot()
        seen["changed"].update(k for k in before.keys() | now.keys()
                               if k not in before or k not in now or now[k] is not before[k])

    handle = nn.modules.module.register_module_parameter_registration_hook(spy)
    try:
        build_model("resnet18", 2, "hub")                                 # timm, cached file
        build_model("tv:resnet18", 2, "hub")                              # torchvision, cached file
        build_model("xrv:densenet121-res224-all", 2, "hub", labels=["Mass", "Hernia"])
        check_architecture("tv:densenet121")                             # on meta
        check_architecture("tv:regnet_x_400mf")                          # the CPU-then-meta fallback
    finally:
        handle.remove()
    assert seen["calls"] > 100
    assert seen["changed"] == set()
    assert snapshot().keys() == before.keys() and all(snapshot()[k] is before[k] for k in before)
