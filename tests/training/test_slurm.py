"""The Slurm backend against a real single-node Slurm cluster (slurmctld + slurmd + munged on
127.0.0.1, started without systemd by tests/slurm_cluster.py for this session).

Jobs train on the app's phantom NIH data (60 images at 64 px, 1 epoch, one thread) so a job
takes seconds. Skipped only when the Slurm/munge binaries are not installed (`scripts/setup.sh
test` installs Debian's slurm-wlm and munge).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cxr_here, job_workspace, kill_jobs, phantom_job_config, wait_for
from slurm_cluster import SlurmCluster, missing
from cxrcore.errors import ConfigError, JobError
from cxrcore.jobs import JobStore, cancel, check_config, events, refresh, refresh_all, slurm, tail_log

REPO = Path(__file__).resolve().parents[2]
needs_slurm = pytest.mark.skipif(bool(missing()), reason=(
    f"Slurm binaries not installed ({', '.join(missing())}); `scripts/setup.sh test` installs slurm-wlm and munge"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if missing():
        pytest.skip(f"Slurm binaries not installed: {', '.join(missing())}")
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    yield c
    c.stop()


@pytest.fixture
def ws(tmp_path, monkeypatch, cluster):
    """An isolated workspace on the cluster; cancels its Slurm jobs and kills local runners at the end."""
    job_workspace(tmp_path, monkeypatch)
    yield tmp_path
    db = tmp_path / "jobs.sqlite"
    if db.exists():
        ids = [j.backend_id for j in JobStore(db).list(limit=None) if j.backend_id and j.active]
        if ids:
            cluster.cmd("scancel", *ids, check=False)
    kill_jobs(tmp_path)


def wait_for_step(job, store):
    def stepping():
        j = refresh(job, store)
        assert not j.ended, f"job ended early ({j.status}: {j.error}); log:\n{tail_log(j, 40)}"
        return any(e.get("type") == "step" for e in events(j))
    wait_for(stepping, what=f"job {job.id} to reach a training step")


def slurm_job_state(cluster, sid: str) -> str:
    out = cluster.cmd("scontrol", "show", "job", sid, check=False)
    m = re.search(r"JobState=(\S+)", out.stdout)
    return m.group(1) if m else ""


# --------------------------------------------------------------------------- no cluster needed

def test_sbatch_script_multinode_text(tmp_path):
    cfg = {"data": "/data/x", "gpus": 1, "nproc": 2, "nodes": 2, "threads": 0,
           "slurm": {"partition": "gpu", "cpus": 8, "mem": "32G", "time": "2:00:00", "account": "rad",
                     "extra": ["--constraint=a100", "--exclusive"]}}
    text = slurm.render_script("20260101-000000-abcd", cfg, tmp_path / "run", tmp_path / "jobs.sqlite", name="big run",
                               python="/opt/venv/bin/python", cxr_home=tmp_path)
    assert text.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --job-name=cxr-big-run", f"#SBATCH --output={tmp_path / 'run' / 'log.txt'}",
                 "#SBATCH --open-mode=append", "#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --gres=gpu:1", "#SBATCH --mem=32G", "#SBATCH --time=2:00:00", "#SBATCH --account=rad",
                 "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --constraint=a100", "#SBATCH --exclusive",
                 "export OMP_NUM_THREADS=8", f"export CXR_HOME={tmp_path}", "export PYTHONUNBUFFERED=1"):
        assert line in text.splitlines(), f"missing {line!r} in\n{text}"
    assert f"export PYTHONPATH={REPO}" in text
    # Several nodes: the runner runs once (it owns the row) and starts `srun ... torchrun` itself.
    assert 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert "exec /opt/venv/bin/python -m cxrcore.jobs.runner 20260101-000000-abcd --db " in text
    assert not [ln for ln in text.splitlines() if ln.startswith("srun ")]
    from cxrcore.train.trainer import TrainConfig
    from cxrcore.train.worker import launch_command

    argv = launch_command(TrainConfig(data="/d", nodes=2, nproc=2), tmp_path / "run", job_id="j9")
    assert argv[:2] == ["bash", "-c"]
    assert re.search(r"^srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 \S+ -m torch\.distributed\.run "
                     r"--nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-id j9 "
                     r"--rdzv-endpoint \"\$\{MASTER_ADDR:-.*\}\":29500 -m cxrcore\.train\.worker ", argv[2]), argv[2]
    # The command is valid shell (bash -n parses it without running anything).
    assert subprocess.run(["bash", "-n", "-c", argv[2]]).returncode == 0
    # One node, CPU: the runner is exec'ed directly (scancel --batch reaches it), no gres line.
    one = slurm.render_script("j1", {"data": "/d", "gpus": 0, "nodes": 1, "nproc": 1, "slurm": {}}, tmp_path / "r",
                              tmp_path / "db", python="/opt/venv/bin/python", cxr_home=tmp_path)
    assert "gres" not in one and "srun" not in one and "#SBATCH --partition" not in one
    assert "exec /opt/venv/bin/python -m cxrcore.jobs.runner j1 --db" in one


BAD_PLACEMENT = {
    "gpus -1": ({"gpus": -1}, "gpus"),
    "gpus as text": ({"gpus": "1"}, "gpus"),
    "share_gpus as int": ({"share_gpus": 1}, "share_gpus"),
    "nproc 0": ({"nproc": 0}, "nproc"),
    "nodes 0": ({"nodes": 0}, "nodes"),
    "slurm not a dict": ({"slurm": "debug"}, "slurm"),
    "unknown slurm key": ({"slurm": {"queue": "debug"}}, "queue"),
    "slurm cpus as text": ({"slurm": {"cpus": "4"}}, "cpus"),
    "slurm cpus 0": ({"slurm": {"cpus": 0}}, "cpus"),
    "slurm extra not strings": ({"slurm": {"extra": [3]}}, "extra"),
    "slurm partition two lines": ({"slurm": {"partition": "a\n#SBATCH --x"}}, "slurm option partition"),
    "cuda without gpus": ({"device": "cuda", "gpus": 0}, "gpu"),
}


@pytest.mark.parametrize("case", list(BAD_PLACEMENT))
def test_placement_options_validated(phantom, case):
    over, match = BAD_PLACEMENT[case]
    with pytest.raises(ConfigError, match=match):
        check_config(phantom_job_config(phantom, **over))


def test_placement_options_accepted(phantom):
    cfg = check_config(phantom_job_config(phantom, gpus=0, nproc=2, nodes=1,
                                    slurm={"partition": "debug", "cpus": 2, "mem": 500, "time": "0:10:00",
                                           "extra": ["--hold"]}))
    assert cfg["nproc"] == 2 and cfg["slurm"]["mem"] == 500


# --------------------------------------------------------------------------- unreachable Slurm

def _no_rows_no_folders(ws: Path):
    db = ws / "jobs.sqlite"
    assert not db.exists() or JobStore(db).list() == []
    runs = ws / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_unreachable_slurm_raises_before_anything_is_created(ws, phantom, cluster, monkeypatch, tmp_path_factory):
    store = JobStore()
    # 1. No sbatch on PATH.
    empty_bin = tmp_path_factory.mktemp("nobin")
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(empty_bin))
    with pytest.raises(JobError, match=r"Slurm is not reachable: `sbatch` is not on PATH"):
        slurm.submit(phantom_job_config(phantom), name="nope", store=store, cluster=str(cluster.conf))
    monkeypatch.setenv("PATH", path)
    _no_rows_no_folders(ws)

    # 2. A configuration whose controller nobody runs (a port nothing listens on).
    bad = tmp_path_factory.mktemp("badconf") / "slurm.conf"
    text = re.sub(r"SlurmctldPort=\d+", "SlurmctldPort=9", cluster.conf.read_text())
    bad.write_text(text.replace("MessageTimeout=5", "MessageTimeout=1"))
    with pytest.raises(JobError, match="Slurm is not reachable: its controller does not answer"):
        slurm.submit(phantom_job_config(phantom), name="nope", store=store, cluster=str(bad))
    monkeypatch.setenv("SLURM_CONF", str(bad))  # the same through the environment
    with pytest.raises(JobError, match="not reachable"):
        slurm.submit(phantom_job_config(phantom), name="nope", store=store)
    # 3. A configuration file that does not exist (Slurm's commands would retry it for a minute).
    with pytest.raises(JobError, match="does not exist"):
        slurm.submit(phantom_job_config(phantom), name="nope", store=store, cluster=str(bad.parent / "missing.conf"))
    _no_rows_no_folders(ws)
    assert "not reachable" in (slurm.available(str(bad)) or "")
    assert slurm.available(str(cluster.conf)) is None


def test_slurm_refuses_before_a_row_or_folder(ws, phantom, cluster):
    store = JobStore()
    with pytest.raises(JobError, match="(?i)refuses.*partition"):
        slurm.submit(phantom_job_config(phantom, slurm={"partition": "nosuchpartition"}), store=store,
                     cluster=str(cluster.conf))
    with pytest.raises(JobError, match="Slurm refuses"):  # no node has a GPU
        slurm.submit(phantom_job_config(phantom, gpus=1), store=store, cluster=str(cluster.conf))
    taken = ws / "taken"
    taken.mkdir()
    with pytest.raises(JobError, match="already exists"):
        slurm.submit(phantom_job_config(phantom), store=store, run_dir=taken, cluster=str(cluster.conf))
    _no_rows_no_folders(ws)


# --------------------------------------------------------------------------- real jobs

def test_real_job_pending_running_succeeded(ws, phantom, cluster, capsys):
    store = JobStore()
    job = slurm.submit(phantom_job_config(phantom), name="on-slurm", store=store, cluster=str(cluster.conf))
    assert job.backend == "slurm" and job.backend_id and job.backend_id.isdigit()
    assert job.status == "queued" and job.pid is None
    run_dir = Path(job.run_dir)
    script = (run_dir / "job.sbatch").read_text()
    assert f"--output={run_dir / 'log.txt'}" in script and f"cxrcore.jobs.runner {job.id}" in script
    assert job.config["slurm"]["conf"] == str(cluster.conf)

    seen = []

    def ended():
        j = refresh(job, store)  # dispatches to slurm.refresh
        seen.append((j.status, j.note))
        return j if j.ended else None
    done = wait_for(ended, what="the Slurm job to end", interval=0.2)
    assert done.status == "succeeded", f"{done.error}\n{tail_log(done, 40)}\n{cluster.logs()}"
    assert done.exit_code == 0 and done.pid and done.note is None
    assert any(n and n.startswith("Slurm: ") for _, n in seen), seen  # PENDING / RUNNING as Slurm said
    assert (run_dir / "checkpoint" / "card.json").exists()
    log = tail_log(done, 200)
    assert f"slurm job {job.backend_id} on" in log and "train" in log and "succeeded" in log
    assert "CUDA_VISIBLE_DEVICES" in log

    out = subprocess.run([sys.executable, "-m", "cxrcore.cli", "jobs", "list"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith(job.id))
    assert "succeeded" in line and f"slurm:{job.backend_id}" in line and "on-slurm" in line
    # the other two through `cxr`'s main in this process (cxr_here): no Python start each
    code, out, _ = cxr_here(capsys, "jobs", "show", job.id)
    assert code == 0 and f'"slurm_id": "{job.backend_id}"' in out and '"backend": "slurm"' in out
    code, out, _ = cxr_here(capsys, "jobs", "logs", job.id, "--lines", "3")
    assert code == 0 and "succeeded" in out


def test_cancel_pending_slurm_job(ws, phantom, cluster):
    store = JobStore()
    job = slurm.submit(phantom_job_config(phantom, slurm={"extra": ["--hold"]}), name="held", store=store,
                       cluster=str(cluster.conf))
    j = refresh(job, store)
    assert j.status == "queued" and j.note.startswith("Slurm: PENDING"), j.note
    done = cancel(job.id, store=store, timeout=5)
    assert done.status == "cancelled"
    assert slurm_job_state(cluster, job.backend_id) == "CANCELLED"


def test_job_killed_behind_our_back_is_failed_with_log_lines(ws, phantom, cluster):
    store = JobStore()
    job = slurm.submit(phantom_job_config(phantom, epochs=40), name="doomed", store=store, cluster=str(cluster.conf))
    wait_for_step(job, store)
    pid = refresh(job, store).pid  # the runner's pid on the (single, this) node
    assert pid
    os.kill(pid, signal.SIGKILL)  # like the OOM killer: no chance to report

    def gone():
        refresh_all(store)  # what `cxr jobs list` and the Training page do
        j = store.get(job.id)
        return j if j.status != "running" else None
    done = wait_for(gone, deadline_s=60, what="refresh to notice the killed job")
    assert done.status == "failed", done.error
    assert "Slurm reports the job" in done.error and "Last log lines" in done.error
    last = tail_log(done, 5).strip()
    assert last and last in done.error
    assert done.exit_code == -9


def test_purged_job_is_marked_failed(ws, cluster):
    store = JobStore()
    job = store.create({"data": "/x", "slurm": {"conf": str(cluster.conf)}}, name="forgotten", backend="slurm")
    store.update(job.id, backend_id="987654")
    done = refresh(job.id, store)
    assert done.status == "failed" and "no longer knows job 987654" in done.error


def test_cancelled_slurm_job_resumes_to_completion(ws, phantom, cluster, hold):
    """Cancel a running Slurm job once its first epoch is saved (it holds there: the ``hold`` fixture), resubmit
    through `resume`: the new Slurm job continues from that epoch. The cancel is what a running job's is (the
    scancel SIGTERM reaches the runner, which stops at the next step; Slurm reports the job ended; a second
    cancel is refused)."""
    from cxrcore.jobs import resume
    from cxrcore.train.state import state_path

    store = JobStore()
    job = slurm.submit(phantom_job_config(phantom, epochs=2, max_images=40), name="resumable", store=store,
                       cluster=str(cluster.conf))
    first_sid = job.backend_id

    def held():
        j = refresh(job, store)
        assert not j.ended, f"job ended before the hold ({j.status}: {j.error}); log:\n{tail_log(j, 40)}"
        return any(e.get("type") == "hold" for e in events(j))
    wait_for(held, what="the first epoch to be saved (the job holds after it)")
    assert state_path(job.run_dir) is not None
    assert refresh(job, store).status == "running"
    done = cancel(job.id, store=store)  # the dispatcher hands a Slurm job to scancel
    assert done.status == "cancelled", done.error
    assert "SIGTERM" in tail_log(done, 20)  # the runner stopped cleanly
    wait_for(lambda: slurm_job_state(cluster, first_sid) not in ("RUNNING", "COMPLETING", "PENDING"),
             deadline_s=15, what="Slurm to report the job ended")
    assert refresh(job, store).status == "cancelled"
    with pytest.raises(JobError, match="already ended with status cancelled"):
        cancel(job.id, store=store)

    hold.unlink()  # the resumed job runs through
    again = resume(job.id, store)
    assert again.status == "queued" and again.backend_id != first_sid

    def ended():
        j = refresh(job, store)
        return j if j.ended else None
    done = wait_for(ended, what="the resumed job to end")
    assert done.status == "succeeded", (done.error, tail_log(done, 30))
    assert "resuming from the last complete epoch" in tail_log(done, 400)
    kinds = [e["type"] for e in events(done)]
    assert kinds.count("resume") == 1 and kinds[-1] == "done"
    assert [e["epoch"] for e in events(done) if e["type"] == "epoch"] == [1, 2]


def test_slurm_job_sigterm_from_outside_is_cancelled_saying_so(ws, phantom, cluster, tmp_path, monkeypatch):
    """`scancel --batch --signal=TERM` from outside cxr while the job holds at its first epoch's end (the
    CXR_TRAIN_HOLD file, exported to the job by sbatch): the runner stops the training at the next step and
    records the job cancelled with the signal named and its checkpoint kept, as a local job would."""
    from cxrcore.train.trainer import HOLD_ENV

    hold = tmp_path / "hold"
    hold.write_text("hold\n")
    monkeypatch.setenv(HOLD_ENV, str(hold))
    store = JobStore()
    job = slurm.submit(phantom_job_config(phantom, epochs=3), name="signalled", store=store,
                       cluster=str(cluster.conf))

    def held():
        j = refresh(job, store)
        assert not j.ended, f"job ended before the hold ({j.status}: {j.error}); log:\n{tail_log(j, 40)}"
        return any(e.get("type") == "hold" for e in events(j))
    wait_for(held, what="the Slurm job to hold at its first epoch's end")
    cluster.cmd("scancel", "--batch", "--signal=TERM", job.backend_id)
    wait_for(lambda: "received SIGTERM" in tail_log(job, 20), deadline_s=30, what="the runner to get the signal")
    hold.unlink()

    def ended():
        j = refresh(job, store)
        return j if j.ended else None
    done = wait_for(ended, what="the Slurm job to end")
    assert done.status == "cancelled", (done.error, tail_log(done, 40))
    assert "received SIGTERM" in done.error and "was kept" in done.error
    assert (Path(done.run_dir) / "checkpoint" / "card.json").exists()
    assert [e["ended"] for e in events(done) if e["type"] == "done"] == ["stopped"]


def test_a_scoring_job_runs_on_slurm_as_an_array_of_shards(ws, phantom, shipped, cluster, tmp_path_factory, capsys):
    """`cxr score --backend slurm --shards 3` (cxrcore/jobs/scoring.py): one sbatch array of three tasks, each
    scoring its shard on a node into its own table; the last to end merges them into the run folder's table in the
    list's order, every image once, and marks the job succeeded."""
    import json

    import pandas as pd

    from cxrcore.jobs import job_summary
    from cxrcore.score import shard_of

    store = JobStore()
    images = sorted((phantom / "images").glob("*.png"))[:40]
    listing = tmp_path_factory.mktemp("list") / "list.csv"
    pd.DataFrame({"path": [str(p) for p in images]}).to_csv(listing, index=False)
    assert len({shard_of(str(p), 3) for p in images}) == 3        # every shard has images
    code, out, err = cxr_here(capsys, "score", listing, "--checkpoint", shipped["finetuned"], "--out",
                              ws / "archive.parquet", "--backend", "slurm", "--slurm-conf", cluster.conf,
                              "--shards", "3", "--runtime", "torch", "--name", "sharded", "--json")
    assert code == 0, err
    job = store.get(json.loads(out)["job"])
    script = (Path(job.run_dir) / "job.sbatch").read_text()
    assert "#SBATCH --array=0-2" in script and "--shard ${SLURM_ARRAY_TASK_ID}" in script
    done = wait_for(lambda: (j := refresh(job, store)).ended and j, what="the Slurm scoring job to end", interval=0.2)
    assert done.status == "succeeded", f"{done.error}\n{tail_log(done, 60)}\n{cluster.logs()}"
    table = pd.read_parquet(ws / "archive.parquet")
    assert table["path"].tolist() == [str(p) for p in images]   # every image once, in the list's order
    assert not (ws / "archive.parquet.shards").exists() and "40 image(s) scored" in done.note
    log = tail_log(done, 200)
    assert f"slurm job {job.backend_id}" in log and "3 tables merged" in log and log.count("shard ") >= 3
    s = job_summary(done.config, events(done))
    assert (s["phase"], s["shards"], s["shards_done"], s["total"], s["rows"]) == ("done", 3, 3, 40, 40)
    code, _, err = cxr_here(capsys, "score", listing, "--checkpoint", shipped["finetuned"], "--out",
                            ws / "x.parquet", "--shards", "2")
    assert code == 2 and "--backend slurm" in err
