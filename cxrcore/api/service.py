"""The models and the request logic of the REST service, independent of HTTP (usable in tests and other
servers): each image runs through :func:`cxrcore.compare.compare` and is answered with
:mod:`cxrcore.results`' serialisation."""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from .. import monitorlog
from ..errors import CXRError, ConfigError, ImageError
from .schemas import (MAX_BATCH, MAX_MC_SAMPLES, MAX_VIEWS, SEED003_MC_SAMPLES, BatchRequest, PredictRequest,
                      PriorRequest, SimilarRequest, StudyRequest, _Image)

log = logging.getLogger("cxrcore.api")

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cxr"'}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = headers or {}


def error_body(status: int, message: str) -> dict:
    return {"error": message, "status": int(status), "success": False}


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
                 device: str = "cpu", max_image_bytes: int | None = None, max_batch: int = MAX_BATCH,
                 indexes: list[str | Path] = ()):
        """``checkpoints``: what ``cxr predict --checkpoint`` takes (a checkpoint or run folder, or a library
        model such as ``xrv:densenet121-res224-all``). ``max_bytes``: the largest /predict body (default: an
        image of ``CXR_MAX_UPLOAD_MB`` in base64 plus JSON; a batch or study may carry that per image);
        ``max_image_bytes``: the largest decoded image (default: ``CXR_MAX_UPLOAD_MB``). ``indexes``: folders of
        ``cxr index`` that POST /similar searches, each built by one of the served models."""
        from .. import hosting
        from ..compare import model_name
        from ..predictor import Predictor

        limits = hosting.settings()
        if not checkpoints:
            raise CXRError("Give at least one --checkpoint to serve.")
        if not 1 <= int(max_batch) <= 256:
            raise ConfigError(f"--max-batch must be from 1 to 256, not {max_batch}.")
        self.device = check_device(device)
        self.models: dict = {}
        # One inference per model at a time, to bound compute and memory (one call already uses every core;
        # each Grad-CAM call holds a backward pass's gradients). Not a correctness guard: a Predictor is
        # safe to share between threads (tests/compare/test_predictor_threads.py).
        self.locks: dict[str, threading.Lock] = {}
        for c in checkpoints:
            p = Predictor(c, device=self.device)
            name = model_name(c, p)
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
        self.indexes = self._load_indexes(indexes)
        # every image answered, kept for drift monitoring without the image (cxrcore.monitorlog; CXR_MONITOR_LOG)
        self.score_log = monitorlog.ScoreLog() if monitorlog.enabled() else None

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
        if path in ("/predict", "/predict/dicom-sr"):
            return self.max_bytes
        if path == "/predict/batch":
            return self.max_bytes * self.max_batch
        if path == "/predict/study":
            return self.max_bytes * MAX_VIEWS
        return None

    # ------------------------------------------------------------------ endpoints
    def health(self, details: bool = True) -> dict:
        from ..checkpoint import infer_trained_on

        if not details:
            return {"status": "ok", "details": "Send 'Authorization: Bearer <token>' for the models and limits."}
        return {"status": "ok", "models": list(self.models), "default_model": self.default,
                "labels": {n: list(p.labels) for n, p in self.models.items()},
                "display_names": {n: p.name for n, p in self.models.items()},
                "sites": {n: sorted(p.card.sites or {}) for n, p in self.models.items()},
                "indexes": {n: m for n, (_, m) in self.indexes.items()},
                "trained_on": {n: (p.card.trained_on or infer_trained_on(p.card)).get("summary", "")
                               for n, p in self.models.items()},
                "device": self.device, "max_bytes": self.max_bytes, "max_image_bytes": self.max_image_bytes,
                "max_mc_samples": MAX_MC_SAMPLES, "max_batch": self.max_batch, "pid": os.getpid()}

    def predict(self, req: PredictRequest | dict) -> dict:
        """One image: this service's answer, or seed 003's (``format`` / ``cxr_base64``)."""
        from ..results import prediction_json, seed003_json

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
        result, t_read = self._run(model, data, req.name, site=req.site, mc_samples=mc, mc_seed=req.mc_seed,
                                   mc_tta=req.tta)
        if seed003:
            return seed003_json(result, model, heatmaps, time.perf_counter() - t0)
        out = prediction_json(result, model, heatmaps="png" if heatmaps else None, overlays=req.overlays)
        out["timing"] = _timing(t0, t_dec, t_read, result, time.perf_counter())
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
        max (:func:`cxrcore.compare.study`, as ``cxr predict A B --fuse``)."""
        from ..compare import study
        from ..results import study_json

        t0 = time.perf_counter()
        req = self._validated(StudyRequest, req)
        model = self._model(req.model)
        results, timings = [], []
        for i, v in enumerate(req.views):
            where = f"view {i + 1}" + (f" ({v.view})" if v.view else "")
            t_view = time.perf_counter()
            try:
                data = self._image_bytes(v, f"views[{i}].")
                t_dec = time.perf_counter()
                result, t_read = self._run(model, data, v.name, mc_samples=req.mc_samples, mc_seed=req.mc_seed)
            except ApiError as exc:
                raise ApiError(exc.status, f"{where}: {exc.message}", exc.headers) from None
            results.append(result)
            timings.append((t_view, t_dec, t_read, result, time.perf_counter()))
        out = study_json(study(results, req.fusion, [v.view for v in req.views]), model,
                         heatmaps="png" if req.heatmaps else None)
        for view, t in zip(out["views"], timings):
            view["timing"] = _timing(*t)
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out

    def dicom_sr(self, req: PredictRequest | dict) -> bytes:
        """One image's findings as a DICOM Structured Report (a Part 10 file; :mod:`cxrcore.pacs.sr`): the image's
        own study and patient when it is a DICOM, a generated study otherwise. Nothing of it is logged."""
        import io

        from ..pacs.sr import ModelIdentity, source_of, structured_report

        req = self._validated(PredictRequest, req)
        model = self._model(req.model)
        data = self._image_bytes(req)
        result, _ = self._run(model, data, req.name, site=req.site)
        pred = result.predictions[model]
        header, in_pacs = source_of(data, req.name or "upload", pred.image_shape)
        report = structured_report(pred, header, ModelIdentity.of(model, self.models[model].at_site(req.site).card),
                                   has_pacs_source=in_pacs)
        buf = io.BytesIO()
        report.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def similar(self, req: SimilarRequest | dict) -> dict:
        """The films of a served index nearest to the image in its model's eyes (:func:`cxrcore.lens.index.similar`),
        without the server's file paths."""
        from ..data.imageio import read_image
        from ..lens.index import similar

        req = self._validated(SimilarRequest, req)
        if not self.indexes:
            raise ApiError(404, "This service serves no index; start it with `cxr serve --index FOLDER` (an index of "
                                "`cxr index`).")
        name = req.index or next(iter(self.indexes))
        if name not in self.indexes:
            raise ApiError(404, f"Unknown index {str(name)[:100]!r}; available: {', '.join(self.indexes)}.")
        index, model = self.indexes[name]
        data = self._image_bytes(req)
        try:
            loaded = read_image(data, (req.name or "")[:200] or None)
        except ImageError as exc:
            raise ApiError(400, str(exc)) from None
        found = similar(index, loaded, k=req.k, predictor=self.models[model])
        for n in found["neighbours"]:
            n.pop("path", None)
        return {**found, "index": name, "model": model}

    def prior(self, req: PriorRequest | dict) -> dict:
        """Two films of one patient: per label both probabilities, the change and its call, and the registration's
        quality (:func:`cxrcore.prior.change.compare_prior`, as ``cxr prior --json``); no pictures."""
        from ..data.imageio import read_image
        from ..prior.change import compare_prior

        req = self._validated(PriorRequest, req)
        model = self._model(req.model)
        try:
            predictor = self.models[model].at_site(req.site)
        except CXRError as exc:
            raise ApiError(404, str(exc)) from None
        films = []
        for which, image in (("prior", req.prior), ("current", req.current)):
            data = self._image_bytes(image, f"{which}.")
            try:
                films.append((read_image(data, (image.name or "")[:200] or None), data))
            except ImageError as exc:
                raise ApiError(400, f"{which}: {exc}") from None
        (a, ra), (b, rb) = films
        result = compare_prior(a, b, predictor, model, prior_raw=ra, current_raw=rb, mc_samples=req.mc_samples,
                               mc_seed=req.mc_seed, heatmaps=False, deformable=req.deformable, locks=self.locks)
        return result.to_dict()

    def _load_indexes(self, folders) -> dict:
        """name -> (the index, the served model that built it); ConfigError for an index no served model built."""
        from ..lens.index import load_index
        from ..runtime import network_digest

        nets = {network_digest(p.card): n for n, p in self.models.items()}
        out = {}
        for folder in folders:
            index = load_index(folder)
            model = nets.get(index.meta.get("network"))
            if model is None:
                raise ConfigError(f"The index {folder} was built by {index.meta.get('model')}, which this service "
                                  "does not serve: add its --checkpoint.")
            name, k = str(index.meta.get("dataset") or Path(folder).name), 2
            base = name
            while name in out:
                name, k = f"{base}-{k}", k + 1
            out[name] = (index, model)
        return out

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

    def _run(self, model: str, data: bytes, name: str | None, site: str | None = None, **options):
        """The image read and run through :func:`cxrcore.compare.compare` with ``model`` alone (its lock held
        around the prediction), as used at ``site`` when given; (the comparison, the time the image was read)."""
        from ..compare import compare
        from ..data.imageio import read_image

        try:
            predictor = self.models[model].at_site(site)
        except CXRError as exc:
            raise ApiError(404, str(exc)) from None
        name = (name or "")[:200] or None
        try:
            loaded = read_image(data, name)
        except ImageError as exc:
            raise ApiError(400, str(exc)) from None
        t_read = time.perf_counter()
        result = compare(loaded, {model: predictor}, name or "upload", raw=data, locks=self.locks, **options)
        monitorlog.record(self.score_log, source="rest", name=model, predictor=predictor, image=loaded,
                          prediction=result.predictions[model], ood=result.ood, ref=monitorlog.ref_of(data))
        return result, t_read


def _timing(t0: float, t_dec: float, t_read: float, result, t_end: float) -> dict:
    """Milliseconds of each step of one image: base64 (and reading), OOD check, prediction, rendering."""
    ood, predict = result.seconds["ood"], result.seconds["predict"]
    render = t_end - t_read - ood - predict
    return {"decode_ms": round(1000 * (t_read - t0), 1), "ood_ms": round(1000 * ood, 1),
            "predict_ms": round(1000 * predict, 1), "render_ms": round(1000 * render, 1),
            "total_ms": round(1000 * (t_end - t0), 1), "base64_ms": round(1000 * (t_dec - t0), 1)}
