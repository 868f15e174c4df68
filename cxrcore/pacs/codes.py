"""The coded concepts a DICOM result uses for each label.

A finding is coded in SNOMED CT where DICOM's own code dictionary (pydicom's ``codes.SCT``, from DICOM PS3.16)
has the concept: :data:`SNOMED_KEYWORDS` names, per label, the dictionary's keyword, so every code value and
meaning comes from that dictionary and none is typed here. A label without one there gets a code of this tool's
private scheme :data:`PRIVATE_SCHEME` (a ``99`` designator, as DICOM reserves for private schemes), its value the
label in capitals; the SR declares that scheme in its Coding Scheme Identification Sequence, and
:func:`finding_code` says which kind each label got."""
from __future__ import annotations

import re

PRIVATE_SCHEME = "99CXRWB"
PRIVATE_SCHEME_NAME = "CXR workbench finding labels (private; not SNOMED CT)"

# label -> keyword of pydicom's codes.SCT (NIH ChestX-ray14 and CheXpert label names). A label missing here, or
# whose keyword the installed pydicom lacks, is coded in PRIVATE_SCHEME.
SNOMED_KEYWORDS: dict[str, str] = {
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "PleuralEffusion",            # NIH's "Effusion" is the pleural effusion of the chest film
    "Pleural Effusion": "PleuralEffusion",
    "Edema": "PulmonaryEdema",                # NIH / CheXpert "Edema" on a chest film: pulmonary edema
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumothorax": "Pneumothorax",
    "Fibrosis": "Fibrosis",
}


def finding_code(label: str):
    """``(code, kind)``: the pydicom ``Code`` of ``label``'s finding and ``"SNOMED CT"`` or ``"private"``."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    keyword = SNOMED_KEYWORDS.get(label)
    if keyword is not None:
        try:
            return getattr(codes.SCT, keyword), "SNOMED CT"
        except AttributeError:
            pass
    value = re.sub(r"[^A-Z0-9]+", "_", label.upper()).strip("_")[:16] or "UNNAMED"
    return Code(value, PRIVATE_SCHEME, label.replace("_", " ")), "private"


def coding_scheme_identification():
    """The Coding Scheme Identification Sequence item (0008,0110) that declares :data:`PRIVATE_SCHEME`."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "the operator of this CXR workbench installation"
    return item
