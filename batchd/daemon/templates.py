"""Parameter templates: job parameters rendered from a fire time or a dropped file.

A template value is a string with ``{variable}`` placeholders; non-string values pass
through unchanged. A placeholder may read a text variable as a date (a strptime format in
parentheses), shift a date or datetime by days, hours or minutes, and carry a strftime
format, in that order::

    {fire_date}            2026-11-21
    {fire_date-1d}         2026-11-20
    {fire_date:%Y%m%d}     20261121
    {fire_time+2h:%H:%M}   03:30
    {business_date-1bd}    2026-11-20   (business days of the schedule's calendar)
    {day(%Y%m%d)}          2026-11-21   (day = "20261121", a regex group)
    {day(%Y%m%d)-1d:%d.%m} 20.11
    {path} {name} {stem} {mtime_date} {group_name}

A parse format with a time directive (``%H``, ``%M``, ``%S``...) gives a datetime, else a date.

Double a brace to write it literally (``{{``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from batchd.errors import TemplateError as TemplateError

_PLACEHOLDER = re.compile(
    r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\((?P<parse>[^(){}]*)\))?"
    r"(?:(?P<sign>[+-])(?P<amount>\d+)(?P<unit>bd|[dhm]))?"
    r"(?::(?P<format>[^{}]*))?\}"
)
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
# strptime directives that read a time of day: a parse format with one gives a datetime.
_TIME_DIRECTIVES = frozenset("HIMSfpzXc")

#: Shifts a date (or a datetime, keeping its time of day) by business days: what a
#: calendar gives the templates of a schedule that has one.
BusinessDays = Callable[[dt.date, int], dt.date]


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


def _placeholders(templates: Mapping[str, Any]) -> Iterable[re.Match[str]]:
    for value in templates.values():
        if isinstance(value, str):
            yield from (match for _, match in _split(value) if match)


def referenced_variables(templates: Mapping[str, Any]) -> set[str]:
    """Every variable the templates use (to check them against what a trigger offers)."""
    return {match.group("name") for match in _placeholders(templates)}


def check_templates(
    templates: Mapping[str, Any], available: Iterable[str], *, business_days: bool = False
) -> None:
    """Raise TemplateError naming each unknown variable and the ones that exist, and each
    business-day offset (``bd``) when there is no calendar (``business_days`` False)."""
    for match in _placeholders(templates):
        if match.group("unit") == "bd" and not business_days:
            raise TemplateError(
                f"{match.group(0)}: an offset in business days (bd) needs a calendar "
                "(set the schedule's calendar)"
            )
        if match.group("parse") is not None and "%" not in match.group("parse"):
            raise TemplateError(
                f"{match.group(0)}: the date format in parentheses has no strptime directive "
                "(write e.g. {day(%Y%m%d)})"
            )
    known = set(available)
    unknown = referenced_variables(templates) - known
    if unknown:
        raise TemplateError(
            f"unknown template variable {', '.join(sorted(unknown))} "
            f"(available: {', '.join(sorted(known))})"
        )


def _render_one(
    match: re.Match[str], variables: Mapping[str, Any], business_days: BusinessDays | None
) -> Any:
    name = match.group("name")
    if name not in variables:
        raise TemplateError(f"unknown template variable {name!r}")
    value = variables[name]
    if match.group("parse") is not None:
        value = _parse_date(name, value, match.group("parse"))
    if match.group("amount"):
        if not isinstance(value, dt.date):
            raise TemplateError(f"{name} is not a date or time: it cannot be shifted")
        amount = int(match.group("amount")) * (1 if match.group("sign") == "+" else -1)
        if match.group("unit") == "bd":
            if business_days is None:
                raise TemplateError(f"{match.group(0)}: business days need a calendar")
            try:
                value = business_days(value, amount)
            except ValueError as error:
                raise TemplateError(f"{match.group(0)}: {error}") from None
        else:
            value = value + dt.timedelta(**{_UNITS[match.group("unit")]: amount})
    return _format(value, match)


def _format(value: Any, match: re.Match[str]) -> Any:
    fmt = match.group("format")
    if fmt:
        return format(value, fmt)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _parse_date(name: str, value: Any, fmt: str) -> dt.date:
    """``value`` read with the strptime format ``fmt``: a datetime when the format reads a
    time of day, else a date. TemplateError shows the value when it does not match."""
    if not isinstance(value, str):
        raise TemplateError(f"{name} = {value!r} is not text: it cannot be read with {fmt!r}")
    try:
        parsed = dt.datetime.strptime(value, fmt)
    except ValueError:
        raise TemplateError(f"{name} = {value!r} does not match the date format {fmt!r}") from None
    if _TIME_DIRECTIVES.intersection(re.findall(r"%-?([A-Za-z])", fmt)):
        return parsed
    return parsed.date()


def render_params(
    templates: Mapping[str, Any],
    variables: Mapping[str, Any],
    business_days: BusinessDays | None = None,
) -> dict[str, Any]:
    """Render every template value. A value that is one placeholder alone keeps the
    variable's JSON type (a number stays a number); dates become ISO 8601 text.
    ``business_days`` shifts dates for ``bd`` offsets (without it they are an error)."""
    rendered: dict[str, Any] = {}
    for key, value in templates.items():
        if not isinstance(value, str):
            rendered[key] = value
            continue
        parts = list(_split(value))
        if len(parts) == 1 and parts[0][1] is not None:
            rendered[key] = _render_one(parts[0][1], variables, business_days)
            continue
        rendered[key] = "".join(
            str(_render_one(match, variables, business_days)) if match else literal
            for literal, match in parts
        )
    return rendered
