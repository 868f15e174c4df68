"""A PACS in the loop (issue 22, done-when): Orthanc with its DICOMweb plugin on 127.0.0.1 holds the real DICOM of
tests/data; in Chromium the Compare page finds it with its PACS search, compares, and sends the results back; the
report read back over DICOMweb has the probabilities the pipeline gives for that file, and dciodvfy finds no error
in it or in the heatmap capture. The page never shows the patient's name or ID."""
from __future__ import annotations

import os
import shutil
import subprocess

import pydicom
import pytest

import orthanc_server
from conftest import FORMATS, fresh_workspace
from test_browser import CHROMIUM, body_with, browser, open_compare, serve_app, wait_idle  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
              pytest.mark.skipif(not orthanc_server.available(),
                                 reason="Debian's orthanc and orthanc-dicomweb are not installed (scripts/setup.sh test)")]
DICOM = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _config(pacs, store="on-request"):
    from cxrcore.pacs.dicomweb import PacsConfig

    return PacsConfig.from_env({"CXR_DICOMWEB_URL": pacs["url"], "CXR_DICOMWEB_USER": pacs["user"],
                                "CXR_DICOMWEB_PASSWORD": pacs["password"], "CXR_PACS_STORE": store})


def test_compare_a_study_from_the_pacs_and_send_the_results_back(pacs, browser, app_home, shipped, tmp_path):
    from cxrcore.compare import compare, load_image
    from cxrcore.pacs.dicomweb import retrieve_dataset, store, study_images
    from cxrcore.pacs.sr import read_report
    from cxrcore.predictor import Predictor

    config = _config(pacs)
    source = pydicom.dcmread(DICOM)
    store(config, [source])
    home = fresh_workspace(app_home, tmp_path / "home")
    server = serve_app(home, CXR_DICOMWEB_URL=pacs["url"], CXR_DICOMWEB_USER=pacs["user"],
                       CXR_DICOMWEB_PASSWORD=pacs["password"], CXR_PACS_STORE="on-request")
    url = next(server)
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 2400})
        open_compare(page, url)
        page.get_by_text("A study from the PACS").click()
        wait_idle(page)
        page.get_by_label("Patient ID").fill(source.PatientID)
        page.get_by_label("Patient ID").press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Search the PACS").click()
        body = body_with(page, "feature cells", "baseline:", "fine-tuned:", "Send the results to the PACS",
                         timeout=300_000)
        assert "CR" in body and "PA" in body                             # the study and its view, listed
        assert source.PatientID not in body and str(source.PatientName) not in body   # never its patient
        assert pacs["password"] not in body                              # nor the PACS's credentials
        page.get_by_test_id("stRadio").filter(has_text="Results of").get_by_text("fine-tuned:").click()
        wait_idle(page)
        page.get_by_text("These are a research model's unverified outputs").click()
        wait_idle(page)
        page.get_by_role("button", name="Send to the PACS").click()
        body = body_with(page, "Stored in the PACS", timeout=120_000)
        page.screenshot(path=str(tmp_path / "compare-pacs.png"), full_page=True)
    finally:
        next(server, None)

    # read back over DICOMweb: the report and the heatmap capture are in the source's study
    derived = [h for h in study_images(config, source.StudyInstanceUID, derived=True)
               if h.sop_uid != source.SOPInstanceUID]
    report = [h for h in derived if h.modality == "SR"]
    capture = [h for h in derived if h.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"]
    assert len(report) == 1 and len(capture) == 1 and len(derived) == 2, derived
    sr = retrieve_dataset(config, source.StudyInstanceUID, report[0].series_uid, report[0].sop_uid)
    sc = retrieve_dataset(config, source.StudyInstanceUID, capture[0].series_uid, capture[0].sop_uid)
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
    # the numbers the pipeline gives for this file with the model whose results the page sent
    image, raw = load_image(DICOM)
    expected = compare(image, {"m": Predictor(shipped["finetuned"])}, raw=raw).predictions["m"]
    got = read_report(sr)
    for i, label in enumerate(expected.labels):
        assert got[label]["probability"] == pytest.approx(float(expected.probs[i]), abs=1e-6), label
    # the image the PACS gives is the one the page compared: no other image is in the study
    assert [h.sop_uid for h in study_images(config, source.StudyInstanceUID)] == [source.SOPInstanceUID]
    if shutil.which("dciodvfy"):
        for ds, what in ((sr, "report"), (sc, "heatmap")):
            path = tmp_path / f"{what}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
            errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
            assert errors == [], (what, errors)


def test_the_pacs_settings_are_checked_and_never_show_the_credentials(pacs):
    from cxrcore.pacs.dicomweb import PacsConfig, PacsError, search_studies, store

    cfg = _config(pacs, store="off")
    assert pacs["password"] not in repr(cfg) and pacs["password"] not in str(cfg)
    with pytest.raises(PacsError, match="Sending results to the PACS is off"):
        store(cfg, [pydicom.dcmread(DICOM)])
    wrong = PacsConfig.from_env({"CXR_DICOMWEB_URL": pacs["url"], "CXR_DICOMWEB_USER": pacs["user"],
                                 "CXR_DICOMWEB_PASSWORD": "wrong-password"})
    with pytest.raises(PacsError, match="refused to search studies: HTTP 401") as err:
        search_studies(wrong)
    assert "wrong-password" not in str(err.value)
    gone = PacsConfig.from_env({"CXR_DICOMWEB_URL": "http://127.0.0.1:9/dicom-web"})
    with pytest.raises(PacsError, match="could not be reached"):
        search_studies(gone)
    with pytest.raises(PacsError, match="holds a user name or password"):
        PacsConfig.from_env({"CXR_DICOMWEB_URL": "http://me:secret@127.0.0.1:8042/dicom-web"})
    with pytest.raises(PacsError, match="YYYYMMDD"):
        search_studies(cfg, date_from="31/01/2024")
    assert PacsConfig.from_env({}) is None
