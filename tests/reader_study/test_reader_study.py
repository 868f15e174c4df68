"""Reader studies: set-up from a dataset, the reading rules (blind, own order, lock after the aided view,
crossover wash-out), answers kept across stores and threads, the analysis of a finished study, the page."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, fresh_workspace
from cxrcore.errors import ConfigError
from cxrcore.readerstudy import session
from cxrcore.readerstudy.analysis import export
from cxrcore.readerstudy.design import StudyDesign
from cxrcore.readerstudy.store import StudyError, StudyStore

FINDINGS = ("Cardiomegaly", "Effusion")


@pytest.fixture(scope="module")
def rs_home(app_home, tmp_path_factory):
    return fresh_workspace(app_home, tmp_path_factory.mktemp("rs_home"))


@pytest.fixture
def rs_env(rs_home, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(rs_home))
    return rs_home


@pytest.fixture(scope="module")
def dataset_cases(rs_home):
    """12 phantom cases (3 positive per finding + 3 negative for both), as a set-up from the dataset picks them."""
    from conftest import workspace_env
    from cxrcore.readerstudy.setup import cases_from_dataset

    with workspace_env(rs_home):
        data = next((rs_home / "datasets").glob("phantom-nih-*"))
        return cases_from_dataset(data, list(FINDINGS), split="test", sampling="stratified", n=3, seed=1)


def _study(store, cases, design="sequential", model_scores=True, **kw):
    """A study from ``cases`` with a made-up model output (the real one is computed in test_set_up_runs_the_model)."""
    rng = np.random.default_rng(0)
    cases = [dict(c, model={f: float(np.clip(0.6 * c["truth"][f] + 0.4 * rng.random(), 0, 1)) for f in FINDINGS})
             if model_scores else dict(c) for c in cases]
    d = StudyDesign("test study", FINDINGS, design=design, model="checkpoints/finetuned" if design != "unaided" else None,
                    **kw)
    return store.create(d, cases, owner="organiser", source={"aided": {"thresholds": {f: 0.5 for f in FINDINGS}}})


def test_cases_from_a_dataset_are_stratified_certain_and_seeded(dataset_cases, rs_env):
    from cxrcore.readerstudy.setup import cases_from_dataset

    cases, source = dataset_cases
    assert source["sampling"] == "stratified" and source["cases"] == len(cases)
    assert 9 <= len(cases) <= 12   # 3 positive per finding (a case may be positive for both) + 3 negative
    assert all(set(c["truth"]) == set(FINDINGS) and set(c["truth"].values()) <= {0, 1} for c in cases)
    assert sum(1 for c in cases if not any(c["truth"].values())) == 3
    assert all(source["positives"][f] >= 3 for f in FINDINGS)
    again, _ = cases_from_dataset(source["data"], list(FINDINGS), split="test", sampling="stratified", n=3, seed=1)
    assert [c["source_id"] for c in again] == [c["source_id"] for c in cases]      # seeded: the same cases
    other, _ = cases_from_dataset(source["data"], list(FINDINGS), split="test", sampling="stratified", n=3, seed=2)
    assert [c["source_id"] for c in other] != [c["source_id"] for c in cases]
    with pytest.raises(Exception, match="has no label 'Fracture of the moon'"):
        cases_from_dataset(source["data"], ["Fracture of the moon"])


def test_design_checks_say_what_is_wrong():
    with pytest.raises(ConfigError, match="needs a name.*at least one finding"):
        StudyDesign(" ", ()).check()
    with pytest.raises(ConfigError, match="choose the model"):
        StudyDesign("s", ("Effusion",), design="sequential").check()
    with pytest.raises(ConfigError, match="scale 'ten' is not one of"):
        StudyDesign("s", ("Effusion",), design="unaided", scale="ten").check()


def test_sequential_reading_is_blind_ordered_and_locks_after_the_aided_view(dataset_cases, rs_env):
    cases, _ = dataset_cases
    store = StudyStore()
    study = _study(store, cases)
    a, token_a = store.add_reader(study.id, "Dr A")
    b, _ = store.add_reader(study.id, "Dr B")
    assert sorted(a.order) == sorted(b.order) == list(range(1, len(cases) + 1)) and a.order != b.order
    assert store.by_token(token_a)[1].number == a.number and store.by_token("not-a-token") is None
    # the order is recorded: a new store (a server restart) gives the same
    assert StudyStore().reader(study.id, a.number).order == a.order

    first = session.next_read(store, study.id, a.number)
    assert (first.case, first.arm, first.position, first.total) == (a.order[0], "unaided", 1, 2 * len(cases))
    # what a read carries: no file name, no truth, no model output in an unaided read
    assert not first.given and not first.unaided
    with pytest.raises(ConfigError, match="Rate every finding.*Effusion"):
        session.submit(store, study.id, a.number, first, {"Cardiomegaly": 40})
    with pytest.raises(ConfigError, match="from 0 to 100"):
        session.submit(store, study.id, a.number, first, {"Cardiomegaly": 140, "Effusion": 3})
    assert store.answers(study.id, a.number) == []     # nothing written by a refused answer
    session.submit(store, study.id, a.number, first, {"Cardiomegaly": 40, "Effusion": 3})
    session.submit(store, study.id, a.number, first, {"Cardiomegaly": 45, "Effusion": 3})   # changed: not yet locked
    assert {x.rating for x in store.answers(study.id, a.number) if x.finding == "Cardiomegaly"} == {45.0}

    aided = session.next_read(store, study.id, a.number)
    assert (aided.case, aided.arm) == (first.case, "aided") and aided.unaided == {"Cardiomegaly": 45.0, "Effusion": 3.0}
    with pytest.raises(StudyError, match="can no longer be changed"):
        session.submit(store, study.id, a.number, first, {"Cardiomegaly": 90, "Effusion": 3})
    assert session.locked(store, study, a.number, session.revisit(store, study.id, a.number, 1))
    assert {x.rating for x in store.answers(study.id, a.number) if x.finding == "Cardiomegaly"} == {45.0}
    session.submit(store, study.id, a.number, aided, {"Cardiomegaly": 80, "Effusion": 3})
    # the audit trail keeps the changed answer too, in order; the export numbers each answer's revisions
    log = [(x.arm, x.finding, x.rating) for x in store.answer_log(study.id, a.number) if x.finding == "Cardiomegaly"]
    assert log == [("unaided", "Cardiomegaly", 40.0), ("unaided", "Cardiomegaly", 45.0), ("aided", "Cardiomegaly", 80.0)]
    audit = [row.split(",") for row in export(store, study.id, "Cardiomegaly", "audit").splitlines()]
    assert audit[0][:4] == ["reader", "case", "source_id", "arm"] and audit[0][-1] == "revision"
    assert [(r[0], int(r[1]), r[3], r[6], r[-1]) for r in audit[1:]] == [
        ("Dr A", first.case, "unaided", "40", "1"), ("Dr A", first.case, "unaided", "45", "2"),
        ("Dr A", first.case, "aided", "80", "1")]
    assert audit[1][2] == store.case(study.id, first.case).source_id   # the organiser's record names the image
    # reader B has their own first case and sees nothing of A's answers
    b_first = session.next_read(store, study.id, b.number)
    assert b_first.case == b.order[0] and b_first.given == {} and store.answers(study.id, b.number) == []
    with pytest.raises(StudyError, match="not been shown"):
        session.revisit(store, study.id, b.number, 5)
    rows = {r["name"]: r for r in session.progress(store, study.id)}
    assert (rows["Dr A"]["done"], rows["Dr B"]["done"]) == (2, 0) and rows["Dr A"]["total"] == 2 * len(cases)
    store.set_status(study.id, "closed")
    with pytest.raises(StudyError, match="closed"):
        session.submit(store, study.id, b.number, b_first, {"Cardiomegaly": 1, "Effusion": 1})


def test_reading_time_counts_from_the_viewing_the_answer_is_given_in(dataset_cases, rs_env):
    """A read shown, the tab closed, the same read opened again a day later and answered 30 s after: 30 s, not a day.
    Adjusting the image (the same viewing) does not restart the clock; going back to the read does."""
    cases, _ = dataset_cases
    store = StudyStore()
    study = _study(store, cases)
    r, _ = store.add_reader(study.id, "Dr T")
    t0 = 1_000_000.0
    first = session.next_read(store, study.id, r.number, now=t0, visit="monday")
    again = session.next_read(store, study.id, r.number, now=t0 + 86_400, visit="tuesday")   # a reload, next day
    assert (again.case, again.arm) == (first.case, first.arm)
    session.next_read(store, study.id, r.number, now=t0 + 86_410, visit="tuesday")   # a contrast change: a rerun
    session.submit(store, study.id, r.number, again, {"Cardiomegaly": 20, "Effusion": 70}, now=t0 + 86_430)
    assert {a.seconds for a in store.answers(study.id, r.number)} == {30.0}
    assert store.views(study.id, r.number)[(first.case, "unaided")][1] == t0   # first shown: kept (it locks, it orders)
    back = session.revisit(store, study.id, r.number, 1, now=t0 + 90_000, visit="back to it")
    session.submit(store, study.id, r.number, back, {"Cardiomegaly": 25, "Effusion": 70}, now=t0 + 90_012)
    assert {a.seconds for a in store.answers(study.id, r.number)} == {12.0}


def test_crossover_sessions_are_separated_by_the_washout(dataset_cases, rs_env):
    cases, _ = dataset_cases
    store = StudyStore()
    study = _study(store, cases, design="crossover", washout_days=7)
    r, _ = store.add_reader(study.id, "Dr C")
    plan = session.reads(study, r, {c.number: c.half for c in store.cases(study.id)})
    one = [(c, a) for c, a, s in plan if s == 1]
    two = [(c, a) for c, a, s in plan if s == 2]
    assert {a for _, a in one} == {"aided", "unaided"} and sorted(c for c, _ in one) == sorted(c for c, _ in two)
    assert all(dict(one)[c] != a for c, a in two)            # each case read the other way in session 2
    t = 1_000_000.0
    for k in range(len(one)):
        task = session.next_read(store, study.id, r.number, now=t + k)
        assert task.session == 1
        session.submit(store, study.id, r.number, task, {f: 50 for f in FINDINGS}, now=t + k + 0.5)
    wait = session.next_read(store, study.id, r.number, now=t + 3600)
    assert isinstance(wait, session.Waiting) and wait.until == pytest.approx(t + len(one) - 0.5 + 7 * 86400)
    task = session.next_read(store, study.id, r.number, now=wait.until + 1)
    assert task.session == 2 and (task.case, task.arm) == two[0]


def test_answers_from_many_threads_are_all_kept(dataset_cases, rs_env):
    cases, _ = dataset_cases
    store = StudyStore()
    study = _study(store, cases, design="unaided", model_scores=False)
    readers = [store.add_reader(study.id, f"Reader {k}")[0] for k in range(4)]
    errors = []

    def read_all(reader):
        try:
            own = StudyStore()   # each thread its own store, as each browser session of the app
            while isinstance(task := session.next_read(own, study.id, reader.number), session.Task):
                session.submit(own, study.id, reader.number, task, {f: task.case % 5 * 20 for f in FINDINGS})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read_all, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(row["done"] == row["total"] == len(cases) for row in session.progress(StudyStore(), study.id))
    assert len(StudyStore().answers(study.id)) == 4 * len(cases) * len(FINDINGS)


def _finish(store, study, reader, rate):
    while isinstance(task := session.next_read(store, study.id, reader.number), session.Task):
        case = store.case(study.id, task.case)
        session.submit(store, study.id, reader.number, task, {f: rate(case, f, task.arm) for f in FINDINGS},
                       {f: (0.5, 0.5) for f in FINDINGS})


def test_analysis_of_a_finished_study_equals_the_analysis_of_its_export(dataset_cases, rs_env, tmp_path):
    from cxrcore.eval.readers.analysis import analyze
    from cxrcore.readerstudy.analysis import study_analysis

    cases, _ = dataset_cases
    store = StudyStore()
    study = _study(store, cases, mark_location=True)
    rng = np.random.default_rng(3)
    readers = [store.add_reader(study.id, f"Dr {k}")[0] for k in range(3)]
    for reader in readers:   # aided reads lean towards the truth: the model helps
        _finish(store, study, reader, lambda c, f, arm: float(np.clip(
            (40 if arm == "aided" else 15) * c.truth[f] + rng.integers(0, 60 if arm == "aided" else 85), 0, 100)))
    partial = store.add_reader(study.id, "Dr late")[0]
    session.submit(store, study.id, partial.number, session.next_read(store, study.id, partial.number),
                   {f: 10 for f in FINDINGS})
    result = study_analysis(store, study.id, "Effusion")
    assert result["modalities"] == ["aided", "unaided"] and result["readers"] == ["Dr 0", "Dr 1", "Dr 2"]
    assert any("Dr late" in n and "left out" in n for n in result["notes"])
    assert 0.5 < result["fom_mean"]["unaided"] < result["fom_mean"]["aided"] < 1
    rrrc = result["rrrc"]
    assert set(rrrc) >= {"f", "ndf", "ddf", "p", "diff", "per_modality"} and rrrc["ndf"] == 1
    assert list(rrrc["diff"]) == ["aided - unaided"] and rrrc["diff"]["aided - unaided"]["estimate"] > 0
    assert set(result["standalone"]) == {"unaided", "aided"}
    assert set(result["roc"]["readers"]["Dr 0"]) == {"unaided", "aided"} and result["roc"]["model"]["fpr"][0] == 0
    assert result["location"]["Dr 0"]["aided"]["positives_with_boxes"] >= 0
    (tmp_path / "ratings.csv").write_text(export(store, study.id, "Effusion"))
    again = analyze(tmp_path / "ratings.csv", model_reader="model", cutoff=50, model_threshold=0.5)
    assert again["fom"] == result["fom"] and again["rrrc"]["f"] == pytest.approx(rrrc["f"])


def test_set_up_runs_the_model_once_and_records_what_the_aided_arm_shows(dataset_cases, rs_env, shipped):
    from cxrcore.readerstudy.setup import aided_image, create_study

    cases, source = dataset_cases
    d = StudyDesign("model run", FINDINGS, model=str(shipped["finetuned"]))
    study = create_study(d, [dict(c) for c in cases[:3]], source, owner="organiser")
    aided = study.source["aided"]
    assert set(aided["thresholds"]) == set(FINDINGS) and aided["heatmap"] == "gradcam"
    stored = StudyStore().cases(study.id)
    assert all(0 <= c.model[f] <= 1 for c in stored for f in FINDINGS)
    assert all(aided_image(study.id, c.number, f).stat().st_size > 1000 for c in stored for f in FINDINGS)
    with pytest.raises(ConfigError, match="has no output for 'Hernia'"):
        create_study(StudyDesign("bad", ("Hernia",), model=str(shipped["finetuned"])),
                     [dict(cases[0], truth={"Hernia": 0})], source)


def test_page_sets_up_a_study_and_a_reader_reads_through_their_link(rs_env, shipped):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.switch_page("views/reader_study.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.text_input(key="rs_name").input("Page study")
    at.multiselect(key="rs_findings").set_value(["Effusion"])
    at.selectbox(key="rs_sampling").set_value("random")
    at.number_input(key="rs_n").set_value(4)
    at.radio(key="rs_design").set_value("unaided")
    at.run()
    at.button(key="rs_create").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("set up with 4 cases" in s.value for s in at.success)
    key = next(x.key for x in at.text_input if x.key.startswith("rs_reader_"))
    at.text_input(key=key).input("Dr Page")
    at.run()
    at.button(key=key.replace("rs_reader_", "rs_add_")).click().run()
    link = at.code[0].value
    assert "?token=" in link
    reader = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    reader.query_params["token"] = link.split("token=")[1]
    reader.run()   # the app's start address with the token: the reading screen, and nothing else of the app
    assert not reader.exception, [e.value for e in reader.exception]
    assert not [r for r in reader.sidebar.radio if r.key == "chart_format"]   # not the app's sidebar
    text = " ".join(str(m.value) for m in [*reader.markdown, *reader.caption, *reader.title])
    assert "Dr Page" in text and ".png" not in text and "phantom" not in text   # blind: no file or dataset name
    rating = next(s for s in reader.slider if s.label.startswith("**Effusion**"))
    rating.set_value(77)
    next(b for b in reader.button if b.label == "Save and go on").click().run()
    assert not reader.exception, [e.value for e in reader.exception]
    assert not reader.error, [e.value for e in reader.error]
    store = StudyStore()
    study = next(s for s in store.studies() if s.name == "Page study")
    assert [a.rating for a in store.answers(study.id)] == [77.0]
    # the organiser sees the progress; a wrong link sees nothing
    at.run()
    assert at.dataframe[0].value.iloc[0]["done"] == 1
    stranger = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    stranger.query_params["token"] = "made-up"
    stranger.switch_page("views/reader_study.py")
    stranger.run()
    assert any("not valid" in e.value for e in stranger.error)


def test_cli_sets_up_a_study_invites_readers_and_reports(rs_env, shipped, capsys, tmp_path):
    from conftest import cxr_here

    data = next((rs_env / "datasets").glob("phantom-nih-*"))
    code, out, err = cxr_here(capsys, "reader-study", "create", "--name", "cli study", "--data", data, "--findings",
                              "Effusion", "--sampling", "stratified", "--n", "3", "--design", "unaided", "--json")
    assert code == 0, err
    study = json.loads(out)
    assert study["cases"] == 6 and study["design"]["design"] == "unaided" and study["readers"] == []
    code, out, err = cxr_here(capsys, "reader-study", "add-reader", study["id"], "Dr CLI")
    assert code == 0 and "?token=" in out
    token = out.split("?token=")[1].split()[0]
    store = StudyStore()
    sid, reader = store.by_token(token)
    assert sid == study["id"] and reader.name == "Dr CLI"
    code, out, err = cxr_here(capsys, "reader-study", "add-reader", study["id"], "Dr CLI")
    assert code == 2 and "already has a reader named 'Dr CLI'" in err
    while isinstance(task := session.next_read(store, sid, reader.number), session.Task):
        truth = store.case(sid, task.case).truth["Effusion"]
        session.submit(store, sid, reader.number, task, {"Effusion": 30 + 40 * truth + task.case})
    code, out, err = cxr_here(capsys, "reader-study", "progress", sid, "--json")
    assert json.loads(out)["readers"][0]["done"] == 6
    code, out, err = cxr_here(capsys, "reader-study", "report", sid, "--finding", "Effusion", "--json",
                              "--html", tmp_path / "report.html")
    assert code == 0, err
    result = json.loads(out)
    assert result["readers"] == ["Dr CLI"] and result["fom"]["unaided"]["Dr CLI"] == 1.0
    assert result["rrrc"]["f"] is None and any("one modality" in n for n in result["notes"])   # said, not NaN
    assert "Reader study: cli study" in (tmp_path / "report.html").read_text()
    code, out, err = cxr_here(capsys, "reader-study", "export", sid, "--finding", "Effusion", "--format", "imrmc")
    assert code == 0 and "BEGIN DATA:" in out
    code, out, err = cxr_here(capsys, "reader-study", "report", "rs-nope", "--finding", "Effusion")
    assert code == 2 and "No reader study 'rs-nope'" in err


def test_cases_handed_over_by_the_evaluation_case_browser_become_a_study(rs_env, dataset_cases):
    from ui.handoff import CASES_KEY, StudyCases

    cases, _ = dataset_cases
    handed = StudyCases(tuple({"image": c["image"], "source_id": c["source_id"], "truth": {"Effusion": c["truth"]["Effusion"]}}
                              for c in cases[:5]), "Effusion", "the Evaluation case browser: FN cases for Effusion")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.switch_page("views/reader_study.py")
    at.session_state[CASES_KEY] = handed
    at.run()
    assert at.radio(key="rs_source").value == "the Evaluation case browser"
    assert at.multiselect(key="rs_findings").value == ["Effusion"]
    at.text_input(key="rs_name").input("From the case browser")
    at.radio(key="rs_design").set_value("unaided")
    at.run()
    at.button(key="rs_create").click().run()
    assert not at.exception, [e.value for e in at.exception]
    study = next(s for s in StudyStore().studies() if s.name == "From the case browser")
    assert [c.source_id for c in StudyStore().cases(study.id)] == [c["source_id"] for c in cases[:5]]
    assert study.source["kind"] == "evaluation case browser"
