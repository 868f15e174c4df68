"""A small JSON REST service for predictions, on the standard library's ThreadingHTTPServer.

Endpoints::

    GET  /health   -> {"status": "ok", "models": [...], "labels": {model: [...]}}
    POST /predict  <- {"image": "<base64 PNG/JPEG/DICOM>", "name": "x.png", "model": "baseline",
                       "heatmaps": false, "overlays": false, "mc_samples": 0, "mc_seed": 0, "tta": false}
                   -> per-label probability, threshold, decision (and MC-dropout mean / variance / std),
                      boxes, heatmaps as base64 PNG, an out-of-distribution warning, timing

Errors are JSON ``{"error": message, "status": code}``: 400 malformed JSON, base64 or image (the
reader's message), 401 missing or wrong bearer token (when a token is set; /health stays open),
404 unknown path or model, 405 wrong method, 411 no Content-Length, 413 body over the limit
(checked from Content-Length before anything is read) or an image over the operator's upload limit
(``CXR_MAX_UPLOAD_MB``, the app's limit too; the default body limit is that image base64-encoded plus
64 KiB of JSON, see :func:`cxrcore.hosting.api_max_body_bytes`), 500 unexpected (logged server-side with
the traceback but never the image; the client gets no traceback). Nothing is written to disk, and
no DICOM metadata appears in responses.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from .errors import CXRError, ImageError

log = logging.getLogger("cxrcore.api")

MAX_BYTES = 20_000_000  # the former fixed default; the default now follows CXR_MAX_UPLOAD_MB (cxrcore.hosting)
MAX_MC_SAMPLES = 50
_DICOM_NOTE_PREFIXES = ("DICOM transfer syntax", "modality ", "photometric interpretation")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = headers or {}


def _png_b64(arr: np.ndarray) -> str:
    from .explain.visual import png_bytes

    return base64.b64encode(png_bytes(arr)).decode("ascii")


def _decode_b64(text: str) -> bytes:
    if text.startswith("data:") and "," in text[:200]:  # data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "\"image\" is not valid base64; send the file's bytes base64-encoded.") from None


class Service:
    """The models and the request logic, independent of HTTP (usable in tests and other servers)."""

    def __init__(self, checkpoints: list[str | Path], token: str | None = None, max_bytes: int | None = None,
                 device: str = "cpu", max_image_bytes: int | None = None):
        """``max_bytes``: the largest request body (default: an image of ``CXR_MAX_UPLOAD_MB`` in base64 plus
        JSON); ``max_image_bytes``: the largest decoded image (default: ``CXR_MAX_UPLOAD_MB``)."""
        from . import hosting
        from .predictor import Predictor

        limits = hosting.settings()

        if not checkpoints:
            raise CXRError("Give at least one --checkpoint to serve.")
        self.models: dict = {}
        self.locks: dict[str, threading.Lock] = {}
        for c in checkpoints:
            p = Predictor(c, device=device)
            name = Path(c).resolve().name or p.name
            base, k = name, 2
            while name in self.models:
                name, k = f"{base}-{k}", k + 1
            self.models[name] = p
            self.locks[name] = threading.Lock()
        self.default = next(iter(self.models))
        self.token = token or None
        self.max_bytes = int(max_bytes) if max_bytes is not None else hosting.api_max_body_bytes(limits)
        self.max_image_bytes = int(max_image_bytes) if max_image_bytes is not None else limits.max_upload_bytes

    # ------------------------------------------------------------------ endpoints
    def health(self) -> dict:
        return {"status": "ok", "models": list(self.models), "default_model": self.default,
                "labels": {n: list(p.labels) for n, p in self.models.items()},
                "display_names": {n: p.name for n, p in self.models.items()},
                "max_bytes": self.max_bytes, "max_image_bytes": self.max_image_bytes, "max_mc_samples": MAX_MC_SAMPLES}

    def check_auth(self, header: str | None) -> None:
        if not self.token:
            return
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise ApiError(401, "Missing or wrong bearer token; send 'Authorization: Bearer <token>'.",
                           {"WWW-Authenticate": 'Bearer realm="cxr"'})

    def predict(self, req: dict) -> dict:
        from .data.imageio import read_image
        from .explain.ood import check_image

        t0 = time.perf_counter()
        if not isinstance(req, dict):
            raise ApiError(400, "The body must be a JSON object with an \"image\" field.")
        image = req.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ApiError(400, "\"image\" is required: the PNG, JPEG or DICOM file as a base64 string.")
        name = req.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "\"name\" must be a string.")
        name = (name or "")[:200] or None
        model = req.get("model") or self.default
        if not isinstance(model, str) or model not in self.models:
            raise ApiError(404, f"Unknown model {str(model)[:100]!r}; available: {', '.join(self.models)}.")
        flags = {}
        for key in ("heatmaps", "overlays", "tta"):
            v = req.get(key, False)
            if not isinstance(v, bool):
                raise ApiError(400, f"\"{key}\" must be true or false.")
            flags[key] = v
        mc = req.get("mc_samples", 0)
        if isinstance(mc, bool) or not isinstance(mc, int) or not 0 <= mc <= MAX_MC_SAMPLES:
            raise ApiError(400, f"\"mc_samples\" must be an integer from 0 to {MAX_MC_SAMPLES}.")
        seed = req.get("mc_seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ApiError(400, "\"mc_seed\" must be an integer.")
        data = _decode_b64(image)
        if len(data) > self.max_image_bytes:
            raise ApiError(413, f"The image is {len(data):,} bytes, over this service's {self.max_image_bytes:,} byte "
                                "limit (CXR_MAX_UPLOAD_MB); downscale or compress it.")
        if not data:
            raise ApiError(400, "\"image\" decodes to 0 bytes.")
        t_dec = time.perf_counter()
        try:
            loaded = read_image(data, name)
        except ImageError as exc:
            raise ApiError(400, str(exc)) from None
        t_read = time.perf_counter()
        ood = check_image(loaded, raw=data)
        t_ood = time.perf_counter()
        pred_model = self.models[model]
        with self.locks[model]:
            pred = pred_model.predict(loaded, heatmaps=True, mc_samples=mc, mc_seed=seed, mc_tta=flags["tta"])
        t_pred = time.perf_counter()
        out = self._response(model, pred, loaded, ood, flags)
        t_end = time.perf_counter()
        out["timing"] = {"decode_ms": round(1000 * (t_read - t0), 1), "ood_ms": round(1000 * (t_ood - t_read), 1),
                         "predict_ms": round(1000 * (t_pred - t_ood), 1),
                         "render_ms": round(1000 * (t_end - t_pred), 1),
                         "total_ms": round(1000 * (t_end - t0), 1), "base64_ms": round(1000 * (t_dec - t0), 1)}
        return out

    def _response(self, model: str, pred, loaded, ood, flags: dict) -> dict:
        labels = pred.labels
        per_label = {}
        for i, x in enumerate(labels):
            d = {"probability": float(pred.probs[i]), "threshold": float(pred.thresholds[i]),
                 "positive": bool(pred.positive[i])}
            if pred.prob_mean is not None:
                d.update(mean=float(pred.prob_mean[i]), variance=float(pred.prob_var[i]), std=float(pred.prob_std[i]))
            per_label[x] = d
        notes = [n for n in loaded.notes if not n.startswith(_DICOM_NOTE_PREFIXES)]
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
            "warning": _ood_text(ood) or None,  # kept for clients of the first version
            # how (not) to read these outputs: e.g. a phantom-trained model on a real film (explain.trust)
            "warnings": [w.text for w in pred.warnings] + ([_ood_text(ood)] if ood.is_suspect else []),
            "warning_codes": [w.code for w in pred.warnings] + (["not_chest_xray"] if ood.is_suspect else []),
            "trained_on": pred.trained_on,
        }
        if pred.mc:
            out["uncertainty"] = {"method": "Monte-Carlo dropout" + (" + test-time augmentation" if pred.mc["tta"] else ""),
                                  **pred.mc}
        if flags["heatmaps"]:
            out["heatmaps"] = {x: _png_b64(np.rint(np.clip(pred.heatmaps[i], 0, 1) * 255).astype(np.uint8))
                               for i, x in enumerate(labels)}
        if flags["overlays"]:
            from .explain.visual import overlay

            out["overlays"] = {x: _png_b64(overlay(loaded.pixels, pred.heatmaps[i], pred.boxes.get(x), x))
                               for i, x in enumerate(labels)}
        return out


def _ood_text(ood) -> str:
    return ("This image may not be a frontal chest radiograph: " + "; ".join(ood.reasons)
            + ". Predictions on it are unreliable.") if ood.is_suspect else ""


ROUTES = {"/health": "GET", "/predict": "POST"}


class Handler(BaseHTTPRequestHandler):
    server_version = "cxr-api/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    @property
    def service(self) -> Service:
        return self.server.service  # type: ignore[attr-defined]

    def log_message(self, fmt: str, *args) -> None:  # request lines only: never bodies or headers
        log.info("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._send(status, {"error": message, "status": status}, headers)

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            want = ROUTES.get(path)
            if want is None:
                self.close_connection = self.command not in ("GET", "HEAD")  # body (if any) unread
                raise ApiError(404, f"No such endpoint {path[:100]!r}; use GET /health or POST /predict.")
            if self.command != want:
                self.close_connection = self.command not in ("GET", "HEAD")
                raise ApiError(405, f"{path} accepts {want} only.", {"Allow": want})
            if path == "/health":
                self._send(200, self.service.health())
                return
            self._post_predict()
        except ApiError as exc:
            self._error(exc.status, exc.message, exc.headers)
        except Exception:
            log.exception("unexpected error handling %s %s", self.command, path[:100])
            self.close_connection = True
            self._error(500, "Internal server error; the details are in the server log.")

    def _post_predict(self) -> None:
        svc = self.service
        try:
            svc.check_auth(self.headers.get("Authorization"))
        except ApiError:
            self.close_connection = True  # the body is not read
            raise
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "Chunked bodies are not accepted; send a Content-Length.")
        length = self.headers.get("Content-Length")
        try:
            n = int(length)
        except (TypeError, ValueError):
            self.close_connection = True
            raise ApiError(411, "Content-Length is required.") from None
        if n < 0:
            self.close_connection = True
            raise ApiError(400, "Negative Content-Length.")
        if n > svc.max_bytes:
            self.close_connection = True
            raise ApiError(413, f"Body of {n:,} bytes is over the {svc.max_bytes:,} byte limit; "
                                f"downscale or compress the image.")
        body = self.rfile.read(n)
        if len(body) < n:
            self.close_connection = True
            raise ApiError(400, "The body ended before Content-Length bytes arrived.")
        try:
            req = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "The body is not valid JSON.") from None
        del body
        self._send(200, svc.predict(req))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._dispatch()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: Service):
        self.service = service
        super().__init__(address, Handler)


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """A bound server (port 0 picks a free one: ``server.server_address[1]``); call serve_forever()."""
    return Server((host, port), service)
