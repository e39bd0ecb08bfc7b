"""The web console's HTTP server: read-only pages over the repository, rendered on the
server with Jinja2 (autoescaped), each also answering as JSON.

It runs on its own threads (``ThreadingHTTPServer``): a page never waits for the scheduler,
the watcher or the control socket, and they never wait for a page. It has no
authentication of its own: bind it to loopback and put a reverse proxy with authentication
in front of it to reach it from elsewhere.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy.exc import DBAPIError

from batchd.daemon.addresses import HttpService
from batchd.web.pages import DAYS, MAX_DAYS, NotFound, Pages

log = logging.getLogger(__name__)

# Never by colour alone: each status has a symbol, and its word beside it or in its label.
STATUS_SYMBOLS = {
    "COMPLETED": "✓",
    "STARTING": "◌",
    "STARTED": "▶",
    "STOPPING": "□",
    "STOPPED": "■",
    "FAILED": "✗",
    "ABANDONED": "⊘",
    "UNKNOWN": "?",
}
# Seconds between the refreshes the page's small script makes (none without JavaScript).
REFRESH_SECONDS = 5
# Ids the database can hold (BIGINT); a longer string of digits names no execution.
_EXECUTION_PATH = re.compile(r"/executions/([^/]*)")
_MAX_ID = 2**63 - 1

_HEADERS = {
    # Nothing but the package's own files, and no page inside another site's frame.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


class BadRequest(ValueError):
    """The request is malformed (HTTP 400)."""


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The package's static files by name, read once (they are never looked up on disk by
    a name from the request)."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("batchd.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return files


class Renderer:
    """The templates, with the filters they format values with."""

    def __init__(self, timezone: Callable[[], str]) -> None:
        self.timezone = timezone
        self.environment = Environment(
            loader=PackageLoader("batchd.web", "templates"),
            autoescape=True,  # every value is data, never HTML
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.environment.filters["when"] = self.when
        self.environment.filters["compact"] = compact
        self.environment.globals["symbols"] = STATUS_SYMBOLS
        self.environment.globals["refresh_seconds"] = REFRESH_SECONDS

    def when(self, value: str | None) -> str:
        """An ISO UTC time in the daemon's time zone, to the second."""
        if not value:
            return ""
        moment = datetime.fromisoformat(value).astimezone(ZoneInfo(self.timezone()))
        return moment.strftime("%Y-%m-%d %H:%M:%S %Z")

    def render(self, template: str, data: dict[str, Any]) -> str:
        return self.environment.get_template(template).render(data)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False, sort_keys=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    console: WebConsole


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "batchd-web"
    # A client that stalls is dropped; it holds only its own thread meanwhile.
    timeout = 15

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse(self) -> None:
        self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, "the web console is read-only", True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web %s: " + format, self.address_string(), *args)

    def _answer(self, body: bool) -> None:
        self._as_json = False
        try:
            status, content, content_type = self.server.console.respond(self.path, self.headers)
        except BadRequest as error:
            return self._send_error(HTTPStatus.BAD_REQUEST, str(error), body)
        except NotFound as error:
            return self._send_error(HTTPStatus.NOT_FOUND, str(error), body)
        except DBAPIError as error:
            log.warning("web: cannot read the repository: %s", error.orig)
            message = f"cannot read the repository: {str(error.orig).strip()}"
            return self._send_error(HTTPStatus.SERVICE_UNAVAILABLE, message, body)
        except Exception:
            log.exception("web: %s failed", self.path[:200])
            return self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", body)
        self._send(status, content, content_type, body)

    def _send_error(self, status: HTTPStatus, message: str, body: bool) -> None:
        content, content_type = self.server.console.error_page(
            self.path, self.headers, status, message
        )
        self._send(status, content, content_type, body)

    def _send(self, status: int, content: bytes, content_type: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        for name, value in _HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(content)


class WebConsole:
    """The web console as a daemon component: serves ``pages`` on ``listen`` ("host:port";
    port 0 picks a free one, then in ``.port``) from :meth:`start` to :meth:`stop`."""

    name = "web console"

    def __init__(self, pages: Pages, listen: str) -> None:
        self.pages = pages
        self.listen = listen
        self.renderer = Renderer(lambda: pages.settings().timezone)
        self.static = _static_files()
        self._http = HttpService("web console", "batchd-web")

    @property
    def port(self) -> int | None:
        """The port bound to, once started (``listen`` may give port 0)."""
        return self._http.port

    def start(self) -> None:
        """Bind and serve from a thread of its own. OSError if it cannot bind."""

        def make(address: tuple[str, int], family: int) -> _Server:
            server = (_Server6 if family == socket.AF_INET6 else _Server)(address, _Handler)
            server.console = self
            return server

        log.info("web console on %s/", self._http.start(self.listen, make))

    def stop(self) -> None:
        self._http.stop()
        self.pages.store.dispose()

    def threads(self) -> list[threading.Thread]:
        return self._http.threads()

    # ---------------------------------------------------------------- requests

    def respond(self, target: str, headers: Any) -> tuple[int, bytes, str]:
        """(status, body, content type) of a GET of ``target``; BadRequest or NotFound."""
        path, query, as_json = self._parse(target, headers)
        if path.startswith("/static/"):
            found = self.static.get(path.removeprefix("/static/"))
            if found is None:
                raise NotFound("no such file")
            return 200, found[0], found[1]
        data, template = self._page(path, query)
        if as_json:
            return 200, _json(data), "application/json"
        return 200, self.renderer.render(template, data).encode(), "text/html; charset=utf-8"

    def error_page(
        self, target: str, headers: Any, status: HTTPStatus, message: str
    ) -> tuple[bytes, str]:
        try:
            _path, _query, as_json = self._parse(target, headers)
        except BadRequest:
            as_json = "application/json" in (headers.get("Accept") or "")
        data = {
            "page": "error",
            "status": status.value,
            "reason": status.phrase,
            "message": message,
        }
        if as_json:
            return _json({"error": data}), "application/json"
        return self.renderer.render("error.html", data).encode(), "text/html; charset=utf-8"

    @staticmethod
    def _parse(target: str, headers: Any) -> tuple[str, dict[str, str], bool]:
        parts = urlsplit(target)
        try:
            pairs = parse_qs(parts.query, keep_blank_values=True, max_num_fields=20)
        except ValueError as error:
            raise BadRequest(f"bad query string: {error}") from None
        query = {key: values[-1] for key, values in pairs.items()}
        wanted = query.get("format")
        if wanted not in (None, "json", "html"):
            raise BadRequest('format must be "json" or "html"')
        accept = headers.get("Accept") or ""
        as_json = wanted == "json" or (
            wanted is None and "application/json" in accept and "text/html" not in accept
        )
        return parts.path, query, as_json

    def _page(self, path: str, query: dict[str, str]) -> tuple[dict[str, Any], str]:
        if path == "/":
            return self.pages.overview(days=_days(query.get("days"))), "overview.html"
        if path == "/schedules":
            return self.pages.schedules(), "schedules.html"
        if path == "/watches":
            return self.pages.watches(), "watches.html"
        if path == "/nodes":
            return self.pages.nodes(), "nodes.html"
        match = _EXECUTION_PATH.fullmatch(path)
        if match is not None:
            return self.pages.execution(_execution_id(match.group(1))), "execution.html"
        raise NotFound("no such page")


def _execution_id(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"an execution id is a whole number, not {text[:40]!r}")
    value = int(text[:30]) if len(text) <= 30 else _MAX_ID + 1
    if value > _MAX_ID:
        raise NotFound(f"no job execution with id {text[:30]}{'…' if len(text) > 30 else ''}")
    return value


def _days(text: str | None) -> int:
    if text is None:
        return DAYS
    if not text.isascii() or not text.isdigit() or not 1 <= int(text[:4]) <= MAX_DAYS:
        raise BadRequest(f"days must be a whole number from 1 to {MAX_DAYS}")
    return int(text)


def _json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, default=str).encode()


__all__ = ["STATUS_SYMBOLS", "BadRequest", "Renderer", "WebConsole"]
