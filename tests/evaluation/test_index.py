"""A dataset's images embedded by a model, a nearest-neighbour index over them and similar cases (issue 24 §1-§2,
cxrcore/lens/index.py, `cxr index`, `cxr similar`): an image of the set finds itself first; neighbours share the
query's findings far more often than random images do; built again, only new images are embedded and gone ones
dropped; another model's index is refused; the JSON keys of both commands (a contract)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import cxr_here


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """240 NIH-style phantom films (their labels in Data_Entry_2017.csv)."""
    from cxrcore.data.phantom import generate

    return generate(tmp_path_factory.mktemp("index") / "films", n=240, domain="nih", seed=31)


def test_cxr_index_and_similar_find_the_image_itself_and_neighbours_that_share_its_findings(small_set, shipped,
                                                                                           tmp_path, monkeypatch,
                                                                                           capsys):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    out = tmp_path / "idx"
    code, text, err = cxr_here(capsys, "index", "--checkpoint", shipped["baseline"], "--data", small_set, "--out",
                               out, "--json")
    assert code == 0, err
    summary = json.loads(text)
    assert summary["images"] == summary["embedded"] == 240 and summary["kind"] == "exact" and summary["kept"] == 0
    items = pd.read_parquet(out / "items.parquet")
    query = items.iloc[7]
    code, text, err = cxr_here(capsys, "similar", query["path"], "--index", out, "--k", "5", "--json")
    assert code == 0, err
    found = json.loads(text)
    first = found["neighbours"][0]
    assert first["path"] == query["path"] and first["distance"] < 1e-4            # the image finds itself first
    assert {"path", "distance", "labels"} <= set(first) and len(found["neighbours"]) == 5
    assert [n["distance"] for n in found["neighbours"]] == sorted(n["distance"] for n in found["neighbours"])
    assert set(found["agreement"]) == set(found["query"]["called"])

    # neighbours share a finding with the query far more often than random images do (precision@k by label)
    from cxrcore.lens.index import load_index

    index = load_index(out)
    labels = [set(x.split(";")) - {""} for x in index.items["labels"]]
    _, ids = index.search(index.vectors, 6)
    hits = [np.mean([bool(labels[i] & labels[j]) for j in row[1:]]) for i, row in enumerate(ids) if labels[i]]
    base = [np.mean([bool(labels[i] & labels[j]) for j in range(len(labels)) if j != i])
            for i in range(len(labels)) if labels[i]]
    assert np.mean(hits) > np.mean(base) + 0.1, (np.mean(hits), np.mean(base))


def test_built_again_only_new_images_are_embedded_and_gone_ones_dropped(small_set, shipped, tmp_path,
                                                                        monkeypatch):
    from cxrcore.data.phantom import generate
    from cxrcore.errors import DataError
    from cxrcore.lens.index import build_index, load_index

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    data = tmp_path / "films"
    shutil.copytree(small_set, data)
    table = pd.read_csv(data / "Data_Entry_2017.csv")
    table.iloc[:200].to_csv(data / "Data_Entry_2017.csv", index=False)      # the first 200 films only
    index, summary = build_index(shipped["baseline"], data, tmp_path / "idx")
    assert summary["embedded"] == 200 and len(index) == 200
    before = load_index(tmp_path / "idx").vectors.copy()
    table.iloc[20:].to_csv(data / "Data_Entry_2017.csv", index=False)       # 40 films come, 20 go
    index, summary = build_index(shipped["baseline"], data, tmp_path / "idx")
    assert (summary["embedded"], summary["kept"], summary["dropped"], len(index)) == (40, 180, 20, 220)
    assert np.allclose(load_index(tmp_path / "idx").vectors[:180], before[20:])   # kept vectors not recomputed
    assert index.index.ntotal == 220
    with pytest.raises(DataError, match="another model"):
        build_index(shipped["finetuned"], data, tmp_path / "idx")
    with pytest.raises(DataError, match="is not an index"):
        load_index(tmp_path)
    other = generate(tmp_path / "empty-labels", n=20, domain="nih", seed=32)
    assert build_index(shipped["baseline"], other, tmp_path / "idx2")[1]["images"] == 20


def test_compare_shows_similar_cases_from_an_index_of_either_model(small_set, app_home, shipped, tmp_path,
                                                                   monkeypatch):
    """Compare's "Similar cases" (AppTest): the index the baseline built in the workspace is offered; the nearest
    films come with their labels and distance, and one opens side by side with the upload."""
    from conftest import app_page, fresh_workspace, no_exception
    from cxrcore.lens.index import build_index

    monkeypatch.setenv("CXR_HOME", str(fresh_workspace(app_home, tmp_path / "home")))
    build_index(shipped["baseline"], small_set)          # the workspace's cache, by dataset and model
    at = app_page("compare").run()
    no_exception(at)
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    no_exception(at)
    box = at.selectbox(key="similar_index")
    assert box.value.startswith("films (240 films) · baseline's eyes")
    at.number_input(key="similar_k").set_value(4).run()
    no_exception(at)
    shown = [c.value for c in at.caption if c.value.startswith("**") and "distance" in c.value]
    assert len(shown) == 4 and all("labels:" in c for c in shown)
    assert len(at.selectbox(key="similar_open").options) == 4
    films = len(at.get("imgs"))
    at.toggle(key="similar_cams").set_value(True).run()       # each neighbour's heatmap for one finding
    no_exception(at)
    label = at.selectbox(key="similar_cam_label")
    assert not label.disabled and label.value in label.options
    assert len(at.get("imgs")) == films                          # the four films drawn as overlays instead


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """300 NIH-style phantom films (seed 33: the shipped models never saw them) with 5 % of three findings' labels
    flipped (seeded); (the folder, the flipped pairs)."""
    from cxrcore.data.phantom import generate
    from cxrcore.data.phantom.noise import add_label_noise

    data = generate(tmp_path_factory.mktemp("noisy") / "noisy", n=300, domain="nih", seed=33)
    return data, add_label_noise(data, 0.05, seed=1, labels=["Effusion", "Infiltration", "Atelectasis"])


def test_cxr_label_issues_finds_flipped_labels_of_a_noised_phantom(noisy, shipped, tmp_path, monkeypatch, capsys):
    """`cxr label-issues` (cleanlab on the shipped baseline's out-of-sample probabilities) ranks the flipped pairs
    first far above chance, in the contract's JSON."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    data, flipped = noisy
    code, text, err = cxr_here(capsys, "label-issues", "--data", data, "--checkpoint", shipped["baseline"], "--json")
    assert code == 0, err
    found = json.loads(text)
    assert found["images"] == 300 and found["left_out"] == 0
    issues = found["issues"]
    assert {"image", "label", "given", "score"} <= set(issues[0])
    assert [r["score"] for r in issues] == sorted((r["score"] for r in issues), reverse=True)
    top = issues[:len(flipped)]
    hits = sum((r["image"], r["label"]) in flipped for r in top)
    chance = len(flipped) / (300 * 14)   # a random (image, label) pair of the 14 examined
    assert hits / len(flipped) > 10 * chance and hits >= len(flipped) // 3, (hits, len(flipped))


def test_the_dataset_page_lists_suspected_label_errors_and_a_reviewer_marks_them(noisy, app_home, shipped, tmp_path,
                                                                                  monkeypatch):
    """The Dataset page's "Label errors" tab (AppTest): the noised phantom's suspected errors, most likely first; two
    verdicts kept at once (label wrong, label right); the relabel table holds them, the corrected value flipped
    where the label is wrong; the dataset's own label file unchanged."""
    from conftest import app_page, fresh_workspace, no_exception
    from cxrcore.lens.review import ReviewStore, relabel_table

    home = fresh_workspace(app_home, tmp_path / "home")
    monkeypatch.setenv("CXR_HOME", str(home))
    data, _ = noisy
    (home / "datasets" / "noisy").symlink_to(data, target_is_directory=True)
    before = (data / "Data_Entry_2017.csv").read_bytes()
    at = app_page("dataset")
    at.session_state["dataset_source"] = "noisy"
    at.session_state["dataset_section"] = "Label errors"
    at.session_state["issues_model"] = next(k for k in _choices() if k.startswith("baseline"))
    at.run()
    no_exception(at)
    at.button(key="issues_go").click().run()
    no_exception(at)
    assert any("suspected label errors among **300** films" in m.value for m in at.markdown)
    radios = [r for r in at.radio if r.key and r.key.startswith("issue::")]
    assert len(radios) == 10 and all(r.value == "not reviewed" for r in radios)
    first, second = radios[0].key, radios[1].key
    at.radio(key=first).set_value("label wrong").run()
    at.radio(key=second).set_value("label right").run()
    no_exception(at)
    folder = str((home / "datasets" / "noisy").resolve())
    table = relabel_table(ReviewStore(), folder).set_index("label", append=False)
    assert len(table) == 2 and sorted(table["verdict"]) == ["label right", "label wrong"]
    wrong = table[table["verdict"] == "label wrong"].iloc[0]
    assert wrong["corrected"] == 1 - wrong["given"]
    assert any("2 reviewed pairs" in b.label for b in at.download_button)
    assert (data / "Data_Entry_2017.csv").read_bytes() == before


def _choices():
    from ui.common import checkpoint_choices

    return checkpoint_choices()


def test_from_ann_from_images_on_the_index_is_an_hnsw_graph_that_finds_the_same_neighbours(monkeypatch):
    """Above ``ANN_FROM`` images the index is faiss's HNSW graph (the threshold lowered here to 300 vectors, so the
    graph is built small): it answers as the exact index does on well-separated vectors."""
    import faiss

    from cxrcore.lens import index as lens_index

    rng = np.random.default_rng(0)
    vectors = lens_index.normalised(rng.normal(size=(400, 32)))
    exact = lens_index._faiss_index(vectors)
    monkeypatch.setattr(lens_index, "ANN_FROM", 300)
    graph = lens_index._faiss_index(vectors)
    assert isinstance(graph, faiss.IndexHNSWFlat) and isinstance(exact, faiss.IndexFlatIP)
    _, a = exact.search(vectors[:50], 5)
    _, b = graph.search(vectors[:50], 5)
    assert (a[:, 0] == np.arange(50)).all() and np.mean(a == b) > 0.95


def test_cxr_duplicates_finds_planted_copies_and_the_leaks_across_splits(small_set, app_home, shipped, tmp_path,
                                                                         monkeypatch, capsys):
    """Three films copied into the dataset under new names and new patients (one as a JPEG re-encode, one resized):
    `cxr duplicates` finds exactly those three pairs, no distinct films, and calls a pair in two of the model's
    splits a leak; the Dataset page's split balance report (AppTest) lists the same pairs."""
    from PIL import Image

    from conftest import app_page, fresh_workspace, no_exception

    home = fresh_workspace(app_home, tmp_path / "home")
    monkeypatch.setenv("CXR_HOME", str(home))
    data = home / "datasets" / "films"
    shutil.copytree(small_set, data)
    table = pd.read_csv(data / "Data_Entry_2017.csv")
    copies = []
    for k, (i, how) in enumerate([(3, "png"), (50, "jpeg"), (120, "resize")]):
        row = table.iloc[i].copy()
        src = data / "images" / row["Image Index"]
        name = f"{90000 + k:08d}_000.png"
        im = Image.open(src).convert("L")
        if how == "jpeg":
            import io

            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            im = Image.open(buf)
        elif how == "resize":
            im = im.resize((200, 200))
        im.save(data / "images" / name)
        copies.append(tuple(sorted((row["Image Index"], name))))
        row["Image Index"], row["Patient ID"], row["Follow-up #"] = name, 90000 + k, 0
        table = pd.concat([table, row.to_frame().T], ignore_index=True)
    table.to_csv(data / "Data_Entry_2017.csv", index=False)
    code, text, err = cxr_here(capsys, "index", "--checkpoint", shipped["baseline"], "--data", data, "--json")
    assert code == 0, err
    where = json.loads(text)["index"]     # the workspace's cache: where the pages look
    code, text, err = cxr_here(capsys, "duplicates", "--index", where, "--json")
    assert code == 0, err
    found = json.loads(text)
    assert sorted((p["a"], p["b"]) for p in found["pairs"]) == sorted(copies)
    assert all(p["leak"] == (p["split_a"] != p["split_b"]) and not p["same_patient"] for p in found["pairs"])
    assert found["leaks"] == sum(p["leak"] for p in found["pairs"]) and found["threshold"] > 0

    at = app_page("dataset")
    at.session_state["dataset_source"] = "films"
    at.session_state["dataset_section"] = "Split balance"
    at.run()
    no_exception(at)
    shown = next(d.value for d in at.dataframe if "near-duplicate" in d.value.columns)
    assert sorted(tuple(sorted(x)) for x in zip(shown["film"], shown["near-duplicate"])) == sorted(copies)
    assert any("3 near-duplicate pair(s)" in m.value for m in list(at.error) + list(at.warning))

    # the same index's embedding map (t-SNE), coloured by a subgroup, a label, the model's probability
    at.session_state["dataset_section"] = "Embedding map"
    at.run()
    no_exception(at)
    assert {"split", "sex", "age band", "view", "label: Effusion", "model's probability: Effusion"} <= set(
        at.selectbox(key="map_colour").options)
    at.selectbox(key="map_colour").set_value("model's probability: Effusion").run()
    no_exception(at)
    assert len(at.get("plotly_chart")) == 1 and any("243 of 243 films" in c.value for c in at.caption)
    at.selectbox(key="map_colour").set_value("suspected label error (score)").run()   # cleanlab on the baseline's
    no_exception(at)
    assert any("Suspicion: a film's largest label" in c.value and "did not train on" in c.value for c in at.caption)
    # a lasso around films (the chart's selection state, as the browser sends it; a point is numbered within its
    # trace, one per colour category): their table, one opened
    at.selectbox(key="map_colour").set_value("split").run()
    at.session_state["map_chart"] = {"selection": {"points": [{"curve_number": 0, "point_index": i} for i in (0, 2)]
                                                   + [{"curve_number": 1, "point_index": 1}],
                                                   "point_indices": [0, 2, 1], "box": [], "lasso": []}}
    at.run()
    no_exception(at)
    picked = next(d.value for d in at.dataframe if "model calls" in d.value.columns)
    assert len(picked) == 3 and "p(Effusion)" in picked.columns and picked["split"].nunique() == 2
    assert at.selectbox(key="map_open").options == list(picked["film"])
    from cxrcore.lens.index import load_index
    from cxrcore.lens.map import embedding_map

    index = load_index(where)
    rows, xy = embedding_map(index)                     # kept beside the index: read back, not recomputed
    assert len(rows) == 243 and xy.shape == (243, 2) and (index.folder / "map-243-0.npz").is_file()
    rows, part = embedding_map(index, max_points=100)   # a seeded sample beyond the maximum
    assert len(rows) == 100 and part.shape == (100, 2)


def test_post_similar_over_the_rest_service(small_set, shipped, tmp_path, monkeypatch):
    """`cxr serve --index`: POST /similar answers the nearest films of a served index (no server file path in the
    answer), GET /health lists the index, an unknown index is a 404 naming those there are, and an index no served
    model built is refused at start."""
    import base64
    import sys
    from pathlib import Path

    from cxrcore.api import Service
    from cxrcore.errors import ConfigError
    from cxrcore.lens.index import build_index

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hosting"))
    from test_api_fastapi import _start, _stop, call

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    build_index(shipped["baseline"], small_set, tmp_path / "idx")
    with pytest.raises(ConfigError, match="does not serve"):
        Service([shipped["finetuned"]], indexes=[tmp_path / "idx"])
    server = _start(Service([shipped["baseline"]], indexes=[tmp_path / "idx"]))
    try:
        port = server.server_address[1]
        status, health, _ = call(port, "GET", "/health")
        assert status == 200 and health["indexes"] == {"films": "baseline"}
        film = sorted((small_set / "images").glob("*.png"))[5]
        status, found, _ = call(port, "POST", "/similar", {"image": base64.b64encode(film.read_bytes()).decode(),
                                                            "k": 3})
        assert status == 200, found
        assert found["neighbours"][0]["image_id"] == film.name and found["neighbours"][0]["distance"] < 1e-4
        assert len(found["neighbours"]) == 3 and "path" not in found["neighbours"][0] and found["index"] == "films"
        status, err, _ = call(port, "POST", "/similar", {"image": base64.b64encode(film.read_bytes()).decode(),
                                                          "index": "elsewhere"})
        assert status == 404 and "films" in err["error"]
    finally:
        _stop(server)


def test_a_relabel_table_corrects_the_training_targets_and_bad_tables_are_refused(noisy, tmp_path):
    """The label review's export is what training reads (`relabel`): the corrected values replace the dataset's in
    the targets the training uses, the rest untouched, the table's digest on record; a table with a missing column,
    a corrected value not 0 / 1 or a pair corrected twice is refused before anything runs, saying what to do."""
    from cxrcore.data.preprocess import Preprocess
    from cxrcore.data.relabel import COLUMNS
    from cxrcore.errors import DataError
    from cxrcore.lens.review import ReviewStore, relabel_table
    from cxrcore.train.checks import check_training
    from cxrcore.train.config import TrainConfig
    from cxrcore.train.trainer import prepare_data

    data, flipped = noisy
    store = ReviewStore(tmp_path / "reviews.sqlite")
    (a, la), (b, lb) = sorted(flipped)[:2]
    cfg = TrainConfig(data=str(data), labels="nih14", policy="ignore", workers=1)
    plain = prepare_data(cfg, Preprocess(size=32))
    ia, ib = (list(plain.index.frame["image_id"]).index(x) for x in (a, b))
    ja, jb = plain.labels.index(la), plain.labels.index(lb)
    store.mark(data, a, la, int(plain.targets[ia, ja]), "label wrong", "dr-a")
    store.mark(data, b, lb, int(plain.targets[ib, jb]), "label right", "dr-a")
    table = relabel_table(store, data)
    assert list(table.columns) == list(COLUMNS)
    table.to_csv(tmp_path / "relabel.csv", index=False)
    fixed = prepare_data(check_training(TrainConfig(**{**cfg.__dict__, "relabel": str(tmp_path / "relabel.csv")})),
                         Preprocess(size=32))
    assert fixed.targets[ia, ja] == 1 - plain.targets[ia, ja] and fixed.targets[ib, jb] == plain.targets[ib, jb]
    changed = np.argwhere(np.nan_to_num(fixed.targets, nan=-9) != np.nan_to_num(plain.targets, nan=-9))
    assert changed.tolist() == [[ia, ja]]
    assert fixed.relabel["rows"] == 2 and fixed.relabel["applied"] == 2 and fixed.relabel["changed"] == 1
    assert len(fixed.relabel["sha256"]) == 64
    for text, why in (("image_id,label\nx,Effusion\n", "no column corrected"),
                      (f"image_id,label,corrected\n{a},{la},2\n", "corrected is 0 or 1"),
                      (f"image_id,label,corrected\n{a},{la},1\n{a},{la},0\n", "more than once")):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(DataError, match=why):
            check_training(TrainConfig(**{**cfg.__dict__, "relabel": str(tmp_path / "bad.csv")}))
    with pytest.raises(DataError, match="Download the relabel table"):
        check_training(TrainConfig(**{**cfg.__dict__, "relabel": str(tmp_path / "none.csv")}))


def test_the_dataset_page_starts_an_index_and_a_cross_fitting_job_and_cxr_label_issues_reads_its_folds(
        noisy, app_home, shipped, tmp_path, monkeypatch, capsys):
    """From the Dataset page (AppTest): a dataset no model has indexed offers to index it as a job, and the Label
    errors tab to cross-fit the chosen model as a job (2 folds, each the baseline fine-tuned on the other fold's
    patients); both run in the background queue (real job processes) and succeed; the map is then drawn from the new
    index, and the cross-fitting job is offered as the source of out-of-sample probabilities, judging every film.
    Every film was predicted by the fold model that never saw its patient (in that model's test split, no other);
    the flipped labels rank first far above chance; `cxr label-issues --folds 2 --folder` on the job's folds reads
    them back (trains nothing) and answers the same ranking in the contract's JSON."""
    from conftest import app_page, fresh_workspace, job_workspace, kill_jobs, no_exception, wait_for
    from cxrcore.checkpoint import read_card
    from cxrcore.data.index import crossfit_folds
    from cxrcore.data.readers import read_dataset
    from cxrcore.eval.predictions import model_split_rows
    from cxrcore.jobs import JobStore, refresh
    from cxrcore.jobs.lensjobs import read_result
    from cxrcore.predictor import Predictor

    data, flipped = noisy
    home = job_workspace(fresh_workspace(app_home, tmp_path / "home"), monkeypatch)
    (home / "datasets" / "noisy").symlink_to(data, target_is_directory=True)
    try:
        at = app_page("dataset")
        at.session_state["dataset_source"] = "noisy"
        at.session_state["dataset_section"] = "Embedding map"
        at.run()
        no_exception(at)
        assert any("No model has indexed this dataset yet" in c.value for c in at.caption)
        at.selectbox(key="index_job_model_map").set_value(
            next(k for k in at.selectbox(key="index_job_model_map").options if k.startswith("baseline")))
        next(b for b in at.button if b.label == "Index (a job)").click().run()
        no_exception(at)
        at.session_state["dataset_section"] = "Label errors"
        at.session_state["issues_model"] = next(k for k in _choices() if k.startswith("baseline"))
        at.run()
        at.number_input(key="crossfit_folds").set_value(2)
        at.number_input(key="crossfit_epochs").set_value(1)
        next(b for b in at.button if b.label == "Cross-fit (a job)").click().run()
        no_exception(at)
        store = JobStore()
        jobs = {j.config["task"]: j for j in store.list()}
        assert sorted(jobs) == ["index", "label-issues"], [e.value for e in [*at.error, *at.success, *at.warning]]
        for j in jobs.values():
            done = wait_for(lambda: (x := refresh(j.id, store)).ended and x, 600, what=f"the {j.config['task']} job")
            assert done.status == "succeeded", done.error
        at.session_state["dataset_section"] = "Embedding map"
        at.run()
        no_exception(at)
        assert "(300 films" in at.selectbox(key="map_index").value
        at.session_state["dataset_section"] = "Label errors"
        at.run()
        source = at.radio(key="issues_source")
        assert len(source.options) == 2 and source.options[1].startswith("cross-fitting job")
        source.set_value(source.options[1]).run()
        at.button(key="issues_go").click().run()
        no_exception(at)
        assert any("suspected label errors among **300** films" in m.value and r"Cross\-fitted over 2" in m.value
                   for m in at.markdown)
    finally:
        kill_jobs(home)

    folder = Path(jobs["label-issues"].run_dir) / "crossfit"
    issues = read_result(jobs["label-issues"].run_dir)["issues"]
    hits = sum((r["image"], r["label"]) in flipped for r in issues[:len(flipped)])
    assert hits >= len(flipped) // 3, (hits, len(flipped))
    index = read_dataset(data)
    fold = crossfit_folds(index.frame["patient_id"], 2)
    for k in (0, 1):
        run = folder / f"fold-{k + 1}"
        card = read_card(run / "checkpoint")
        assert card.data["crossfit"] == {"fold": k, "folds": 2} and card.training["init_from"] == str(
            shipped["baseline"].resolve())
        test = model_split_rows(Predictor(run / "checkpoint"), index, "test")
        assert set(test) == set(np.flatnonzero(fold == k))            # the fold it predicts: never trained on
        with np.load(run / "oos.npz") as z:
            assert set(z["image_ids"]) == set(index.frame["image_id"].iloc[test])
    mtimes = [(folder / f"fold-{k}" / "oos.npz").stat().st_mtime_ns for k in (1, 2)]
    code, text, err = cxr_here(capsys, "label-issues", "--data", data, "--checkpoint", shipped["baseline"],
                               "--folds", "2", "--epochs", "1", "--folder", folder, "--json")
    assert code == 0, err
    found = json.loads(text)
    assert found["images"] == 300 and "Cross-fitted over 2 patient-level folds" in found["note"]
    assert {"image", "label", "given", "score"} <= set(found["issues"][0])
    assert [r["score"] for r in found["issues"]] == sorted((r["score"] for r in found["issues"]), reverse=True)
    assert [(r["image"], r["label"], r["score"]) for r in found["issues"]] == [
        (r["image"], r["label"], r["score"]) for r in issues]
    assert "training on the other folds" not in err
    assert [(folder / f"fold-{k}" / "oos.npz").stat().st_mtime_ns for k in (1, 2)] == mtimes
