"""Job parameters: parsing, validation, canonical form and the job key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from batchd.errors import InvalidJobParameters

RawParams = Mapping[str, Any] | str | bytes | None


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: equal values give equal text, whatever the key order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_params(raw: RawParams) -> dict[str, Any]:
    """Turn a dict or a JSON text into a plain dict; anything else is InvalidJobParameters."""
    if raw is None:
        return {}
    if isinstance(raw, str | bytes):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidJobParameters(f"parameters are not valid JSON: {exc}") from None
    else:
        value = raw
    if not isinstance(value, Mapping):
        raise InvalidJobParameters(f"parameters must be a JSON object, not {type(value).__name__}")
    bad_keys = [key for key in value if not isinstance(key, str)]
    if bad_keys:
        raise InvalidJobParameters(f"parameter names must be strings: {bad_keys!r}")
    try:
        # Round-trip through JSON so that what runs is exactly what is stored.
        result: dict[str, Any] = json.loads(canonical_json(dict(value)))
    except (TypeError, ValueError) as exc:
        raise InvalidJobParameters(f"parameters are not JSON-serialisable: {exc}") from None
    return result


def describe_validation_error(error: ValidationError) -> str:
    """One line per failing field: ``date: Input should be a valid date``."""
    lines = []
    for detail in error.errors():
        field = ".".join(str(part) for part in detail["loc"]) or "(parameters)"
        lines.append(f"{field}: {detail['msg']}")
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
        # The key comes from the model's JSON form, so defaults and spellings
        # ("2026-11-21" vs a date object) do not split one instance into two.
        values = typed.model_dump(mode="json")
    identifying = {k: v for k, v in values.items() if k not in non_identifying}
    return JobParameters(values=values, identifying=identifying, typed=typed)
