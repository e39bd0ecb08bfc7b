"""The control socket: JSON lines over a Unix stream socket (DESIGN §4).

One thread accepts connections; each connection gets its own thread, so a client that is
slow, silent or stuck holds up nobody but itself. A connection may send several requests,
one per line, and gets one response line for each, in order. The first request must arrive
whole within ``read_timeout`` seconds of the connection, and every later one within
``read_timeout`` of its first byte: a client that sends nothing, or half a line, is dropped
after that. Between requests a client may stay silent for ``idle_timeout`` seconds.

Peers are checked with ``SO_PEERCRED`` before anything is read: root, the daemon's own
user, users named in ``control.allowed_users`` and members of ``control.allowed_groups``
(primary or supplementary group) may talk to the daemon; others get one
``PermissionDenied`` response and are disconnected.

What each operation takes is in :mod:`batchd.daemon.protocol`, what it does and answers in
:mod:`batchd.daemon.handlers`; the server reaches the daemon only through
:class:`~batchd.daemon.api.DaemonControl`.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchd.daemon.api import DaemonControl
from batchd.daemon.handlers import Handlers
from batchd.daemon.peers import peer_allowed, peer_credentials
from batchd.daemon.protocol import (
    BUSY,
    DENIED_OP,
    INTERNAL_ERROR,
    INVALID_OP,
    MAX_REQUEST_BYTES,
    OPERATIONS,
    PERMISSION_DENIED,
    REQUEST_TOO_LARGE,
    ProtocolError,
    encode,
    error,
    ok,
    parse_request,
)
from batchd.engine.listeners import notify
from batchd.errors import BatchError

if TYPE_CHECKING:
    from batchd.daemon.settings import ControlSettings

log = logging.getLogger(__name__)

_MAX_SUN_PATH = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL


class ControlServer:
    """Serves the control socket of a running daemon.

    ``control`` is the ``[control]`` section: the socket's path and mode, and the users and
    groups allowed to use it. :meth:`bind` takes the socket; :meth:`serve` answers for the
    daemon (a :class:`~batchd.daemon.api.DaemonControl`) from then on. ``listener``, if it
    has ``on_control_request(op, outcome)``, hears every request (``outcome`` ``"ok"`` or
    ``"error"``; ``op`` is ``"invalid"`` for a request that names no known operation or
    cannot be read, ``"denied"`` for a refused peer).
    """

    def __init__(
        self,
        control: ControlSettings,
        listener: object | None = None,
        *,
        read_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        max_connections: int = 64,
    ) -> None:
        self.handlers: Handlers | None = None  # from serve() on
        self.started_at = time.monotonic()  # the daemon's uptime counts from here
        self.listener = listener
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.path = Path(control.socket)
        self.mode = int(control.mode, 8)
        self.allowed_users = list(control.allowed_users)
        self.allowed_groups = list(control.allowed_groups)
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ socket

    def start(self, daemon: DaemonControl) -> None:
        """Create the socket (mode ``control.mode``) and serve ``daemon`` on it from a
        background thread. OSError if it cannot be created or another process already
        listens on it."""
        self.bind()
        self.serve(daemon)

    def bind(self) -> None:
        """Create the socket (OSError as for :meth:`start`); clients that connect wait in
        its backlog until :meth:`serve`. A daemon binds first, so that a second one on the
        same socket is refused before it has started anything."""
        if self._sock is None:
            self._sock = self._listen()

    def serve(self, daemon: DaemonControl) -> None:
        """Answer for ``daemon`` on the bound socket from a background thread (binding it
        if need be)."""
        self.handlers = Handlers(daemon, started_at=self.started_at)
        self.bind()
        self._thread = threading.Thread(
            target=self._accept_loop, name="batchd-control", daemon=True
        )
        self._thread.start()
        log.info("control socket %s (mode %04o)", self.path, self.mode)

    def threads(self) -> list[threading.Thread]:
        """The accept thread, while started (each connection's own thread may end)."""
        return [self._thread] if self._thread is not None else []

    def _listen(self) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > _MAX_SUN_PATH:
            raise OSError(f"control socket path {path} is longer than {_MAX_SUN_PATH} bytes")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a temporary name, set the mode, then rename: the socket never
        # exists under its real name with a mode looser than the configured one.
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        if len(os.fsencode(temporary)) > _MAX_SUN_PATH:
            temporary = path
        try:
            if temporary != path:
                temporary.unlink(missing_ok=True)
            sock.bind(os.fspath(temporary))
            os.chmod(temporary, self.mode)
            if temporary != path:
                os.rename(temporary, path)
            info = os.stat(path)
            self._inode = (info.st_dev, info.st_ino)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            if temporary != path:
                temporary.unlink(missing_ok=True)
            raise
        return sock

    @staticmethod
    def _remove_stale_socket(path: Path) -> None:
        """Remove a socket file nobody listens on (left by a daemon that was killed)."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise OSError(f"{path} exists and is not a socket: not removing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            log.info("removed the stale control socket %s", path)
            return
        finally:
            probe.close()
        raise OSError(f"another process already listens on the control socket {path}")

    def close(self) -> None:
        """Stop accepting, disconnect every client and remove the socket file."""
        if self._closing.is_set():
            return
        self._closing.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._remove_own_socket_file()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the connection's thread
            except OSError:
                pass
        self._wake_r.close()
        self._wake_w.close()
        if self._sock is not None:
            log.info("control socket %s closed", self.path)

    def _remove_own_socket_file(self) -> None:
        # Only if it is still ours: a newer daemon may have taken the path over.
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._inode:
            self.path.unlink(missing_ok=True)

    # -------------------------------------------------------------- connections

    def _accept_loop(self) -> None:
        assert self._sock is not None
        selector = selectors.DefaultSelector()
        selector.register(self._sock, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closing.is_set():
                try:
                    ready = selector.select()
                    if any(key.fileobj is self._wake_r for key, _ in ready):
                        return
                    self._accept()
                except Exception:
                    # Out of file descriptors, say: log, breathe, and keep serving.
                    log.exception("control socket: accepting a connection failed")
                    time.sleep(0.1)
        finally:
            selector.close()

    def _accept(self) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(True)
        with self._lock:
            busy = len(self._connections) >= self.max_connections
            if not busy:
                self._connections.add(conn)
        if busy:
            log.warning(
                "control socket: %d connections already; refusing one", len(self._connections)
            )
            self._count(INVALID_OP, "error")
            self._send_and_close(conn, error(BUSY, "too many control connections; try again"))
            return
        threading.Thread(
            target=self._serve_connection, args=(conn,), name="batchd-control-client", daemon=True
        ).start()

    @staticmethod
    def _send_and_close(conn: socket.socket, response: dict[str, Any]) -> None:
        try:
            conn.settimeout(1.0)
            conn.sendall(encode(response))
        except OSError:
            pass
        finally:
            conn.close()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            self._converse(conn)
        except OSError as problem:  # the client went away, or stopped reading
            log.debug("control client dropped: %s", problem)
        except Exception:
            log.exception("control socket: a connection failed")
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _converse(self, conn: socket.socket) -> None:
        pid, uid, gid = peer_credentials(conn)
        if not peer_allowed(
            uid, gid, allowed_users=self.allowed_users, allowed_groups=self.allowed_groups
        ):
            log.warning("control socket: refused pid %d uid %d gid %d", pid, uid, gid)
            self._count(DENIED_OP, "error")
            message = (
                f"uid {uid} may not use the batchd control socket (allow the user in "
                "control.allowed_users or a group in control.allowed_groups)"
            )
            self._last_word(conn, error(PERMISSION_DENIED, message))
            return
        peer = f"pid {pid} uid {uid}"
        for line in self._lines(conn, peer):
            response = self.handle(line, peer=peer)
            try:
                data = encode(response)
            except (TypeError, ValueError) as problem:  # a result JSON cannot hold
                log.exception("control: cannot encode a response")
                data = encode(error(INTERNAL_ERROR, f"cannot encode the response: {problem}"))
            conn.settimeout(self.read_timeout)
            conn.sendall(data)

    def _lines(self, conn: socket.socket, peer: str) -> Iterator[bytes]:
        """Request lines as they arrive, until EOF, a timeout or an oversized request
        (which is answered here). The first request, and every request once its first
        byte has arrived, must be complete within ``read_timeout``; between requests a
        client may stay silent for ``idle_timeout``."""
        buffer = bytearray()
        served = 0
        deadline = time.monotonic() + self.read_timeout
        while not self._closing.is_set():
            newline = buffer.find(b"\n")
            if newline >= 0:
                line = bytes(buffer[:newline])
                del buffer[: newline + 1]
                line = line[:-1] if line.endswith(b"\r") else line
                if len(line) > MAX_REQUEST_BYTES:
                    self._too_large(conn)
                    return
                yield line
                served += 1
                wait = self.read_timeout if buffer else self.idle_timeout
                deadline = time.monotonic() + wait
                continue
            if len(buffer) > MAX_REQUEST_BYTES + 1:  # +1: a trailing \r is allowed
                self._too_large(conn)
                return
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                conn.settimeout(remaining)
                chunk = conn.recv(MAX_REQUEST_BYTES)
            except TimeoutError:
                if buffer:
                    self._dropped(peer, buffer, "sent half a request and then nothing")
                elif not served:
                    self._dropped(peer, buffer, "connected and sent nothing")
                else:
                    log.debug("control client %s idle for %gs: closed", peer, self.idle_timeout)
                return
            if not chunk:
                if buffer:
                    self._dropped(peer, buffer, "disconnected in the middle of a request")
                return
            if not buffer:  # a request begins: it must be complete within read_timeout
                deadline = time.monotonic() + self.read_timeout
            buffer += chunk

    def _too_large(self, conn: socket.socket) -> None:
        """Answer an oversized request and give up the connection: what follows it cannot
        be trusted to start a new request."""
        self._count(INVALID_OP, "error")
        message = f"request line longer than {MAX_REQUEST_BYTES} bytes; closing the connection"
        self._last_word(conn, error(REQUEST_TOO_LARGE, message))

    @staticmethod
    def _last_word(conn: socket.socket, response: dict[str, Any]) -> None:
        """Send a final response, then read (and drop) what the client is still sending
        for a moment before the connection closes: a client that is still writing its
        request then gets to read the answer instead of a broken pipe."""
        conn.settimeout(1.0)
        conn.sendall(encode(response))
        conn.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 0.5
        drained = 0
        while drained < 4 * MAX_REQUEST_BYTES and time.monotonic() < deadline:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = conn.recv(MAX_REQUEST_BYTES)
            except (TimeoutError, OSError):
                return
            if not chunk:
                return
            drained += len(chunk)

    def _dropped(self, peer: str, buffer: bytearray, why: str) -> None:
        log.info("control client %s %s (%d bytes pending): dropped", peer, why, len(buffer))
        self._count(INVALID_OP, "error")

    # ---------------------------------------------------------------- requests

    def handle(self, line: bytes, *, peer: str = "?") -> dict[str, Any]:
        """The response to one request line. Never raises."""
        op = INVALID_OP
        try:
            request = parse_request(line)
            op = request.op
            if not OPERATIONS[op].read_only:
                log.info("control: %s from %s %s", op, peer, _summary(request.args))
            assert self.handlers is not None  # requests are read from serve() on
            response = ok(getattr(self.handlers, op)(**request.args))
        except ProtocolError as problem:
            op = problem.op or op
            response = error(problem.type, problem.message)
        except BatchError as problem:
            response = error(type(problem).__name__, str(problem))
        except Exception as problem:
            log.exception("control: %s failed", op)
            response = error(INTERNAL_ERROR, f"{type(problem).__name__}: {problem}")
        self._count(op, "ok" if response["ok"] else "error")
        return response

    def _count(self, op: str, outcome: str) -> None:
        notify(self.listener, "on_control_request", op, outcome)


def _summary(args: dict[str, Any]) -> str:
    shown = {key: value for key, value in args.items() if value is not None}
    return " ".join(f"{key}={value}" for key, value in shown.items())


__all__ = ["ControlServer", "peer_allowed", "peer_credentials"]
