"""The HTTP side of the REST service: the ASGI gate in front (token, body size, before the body is read) and
the FastAPI app with its endpoints, error shape and self-hosted /docs."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import (BatchRequest, BatchResponse, ErrorResponse, HealthResponse, PredictRequest, PredictResponse,
                      PriorRequest, PriorResponse, Seed003Response, SimilarRequest, SimilarResponse, StudyRequest,
                      StudyResponse)
from .service import BEARER_CHALLENGE, ApiError, Service, _validation_message, error_body

log = logging.getLogger("cxrcore.api")


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

    @app.post("/predict/dicom-sr", responses={**errors, 200: {"content": {"application/dicom": {}},
                                                              "description": "a DICOM Structured Report (Part 10)"}},
              response_class=Response, dependencies=[Depends(authorized)], tags=["predict"],
              summary="One image's findings as a DICOM Structured Report (TID 1500), not for diagnostic use")
    def predict_dicom_sr(req: PredictRequest):
        return Response(_call(service.dicom_sr, req), media_type="application/dicom",
                        headers={"Content-Disposition": 'attachment; filename="findings-sr.dcm"'})

    @app.post("/predict/study", response_model=StudyResponse, response_model_exclude_unset=True, responses=errors,
              dependencies=[Depends(authorized)], tags=["predict"],
              summary="The views of one study (frontal + lateral): each view's prediction and the fused study's")
    def predict_study(req: StudyRequest):
        return _call(service.predict_study, req)

    @app.post("/prior", response_model=PriorResponse, response_model_exclude_none=True, responses=errors,
              dependencies=[Depends(authorized)], tags=["predict"],
              summary="Two films of one patient: per label the change since the prior and its call, registered")
    def prior(req: PriorRequest):
        return _call(service.prior, req)

    @app.post("/similar", response_model=SimilarResponse, responses=errors, dependencies=[Depends(authorized)],
              tags=["predict"], summary="The films of a served index nearest to the image in its model's eyes")
    def similar(req: SimilarRequest):
        return _call(service.similar, req)

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
