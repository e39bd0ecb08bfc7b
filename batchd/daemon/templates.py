"""Parameter templates: job parameters rendered from a fire time or a dropped file.

A template value is a string with ``{variable}`` placeholders; non-string values pass
through unchanged. A placeholder may shift a date or datetime by days, hours or minutes
and may carry a strftime format::

    {fire_date}            2026-11-21
    {fire_date-1d}         2026-11-20
    {fire_date:%Y%m%d}     20261121
    {fire_time+2h:%H:%M}   03:30
    {path} {name} {stem} {mtime_date} {group_name}

Double a brace to write it literally (``{{``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

_PLACEHOLDER = re.compile(
    r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<sign>[+-])(?P<amount>\d+)(?P<unit>[dhm]))?"
    r"(?::(?P<format>[^{}]*))?\}"
)
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class TemplateError(ValueError):
    """A template names an unknown variable, or a value cannot be rendered."""


def _split(text: str) -> Iterable[tuple[str, re.Match[str] | None]]:
    """Literal text and placeholders of ``text``, in order (``{{``/``}}`` are literal)."""
    position = 0
    while position < len(text):
        if text.startswith(("{{", "}}"), position):
            yield text[position], None
            position += 2
            continue
        if text[position] == "{":
            match = _PLACEHOLDER.match(text, position)
            if match is None:
                raise TemplateError(f"malformed placeholder in {text!r} at {text[position:]!r}")
            yield "", match
            position = match.end()
            continue
        if text[position] == "}":
            raise TemplateError(f"unmatched '}}' in {text!r}")
        yield text[position], None
        position += 1


def referenced_variables(templates: Mapping[str, Any]) -> set[str]:
    """Every variable the templates use (to check them against what a trigger offers)."""
    names: set[str] = set()
    for value in templates.values():
        if isinstance(value, str):
            names.update(match.group("name") for _, match in _split(value) if match)
    return names


def check_templates(templates: Mapping[str, Any], available: Iterable[str]) -> None:
    """Raise TemplateError naming each unknown variable and the ones that exist."""
    known = set(available)
    unknown = referenced_variables(templates) - known
    if unknown:
        raise TemplateError(
            f"unknown template variable {', '.join(sorted(unknown))} "
            f"(available: {', '.join(sorted(known))})"
        )


def _render_one(match: re.Match[str], variables: Mapping[str, Any]) -> Any:
    name = match.group("name")
    if name not in variables:
        raise TemplateError(f"unknown template variable {name!r}")
    value = variables[name]
    if match.group("amount"):
        if not isinstance(value, dt.date):
            raise TemplateError(f"{name} is not a date or time: it cannot be shifted")
        delta = dt.timedelta(**{_UNITS[match.group("unit")]: int(match.group("amount"))})
        value = value + delta if match.group("sign") == "+" else value - delta
    fmt = match.group("format")
    if fmt:
        return format(value, fmt)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def render_params(templates: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    """Render every template value. A value that is one placeholder alone keeps the
    variable's JSON type (a number stays a number); dates become ISO 8601 text."""
    rendered: dict[str, Any] = {}
    for key, value in templates.items():
        if not isinstance(value, str):
            rendered[key] = value
            continue
        parts = list(_split(value))
        if len(parts) == 1 and parts[0][1] is not None:
            rendered[key] = _render_one(parts[0][1], variables)
            continue
        rendered[key] = "".join(
            str(_render_one(match, variables)) if match else literal for literal, match in parts
        )
    return rendered
