"""Serving the REST service (``cxr serve``): uvicorn on a bound socket, in this process or as worker
processes that each build their own :class:`~cxrcore.api.service.Service` from a :class:`ServeConfig`."""
from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError
from .app import create_app
from .schemas import MAX_BATCH
from .service import Service

ENV_CONFIG = "CXR_API_CONFIG"  # how `cxr serve --workers N` hands its settings to each worker process
ENV_TOKEN = "CXR_API_TOKEN"


@dataclass
class ServeConfig:
    """What a worker process needs to build the same Service (travels in ``CXR_API_CONFIG``; the token
    travels in ``CXR_API_TOKEN`` only, never in this)."""

    checkpoints: list[str]
    max_bytes: int | None = None
    max_image_bytes: int | None = None
    device: str = "cpu"
    max_batch: int = MAX_BATCH
    indexes: list[str] = field(default_factory=list)

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
                       device=self.device, max_image_bytes=self.max_image_bytes, max_batch=self.max_batch,
                       indexes=self.indexes)


def app_from_env():
    """The app factory each uvicorn worker calls (``cxrcore.api.server:app_from_env``, ``factory=True``)."""
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
    ucfg = uvicorn.Config("cxrcore.api.server:app_from_env", factory=True, workers=workers, lifespan="off",
                          log_config=LOG_CONFIG, server_header=False, timeout_graceful_shutdown=10)
    Multiprocess(ucfg, sockets=[sock]).run()
