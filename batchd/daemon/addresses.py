"""Addresses to listen on as the config writes them: ``"host:port"``, IPv6 in brackets
(``"[::1]:9464"``). One parser, used by the config's check and by the listener that binds
them, so that what ``batchd check-config`` accepts is what ``batchd run`` listens on; and
one way to serve HTTP on such an address (the metrics listener, the web console)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``"[::1]:9464"``) -> (host, port). ValueError if malformed."""
    host, sep, port = listen.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs brackets, else the port is ambiguous
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f'not "host:port" (e.g. "127.0.0.1:9464", "[::1]:9464"): {listen!r}')
    return host, int(port)


class HttpService:
    """A server bound to a ``listen`` address and served from a daemon thread of its own
    (named ``thread_name``) between :meth:`start` and :meth:`stop`; ``what`` names it in
    errors."""

    def __init__(self, what: str, thread_name: str) -> None:
        self.what = what
        self.thread_name = thread_name
        self.port: int | None = None  # bound to, while started
        self._server: socketserver.TCPServer | None = None
        self._thread: threading.Thread | None = None

    def start(
        self, listen: str, make_server: Callable[[tuple[str, int], int], socketserver.TCPServer]
    ) -> str:
        """Bind ``listen`` (port 0 picks a free port, then in :attr:`port`) with
        ``make_server((host, port), address_family)`` and serve it; the URL it answers on.
        OSError if it cannot bind."""
        if self._server is not None:
            raise RuntimeError(f"the {self.what} is already started")
        host, port = parse_listen(listen)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server = make_server((host, port), family)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=self.thread_name
        )
        thread.daemon = True
        thread.start()
        self._server, self._thread = server, thread
        self.port = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the socket (a no-op when not started)."""
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


__all__ = ["HttpService", "parse_listen"]
