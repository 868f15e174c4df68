"""CLIP models through open_clip (``clip:...``): zero-shot from text prompts, fine-tuning, heatmaps.

Every model here is a tiny CLIP configuration (image 64 px, patch 16, width 32, 2 layers; text width 32,
2 layers, open_clip's own BPE tokenizer: vocab 49408, context 77) with random weights, made with
open_clip's own classes and written the way open_clip reads them:

* ``clip:local-dir:<folder>``: ``open_clip_config.json`` + ``open_clip_model.safetensors`` (open_clip's
  local-dir schema); it works across processes with nothing registered (a LoRA job's runner process builds
  its model from the name);
* ``clip:cxr-tiny-clip/test``: the same config registered as an open_clip model with a pretrained tag whose
  weights open_clip fetches from the Hugging Face hub (``hf_hub="cxr-test/tiny-clip/"``); its file is
  planted in the hub cache (``HF_HUB_CACHE``) as huggingface_hub keeps it, or left absent (offline message),
  or replaced by a malicious pickle (refused, nothing run).

Nothing touches the network (``CXR_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (FORMATS, NIH_SAMPLE, app_page, cxr_here, evaluate_on_page, kill_jobs, phantom_job_config,
                      wait_for)

TINY_CFG = {"embed_dim": 32,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TAG_MODEL = "cxr-tiny-clip"
HUB_REPO = "cxr-test/tiny-clip"


def tiny_clip(seed: int = 0):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    with torch.no_grad():  # a random logit scale of exp(log(1/0.07)) and distinct text embeddings
        model.logit_scale.fill_(np.log(10.0))
    return model.eval()


def plant_local_dir(folder: Path, seed: int = 0) -> str:
    """A folder as open_clip's local-dir schema reads it; returns its ``clip:`` name."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD}}))
    save_file({k: v.contiguous() for k, v in tiny_clip(seed).state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return f"clip:local-dir:{folder.resolve()}"


def hub_snapshot(cache: Path, repo: str = HUB_REPO) -> Path:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


@pytest.fixture
def clip_env(tmp_path, monkeypatch, app_home):
    """A fresh workspace (the built-in phantoms and the 250 real NIH films of tests/data linked in), empty open_clip
    caches, no network. Evaluations run on the real films: 50 in the test split, not the phantom's ~700."""
    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    for d in (app_home / "datasets").iterdir():
        (home / "datasets" / d.name).symlink_to(d, target_is_directory=True)
    (home / "datasets" / "nih-sample").symlink_to(NIH_SAMPLE, target_is_directory=True)
    hub = tmp_path / "hf-hub"
    hub.mkdir()
    monkeypatch.setenv("CXR_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("CXR_CLIP_CACHE_DIR", str(tmp_path / "clip-cache"))
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    name = plant_local_dir(tmp_path / "tiny-clip")
    monkeypatch.setenv("CXR_CLIP_MODELS", name)
    return {"home": home, "hub": hub, "name": name, "dir": tmp_path / "tiny-clip",
            "app_home": app_home}


@pytest.fixture
def tagged(monkeypatch):
    """The tiny config registered with open_clip as a model with a hub-hosted pretrained tag."""
    import open_clip
    from open_clip import factory, pretrained

    monkeypatch.setitem(factory._MODEL_CONFIGS, TAG_MODEL, json.loads(json.dumps(TINY_CFG)))
    monkeypatch.setitem(pretrained._PRETRAINED, TAG_MODEL, {"test": pretrained._pcfg(hf_hub=f"{HUB_REPO}/")})
    assert "test" in open_clip.list_pretrained_tags_by_model(TAG_MODEL)
    return f"clip:{TAG_MODEL}/test"


def _reference(model, tok, x, prompts: dict, label: str) -> float:
    """CLIP's zero-shot probability as open_clip computes it: softmax over (present, absent) of the
    logit-scaled cosine similarities of the image to each prompt set's mean text embedding."""
    with torch.no_grad():
        img = model.encode_image(x, normalize=True)[0]

        def mean(texts):
            e = model.encode_text(tok(texts), normalize=True).mean(0)
            return e / e.norm()

        s = model.logit_scale.exp()
        pair = torch.stack([s * img @ mean(prompts[label]["present"]), s * img @ mean(prompts[label]["absent"])])
        return float(torch.softmax(pair, 0)[0])


def _image(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((90, 110)) * 255).astype(np.float32)


# ---------------------------------------------------------------------------------- zero-shot
def test_listed_names_are_canonical_in_open_clips_registry(monkeypatch):
    """The pickers list LISTED without importing open_clip: each must be the name clip_ref makes of itself;
    a name added through CXR_CLIP_MODELS is checked, an unknown one left out."""
    from cxrcore.models import clip

    for name in clip.LISTED:
        assert clip.clip_ref(name) == name and clip.has_weights(name)
    monkeypatch.setenv(clip.EXTRA_ENV, "clip:vit-b-32/OPENAI, clip:NoSuchNet/x")
    assert clip.listed_names() == list(clip.LISTED)  # the extra is ViT-B-32/openai, already listed
    monkeypatch.setenv(clip.EXTRA_ENV, "clip:ViT-B-16/openai, clip:NoSuchNet/x")
    assert clip.listed_names() == [*clip.LISTED, "clip:ViT-B-16/openai"]


def test_zero_shot_predictor_equals_open_clip_and_card_records_prompts(clip_env):
    import open_clip

    from cxrcore.checkpoint import read_card
    from cxrcore.models.library import describe_card, library_folder, library_names
    from cxrcore.predictor import Predictor

    name = clip_env["name"]
    assert name in library_names() and "clip:ViT-B-32/laion2b_s34b_b79k" in library_names()
    p = Predictor(name)
    card = p.card
    zs = card.training["library"]["zero_shot"]
    assert card.labels[:2] == ["Atelectasis", "Cardiomegaly"] and len(card.labels) == 14
    assert zs["scoring"] == "softmax" and "softmax" in " ".join(card.notes)
    assert zs["prompts"]["Pleural_Thickening"]["present"][0] == "a chest X-ray showing pleural thickening."
    assert len(zs["prompts"]["Mass"]["present"]) == 4 and len(zs["prompts"]["Mass"]["absent"]) == 4
    assert card.training["library"]["version"] == open_clip.__version__
    assert card.preprocess["size"] == 64 and card.preprocess["mean"] == pytest.approx(CLIP_MEAN)
    assert card.model["library"] == "open_clip" and card.model["open_clip"]["vision_cfg"]["width"] == 32
    folder = library_folder(name)  # made once in the workspace, safetensors + card
    assert folder.parent == Path(clip_env["home"]) / "library"
    assert sorted(x.name for x in folder.iterdir()) == ["card.json", "weights.safetensors"]
    assert read_card(name).labels == card.labels
    shown = describe_card(card)
    assert "open_clip" in shown["source"] and "softmax" in shown["scoring"] and "mean [0.481, 0.458, 0.408]" in shown["input"]
    assert "0.5" in shown["thresholds"] and "Atelectasis" in shown["prompts"]

    ref = open_clip.create_model(f"local-dir:{clip_env['dir']}")  # open_clip's own loading, for comparison
    tok = open_clip.get_tokenizer(f"local-dir:{clip_env['dir']}")
    img = _image()
    pred = p.predict(img)
    x = p.prep.normalize(torch.from_numpy(p.prep.square(img))[None])
    for label in ("Atelectasis", "Mass", "No Finding" if "No Finding" in p.labels else "Hernia"):
        i = p.labels.index(label)
        assert pred.probs[i] == pytest.approx(_reference(ref, tok, x, zs["prompts"], label), abs=1e-5)
    # token Grad-CAM: class token dropped, 4x4 patch grid, per label, in the image frame
    assert pred.cam_grid == (4, 4) and pred.heatmaps.shape == (14, 64, 78)  # the image frame at the model's size
    assert "per label" in pred.cam_method and pred.heatmaps.max() > 0


def test_patch_text_similarity_map_and_gradcam_methods(clip_env):
    import open_clip

    from cxrcore.data.imageio import LoadedImage
    from cxrcore.explain.cam import cam_methods, gradcam_loop, scale_maps
    from cxrcore.predictor import Predictor

    p = Predictor(clip_env["name"])
    assert "PatchTextSimilarity" in cam_methods(p.model) and "PatchTextSimilarity" not in cam_methods(None)
    img = _image(1)
    x = p.prep.normalize(torch.from_numpy(p.prep.square(img))[None])
    # the similarity of each patch token (open_clip's ln_post'ed tokens, projected) to the label's text direction
    ref = open_clip.create_model(f"local-dir:{clip_env['dir']}").eval()
    ref.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = ref.visual(x)
        pe = torch.nn.functional.normalize(tokens @ ref.visual.proj, dim=-1)
    j = p.labels.index("Effusion")
    expect = scale_maps((pe[0] @ p.model.head.weight[j]).detach().reshape(1, 1, 4, 4).numpy())
    _, maps = gradcam_loop(p.model, x, [j], "PatchTextSimilarity")
    assert np.allclose(maps, expect, atol=1e-5)
    loaded = LoadedImage(img, "array", 8, img.shape)
    heat, _ = p.heatmap(loaded, "Effusion", "PatchTextSimilarity")
    assert heat.shape == (64, 78) and 0 <= heat.min() and heat.max() <= 1
    for method in ("GradCAM", "HiResCAM", "EigenCAM"):
        heat, _ = p.heatmap(loaded, "Effusion", method)
        assert heat.shape == (64, 78) and np.isfinite(heat).all()


def test_minmax_scoring_and_own_prompts(clip_env, tmp_path):
    from cxrcore.errors import ConfigError
    from cxrcore.models.clip import make_zero_shot
    from cxrcore.predictor import Predictor

    out = make_zero_shot(clip_env["name"], tmp_path / "zs", labels=["Effusion", "Pneumothorax", "Mass"],
                         scoring="minmax", templates={"present": ["an x-ray with {label}"], "absent": ["an x-ray, no {label}"],
                                                      "labels": {"Mass": {"present": ["a lung mass"], "absent": ["clear lungs"]}}})
    p = Predictor(out)
    zs = p.card.training["library"]["zero_shot"]
    assert zs["scoring"] == "minmax" and "not a probability" in zs["scoring_note"]
    assert zs["prompts"]["Effusion"] == {"present": ["an x-ray with effusion"], "absent": ["an x-ray, no effusion"]}
    assert zs["prompts"]["Mass"] == {"present": ["a lung mass"], "absent": ["clear lungs"]}
    probs = p.predict(_image(2), heatmaps=False).probs
    assert probs.max() == pytest.approx(1 - 1e-4, abs=1e-5) and probs.min() == pytest.approx(1e-4, abs=1e-5)
    with pytest.raises(ConfigError, match="no \\{label\\}"):
        make_zero_shot(clip_env["name"], tmp_path / "bad", templates={"present": ["a chest X-ray"]})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="scoring"):
        make_zero_shot(clip_env["name"], tmp_path / "bad", scoring="sigmoid")


# ------------------------------------------------------------------- the real loading path (tags)
def test_offline_without_the_file_names_file_folder_and_variable(clip_env, tagged, capsys):
    from cxrcore.errors import ConfigError
    from cxrcore.models.library import library_status
    from cxrcore.predictor import Predictor

    with pytest.raises(ConfigError) as err:
        Predictor(tagged)
    msg = str(err.value)
    assert "open_clip_pytorch_model.bin" in msg and str(clip_env["hub"]) in msg and "HF_HUB_CACHE" in msg
    assert "models--cxr-test--tiny-clip" in msg and "open_clip_model.safetensors" in msg and "offline" in msg
    assert not (clip_env["home"] / "library").exists() or not any((clip_env["home"] / "library").iterdir())
    # a real tag: the message is built from open_clip's own pretrained config (no file needed)
    st = library_status("clip:ViT-B-32/laion2b_s34b_b79k")
    assert not st["cached"] and st["hf_repo"] == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    with pytest.raises(ConfigError) as err:
        Predictor("clip:ViT-B-32/laion2b_s34b_b79k")
    msg = str(err.value)
    assert "open_clip_pytorch_model.bin" in msg and "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" in msg
    assert str(clip_env["hub"]) in msg and "HF_HUB_CACHE" in msg
    # the CLI says it in one line, exit 2 (its main here: anything but the CLI's own error would propagate)
    code, _, err = cxr_here(capsys, "predict", FORMATS / "00000001_000.png", "--checkpoint",
                            "clip:ViT-B-32/laion2b_s34b_b79k")
    assert code == 2 and err.startswith("error:") and "HF_HUB_CACHE" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="no pretrained tag"):
        Predictor("clip:ViT-B-32/no-such-tag")


@pytest.mark.parametrize("file", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_a_file_in_the_hub_cache_loads(clip_env, tagged, file):
    import open_clip
    from safetensors.torch import save_file

    from cxrcore.predictor import Predictor

    model = tiny_clip(seed=3)
    snap = hub_snapshot(clip_env["hub"])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if file.endswith(".safetensors"):
        save_file(state, str(snap / file))
    else:
        torch.save(state, snap / file)  # open_clip's .bin files: a state dict saved by torch.save
    p = Predictor(tagged)
    assert p.card.training["library"]["file"] == file
    tok = open_clip.get_tokenizer(TAG_MODEL)
    img = _image(4)
    x = p.prep.normalize(torch.from_numpy(p.prep.square(img))[None])
    prompts = p.card.training["library"]["zero_shot"]["prompts"]
    assert p.predict(img, heatmaps=False).probs[0] == pytest.approx(_reference(model, tok, x, prompts, p.labels[0]),
                                                                     abs=1e-5)


class _Marker:
    """A pickle whose unpickling would create a file (os.system: runs a shell command)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_malicious_pickle_in_the_cache_is_refused_without_running(clip_env, tagged, tmp_path):
    from cxrcore.errors import CheckpointError
    from cxrcore.predictor import Predictor

    marker = tmp_path / "PWNED"
    snap = hub_snapshot(clip_env["hub"])
    torch.save({"visual.conv1.weight": _Marker(marker)}, snap / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        Predictor(tagged)
    assert not marker.exists()
    msg = str(err.value)
    assert "Refused to load" in msg and "open_clip_pytorch_model.bin" in msg and "Nothing in it was run" in msg


# ---------------------------------------------------------------------------------- surfaces
def test_cli_predict_and_eval_zero_shot(clip_env, tmp_path, capsys):
    name = clip_env["name"]
    # `cxr` through its main (a local-dir model in another process with nothing registered: the LoRA job's runner)
    code, out, err = cxr_here(capsys, "predict", FORMATS / "00000001_000.png", "--checkpoint", name, "--json")
    assert code == 0, err[-3000:]
    out = json.loads(out)
    assert len(out["probabilities"]) == 14 and "open_clip" in out["trained_on"]
    code, out, err = cxr_here(capsys, "eval", "--checkpoint", name, "--data", str(NIH_SAMPLE), "--split", "test",
                               "--n-boot", "10", "--json", "--out", str(tmp_path / "ev"))
    assert code == 0, err[-3000:]
    metrics = json.loads(out)
    assert "Effusion" in metrics["per_label"]
    # your own labels, prompts and scoring: a zero-shot checkpoint usable like any other
    (tmp_path / "prompts.json").write_text(json.dumps({"labels": {"Mass": {"present": ["a lung mass"],
                                                                           "absent": ["clear lungs"]}}}))
    code, out, err = cxr_here(capsys, "zeroshot", name, "--out", str(tmp_path / "zs"), "--labels",
                               "Effusion,Mass,Pneumothorax", "--present", "an x-ray with {label}", "--absent",
                               "an x-ray without {label}", "--prompts", str(tmp_path / "prompts.json"),
                               "--scoring", "minmax")
    assert code == 0, err[-3000:]
    card = json.loads((tmp_path / "zs" / "card.json").read_text())
    zs = card["training"]["library"]["zero_shot"]
    assert zs["scoring"] == "minmax" and zs["prompts"]["Mass"]["present"] == ["a lung mass"]
    assert zs["prompts"]["Effusion"]["absent"] == ["an x-ray without effusion"]
    code, out, err = cxr_here(capsys, "predict", str(FORMATS / "00000001_000.png"), "--checkpoint",
                               str(tmp_path / "zs"), "--json")
    assert code == 0 and len(json.loads(out)["probabilities"]) == 3, err[-2000:]
    code, out, err = cxr_here(capsys, "zeroshot", name, "--out", str(tmp_path / "bad"), "--present", "no placeholder")
    assert code == 2 and "{label}" in err and not (tmp_path / "bad").exists()


def _page(name: str):
    return app_page(name, 600)


def test_compare_page_with_the_zero_shot_model(clip_env, shipped):
    name = clip_env["name"]
    at = _page("compare").run()
    at.selectbox(key="compare_base").set_value(f"{name} (library)").run()
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert table["baseline p"].notna().sum() == 14
    assert "PatchTextSimilarity" in at.selectbox(key="compare_method").options
    at.selectbox(key="compare_method").set_value("PatchTextSimilarity").run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "open_clip" in text and "PatchTextSimilarity" in text and "softmax over each label" in text  # scoring shown


def test_lora_fine_tune_as_a_job_and_offline_rebuild(clip_env, tmp_path):
    import shutil

    from cxrcore.checkpoint import load_checkpoint, read_card
    from cxrcore.jobs import JobStore, refresh, submit, tail_log
    from cxrcore.predictor import Predictor

    phantom = next(p for p in (clip_env["app_home"] / "datasets").iterdir() if p.name.startswith("phantom-nih"))
    store = JobStore()
    try:
        job = submit(phantom_job_config(phantom, init=clip_env["name"], mode="lora", lora_r=4, max_images=48),
                     name="clip-lora", store=store)

        def ended():
            j = refresh(job, store)
            return j if j.ended else None

        job = wait_for(ended, deadline_s=400, what="the CLIP LoRA job to end")
        assert job.status == "succeeded", tail_log(job, 60)
    finally:
        kill_jobs(clip_env["home"])
    run = Path(job.run_dir)
    assert sorted(x.name for x in (run / "checkpoint").iterdir()) == ["card.json", "weights.safetensors"]
    card = read_card(run / "checkpoint")
    assert card.training["config"]["mode"] == "lora" and card.model["library"] == "open_clip"
    assert "open_clip" in card.trained_on["summary"] and "phantom" in card.trained_on["summary"]
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    swap = next(e for e in events if e["type"] == "head_swap")
    assert set(swap["copied"]) >= {"Effusion", "Mass"}  # the head starts from the zero-shot text rows
    _, state = load_checkpoint(run / "checkpoint")
    assert not any("lora" in k for k in state)  # merged: a plain CLIP image tower + head
    # rebuilt from the card alone: the local open_clip folder is gone, nothing is downloaded
    shutil.rmtree(clip_env["dir"])
    pred = Predictor(run / "checkpoint").predict(_image(5))
    assert pred.heatmaps.shape[0] == 14 and pred.cam_grid == (4, 4)


def test_lora_targets_head_mode_and_resume(clip_env, tmp_path):
    """LoRA goes on the attention (q/k/v in_proj and out_proj of nn.MultiheadAttention); a head-only run
    interrupted after its first epoch resumes to the end."""
    from peft.tuners.lora.layer import MultiheadAttention as LoraMHA

    from cxrcore.checkpoint import read_card
    from cxrcore.models.registry import model_from_spec
    from cxrcore.train.config import TrainConfig
    from cxrcore.train.lora import apply_lora
    from cxrcore.train.state import state_path
    from cxrcore.train.trainer import train

    card = read_card(clip_env["name"])
    model = model_from_spec(card.model, 14)
    wrapped = apply_lora(model, 4)
    adapted = [n for n, m in wrapped.named_modules() if isinstance(m, LoraMHA)]
    assert adapted == [f"base_model.model.visual.transformer.resblocks.{i}.attn" for i in range(2)]
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("in_proj" in n or "lora_A" in n for n in trainable) and not any(".mlp." in n for n in trainable)

    phantom = next(p for p in (clip_env["app_home"] / "datasets").iterdir() if p.name.startswith("phantom-nih"))
    cfg = TrainConfig.from_dict(phantom_job_config(phantom, init=clip_env["name"], mode="head", epochs=2,
                                                   max_images=40, lr=1e-2))
    out = tmp_path / "run"
    train(cfg, out, should_stop=lambda: state_path(out) is not None)  # stops at the start of epoch 2
    assert state_path(out) is not None
    final = train(cfg, out, resume=True)
    assert final.training["epochs_run"] == 2
    assert any(json.loads(x)["type"] == "resume" for x in (out / "events.jsonl").read_text().splitlines())


def test_train_with_a_clip_arch_and_its_checks(clip_env, tmp_path):
    """``--arch clip:...``: pretrained weights with the zero-shot head for the labels (mode full); a min-max
    zero-shot model as --init is fine-tuned as log-odds; sizes and options CLIP cannot take are refused."""
    from cxrcore.errors import ConfigError
    from cxrcore.models.clip import make_zero_shot
    from cxrcore.models.registry import check_architecture
    from cxrcore.train.config import TrainConfig
    from cxrcore.train.trainer import train

    name = clip_env["name"]
    with pytest.raises(ConfigError, match="takes 64 px images only"):
        check_architecture(name, "auto", {}, size=128)
    with pytest.raises(ConfigError, match="one option, scoring"):
        check_architecture(name, "none", {"in_chans": 1})
    check_architecture(name, "auto", {}, size=64)
    phantom = next(p for p in (clip_env["app_home"] / "datasets").iterdir() if p.name.startswith("phantom-nih"))
    cfg = TrainConfig.from_dict(phantom_job_config(phantom, arch=name, pretrained="auto", mode="full", max_images=32))
    card = train(cfg, tmp_path / "run")
    assert card.model["library"] == "open_clip" and card.preprocess["mean"] == pytest.approx(CLIP_MEAN)
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert set(next(e for e in events if e["type"] == "head_swap")["copied"]) == set(card.labels)
    zs = make_zero_shot(name, tmp_path / "mm", scoring="minmax")
    cfg = TrainConfig.from_dict(phantom_job_config(phantom, init=str(zs), mode="head", max_images=32))
    card = train(cfg, tmp_path / "run2")
    assert card.model["kwargs"]["scoring"] == "softmax"


def test_evaluation_and_thresholds_pages_on_the_zero_shot_model(clip_env):
    name = clip_env["name"]
    at = evaluate_on_page(f"{name} (library)")
    assert at.session_state["eval_params"]["ckpt"] == name
    at = _page("thresholds")
    # chosen before the first run, which would otherwise tune the default model on the phantom's 350 val images
    at.session_state["thr_model"], at.session_state["thr_data"] = f"{name} (library)", "nih-sample"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="thr_model").value == f"{name} (library)"
    table = at.dataframe[0].value
    assert set(table["threshold origin"]) == {"library default"} and set(table["threshold"]) == {0.5}
    first = list(table["label"])[0]
    at.slider(key=f"thr::{name}::{first}").set_value(0.3).run()
    at.button(key="thr_save").click().run()
    assert not at.exception
    from cxrcore.checkpoint import read_card
    from cxrcore.models.library import slug

    assert read_card(clip_env["home"] / "checkpoints" / slug(name)).thresholds[first] == 0.3
    assert read_card(name).thresholds[first] == 0.5  # the library model keeps its own
