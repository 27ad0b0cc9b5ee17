"""Escalation records: what the cloud worked out for a query the edge sent it, as training data.

The cloud appends one JSON object per finished session to its escalation log (JSONL,
``edgecloud cloud serve --escalation-log``); ``edgecloud models improve`` reads the logs and
trains the next edge student on them. This module is the contract between the two::

    {"schema": 2, "request_id": ..., "device_id": ..., "query": ..., "answer": ...,
     "reasoning": "...", "reasoning_tokens": 57, "budget": 256, "budget_reached": false,
     "finish_reason": "stop", "status": "completed", "kind": "escalation",
     "producer": {"name": "edgecloud-demo-student", "version": 5, "sha256": "..."},
     "edge": {"answer": "", "confidence": 0.0, "estimated_difficulty": 1.0},
     "features": [0.12, -0.3, ...], "created_at": "2026-11-24T16:00:00Z",
     "messages": [{"role": "system", "content": ...}, ..., {"role": "user", "content": <query>}]}

``producer`` is the edge model that escalated and ``edge`` what it said (its answer, empty when
it abstained, and its calibrated confidence), so the fleet can tell which student produced which
escalations. ``reasoning`` is the cloud's hidden reasoning, which a student can learn to follow.
``messages`` (schema 3) is the whole conversation the cloud answered when there was more to it than
the query (a system message, earlier turns); empty when the query was the whole request.
``kind`` (schema 4) is ``escalation`` or ``shadow_check``: a device's check of an answer it kept
(its answer is ``edge.answer``; the cloud's is ``answer``), sent at low priority.
Schema 1 records (before ``reasoning``, ``edge``, ``budget``, ``finish_reason`` and ``status``)
still read, with those fields empty.

:func:`read_escalations` never trusts a line: a torn last line (a crash mid-write), a line that is
not JSON and a record that fails validation are each counted by reason and skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, ConfigDict, Field

from edgecloud.shared.base.documents import Document, parse_document
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.session import MAX_CONVERSATION_CHARS, MAX_MESSAGES, MAX_QUERY_CHARS, Message

__all__ = ["SCHEMA", "EdgeView", "Escalation", "ReadReport", "iter_escalations", "read_escalations"]

SCHEMA = 4
MAX_ANSWER_CHARS = 8192
MAX_REASONING_CHARS = 65536
MAX_FEATURES = 4096
MAX_LINE_BYTES = 1 << 20
"""A longer line is refused unread: no field of a valid record comes close."""
_Status = Literal["completed", "failed", "cancelled"]
_Kind = Literal["escalation", "shadow_check"]
STATUSES = get_args(_Status)
_Unit = Annotated[float, Field(ge=0.0, le=1.0)]
_Count = Annotated[int, Field(ge=0)]
_Id = Annotated[str, Field(min_length=1, max_length=256)]
_Query = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
_Answer = Annotated[str, Field(max_length=MAX_ANSWER_CHARS)]


class _Lenient(Document):
    """A record's part: strict and finite; unknown fields ignored (a newer cloud may write more)."""

    model_config = ConfigDict(extra="ignore")


class _EdgeRecord(_Lenient):
    answer: _Answer = ""
    confidence: _Unit = 0.0
    estimated_difficulty: _Unit = 0.0


class _ChatMessage(Document):
    """One turn of the conversation: exactly ``role`` and ``content``."""

    role: str
    content: str


def _chat(item: _ChatMessage) -> dict[str, str]:
    try:
        return Message(item.role, item.content).to_dict()
    except InvalidInputError as exc:
        raise ValueError(str(exc)) from None


def _conversation(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if sum(len(m["content"]) for m in messages) > MAX_CONVERSATION_CHARS:
        raise ValueError(f"more than {MAX_CONVERSATION_CHARS} characters in all")
    return messages


class _Record(_Lenient):
    """The shape of a record's JSON object."""

    schema_version: int = Field(1, alias="schema", ge=1, le=SCHEMA)
    request_id: _Id
    device_id: Annotated[str, Field(max_length=256)] = ""
    query: _Query
    answer: _Answer = ""
    reasoning_tokens: _Count = 0
    budget_reached: bool = False
    producer: dict[str, Any] = Field(default_factory=dict)
    features: list[float] = Field(default_factory=list, max_length=MAX_FEATURES)
    created_at: Annotated[str, Field(max_length=64)] = ""
    reasoning: Annotated[str, Field(max_length=MAX_REASONING_CHARS)] = ""
    budget: _Count = 0
    finish_reason: Annotated[str, Field(max_length=32)] = ""
    status: _Status = "completed"
    kind: _Kind = "escalation"
    edge: _EdgeRecord | None = None
    messages: Annotated[
        list[Annotated[_ChatMessage, AfterValidator(_chat)]],
        Field(max_length=MAX_MESSAGES),
        AfterValidator(_conversation),
    ] = Field(default_factory=list)


@dataclass(frozen=True)
class EdgeView:
    """What the edge said before it escalated."""

    answer: str = ""
    """Its answer; empty when it abstained."""
    confidence: float = 0.0
    """Its calibrated probability that ``answer`` is right."""
    estimated_difficulty: float = 0.0

    @classmethod
    def from_dict(cls, data: Any) -> EdgeView:
        return cls(**vars(parse_document(_EdgeRecord, data, InvalidInputError, where="edge")))


@dataclass(frozen=True)
class Escalation:
    request_id: str
    device_id: str
    query: str
    answer: str
    reasoning_tokens: int
    budget_reached: bool
    producer: dict[str, object]
    """The edge model that escalated: ``name``, ``version``, ``sha256``."""
    features: list[float]
    created_at: str
    reasoning: str = ""
    """The cloud's reasoning (empty when it was not recorded)."""
    budget: int = 0
    """The thinking budget the session had (0: not recorded)."""
    finish_reason: str = ""
    """``stop``, or ``length`` when the answer was cut at its token limit."""
    status: str = "completed"
    kind: str = "escalation"
    """``escalation``: the edge sent the query on; ``shadow_check``: the edge kept its answer
    (``edge.answer``) and asked the cloud to verify it (a verification session)."""
    edge: EdgeView | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    """The conversation (OpenAI chat messages, the last being the user's query); empty: the query alone."""
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["edge"] = asdict(self.edge) if self.edge is not None else None
        return data

    @property
    def producer_name(self) -> str:
        return str(self.producer.get("name", ""))

    @property
    def producer_version(self) -> int:
        version = self.producer.get("version", 0)
        return version if isinstance(version, int) else 0

    @classmethod
    def from_dict(cls, data: Any) -> Escalation:
        """A validated record (its shape: ``_Record``); InvalidInputError naming the first bad field."""
        record = parse_document(_Record, data, InvalidInputError)
        fields = {name: value for name, value in vars(record).items() if name != "schema_version"}
        fields["producer"] = dict(record.producer)
        fields["edge"] = EdgeView(**vars(record.edge)) if record.edge is not None else None
        return cls(**fields, schema=SCHEMA)


@dataclass
class ReadReport:
    """What reading the logs found: records read, and lines skipped by reason."""

    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    """One ``file:line: message`` per reason, for the log."""

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)


def read_escalations(paths: Path | list[Path], report: ReadReport | None = None) -> list[Escalation]:
    """Every valid record of the logs, in file order; what is skipped is counted in ``report``."""
    return list(iter_escalations(paths, report if report is not None else ReadReport()))


def iter_escalations(paths: Path | list[Path], report: ReadReport) -> Iterator[Escalation]:
    """:func:`read_escalations`, one record at a time."""
    for path in [paths] if isinstance(paths, Path) else paths:
        with Path(path).open("rb") as f:
            for number, raw in enumerate(f, 1):
                where = f"{path}:{number}"
                if len(raw) > MAX_LINE_BYTES:
                    report.skip("line too long", where)
                    continue
                if not raw.strip():
                    continue
                try:
                    data = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    report.skip("not JSON", f"{where}: {exc}")
                    continue
                try:
                    record = Escalation.from_dict(data)
                except InvalidInputError as exc:
                    report.skip("invalid record", f"{where}: {exc}")
                    continue
                report.read += 1
                yield record
