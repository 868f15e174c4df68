"""Results as DICOM (issue 22 §2): `cxr predict --dicom-sr / --dicom-heatmap` on the real DICOM of tests/data
(and on a PNG), checked by dicom3tools' ``dciodvfy`` (no errors), read by dcmtk's ``dsrdump``, and read back with
highdicom: the same probabilities, thresholds and calls as ``cxr predict --json``, the source's study and patient
and nothing more, the findings coded in SNOMED CT where DICOM's dictionary has them."""
from __future__ import annotations

import json
import shutil
import subprocess

import pydicom
import pytest

from conftest import FORMATS, cxr_here

DICOM = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
PNG = FORMATS / "00000001_000.png"
needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dicom3tools' dciodvfy is not installed (scripts/setup.sh test installs it)")
needs_dsrdump = pytest.mark.skipif(shutil.which("dsrdump") is None,
                                   reason="dcmtk's dsrdump is not installed (scripts/setup.sh test installs it)")


def dciodvfy_errors(path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def dicom_results(tmp_path_factory, shipped):
    """`cxr predict` of the real DICOM with the shipped fine-tuned model: the JSON, the SR and the heatmap capture."""
    import contextlib
    import io

    from cxrcore.cli import main

    out = tmp_path_factory.mktemp("dicom_results")

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["predict", str(DICOM), "--checkpoint", str(shipped["finetuned"]), "--json",
                     "--dicom-sr", str(out / "sr.dcm"), "--dicom-heatmap", str(out / "heatmap.dcm"),
                     "--label", "Cardiomegaly"])
    assert code == 0
    return {"json": json.loads(buf.getvalue()), "sr": out / "sr.dcm", "heatmap": out / "heatmap.dcm",
            "stdout": buf.getvalue()}


def test_the_report_reads_back_with_the_same_numbers_as_the_json(dicom_results):
    from cxrcore.pacs.sr import read_report

    got = read_report(pydicom.dcmread(dicom_results["sr"]))
    want = dicom_results["json"]["predictions"]
    assert set(got) == set(want)
    for label, p in want.items():
        assert got[label]["probability"] == pytest.approx(p["probability"], abs=1e-9), label
        assert got[label]["threshold"] == pytest.approx(p["threshold"], abs=1e-9), label
        assert got[label]["positive"] == p["positive"], label
    # each Grad-CAM box as a polyline on the source image, in its pixels (1024 x 1024 here)
    boxes = dicom_results["json"]["boxes"]
    label = next(x for x in want if boxes.get(x))
    b = boxes[label][0]
    x0, y0, x1, y1 = got[label]["boxes"][0]
    assert (x0, y0) == pytest.approx((b["x"] * 1024, b["y"] * 1024), abs=0.01)
    assert (x1 - x0, y1 - y0) == pytest.approx((b["w"] * 1024, b["h"] * 1024), abs=0.01)


def test_the_report_references_its_source_and_carries_no_more_of_the_patient(dicom_results):
    sr, src = pydicom.dcmread(dicom_results["sr"]), pydicom.dcmread(DICOM, stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"          # Comprehensive SR
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.SeriesInstanceUID != src.SeriesInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == src.StudyInstanceUID
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "PARTIAL"
    assert "NOT FOR DIAGNOSTIC USE" in sr.SeriesDescription
    # the patient module is the source's (its bare-number age written in DICOM's form), nothing added
    patient = {e.keyword for e in sr if e.tag.group == 0x0010}
    assert patient <= {e.keyword for e in src if e.tag.group == 0x0010}
    assert (sr.PatientID, str(sr.PatientName), sr.PatientSex) == (src.PatientID, str(src.PatientName), src.PatientSex)
    assert src.PatientAge == "62" and sr.PatientAge == "062Y"
    # and none of it in what the command printed
    assert src.PatientID not in dicom_results["stdout"] and str(src.PatientName) not in dicom_results["stdout"]


def test_findings_are_coded_in_snomed_ct_where_dicom_has_the_concept_and_privately_otherwise(dicom_results):
    from pydicom.sr.codedict import codes

    from cxrcore.pacs.codes import PRIVATE_SCHEME, finding_code
    from cxrcore.pacs.sr import read_report

    got = read_report(pydicom.dcmread(dicom_results["sr"]))
    assert (got["Cardiomegaly"]["code"], got["Cardiomegaly"]["scheme"]) == (codes.SCT.Cardiomegaly.value, "SCT")
    assert (got["Pleural Effusion"]["code"], got["Pleural Effusion"]["scheme"]) == (codes.SCT.PleuralEffusion.value,
                                                                                    "SCT")
    assert got["No Finding"]["scheme"] == PRIVATE_SCHEME
    assert finding_code("Effusion")[0] == finding_code("Pleural Effusion")[0]   # NIH's and CheXpert's names
    sr = pydicom.dcmread(dicom_results["sr"])
    assert [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence] == [PRIVATE_SCHEME]


@needs_dciodvfy
def test_dciodvfy_finds_no_error_in_the_report_or_the_heatmap(dicom_results):
    assert dciodvfy_errors(dicom_results["sr"]) == []
    assert dciodvfy_errors(dicom_results["heatmap"]) == []
    sc, src = pydicom.dcmread(dicom_results["heatmap"]), pydicom.dcmread(DICOM, stop_before_pixels=True)
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.BurnedInAnnotation == "YES"
    assert sc.SamplesPerPixel == 3 and (sc.Rows, sc.Columns) == (1024, 1024)
    assert "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription and "Cardiomegaly" in sc.SeriesDescription


@needs_dsrdump
def test_dcmtk_reads_the_report(dicom_results):
    out = subprocess.run(["dsrdump", str(dicom_results["sr"])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Imaging Measurement Report" in out.stdout and '"Probability"' in out.stdout
    assert "UNVERIFIED" in out.stdout and "NOT FOR DIAGNOSTIC USE" in out.stdout


def test_a_png_gets_a_report_on_a_generated_study_that_says_it_has_no_pacs_source(shipped, tmp_path, capsys):
    code, out, err = cxr_here(capsys, "predict", PNG, "--checkpoint", shipped["finetuned"],
                              "--dicom-sr", tmp_path / "sr.dcm", "--dicom-heatmap", tmp_path / "heatmap.dcm")
    assert code == 0, err
    assert "not a DICOM" in out and "generated study" in out
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    assert "no source in a PACS" in sr.SeriesDescription
    assert str(sr.PatientName) == "" and sr.PatientID == ""       # no patient data invented
    sc = pydicom.dcmread(tmp_path / "heatmap.dcm")
    assert sc.StudyInstanceUID == sr.StudyInstanceUID             # one generated study for both
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(tmp_path / "sr.dcm") == [] and dciodvfy_errors(tmp_path / "heatmap.dcm") == []


def test_bad_requests_say_what_is_wrong_and_write_nothing(shipped, tmp_path, capsys):
    code, _, err = cxr_here(capsys, "predict", PNG, DICOM, "--fuse", "mean", "--checkpoint", shipped["finetuned"],
                            "--dicom-sr", tmp_path / "sr.dcm")
    assert code == 2 and "report on one image" in err and not (tmp_path / "sr.dcm").exists()
    code, _, err = cxr_here(capsys, "predict", PNG, "--checkpoint", shipped["finetuned"], "--label", "Fracture of the moon",
                            "--dicom-heatmap", tmp_path / "h.dcm")
    assert code == 2 and "is not one of the model's labels" in err and not (tmp_path / "h.dcm").exists()
    code, _, err = cxr_here(capsys, "predict", PNG, "--checkpoint", shipped["finetuned"],
                            "--dicom-sr", tmp_path / "no" / "such" / "folder" / "sr.dcm")
    assert code == 2 and "Could not write" in err
