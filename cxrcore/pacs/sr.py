"""A prediction as DICOM objects, built with highdicom (no DICOM encoding is written by hand here):

- :func:`structured_report`: a Comprehensive SR holding a TID 1500 Measurement Report. For each label one
  whole-image measurement group (TID 1501): the finding (:mod:`cxrcore.pacs.codes`), the probability and the
  operating threshold as measurements, the call (present / absent) as a qualitative evaluation, the model as the
  algorithm identification (its name, this tool's version and the card's digest); and each Grad-CAM box as a
  planar region group (TID 1410): a closed polyline on the source image in its pixel coordinates, with the box's
  heatmap score. Verification flag UNVERIFIED, completion PARTIAL, and "not for diagnostic use" in the series
  description and the algorithm parameters.
- :func:`heatmap_capture`: the heatmap of one label over the image as a secondary-capture image (burned in,
  flagged the same way) in the source's study, for viewers that show images but not SR coordinates.

The source's patient and study modules are copied by highdicom from the source header, nothing more; for an
image that is not a DICOM (a PNG upload) :func:`upload_header` makes a header with a generated study and no
patient data, and the report's series description says it has no source in a PACS.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from .codes import PRIVATE_SCHEME, coding_scheme_identification, finding_code
from .dicomweb import NOT_FOR_DIAGNOSIS   # what marks a result in the PACS, declared once

MANUFACTURER = "CXR workbench (research software)"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MAX_CAPTURE_ROWS = 2048   # a heatmap capture has the source's size, up to this many rows


@dataclass(frozen=True)
class ModelIdentity:
    """What names the model in a result: ``name`` (as the user chose it), ``version`` (this tool's version),
    ``card_sha256`` (:meth:`cxrcore.models.card.Card.sha256`), ``trained_on`` (the card's one-line summary)."""

    name: str
    version: str
    card_sha256: str
    trained_on: str = ""

    @classmethod
    def of(cls, name: str, card) -> "ModelIdentity":
        from .. import __version__

        summary = (card.trained_on or {}).get("summary", "") if isinstance(card.trained_on, dict) else ""
        return cls(name, __version__, card.sha256(), summary)


def upload_header(shape: tuple[int, int], name: str = "upload"):
    """A DICOM header standing for an image that came without one (a PNG upload): a generated study, series and
    instance (Secondary Capture), no patient data. It carries no pixels; it is what a report references."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = _dt.date.today().strftime("%Y%m%d")
    ds.StudyTime = _dt.datetime.now().strftime("%H%M%S")
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.ImageComments = f"generated for a file with no DICOM header ({name[:40]}): no source in a PACS"
    return ds


def source_of(raw: bytes, name: str, shape: tuple[int, int]):
    """``(header, in_pacs)``: the DICOM header of an image file's bytes and True, or for a file that is not a
    DICOM :func:`upload_header` and False."""
    from ..data.imageio import dicom_header

    header = dicom_header(raw, name)
    return (header, True) if header is not None else (upload_header(shape, name), False)


def write(ds, path) -> None:
    """Save a DICOM object as a DICOM file (preamble and file meta); a clear error when the path cannot be
    written."""
    from pathlib import Path

    from ..errors import CXRError

    try:
        ds.save_as(Path(path), enforce_file_format=True)
    except OSError as exc:
        raise CXRError(f"Could not write {path}: {exc.strerror or exc}. Choose a folder you can write to.") from None


def _conforming(source):
    """``source`` with the values a report copies from it in their DICOM form where the source wrote them
    otherwise: a Patient's Age given as a bare number of years ("62") is written "062Y" (the same value; DICOM's
    AS form). Nothing is added and nothing else is changed."""
    age = str(getattr(source, "PatientAge", "") or "")
    if age.isdigit() and len(age) <= 3:
        source = source.copy()
        source.PatientAge = f"{int(age):03d}Y"
    return source


def _identifiers(model: ModelIdentity, pred) -> "list[str]":
    return [f"card sha256 {model.card_sha256}", f"heatmaps {pred.cam_method}",
            f"trained on: {model.trained_on or 'not recorded'}"[:64], NOT_FOR_DIAGNOSIS]


def structured_report(pred, source, model: ModelIdentity, *, series_number: int = 9901, instance_number: int = 1,
                      has_pacs_source: bool = True):
    """The Comprehensive SR (a pydicom Dataset) of ``pred`` (a :class:`cxrcore.predictor.Prediction`) for the image
    whose header is ``source`` (a pydicom Dataset: the DICOM's own, read without pixels, or
    :func:`upload_header`'s); ``has_pacs_source`` False says so in the series description."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    source = _conforming(source)
    rows = int(getattr(source, "Rows", 0) or pred.image_shape[0])
    cols = int(getattr(source, "Columns", 0) or pred.image_shape[1])
    algorithm = hd.sr.AlgorithmIdentification(name=model.name[:64], version=f"cxrcore {model.version}",
                                              parameters=_identifiers(model, pred), manufacturer=MANUFACTURER)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[model.card_sha256]), name=model.name[:64],
            manufacturer_name=MANUFACTURER, model_name=f"card {model.card_sha256[:16]}"))
    no_units = codes.UCUM.NoUnits
    chest = [hd.sr.FindingSite(anatomic_location=codes.SCT.Chest)]
    box_score = Code("CAMSCORE", PRIVATE_SCHEME, "Heatmap box score")
    groups = []
    for i, label in enumerate(pred.labels):
        finding, _ = finding_code(label)
        call = codes.SCT.Present if pred.probs[i] >= pred.thresholds[i] else codes.SCT.Absent
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"{label}"[:64]),
            finding_type=finding, finding_sites=chest, algorithm_id=algorithm,
            measurements=[
                hd.sr.Measurement(name=codes.DCM.Probability, value=float(pred.probs[i]), unit=no_units),
                hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=float(pred.thresholds[i]), unit=no_units)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding, value=call)]))
        for k, box in enumerate(pred.boxes.get(label, [])):
            x0, y0 = box.x * cols, box.y * rows
            x1, y1 = (box.x + box.w) * cols, (box.y + box.h) * rows
            outline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(),
                                                             identifier=f"{label} box {k + 1}"[:64]),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline,
                    source_image=hd.sr.SourceImageForRegion.from_source_image(source)),
                finding_type=finding, method=codes.DCM.Saliency, algorithm_id=algorithm,
                measurements=[hd.sr.Measurement(name=box_score, value=float(box.score), unit=no_units)]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.PlainRadiography,
        imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    where = "" if has_pacs_source else " (no source in a PACS: generated study)"
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=instance_number, manufacturer=MANUFACTURER,
        is_complete=False, is_final=False, is_verified=False,
        series_description=f"AI findings, {NOT_FOR_DIAGNOSIS}{where}"[:64])
    sr.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return sr


def heatmap_capture(pred, label: str, pixels: np.ndarray, source, model: ModelIdentity, *,
                    series_number: int = 9902, instance_number: int = 1):
    """The heatmap of ``label`` over the image (``pixels``, the decoded radiograph) as an RGB secondary-capture
    image in ``source``'s study (patient and study copied from it), its boxes drawn, burned-in text naming the
    model and "NOT FOR DIAGNOSTIC USE"."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    from ..explain.visual import overlay

    source = _conforming(source)
    j = pred.labels.index(label)
    height = min(int(getattr(source, "Rows", 0) or pixels.shape[0]), MAX_CAPTURE_ROWS)   # the source's size
    rgb = overlay(pixels, pred.heatmaps[j], pred.boxes.get(label), f"{label} p={pred.probs[j]:.2f} "
                  f"· {model.name[:24]} · {NOT_FOR_DIAGNOSIS}", height=height)
    rgb = np.ascontiguousarray(rgb[..., :3].astype(np.uint8))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=instance_number, manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"))   # highdicom wants one; replaced below by what the source says
    # Patient Orientation is type 2: the source's value, or empty where the source did not say (never a guess)
    sc.PatientOrientation = list(getattr(source, "PatientOrientation", None) or []) or ""
    sc.Laterality = getattr(source, "Laterality", "") or ""   # type 2C: the source's, or empty
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = f"{NOT_FOR_DIAGNOSIS}: AI heatmap {label}"[:64]
    sc.ImageComments = (f"{pred.cam_method} heatmap of {label} by {model.name} (card sha256 {model.card_sha256[:16]}); "
                        f"{NOT_FOR_DIAGNOSIS}")[:10240]
    sc.DerivationDescription = f"{pred.cam_method} heatmap blended over the source image"
    return sc


def read_report(ds) -> dict[str, dict]:
    """The per-label numbers of a report :func:`structured_report` wrote (a pydicom Dataset, e.g. read back from a
    PACS): ``{label: {"probability", "threshold", "positive", "code", "scheme", "boxes": [[x0, y0, x1, y1], ...]}}``
    (box corners in pixels), read with highdicom's TID 1500 parser."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sr = ds if isinstance(ds, hd.sr.ComprehensiveSR) else hd.sr.ComprehensiveSR.from_dataset(ds)
    out: dict[str, dict] = {}
    for group in sr.content.get_image_measurement_groups():
        label = group.tracking_identifier
        entry = out.setdefault(label, {"boxes": []})
        for m in group.get_measurements():
            if m.name == codes.DCM.Probability:
                entry["probability"] = float(m.value)
            elif m.name == codes.DCM.ThresholdValue:
                entry["threshold"] = float(m.value)
        for q in group.get_qualitative_evaluations():
            entry.update({"positive": q.value == codes.SCT.Present, "code": q.name.value,
                          "scheme": q.name.scheme_designator})
    for group in sr.content.get_planar_roi_measurement_groups():
        label, _, _ = group.tracking_identifier.rpartition(" box ")
        points = np.asarray(group.roi.value, dtype=float)
        out.setdefault(label, {"boxes": []})["boxes"].append(
            [float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())])
    return out
