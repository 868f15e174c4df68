"""The Training page with Streamlit's AppTest: the form, a real background job, a bad submission, cancel.

Jobs are real detached runners on the real NIH sample (60 images at 64 px, one math thread), so
a job takes seconds to minutes on a busy CPU; deadlines are generous and nothing asserts on
speed. Every test has its own workspace (CXR_HOME = tmp_path, so its own job table); the built-in
phantom datasets the page lists are generated once per session (conftest ``app_home``) and linked
into each workspace. A finalizer kills the process group of any runner still alive.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import NIH_SAMPLE, REPO, is_held, kill_jobs  # also puts the repository root on sys.path (`ui`, `cxrcore`)
from cxrcore.jobs import JobStore, events, process_alive, refresh
from cxrcore.labels import CHEXPERT5, NIH14

PAGE = str(REPO / "views" / "training.py")

FROM_SCRATCH = "An architecture (timm, tv:, xrv:)"
FROM_CHECKPOINT = "A checkpoint (fine-tune it)"
DEADLINE_S = 240.0


# --------------------------------------------------------------------------- fixtures and helpers

@pytest.fixture
def ws(tmp_path, monkeypatch, app_home):
    """An isolated workspace (its own job table) that sees the session's phantom datasets and, unless
    a test points CXR_CHECKPOINTS at them, no shipped checkpoints. Kills leftover runner groups at the end."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(tmp_path / "no-shipped-checkpoints"))
    # One math thread per job: on 2 busy cores, 2 OpenMP threads per process thrash.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    (tmp_path / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)
    yield tmp_path
    kill_jobs(tmp_path)


def new_app() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def submit(at: AppTest, folder: str, *, name: str = "page-test", epochs: int = 1, size: int = 64,
           max_images: int = 60, batch: int = 16) -> AppTest:
    if at.radio(key="train_start").value != FROM_SCRATCH:
        at.radio(key="train_start").set_value(FROM_SCRATCH).run()
    at.text_input(key="tf_name").set_value(name)
    at.text_input(key="tf_folder").set_value(folder)
    at.selectbox(key="tf_labels").set_value("nih14")
    at.selectbox(key="tf_arch").set_value("regnetx_002")
    at.number_input(key="tf_epochs").set_value(epochs)
    at.number_input(key="tf_image_size").set_value(size)
    at.number_input(key="tf_max_images").set_value(max_images)
    at.number_input(key="tf_batch_size").set_value(batch)
    at.button(key="train_submit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait_for(job_id: str, statuses: tuple[str, ...], deadline_s: float = DEADLINE_S):
    store = JobStore()
    t_end = time.monotonic() + deadline_s
    while True:
        job = refresh(job_id, store)
        if job.status in statuses:
            return job
        if time.monotonic() > t_end:
            log = (Path(job.run_dir) / "log.txt")
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            pytest.fail(f"job {job_id} still {job.status} after {deadline_s:.0f}s; log:\n{tail}")
        time.sleep(0.25)


def plotly_figures(at: AppTest) -> list[dict]:
    out = []
    for el in at.get("plotly_chart"):
        out.append(json.loads(el.proto.spec))
    return out


def badges(at: AppTest) -> list[str]:
    """The status badges (st.badge renders as ``:color-badge[text]`` markdown)."""
    return [m.value for m in at.markdown if "-badge[" in m.value]


# --------------------------------------------------------------------------- tests

def test_form_renders_with_expected_widgets(ws):
    at = new_app()
    assert at.title[0].value == "Train a classifier in the background"
    assert at.radio(key="train_start").options == [FROM_CHECKPOINT, FROM_SCRATCH]
    assert at.radio(key="train_start").value == FROM_SCRATCH  # no checkpoints in a fresh workspace
    assert at.selectbox(key="tf_labels").options == ["nih14", "chexpert14", "chexpert5"]
    assert at.selectbox(key="tf_labels").value == "nih14"
    datasets = at.selectbox(key="tf_dataset").options
    assert any("phantom nih" in d for d in datasets) and any("phantom chexpert" in d for d in datasets)
    assert at.text_input(key="tf_folder").value == ""
    arch = at.selectbox(key="tf_arch")
    assert arch.value == "regnetx_002"
    assert {"resnet18", "densenet121", "efficientnet_b0"} <= set(arch.options)
    assert at.selectbox(key="tf_pretrained").options == ["auto", "none", "hub"]
    assert at.selectbox(key="tf_pretrained").value == "auto"
    assert at.selectbox(key="tf_mode").options == ["full network", "head only", "LoRA (peft)"]
    assert at.selectbox(key="tf_mode").value == "full"
    for key, value in (("tf_loss", "bce"), ("tf_hierarchy", "none"), ("tf_sampler", "shuffle"),
                       ("tf_schedule", "cosine"), ("tf_backend", "local"), ("tf_precision", "fp32"),
                       ("tf_split_method", "hash")):
        assert at.selectbox(key=key).value == value, key
    assert at.number_input(key="tf_early_stopping").value == 0 and at.number_input(key="tf_accum_steps").value == 1
    assert at.number_input(key="tf_epochs").value == 3
    assert at.number_input(key="tf_batch_size").value == 32
    assert at.number_input(key="tf_lr").value == pytest.approx(2e-3)
    assert at.number_input(key="tf_image_size").value == 160
    assert at.number_input(key="tf_image_size").disabled is False
    assert at.selectbox(key="tf_policy").options == ["zeros", "ones", "ignore"]
    assert at.number_input(key="tf_max_images").value == 400
    assert at.number_input(key="tf_seed").value == 0
    assert at.button(key="train_submit").label == "Start training"
    assert [i.value for i in at.info] == [
        "No jobs yet. Launch one above."]
    assert JobStore().list() == []


def test_bad_submission_shows_error_and_creates_no_job(ws):
    at = new_app()
    missing = str(ws / "no-such-dataset")
    submit(at, missing)
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert "no-such-dataset" in errors[0]
    assert "Traceback" not in errors[0]
    assert not at.success
    assert JobStore().list() == []
    assert not (ws / "runs").exists() or not any((ws / "runs").iterdir())

    # An invalid option (fewer than 10 images) is refused too, before anything is created.
    at.text_input(key="tf_folder").set_value(str(NIH_SAMPLE))
    at.number_input(key="tf_max_images").set_value(5)
    at.button(key="train_submit").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "max_images" in errors[0], errors
    assert JobStore().list() == []


def test_submit_runs_job_to_success_and_shows_curves(ws):
    at = new_app()
    submit(at, str(NIH_SAMPLE), name="nih-sample-1ep")
    assert not at.error, [e.value for e in at.error]
    jobs = JobStore().list()
    assert len(jobs) == 1
    job = jobs[0]
    assert job.name == "nih-sample-1ep"
    assert job.config["data"] == str(NIH_SAMPLE.resolve())
    assert job.config["epochs"] == 1 and job.config["image_size"] == 64 and job.config["max_images"] == 60
    assert job.config["arch"] == "regnetx_002" and job.config["labels"] == "nih14" and job.config["init"] is None
    assert job.id in at.success[0].value
    # The jobs table lists it and the live view watches it.
    table = at.dataframe[0].value
    assert list(table["id"]) == [job.id]
    assert list(table["name"]) == ["nih-sample-1ep"]
    assert at.selectbox(key="train_watch").value == job.id
    assert badges(at)[0] in (":gray-badge[:material/schedule: queued]",
                             ":blue-badge[:material/directions_run: running]")
    assert at.button(key=f"train_cancel_{job.id}").label == "Cancel job"

    done = wait_for(job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error

    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    row = table[table["id"] == job.id].iloc[0]
    assert row["status"] == "succeeded"
    assert 0.0 <= float(row["best val AUROC"]) <= 1.0
    assert badges(at) == [":green-badge[:material/check_circle: succeeded]"]
    ckpt = Path(done.run_dir) / "checkpoint"
    assert any(str(ckpt) in s.value and "Compare" in s.value for s in at.success)
    assert not any(b.key == f"train_cancel_{job.id}" for b in at.button)  # no cancel for an ended job
    figs = plotly_figures(at)
    assert len(figs) == 4  # step loss and LR, AUROC per label, training vs validation loss, validation metrics
    loss = figs[0]["data"][0]
    assert len(loss["x"]) >= 1 and all(v > 0 for v in loss["y"])
    auroc = figs[1]["data"][0]
    assert list(auroc["x"]) == [1] and 0.0 <= auroc["y"][0] <= 1.0
    curves = {t["name"]: t for t in figs[2]["data"]}
    assert set(curves) == {"training loss (epoch mean)", "validation loss"}
    assert list(curves["validation loss"]["x"]) == [1] and curves["validation loss"]["y"][0] > 0
    assert any("best (epoch 1)" in a.get("text", "") for a in figs[2]["layout"]["annotations"])
    assert {t["name"] for t in figs[3]["data"]} >= {"mean AUROC", "mean AP", "accuracy"}
    per_label = at.dataframe[1].value
    assert len(per_label) >= 1 and set(per_label["label"]) <= set(NIH14)
    assert "succeeded" in at.code[0].value  # the runner's last log line

    # The new checkpoint is offered as a starting point; its preprocessing is kept (image size disabled).
    at.radio(key="train_start").set_value(FROM_CHECKPOINT).run()
    assert not at.exception
    assert f"run {job.id}" in at.selectbox(key="tf_ckpt").options
    assert at.number_input(key="tf_image_size").disabled is True
    assert any("head is swapped" in c.value for c in at.caption)

    # A fresh session (an app restart) lists the past job again.
    again = new_app()
    assert job.id in list(again.dataframe[0].value["id"])


def test_fine_tune_a_shipped_checkpoint(ws, shipped, monkeypatch):
    monkeypatch.setenv("CXR_CHECKPOINTS", str(shipped["baseline"].parent))
    at = new_app()
    # With checkpoints available the form starts from one; its preprocessing is kept.
    assert at.radio(key="train_start").value == FROM_CHECKPOINT
    options = at.selectbox(key="tf_ckpt").options
    assert {"baseline (shipped demo)", "finetuned (shipped demo)"} <= set(options)
    assert at.number_input(key="tf_image_size").disabled is True
    assert not any(w.key == "tf_arch" for w in at.selectbox)
    at.selectbox(key="tf_ckpt").set_value("baseline (shipped demo)")
    at.selectbox(key="tf_labels").set_value("chexpert5")
    at.selectbox(key="tf_mode").set_value("head")
    at.text_input(key="tf_folder").set_value(str(NIH_SAMPLE))
    at.number_input(key="tf_epochs").set_value(1)
    at.number_input(key="tf_max_images").set_value(60)
    at.button(key="train_submit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    job = JobStore().list()[0]
    assert job.config["init"] == str(shipped["baseline"].resolve())
    assert job.config["labels"] == "chexpert5" and job.config["mode"] == "head"
    done = wait_for(job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    card = json.loads((Path(done.run_dir) / "checkpoint" / "card.json").read_text())
    assert card["labels"] == CHEXPERT5
    at.run()
    assert not at.exception
    assert at.dataframe[1].value["label"].tolist() == CHEXPERT5


def _wait_held(job, deadline_s: float = DEADLINE_S) -> None:
    """Until the job waits on the hold file after its first epoch (saved, so resumable)."""
    t_end = time.monotonic() + deadline_s
    while not is_held(job.run_dir):
        assert refresh(job.id).status in ("queued", "running"), refresh(job.id).error
        assert time.monotonic() < t_end, "the job did not reach the end of its first epoch"
        time.sleep(0.25)


def test_lora_and_full_fine_tunes_cancel_resume_clone_and_compare(ws, shipped, monkeypatch, hold):
    """The issue's scenario from the page: a LoRA and a full fine-tune of the demo model on phantom data run in
    the background; the full one is cancelled from the page after its first epoch (the page then shows it
    cancelled, with no Cancel button) and resumed to its second and last; clone fills the form; the two runs are
    compared."""
    monkeypatch.setenv("CXR_CHECKPOINTS", str(shipped["baseline"].parent))
    at = new_app()
    phantom = next(d for d in at.selectbox(key="tf_dataset").options if "phantom chexpert" in d)

    def launch(name: str, mode: str, epochs: int) -> str:
        at.radio(key="train_start").set_value(FROM_CHECKPOINT).run()
        at.selectbox(key="tf_ckpt").set_value("baseline (shipped demo)")
        at.selectbox(key="tf_dataset").set_value(phantom)
        at.text_input(key="tf_folder").set_value("")
        at.text_input(key="tf_name").set_value(name)
        at.selectbox(key="tf_labels").set_value("chexpert14")
        at.selectbox(key="tf_mode").set_value(mode)
        at.number_input(key="tf_lora_r").set_value(4)
        at.number_input(key="tf_epochs").set_value(epochs)
        at.number_input(key="tf_max_images").set_value(60)
        at.number_input(key="tf_batch_size").set_value(16)
        at.selectbox(key="tf_sampler").set_value("weighted")
        at.button(key="train_submit").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        return next(j.id for j in JobStore().list() if j.name == name)

    full_id = launch("full-ft", "full", 2)
    job = JobStore().get(full_id)
    assert job.config["mode"] == "full" and job.config["sampler"] == "weighted" and job.config["epochs"] == 2
    _wait_held(job)   # held after its first epoch: still running when Cancel is clicked, whatever the load
    assert refresh(full_id).status == "running"
    at.run()
    assert not at.exception
    assert at.selectbox(key="train_watch").value == full_id   # the one job is watched
    button = at.button(key=f"train_cancel_{full_id}")
    assert button.label == "Cancel job"
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    done = wait_for(full_id, ("succeeded", "failed", "cancelled"), deadline_s=60)
    assert done.status == "cancelled", (done.status, done.error)
    assert not process_alive(done.pid, done.id)
    hold.unlink()   # the resumed job and the next one run through
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table[table["id"] == full_id].iloc[0]["status"] == "cancelled"
    assert not any(b.key == f"train_cancel_{full_id}" for b in at.button)
    assert any("cancelled" in w.value.lower() for w in at.warning)
    assert badges(at) == [":orange-badge[:material/block: cancelled]"]
    # Resume from the page: the same job continues from its last complete epoch to the end.
    at.button(key=f"train_resume_{full_id}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert refresh(full_id).status in ("queued", "running", "succeeded")

    lora_id = launch("lora-ft", "lora", 1)
    lora = wait_for(lora_id, ("succeeded", "failed", "cancelled"))
    assert lora.status == "succeeded", lora.error
    full = wait_for(full_id, ("succeeded", "failed", "cancelled"))
    assert full.status == "succeeded", full.error
    card = json.loads((Path(full.run_dir) / "checkpoint" / "card.json").read_text())
    assert card["training"]["epochs_run"] == 2
    kinds = [e["type"] for e in events(full)]
    assert kinds.count("resume") == 1 and kinds[-1] == "done"
    lora_card = json.loads((Path(lora.run_dir) / "checkpoint" / "card.json").read_text())
    assert lora_card["training"]["trainable_params"] < lora_card["training"]["total_params"] / 4

    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert set(table["status"]) == {"succeeded"} and set(table["mode"]) == {"full", "lora"}
    # The watched job's summary shows the resume and the trainable parameter count.
    at.selectbox(key="train_watch").set_value(full_id).run()
    assert any("resumed 1×" in (p.proto.text or "") for p in at.get("progress"))
    # Compare the two runs: curves of both and a per-label table of final metrics.
    at.selectbox(key="train_cmp_a").set_value(lora_id)
    at.selectbox(key="train_cmp_b").set_value(full_id).run()
    assert not at.exception, [e.value for e in at.exception]
    fig = json.loads(at.get("plotly_chart")[-1].proto.spec)
    names = {t["name"] for t in fig["data"] if t.get("name")}
    assert {"A · lora-ft", "B · full-ft"} <= names
    cmp_table = next(d.value for d in at.dataframe if "A test" in d.value.columns)
    assert cmp_table.iloc[0][""] == "mean" and len(cmp_table) == 1 + 14
    diff = next(d.value for d in at.dataframe if list(d.value.columns) == ["option", "A", "B"])
    assert {"mode", "epochs"} <= set(diff["option"])
    # Clone the LoRA job: a new form (widget keys of generation 1) filled with its options.
    at.selectbox(key="train_watch").set_value(lora_id).run()
    at.button(key=f"train_clone_{lora_id}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="tf1_mode").value == "lora" and at.number_input(key="tf1_lora_r").value == 4
    assert at.selectbox(key="tf1_sampler").value == "weighted" and at.number_input(key="tf1_epochs").value == 1
    assert at.text_input(key="tf1_name").value == "lora-ft (clone)"
    assert at.radio(key="train_start1").value == FROM_CHECKPOINT
    assert at.selectbox(key="tf1_ckpt").value == "baseline (shipped demo)"
    assert at.selectbox(key="tf1_dataset").value == phantom
    assert not at.warning, [w.value for w in at.warning]
    # Launching the clone makes a new job with the same options.
    at.number_input(key="tf1_lora_r").set_value(2)
    at.button(key="train_submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    clone = next(j for j in JobStore().list() if j.name == "lora-ft (clone)")
    assert clone.config["mode"] == "lora" and clone.config["lora_r"] == 2 and clone.config["sampler"] == "weighted"
    assert clone.config["init"] == lora.config["init"] and clone.config["data"] == lora.config["data"]


def test_form_options_reach_the_job_config(ws):
    """Advanced options in the form become the job's config; a bad combination is refused with no job."""
    at = new_app()
    phantom = next(d for d in at.selectbox(key="tf_dataset").options if "phantom nih" in d)
    at.selectbox(key="tf_dataset").set_value(phantom)
    at.selectbox(key="tf_loss").set_value("focal")
    at.checkbox(key="tf_pos_weight").check()
    at.button(key="train_submit").click().run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "pos_weight" in errors[0] and JobStore().list() == []
    at.checkbox(key="tf_pos_weight").uncheck()
    at.selectbox(key="tf_hierarchy").set_value("two_stage")
    at.number_input(key="tf_gate_threshold").set_value(0.3)
    at.text_input(key="tf_policy_mix").set_value("ones:Atelectasis;zeros")
    at.multiselect(key="tf_views").set_value(["PA"])
    at.selectbox(key="tf_split_method").set_value("stratified")
    at.number_input(key="tf_early_stopping").set_value(2)
    at.selectbox(key="tf_schedule").set_value("plateau")
    at.number_input(key="tf_aug_shear").set_value(10.0)
    at.number_input(key="tf_epochs").set_value(1)
    at.number_input(key="tf_max_images").set_value(40)
    at.number_input(key="tf_image_size").set_value(48)
    at.button(key="train_submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = JobStore().list()[0]
    c = job.config
    assert (c["loss"], c["hierarchy"], c["gate_threshold"], c["policy"], c["views"], c["split_method"],
            c["early_stopping"], c["schedule"], c["augment_options"]["shear"]) == \
        ("focal", "two_stage", 0.3, "ones:Atelectasis;zeros", ["PA"], "stratified", 2, "plateau", 10.0)
    done = wait_for(job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    card = json.loads((Path(done.run_dir) / "checkpoint" / "card.json").read_text())
    # 0.3 was the gate threshold while training; the saved one is tuned on validation, stored once (the card's)
    assert card["labels"][-1] == "Any finding" and card["training"]["config"]["gate_threshold"] == 0.3
    assert card["model"]["two_stage"]["gate_threshold"] == card["thresholds"]["Any finding"]
