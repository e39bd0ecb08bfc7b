"""Config text for the daemon tests, written from Python values: a test states what it
configures, not how TOML quotes it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path


def toml(value: object) -> str:
    """``value`` as a TOML value: tables and arrays on one line, strings and paths quoted,
    datetimes as TOML datetimes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml(item)}" for key, item in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(item) for item in value) + "]"
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def table(array: str, **keys: object) -> str:
    """One table of an array of tables (``[[schedules]]``, ``[[watches]]``, ``[[calendars]]``);
    keys that are None are left out."""
    lines = [f"[[{array}]]"] + [f"{k} = {toml(v)}" for k, v in keys.items() if v is not None]
    return "\n".join(lines) + "\n"
