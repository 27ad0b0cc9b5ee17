"""One way to validate a JSON document: a pydantic model states its shape, :func:`parse_document`
turns a refusal into the project's own error.

A document model derives from :class:`Document`: strict (a bool is not an integer, a string not a
number, an int is accepted where a float is wanted), unknown fields refused, NaN and infinity
refused, and immutable once parsed. Types, required fields and bounds are declared on the fields
(``Annotated[int, Field(ge=1)]``); a check pydantic has no word for is a validator that raises
``ValueError`` with the reason, which becomes the message. Only the first problem is reported, in
one line that names the field by its path and says why::

    io.reasoner: expected an object, got list
    files[2].size: must be greater than or equal to 0, got -1
    cmd.bundle.sha256: unknown field

The caller's error class stays its own (``ManifestError``, ``InvalidInputError``, ...): pydantic's
``ValidationError`` never leaves this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

__all__ = ["Document", "PartRefused", "describe", "parse_document"]

M = TypeVar("M")

_MAX_SHOWN = 60
"""How many characters of a refused value a message shows."""
_EXPECTED = {
    "missing": "missing",
    "extra_forbidden": "unknown field",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "dict_type": "expected an object",
    "dataclass_type": "expected an object",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
}


class PartRefused(ValueError):
    """A check's refusal of one part of its field: the message names the field's path and then
    ``part`` (``io.reasoner: ...``), as pydantic's own refusals do."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(reason)
        self.part = part


class Document(BaseModel):
    """Base of a JSON document's model: strict, closed, finite and frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def parse_document(
    model: type[M] | TypeAdapter[M], data: object, error: Callable[[str], Exception], *, where: str = ""
) -> M:
    """``data`` validated by ``model`` (a pydantic model class or a ``TypeAdapter``); a refusal
    raises ``error(message)`` with the first problem (:func:`describe`), the path under ``where``."""
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(data)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        raise error(describe(exc, where)) from None
    raise TypeError(f"not a pydantic model or TypeAdapter: {model!r}")


def describe(exc: ValidationError, where: str = "") -> str:
    """The first problem of ``exc`` in one line: ``path: reason`` (just the reason at the top)."""
    first = exc.errors(include_url=False)[0]
    path = _path(where, first["loc"])
    refused = first.get("ctx", {}).get("error")
    if isinstance(refused, PartRefused):
        path = f"{path}.{refused.part}" if path else refused.part
    reason = _reason(first)
    return f"{path}: {reason}" if path else reason


def _path(where: str, loc: tuple[int | str, ...]) -> str:
    path = where
    for part in loc:
        if part == "[key]":  # a mapping's key, not a field: the path so far names the mapping
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _reason(error: Any) -> str:
    kind, value = error["type"], error.get("input")
    if kind in ("value_error", "assertion_error"):
        return str(error["ctx"]["error"])
    if kind in ("missing", "extra_forbidden"):
        return _EXPECTED[kind]
    if kind in _EXPECTED:
        shown = type(value).__name__ if _EXPECTED[kind] in ("expected an object", "expected a list") else _shown(value)
        return f"{_EXPECTED[kind]}, got {shown}"
    ctx = error.get("ctx", {})
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}, got {_shown(value)}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}, got {_shown(value)}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern'].removeprefix('^').removesuffix('$')}, got {_shown(value)}"
    message = str(error["msg"])
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    elif message.startswith("String should "):
        message = "must " + message.removeprefix("String should ")
    elif message.startswith("List should "):
        message = "must " + message.removeprefix("List should ")
    return f"{message[:1].lower()}{message[1:]}, got {_shown(value)}"


def _shown(value: object) -> str:
    text = repr(value) if not isinstance(value, (list, dict)) else f"a {type(value).__name__} of {len(value)}"
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
