"""Drift monitoring (issue 23 §3, cxrcore/eval/drift.py, `cxr monitor`, the Monitoring page): on synthetic streams
whose change is known, a stream without change stays quiet and each kind of change alarms for its own reason;
windows by day, week and N images; then on phantom films scored by `cxr score`: a stream that switches from NIH-style
to CheXpert-style films alarms from the switch on, in the command's JSON (its exit status with --fail-on-alarm) and
on the Monitoring page."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import app_page, cxr_here, no_exception

STATS = ["mean", "std", "entropy", "neighbour_corr", "edge_density", "white_fraction", "symmetry"]


def _stream(n: int, seed: int, *, label_shift: float = 0.0, emb_shift: float = 0.0, stat_shift: float = 0.0,
            per_patient: int = 1, day0: str = "2026-01-05", per_day: int = 100):
    """Synthetic scored rows: 3 labels' probabilities, 7 image statistics and a 32-number embedding, each with a
    patient effect shared by ``per_patient`` consecutive films (as a reference split has)."""
    from cxrcore.eval.drift import Stream

    r = np.random.default_rng(seed)
    patients = np.arange(n) // per_patient
    effect = r.normal(0, 0.7, (patients.max() + 1, 1))[patients]
    probs = 1 / (1 + np.exp(-(r.normal(-1.0, 1.0, (n, 3)) + effect)))
    probs[:, 1] = 1 / (1 + np.exp(-(np.log(probs[:, 1] / (1 - probs[:, 1])) + label_shift)))
    stats = r.normal(0, 1, (n, 7)) + effect
    stats[:, 1] += stat_shift
    emb = r.normal(0, 1, (n, 32)) + effect
    emb[:, :4] += emb_shift
    times = np.datetime64(day0) + (np.arange(n) // per_day).astype("timedelta64[D]")
    return Stream(["A", "B", "C"], STATS, probs, stats, emb.astype(np.float32), times,
                  [f"img{seed}_{i}.png" for i in range(n)], [""] * n,
                  groups=patients.astype(str) if per_patient > 1 else None)


@pytest.fixture(scope="module")
def reference():
    return _stream(1200, 1, per_patient=2)


def test_no_change_stays_quiet_and_each_change_alarms_for_its_own_reason(reference):
    from cxrcore.eval.drift import monitor

    quiet = monitor(_stream(3000, 2), reference, "day", n_perm=50)
    assert len(quiet.windows) == 30 and all(w["n"] == 100 for w in quiet.windows)
    assert len(quiet.alarms) <= 1, [w["score"] for w in quiet.windows]
    assert abs(np.mean([w["score"] for w in quiet.windows])) < 1.0   # standardised against the reference's windows

    shifted = monitor(_stream(600, 3, label_shift=1.5), reference, 100, n_perm=50)
    assert len(shifted.alarms) == 6
    assert all(w["why"][0].startswith("B probabilities") for w in shifted.alarms), shifted.alarms[0]["why"]
    assert shifted.alarms[0]["mean_probability"]["B"][0] > shifted.alarms[0]["mean_probability"]["B"][1]

    contrast = monitor(_stream(300, 4, stat_shift=0.8), reference, 100, n_perm=50)
    assert len(contrast.alarms) == 3 and all(w["why"][0].startswith("image std") for w in contrast.alarms)

    embedded = monitor(_stream(300, 5, emb_shift=0.8), reference, 100, n_perm=99)
    assert len(embedded.alarms) == 3
    w = embedded.alarms[0]
    assert w["why"][0].startswith("model embedding") and w["components"]["embedding:mmd"]["p"] <= 0.02
    assert max(w["families"], key=w["families"].get) == "embedding"
    assert len(w["top_images"]) == 5 and w["top_images"][0]["witness"] >= w["top_images"][-1]["witness"]


def test_windows_by_day_week_and_count_and_what_cannot_be_compared(reference):
    from cxrcore.errors import DataError
    from cxrcore.eval.drift import monitor, windows_of

    s = _stream(1000, 6, day0="2026-01-07", per_day=100)   # a Wednesday; 10 days of 100 films
    days = windows_of(s, "day")
    assert [d[0] for d in days][:2] == ["2026-01-07", "2026-01-08"] and all(len(d[2]) == 100 for d in days)
    weeks = windows_of(s, "week")   # Monday to Sunday: Wed-Sun (500), Mon-Sun (500)
    assert [(w[0], w[1], len(w[2])) for w in weeks] == [("2026-01-05", "2026-01-11", 500),
                                                         ("2026-01-12", "2026-01-18", 500)]
    counted = windows_of(s, "300")
    assert [len(c[2]) for c in counted] == [300, 300, 300, 100] and counted[-1][:2] == ("#901", "#1000")
    report = monitor(_stream(210, 7), reference, 100, n_perm=20)
    assert report.windows[-1]["score"] is None and "too few" in report.windows[-1]["note"]
    for bad, words in (("10", "too small"), ("month", "Unknown window")):
        with pytest.raises(DataError, match=words):
            windows_of(s, bad)
    s.scored_at = None
    with pytest.raises(DataError, match="no scoring time"):
        windows_of(s, "day")
    with pytest.raises(DataError, match="at least"):
        monitor(_stream(300, 8), _stream(40, 9), 100)


def test_psi_and_mmd_measure_what_they_say():
    from cxrcore.eval.drift import bandwidth, mmd, psi

    r = np.random.default_rng(0)
    a, b = r.normal(0, 1, 2000), r.normal(0, 1, 2000)
    assert psi(a, b) < 0.02 and psi(a, r.normal(1, 1, 2000)) > 0.5
    x, y = r.normal(0, 1, (150, 8)), r.normal(0, 1, (300, 8))
    _, p_same, _ = mmd(x, y, bandwidth(y), n_perm=99)
    _, p_moved, witness = mmd(x + 0.6, y, bandwidth(y), n_perm=99)
    assert p_same > 0.05 and p_moved <= 0.02 and witness.shape == (150,)


def test_a_table_without_the_monitoring_columns_is_refused_with_what_to_do(tmp_path):
    import pandas as pd

    from cxrcore.errors import DataError
    from cxrcore.eval.drift import read_stream

    old = tmp_path / "old.parquet"
    pd.DataFrame({"path": ["a.png"], "A": [0.2], "A call": [False]}).to_parquet(old)
    with pytest.raises(DataError, match="Score the images again"):
        read_stream(old)
    with pytest.raises(DataError, match="not a scored table"):
        read_stream(tmp_path / "old.csv")


@pytest.fixture(scope="module")
def switched(app_home, tmp_path_factory, shipped):
    """100 NIH-style films of the baseline's test split, then 100 CheXpert-style ones, in random order within
    each, scored by `cxr score`; the baseline's validation split scored as the reference (cached)."""
    import os

    import pandas as pd

    from cxrcore.data.readers import read_dataset
    from cxrcore.eval.drift import reference_table
    from cxrcore.eval.predictions import model_split_rows
    from cxrcore.predictor import Predictor
    from cxrcore.score import score, source_of

    folder = tmp_path_factory.mktemp("drift")
    old = os.environ.get("CXR_HOME")
    os.environ["CXR_HOME"] = str(app_home)
    try:
        nih = next((app_home / "datasets").glob("phantom-nih-*"))
        chex = next((app_home / "datasets").glob("phantom-chexpert-*"))
        predictor = Predictor(shipped["baseline"])
        rng = np.random.default_rng(0)
        index = read_dataset(nih)
        test = list(index.frame["path"].iloc[model_split_rows(predictor, index, "test")])
        films = sorted(str(p) for p in chex.rglob("*.jpg"))
        listing = folder / "stream.csv"
        pd.DataFrame({"path": list(rng.permutation(test)[:100]) + list(rng.permutation(films)[:100])}).to_csv(
            listing, index=False)
        table = folder / "stream.parquet"
        score(source_of(str(listing)), predictor, table, "baseline")
        ref = reference_table(shipped["baseline"], nih, "val")
    finally:
        if old is None:
            os.environ.pop("CXR_HOME", None)
        else:
            os.environ["CXR_HOME"] = old
    return {"table": table, "reference": ref, "nih": nih}


def test_the_scored_table_keeps_what_monitoring_reads_and_the_reference_its_patients(switched):
    import pandas as pd

    from cxrcore.inference import EMBED_DIM

    table = pd.read_parquet(switched["table"])
    assert {"scored_at", "image mean", "image edge_density"} <= set(table.columns)
    assert len(table["embedding"].iloc[0]) == EMBED_DIM
    assert "embedding" not in pd.read_csv(switched["table"].with_suffix(".csv"), nrows=1).columns
    ref = pd.read_parquet(switched["reference"])
    assert ref["patient"].str.fullmatch(r"[0-9a-f]{12}").all()        # hashed, not the dataset's patient IDs
    assert ref["patient"].nunique() < len(ref)                        # several films of some patients


def test_cxr_monitor_alarms_from_the_domain_switch_on(switched, app_env, capsys, tmp_path):
    out = tmp_path / "drift.json"
    code, text, err = cxr_here(capsys, "monitor", "--table", switched["table"], "--checkpoint", "checkpoints/baseline",
                               "--reference", switched["nih"], "--window", "50", "--json", "--out", out,
                               "--fail-on-alarm")
    assert code == 3, err
    report = json.loads(text)
    assert json.loads(out.read_text()) == report
    assert report["alarms"] == [2, 3] and report["latest_alarm"] is True
    assert report["families"] == ["outputs", "image", "embedding"]
    first = report["windows"][2]
    assert first["start"] == "#101" and first["n"] == 50 and first["score"] >= 3
    assert {"outputs", "image", "embedding"} == set(first["families"]) and first["why"]
    assert all(w["score"] < 3 for w in report["windows"][:2])
    code, text, _ = cxr_here(capsys, "monitor", "--table", switched["table"], "--reference-table",
                             switched["reference"], "--window", "50")
    assert code == 0 and "2 window(s) alarm: 2, 3" in text


def test_the_monitoring_page_shows_the_switch_alarm_and_why(switched, app_env):
    at = app_page("monitoring")
    at.session_state["mon_model"] = next(k for k in _choices() if k.startswith("baseline"))
    at.run()
    no_exception(at)
    at.selectbox(key="mon_table").set_value("(type the path of a table instead)").run()
    at.text_input(key="mon_typed").set_value(str(switched["table"])).run()
    at.selectbox(key="mon_window").set_value("50 images").run()
    at.button(key="mon_go").click().run()
    no_exception(at)
    assert any("latest window alarms" in e.value for e in at.error), [e.value for e in at.error]
    alarms = at.dataframe[0].value
    assert list(alarms["images"]) == [50, 50] and alarms["drift score"].min() >= 3
    assert at.selectbox(key="mon_detail").value.startswith("2: #101")
    detail = at.dataframe[1].value
    assert detail["z"].iloc[0] >= 3 and set(detail["family"]) == {"outputs", "image", "embedding"}
    assert len(at.get("plotly_chart")) == 1


def _choices():
    from ui.common import checkpoint_choices   # the names the page's picker shows

    return checkpoint_choices()


def test_the_rest_services_answers_are_monitored_without_the_images(switched, app_home, tmp_path, monkeypatch,
                                                                     capsys):
    """Every image the REST service answers leaves a row in the workspace's monitoring log (cxrcore/monitorlog.py):
    probabilities, image statistics, embedding, when; no pixel, no file name (the ref is a hash). `cxr monitor
    --log` and the Monitoring page find the switch in it as in a scored table; CXR_MONITOR_LOG=off writes nothing."""
    import base64
    import sqlite3

    import pandas as pd

    from conftest import fresh_workspace
    from cxrcore.api.service import Service

    monkeypatch.setenv("CXR_HOME", str(fresh_workspace(app_home, tmp_path / "home")))
    films = pd.read_parquet(switched["table"])["path"].tolist()
    films = films[:40] + films[100:140]     # 40 NIH-style, then 40 CheXpert-style
    service = Service(["checkpoints/baseline"])
    for k, f in enumerate(films):
        service.predict({"image": base64.b64encode(open(f, "rb").read()).decode(), "name": f"Doe^Jane-{k}.png"})
    log = tmp_path / "home" / "monitoring.sqlite"
    with sqlite3.connect(log) as con:
        rows = con.execute("SELECT source, ref, embedding FROM scored").fetchall()
    assert len(rows) == 80 and {r[0] for r in rows} == {"rest"} and all(len(r[2]) == 4 * 32 for r in rows)
    assert all(re.fullmatch(r"[0-9a-f]{20}", r[1]) for r in rows)
    assert b"Doe^Jane" not in log.read_bytes() and b".png" not in log.read_bytes()
    code, text, err = cxr_here(capsys, "monitor", "--log", "--checkpoint", "checkpoints/baseline", "--reference-table",
                               switched["reference"], "--window", "20", "--json")
    assert code == 0, err
    report = json.loads(text)
    assert report["stream_rows"] == 80 and report["alarms"] == [2, 3] and report["table"] == "monitoring log"
    at = app_page("monitoring")
    at.session_state["mon_model"] = next(k for k in _choices() if k.startswith("baseline"))
    at.run()
    at.selectbox(key="mon_table").set_value(next(o for o in at.selectbox(key="mon_table").options
                                                  if o.startswith("(what the REST service"))).run()
    at.selectbox(key="mon_window").set_value("50 images").run()
    at.button(key="mon_go").click().run()
    no_exception(at)
    assert any("80** scored images of the monitoring log" in m.value for m in at.markdown)
    assert any("latest window alarms" in e.value for e in at.error), [e.value for e in at.error]

    monkeypatch.setenv("CXR_MONITOR_LOG", "off")
    Service(["checkpoints/baseline"]).predict({"image": base64.b64encode(open(films[0], "rb").read()).decode()})
    with sqlite3.connect(log) as con:
        assert con.execute("SELECT COUNT(*) FROM scored").fetchone()[0] == 80
