"""``parse_document``: a document's model refuses in one line that names the field, with the
caller's own error class; strict (no bool for an int, no NaN), closed (no unknown field)."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import AfterValidator, Field, TypeAdapter

from edgecloud.shared.base.documents import Document, PartRefused, parse_document
from edgecloud.shared.base.errors import InvalidInputError, ManifestError


def _tokenizer(path: str) -> str:
    if path.startswith("/"):
        raise ValueError(f"must be relative, got {path!r}")
    return path


class Section(Document):
    tokenizer: Annotated[str, AfterValidator(_tokenizer)]
    graphs: dict[str, str] = Field(default_factory=dict)


class Doc(Document):
    version: Annotated[int, Field(ge=1)]
    score: float = 0.0
    online: bool = False
    name: Annotated[str, Field(max_length=8)] = ""
    items: list[Section] = Field(default_factory=list)
    reasoner: Section | None = None


def test_a_well_formed_document_parses() -> None:
    doc = parse_document(Doc, {"version": 2, "score": 3, "items": [{"tokenizer": "t.json"}]}, ManifestError)
    assert doc.version == 2 and doc.score == 3.0 and isinstance(doc.score, float)
    assert doc.items[0].tokenizer == "t.json" and doc.items[0].graphs == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": True}, "version: expected an integer, got True"),
        ({"version": 1.0}, "version: expected an integer, got 1.0"),
        ({"version": "1"}, "version: expected an integer, got '1'"),
        ({"version": 0}, "version: must be >= 1, got 0"),
        ({}, "version: missing"),
        ({"version": 1, "extra": 1}, "extra: unknown field"),
        ({"version": 1, "score": float("nan")}, "score: expected a finite number, got nan"),
        ({"version": 1, "score": float("inf")}, "score: expected a finite number, got inf"),
        ({"version": 1, "score": True}, "score: expected a number, got True"),
        ({"version": 1, "online": 1}, "online: expected true or false, got 1"),
        ({"version": 1, "name": "x" * 9}, "name: must have at most 8 characters, got 'xxxxxxxxx'"),
        ({"version": 1, "items": {}}, "items: expected a list, got dict"),
        ({"version": 1, "items": [{"tokenizer": "a"}, 3]}, "items[1]: expected an object, got int"),
        (
            {"version": 1, "items": [{"tokenizer": "/etc/passwd"}]},
            "items[0].tokenizer: must be relative, got '/etc/passwd'",
        ),
        ({"version": 1, "reasoner": []}, "reasoner: expected an object, got list"),
        (
            {"version": 1, "reasoner": {"tokenizer": "t", "graphs": {"a": 7}}},
            "reasoner.graphs.a: expected a string, got 7",
        ),
        (
            {"version": 1, "reasoner": {"tokenizer": "t", "graphs": {1: "a"}}},
            "reasoner.graphs[1]: expected a string, got 1",
        ),
        ([], "expected an object, got list"),
    ],
)
def test_a_refusal_names_the_field_and_the_reason(data: Any, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_document(Doc, data, ManifestError)
    assert str(caught.value) == message


def test_the_path_goes_under_where_and_the_error_class_is_the_callers() -> None:
    with pytest.raises(InvalidInputError, match=r"^cmd\.bundle\.version: missing$"):
        parse_document(Doc, {}, InvalidInputError, where="cmd.bundle")
    with pytest.raises(InvalidInputError, match=r"^cmd: expected an object, got str$"):
        parse_document(Doc, "x", InvalidInputError, where="cmd")


def _no_secrets(io: dict[str, str]) -> dict[str, str]:
    if "secret" in io:
        raise PartRefused("secret", "must not be listed")
    return io


class Holder(Document):
    io: Annotated[dict[str, str], AfterValidator(_no_secrets)]


def test_a_check_that_refuses_a_part_of_its_field_names_the_part() -> None:
    with pytest.raises(ManifestError, match=r"^io\.secret: must not be listed$"):
        parse_document(Holder, {"io": {"secret": "x"}}, ManifestError)
    with pytest.raises(InvalidInputError, match=r"^cmd\.io\.secret: must not be listed$"):
        parse_document(Holder, {"io": {"secret": "x"}}, InvalidInputError, where="cmd")
    assert parse_document(Holder, {"io": {"a": "b"}}, ManifestError).io == {"a": "b"}


def test_a_type_adapter_validates_too() -> None:
    adapter = TypeAdapter(list[Annotated[int, Field(ge=0)]], config={"strict": True})
    assert parse_document(adapter, [0, 3], ManifestError) == [0, 3]
    with pytest.raises(ManifestError, match=r"^features\[1\]: expected an integer, got False$"):
        parse_document(adapter, [0, False], ManifestError, where="features")


def test_a_long_refused_value_is_shortened() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_document(Doc, {"version": "x" * 10_000}, ManifestError)
    assert len(str(caught.value)) < 100


def test_a_parsed_document_is_frozen() -> None:
    doc = parse_document(Doc, {"version": 1}, ManifestError)
    with pytest.raises(ValueError, match="frozen"):
        doc.version = 2  # type: ignore[misc]


def test_anything_but_a_model_or_an_adapter_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        parse_document(dict, {}, ManifestError)  # type: ignore[arg-type]
