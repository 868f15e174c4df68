"""Scoring new PACS studies as they arrive (issue 22 §3, cxrcore/pacs/watch.py, `cxr pacs watch`): against Debian's
Orthanc on 127.0.0.1, a poll scores the studies in its window once and stores their Structured Reports (with
PyTorch's numbers) and heatmaps into them; a second poll, a restart and an old-dated study score nothing; a new
study is scored alone; a lateral-only study is skipped. The watch's table claims a study before scoring it, retries
a failed one with back-off, takes over a dead process's claim; an unreachable PACS is retried with growing waits;
as a job it is cancelled to stop and says how many studies it scored. Only the operator or an admin starts one."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from conftest import FORMATS, cxr_here, job_workspace, kill_jobs, wait_for

DICOM = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
TODAY = dt.date.today().strftime("%Y%m%d")
YESTERDAY = (dt.date.today() - dt.timedelta(days=1)).strftime("%Y%m%d")   # a watch's window by default


@pytest.fixture
def env(pacs, monkeypatch):
    values = {"CXR_DICOMWEB_URL": pacs["url"], "CXR_DICOMWEB_USER": pacs["user"],
              "CXR_DICOMWEB_PASSWORD": pacs["password"], "CXR_PACS_STORE": "on-request"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def new_study(config, date: str = TODAY, view: str = "PA") -> str:
    """The test film stored as a new study (new UIDs) dated ``date``; its Study Instance UID."""
    import pydicom
    from pydicom.uid import generate_uid

    from cxrcore.pacs.dicomweb import store

    ds = pydicom.dcmread(DICOM)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate, ds.ViewPosition = date, view
    store(config, [ds])
    return str(ds.StudyInstanceUID)


def test_new_studies_are_scored_once_with_their_results_stored_in_them(env, shipped, tmp_path, monkeypatch):
    from cxrcore.data.imageio import read_image
    from cxrcore.pacs import dicomweb
    from cxrcore.pacs.sr import read_report
    from cxrcore.pacs.watch import WatchTable, poll
    from cxrcore.predictor import Predictor

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))   # its own monitoring log
    config = dicomweb.PacsConfig.from_env()
    predictor = Predictor(shipped["finetuned"])
    a, old, side = new_study(config), new_study(config, date="20000101"), new_study(config, view="LL")
    table = WatchTable(tmp_path / "watch.sqlite")
    lines: list[str] = []
    first = poll(config, predictor, "finetuned", table, log=lines.append)
    assert a in first.scored and old not in first.scored + first.skipped and side in first.skipped
    assert not first.failed

    derived = [h for h in dicomweb.study_images(config, a, derived=True) if h.modality == "SR"]
    assert len(derived) == 1
    report = read_report(dicomweb.retrieve_dataset(config, a, derived[0].series_uid, derived[0].sop_uid))
    image = dicomweb.study_images(config, a)[0]
    pred = predictor.predict(read_image(dicomweb.retrieve_bytes(config, image), "film.dcm"), heatmaps=False)
    assert np.allclose([report[x]["probability"] for x in pred.labels], pred.probs, atol=1e-5)
    row = next(r for r in table.rows() if r["study_uid"] == a)
    assert row["state"] == "scored" and row["images"] == 1 and row["tries"] == 0
    assert derived[0].sop_uid in row["objects"] and any(a in line and "scored" in line for line in lines)
    called = row["calls"][image.sop_uid]
    assert called == [x for x, yes in zip(pred.labels, pred.positive) if yes]
    captures = [h for h in dicomweb.study_images(config, a, derived=True) if h.modality not in ("SR", "CR")]
    assert len(captures) == (1 if called else 0)   # the heatmap of the most probable finding called

    count = len(dicomweb.study_images(config, a, derived=True))
    again = poll(config, predictor, "finetuned", table)
    assert again.scored == [] and again.busy >= 2       # scored and skipped studies are not taken again
    assert len(dicomweb.study_images(config, a, derived=True)) == count
    b = new_study(config)
    assert poll(config, predictor, "finetuned", table).scored == [b]
    restarted = WatchTable(tmp_path / "watch.sqlite")   # a restart: the same table, a new process
    assert poll(config, predictor, "finetuned", restarted).scored == []
    assert poll(config, predictor, "finetuned", table, since="19990101").scored == [old]   # a wider window

    # each image scored is a row of the monitoring log (drift), named by a hash of its SOP Instance UID only
    from cxrcore.monitorlog import ScoreLog, ref_of
    from cxrcore.runtime import network_digest

    logged = ScoreLog().frame(network_digest(predictor.card))
    assert list(logged["source"]) == ["pacs-watch"] * 3 and ref_of(image.sop_uid) in set(logged["path"])
    assert logged["embedding"].map(len).eq(32).all() and logged["image std"].gt(0).all()
    assert image.sop_uid.encode() not in (tmp_path / "home" / "monitoring.sqlite").read_bytes()


def test_the_table_claims_retries_with_backoff_and_takes_over_a_dead_claim(tmp_path):
    from cxrcore.pacs.watch import MAX_TRIES, MAX_WAIT_S, STALE_CLAIM_S, WatchTable, backoff

    table, other = WatchTable(tmp_path / "w.sqlite"), WatchTable(tmp_path / "w.sqlite")
    other.me = "another-host:1"
    assert table.claim("1.2.3", "d1", "m") and not other.claim("1.2.3", "d1", "m")   # one holder at a time
    assert other.claim("1.2.3", "d2", "another model")                               # per model
    table.finish("1.2.3", "d1", "failed", error="PACS refused", interval=10)
    row = table.rows("d1")[0]
    assert (row["state"], row["tries"], row["error"]) == ("failed", 1, "PACS refused")
    assert not table.claim("1.2.3", "d1", "m")                                       # not before its next try
    assert table.claim("1.2.3", "d1", "m", now=row["next_try"] + 1)                 # then again
    for _ in range(MAX_TRIES - 1):
        table.finish("1.2.3", "d1", "failed", error="still refused", interval=10)
        table.claim("1.2.3", "d1", "m", now=table.rows("d1")[0]["next_try"] + 1)
    assert table.rows("d1")[0]["tries"] == MAX_TRIES
    assert not table.claim("1.2.3", "d1", "m", now=1e12)                             # given up after MAX_TRIES
    # a claim whose process died is taken over once stale, not before
    assert table.claim("9.9", "d1", "m")
    claimed_at = next(r for r in table.rows("d1") if r["study_uid"] == "9.9")["claimed_at"]
    assert not other.claim("9.9", "d1", "m", now=claimed_at + 60)
    assert other.claim("9.9", "d1", "m", now=claimed_at + STALE_CLAIM_S + 1)
    assert [backoff(k, 30) for k in range(6)] == [30, 60, 120, 240, 480, MAX_WAIT_S]


def test_an_unreachable_pacs_is_retried_with_growing_waits(shipped, tmp_path):
    import socket

    from cxrcore.pacs.dicomweb import PacsConfig, PacsError
    from cxrcore.pacs.watch import WatchTable, backoff, watch
    from cxrcore.predictor import Predictor

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = PacsConfig(f"http://127.0.0.1:{port}/dicom-web", user="u", password="secret-pw-1", store="on-request")
    waits, lines = [], []
    scored = watch(config, Predictor(shipped["finetuned"]), "finetuned", WatchTable(tmp_path / "w.sqlite"),
                   interval=5, log=lines.append, polls=3, sleep=waits.append)
    assert scored == 0 and waits == [backoff(1, 5), backoff(2, 5)]
    failed = [line for line in lines if line.startswith("poll failed")]
    assert len(failed) == 3 and all(f"127.0.0.1:{port}" in line for line in failed)
    assert not any("secret-pw-1" in line for line in lines)
    with pytest.raises(PacsError, match="CXR_PACS_STORE=on-request"):
        watch(PacsConfig(config.url, store="off"), None, "m", WatchTable(tmp_path / "w.sqlite"), polls=1)


def test_a_watch_started_on_the_training_page_scores_a_new_study_and_stops_when_cancelled(env, app_home, shipped,
                                                                                       tmp_path, monkeypatch, capsys):
    from conftest import app_page, no_exception
    from cxrcore.errors import AccessError
    from cxrcore.hosting import ENV_HOSTED, User, settings
    from cxrcore.jobs import JobStore, cancel
    from cxrcore.jobs.scoring import check_watch_config
    from cxrcore.pacs.dicomweb import PacsConfig, PacsError, search_studies
    from cxrcore.pacs.watch import WatchTable

    home = job_workspace(tmp_path / "home", monkeypatch)
    home.mkdir()
    (home / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)
    study = new_study(PacsConfig.from_env())
    try:
        at = app_page("training").run()
        no_exception(at)
        model = next(o for o in at.selectbox(key="watch_model").options if o.startswith("finetuned"))
        at.selectbox(key="watch_model").set_value(model)
        at.number_input(key="watch_interval").set_value(5)
        next(b for b in at.button if b.label == "Start watching").click().run()
        no_exception(at)
        assert any("Started watch" in s.value for s in at.success), [e.value for e in at.error]
        store = JobStore()
        job = store.get(at.session_state["train_watch"])
        assert job.config["task"] == "pacs-watch" and job.name.startswith("watch 127.0.0.1:")
        window = {h.study_uid for h in search_studies(PacsConfig.from_env(), date_from=YESTERDAY)}
        assert study in window

        def settled():   # every study of the window taken and ended (scored or skipped)
            ended = {r["study_uid"]: r["state"] for r in WatchTable().rows() if r["state"] in ("scored", "skipped")}
            return window <= set(ended) and ended[study] == "scored"
        wait_for(settled, 300, what="the watch job to score the new study")
        at.run()
        no_exception(at)
        rows = next(d.value for d in at.dataframe if "study" in d.value.columns)
        assert rows.loc[rows["study"] == study, "state"].item() == "scored"
        # the same table across processes: a poll from the command line finds nothing left to score
        code, out, err = cxr_here(capsys, "pacs", "watch", "--checkpoint", shipped["finetuned"], "--once")
        assert code == 0, err
        assert json.loads(out)["scored"] == []
        done = cancel(job.id, store, timeout=30)
        assert done.status == "cancelled" and "new study(ies) scored" in done.error, done.error
        assert study in (home / "runs" / job.id / "log.txt").read_text()
        code, out, _ = cxr_here(capsys, "pacs", "scored", "--json")
        assert any(r["study_uid"] == study and r["state"] == "scored" for r in json.loads(out))
    finally:
        kill_jobs(home)
    hosted = settings(environ={ENV_HOSTED: "1"})
    with pytest.raises(AccessError, match="Only the operator or an admin"):
        check_watch_config({"task": "pacs-watch", "checkpoint": str(shipped["finetuned"])}, hosted, User(id="alice"))
    monkeypatch.setenv("CXR_PACS_STORE", "off")
    with pytest.raises(PacsError, match="on-request"):
        check_watch_config({"task": "pacs-watch", "checkpoint": str(shipped["finetuned"])})
