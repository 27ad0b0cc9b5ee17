"""The dataset contract: round trips, and every kind of bad row refused naming its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.modelkit.data import datasets
from edgecloud.modelkit.data.datasets import Message, Row, read_dataset, read_rows, write_dataset
from edgecloud.shared.base.errors import InvalidInputError

CHAT = (
    Message("system", "You are terse."),
    Message("user", "hi"),
    Message("assistant", "hello"),
    Message("developer", "answer in digits"),
    Message("user", "what is 2+2?"),
)
ROWS = [
    Row(query="2+2", answer="4"),
    Row(query="what is 3*3?", answer="9", reasoning="3*3=9\n", group="k=1"),
    Row(messages=CHAT, answer="4", group="chat"),
    Row(query="naïve ☃", answer='{"a": [1, "é"]}'),
]


def _write(tmp_path: Path, **overrides: object) -> Path:
    kwargs: dict[str, object] = {"name": "toy", "answer_match": "number", "train": ROWS, "validation": ROWS[:1]}
    kwargs["test"] = ROWS[1:]
    return write_dataset(tmp_path / "data", **(kwargs | overrides))  # type: ignore[arg-type]


def test_a_dataset_round_trips(tmp_path: Path) -> None:
    path = _write(tmp_path, description="a toy")
    data = read_dataset(path)
    assert (data.name, data.answer_match, data.description) == ("toy", "number", "a toy")
    assert data.train == tuple(ROWS) and data.validation == (ROWS[0],) and data.test == tuple(ROWS[1:])
    assert data.split("test") == data.test
    assert sorted(p.name for p in path.iterdir()) == ["dataset.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    first = json.loads((path / "train.jsonl").read_text().splitlines()[0])
    assert first == {"query": "2+2", "answer": "4"}


def test_prompt_text_is_the_query_or_the_last_user_message() -> None:
    assert ROWS[0].prompt_text == "2+2"
    assert ROWS[2].prompt_text == "what is 2+2?"
    assert Row(messages=[{"role": "user", "content": "x"}], answer="y").messages == (Message("user", "x"),)


def test_without_dataset_json_the_name_is_the_folder_and_matching_exact(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (path / "dataset.json").unlink()
    data = read_dataset(path)
    assert (data.name, data.answer_match, data.description) == ("data", "exact", "")


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    file = tmp_path / "train.jsonl"
    file.write_text('\n{"query": "a", "answer": "b"}\r\n   \n{"query": "c", "answer": "d"}')
    assert [r.answer for r in read_rows(file)] == ["b", "d"]


BAD_ROWS = [
    ("[1, 2]", "a row must be a JSON object"),
    ("{", "not JSON"),
    ('{"query": "a", "answer": "b", "query": "c"}', "not JSON: duplicate key"),
    ('{"query": "a"}', "answer is required"),
    ('{"query": "a", "answer": 4}', "answer must be a string"),
    ('{"query": "a", "answer": "4", "label": "x"}', "unknown key 'label'"),
    ('{"answer": "4"}', "a row needs exactly one of query and messages"),
    (
        '{"query": "a", "messages": [{"role": "user", "content": "a"}], "answer": "4"}',
        "a row needs exactly one of query and messages",
    ),
    ('{"query": "  ", "answer": "4"}', "query must be a non-empty string"),
    ('{"query": 7, "answer": "4"}', "query must be a non-empty string"),
    ('{"messages": [], "answer": "4"}', "messages must be a non-empty list"),
    ('{"messages": "hi", "answer": "4"}', "messages must be a non-empty list"),
    ('{"messages": ["hi"], "answer": "4"}', r"messages\[0\] must be an object"),
    ('{"messages": [{"role": "user"}], "answer": "4"}', r"messages\[0\] must have exactly the keys role and content"),
    (
        '{"messages": [{"role": "user", "content": "a", "name": "x"}], "answer": "4"}',
        r"messages\[0\] must have exactly the keys",
    ),
    ('{"messages": [{"role": "robot", "content": "a"}], "answer": "4"}', r"messages\[0\]: message role must be one of"),
    (
        '{"messages": [{"role": "user", "content": 1}], "answer": "4"}',
        r"messages\[0\]: message content must be text",
    ),
    (
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "answer": "4"}',
        "the last message must be a user message",
    ),
    ('{"messages": [{"role": "user", "content": " "}], "answer": "4"}', "the last message's content must not be empty"),
    ('{"query": "a", "answer": "4", "reasoning": 1}', "reasoning must be a string"),
    ('{"query": "a", "answer": "4", "group": 1}', "group must be a string"),
    ('{"query": "a", "answer": "4", "group": ""}', "group must not be empty"),
]


@pytest.mark.parametrize(("line", "message"), BAD_ROWS)
def test_a_bad_row_is_refused_naming_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path)
    good = (path / "validation.jsonl").read_text()
    (path / "validation.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(InvalidInputError, match=rf"validation\.jsonl:3: {message}"):
        read_dataset(path)


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    file = tmp_path / "test.jsonl"
    file.write_bytes(b'{"query": "a", "answer": "b"}\n{"query": "\xff", "answer": "b"}\n')
    with pytest.raises(InvalidInputError, match=r"test\.jsonl:2: not UTF-8"):
        read_rows(file)


def test_a_line_over_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "MAX_LINE_BYTES", 40)
    file = tmp_path / "train.jsonl"
    file.write_text('{"query": "a", "answer": "b"}\n{"query": "' + "x" * 100 + '", "answer": "b"}\n')
    with pytest.raises(InvalidInputError, match=r"train\.jsonl:2: line longer than 40 bytes"):
        read_rows(file)
    with pytest.raises(InvalidInputError, match=r"train\.jsonl:1: row longer than 40 bytes"):
        _write(tmp_path, train=[Row(query="x" * 100, answer="b")])


def test_too_many_rows_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "MAX_ROWS", 2)
    file = tmp_path / "train.jsonl"
    file.write_text('{"query": "a", "answer": "b"}\n' * 3)
    with pytest.raises(InvalidInputError, match=r"train\.jsonl:3: more than 2 rows"):
        read_rows(file)


@pytest.mark.parametrize("split", datasets.SPLITS)
def test_every_split_is_required(tmp_path: Path, split: str) -> None:
    path = _write(tmp_path)
    (path / f"{split}.jsonl").unlink()
    with pytest.raises(InvalidInputError, match=rf"missing {split}\.jsonl \(a dataset needs all three splits\)"):
        read_dataset(path)


def test_an_empty_split_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (path / "test.jsonl").write_text("\n")
    with pytest.raises(InvalidInputError, match=r"test\.jsonl: no rows"):
        read_dataset(path)
    with pytest.raises(InvalidInputError, match="validation: no rows"):
        _write(tmp_path, validation=[])


def test_a_missing_folder_or_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a dataset folder"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match=r"train\.jsonl: missing"):
        read_rows(tmp_path / "train.jsonl")


BAD_META = [
    ("{", "dataset.json: not readable JSON"),
    ("[]", "dataset.json: must be a JSON object"),
    ('{"name": "x", "answer-match": "json"}', "dataset.json: unknown key 'answer-match'"),
    ('{"answer_match": "fuzzy"}', "dataset.json: answer_match must be one of exact, number, json"),
    ('{"name": ""}', "dataset.json: name must be a non-empty string"),
    ('{"description": 3}', "dataset.json: description must be a string"),
]


@pytest.mark.parametrize(("text", "message"), BAD_META)
def test_a_bad_dataset_json_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path)
    (path / "dataset.json").write_text(text)
    with pytest.raises(InvalidInputError, match=message):
        read_dataset(path)


def test_writing_checks_its_arguments_and_replaces_files_whole(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="answer_match must be one of"):
        _write(tmp_path, answer_match="fuzzy")
    with pytest.raises(InvalidInputError, match="name must be a non-empty string"):
        _write(tmp_path, name=" ")
    path = _write(tmp_path)
    _write(tmp_path, train=ROWS[:2], answer_match="json")
    data = read_dataset(path)
    assert data.train == tuple(ROWS[:2]) and data.answer_match == "json"
    assert not [p for p in path.iterdir() if p.name.startswith(".")]
