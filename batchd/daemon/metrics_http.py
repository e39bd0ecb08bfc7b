"""The metrics listener: ``/metrics`` of a Prometheus registry over HTTP, on its own thread."""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from batchd.daemon.addresses import parse_listen

log = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s is no news


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsListener:
    """Serves ``registry`` from :meth:`start` to :meth:`stop`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.port: int | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, listen: str) -> None:
        """Serve ``/metrics`` on ``listen`` ("host:port", "[::1]:9464"; port 0 picks a free
        port, then in ``.port``) from a daemon thread. OSError if it cannot bind."""
        if self._server is not None:
            raise RuntimeError("the metrics listener is already started")
        host, port = parse_listen(listen)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        server = make_server(host, port, make_wsgi_app(self.registry), server_class, _QuietHandler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="batchd-metrics"
        )
        thread.daemon = True
        thread.start()
        self._server, self._thread = server, thread
        self.port = server.server_port
        log.info("metrics on http://%s/metrics", _url_host(host, self.port))

    def stop(self) -> None:
        """Stop serving (the registry keeps its values)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)

    def threads(self) -> list[threading.Thread]:
        """The serving thread, while started."""
        return [self._thread] if self._thread is not None else []


def _url_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["MetricsListener", "parse_listen"]
