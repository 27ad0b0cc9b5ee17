"""The dataset contract: what the model kit learns from and is measured on.

A dataset is a folder::

    train.jsonl        one row a line; all three splits are required, each with at least one row
    validation.jsonl
    test.jsonl
    dataset.json       optional: {"name": ..., "answer_match": "exact"|"number"|"json", "description": ...}

A row is a JSON object with exactly one of ``query`` (a non-empty string) or ``messages`` (OpenAI
chat messages: a non-empty list of ``{"role": "system"|"user"|"assistant"|"developer",
"content": str}`` ending with a user message), ``answer`` (a string, required), and optionally
``reasoning`` (the scratchpad a teacher trained on the data learns) and ``group`` (what reports
break down by). Any other key is refused. ``answer_match`` (default ``exact``) is the rule of
:mod:`edgecloud.shared.bundles.answers` that says when a predicted answer is right; ``name`` defaults to
the folder's name.

Everything is validated on read; an error is an ``InvalidInputError`` naming the file and line
(``train.jsonl:12: answer must be a string``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.bundles.answers import DEFAULT_RULE, check_rule
from edgecloud.shared.reasoner.session import ROLES, Message

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_ROWS",
    "META_FILE",
    "ROLES",
    "SPLITS",
    "Dataset",
    "Message",
    "Row",
    "read_dataset",
    "read_rows",
    "write_dataset",
]

SPLITS = ("train", "validation", "test")
META_FILE = "dataset.json"
MAX_LINE_BYTES = 1 << 20
"""The longest row a file may hold, in bytes of UTF-8 (newline excluded)."""
MAX_ROWS = 5_000_000
"""The most rows one split may hold."""
_ROW_KEYS = ("query", "messages", "answer", "reasoning", "group")
_META_KEYS = ("name", "answer_match", "description")


def _message(obj: object, index: int) -> Message:
    """A row's ``messages[index]``, validated as the wire's chat message is (one class for both)."""
    if not isinstance(obj, dict):
        raise InvalidInputError(f"messages[{index}] must be an object")
    if set(obj) != {"role", "content"}:
        raise InvalidInputError(f"messages[{index}] must have exactly the keys role and content")
    try:
        return Message(role=obj["role"], content=obj["content"])
    except InvalidInputError as exc:
        raise InvalidInputError(f"messages[{index}]: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One example: a query or a conversation, its answer, and optionally reasoning and a group."""

    query: str | None = None
    messages: tuple[Message, ...] | None = None
    answer: str
    reasoning: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if (self.query is None) == (self.messages is None):
            raise InvalidInputError("a row needs exactly one of query and messages")
        if self.query is not None and (not isinstance(self.query, str) or not self.query.strip()):
            raise InvalidInputError("query must be a non-empty string")
        if self.messages is not None:
            if not isinstance(self.messages, (list, tuple)) or not self.messages:
                raise InvalidInputError("messages must be a non-empty list")
            messages = tuple(m if isinstance(m, Message) else _message(m, i) for i, m in enumerate(self.messages))
            object.__setattr__(self, "messages", messages)
            if self.messages[-1].role != "user":
                raise InvalidInputError("the last message must be a user message")
            if not self.messages[-1].content.strip():
                raise InvalidInputError("the last message's content must not be empty")
        if not isinstance(self.answer, str):
            raise InvalidInputError("answer must be a string")
        for name in ("reasoning", "group"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise InvalidInputError(f"{name} must be a string")
        if self.group == "":
            raise InvalidInputError("group must not be empty")

    @property
    def prompt_text(self) -> str:
        """The query, or the content of the conversation's last (user) message."""
        return self.query if self.query is not None else self.messages[-1].content  # type: ignore[index]

    @classmethod
    def from_dict(cls, obj: object) -> Row:
        """A row from one parsed JSON line; raises InvalidInputError saying what is wrong."""
        if not isinstance(obj, dict):
            raise InvalidInputError("a row must be a JSON object")
        unknown = sorted(set(obj) - set(_ROW_KEYS))
        if unknown:
            raise InvalidInputError(f"unknown key {unknown[0]!r} (a row has {', '.join(_ROW_KEYS)})")
        if "answer" not in obj:
            raise InvalidInputError("answer is required")
        return cls(**{key: obj.get(key) for key in _ROW_KEYS})

    def to_dict(self) -> dict[str, Any]:
        """The row's JSON form (absent fields left out)."""
        out: dict[str, Any] = {}
        if self.query is not None:
            out["query"] = self.query
        if self.messages is not None:
            out["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        out["answer"] = self.answer
        if self.reasoning is not None:
            out["reasoning"] = self.reasoning
        if self.group is not None:
            out["group"] = self.group
        return out


@dataclass(frozen=True, slots=True)
class Dataset:
    """A validated dataset folder."""

    path: Path
    name: str
    answer_match: str
    train: tuple[Row, ...]
    validation: tuple[Row, ...]
    test: tuple[Row, ...]
    description: str = ""

    def split(self, name: str) -> tuple[Row, ...]:
        if name not in SPLITS:
            raise InvalidInputError(f"unknown split {name!r} (splits: {', '.join(SPLITS)})")
        return getattr(self, name)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in an object")
    return out


def _parse_line(raw: bytes) -> Row:
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise InvalidInputError("not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"not JSON: {exc}") from None
    return Row.from_dict(obj)


def read_rows(file: Path | str) -> list[Row]:
    """The rows of one JSONL file (blank lines skipped); raises InvalidInputError ``file:line: ...``."""
    file = Path(file)
    rows: list[Row] = []
    try:
        handle = file.open("rb")
    except FileNotFoundError:
        raise InvalidInputError(f"{file}: missing (a dataset has {', '.join(f'{s}.jsonl' for s in SPLITS)})") from None
    except OSError as exc:
        raise InvalidInputError(f"{file}: unreadable: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 2), b""), start=1):
            line = raw.rstrip(b"\r\n")
            if len(line) > MAX_LINE_BYTES:
                raise InvalidInputError(f"{file}:{number}: line longer than {MAX_LINE_BYTES} bytes")
            if not line.strip():
                continue
            if len(rows) == MAX_ROWS:
                raise InvalidInputError(f"{file}:{number}: more than {MAX_ROWS} rows")
            try:
                rows.append(_parse_line(line))
            except InvalidInputError as exc:
                raise InvalidInputError(f"{file}:{number}: {exc}") from None
    return rows


def _read_meta(folder: Path) -> dict[str, str]:
    meta_path = folder / META_FILE
    meta: dict[str, str] = {"name": folder.resolve().name, "answer_match": DEFAULT_RULE, "description": ""}
    if not meta_path.exists():
        return meta
    try:
        obj = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{meta_path}: not readable JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{meta_path}: must be a JSON object")
    unknown = sorted(set(obj) - set(_META_KEYS))
    if unknown:
        raise InvalidInputError(f"{meta_path}: unknown key {unknown[0]!r} (it may have {', '.join(_META_KEYS)})")
    for key in _META_KEYS:
        if key in obj and (not isinstance(obj[key], str) or (key == "name" and not obj[key].strip())):
            raise InvalidInputError(f"{meta_path}: {key} must be a {'non-empty ' if key == 'name' else ''}string")
    try:
        check_rule(obj.get("answer_match", DEFAULT_RULE))
    except InvalidInputError as exc:
        raise InvalidInputError(f"{meta_path}: {exc}") from None
    return meta | obj


def read_dataset(path: Path | str) -> Dataset:
    """Read and validate the dataset folder at ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(f"{path}: not a dataset folder (no such directory)")
    missing = [f"{s}.jsonl" for s in SPLITS if not (path / f"{s}.jsonl").is_file()]
    if missing:
        raise InvalidInputError(f"{path}: missing {', '.join(missing)} (a dataset needs all three splits)")
    meta = _read_meta(path)
    splits = {}
    for split in SPLITS:
        rows = read_rows(path / f"{split}.jsonl")
        if not rows:
            raise InvalidInputError(f"{path / f'{split}.jsonl'}: no rows (every split needs at least one)")
        splits[split] = tuple(rows)
    return Dataset(path=path, **meta, **splits)


def _write_atomically(target: Path, lines: Iterable[str]) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _lines(rows: Sequence[Row], split: str) -> Iterable[str]:
    for number, row in enumerate(rows, start=1):
        line = json.dumps(row.to_dict(), ensure_ascii=False)
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            raise InvalidInputError(f"{split}.jsonl:{number}: row longer than {MAX_LINE_BYTES} bytes")
        yield line


def write_dataset(
    path: Path | str,
    *,
    name: str,
    answer_match: str,
    train: Sequence[Row],
    validation: Sequence[Row],
    test: Sequence[Row],
    description: str = "",
) -> Path:
    """Write a dataset folder (created if needed); each file is written to a temporary file, then renamed."""
    path = Path(path)
    check_rule(answer_match)
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("name must be a non-empty string")
    splits: Mapping[str, Sequence[Row]] = {"train": train, "validation": validation, "test": test}
    for split, rows in splits.items():
        if not rows:
            raise InvalidInputError(f"{split}: no rows (every split needs at least one)")
        if len(rows) > MAX_ROWS:
            raise InvalidInputError(f"{split}: more than {MAX_ROWS} rows")
    path.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        _write_atomically(path / f"{split}.jsonl", _lines(rows, split))
    meta = {"name": name, "answer_match": answer_match, "description": description}
    _write_atomically(path / META_FILE, [json.dumps(meta, ensure_ascii=False, indent=2)])
    return path
