"""Two-stage with two separate networks (issue 13 §4, seed 000's variant): a binary gate model and a
disease model, each trained with its own optimiser into its own checkpoint and card, combined at inference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import workspace_env
from cxrcore.checkpoint import load_checkpoint, read_card
from cxrcore.errors import CheckpointError
from cxrcore.models.heads import combine
from cxrcore.models.two_network import TwoNetwork, combine_checkpoints
from cxrcore.train.losses import GATE_LABEL
from cxrcore.train.trainer import TrainConfig, read_events, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chex(app_home) -> Path:
    from cxrcore.demo import app_data

    return Path(app_data()["chexpert"])


@pytest.fixture(scope="module")
def run(chex, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_network") / "run"
    with workspace_env(str(out.parent / "home")):
        train(TrainConfig(data=str(chex), labels="chexpert14", hierarchy="two_network", gate_mode="hard", epochs=2,
                          batch_size=16, image_size=48, max_images=160, policy="ignore", workers=1, threads=1,
                          lr=3e-3, name="twonet"), out)
    return out


def test_each_network_has_its_own_checkpoint_card_and_optimiser_state(run):
    gate, disease, both = read_card(run / "gate"), read_card(run / "disease"), read_card(run / "checkpoint")
    assert gate.labels == [GATE_LABEL] and GATE_LABEL not in disease.labels and "No Finding" in disease.labels
    assert both.labels == disease.labels + [GATE_LABEL]
    assert "two_stage" not in gate.model and "two_stage" not in disease.model
    assert gate.name == "twonet · gate network" and disease.name == "twonet · disease network"
    assert "abnormal images only" in disease.notes[0]
    # two separate trainings: own events (a start, two epochs, a done each) and own saved optimiser state
    for role in ("gate", "disease"):
        ev = read_events(run / role / "events.jsonl")
        assert [e["type"] for e in ev].count("epoch") == 2 and ev[-1]["type"] == "done"
        assert (run / role / "last").exists() or any((run / role).glob("*state*"))
    # the job's events carry both, tagged
    top = read_events(run / "events.jsonl")
    assert {e.get("network") for e in top if e["type"] == "epoch"} == {"gate", "disease"}
    assert top[-1]["type"] == "done" and top[-1]["network"] == "combined"
    # the combined card records its members and the gate it uses
    ts = both.model["two_stage"]
    assert both.model["arch"] == "two_network" and ts["mode"] == "hard" and ts["tuned_on"].startswith("val")
    assert ts["gate_threshold"] == both.thresholds[GATE_LABEL]
    assert ts["exempt"] == [disease.labels.index("No Finding")]
    members = both.training["two_network"]
    assert members["gate"]["weights_sha256"] == gate.weights_sha256
    assert members["disease"]["weights_sha256"] == disease.weights_sha256
    assert both.metrics["test"]["n"] > 0 and set(both.metrics["test"]["auroc"]) == set(both.labels)


def test_combined_model_predicts_with_heatmaps_from_each_network(run):
    from cxrcore.predictor import Predictor

    p = Predictor(run / "checkpoint")
    assert isinstance(p.model, TwoNetwork) and p.fast_cam
    img = (np.random.default_rng(0).random((96, 96)) * 255).astype(np.float32)
    pred = p.predict(img)
    card = p.card
    x = p.prep.normalize(torch.from_numpy(p.prep.square(img))[None])
    with torch.no_grad():
        raw = torch.cat([torch.sigmoid(p.model.disease(x)), torch.sigmoid(p.model.gate(x))], 1)[0].numpy()
    np.testing.assert_allclose(pred.probs, combine(raw, card.model, card.thresholds), rtol=1e-5, atol=1e-6)
    # hard gate: below the gate threshold every finding but No Finding is reported as 0 (not assessed)
    low = combine(np.r_[raw[:-1], 0.0][None], card.model, card.thresholds)[0]
    nf = card.labels.index("No Finding")
    assert all(low[j] == 0 for j in range(len(card.labels) - 1) if j != nf) and low[nf] == raw[nf]
    # every label has a map; the gate's comes from the gate network (its own CAM), the findings' from the disease one
    assert pred.heatmaps.shape[0] == len(card.labels) and np.isfinite(pred.heatmaps).all()
    from cxrcore.explain.cam import forward_with_cams, gradcam_loop

    _, gate_only = forward_with_cams(p.model.gate, x)
    _, both = forward_with_cams(p.model, x)
    np.testing.assert_allclose(both[0, -1], gate_only[0, 0], atol=1e-6)
    # the per-label pytorch-grad-cam path also asks the right network
    _, loop = gradcam_loop(p.model, x, [len(card.labels) - 1, 0])
    _, loop_gate = gradcam_loop(p.model.gate, x, [0])
    np.testing.assert_allclose(loop[0, 0], loop_gate[0, 0], atol=1e-5)


def test_combine_command_and_refusals(run, tmp_path):
    out = tmp_path / "combined"
    env = dict(os.environ, CXR_HOME=str(tmp_path / "home"))
    r = subprocess.run([sys.executable, "-m", "cxrcore.cli", "combine", "--disease", str(run / "disease"),
                        "--gate", str(run / "gate"), "--out", str(out), "--gate-mode", "soft"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    card, state = load_checkpoint(out)
    assert card.model["two_stage"]["mode"] == "soft" and any(k.startswith("gate.") for k in state)
    assert "combined" in r.stdout.lower()
    # a gate with many labels, a two-stage disease model, or different preprocessing: refused, nothing written
    bad = tmp_path / "bad"
    with pytest.raises(CheckpointError, match="has 15 labels"):
        combine_checkpoints(run / "checkpoint", run / "checkpoint", bad)
    with pytest.raises(CheckpointError, match="already a two-stage"):
        combine_checkpoints(run / "checkpoint", run / "gate", bad)
    other = tmp_path / "gate96"
    g, s = load_checkpoint(run / "gate")
    g.preprocess = {**g.preprocess, "size": 96}
    from cxrcore.checkpoint import save_checkpoint

    save_checkpoint(other, s, g)
    r = subprocess.run([sys.executable, "-m", "cxrcore.cli", "combine", "--disease", str(run / "disease"),
                        "--gate", str(other), "--out", str(bad)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode != 0 and "read images differently" in r.stderr and "Traceback" not in r.stderr
    assert not bad.exists()
    assert json.loads((out / "card.json").read_text())["training"]["two_network"]["gate"]["labels"] == [GATE_LABEL]


def test_resume_skips_the_finished_gate_network(run, chex, tmp_path, monkeypatch):
    """Resuming a two-network run whose gate finished continues with the disease network only."""
    import shutil

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "disease")
    shutil.rmtree(copy / "checkpoint")
    before = (copy / "gate" / "events.jsonl").read_text()
    card = train(TrainConfig(data=str(chex), labels="chexpert14", hierarchy="two_network", gate_mode="hard", epochs=2,
                             batch_size=16, image_size=48, max_images=160, policy="ignore", workers=1, threads=1,
                             lr=3e-3, name="twonet"), copy, resume=True)
    assert (copy / "gate" / "events.jsonl").read_text() == before   # not trained again
    assert card.model["arch"] == "two_network" and (copy / "disease" / "checkpoint" / "card.json").exists()


def test_progress_summary_and_training_page_show_each_network(run, tmp_path, monkeypatch, app_home):
    """The job's events give one progress over both networks; the Training page shows each network's curves
    in its own tab and the combined model's checkpoint."""
    import shutil

    from streamlit.testing.v1 import AppTest

    from cxrcore.jobs import JobStore, progress_summary

    ev = read_events(run / "events.jsonl")
    s = progress_summary(ev)
    assert list(s["networks"]) == ["gate", "disease"] and s["phase"] == "done" and s["fraction"] == 1.0
    assert s["test_mean_auroc"] == read_card(run / "checkpoint").metrics["test"]["mean_auroc"]
    assert s["networks"]["gate"]["labels"] == [GATE_LABEL] and len(s["networks"]["disease"]["val_loss_curve"]) == 2
    # half way through the disease network: the gate's half is done, the disease network is training
    first_disease_epoch = next(i for i, e in enumerate(ev) if e.get("network") == "disease" and e["type"] == "epoch")
    mid = progress_summary(ev[:first_disease_epoch + 1])
    assert mid["network"] == "disease" and mid["phase"] == "training" and 0.5 < mid["fraction"] < 1.0
    assert mid["test_mean_auroc"] is None   # the combination does not exist yet

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(tmp_path / "no-shipped-checkpoints"))
    (tmp_path / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)  # the page's phantom data
    store = JobStore()
    job = store.create(json.loads(json.dumps(read_card(run / "checkpoint").training["config"])), name="twonet",
                       run_dir=tmp_path / "runs" / "twonet")
    shutil.copytree(run, job.run_dir, dirs_exist_ok=True)
    store.mark(job.id, "succeeded")
    at = AppTest.from_file(str(ROOT / "views" / "training.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.label for t in at.tabs][-2:] == ["Gate network (Any finding, every image)",
                                               "Disease network (abnormal images)"]
    text = " ".join(c.value for c in at.caption)
    assert "Two networks, trained one after the other" in text
    assert any("run" in m.value and "checkpoint" in m.value.lower() for m in at.success)
