"""Durations as operators write them: ``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"``."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse a duration; a bare number is seconds. ValueError names what is wrong."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        compact = text.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", compact):
            seconds = float(compact)
        elif compact and re.fullmatch(f"(?:{_PART.pattern})+", compact):
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(compact))
        else:
            raise ValueError(f"not a duration: {text!r} (write e.g. '90s', '15m', '1h30m', '2d')")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {text!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """A duration as operators write it (the inverse of :func:`parse_duration`):
    ``1h`` rather than ``1:00:00``, ``1h30m``, ``2d``, ``90s`` stays ``1m30s``, ``0.25s``."""
    milliseconds = round(value.total_seconds() * 1000)
    if milliseconds == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m"):
        count, milliseconds = divmod(milliseconds, round(_UNITS[unit] * 1000))
        if count:
            parts.append(f"{count}{unit}")
    if milliseconds:
        seconds = milliseconds / 1000
        parts.append(f"{seconds:g}s")
    return "".join(parts)
