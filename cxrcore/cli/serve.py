"""``cxr serve``: the JSON REST API."""
from __future__ import annotations

import sys

from ..errors import CXRError
from .common import LIBRARY_HINT, Command


def cmd_serve(a) -> int:
    import logging.config
    import os

    from ..api import ENV_TOKEN, LOG_CONFIG, MAX_BATCH, Server, ServeConfig, bind, check_device, serve_workers

    token = a.token or os.environ.get(ENV_TOKEN) or None
    if a.max_bytes is not None and a.max_bytes < 1:
        raise CXRError("--max-bytes must be positive.")
    if a.workers < 1:
        raise CXRError("--workers must be at least 1.")
    loopback = a.host in ("127.0.0.1", "localhost", "::1")
    if not token and not loopback and not a.insecure_no_token:
        raise CXRError(f"Refusing to serve on {a.host} without a bearer token: anyone who reaches the port could use "
                       "the models. Set --token or CXR_API_TOKEN (or pass --insecure-no-token on a network you "
                       "trust completely).")
    check_device(a.device)
    config = ServeConfig(list(a.checkpoint), max_bytes=a.max_bytes, device=a.device,
                         max_batch=a.max_batch if a.max_batch is not None else MAX_BATCH, indexes=list(a.index or []))
    # every model is loaded here first, so a bad --checkpoint is one clear error before any port is bound
    # (with --workers N each worker then loads its own copy)
    if token:
        os.environ[ENV_TOKEN] = token  # the workers' only way to the token; never written to CXR_API_CONFIG
    service = config.service()
    models = list(service.models)
    try:
        if a.workers == 1:
            server = Server(service, a.host, a.port, log_config=LOG_CONFIG)
            sock = server.socket
        else:
            del service
            sock = bind(a.host, a.port)
    except OSError as exc:
        raise CXRError(f"Cannot listen on {a.host}:{a.port}: {exc.strerror or exc}. Choose another --port.") from None
    host, port = sock.getsockname()[:2]
    logging.config.dictConfig(LOG_CONFIG)  # request lines and errors on stderr, never bodies or headers
    print(f"serving {', '.join(models)} on http://{host}:{port} (POST /predict, /predict/batch, /predict/study, /similar; "
          f"GET /health; docs at /docs) on {a.device}, {a.workers} worker(s); bearer token "
          f"{'required' if token else 'not set'}; Ctrl-C stops", flush=True)
    if not token and not loopback:
        print("warning: listening beyond this machine without a token (--insecure-no-token)", file=sys.stderr)
    try:
        if a.workers == 1:
            server.serve_forever()
        else:
            serve_workers(config, sock, a.workers)
    finally:
        sock.close()
    return 0


def _serve_flags(s) -> None:
    s.add_argument("--checkpoint", required=True, action="append", help="a checkpoint (or " + LIBRARY_HINT + ") to serve; repeat for more")
    s.add_argument("--index", action="append", help="an index folder of `cxr index` (built by a served model) that "
                                                    "POST /similar searches; repeat for more")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /predict (default: env CXR_API_TOKEN)")
    s.add_argument("--max-bytes", type=int, default=None,
                   help="largest request body accepted (default: an image of CXR_MAX_UPLOAD_MB, default 32 MB, "
                        "base64-encoded, plus 64 KiB)")
    s.add_argument("--insecure-no-token", action="store_true",
                   help="allow --host beyond 127.0.0.1 without a token (refused otherwise)")
    s.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes, each with its own copy of the models (default 1)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N); cuda is refused when no GPU is visible")
    s.add_argument("--max-batch", type=int, default=None,
                   help="most images in one /predict/batch request (default 8, cxrcore.api.MAX_BATCH; the batch's "
                        "body may be that many times --max-bytes)")
    s.set_defaults(func=cmd_serve)


SERVE = Command("serve", "JSON REST API on FastAPI/uvicorn: POST /predict (also seed 003's cxr_base64), "
                         "/predict/batch, /predict/study; GET /health; OpenAPI at /docs", _serve_flags)
