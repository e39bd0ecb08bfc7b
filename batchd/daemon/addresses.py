"""Addresses to listen on as the config writes them: ``"host:port"``, IPv6 in brackets
(``"[::1]:9464"``). One parser, used by the config's check and by the listener that binds
them, so that what ``batchd check-config`` accepts is what ``batchd run`` listens on."""

from __future__ import annotations


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


__all__ = ["parse_listen"]
