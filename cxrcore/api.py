"""The JSON REST service (``cxr serve``): a FastAPI app on uvicorn.

Endpoints (the OpenAPI description is at ``/openapi.json``, browsable at ``/docs``)::

    GET  /health          -> {"status": "ok", ...}; models, labels and limits too when no token is set or the
                             request carries it
    POST /predict         <- {"image": "<base64 PNG/JPEG/DICOM>", "name": "x.png", "model": "baseline",
                              "heatmaps": false, "overlays": false, "mc_samples": 0, "mc_seed": 0, "tta": false}
                          -> per-label probability, threshold, decision (and Monte-Carlo dropout mean /
                             variance / std), boxes, heatmaps as base64 PNG, out-of-distribution and
                             model-domain warnings, timing
                          <- seed 003's request {"cxr_base64": "<base64>"} (or "format": "seed003")
                          -> seed 003's answer {"success": true, "prediction_mean": {label: p},
                             "prediction_variance": {label: v}, "heatmap": {label: "<base64 PNG>"},
                             "inference_duration": seconds} (plus the warnings)
    POST /predict/batch   <- {"items": [<a /predict request>, ...]} -> {"results": [...]}: one entry per item,
                             each a result or that item's own error; one bad item does not fail the batch
    POST /predict/study   <- {"views": [{"image": ..., "view": "frontal"}, {"image": ..., "view": "lateral"}],
                              "fusion": "mean"} -> each view's prediction and the study's, fused by mean or max

Protections (the same as the standard-library server this replaces):

* a bearer token (``--token`` / ``CXR_API_TOKEN``), compared in constant time, checked before the body is read;
* the body size limit, enforced from ``Content-Length`` by a pure ASGI middleware before one byte of the
  body is read (411 without a Content-Length or with a chunked body, 413 over the limit, the connection then
  closed), and a decoded image over ``CXR_MAX_UPLOAD_MB`` refused (413);
* every error is JSON ``{"error": message, "status": code}`` (plus ``"success": false`` for seed 003's
  clients): 400 malformed JSON, base64, image or field (FastAPI's validation errors are mapped to 400 with
  a readable message), 401, 404, 405, 411, 413, and 500 for a bug (logged server-side with the traceback but
  never the image; the client gets no traceback);
* nothing is written to disk; no DICOM metadata, image or token reaches a response or the log.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import CXRError, ConfigError, ImageError

log = logging.getLogger("cxrcore.api")

MAX_MC_SAMPLES = 50
SEED003_MC_SAMPLES = 20       # seed 003 answers with a Monte-Carlo mean and variance; the Compare page's 20 passes
MAX_BATCH = 8                 # images in one /predict/batch request (default; --max-batch)
MAX_VIEWS = 4                 # views in one /predict/study request
ENV_CONFIG = "CXR_API_CONFIG"  # how `cxr serve --workers N` hands its settings to each worker process
ENV_TOKEN = "CXR_API_TOKEN"
_DICOM_NOTE_PREFIXES = ("DICOM transfer syntax", "modality ", "photometric interpretation")
_ASYMMETRY_REASON = "not left-right symmetric"  # explain.ood's reason that a lateral view trips by design
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cxr"'}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = headers or {}


def error_body(status: int, message: str) -> dict:
    return {"error": message, "status": int(status), "success": False}


# =========================================================================== request and response models
class _Image(BaseModel):
    """An image in a request: ``image`` (this service's name) or ``cxr_base64`` (seed 003's)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    image: str | None = Field(None, description="The PNG, JPEG or DICOM file, base64-encoded (a data: URL is "
                                                "accepted too).")
    cxr_base64: str | None = Field(None, description="Seed 003's name for `image`; a request that uses it is "
                                                     "answered in seed 003's shape unless `format` says otherwise.")
    name: str | None = Field(None, description="The file name (a hint for the format, shown in messages).")


class PredictRequest(_Image):
    model: str | None = Field(None, description="A model from GET /health's `models` (default: the first served).")
    format: Literal["cxr", "seed003"] | None = Field(
        None, description="The answer's shape: `cxr` (this service's) or `seed003` (`success`, `prediction_mean`, "
                          "`prediction_variance`, `heatmap`, `inference_duration`). Default: `seed003` when the "
                          "image came as `cxr_base64`, else `cxr`.")
    heatmaps: bool | None = Field(None, description="Every label's Grad-CAM heatmap as a base64 grayscale PNG "
                                                    "(default: false for `cxr`, true for `seed003`).")
    overlays: bool = Field(False, description="Every label's heatmap over the image with its boxes, as base64 PNG "
                                              "(`cxr` only).")
    mc_samples: int | None = Field(None, ge=0, le=MAX_MC_SAMPLES, description=(
        f"Monte-Carlo dropout passes (0: none). Default: 0 for `cxr`, {SEED003_MC_SAMPLES} for `seed003`, whose "
        "mean and variance come from these passes (at least 2 there)."))
    mc_seed: int = Field(0, description="Seed of the dropout masks (the same seed gives the same spread).")
    tta: bool = Field(False, description="Test-time augmentation inside the Monte-Carlo passes.")

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra={"examples": [
        {"image": "<base64 PNG>", "model": "baseline", "heatmaps": True, "mc_samples": 20},
        {"cxr_base64": "<base64 PNG>"}]})


_PREDICT_REQUEST_SCHEMA = WithJsonSchema({"$ref": "#/components/schemas/PredictRequest"})


class BatchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    # items stay plain objects here and are validated one by one, so one bad item is reported as that item's
    # error instead of failing the whole batch; the schema still documents them as PredictRequest
    items: list[Annotated[dict, _PREDICT_REQUEST_SCHEMA]] = Field(
        ..., min_length=1, description=f"Up to {MAX_BATCH} /predict requests (the server's --max-batch).")


class StudyView(_Image):
    view: str | None = Field(None, max_length=40, description="`frontal`, `lateral`, ... (a lateral view is not "
                                                              "flagged for being asymmetric).")


class StudyRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    views: list[StudyView] = Field(..., min_length=2, max_length=MAX_VIEWS,
                                   description="The views of one study, e.g. the frontal and the lateral.")
    model: str | None = None
    fusion: Literal["mean", "max"] = Field("mean", description="How the views' probabilities make the study's "
                                                               "(seed 003): their mean or their maximum.")
    heatmaps: bool = False
    mc_samples: int = Field(0, ge=0, le=MAX_MC_SAMPLES, description="Monte-Carlo dropout passes per view.")
    mc_seed: int = 0


class LabelResult(BaseModel):
    probability: float
    threshold: float
    positive: bool
    calibrated: float | None = Field(None, description="Temperature-scaled probability, when the card has "
                                                       "temperatures.")
    mean: float | None = Field(None, description="Monte-Carlo dropout mean (with mc_samples).")
    variance: float | None = None
    std: float | None = None


class BoxResult(BaseModel):
    x: float
    y: float
    w: float
    h: float
    score: float
    model_config = ConfigDict(extra="allow")


class ImageInfo(BaseModel):
    format: str
    shape: list[int]
    notes: list[str]


class OODResult(BaseModel):
    is_suspect: bool
    score: float
    reasons: list[str]
    stats: dict[str, float]


class Timing(BaseModel):
    decode_ms: float
    ood_ms: float
    predict_ms: float
    render_ms: float
    total_ms: float
    base64_ms: float


class PredictResponse(BaseModel):
    model: str
    model_name: str
    labels: list[str]
    predictions: dict[str, LabelResult]
    positive: list[str]
    boxes: dict[str, list[BoxResult]]
    cam_method: str
    image: ImageInfo
    ood: OODResult
    warning: str | None = Field(description="The out-of-distribution warning alone (kept for older clients).")
    warnings: list[str] = Field(description="How (not) to read these outputs: a model trained on phantoms shown "
                                            "a real film, an image that does not look like a frontal chest film.")
    warning_codes: list[str]
    trained_on: str
    uncertainty: dict[str, Any] | None = None
    heatmaps: dict[str, str] | None = None
    overlays: dict[str, str] | None = None
    timing: Timing
    view: str | None = None


class Seed003Response(BaseModel):
    success: Literal[True]
    prediction_mean: dict[str, float] = Field(description="Monte-Carlo dropout mean probability per label.")
    prediction_variance: dict[str, float] = Field(description="Monte-Carlo dropout variance per label.")
    heatmap: dict[str, str] = Field(description="Per label: the Grad-CAM heatmap as a base64 grayscale PNG "
                                                "(empty when heatmaps=false).")
    inference_duration: float = Field(description="Seconds from decoding the image to the answer.")
    model: str
    labels: list[str]
    thresholds: dict[str, float]
    mc_samples: int
    uncertainty_note: str
    warnings: list[str]
    warning_codes: list[str]
    ood: OODResult


class BatchItem(BaseModel):
    index: int
    ok: bool
    status: int
    result: PredictResponse | Seed003Response | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]
    succeeded: int
    failed: int
    seconds: float


class StudyLabel(BaseModel):
    probability: float
    threshold: float
    positive: bool


class StudyResponse(BaseModel):
    model: str
    model_name: str
    fusion: Literal["mean", "max"]
    labels: list[str]
    study: dict[str, StudyLabel]
    positive: list[str]
    views: list[PredictResponse]
    warnings: list[str]
    warning_codes: list[str]
    seconds: float


class ErrorResponse(BaseModel):
    error: str
    status: int
    success: Literal[False] = False


class HealthResponse(BaseModel):
    status: Literal["ok"]
    models: list[str] | None = None
    default_model: str | None = None
    labels: dict[str, list[str]] | None = None
    display_names: dict[str, str] | None = None
    trained_on: dict[str, str] | None = None
    device: str | None = None
    max_bytes: int | None = None
    max_image_bytes: int | None = None
    max_mc_samples: int | None = None
    max_batch: int | None = None
    pid: int | None = Field(None, description="The worker process that answered (with --workers N).")
    details: str | None = Field(None, description="Set when a token is required and was not sent.")


# =========================================================================== the models and the request logic
def _png_b64(arr: np.ndarray) -> str:
    from .explain.visual import png_bytes

    return base64.b64encode(png_bytes(arr)).decode("ascii")


def _decode_b64(text: str, field: str = "image") -> bytes:
    if text.startswith("data:") and "," in text[:200]:  # data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"\"{field}\" is not valid base64; send the file's bytes base64-encoded.") from None


def _validation_message(errors: list, prefix: str = "") -> str:
    """A readable sentence from pydantic / FastAPI validation errors (never echoes the input)."""
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":
            return "The body is not valid JSON."
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if not loc:
            return ("The body must be a JSON object (Content-Type: application/json) with an \"image\" (or "
                    "\"cxr_base64\") field; see /docs.")
        field = prefix + ".".join(loc)
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "missing":
            msg = "is required"
        parts.append(f"\"{field}\": {msg[0].lower() + msg[1:] if msg else msg}")
        if len(parts) == 4:
            break
    return "; ".join(parts) + "."


def check_device(device: str) -> str:
    """``cpu`` or ``cuda`` (``cuda:N``); a clear error when a GPU is asked for and none is visible."""
    import torch

    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is visible to this process (torch.cuda.is_available() is "
                              "False). Serve with --device cpu, or check the driver and CUDA_VISIBLE_DEVICES.")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
        return device
    raise ConfigError(f"--device must be cpu or cuda (cuda:N), not {device!r}.")


class Service:
    """The models and the request logic, independent of HTTP (usable in tests and other servers)."""

    def __init__(self, checkpoints: list[str | Path], token: str | None = None, max_bytes: int | None = None,
                 device: str = "cpu", max_image_bytes: int | None = None, max_batch: int = MAX_BATCH):
        """``checkpoints``: what ``cxr predict --checkpoint`` takes (a checkpoint or run folder, or a library
        model such as ``xrv:densenet121-res224-all``). ``max_bytes``: the largest /predict body (default: an
        image of ``CXR_MAX_UPLOAD_MB`` in base64 plus JSON; a batch or study may carry that per image);
        ``max_image_bytes``: the largest decoded image (default: ``CXR_MAX_UPLOAD_MB``)."""
        from . import hosting
        from .predictor import Predictor

        limits = hosting.settings()
        if not checkpoints:
            raise CXRError("Give at least one --checkpoint to serve.")
        if not 1 <= int(max_batch) <= 256:
            raise ConfigError(f"--max-batch must be from 1 to 256, not {max_batch}.")
        self.device = check_device(device)
        self.models: dict = {}
        # One inference per model at a time, to bound compute and memory (one call already uses every core;
        # each Grad-CAM call holds a backward pass's gradients). Not a correctness guard: a Predictor is
        # safe to share between threads (tests/test_predictor_threads.py).
        self.locks: dict[str, threading.Lock] = {}
        for c in checkpoints:
            p = Predictor(c, device=self.device)
            name = Path(c).resolve().name or p.name
            base, k = name, 2
            while name in self.models:
                name, k = f"{base}-{k}", k + 1
            self.models[name] = p
            self.locks[name] = threading.Lock()
        self.checkpoints = [str(c) for c in checkpoints]
        self.default = next(iter(self.models))
        self.token = token or None
        self.max_bytes = int(max_bytes) if max_bytes is not None else hosting.api_max_body_bytes(limits)
        self.max_image_bytes = int(max_image_bytes) if max_image_bytes is not None else limits.max_upload_bytes
        self.max_batch = int(max_batch)

    # ------------------------------------------------------------------ access
    def authorized(self, header: str | None) -> bool:
        if not self.token:
            return True
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())

    def check_auth(self, header: str | None) -> None:
        if not self.authorized(header):
            raise ApiError(401, "Missing or wrong bearer token; send 'Authorization: Bearer <token>'.", BEARER_CHALLENGE)

    def body_limit(self, path: str) -> int | None:
        """The largest body ``path`` accepts (None: an endpoint without a body)."""
        path = path.rstrip("/") or "/"
        if path == "/predict":
            return self.max_bytes
        if path == "/predict/batch":
            return self.max_bytes * self.max_batch
        if path == "/predict/study":
            return self.max_bytes * MAX_VIEWS
        return None

    # ------------------------------------------------------------------ endpoints
    def health(self, details: bool = True) -> dict:
        from .checkpoint import infer_trained_on

        if not details:
            return {"status": "ok", "details": "Send 'Authorization: Bearer <token>' for the models and limits."}
        return {"status": "ok", "models": list(self.models), "default_model": self.default,
                "labels": {n: list(p.labels) for n, p in self.models.items()},
                "display_names": {n: p.name for n, p in self.models.items()},
                "trained_on": {n: (p.card.trained_on or infer_trained_on(p.card)).get("summary", "")
                               for n, p in self.models.items()},
                "device": self.device, "max_bytes": self.max_bytes, "max_image_bytes": self.max_image_bytes,
                "max_mc_samples": MAX_MC_SAMPLES, "max_batch": self.max_batch, "pid": os.getpid()}

    def predict(self, req: PredictRequest | dict) -> dict:
        """One image: this service's answer, or seed 003's (``format`` / ``cxr_base64``)."""
        req = self._validated(PredictRequest, req)
        seed003 = (req.format or ("seed003" if req.cxr_base64 is not None and req.image is None else "cxr")) == "seed003"
        heatmaps = req.heatmaps if req.heatmaps is not None else seed003
        mc = req.mc_samples if req.mc_samples is not None else (SEED003_MC_SAMPLES if seed003 else 0)
        if seed003 and mc < 2:
            raise ApiError(400, "\"mc_samples\" must be at least 2 for the seed003 format: its prediction_mean and "
                                "prediction_variance come from Monte-Carlo dropout passes.")
        model = self._model(req.model)
        t0 = time.perf_counter()
        data = self._image_bytes(req)
        t_dec = time.perf_counter()
        loaded, ood, pred, t = self._run(model, data, req.name, mc, req.mc_seed, req.tta)
        if seed003:
            return self._seed003(model, pred, ood, heatmaps, time.perf_counter() - t0)
        out = self._response(model, pred, loaded, ood, heatmaps, req.overlays)
        out["timing"] = _timing(t0, t_dec, t, time.perf_counter())
        return out

    def predict_batch(self, req: BatchRequest | dict) -> dict:
        """Several /predict requests; each item gets its result or its own error."""
        t0 = time.perf_counter()
        req = self._validated(BatchRequest, req)
        if len(req.items) > self.max_batch:
            raise ApiError(413, f"{len(req.items)} items is over this service's batch limit of {self.max_batch}; "
                                "split the batch.")
        results = []
        for i, item in enumerate(req.items):
            try:
                results.append({"index": i, "ok": True, "status": 200,
                                "result": self.predict(self._validated(PredictRequest, item, f"items[{i}]."))})
            except ApiError as exc:
                results.append({"index": i, "ok": False, "status": exc.status, "error": exc.message})
            except Exception:  # a bug on one item: logged (without the image), reported on that item only
                log.exception("unexpected error on batch item %d", i)
                results.append({"index": i, "ok": False, "status": 500,
                                "error": "Internal server error; the details are in the server log."})
        ok = sum(r["ok"] for r in results)
        return {"results": results, "succeeded": ok, "failed": len(results) - ok,
                "seconds": round(time.perf_counter() - t0, 4)}

    def predict_study(self, req: StudyRequest | dict) -> dict:
        """The views of one study: each view's prediction and the study's, their probabilities fused by mean or
        max (:func:`cxrcore.predictor.fuse_views`, as ``cxr predict A B --fuse``)."""
        from .predictor import fuse_views

        t0 = time.perf_counter()
        req = self._validated(StudyRequest, req)
        model = self._model(req.model)
        views, preds = [], []
        for i, v in enumerate(req.views):
            where = f"view {i + 1}" + (f" ({v.view})" if v.view else "")
            t_view = time.perf_counter()
            try:
                data = self._image_bytes(v, f"views[{i}].")
                t_dec = time.perf_counter()
                loaded, ood, pred, t = self._run(model, data, v.name, req.mc_samples, req.mc_seed, False)
            except ApiError as exc:
                raise ApiError(exc.status, f"{where}: {exc.message}", exc.headers) from None
            lateral = (v.view or "").strip().lower().startswith("lat")
            out = self._response(model, pred, loaded, ood, req.heatmaps, False, lateral=lateral)
            out["view"] = v.view
            out["timing"] = _timing(t_view, t_dec, t, time.perf_counter())
            views.append(out)
            preds.append(pred)
        fused = fuse_views([p.probs for p in preds], req.fusion)
        labels, thr = preds[0].labels, preds[0].thresholds
        study = {x: {"probability": float(fused[i]), "threshold": float(thr[i]), "positive": bool(fused[i] >= thr[i])}
                 for i, x in enumerate(labels)}
        warnings, codes = [], []  # each view's warnings, said once for the study
        for i, out in enumerate(views):
            tag = f"view {i + 1}" + (f" ({out['view']})" if out["view"] else "")
            for w, c in zip(out["warnings"], out["warning_codes"]):
                text = w if c == "phantom_model_real_image" else f"{tag}: {w}"  # about the model, not the view
                if text not in warnings:
                    warnings.append(text)
                    codes.append(c)
        return {"model": model, "model_name": self.models[model].name, "fusion": req.fusion, "labels": list(labels),
                "study": study, "positive": [x for x, d in study.items() if d["positive"]], "views": views,
                "warnings": warnings, "warning_codes": codes, "seconds": round(time.perf_counter() - t0, 4)}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _validated(model_cls, req, prefix: str = ""):
        if isinstance(req, model_cls):
            return req
        try:
            return model_cls.model_validate(req)
        except ValidationError as exc:
            raise ApiError(400, _validation_message(exc.errors(), prefix)) from None

    def _model(self, name: str | None) -> str:
        model = name or self.default
        if model not in self.models:
            raise ApiError(404, f"Unknown model {str(model)[:100]!r}; available: {', '.join(self.models)}.")
        return model

    def _image_bytes(self, req: _Image, prefix: str = "") -> bytes:
        if req.image is not None and req.cxr_base64 is not None:
            raise ApiError(400, f"Send the image in \"{prefix}image\" or \"{prefix}cxr_base64\", not both.")
        text, field = (req.image, "image") if req.image is not None else (req.cxr_base64, "cxr_base64")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, f"\"{prefix}image\" is required: the PNG, JPEG or DICOM file as a base64 string "
                                f"(seed 003's clients: \"{prefix}cxr_base64\").")
        data = _decode_b64(text, prefix + field)
        if len(data) > self.max_image_bytes:
            raise ApiError(413, f"The image is {len(data):,} bytes, over this service's {self.max_image_bytes:,} byte "
                                "limit (CXR_MAX_UPLOAD_MB); downscale or compress it.")
        if not data:
            raise ApiError(400, f"\"{prefix}{field}\" decodes to 0 bytes.")
        return data

    def _run(self, model: str, data: bytes, name: str | None, mc: int, seed: int, tta: bool):
        from .data.imageio import read_image
        from .explain.ood import check_image

        t = {}
        try:
            loaded = read_image(data, (name or "")[:200] or None)
        except ImageError as exc:
            raise ApiError(400, str(exc)) from None
        t["read"] = time.perf_counter()
        ood = check_image(loaded, raw=data)
        t["ood"] = time.perf_counter()
        with self.locks[model]:
            pred = self.models[model].predict(loaded, heatmaps=True, mc_samples=mc, mc_seed=seed, mc_tta=tta)
        t["pred"] = time.perf_counter()
        return loaded, ood, pred, t

    def _response(self, model: str, pred, loaded, ood, heatmaps: bool, overlays: bool, lateral: bool = False) -> dict:
        labels = pred.labels
        per_label = {}
        for i, x in enumerate(labels):
            d = {"probability": float(pred.probs[i]), "threshold": float(pred.thresholds[i]),
                 "positive": bool(pred.positive[i])}
            if pred.calibrated is not None:
                d["calibrated"] = float(pred.calibrated[i])
            if pred.prob_mean is not None:
                d.update(mean=float(pred.prob_mean[i]), variance=float(pred.prob_var[i]), std=float(pred.prob_std[i]))
            per_label[x] = d
        notes = [n for n in loaded.notes if not n.startswith(_DICOM_NOTE_PREFIXES)]
        # a lateral view is asymmetric by nature: that reason alone does not make it suspect
        reasons = [r for r in ood.reasons if not (lateral and r.startswith(_ASYMMETRY_REASON))]
        text = _ood_text(reasons)
        out = {
            "model": model,
            "model_name": self.models[model].name,
            "labels": list(labels),
            "predictions": per_label,
            "positive": [x for x, d in per_label.items() if d["positive"]],
            "boxes": {x: [b.to_dict() for b in bs] for x, bs in pred.boxes.items() if bs},
            "cam_method": pred.cam_method,
            "image": {"format": loaded.source_format, "shape": list(pred.image_shape), "notes": notes},
            "ood": ood.to_dict(),
            "warning": text or None,  # kept for clients of the first version
            # how (not) to read these outputs: e.g. a phantom-trained model on a real film (explain.trust)
            "warnings": [w.text for w in pred.warnings] + ([text] if text else []),
            "warning_codes": [w.code for w in pred.warnings] + (["not_chest_xray"] if text else []),
            "trained_on": pred.trained_on,
        }
        if pred.mc:
            out["uncertainty"] = {"method": "Monte-Carlo dropout" + (" + test-time augmentation" if pred.mc["tta"] else ""),
                                  **pred.mc}
        if heatmaps:
            out["heatmaps"] = _heatmaps_b64(pred)
        if overlays:
            from .explain.visual import overlay

            out["overlays"] = {x: _png_b64(overlay(loaded.pixels, pred.heatmaps[i], pred.boxes.get(x), x))
                               for i, x in enumerate(labels)}
        return out

    def _seed003(self, model: str, pred, ood, heatmaps: bool, seconds: float) -> dict:
        labels = pred.labels
        text = _ood_text(ood.reasons)
        return {"success": True,
                "prediction_mean": {x: float(v) for x, v in zip(labels, pred.prob_mean)},
                "prediction_variance": {x: float(v) for x, v in zip(labels, pred.prob_var)},
                "heatmap": _heatmaps_b64(pred) if heatmaps else {},
                "inference_duration": round(seconds, 4),
                "model": model, "labels": list(labels),
                "thresholds": {x: float(t) for x, t in zip(labels, pred.thresholds)},
                "mc_samples": int(pred.mc["samples"]), "uncertainty_note": pred.mc["note"],
                "warnings": [w.text for w in pred.warnings] + ([text] if text else []),
                "warning_codes": [w.code for w in pred.warnings] + (["not_chest_xray"] if text else []),
                "ood": ood.to_dict()}


def _timing(t0: float, t_dec: float, t: dict, t_end: float) -> dict:
    """Milliseconds of each step of one image: base64 (and reading), OOD check, prediction, rendering."""
    return {"decode_ms": round(1000 * (t["read"] - t0), 1), "ood_ms": round(1000 * (t["ood"] - t["read"]), 1),
            "predict_ms": round(1000 * (t["pred"] - t["ood"]), 1), "render_ms": round(1000 * (t_end - t["pred"]), 1),
            "total_ms": round(1000 * (t_end - t0), 1), "base64_ms": round(1000 * (t_dec - t0), 1)}


def _heatmaps_b64(pred) -> dict[str, str]:
    return {x: _png_b64(np.rint(np.clip(pred.heatmaps[i], 0, 1) * 255).astype(np.uint8))
            for i, x in enumerate(pred.labels)}


def _ood_text(reasons: list[str]) -> str:
    return ("This image may not be a frontal chest radiograph: " + "; ".join(reasons)
            + ". Predictions on it are unreliable.") if reasons else ""


# =========================================================================== HTTP: the gate and the app
class BodyGate:
    """A pure ASGI middleware in front of the app: refuses a request from its headers alone, before one byte
    of its body is read: 401 without the bearer token (on the endpoints that take a body), 411 for a chunked
    body or a POST without Content-Length, 413 for a Content-Length over the endpoint's limit. A refused
    request's connection is closed (its body is never read). Adds ``Cache-Control: no-store`` to answers."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        limit = self.service.body_limit(scope["path"])
        takes_body = scope["method"] == "POST" and limit is not None
        refusal = None
        if takes_body and not self.service.authorized(headers.get("authorization")):
            refusal = (401, "Missing or wrong bearer token; send 'Authorization: Bearer <token>'.", BEARER_CHALLENGE)
        elif "transfer-encoding" in headers:
            refusal = (411, "Chunked bodies are not accepted; send a Content-Length.", {})
        elif "content-length" in headers:
            try:
                n = int(headers["content-length"])
            except ValueError:
                n = -1
            most = limit if limit is not None else self.service.max_bytes
            if n < 0:
                refusal = (400, "Content-Length must be a non-negative integer.", {})
            elif n > most:
                refusal = (413, f"Body of {n:,} bytes is over the {most:,} byte limit; downscale or compress the "
                                "image" + (", or send fewer items." if most != self.service.max_bytes else "."), {})
        elif takes_body:
            refusal = (411, "Content-Length is required.", {})
        if refusal is not None:
            status, message, extra = refusal
            raw = json.dumps(error_body(status, message)).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                                    (b"cache-control", b"no-store"), (b"connection", b"close")]
                        + [(k.encode(), v.encode()) for k, v in extra.items()]})
            await send({"type": "http.response.body", "body": raw})
            return
        if scope["path"].startswith("/docs/static/"):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"cache-control", b"no-store")]}
            await send(message)

        await self.app(scope, receive, send_no_store)


def _swagger_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-bundle-v2 package (Apache-2.0), served by this service itself:
    /docs works with no network (FastAPI's default loads them from a CDN)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def create_app(service: Service):
    """The FastAPI app serving ``service``: the endpoints, the error shape, self-hosted /docs."""
    app = FastAPI(title="cxr", version="2", docs_url=None, redoc_url=None, strict_content_type=False,
                  description="Chest X-ray classification: per-label probabilities, Grad-CAM heatmaps and boxes, "
                              "Monte-Carlo dropout uncertainty, out-of-distribution and model-domain warnings. "
                              "Seed 003's clients: POST /predict with `cxr_base64`. Errors are "
                              "`{\"error\": ..., \"status\": ...}`.")
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="Required on the POST endpoints when the server has a token "
                                                      "(--token / CXR_API_TOKEN).")

    def authorized(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        # the gate refused a missing or wrong token before the body was read; this declares the scheme in the
        # OpenAPI description (Swagger's Authorize button) and checks again for an app mounted without the gate
        service.check_auth(request.headers.get("authorization"))

    errors = {c: {"model": ErrorResponse} for c in (400, 401, 404, 411, 413, 500)}

    def _call(fn, *args):
        try:
            return fn(*args)
        except ApiError:
            raise
        except Exception:
            log.exception("unexpected error in %s", getattr(fn, "__name__", "endpoint"))
            raise ApiError(500, "Internal server error; the details are in the server log.") from None

    @app.get("/health", response_model=HealthResponse, response_model_exclude_none=True, tags=["service"],
             summary="Liveness; the models, labels and limits when no token is set or it is sent")
    def health(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)):
        return service.health(details=service.authorized(request.headers.get("authorization")))

    @app.post("/predict", response_model=PredictResponse | Seed003Response, response_model_exclude_unset=True,
              responses=errors, dependencies=[Depends(authorized)], tags=["predict"],
              summary="One image: probabilities, heatmaps, boxes, uncertainty (or seed 003's answer)")
    def predict(req: PredictRequest):
        return _call(service.predict, req)

    @app.post("/predict/batch", response_model=BatchResponse, response_model_exclude_unset=True, responses=errors,
              dependencies=[Depends(authorized)], tags=["predict"],
              summary="Several images; each item answered with its result or its own error")
    def predict_batch(req: BatchRequest):
        return _call(service.predict_batch, req)

    @app.post("/predict/study", response_model=StudyResponse, response_model_exclude_unset=True, responses=errors,
              dependencies=[Depends(authorized)], tags=["predict"],
              summary="The views of one study (frontal + lateral): each view's prediction and the fused study's")
    def predict_study(req: StudyRequest):
        return _call(service.predict_study, req)

    generate = app.openapi

    def openapi() -> dict:
        # validation errors are answered 400 in this service's error shape, never FastAPI's 422
        schema = generate()
        for item in schema.get("paths", {}).values():
            for op in item.values():
                op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi

    @app.get("/", include_in_schema=False)
    def index():
        return RedirectResponse("/docs")

    assets = _swagger_assets()
    if assets is not None:
        app.mount("/docs/static", StaticFiles(directory=assets), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs():
        if assets is None:
            raise ApiError(503, "Swagger UI's files are not installed (the swagger-ui-bundle-v2 package); "
                                "the OpenAPI description is at /openapi.json.")
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="cxr REST API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    def json_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message), status_code=status, headers=headers or None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return json_error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return json_error(400, _validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        path = request.url.path[:100]
        if exc.status_code == 404:
            message = f"No such endpoint {path!r}; the endpoints are listed at /docs and /openapi.json."
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{path} accepts {allowed or 'another method'} only."
        else:
            message = str(exc.detail)
        return json_error(exc.status_code, message, exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.error("unexpected error handling %s %s: %s", request.method, request.url.path[:100], type(exc).__name__)
        return json_error(500, "Internal server error; the details are in the server log.")

    return BodyGate(app, service)


# =========================================================================== serving
@dataclass
class ServeConfig:
    """What a worker process needs to build the same Service (travels in ``CXR_API_CONFIG``; the token
    travels in ``CXR_API_TOKEN`` only, never in this)."""

    checkpoints: list[str]
    max_bytes: int | None = None
    max_image_bytes: int | None = None
    device: str = "cpu"
    max_batch: int = MAX_BATCH

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeConfig":
        raw = os.environ.get(ENV_CONFIG)
        if not raw:
            raise ConfigError(f"{ENV_CONFIG} is not set: start workers with `cxr serve`.")
        return cls(**json.loads(raw))

    def service(self) -> Service:
        return Service(self.checkpoints, token=os.environ.get(ENV_TOKEN) or None, max_bytes=self.max_bytes,
                       device=self.device, max_image_bytes=self.max_image_bytes, max_batch=self.max_batch)


def app_from_env():
    """The app factory each uvicorn worker calls (``cxrcore.api:app_from_env``, ``factory=True``)."""
    return create_app(ServeConfig.from_env().service())


LOG_CONFIG = {  # cxr serve's logging, applied in every worker: request lines and errors, never bodies or headers
    "version": 1, "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {"uvicorn": {"level": "INFO"}, "uvicorn.error": {"level": "INFO"}, "uvicorn.access": {"level": "INFO"}},
}


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one); OSError when the address cannot be used."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """uvicorn serving ``create_app(service)`` on a bound socket, driven like the standard library's servers:
    ``server_address``, ``serve_forever()`` (in a thread, say), ``shutdown()`` from another, ``server_close()``."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8000, log_config: dict | None = None):
        import uvicorn

        self.service = service
        self.socket = bind(host, port)
        self.server_address = self.socket.getsockname()[:2]
        config = uvicorn.Config(create_app(service), lifespan="off", log_config=log_config, server_header=False,
                                timeout_graceful_shutdown=10)
        self.uvicorn = uvicorn.Server(config)
        self._running = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        self._running.set()
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self.uvicorn.should_exit = True
        if self._running.is_set():
            self._stopped.wait(60)

    def server_close(self) -> None:
        self.socket.close()


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """A bound server (port 0 picks a free one: ``server.server_address[1]``); call serve_forever()."""
    return Server(service, host, port)


def serve_workers(config: ServeConfig, sock: socket.socket, workers: int) -> None:
    """``workers`` uvicorn processes on ``sock``, each building its own Service from ``config`` (models are
    loaded per worker); uvicorn's supervisor restarts a worker that dies. Returns on Ctrl-C / SIGTERM."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    os.environ[ENV_CONFIG] = config.to_env()
    ucfg = uvicorn.Config("cxrcore.api:app_from_env", factory=True, workers=workers, lifespan="off",
                          log_config=LOG_CONFIG, server_header=False, timeout_graceful_shutdown=10)
    Multiprocess(ucfg, sockets=[sock]).run()
