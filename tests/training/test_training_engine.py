"""The fine-tuning engine: losses, sampling, augmentation, LoRA, hierarchy, schedules, early stopping,
exact resume, and data-parallel training (torchrun, gloo, 2 processes) on phantom data."""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from conftest import cxr_here, is_held, workspace_env
from cxrcore.checkpoint import load_checkpoint, read_card
from cxrcore.errors import CheckpointError, ConfigError
from cxrcore.models.heads import combine
from cxrcore.models.registry import build_model, model_from_spec
from cxrcore.train.augment import Augment
from cxrcore.train.lora import apply_lora, default_targets, merged_state_dict
from cxrcore.train.losses import (GATE_LABEL, Criterion, hierarchy_pairs, hierarchy_penalty, masked_bce,
                                  masked_focal, pos_weight_from, two_stage_targets)
from cxrcore.train.sampling import combination_codes, epoch_order, epoch_size, oversample_rows
from cxrcore.train.state import load_state, state_path
from cxrcore.train.trainer import TrainConfig, read_events, train

REPO = Path(__file__).resolve().parents[2]
nan = float("nan")


@pytest.fixture(scope="module")
def chex(app_home) -> Path:
    from cxrcore.demo import app_data

    with workspace_env(str(app_home)):
        return app_data()["chexpert"]


def small(data: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), labels="chexpert14", epochs=2, batch_size=16, image_size=48, max_images=160,
                policy="ignore", workers=1, threads=1, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def one_epoch_run(chex, tmp_path_factory) -> Path:
    """One epoch of ``small(chex, epochs=1, pos_weight=True)``, trained once for the tests that read it or work
    on a copy of its run folder."""
    base = tmp_path_factory.mktemp("one_epoch")
    with workspace_env(base / "home"):
        train(small(chex, epochs=1, pos_weight=True), base / "run")
    return base / "run"


# --------------------------------------------------------------------------- losses

def test_masked_losses_ignore_unknown_labels():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    y = torch.tensor([[1.0, nan, 0.0], [0.0, 1.0, nan]])
    known = ~torch.isnan(y)
    want = F.binary_cross_entropy_with_logits(logits[known], y[known])
    assert torch.isclose(masked_bce(logits, y), want)
    pw = torch.tensor([3.0, 2.0, 1.0])
    full = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y), pos_weight=pw, reduction="none")
    assert torch.isclose(masked_bce(logits, y, pw), full[known].mean())
    focal = sigmoid_focal_loss(logits, torch.nan_to_num(y), alpha=-1, gamma=2.0, reduction="none")[known].mean()
    assert torch.isclose(masked_focal(logits, y, 2.0), focal)
    assert masked_bce(logits, torch.full_like(y, nan)).item() == 0.0


def test_pos_weight_is_negatives_over_positives():
    t = np.array([[1, 0], [0, 0], [0, nan], [0, 1]], dtype=np.float32)
    w = pos_weight_from(t)
    assert w[0] == pytest.approx(3.0) and w[1] == pytest.approx(2.0)
    assert pos_weight_from(np.zeros((4, 1), np.float32))[0] == 1.0  # no positives: neutral


def test_hierarchy_penalty_punishes_children_above_parents():
    labels = ["Lung Opacity", "Edema", "Pneumonia", "Consolidation", "Cardiomegaly", "Enlarged Cardiomediastinum"]
    pairs = hierarchy_pairs(labels)
    assert (0, 1) in pairs and (3, 2) in pairs and (5, 4) in pairs and (0, 2) in pairs
    assert hierarchy_pairs(["Edema", "Atelectasis"]) == []  # no parent in the label set
    consistent = torch.tensor([[3.0, 1.0, -1.0, 0.0, -2.0, -1.0]])
    assert hierarchy_penalty(consistent, pairs).item() == 0.0
    child_high = torch.tensor([[-3.0, 3.0, -1.0, 0.0, -2.0, -1.0]])
    pen = hierarchy_penalty(child_high, pairs).item()
    p = torch.sigmoid(child_high[0])
    want = sum(max(0.0, float(p[c] - p[a])) for a, c in pairs) / len(pairs)
    assert pen == pytest.approx(want, rel=1e-5) and pen > 0
    crit = Criterion("bce", labels, hierarchy="penalty", hierarchy_weight=2.0)
    y = torch.zeros(1, 6)
    assert crit(child_high, y).item() == pytest.approx(masked_bce(child_high, y).item() + 2 * pen, rel=1e-5)
    assert set(crit.parts) == {"base", "hierarchy"}


def test_two_stage_gate_ignores_no_finding_on_real_nih_rows():
    """Real label rows (the NIH fixture) under the CheXpert-14 label space: a "No Finding" film is a
    normal film for the gate (target 0), never a finding; its own column trains on every image."""
    from cxrcore.data.readers import read_dataset
    from cxrcore.labels import resolve_label_space

    index = read_dataset(REPO / "tests" / "data" / "nih-sample")
    labels = resolve_label_space("chexpert14")
    t = index.targets(labels, "zeros")
    out = two_stage_targets(t, labels)
    normal = index.frame["No Finding"].eq(1).to_numpy()  # the table's "No Finding" rows
    assert normal.any() and (~normal).any()
    assert (out[normal, -1] == 0).all()
    nf = labels.index("No Finding")
    np.testing.assert_array_equal(out[:, nf], t[:, nf])          # not masked to abnormal images
    findings = [j for j, x in enumerate(labels) if x != "No Finding"]
    abnormal = (t[:, findings] == 1).any(axis=1)
    assert (out[abnormal, -1] == 1).all()
    # before the fix the gate counted "No Finding" as a finding: every normal film opened it
    assert (two_stage_targets(t)[normal, -1] == 1).all()


def test_hard_gate_and_one_threshold_from_the_card():
    spec = {"two_stage": {"gate_threshold": 0.5, "gate_label": GATE_LABEL, "mode": "hard", "exempt": [0]}}
    probs = np.array([[0.7, 0.4, 0.9], [0.7, 0.4, 0.2]], dtype=np.float32)
    got = combine(probs, spec)
    np.testing.assert_allclose(got[1], [0.7, 0.0, 0.2])      # below the gate: not assessed; column 0 exempt
    np.testing.assert_allclose(got[0], probs[0])
    # the card's threshold of the gate label is the one threshold (it overrides the spec's)
    np.testing.assert_allclose(combine(probs, spec, {GATE_LABEL: 0.1})[1], probs[1])
    np.testing.assert_allclose(combine(torch.from_numpy(probs), spec).numpy(), got)


def test_two_stage_targets_and_combination():
    t = np.array([[1, 0], [0, 0], [0, nan], [nan, 1]], dtype=np.float32)
    out = two_stage_targets(t)
    np.testing.assert_array_equal(out[:, -1][[0, 1, 3]], [1, 0, 1])
    assert np.isnan(out[2, -1])                     # unknown and no positive: not called normal
    assert np.isnan(out[1, :2]).all()               # normal images do not train the disease head
    np.testing.assert_array_equal(out[0, :2], [1, 0])
    spec = {"two_stage": {"gate_threshold": 0.5}}
    probs = np.array([[0.8, 0.4, 0.9], [0.8, 0.4, 0.2]], dtype=np.float32)
    got = combine(probs, spec)
    np.testing.assert_allclose(got[0], [0.8, 0.4, 0.9])                # gate says abnormal: disease head speaks
    np.testing.assert_allclose(got[1], [0.16, 0.08, 0.2], rtol=1e-6)   # below the gate: scaled by its belief
    np.testing.assert_allclose(combine(torch.from_numpy(probs), spec).numpy(), got)
    assert combine(probs, {"arch": "x"}) is probs


# --------------------------------------------------------------------------- sampling, augmentation

def test_oversampling_reaches_the_minimum_per_combination():
    t = np.zeros((50, 3), np.float32)
    t[:2, 0] = 1           # combination "0": 2 rows
    t[2:5, 1] = 1          # "1": 3 rows
    rows = np.arange(50)
    out = oversample_rows(rows, t, 10, torch.Generator().manual_seed(0))
    codes = combination_codes(t[out])
    assert (codes == "0").sum() == 10 and (codes == "1").sum() == 10 and (codes == "").sum() == 45
    assert set(out) == set(rows)
    assert epoch_size(rows, t, 10) == len(out) and epoch_size(rows, t, 0) == 50


def test_weighted_sampler_draws_rare_findings_more_often():
    t = np.zeros((1000, 2), np.float32)
    t[:20, 0] = 1          # 2 % prevalence
    t[20:520, 1] = 1       # 50 %
    gen = torch.Generator().manual_seed(0)
    order = epoch_order(np.arange(1000), t, "weighted", gen)
    rare = np.isin(order, np.arange(20)).mean()
    assert len(order) == 1000 and 0.2 < rare < 0.5  # ~1/3 instead of 2 %
    again = epoch_order(np.arange(1000), t, "weighted", torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(order, again)
    with pytest.raises(ConfigError, match="sampler"):
        epoch_order(np.arange(3), t[:3], "balanced", gen)


def test_augmentation_is_seeded_and_respects_probability():
    x = torch.rand(6, 1, 32, 32)
    assert torch.equal(Augment(p=0.0)(x, torch.Generator().manual_seed(0)), x)
    a = Augment(p=1.0, shear=10, brightness=0.2, contrast=0.3)
    y1, y2 = a(x, torch.Generator().manual_seed(3)), a(x, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2) and not torch.equal(y1, x)
    assert y1.shape == x.shape and 0 <= y1.min() and y1.max() <= 1
    with pytest.raises(ConfigError, match="rotate|Unknown"):
        Augment.from_dict({"rotate": 5})
    with pytest.raises(ConfigError, match="degrees"):
        Augment(degrees=90)


# --------------------------------------------------------------------------- LoRA

def test_lora_targets_convs_for_cnns_and_attention_for_vit():
    cnn = build_model("resnet18", 3)
    targets = default_targets(cnn)
    assert "conv1" not in targets and "layer1.0.conv1" in targets and "layer4.1.conv2" in targets
    vit = build_model("vit_tiny_patch16_224", 3, kwargs={"img_size": 32})
    vt = default_targets(vit)
    assert vt and all(n.endswith(("attn.qkv", "attn.proj")) for n in vt)
    peft_vit = apply_lora(vit, r=4)
    trainable = {n for n, p in peft_vit.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and "attn.qkv" in n for n in trainable)
    assert all("lora_" in n or "head" in n for n in trainable)


def test_lora_merged_checkpoint_reproduces_the_adapted_model():
    torch.manual_seed(0)
    model = build_model("resnet18", 4)
    lora = apply_lora(model, r=4, alpha=8)
    with torch.no_grad():  # give the adapters non-zero weights (B starts at zero)
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    lora.eval()
    x = torch.rand(2, 3, 64, 64)
    want = lora(x)
    plain = model_from_spec({"library": "timm", "arch": "resnet18", "kwargs": {}}, 4)
    plain.load_state_dict(merged_state_dict(lora))
    plain.eval()
    torch.testing.assert_close(plain(x), want, rtol=1e-4, atol=1e-4)
    assert any("lora_" in n for n, _ in lora.named_parameters())  # training model still has its adapters
    with pytest.raises(ConfigError, match="No layer"):
        apply_lora(build_model("resnet18", 2), targets=".*nothing_here")


# --------------------------------------------------------------------------- whole runs

def test_lora_run_trains_few_parameters_and_saves_a_plain_checkpoint(chex, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    card = train(small(chex, mode="lora", lora_r=4, epochs=1), tmp_path / "run")
    t, n = card.training["trainable_params"], card.training["total_params"]
    assert 0 < t < 0.2 * n
    card2, state = load_checkpoint(tmp_path / "run")
    assert not any("lora" in k for k in state)
    model = model_from_spec(card2.model, len(card2.labels))
    model.load_state_dict(state)  # strict: exactly the plain architecture
    data = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "data"][0]
    assert data["mode"] == "lora" and data["trainable_params"] == t


def test_two_stage_run_has_a_gate_label_used_at_inference(chex, tmp_path, monkeypatch):
    from cxrcore.predictor import Predictor

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    card = train(small(chex, hierarchy="two_stage", gate_threshold=0.6, epochs=1), tmp_path / "run")
    assert card.labels[-1] == GATE_LABEL
    # one gate threshold, tuned on validation (max F1 of the gate), in the card's thresholds and the spec
    ts = card.model["two_stage"]
    assert ts["gate_threshold"] == card.thresholds[GATE_LABEL] and ts["tuned_on"].startswith("val")
    assert ts["exempt"] == [[i for i, x in enumerate(card.labels) if x == "No Finding"][0]] and ts["mode"] == "soft"
    p = Predictor(tmp_path / "run" / "checkpoint")
    # The card's test AUROC is of what the model outputs (the combination) against every test image's findings,
    # a normal film a negative for each, as `cxr eval` scores it; not of abnormal images only (the disease
    # outputs' training mask).
    import pandas as pd

    from cxrcore.data.readers import read_dataset
    from cxrcore.eval.metrics import per_label_auroc
    from cxrcore.eval.predictions import predict_split

    splits = pd.read_csv(tmp_path / "run" / "splits.csv", dtype=str)  # the run's own test images
    index = read_dataset(chex)
    index = index.subset(index.frame["image_id"].isin(set(splits.loc[splits["split"] == "test", "image_id"])).to_numpy())
    test = predict_split(p, index, "all", policy="ignore", use_cache=False)
    expected = per_label_auroc(test.targets, test.probs)
    got = np.array([np.nan if card.metrics["test"]["auroc"][x] is None else card.metrics["test"]["auroc"][x]
                    for x in card.labels])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    masked = per_label_auroc(two_stage_targets(test.targets[:, :-1], card.labels[:-1]), test.probs)
    assert not np.allclose(np.nan_to_num(masked[:-1]), np.nan_to_num(expected[:-1]))
    squares = np.stack([p.prep.square(np.random.default_rng(i).random((80, 80)).astype(np.float32) * 255)
                        for i in range(4)])
    probs = p.predict_squares(squares)
    raw = torch.sigmoid(p.model(p.prep.normalize(torch.from_numpy(squares)))).detach().numpy()
    np.testing.assert_allclose(probs, combine(raw, card.model), rtol=1e-5, atol=1e-6)
    assert probs.shape == (4, len(card.labels))
    np.testing.assert_allclose(p.predict_squares(squares, raw=True), raw, rtol=1e-5, atol=1e-6)
    # editing the gate's threshold (as the Thresholds page saves it) changes the combination
    from cxrcore.eval.thresholds import save_thresholds

    save_thresholds(tmp_path / "run" / "checkpoint", {GATE_LABEL: 1.0})
    p2 = Predictor(tmp_path / "run" / "checkpoint")
    np.testing.assert_allclose(p2.predict_squares(squares), combine(raw, card.model, t=1.0), rtol=1e-5, atol=1e-6)


def test_penalty_focal_weighted_plateau_and_accumulation_run(chex, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    cfg = small(chex, hierarchy="penalty", loss="focal", sampler="weighted", oversample_min=5, schedule="plateau",
                plateau_patience=0, accum_steps=2, augment_options={"p": 0.5, "shear": 8})
    card = train(cfg, tmp_path / "run")
    ev = read_events(tmp_path / "run" / "events.jsonl")
    steps = [e for e in ev if e["type"] == "step"]
    assert steps and all("hierarchy" in e["loss_parts"] for e in steps)
    data = [e for e in ev if e["type"] == "data"][0]
    assert data["epoch_rows"] >= data["train"]   # oversampling adds rows
    assert len(card.training["history"]) == 2
    assert card.training["config"]["loss"] == "focal"


def test_pos_weight_run_logs_the_weights(one_epoch_run):
    data = [e for e in read_events(one_epoch_run / "events.jsonl") if e["type"] == "data"][0]
    assert len(data["pos_weight"]) == 14 and max(data["pos_weight"]) > 1


def test_early_stopping_stops_when_validation_does_not_improve(chex, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    # A learning rate this small leaves the model (and its AUROC) unchanged, so no epoch beats the first:
    # an architecture without batch norm (whose running statistics move whatever the learning rate).
    card = train(small(chex, arch=DDP_ARCH, lr=1e-12, epochs=5, early_stopping=2, schedule="constant",
                       augment=False), tmp_path / "run")
    assert card.training["epochs_run"] == 3 and card.training["early_stopping"]["triggered"]
    assert card.training["best_epoch"] == 1
    assert any(e["type"] == "early_stop" for e in read_events(tmp_path / "run" / "events.jsonl"))


@pytest.mark.parametrize("extra", [{}, {"mode": "lora", "sampler": "weighted", "schedule": "plateau"}],
                         ids=["full", "lora-weighted-plateau"])
def test_resume_after_a_stop_ends_exactly_where_an_uninterrupted_run_does(chex, tmp_path, monkeypatch, extra):
    """Bit-for-bit (torch.equal on every weight, equal AUROCs) with one CPU thread: small() sets threads=1, so
    torch.set_num_threads(1) in both runs. With several threads, or on a GPU, reductions may be summed in
    another order (and threads may differ between the two runs: it is not part of the resumable config), so a
    resumed run then matches an uninterrupted one to floating-point rounding, which this test does not check."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    assert small(chex).threads == 1
    extra = dict(extra, epochs=3, max_images=80)  # 56 training images: 4 steps per epoch
    whole = train(small(chex, **extra), tmp_path / "a")
    calls = {"n": 0}

    def stop_in_epoch_two():
        calls["n"] += 1
        return calls["n"] > 6  # 4 steps per epoch: stops inside epoch 2

    first = train(small(chex, **extra), tmp_path / "b", should_stop=stop_in_epoch_two)
    assert first.training["stopped_early"] and first.training["epochs_run"] == 1
    assert load_state(tmp_path / "b")["epoch"] == 1
    assert [e["step"] for e in read_events(tmp_path / "b" / "events.jsonl") if e["type"] == "stopped"] == [6]
    resumed = train(small(chex, **extra), tmp_path / "b", resume=True)
    _, a = load_checkpoint(tmp_path / "a")
    _, b = load_checkpoint(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.metrics["val"] == whole.metrics["val"]
    assert [h["val_mean_auroc"] for h in resumed.training["history"]] == \
        [h["val_mean_auroc"] for h in whole.training["history"]]
    kinds = [e["type"] for e in read_events(tmp_path / "b" / "events.jsonl")]
    assert kinds.count("resume") == 1 and kinds[-1] == "done"


def test_resume_refuses_other_options_and_missing_state(chex, tmp_path, monkeypatch, one_epoch_run):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    with pytest.raises(CheckpointError, match="no resumable state"):
        train(small(chex, epochs=1), tmp_path / "empty", resume=True)
    run = shutil.copytree(one_epoch_run, tmp_path / "run")  # small(chex, epochs=1, pos_weight=True), 1 epoch done
    with pytest.raises(ConfigError, match="different options"):
        train(small(chex, epochs=1, pos_weight=True, lr=0.1), run, resume=True)
    # A different thread count or name is not a different run.
    train(small(chex, epochs=1, pos_weight=True, threads=2, name="renamed"), run, resume=True)


def test_a_torn_state_write_falls_back_to_the_previous_complete_epoch(tmp_path, one_epoch_run):
    """Checkpoints and training state are swapped in whole: a kill mid-write leaves the previous one."""
    run = shutil.copytree(one_epoch_run, tmp_path / "run")  # one epoch done
    last = run / "last"
    # What a kill between the two renames of save_state leaves: last.old complete, last missing, a tmp dir.
    last.rename(run / "last.old")
    (run / "last.tmp").mkdir()
    (run / "last.tmp" / "state.json").write_text("{trunc")
    assert state_path(run).name == "last.old"
    assert load_state(run)["epoch"] == 1


def test_bad_options_are_refused_before_training(chex):
    for bad, match in (({"mode": "qlora"}, "mode"), ({"loss": "focal", "pos_weight": True}, "pos_weight"),
                       ({"hierarchy": "tree"}, "hierarchy"), ({"precision": "fp16"}, "fp16"),
                       ({"accum_steps": 0}, "accum_steps"), ({"gate_threshold": 2.0}, "gate_threshold"),
                       ({"augment_options": {"p": 3}}, "probability"), ({"schedule": "linear"}, "schedule"),
                       ({"monitor": "f1"}, "monitor"), ({"channels": 2}, "channels"), ({"step_gamma": 1.5}, "step_gamma"),
                       ({"optimizer": "sgd"}, "optimizer"), ({"loss_reduction": "max"}, "loss_reduction"),
                       ({"normalize": "minmax"}, "normalize"), ({"gate_mode": "maybe"}, "gate_mode")):
        with pytest.raises(ConfigError, match=match):
            small(chex, **bad).validate()


# --------------------------------------------------------------------------- data-parallel

# A model without batch statistics (LayerNorm, no dropout): two ranks of 16 images then see exactly what one
# process sees in a batch of 32, so the two runs differ only by floating-point summation order.
DDP_ARCH = "convnext_atto"
DDP_ATOL = 1e-4  # weights (|w| up to ~1) after 2 epochs of AdamW; measured on CPU: 7.5e-6, AUROCs equal


def test_ddp_matches_a_single_process_run_and_a_stop_to_one_rank_stops_both(chex, tmp_path, monkeypatch):
    """torchrun with 2 CPU processes (gloo), the command a job with nproc=2 runs: each rank trains half of every
    epoch, rank 0 validates and saves. Against one process with the same global batch (2 x 16 = 32 images, the
    same rows in the same order: rank r takes rows r, r+2, ... of each epoch's order), the weights after the same
    epochs (at least 2) agree within DDP_ATOL and the validation AUROCs within 1e-3; labels, metrics and split sizes
    are the same.

    The run has far more epochs than it gets to: after its second epoch, SIGTERM to rank 1 alone (rank 0 is not
    told, and there is no STOP file). The ranks agree each step (Dist.any), so both leave the training loop at the
    same step, rank 0 logs the stop and keeps its checkpoint, and torchrun ends cleanly instead of hanging in a
    collective. The weights compared are the last complete epoch's (run/last, which a stop mid-epoch leaves as it
    was, not the best checkpoint); the single process is stopped at the same step. The same through a job's runner
    (the job's final state): tests/training/test_job_outcomes.py."""
    import re
    import signal
    import subprocess
    import time

    from cxrcore.train.worker import launch_command

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # No NaN targets, no per-rank augmentation; far more epochs than it gets to (it must be stopped), with the
    # full learning rate from the second step (no 20-step warmup), so the weights move as far as they would in a
    # short run.
    same = dict(epochs=50, arch=DDP_ARCH, policy="zeros", augment=False, warmup_steps=1)
    cfg = small(chex, batch_size=16, nproc=2, **same)
    run = tmp_path / "run"
    argv = launch_command(cfg, run)
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run.mkdir()
    (run / "config.json").write_text(json.dumps(asdict(cfg)))
    log_path = run / "log.txt"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=str(run), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        t_end = time.monotonic() + 600  # a guard against a hang, not a speed check
        pids: dict[int, int] = {}
        while not (len(pids) == 2 and sum(e["type"] == "epoch" for e in read_events(run / "events.jsonl")) >= 2):
            assert proc.poll() is None and time.monotonic() < t_end, log_path.read_text()[-3000:]
            pids = {int(r): int(p) for r, p in re.findall(r"rank (\d) pid (\d+)", log_path.read_text())}
            time.sleep(0.2)
        os.kill(pids[1], signal.SIGTERM)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text()
    assert code == 0, text[-3000:]

    # The stop: only rank 1 was asked, both ranks stopped at the same step.
    ended = {int(r): (int(n), asked) for r, n, asked in
             re.findall(r"rank (\d): training loop ended after (\d+) step checks; stop asked of this rank: (\w+)",
                        text)}
    assert set(ended) == {0, 1}, text[-3000:]
    assert ended[1][1] == "yes" and ended[0][1] == "no"   # only rank 1 was asked ...
    assert ended[0][0] == ended[1][0]                      # ... and both stopped at the same step
    ev = read_events(run / "events.jsonl")
    stopped = [e for e in ev if e["type"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] == ended[0][0] - 1  # the last check stopped before its step
    done = [e for e in ev if e["type"] == "done"]
    assert done and done[-1]["stopped"] and stopped[0]["epoch"] < cfg.epochs
    card = read_card(run / "checkpoint")
    assert card.training["stopped_early"]

    # The numbers, against one process stopped at the same step (the first check after the same epochs).
    data = [e for e in ev if e["type"] == "data"]
    assert len(data) == 1 and data[0]["world_size"] == 2   # only rank 0 writes events
    epochs = [e["epoch"] for e in ev if e["type"] == "epoch"]
    k = len(epochs)
    assert k >= 2 and epochs == list(range(1, k + 1)) and load_state(run)["epoch"] == k
    checks = {"n": 0}

    def stop_after_k_epochs():
        checks["n"] += 1
        return checks["n"] > k * data[0]["steps_per_epoch"]

    single = train(small(chex, batch_size=32, **same), tmp_path / "single", should_stop=stop_after_k_epochs)
    assert single.training["stopped_early"] and load_state(tmp_path / "single")["epoch"] == k
    assert card.training["world_size"] == 2
    assert card.labels == single.labels
    assert set(card.metrics) == set(single.metrics)
    assert set(card.metrics["val"]["auroc"]) == set(single.metrics["val"]["auroc"])
    assert card.metrics["test"]["n"] == single.metrics["test"]["n"]
    one_ev = read_events(tmp_path / "single" / "events.jsonl")
    one = [e for e in one_ev if e["type"] == "data"][0]
    assert one["epoch_rows"] % 2 == 0, "an odd epoch would leave one row to the single process only"
    assert data[0]["steps_per_epoch"] == one["steps_per_epoch"] == -(-(one["epoch_rows"] // 2) // 16)
    assert [e["epoch"] for e in one_ev if e["type"] == "epoch"] == epochs
    a, b = load_state(tmp_path / "single")["model"], load_state(run)["model"]
    assert a.keys() == b.keys()
    worst = max(float((a[k_].double() - b[k_].double()).abs().max()) for k_ in a if a[k_].is_floating_point())
    assert worst <= DDP_ATOL, worst
    auroc_a = [e["val_mean_auroc"] for e in one_ev if e["type"] == "epoch"]   # each epoch's validation AUROC
    auroc_b = [e["val_mean_auroc"] for e in ev if e["type"] == "epoch"]
    assert len(auroc_b) == k and auroc_a == pytest.approx(auroc_b, abs=1e-3)


def test_cli_lora_job_cancel_and_resume(chex, tmp_path, hold, monkeypatch, capsys):
    """`cxr train --mode lora --background`, `cxr jobs cancel` while the job waits after its first epoch (the
    hold file: no race with the job's end), `cxr jobs resume` to completion. The commands run through the CLI's
    ``main`` in this process (the jobs they start are real detached runners); `cxr jobs list` runs once as
    ``python -m cxrcore.cli``, the entry point itself."""
    import subprocess
    import time

    from cxrcore.jobs import JobStore, refresh

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def cxr(*args) -> str:
        code, out, err = cxr_here(capsys, *args)
        assert code == 0, out + err
        return out

    said = cxr("train", "--data", str(chex), "--labels", "chexpert14", "--mode", "lora", "--lora-r", "4",
               "--epochs", "2", "--batch-size", "16", "--image-size", "48", "--max-images", "60",
               "--policy", "ignore", "--sampler", "weighted", "--name", "cli-lora", "--background")
    job_id = said.split()[2]
    store = JobStore(tmp_path / "home" / "jobs.sqlite")
    t_end = time.monotonic() + 300
    while not is_held(store.get(job_id).run_dir):
        assert time.monotonic() < t_end and store.get(job_id).status in ("queued", "running"), cxr("jobs", "logs", job_id)
        time.sleep(0.25)
    assert "cancelled" in cxr("jobs", "cancel", job_id)
    assert store.get(job_id).status == "cancelled"
    hold.unlink()
    assert "resumed" in cxr("jobs", "resume", job_id)
    while refresh(job_id, store).status in ("queued", "running"):   # what `cxr jobs list` does for each job
        assert time.monotonic() < t_end + 300
        time.sleep(0.25)
    listed = subprocess.run([sys.executable, "-m", "cxrcore.cli", "jobs", "list"], capture_output=True, text=True,
                            timeout=300)
    assert listed.returncode == 0 and job_id in listed.stdout, listed.stdout + listed.stderr
    job = store.get(job_id)
    assert job.status == "succeeded", (job.error, cxr("jobs", "logs", job_id))
    shown = json.loads(cxr("jobs", "show", job_id))
    assert shown["progress"]["resumes"] == 1 and shown["progress"]["phase"] == "done"
    assert shown["progress"]["mode"] == "lora"
    card = read_card(Path(job.run_dir) / "checkpoint")
    assert card.training["epochs_run"] == 2 and card.training["config"]["mode"] == "lora"


# --------------------------------------------------------------------------- what a run shows (issue 13 §1)

def _val_rows_logits(run: Path, chex: Path):
    """The best checkpoint's logits and U-Zeros targets on the run's own validation split (splits.csv)."""
    import pandas as pd

    from cxrcore.data.readers import read_dataset
    from cxrcore.predictor import Predictor

    splits = pd.read_csv(run / "splits.csv", dtype=str)
    ids = set(splits.loc[splits["split"] == "val", "image_id"])
    index = read_dataset(chex)
    index = index.subset(index.frame["image_id"].astype(str).isin(ids).to_numpy())
    p = Predictor(run / "checkpoint")
    from cxrcore.data.cache import build_cache

    cache = build_cache(index, p.prep, workers=1)
    x = p.prep.normalize(torch.from_numpy(np.array(cache.array)))
    with torch.no_grad():
        logits = p.model.eval()(x).float()
    return logits, torch.from_numpy(index.targets(p.labels, "zeros"))


def test_validation_loss_and_metrics_every_epoch(chex, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    card = train(small(chex, epochs=2, policy="zeros", pos_weight=True, schedule="constant"), tmp_path / "run")
    ev = read_events(tmp_path / "run" / "events.jsonl")
    epochs = [e for e in ev if e["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and [e["epochs_done"] for e in epochs] == [1, 2]
    for e in epochs:
        assert e["val_loss"] > 0 and e["train_loss"] > 0
        assert 0 <= e["val_mean_ap"] <= 1 and 0 <= e["val_f1"] <= 1 and 0 <= e["val_accuracy"] <= 1
    # The validation loss is the training criterion (BCE with the run's pos_weight) on the validation split.
    logits, y = _val_rows_logits(tmp_path / "run", chex)
    pw = torch.tensor([e for e in ev if e["type"] == "data"][0]["pos_weight"])
    want = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw).item()
    best = card.metrics["val"]
    assert best["loss"] == pytest.approx(want, rel=1e-4)
    assert best["loss"] == [e for e in epochs if e["epoch"] == best["epoch"]][0]["val_loss"]
    assert best["monitor"] == "auroc" and best["mean_ap"] is not None and best["f1"] is not None
    assert [h["val_loss"] for h in card.training["history"]] == [e["val_loss"] for e in epochs]


def test_validate_every_n_steps_and_pick_the_checkpoint_on_validation_loss(chex, tmp_path, monkeypatch):
    from cxrcore.jobs.progress import progress_summary

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    card = train(small(chex, epochs=2, val_every=3, monitor="loss", policy="zeros"), tmp_path / "run")
    ev = read_events(tmp_path / "run" / "events.jsonl")
    vals = [e for e in ev if e["type"] in ("epoch", "validation")]
    mids = [e for e in vals if e["type"] == "validation"]
    steps_per_epoch = [e for e in ev if e["type"] == "data"][0]["steps_per_epoch"]
    assert mids and all(e["step"] % 3 == 0 for e in mids)
    assert all(0 < e["epochs_done"] - (e["epoch"] - 1) < 1 for e in mids)
    assert len(vals) == 2 + sum(1 for s in range(1, 2 * steps_per_epoch + 1) if s % 3 == 0 and s % steps_per_epoch)
    # the checkpoint is the validation with the lowest loss
    lowest = min(vals, key=lambda e: e["val_loss"])
    assert card.metrics["val"]["loss"] == lowest["val_loss"] and card.metrics["val"]["step"] == lowest["step"]
    assert card.metrics["val"]["monitor"] == "loss"
    s = progress_summary(ev)
    assert [round(x, 4) for x, _ in s["val_loss_curve"]] == [e["epochs_done"] for e in vals]
    assert s["best_x"] == lowest["epochs_done"] and s["monitor"] == "loss"
    assert len(s["history"]) == len(vals) and s["history"][-1]["val_auroc"].keys() == set(card.labels)


def test_overfitting_note_needs_rising_validation_and_falling_training_loss():
    from cxrcore.jobs.progress import overfitting_note

    def hist(val, tr):
        return [{"epochs_done": i + 1, "val_loss": v, "train_loss": t} for i, (v, t) in enumerate(zip(val, tr))]

    note = overfitting_note(hist([0.5, 0.4, 0.45, 0.5], [0.6, 0.5, 0.4, 0.3]), best_x=2)
    assert note and "epoch 2" in note and "0.4000" in note and "0.5000" in note and "overfitting" in note
    assert overfitting_note(hist([0.5, 0.4, 0.39, 0.38], [0.6, 0.5, 0.4, 0.3])) is None   # still falling
    assert overfitting_note(hist([0.5, 0.4, 0.45, 0.5], [0.6, 0.5, 0.55, 0.6])) is None   # training loss up too
    assert overfitting_note(hist([0.5, 0.4, 0.45], [0.6, 0.5, 0.4])) is None              # one rise only
    assert overfitting_note(hist([0.5, 0.4], [0.6, 0.5])) is None


def test_step_schedule_adam_l2_sum_reduction_and_dropout(chex, tmp_path, monkeypatch):
    from cxrcore.train.trainer import set_classifier_dropout

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    cfg = small(chex, epochs=3, schedule="step", step_epochs=1, step_gamma=0.5, optimizer="adam",
                loss_reduction="sum", drop_rate=0.3, lr=1e-3, policy="zeros")
    train(cfg, tmp_path / "run")
    ev = read_events(tmp_path / "run" / "events.jsonl")
    lr_by_epoch = {e["epoch"]: e["lr"] for e in ev if e["type"] == "epoch"}
    assert lr_by_epoch[1] == pytest.approx(5e-4) and lr_by_epoch[2] == pytest.approx(2.5e-4)
    assert lr_by_epoch[3] == pytest.approx(1.25e-4)
    # sum reduction: the step losses are sums over the batch's known labels (14 per image here)
    first = [e for e in ev if e["type"] == "step"][0]
    assert first["loss"] > 16 * 14 * 0.1
    # Adam's weight decay is an L2 term in the gradient: one step on a zero-gradient weight shrinks it by lr
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1, weight_decay=1.0)
    w.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((3,), 0.9), atol=1e-3)
    # dropout goes where the timm model applies its drop_rate
    m = build_model("regnetx_002", 3)
    set_classifier_dropout(m, 0.3)
    assert m.head.drop.p == 0.3
    r = build_model("resnet18", 3)
    set_classifier_dropout(r, 0.25)
    assert r.drop_rate == 0.25
    with pytest.raises(ConfigError, match="drop_rate"):
        TrainConfig(data="x", arch="tv:resnet18", drop_rate=0.2).validate()


def test_masked_sum_reduction_is_the_sum_over_known_labels():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    y = torch.tensor([[1.0, nan, 0.0], [0.0, 1.0, nan]])
    known = ~torch.isnan(y)
    assert torch.isclose(masked_bce(logits, y, reduction="sum"),
                         F.binary_cross_entropy_with_logits(logits[known], y[known], reduction="sum"))
    c = Criterion("bce", reduction="sum")
    assert torch.isclose(c(logits, y), masked_bce(logits, y, reduction="sum"))
    with pytest.raises(ConfigError, match="reduction"):
        Criterion("bce", reduction="max")
