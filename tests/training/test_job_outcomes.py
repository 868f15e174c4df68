"""Issue 20 §3-§4: one submit check on every path, the model's own image size by default, and a job's final
state saying how its run ended on every backend (local process, local DDP, Slurm).

Jobs that must be acted on mid-run wait for it: ``CXR_TRAIN_HOLD`` names a file the training waits on at each
epoch's end (cxrcore.train.trainer.HOLD_ENV), so a test signals a run at a known point and then lets it go on;
nothing relies on a run still being busy.
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from conftest import cxr_here, job_workspace, kill_jobs, phantom_job_config, wait_for
from cxrcore.checkpoint import Card, read_card
from cxrcore.errors import ConfigError
from cxrcore.jobs import JobStore, events, refresh, submit, tail_log
from cxrcore.jobs.runner import EXIT_CANCELLED, final_state
from cxrcore.train.config import TrainConfig, default_image_size
from cxrcore.train.trainer import train


@pytest.fixture
def ws(tmp_path, monkeypatch):
    job_workspace(tmp_path, monkeypatch)
    yield tmp_path
    kill_jobs(tmp_path)


def held(job, store) -> bool:
    j = refresh(job, store)
    assert not j.ended, f"job ended before the hold ({j.status}: {j.error}); log:\n{tail_log(j, 40)}"
    return any(e.get("type") == "hold" for e in events(j))


def ended(job, store):
    j = refresh(job, store)
    return j if j.ended else None


# --------------------------------------------------------------------------- the model's image size, one check

def test_default_image_size_is_the_models_own_for_a_fixed_size_model(phantom):
    assert default_image_size("vit_tiny_patch16_224") == 224
    assert default_image_size("regnetx_002") == 160 == default_image_size("densenet121")  # any size: the default
    assert default_image_size("no_such_model_xyz") == 160  # the check refuses the name itself
    assert TrainConfig.from_dict({"data": str(phantom), "arch": "vit_tiny_patch16_224"}).image_size == 224
    assert TrainConfig.from_dict({"data": str(phantom), "arch": "vit_tiny_patch16_224", "image_size": 96}).image_size == 96
    assert TrainConfig.from_dict({"data": str(phantom)}).image_size == 160


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "densenet121"])
def test_cxr_train_without_an_image_size_trains(arch, phantom, tmp_path, monkeypatch, capsys):
    """`cxr train --arch A` in the foreground, no --image-size: a ViT trains at its own 224 px (it used to crash
    with "Input height (160) doesn't match model (224)"), a CNN at the declared default. Through the CLI's ``main``
    in this process (the size is decided in the CLI and the training, not by the process around them), on 12
    images: 8 train, 1 validation, 3 test."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    code, said, err = cxr_here(capsys, "train", "--data", phantom, "--labels", "nih14", "--arch", arch, "--epochs", "1",
                               "--batch-size", "8", "--max-images", "12", "--workers", "1", "--threads", "1",
                               "--no-augment", "--out", out)
    assert code == 0, said[-2000:] + err[-3000:]
    card = read_card(out / "checkpoint")
    assert card.training["config"]["image_size"] == (224 if arch.startswith("vit") else 160)
    assert card.preprocess["size"] == card.training["config"]["image_size"]
    assert sum(card.data["splits"].values()) == 12


def test_a_wrong_size_for_a_fixed_size_model_is_refused_before_training(phantom, tmp_path):
    cfg = TrainConfig(data=str(phantom), arch="vit_tiny_patch16_224", image_size=160, epochs=1)
    with pytest.raises(ConfigError, match="224"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_box_loss_with_a_vit_is_refused_at_submit_naming_the_option(ws, phantom, tmp_path):
    store = JobStore()
    with pytest.raises(ConfigError, match=r"box_loss 1 cannot be used with vit_tiny_patch16_224"):
        submit(phantom_job_config(phantom, arch="vit_tiny_patch16_224", image_size=224, box_loss=1.0), store=store)
    assert store.list() == []
    # train() itself (the CLI's foreground path) runs the same check, before anything is created
    given = phantom_job_config(phantom, arch="vit_tiny_patch16_224", box_loss=1.0)
    del given["image_size"]  # the model's own 224 px
    cfg = TrainConfig.from_dict(given)
    with pytest.raises(ConfigError, match="box_loss"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- how a run ended -> the job's state

def _card(**training) -> Card:
    return Card(labels=["Nodule"], model={}, preprocess={}, thresholds={}, training={"best_epoch": 2, "epochs_run": 3,
                "config": {"early_stopping": 1}, **training},
                metrics={"val": {"epoch": 2, "monitor": "auroc"}})


def test_final_state_follows_how_the_run_ended():
    assert final_state(_card(ended="completed")) == ("succeeded", {"exit_code": 0, "error": None, "note": None})
    status, fields = final_state(_card(ended="early_stopping", early_stopping={"triggered": True}))
    assert status == "succeeded" and fields["note"].startswith("Stopped early (early stopping)")
    assert "validation mean AUROC" in fields["note"] and "after epoch 2" in fields["note"]
    status, fields = final_state(_card(ended="pruned", pruned="pruned by the sweep after epoch 2: ..."))
    assert status == "succeeded" and fields["note"].startswith("Stopped early: pruned by the sweep after epoch 2")
    # stopped: cancelled whoever asked; the runner's own signal is named, else the ranks'
    status, fields = final_state(_card(ended="stopped", stopped_early=True), signal.SIGTERM)
    assert status == "cancelled" and fields["exit_code"] == EXIT_CANCELLED and "received SIGTERM" in fields["error"]
    status, fields = final_state(_card(ended="stopped", stopped_early=True))
    assert status == "cancelled" and "SIGTERM to a rank" in fields["error"] and "epoch 2" in fields["error"]
    # a card from before `ended` was recorded
    assert final_state(_card(stopped_early=True))[0] == "cancelled"
    assert final_state(_card(stopped_early=False))[0] == "succeeded"


def test_a_report_that_prunes_stops_the_training_after_that_epoch(ws, phantom):
    """The sweep's pruner reaches the training as the ``report`` callback (cxrcore.jobs.sweep.trial_reporter in a
    job): a reason returned after epoch 1 ends the run there, recorded as pruned, a succeeded job with a note."""
    calls = []

    def report(epoch: int, value: float) -> str:
        calls.append((epoch, value))
        return "pruned by the sweep after epoch 1: (this test's pruner)"

    cfg = TrainConfig.from_dict(phantom_job_config(phantom, epochs=3, monitor="loss"))
    card = train(cfg, ws / "run", report=report)
    assert [e for e, _ in calls] == [1] and calls[0][1] > 0                     # the epoch's validation loss
    assert card.training["ended"] == "pruned" and card.training["epochs_run"] == 1
    status, fields = final_state(card)
    assert status == "succeeded" and fields["note"].startswith("Stopped early: pruned by the sweep after epoch 1")


def test_local_job_sigterm_from_outside_is_cancelled_keeping_its_checkpoint(ws, phantom, hold):
    store = JobStore()
    job = submit(phantom_job_config(phantom, epochs=3), name="signalled", store=store)
    wait_for(lambda: held(job, store), what="the job to hold at its first epoch's end")
    os.kill(job.pid, signal.SIGTERM)  # not cxrcore.jobs.cancel: a signal from outside
    hold.unlink()
    done = wait_for(lambda: ended(job, store), what="the job to end")
    assert done.status == "cancelled", (done.error, tail_log(done, 40))
    assert done.exit_code == EXIT_CANCELLED and "received SIGTERM" in done.error and "was kept" in done.error
    assert (Path(done.run_dir) / "checkpoint" / "card.json").exists()
    assert [e["ended"] for e in events(done) if e["type"] == "done"] == ["stopped"]


def test_ddp_job_stopped_by_sigterm_to_a_rank_is_cancelled_not_succeeded(ws, phantom, hold):
    """SIGTERM to rank 1 from outside (not to the runner, no STOP file): both ranks stop at the same step and
    torchrun ends cleanly; the job used to be recorded as succeeded. It is cancelled, saying why. This is also the
    job layer's data-parallel path (nproc=2: the runner starts torchrun, waits for it and reads the run's card);
    tests/training/test_training_engine.py checks the numbers of a data-parallel run without a runner."""
    store = JobStore()
    job = submit(phantom_job_config(phantom, epochs=3, nproc=2, threads=1), name="ddp-signalled", store=store)
    wait_for(lambda: held(job, store), deadline_s=400, what="the ranks to hold at the first epoch's end")
    pids = {int(r): int(p) for r, p in re.findall(r"rank (\d) pid (\d+)", tail_log(job, 400))}
    assert set(pids) == {0, 1}, tail_log(job, 60)
    os.kill(pids[1], signal.SIGTERM)
    hold.unlink()
    done = wait_for(lambda: ended(job, store), deadline_s=400, what="the job to end")
    assert done.status == "cancelled", (done.error, tail_log(done, 60))
    assert "reached the training processes" in done.error and "was kept" in done.error
    log = tail_log(done, 400)
    assert "torch.distributed.run --standalone --nproc-per-node 2" in log
    # torchrun ended with exit code 0: the runner says "were stopped (exit code N)" for any other
    assert "the data-parallel processes were stopped" not in log, log[-3000:]
    ev = events(done)
    assert [e["ended"] for e in ev if e["type"] == "done"] == ["stopped"]
    assert [e["epoch"] for e in ev if e["type"] == "epoch"] == [1]
    assert [e["epoch"] for e in ev if e["type"] == "stopped"] == [2]
    assert read_card(Path(done.run_dir) / "checkpoint").training["stopped_early"]
