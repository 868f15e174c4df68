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

from .app import BodyGate, create_app
from .schemas import MAX_BATCH, MAX_MC_SAMPLES, MAX_VIEWS, SEED003_MC_SAMPLES
from .server import ENV_CONFIG, ENV_TOKEN, LOG_CONFIG, Server, ServeConfig, app_from_env, bind, make_server, serve_workers
from .service import ApiError, Service, check_device, error_body

__all__ = ["ApiError", "BodyGate", "ENV_CONFIG", "ENV_TOKEN", "LOG_CONFIG", "MAX_BATCH", "MAX_MC_SAMPLES", "MAX_VIEWS",
           "SEED003_MC_SAMPLES", "ServeConfig", "Server", "Service", "app_from_env", "bind", "check_device",
           "create_app", "error_body", "make_server", "serve_workers"]
