"""`cxr score` as a job of the queue (issue 22 §4, cxrcore/jobs/scoring.py): submitted from the command line,
killed halfway (SIGKILL to its process group, as an out-of-memory kill or a lost node would), resumed, and every
image in the table once, the rows scored before the kill kept as they were; the job's progress and end as the
Training page and `cxr jobs show` read them.

The kill happens at a known point, not a hoped-for one: the list holds a named pipe where one image should be, so
the job's reader waits there (as on a hung network share) after every part before it has been written; the test
kills it then, puts the image in the pipe's place and resumes. ``CXR_SCORE_JOB_IMAGES`` sets the archive's size
(600 here; the issue's 2,000 when set so: bench/RESULTS.md)."""
from __future__ import annotations

import json
import os
import shutil
import signal

import pandas as pd
import pytest

from conftest import cxr_here, job_workspace, kill_jobs, wait_for

N = int(os.environ.get("CXR_SCORE_JOB_IMAGES", "600"))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    home = job_workspace(tmp_path / "home", monkeypatch)
    yield home
    kill_jobs(home)


def test_a_scoring_job_killed_halfway_resumes_and_scores_every_image_once(phantom, shipped, workspace, tmp_path,
                                                                           capsys):
    from cxrcore.jobs import JobStore, job_summary, refresh, resume
    from cxrcore.jobs.logfiles import events
    from cxrcore.score import PART_ROWS

    images = sorted((phantom / "images").glob("*.png"))[:N]
    assert len(images) == N
    block = N // 2                        # the image the reader will wait for
    pipe = tmp_path / "slow-share" / images[block].name
    pipe.parent.mkdir()
    os.mkfifo(pipe)
    paths = [str(p) for p in images]
    paths[block] = str(pipe)
    pd.DataFrame({"path": paths}).to_csv(tmp_path / "list.csv", index=False)
    out = tmp_path / "scores.parquet"

    code, stdout, err = cxr_here(capsys, "score", tmp_path / "list.csv", "--checkpoint", shipped["finetuned"],
                                 "--out", out, "--background", "--name", "archive", "--json")
    assert code == 0, err
    job_id = json.loads(stdout)["job"]
    store = JobStore()
    job = store.get(job_id)
    assert job.status in ("queued", "running") and job.config["task"] == "score" and job.name == "archive"

    # every part before the pipe's is written; the reader waits at the pipe
    before = block // PART_ROWS
    parts = out.with_name(out.name + ".parts")
    wait_for(lambda: len(list(parts.glob("part-*.parquet"))) == before, 300, what=f"{before} parts written")
    kept = pd.concat([pd.read_parquet(p) for p in sorted(parts.glob("part-*.parquet"))], ignore_index=True)
    assert len(kept) == before * PART_ROWS
    s = job_summary(job.config, events(store.get(job_id)))
    assert s["phase"] == "scoring" and s["total"] == N and s["scored"] == before * PART_ROWS

    job = store.get(job_id)
    os.killpg(job.pid, signal.SIGKILL)    # no goodbye: what a kill -9, the OOM killer or a lost node does
    job = wait_for(lambda: (j := refresh(job_id, store)).status == "failed" and j, 60, what="the kill noticed")
    assert "ended without reporting" in job.error
    assert not out.exists() and len(list(parts.glob("part-*.parquet"))) == before

    pipe.unlink()                         # the share answers again
    shutil.copy(images[block], pipe)
    resumed = resume(job_id, store)
    assert resumed.status in ("queued", "running")
    job = wait_for(lambda: (j := refresh(job_id, store)).ended and j, 600, what="the resumed job's end")
    assert job.status == "succeeded", job.error

    table = pd.read_parquet(out)
    assert len(table) == N and table["path"].is_unique and set(table["path"]) == set(paths)
    assert table["path"].tolist() == paths                       # the list's order
    again = table.set_index("path").loc[kept["path"]].reset_index()
    pd.testing.assert_frame_equal(again, kept)                    # the rows before the kill, kept as they were
    assert not parts.exists() and pd.read_csv(out.with_suffix(".csv"))["path"].tolist() == paths

    s = job_summary(job.config, events(job))
    assert (s["phase"], s["attempts"], s["scored"], s["rows"], s["errors"], s["fraction"]) == ("done", 2, N, N, 0, 1.0)
    starts = [e for e in events(job) if e["type"] == "score_progress"]
    assert starts[-1]["todo"] == N - before * PART_ROWS           # the second attempt scored only the rest
    assert "scored into" in job.note and f"{N} image(s)" in job.note
    log = (job.path / "log.txt").read_text()
    assert "resume requested: continuing with the images not in its table yet" in log
    assert f"{before * PART_ROWS} row(s) were already scored by an earlier attempt" in log

    code, stdout, err = cxr_here(capsys, "jobs", "show", job_id)
    shown = json.loads(stdout)["progress"]
    assert (shown["phase"], shown["total"], shown["rows"]) == ("done", N, N)


def test_a_scoring_config_is_checked_before_anything_is_created(phantom, shipped, workspace, tmp_path):
    from cxrcore.errors import AccessError, CheckpointError, ConfigError, DataError
    from cxrcore.hosting import ENV_HOSTED, User, settings
    from cxrcore.jobs import JobStore, submit

    good = {"task": "score", "input": str(phantom / "images"), "checkpoint": str(shipped["finetuned"])}
    store = JobStore()
    for bad, error, words in [
        ({"epochs": 3}, ConfigError, "Unknown scoring option(s): epochs"),
        ({"workers": 0}, ConfigError, "workers must be a whole number of at least 1"),
        ({"input": str(tmp_path)}, DataError, "holds no image"),
        ({"checkpoint": str(tmp_path)}, CheckpointError, ""),
        ({"out": str(tmp_path / "x.csv")}, ConfigError, "names a .parquet file"),
        ({"task": "infer"}, ConfigError, "Unknown job task 'infer'"),
        ({"site": "nowhere"}, CheckpointError, "no site profile 'nowhere'"),
    ]:
        with pytest.raises(error) as caught:
            submit({**good, **bad}, store=store)
        assert words in str(caught.value)
    assert store.list() == []                   # nothing created
    # a visitor of a shared server: no output path of their own, no other server's PACS
    hosted = settings(environ={ENV_HOSTED: "1"})
    visitor = User(id="alice")
    from cxrcore.jobs.scoring import check_score_config

    with pytest.raises(AccessError, match="Only the operator chooses where"):
        check_score_config({**good, "out": str(tmp_path / "a.parquet")}, hosted, visitor)
    with pytest.raises(AccessError, match="operator's PACS only"):
        check_score_config({**good, "input": "http://elsewhere:8042/dicom-web/studies?PatientID=1"}, hosted, visitor)


def test_the_training_page_starts_a_scoring_job_and_shows_its_table(app_home, shipped, tmp_path, monkeypatch):
    """The Training page's "Score an archive" form: a typed folder that does not exist is refused with a message
    and nothing is created; a folder of 40 images becomes a job of the same table as the trainings, whose view
    shows the counts and, at its end, the rows and the CSV download."""
    from conftest import app_page, no_exception
    from cxrcore.jobs import JobStore, refresh

    home = job_workspace(tmp_path / "home", monkeypatch)
    home.mkdir()
    (home / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)
    archive = tmp_path / "archive"
    archive.mkdir()
    for src in sorted((app_home / "datasets").glob("phantom-nih-*/images/*.png"))[:40]:
        shutil.copy(src, archive / src.name)
    try:
        at = app_page("training").run()
        no_exception(at)
        model = next(o for o in at.selectbox(key="score_model").options if o.startswith("finetuned"))
        at.selectbox(key="score_model").set_value(model)
        at.text_input(key="score_input").set_value(str(tmp_path / "nowhere"))
        start = next(b for b in at.button if b.label == "Start scoring")
        start.click().run()
        no_exception(at)
        assert any("nowhere" in e.value for e in at.error), [e.value for e in at.error]
        assert JobStore().list() == []

        at.text_input(key="score_input").set_value(str(archive))
        next(b for b in at.button if b.label == "Start scoring").click().run()
        no_exception(at)
        assert any("Started scoring job" in s.value for s in at.success), [e.value for e in at.error]
        job_id = at.session_state["train_watch"]
        job = wait_for(lambda: (j := refresh(job_id, JobStore())).ended and j, 300, what="the scoring job's end")
        assert job.status == "succeeded", job.error
        at.run()
        no_exception(at)
        table = at.dataframe[0].value   # the jobs table
        assert table.loc[table["id"] == job_id, "task"].item() == "score"
        assert any("40 image(s) scored" in s.value for s in at.success), [s.value for s in at.success]
        rows = next(d.value for d in at.dataframe if "path" in d.value.columns)
        assert len(rows) == 40 and set(rows["path"]) == {str(p) for p in sorted(archive.glob("*.png"))}
        assert any(m.label == "Images in the table" and m.value == "40 of 40" for m in at.metric)
    finally:
        kill_jobs(home)


def test_only_a_job_that_reads_the_pacs_inherits_its_credentials():
    """Jobs inherit none of the server's secrets (cxrcore/jobs/environment.py), but a job reading the PACS needs
    the PACS's: a scoring of a DICOMweb query and a watch get those, and nothing else; a training or a scoring of a
    folder gets none."""
    from cxrcore.jobs.environment import job_environ
    from cxrcore.jobs.scoring import secrets_needed

    server = {"CXR_DICOMWEB_URL": "http://pacs:8042/dicom-web", "CXR_DICOMWEB_USER": "svc",
              "CXR_DICOMWEB_PASSWORD": "pw-123", "CXR_DICOMWEB_TOKEN": "tok-456", "OPENAI_API_KEY": "sk-1",
              "CXR_API_TOKEN": "api-789", "PATH": "/usr/bin"}
    query = {"task": "score", "input": "http://pacs:8042/dicom-web/studies?ModalitiesInStudy=CR"}
    for config, has in [({"data": "/data/nih"}, False), ({"task": "score", "input": "/archive"}, False),
                        (query, True), ({"task": "pacs-watch", "checkpoint": "/m"}, True)]:
        env = job_environ(server, needs=secrets_needed(config))
        assert ("CXR_DICOMWEB_PASSWORD" in env and "CXR_DICOMWEB_TOKEN" in env) is has, config
        assert "OPENAI_API_KEY" not in env and "CXR_API_TOKEN" not in env
        assert env["CXR_DICOMWEB_URL"] == server["CXR_DICOMWEB_URL"] and env["PATH"] == "/usr/bin"
