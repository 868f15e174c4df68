"""The Follow-up page's PACS source (issue 25 §2): a patient's prior and current study searched in Debian's Orthanc on
127.0.0.1 over DICOMweb, oldest first; each study's frontal image fetched and compared; the new finding called; two
studies of different patients refused; the patient's ID and name never shown."""
from __future__ import annotations

import numpy as np

from conftest import FORMATS, app_page, no_exception

DICOM = FORMATS / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
PATIENT, OTHER = "FU-PATIENT-7", "FU-OTHER-8"


def _study(pixels: np.ndarray, patient: str, date: str, name: str):
    """The sample DICOM's header (a real CR film) with new UIDs, this patient and date, and ``pixels`` (uint8)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.dcmread(DICOM)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.ViewPosition = patient, name, date, "PA"
    ds.AccessionNumber = "FU-ACC-1"   # one accession for all (a search that finds both patients)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for tag in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "LossyImageCompression",
                "LossyImageCompressionMethod", "LossyImageCompressionRatio"):
        if tag in ds:
            delattr(ds, tag)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def test_a_patients_prior_and_current_study_from_the_pacs(pacs, app_env, shipped, monkeypatch):
    from cxrcore.data.phantom.renderer import render_film
    from cxrcore.pacs.dicomweb import PacsConfig, store

    env = {"CXR_DICOMWEB_URL": pacs["url"], "CXR_DICOMWEB_USER": pacs["user"],
           "CXR_DICOMWEB_PASSWORD": pacs["password"]}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for name in ("CXR_HOSTED", "CXR_ADDRESS", "CXR_PACS_STORE", "CXR_DICOMWEB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    prior, _, _ = render_film({}, [21], "nih", 256, [22], finding_seed=[23])
    current, _, _ = render_film({"Effusion": 1}, [24], "nih", 256, [22], finding_seed=[23],
                                pose={"rotate": -2.0, "shift_x": 0.02})
    config = PacsConfig.from_env({**env, "CXR_PACS_STORE": "on-request"})   # the test's own upload; the page reads
    store(config, [_study(current, PATIENT, "20260301", "DOE^JANE"), _study(prior, PATIENT, "20260101", "DOE^JANE"),
                   _study(prior, OTHER, "20260201", "ROE^RICHARD")])

    at = app_page("followup").run()
    no_exception(at)
    at.radio(key="fu_source").set_value("Two studies from the PACS").run()
    at.text_input(key="fu_pacs_patient_id").set_value(PATIENT).run()
    at.button(key="fu_pacs_search").click().run()
    no_exception(at)
    assert [e.value for e in at.error] == []
    assert at.selectbox(key="fu_pacs_prior").value == 0 and at.selectbox(key="fu_pacs_current").value == 1  # by date
    called = next(m.value for m in at.markdown if m.value.startswith("**Called:**"))
    assert "Effusion: new" in called, called
    shown = " ".join(str(x.value) for x in [*at.markdown, *at.caption, *at.info, *at.warning]) + " ".join(
        str(t.value) for t in at.dataframe)
    assert PATIENT not in shown and "DOE" not in shown and pacs["password"] not in shown

    # a search by the accession finds both patients: a prior of another patient is refused
    at.text_input(key="fu_pacs_patient_id").set_value("").run()
    at.text_input(key="fu_pacs_accession").set_value("FU-ACC-1").run()
    at.button(key="fu_pacs_search").click().run()
    assert not at.exception, at.exception
    assert len(at.dataframe) and len(at.dataframe[0].value) == 3, [i.value for i in at.info]
    at.selectbox(key="fu_pacs_prior").set_value(0).run()
    at.selectbox(key="fu_pacs_current").set_value(1).run()    # the other patient's study lies between by date
    no_exception(at)
    assert any("different patients" in e.value for e in at.error), [e.value for e in at.error]
