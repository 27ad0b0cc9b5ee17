"""Answer matching: one table per rule, each case ``(predicted, expected, matches)``."""

from __future__ import annotations

import pytest

from edgecloud.shared.base.errors import InvalidInputError, ManifestError
from edgecloud.shared.bundles.answers import MATCH_RULES, answers_match, check_rule, rule_of

EXACT = [
    ("Paris", "Paris", True),
    ("  paris \n", "Paris", True),
    ("New   York\tCity", "new york city", True),
    ("STRASSE", "straße", True),  # casefold, not lower
    ("", "", True),
    ("   ", "", True),
    ("Paris.", "Paris", False),
    ("NewYork", "New York", False),
    ("42", "42.0", False),
]

NUMBER = [
    ("42", "42", True),
    (" 42 ", "42", True),
    ("42.", "42", True),
    ("+42", "42", True),
    ("42.0", "42", True),
    ("42.50", "42.5", True),
    ("-7", "-7", True),
    ("-7.", "-7.000", True),
    (".5", "0.5", True),
    ("-0", "0", True),
    ("123456789012345678901234567890", "123456789012345678901234567890.0", True),
    ("0.1", "0.10000000000000001", False),  # exact decimals, no float rounding
    ("42", "43", False),
    ("-42", "42", False),
    ("forty-two", "42", False),
    ("42 apples", "42", False),
    ("4 2", "42", False),
    ("1,000", "1000", False),
    ("1e3", "1000", False),
    ("42..", "42", False),
    ("", "", False),
    ("nan", "nan", False),
    ("abc", "abc", False),
]

JSON = [
    ('{"a": 1, "b": [1, 2]}', '{"b":[1,2],"a":1}', True),
    ('{"a": 1}', '{"a": 1.0}', True),
    ("[1, 2]", "[2, 1]", False),
    ('{"a": 1}', '{"a": 1, "b": null}', False),
    ('{"a": true}', '{"a": 1}', False),
    ("false", "0", False),
    ("null", "null", True),
    ('"x"', '"x"', True),
    ('"x"', "x", False),
    (
        '{"actions": [{"device": "light", "room": "kitchen", "action": "on"}]}',
        '{"actions":[{"action":"on","device":"light","room":"kitchen"}]}',
        True,
    ),
    ('{"a": [{"b": 2}]}', '{"a": [{"b": 3}]}', False),
    ('{"a": "1"}', '{"a": 1}', False),
    ("[]", "{}", False),
    ("{", "{", False),
    ("", "", False),
    ("NaN", "NaN", False),
    ("Infinity", "Infinity", False),
    ("0.1", "0.10000000000000001", False),
]


@pytest.mark.parametrize(("predicted", "expected", "matches"), EXACT)
def test_exact(predicted: str, expected: str, matches: bool) -> None:
    assert answers_match("exact", predicted, expected) is matches
    assert answers_match("exact", expected, predicted) is matches


@pytest.mark.parametrize(("predicted", "expected", "matches"), NUMBER)
def test_number(predicted: str, expected: str, matches: bool) -> None:
    assert answers_match("number", predicted, expected) is matches
    assert answers_match("number", expected, predicted) is matches


@pytest.mark.parametrize(("predicted", "expected", "matches"), JSON)
def test_json(predicted: str, expected: str, matches: bool) -> None:
    assert answers_match("json", predicted, expected) is matches
    assert answers_match("json", expected, predicted) is matches


def test_deeply_nested_json_does_not_match_rather_than_crash() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert answers_match("json", deep, deep) is False


@pytest.mark.parametrize("rule", MATCH_RULES)
def test_check_rule_accepts_every_rule(rule: str) -> None:
    assert check_rule(rule) == rule


@pytest.mark.parametrize("rule", ["EXACT", "fuzzy", "", None, 1])
def test_a_bad_rule_is_refused_naming_the_allowed_ones(rule: object) -> None:
    with pytest.raises(InvalidInputError, match="must be one of exact, number, json"):
        check_rule(rule)
    with pytest.raises(InvalidInputError, match="must be one of exact, number, json"):
        answers_match(rule, "a", "a")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("io", "rule"),
    [({}, "exact"), ({"answer_match": "exact"}, "exact"), ({"answer_match": "number"}, "number"),
     ({"answer_match": "json", "tokenizer": "x"}, "json")],
)  # fmt: skip
def test_rule_of_reads_the_manifest_io(io: dict[str, object], rule: str) -> None:
    assert rule_of(io) == rule


@pytest.mark.parametrize("bad", ["fuzzy", None, ["exact"]])
def test_rule_of_refuses_a_bad_declaration_as_a_manifest_error(bad: object) -> None:
    with pytest.raises(ManifestError, match=r"io\.answer_match: answer_match must be one of exact, number, json"):
        rule_of({"answer_match": bad})
