"""Making the web console from the daemon's config: inside ``batchd run`` (a component of
the daemon) or on its own, ``batchd web --config FILE``, against the same repository."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from batchd.daemon.settings import Settings
from batchd.repository.tables import job_execution
from batchd.web.pages import NextFires, Pages
from batchd.web.server import WebConsole
from batchd.web.store import ReadOnlyStore

log = logging.getLogger(__name__)

# sysexits.h, as ``batchd run`` uses them.
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_CONFIG = 78


def log_dir_of(settings: Settings) -> Path | None:
    """Where the daemon keeps per-execution logs (DESIGN §6's ``log_dir``), if it does."""
    value: Any = getattr(settings, "log_dir", None)  # a setting older configs do not have
    return Path(value) if value else None


def make_console(
    settings: Callable[[], Settings], listen: str, *, next_fires: NextFires | None = None
) -> WebConsole:
    """The console on the repository of ``settings()`` (read when a page asks: a reload
    may replace them), not yet started."""
    store = ReadOnlyStore(settings().database_url)
    pages = Pages(store, settings, next_fires, log_dir=lambda: log_dir_of(settings()))
    return WebConsole(pages, listen)


def serve(settings: Settings, listen: str | None = None) -> int:
    """``batchd web``: serve the console until SIGTERM or SIGINT; the exit status."""
    address = listen or settings.web.listen
    if not address:
        log.error('the web console is off: set [web] listen = "127.0.0.1:9465" or --listen')
        return EX_CONFIG
    console = make_console(lambda: settings, address)
    try:
        with console.pages.store.reading() as conn:
            conn.execute(select(job_execution.c.id).limit(1)).all()
    except DBAPIError as error:
        log.error("cannot read the repository: %s", str(error.orig).strip())
        console.pages.store.dispose()
        return EX_UNAVAILABLE
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        try:
            console.start()
        except OSError as error:
            log.error("cannot listen on %s: %s", address, error)
            return EX_CANTCREAT
        while not stop.wait(3600):
            pass
        return 0
    finally:
        console.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

__all__ = ["log_dir_of", "make_console", "serve"]
