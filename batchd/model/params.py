"""Job parameters: parsing, validation, canonical form and the job key."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, BaseModel, ValidationError

from batchd.errors import InvalidJobParameters

RawParams = Mapping[str, Any] | str | bytes | None


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: equal values give equal text, whatever the key order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# Bounds on what a start may carry, checked before anything is written. Parameters name a
# business date, a file, a region: a few hundred bytes. The bounds keep a hostile or broken
# caller (a trigger file, a control-socket client) from storing megabytes per execution or
# nesting deep enough to exhaust the recursion of the code that copies, encodes and logs them.
MAX_PARAMS_BYTES = 64 * 1024  # of canonical JSON, UTF-8
MAX_PARAMS_DEPTH = 32  # the object itself is depth 1

_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise InvalidJobParameters(
        f"parameters are not valid JSON: {name} is not a JSON number (parameters are JSON, "
        "which has no NaN or Infinity)"
    )


def _too_big(size: int | str) -> InvalidJobParameters:
    return InvalidJobParameters(
        f"parameters are {size} bytes of JSON; at most {MAX_PARAMS_BYTES} are accepted"
    )


def _check_values(value: Mapping[str, Any]) -> None:
    """Refuse what JSON cannot carry faithfully or what is too big, naming the parameter:
    names that are not strings, NaN and Infinity, lone surrogates (not Unicode text, not
    encodable as UTF-8), nesting deeper than MAX_PARAMS_DEPTH, more than MAX_PARAMS_BYTES.
    Iterative, so a deep value cannot exhaust the recursion limit here; and it stops as soon
    as a lower bound on the JSON size passes the limit, so a huge value costs little."""
    size = 0
    stack: list[tuple[str, Any, int]] = [("", value, 1)]
    while stack:
        name, item, depth = stack.pop()
        if isinstance(item, str):
            size += len(item) + 2
            if _SURROGATE.search(item):
                raise InvalidJobParameters(
                    f"parameter {name!r} contains a lone surrogate: it is not Unicode text"
                )
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidJobParameters(
                f"parameter {name!r} is {item}: parameters are JSON, which has no NaN or Infinity"
            )
        elif isinstance(item, Mapping | list | tuple):
            if depth > MAX_PARAMS_DEPTH:
                raise InvalidJobParameters(
                    f"parameter {name!r} nests deeper than {MAX_PARAMS_DEPTH} levels"
                )
            size += max(len(item) - 1, 0) + 2  # brackets and commas
            if size > MAX_PARAMS_BYTES:
                raise _too_big(f"more than {MAX_PARAMS_BYTES}")
            if not isinstance(item, Mapping):
                stack.extend((name, child, depth + 1) for child in item)
                continue
            for key, child in item.items():
                if not isinstance(key, str) or _SURROGATE.search(key):
                    where = f" (in parameter {name!r})" if name else ""
                    raise InvalidJobParameters(
                        f"parameter names must be strings of Unicode text: {key!r}{where}"
                    )
                size += len(key) + 3
                stack.append((name or key, child, depth + 1))
        if size > MAX_PARAMS_BYTES:
            raise _too_big(f"more than {MAX_PARAMS_BYTES}")


def _canonical_values(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` checked, then round-tripped through JSON so that what runs is exactly what
    is stored."""
    _check_values(value)
    try:
        text = json.dumps(
            dict(value),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidJobParameters(f"parameters are not JSON-serialisable: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > MAX_PARAMS_BYTES:
        raise _too_big(size)
    result: dict[str, Any] = json.loads(text)
    return result


def parse_params(raw: RawParams) -> dict[str, Any]:
    """Turn a dict or a JSON text (str, or UTF-8 bytes) into a plain dict; anything else,
    or anything over the bounds above, is InvalidJobParameters."""
    if raw is None:
        return {}
    if isinstance(raw, str | bytes):
        if len(raw) > MAX_PARAMS_BYTES:
            raise _too_big(
                len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
            )
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidJobParameters(
                    f"parameters are not UTF-8 text: {exc.reason} at byte {exc.start}"
                ) from None
        try:
            value = json.loads(raw, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise InvalidJobParameters(f"parameters are not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidJobParameters(
                f"parameters nest deeper than {MAX_PARAMS_DEPTH} levels"
            ) from None
    else:
        value = raw
    if not isinstance(value, Mapping):
        raise InvalidJobParameters(f"parameters must be a JSON object, not {type(value).__name__}")
    return _canonical_values(value)


def describe_validation_error(error: ValidationError) -> str:
    """One line per failing field, with the value it got: ``date: Input should be a valid
    date (got '20261321')``. (A missing field's input is the whole object: not shown.)"""
    lines = []
    for detail in error.errors():
        field = ".".join(str(part) for part in detail["loc"]) or "(parameters)"
        value = detail.get("input")
        got = "" if detail["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{field}: {detail['msg']}{got}")
    return "; ".join(lines)


@dataclass(frozen=True)
class JobParameters:
    """Parameters of one start, in canonical form.

    ``values`` holds every parameter as stored (identifying and non-identifying);
    ``typed`` is what steps see: the validated pydantic model, or ``values`` itself.
    """

    values: dict[str, Any]
    identifying: dict[str, Any]
    typed: Any

    @property
    def job_key(self) -> str:
        return job_key(self.identifying)

    @property
    def json(self) -> str:
        return canonical_json(self.values)


def job_key(identifying: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the identifying parameters."""
    return hashlib.sha256(canonical_json(dict(identifying)).encode("utf-8")).hexdigest()


def build_parameters(
    job_name: str,
    raw: RawParams,
    *,
    model: type[BaseModel] | None = None,
    non_identifying: Collection[str] = (),
) -> JobParameters:
    """Parse and validate parameters for ``job_name``. Raises InvalidJobParameters
    naming every bad field; nothing has been written when it does."""
    values = parse_params(raw)
    typed: Any = values
    if model is not None:
        try:
            typed = model.model_validate(values)
        except ValidationError as exc:
            raise InvalidJobParameters(
                f"invalid parameters for job {job_name!r}: {describe_validation_error(exc)}"
            ) from None
        _refuse_dropped(job_name, model, values)
        # The key comes from the model's JSON form, so defaults and spellings
        # ("2026-11-21" vs a date object) do not split one instance into two.
        # A model can turn "nan" into a float NaN: check what it made as any input.
        values = _canonical_values(typed.model_dump(mode="json"))
    identifying = {k: v for k, v in values.items() if k not in non_identifying}
    return JobParameters(values=values, identifying=identifying, typed=typed)


def _refuse_dropped(job_name: str, model: type[BaseModel], values: Mapping[str, Any]) -> None:
    """InvalidJobParameters naming the parameters ``model`` would silently drop: those it
    has no field (nor alias) for, unless its ``extra`` config keeps them ("allow") or
    already refuses them ("forbid"). Pydantic's default, "ignore", would start the job
    without the value the operator gave (``--param colour=red`` for no ``colour``)."""
    if model.model_config.get("extra", "ignore") != "ignore":
        return
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                names.add(alias)
            elif isinstance(alias, AliasChoices):
                names.update(choice for choice in alias.choices if isinstance(choice, str))
    unknown = sorted(key for key in values if key not in names)
    if unknown:
        fields = ", ".join(model.model_fields) or "none"
        raise InvalidJobParameters(
            f"invalid parameters for job {job_name!r}: "
            + "; ".join(f"{key}: no such parameter" for key in unknown)
            + f" ({model.__name__} takes: {fields})"
        )
