"""A PACS over DICOMweb, through ``dicomweb-client`` (no DICOMweb is written by hand here): search studies
(QIDO-RS), list a study's images, retrieve one (WADO-RS), store derived objects (STOW-RS).

The operator points the app at a PACS with environment variables, read each time a client is made:

``CXR_DICOMWEB_URL``       the DICOMweb root (e.g. ``https://pacs.example.org/dicom-web``; Orthanc:
                           ``http://HOST:8042/dicom-web``)
``CXR_DICOMWEB_TOKEN``     a bearer token sent as ``Authorization: Bearer …``, or
``CXR_DICOMWEB_USER`` and ``CXR_DICOMWEB_PASSWORD``  HTTP basic authentication
``CXR_PACS_STORE``         ``on-request`` lets a person send results (the SR and the heatmap capture) to the PACS;
                           ``off`` (the default) sends nothing

Credentials are never printed, logged or shown: :class:`PacsConfig`'s text form names the URL only, and an
error says which server failed and how, not with what. What goes to the PACS is only what a person (or, later,
the operator's automatic scoring) asks to send: the derived objects of :mod:`cxrcore.pacs.sr`, nothing else.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from ..errors import CXRError

ENV_URL = "CXR_DICOMWEB_URL"
ENV_TOKEN = "CXR_DICOMWEB_TOKEN"
ENV_USER = "CXR_DICOMWEB_USER"
ENV_PASSWORD = "CXR_DICOMWEB_PASSWORD"
ENV_STORE = "CXR_PACS_STORE"
STORE_MODES = ("off", "on-request")
RADIOGRAPHY = ("CR", "DX")     # the modalities a chest film comes as (computed and digital radiography)
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"   # in the series description of the results this tool stores
SEARCH_LIMIT = 200
TIMEOUT_S = 30


class PacsError(CXRError):
    """The PACS could not be reached or refused a request; the message says which server and what to check."""


@dataclass(frozen=True)
class PacsConfig:
    url: str
    token: str = field(default="", repr=False)
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    store: str = "off"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "PacsConfig | None":
        """The operator's PACS, or None when ``CXR_DICOMWEB_URL`` is not set."""
        env = os.environ if environ is None else environ
        url = (env.get(ENV_URL) or "").strip().rstrip("/")
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PacsError(f"{ENV_URL} must be an http(s) URL of a DICOMweb service, e.g. "
                            "http://pacs.example.org:8042/dicom-web.")
        if parts.username or parts.password:
            raise PacsError(f"{ENV_URL} holds a user name or password: put them in {ENV_USER} and {ENV_PASSWORD} "
                            "instead (a URL is shown and logged; those never are).")
        store = (env.get(ENV_STORE) or "off").strip().lower()
        if store not in STORE_MODES:
            raise PacsError(f"{ENV_STORE} must be one of {', '.join(STORE_MODES)}, not {store!r}.")
        return cls(url, env.get(ENV_TOKEN, "").strip(), env.get(ENV_USER, ""), env.get(ENV_PASSWORD, ""), store)

    def __str__(self) -> str:
        how = "a bearer token" if self.token else "basic authentication" if self.user else "no authentication"
        return f"{self.url} ({how})"

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


ATTEMPTS = 2   # a request tried twice, 0.5 s apart, then reported (the library's default, 5 with doubling waits,
               # stalls a page ~30 s on an unreachable server)


def client(config: PacsConfig):
    """A ``dicomweb_client.DICOMwebClient`` for ``config`` (its own ``requests`` session, credentials set on it)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if config.token:
        session.headers["Authorization"] = f"Bearer {config.token}"
    elif config.user:
        session.auth = (config.user, config.password)
    api = DICOMwebClient(url=config.url, session=session)
    api.set_http_retry_params(retry=True, max_attempts=ATTEMPTS, wait_exponential_multiplier=250)
    return api


def _call(config: PacsConfig, what: str, fn):
    """Run ``fn`` against the PACS; its failures as PacsError naming the server and the kind of failure only."""
    import requests

    try:
        return fn()
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        hint = {401: " (check the token or user name and password)", 403: " (the account may not do this)",
                404: " (not found: check the URL and the UIDs)"}.get(code, "")
        raise PacsError(f"The PACS at {config.host} refused to {what}: HTTP {code}{hint}.") from None
    except requests.RequestException as exc:
        raise PacsError(f"The PACS at {config.host} could not be reached to {what} ({type(exc).__name__}). "
                        f"Check {ENV_URL} and that the server is up.") from None


def _value(item: dict, tag: str):
    """The first value of a DICOM JSON attribute (``tag`` as 8 hex digits), person names as text."""
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return ""
    v = values[0]
    return v.get("Alphabetic", "") if isinstance(v, dict) else v


def _values(item: dict, tag: str) -> list:
    return list((item.get(tag) or {}).get("Value") or [])


@dataclass(frozen=True)
class StudyHit:
    study_uid: str
    date: str
    description: str
    patient_id: str
    patient_name: str
    modalities: tuple[str, ...]
    accession: str
    images: int | None


def search_studies(config: PacsConfig, *, patient_id: str = "", patient_name: str = "", accession: str = "",
                   date_from: str = "", date_to: str = "", modalities: tuple[str, ...] = RADIOGRAPHY,
                   limit: int = SEARCH_LIMIT) -> list[StudyHit]:
    """Studies matching the search (QIDO-RS): patient ID, patient name (``*`` wildcards), accession number, study
    date range (``YYYYMMDD``), any of ``modalities``; newest first, at most ``limit``."""
    filters: dict[str, str] = {}
    for key, value in (("PatientID", patient_id), ("PatientName", patient_name), ("AccessionNumber", accession)):
        if value.strip():
            filters[key] = value.strip()
    for d in (date_from, date_to):
        if d and not (len(d) == 8 and d.isdigit()):
            raise PacsError(f"A study date is written YYYYMMDD (e.g. 20240131), not {d!r}.")
    if date_from or date_to:
        filters["StudyDate"] = f"{date_from}-{date_to}"
    fields = ["StudyDate", "StudyDescription", "PatientID", "PatientName", "ModalitiesInStudy", "AccessionNumber",
              "NumberOfStudyRelatedInstances"]
    api = client(config)
    found: dict[str, dict] = {}
    for modality in (modalities or ("",)):   # one query per modality: servers differ on matching a list
        search = dict(filters, **({"ModalitiesInStudy": modality} if modality else {}))
        for item in _call(config, "search studies", lambda: api.search_for_studies(
                search_filters=search, fields=fields, limit=limit)):
            found.setdefault(_value(item, "0020000D"), item)
    hits = [StudyHit(uid, str(_value(i, "00080020")), str(_value(i, "00081030")), str(_value(i, "00100020")),
                     str(_value(i, "00100010")), tuple(str(m) for m in _values(i, "00080061")),
                     str(_value(i, "00080050")),
                     int(_value(i, "00201208")) if _value(i, "00201208") != "" else None)
            for uid, i in found.items() if uid]
    return sorted(hits, key=lambda h: h.date, reverse=True)[:limit]


@dataclass(frozen=True)
class InstanceHit:
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    series_description: str
    view_position: str
    sop_class_uid: str


def study_images(config: PacsConfig, study_uid: str, derived: bool = False) -> list[InstanceHit]:
    """The images of a study: its instances that are images (not reports, presentation states, key-object notes or
    segmentations) and not results marked "NOT FOR DIAGNOSTIC USE" (this tool's heatmap captures); ``derived``:
    every instance. A secondary capture is an image here: archives keep chest films as such (SIIM's do)."""
    api = client(config)
    fields = ["Modality", "SeriesDescription", "ViewPosition", "SeriesInstanceUID", "SOPClassUID"]
    items = _call(config, "list the study's images",
                  lambda: api.search_for_instances(study_instance_uid=study_uid, fields=fields))
    out = [InstanceHit(study_uid, str(_value(i, "0020000E")), str(_value(i, "00080018")), str(_value(i, "00080060")),
                       str(_value(i, "0008103E")), str(_value(i, "00185101")), str(_value(i, "00080016")))
           for i in items]
    return [h for h in out if h.sop_uid and (derived or (h.modality not in ("SR", "PR", "KO", "SEG")
                                                        and NOT_FOR_DIAGNOSIS not in h.series_description))]


def retrieve_bytes(config: PacsConfig, hit: InstanceHit) -> bytes:
    """One image's DICOM file (WADO-RS), as bytes, for the same reading path as an upload."""
    from pydicom import dcmwrite

    api = client(config)
    ds = _call(config, "send the image", lambda: api.retrieve_instance(hit.study_uid, hit.series_uid, hit.sop_uid))
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def store(config: PacsConfig, datasets: list) -> list[str]:
    """Store derived objects (STOW-RS); returns their SOP Instance UIDs. Refused unless the operator allows it
    (``CXR_PACS_STORE=on-request``)."""
    if config.store == "off":
        raise PacsError(f"Sending results to the PACS is off: the operator allows it with {ENV_STORE}=on-request.")
    api = client(config)
    _call(config, "store the results", lambda: api.store_instances(datasets=datasets))
    return [str(ds.SOPInstanceUID) for ds in datasets]


def retrieve_dataset(config: PacsConfig, study_uid: str, series_uid: str, sop_uid: str):
    """An instance as a pydicom Dataset (WADO-RS): e.g. a report sent before, read back."""
    api = client(config)
    return _call(config, "send the object", lambda: api.retrieve_instance(study_uid, series_uid, sop_uid))
