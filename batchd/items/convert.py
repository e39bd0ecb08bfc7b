"""Records to items and items to records.

Readers produce records (dicts of text, or of JSON values) and turn them into items: the dict
itself, an instance of a pydantic model (``model_validate``) or of a dataclass (its fields
converted by their type hints). Writers turn items back into dicts.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import operator
import types
import typing
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ValidationError

from batchd.errors import ItemFormatError

# Builds the error for one record: (field or None, message) -> exception to raise.
ErrorFactory = Callable[[str | None, str], Exception]

_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off"})


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``int`` -> (int, False)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], nullable
        return Any, nullable
    return annotation, annotation is type(None)


def _from_text(value: Any, parse: Callable[[str], Any], expected: str) -> Any:
    """``parse`` of a string value (stripped); ValueError naming ``expected`` for any other
    value, or for text that does not parse."""
    if isinstance(value, str):
        try:
            return parse(value.strip())
        except (ValueError, InvalidOperation):
            pass
    raise ValueError(f"expected {expected}, got {value!r}")


def convert_value(value: Any, target: Any) -> Any:
    """Convert a text or JSON value to ``target`` (int, float, str, bool, Decimal, date,
    datetime, time, or any type whose constructor takes the value). Raises ValueError."""
    if value is None or target is Any or not isinstance(target, type):
        return value
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"expected a boolean, got {value!r}")
    if target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return _from_text(value, int, "an integer")
    if target is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return _from_text(value, float, "a number")
    if target is Decimal:
        if isinstance(value, Decimal):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Decimal(str(value))
        return _from_text(value, Decimal, "a decimal number")
    if target is str:
        return value if isinstance(value, str) else str(value)
    if target in (datetime, date, time):
        if type(value) is target:
            return value
        return _from_text(value, target.fromisoformat, f"an ISO {target.__name__}")
    if isinstance(value, target):
        return value
    try:
        return target(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected {target.__name__}, got {value!r} ({exc})") from None


class Converter:
    """``convert_value(value, target)`` for one target, with the common case first: text
    into int, float or Decimal is the type's constructor (which ignores surrounding blanks,
    as ``convert_value`` does once it has stripped them), text into str is the text itself;
    anything else, and text that does not parse (for the error's message), goes to
    ``convert_value``. A class, not a closure, so that readers holding one pickle."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self._direct = target in (int, float, Decimal)

    def __call__(self, value: Any) -> Any:
        if type(value) is str:
            if self.target is str:
                return value
            if self._direct:
                try:
                    return self.target(value)
                except (ValueError, InvalidOperation):
                    pass
        return convert_value(value, self.target)


_MISSING: Any = object()


class ItemModel:
    """How a reader builds items from records: dicts (``model=None``), a pydantic model or a
    dataclass. ``blank_is_none`` (text formats) turns ``""`` into None for nullable fields."""

    def __init__(self, model: type[Any] | None, *, blank_is_none: bool = True) -> None:
        if model is not None and not (
            (isinstance(model, type) and issubclass(model, BaseModel))
            or dataclasses.is_dataclass(model)
        ):
            raise TypeError(f"model must be a pydantic BaseModel or a dataclass, not {model!r}")
        self.model = model
        self.blank_is_none = blank_is_none
        self._pydantic = isinstance(model, type) and issubclass(model, BaseModel)
        self._types: dict[str, tuple[Any, bool]] = {}
        self._required: list[str] = []
        positional = False
        if model is not None and isinstance(model, type) and issubclass(model, BaseModel):
            for name, info in model.model_fields.items():
                self._types[info.alias or name] = _unwrap_optional(info.annotation)
                if info.is_required():
                    self._required.append(info.alias or name)
        elif model is not None:
            hints = typing.get_type_hints(model)
            for fld in dataclasses.fields(model):
                if not fld.init:
                    continue
                self._types[fld.name] = _unwrap_optional(hints.get(fld.name, Any))
                if (
                    fld.default is dataclasses.MISSING
                    and fld.default_factory is dataclasses.MISSING
                ):
                    self._required.append(fld.name)

        # For dataclasses, per field: (name, converter, nullable, non-text, required, and the
        # target when non-blank text converts with its constructor alone: str, int, float,
        # Decimal, the common case, taken without a call to the converter).
        self._plan = [
            (
                name,
                Converter(target),
                nullable,
                target is not str,
                name in self._required,
                target if target in (str, int, float, Decimal) else None,
            )
            for name, (target, nullable) in self._types.items()
        ]
        # A dataclass whose __init__ takes every field positionally, each str, int, float or
        # Decimal: build_leading() may build a batch of records column by column.
        self._columns: list[tuple[str, Any]] = [
            (name, direct) for name, _, _, _, _, direct in self._plan
        ]
        if model is not None and not self._pydantic:
            # Its own __init__ (or one written by hand) must take the fields in this order.
            parameters = list(inspect.signature(model).parameters.values())
            positional = [p.name for p in parameters] == list(self._types) and all(
                p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters
            )
        if not positional or any(direct is None for _, direct in self._columns):
            self._columns = []

    @property
    def required_fields(self) -> list[str]:
        """Fields every record must have (empty for dicts)."""
        return list(self._required)

    def missing_fields(self, available: list[str]) -> list[str]:
        """The required fields not in ``available`` (a file's header or columns)."""
        return [name for name in self._required if name not in available]

    def _blanks(self, record: dict[str, Any]) -> dict[str, Any]:
        # An empty text value is None for a field that allows None; for a non-text field
        # with a default it is left out, so the default applies.
        result: dict[str, Any] = {}
        for key, value in record.items():
            if value == "" and key in self._types:
                target, nullable = self._types[key]
                if nullable:
                    value = None
                elif target is not str and key not in self._required:
                    continue
            result[key] = value
        return result

    def build(self, record: dict[str, Any], error: ErrorFactory) -> Any:
        """The item for ``record``; raises ``error(field, message)`` when it is invalid."""
        if self.model is None:
            return record
        if not self._pydantic:
            return self._build_dataclass(record, error)
        if self.blank_is_none:
            record = self._blanks(record)
        if issubclass(self.model, BaseModel):
            try:
                return self.model.model_validate(record)
            except ValidationError as exc:
                details = exc.errors()
                first = details[0]
                field = str(first["loc"][0]) if first["loc"] else None
                message = first["msg"]
                for extra in details[1:]:
                    where = ".".join(str(p) for p in extra["loc"])
                    message += f"; field {where!r}: {extra['msg']}"
                raise error(field, message) from None
        raise AssertionError("unreachable")

    def build_leading(self, rows: list[list[str]], header: list[str]) -> list[Any]:
        """The items of the first of ``rows`` (each a value per ``header`` name), built as
        ``build`` builds their records, a column at a time by C-level passes: all of them,
        or those before the first model call that raised, or none when a value is not
        non-blank text that its type's constructor takes (a blank, a missing field, text
        that does not parse). ``build`` does the rest, and raises the errors."""
        if not self._columns or not rows:
            return []
        columns = []
        try:
            for name, direct in self._columns:
                column = list(map(operator.itemgetter(header.index(name)), rows))
                if set(map(type, column)) != {str} or not all(column):
                    return []
                columns.append(column if direct is str else list(map(direct, column)))
        except (IndexError, ValueError, InvalidOperation):
            return []
        built: list[Any] = []
        model: Any = self.model
        try:
            built.extend(map(model, *columns))
        except Exception:
            pass  # build() raises it again, as the record's error
        return built

    def _build_dataclass(self, record: dict[str, Any], error: ErrorFactory) -> Any:
        # Once per item: what _blanks() and convert_value() decide, in one pass over the
        # fields with each field's converter chosen in advance.
        assert self.model is not None
        kwargs: dict[str, Any] = {}
        blank_is_none = self.blank_is_none
        for name, convert, nullable, non_text, required, direct in self._plan:
            value = record.get(name, _MISSING)
            if direct is not None and type(value) is str and value:
                if direct is str:
                    kwargs[name] = value
                    continue
                try:
                    kwargs[name] = direct(value)
                    continue
                except (ValueError, InvalidOperation):
                    pass  # the converter raises, with its message
            if value is _MISSING:
                if required:
                    raise error(name, "field required")
                continue
            if value == "" and blank_is_none:
                if nullable:
                    kwargs[name] = None
                    continue
                if non_text and not required:
                    continue  # the default applies
            if value is None:
                kwargs[name] = None
                continue
            try:
                kwargs[name] = convert(value)
            except ValueError as exc:
                raise error(name, str(exc)) from None
        try:
            return self.model(**kwargs)
        except (TypeError, ValueError) as exc:
            raise error(None, str(exc)) from None


@functools.lru_cache(maxsize=64)
def record_builder(names: tuple[str, ...]) -> Callable[[typing.Sequence[Any]], dict[str, Any]]:
    """A function of a row (a sequence as long as ``names``) that returns the dict of
    ``names`` to its values, as ``dict(zip(names, row))`` does (a repeated name keeps its
    last value). It is a dict display compiled for these names, which builds a record in
    about half the time of ``dict(zip())`` (no zip object, no pair per field); readers map
    it over a batch of rows. The names go into the code as literals (``repr``), never as
    code."""
    fields = ", ".join(f"{name!r}: row[{index}]" for index, name in enumerate(names))
    build: Callable[[typing.Sequence[Any]], dict[str, Any]] = eval(f"lambda row: {{{fields}}}")
    return build


def item_to_dict(item: Any, *, json_mode: bool = False) -> dict[str, Any]:
    """A dict (as it is), a pydantic model (``model_dump``; ``mode="json"`` when
    ``json_mode``), a dataclass instance or a named tuple as a dict."""
    if type(item) is dict:  # the usual case, without the slower check against the Mapping ABC
        return dict(item)
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, BaseModel):
        return item.model_dump(mode="json" if json_mode else "python")
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    if isinstance(item, tuple) and hasattr(item, "_asdict"):
        return dict(item._asdict())
    raise ItemFormatError(
        f"cannot write an item of type {type(item).__name__}: "
        "expected a dict, a pydantic model, a dataclass or a named tuple"
    )


def model_fields(model: type[Any]) -> list[str]:
    """The declared fields of a pydantic model or dataclass class, in order."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    if dataclasses.is_dataclass(model) and isinstance(model, type):
        return [f.name for f in dataclasses.fields(model)]
    raise TypeError(f"model= takes a pydantic model or dataclass class, not {model!r}")


def field_names(item: Any) -> list[str]:
    """The output fields an item implies, in order (a model's or dataclass's declared
    fields, a dict's keys)."""
    if isinstance(item, BaseModel):
        return list(type(item).model_fields)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return [f.name for f in dataclasses.fields(item)]
    return list(item_to_dict(item))


def format_text(value: Any) -> str:
    """A value as text for CSV and fixed-width output: None is empty, booleans are
    ``true``/``false``, dates and times ISO 8601, Decimals without exponent."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)
