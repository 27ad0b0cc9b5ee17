"""Answer matching: how a predicted answer is compared with the expected one.

A bundle declares its rule in its manifest (``io["answer_match"]``), and a dataset in its
``dataset.json``; calibration, gates, evaluation and field checks compare answers through
:func:`answers_match` with that rule, never with ``==`` on raw text::

    rule     matches when                                                       e.g.
    exact    equal after collapsing whitespace runs, stripping and casefolding  "Paris " ~ "paris"
    number   both are numbers (int or decimal: sign, surrounding whitespace     "42." ~ "+42.0"
             and a trailing period allowed) of equal value
    json     both parse as JSON and are structurally equal (object key order   '{"a":1,"b":[2]}' ~
             ignored, list order kept, 1 == 1.0, true != 1)                     '{"b": [2], "a": 1.0}'

Text that is not a number (``number``) or not JSON (``json``) never matches, not even itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from edgecloud.shared.base.errors import InvalidInputError, ManifestError

__all__ = ["DEFAULT_RULE", "MATCH_RULES", "answers_match", "check_rule", "rule_of"]

MATCH_RULES = ("exact", "number", "json")
DEFAULT_RULE = "exact"

_NUMBER_RE = re.compile(r"([+-]?(?:\d+(?:\.\d+)?|\.\d+))\.?")


def check_rule(rule: object) -> str:
    """``rule`` if it is one of :data:`MATCH_RULES`; raises InvalidInputError naming them otherwise."""
    if not isinstance(rule, str) or rule not in MATCH_RULES:
        raise InvalidInputError(f"answer_match must be one of {', '.join(MATCH_RULES)}; got {rule!r}")
    return rule


def rule_of(io: Mapping[str, Any]) -> str:
    """The rule a bundle manifest's ``io`` contract declares (``exact`` when it declares none).

    Raises ManifestError naming ``io.answer_match`` when the declared rule is not one of
    :data:`MATCH_RULES`.
    """
    rule = io.get("answer_match", DEFAULT_RULE)
    try:
        return check_rule(rule)
    except InvalidInputError as exc:
        raise ManifestError(f"io.answer_match: {exc}") from None


def _exact(text: str) -> str:
    return " ".join(text.split()).casefold()


def _number(text: str) -> Decimal | None:
    match = _NUMBER_RE.fullmatch(text.strip())
    return Decimal(match.group(1)) if match else None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json(text: str) -> tuple[bool, Any]:
    """``(True, value)`` for valid JSON (NaN and Infinity refused), ``(False, None)`` otherwise."""
    try:
        return True, json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return False, None


def _same(a: Any, b: Any) -> bool:
    """Structural equality of two parsed JSON values: numbers by value, booleans only with booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, Decimal)) or isinstance(b, (int, Decimal)):
        return isinstance(a, (int, Decimal)) and isinstance(b, (int, Decimal)) and a == b
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
        )
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return a == b  # strings and null


def _match_exact(predicted: str, expected: str) -> bool:
    return _exact(predicted) == _exact(expected)


def _match_number(predicted: str, expected: str) -> bool:
    a, b = _number(predicted), _number(expected)
    return a is not None and b is not None and a == b


def _match_json(predicted: str, expected: str) -> bool:
    (ok_a, a), (ok_b, b) = _json(predicted), _json(expected)
    return ok_a and ok_b and _same(a, b)


_MATCHERS: dict[str, Callable[[str, str], bool]] = {
    "exact": _match_exact,
    "number": _match_number,
    "json": _match_json,
}


def answers_match(rule: str, predicted: str, expected: str) -> bool:
    """Whether ``predicted`` is the ``expected`` answer under ``rule`` (see the module's table).

    Raises InvalidInputError for a rule not in :data:`MATCH_RULES`.
    """
    return _MATCHERS[check_rule(rule)](predicted, expected)
