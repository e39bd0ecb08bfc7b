"""systemd's notification protocol (sd_notify): READY=1, STATUS=, WATCHDOG=1, ...

Nothing happens when the daemon does not run under systemd (no ``NOTIFY_SOCKET``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends state lines to the socket named by ``NOTIFY_SOCKET``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(watchdog_usec) / 1_000_000 / 2
            if watchdog_usec.isdigit() and int(watchdog_usec) > 0 and watchdog_for_us
            else None
        )

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; False (logged) if it could not be sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait: a notification socket nobody reads (its queue full) must not
                # stop the main loop, which also runs recovery and the node's heartbeat.
                sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            log.debug("notification dropped: nobody reads %s", self.address.lstrip("\0"))
            return False
        except OSError as error:
            log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), error)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (>= 253) match the reload with the READY=1 after it.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")
