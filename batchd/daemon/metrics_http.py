"""The metrics listener: ``/metrics`` of a Prometheus registry over HTTP, on its own thread."""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from batchd.daemon.addresses import HttpService, parse_listen

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
        self._http = HttpService("metrics listener", "batchd-metrics")

    @property
    def port(self) -> int | None:
        """The port bound to, once started (``listen`` may give port 0)."""
        return self._http.port

    def start(self, listen: str) -> None:
        """Serve ``/metrics`` on ``listen`` ("host:port", "[::1]:9464"; port 0 picks a free
        port, then in ``.port``) from a daemon thread. OSError if it cannot bind."""
        app = make_wsgi_app(self.registry)

        def make(address: tuple[str, int], family: int) -> WSGIServer:
            server_class = _Server6 if family == socket.AF_INET6 else _Server
            return make_server(*address, app, server_class, _QuietHandler)

        log.info("metrics on %s/metrics", self._http.start(listen, make))

    def stop(self) -> None:
        """Stop serving (the registry keeps its values)."""
        self._http.stop()

    def threads(self) -> list[threading.Thread]:
        """The serving thread, while started."""
        return self._http.threads()


__all__ = ["MetricsListener", "parse_listen"]
