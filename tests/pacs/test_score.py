"""Whole archives scored into one table (issue 22 §4, `cxr score`): a folder, a CSV list or a DICOMweb query; one
row per image with every label's probability and call, the OOD reasons and the model's notices, the model and its
card digest; unreadable files in an errors table; a run stopped part-way and started again ends with every image
once."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import FORMATS, cxr_here
from test_dicom_results import dciodvfy_errors, needs_dciodvfy

N = 40


@pytest.fixture(scope="module")
def archive(app_home, tmp_path_factory):
    """N phantom images in nested folders, a truncated PNG and a text file named like an image."""
    root = tmp_path_factory.mktemp("archive")
    images = sorted((app_home / "datasets").glob("phantom-nih-*/images/*.png"))[:N]
    for k, src in enumerate(images):
        dest = root / f"day{k % 3}" / src.name
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(src, dest)
    (root / "day0" / "broken.png").write_bytes((FORMATS / "00000001_000.png").read_bytes()[:2000])
    (root / "day1" / "notes.dcm").write_text("not an image at all")
    return root


@pytest.fixture(scope="module")
def tuned(shipped):
    from cxrcore.predictor import Predictor

    return Predictor(shipped["finetuned"])


def test_a_folder_becomes_one_row_per_image_with_the_predictors_numbers(archive, tuned, shipped, tmp_path, capsys):
    from cxrcore.data.imageio import read_image

    out = tmp_path / "scores.parquet"
    code, stdout, err = cxr_here(capsys, "score", archive, "--checkpoint", shipped["finetuned"], "--out", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["rows"], summary["errors"], summary["scored_now"], summary["resumed"]) == (N, 2, N + 2, 0)
    assert summary["seconds"] > 0 and summary["card_sha256"] == tuned.card.sha256()
    table = pd.read_parquet(out)
    assert list(table.columns[:1 + len(tuned.labels)]) == ["path", *tuned.labels]
    assert table["path"].is_unique and len(table) == N
    assert table["path"].tolist() == sorted(table["path"])            # the folder's order
    assert (table["card_sha256"] == tuned.card.sha256()).all()
    # the numbers are the predictor's for that file, and the calls its thresholds'
    row = table.iloc[7]
    pred = tuned.predict(read_image(row["path"]), heatmaps=False)
    assert np.allclose(row[tuned.labels].to_numpy(float), pred.probs, atol=1e-5)
    assert row[[f"{x} call" for x in tuned.labels]].tolist() == pred.positive.tolist()
    assert (table["ood"] == "").all()   # phantom frontal films pass the out-of-distribution check
    assert pd.read_csv(out.with_suffix(".csv"))["path"].tolist() == table["path"].tolist()
    errors = pd.read_csv(tmp_path / "scores.errors.csv")
    assert sorted(p.split("/")[-1] for p in errors["path"]) == ["broken.png", "notes.dcm"]
    assert errors["error"].str.len().gt(10).all()                   # a reason each
    assert not (tmp_path / "scores.parquet.parts").exists()


def test_a_run_stopped_part_way_continues_and_every_image_is_scored_once(archive, tuned, tmp_path):
    from cxrcore.score import score, source_of

    source = source_of(str(archive))
    out = tmp_path / "scores.parquet"

    written = []   # a stop asked once two parts are on disk (a job's cancel); the rest waits for the same call
    first = score(source, tuned, out, "finetuned", part_rows=8, progress=lambda done, todo, errors: written.append(done),
                  should_stop=lambda: len(written) >= 2)
    assert (first.complete, first.scored_now, written) == (False, 16, [8, 16])
    parts = sorted((tmp_path / "scores.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 2 and not out.exists()
    kept = sum(len(pd.read_parquet(p)) for p in parts)
    summary = score(source, tuned, out, "finetuned", part_rows=8)
    assert summary.resumed == kept > 0
    assert summary.scored_now == N + 2 - 16
    table = pd.read_parquet(out)
    assert len(table) == N and table["path"].is_unique
    # the same command again: nothing left to do, the same table
    again = score(source, tuned, out, "finetuned")
    assert (again.rows, again.scored_now) == (N, 0)
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)


def test_a_csv_list_and_the_refusals(archive, shipped, tmp_path, capsys):
    files = sorted(archive.rglob("*.png"))[:5]
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": [str(f.relative_to(archive)) for f in files]}).to_csv(listing, index=False)
    shutil.copytree(archive, tmp_path / archive.name)
    listing.rename(tmp_path / archive.name / "list.csv")
    code, stdout, err = cxr_here(capsys, "score", tmp_path / archive.name / "list.csv", "--checkpoint",
                                 shipped["finetuned"], "--out", tmp_path / "list.parquet", "--json")
    assert code == 0, err
    assert json.loads(stdout)["rows"] + json.loads(stdout)["errors"] == 5
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.png\n")
    code, _, err = cxr_here(capsys, "score", bad, "--checkpoint", shipped["finetuned"], "--out", tmp_path / "b.parquet")
    assert code == 2 and "no 'path' column" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cxr_here(capsys, "score", tmp_path / "empty", "--checkpoint", shipped["finetuned"],
                            "--out", tmp_path / "e.parquet")
    assert code == 2 and "holds no image" in err
    code, _, err = cxr_here(capsys, "score", archive, "--checkpoint", shipped["finetuned"], "--out", tmp_path / "x.csv")
    assert code == 2 and ".parquet" in err
    # another model's table is not mixed into
    code, _, err = cxr_here(capsys, "score", tmp_path / archive.name / "list.csv", "--checkpoint", shipped["baseline"],
                            "--out", tmp_path / "list.parquet")
    assert code == 2 and "another model's table" in err


def test_a_dicomweb_query_is_scored_from_the_pacs(tmp_path, shipped, capsys, monkeypatch):
    import pydicom

    import orthanc_server
    from cxrcore.pacs.dicomweb import PacsConfig, store

    if not orthanc_server.available():
        pytest.skip("Debian's orthanc and orthanc-dicomweb are not installed (scripts/setup.sh test)")
    dicom = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    with orthanc_server.orthanc(tmp_path / "orthanc") as pacs:
        env = {"CXR_DICOMWEB_URL": pacs["url"], "CXR_DICOMWEB_USER": pacs["user"],
               "CXR_DICOMWEB_PASSWORD": pacs["password"], "CXR_PACS_STORE": "on-request"}
        store(PacsConfig.from_env(env), [pydicom.dcmread(dicom)])
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        code, stdout, err = cxr_here(capsys, "score", f"{pacs['url']}/studies?ModalitiesInStudy=CR", "--checkpoint",
                                     shipped["finetuned"], "--out", tmp_path / "pacs.parquet", "--json")
    assert code == 0, err
    assert json.loads(stdout)["rows"] == 1
    row = pd.read_parquet(tmp_path / "pacs.parquet").iloc[0]
    assert row["path"].endswith("/instances/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819")
    assert pacs["password"] not in stdout and pacs["password"] not in row["path"]


@needs_dciodvfy
def test_dicom_images_get_a_structured_report_of_their_row(archive, shipped, tmp_path, capsys):
    """`cxr score --dicom-sr DIR`: for every DICOM image of the archive a DICOM Structured Report of its row, named by
    the image's SOP Instance UID, with the table's probabilities and the card's thresholds; PNGs get none;
    dciodvfy finds no error in it."""
    import pydicom

    from cxrcore.pacs.sr import read_report

    folder = tmp_path / "archive"
    shutil.copytree(archive / "day2", folder)
    dicom = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    shutil.copy(dicom, folder / "film.dcm")
    out, reports = tmp_path / "scores.parquet", tmp_path / "reports"
    code, stdout, err = cxr_here(capsys, "score", folder, "--checkpoint", shipped["finetuned"], "--out", out,
                                 "--dicom-sr", reports, "--json")
    assert code == 0, err
    assert json.loads(stdout)["reports"] == 1
    files = list(reports.iterdir())
    assert [f.name for f in files] == [f"{pydicom.dcmread(dicom, stop_before_pixels=True).SOPInstanceUID}.dcm"]
    row = pd.read_parquet(out).set_index("path").loc[str(folder / "film.dcm")]
    report = read_report(pydicom.dcmread(files[0]))
    for label, entry in report.items():
        assert entry["probability"] == pytest.approx(row[label], abs=1e-6)
        assert entry["positive"] == bool(row[f"{label} call"]) and entry["boxes"] == []
    assert dciodvfy_errors(files[0]) == []
