"""Escalation records: what the cloud worked out for a query the edge sent it, as training data.

The cloud appends one JSON object per finished session to its escalation log (JSONL,
``edgecloud cloud serve --escalation-log``); ``edgecloud models improve`` reads the logs and
trains the next edge student on them. This module is the contract between the two::

    {"schema": 2, "request_id": ..., "device_id": ..., "query": ..., "answer": ...,
     "reasoning": "...", "reasoning_tokens": 57, "budget": 256, "budget_reached": false,
     "finish_reason": "stop", "status": "completed",
     "producer": {"name": "edgecloud-demo-student", "version": 5, "sha256": "..."},
     "edge": {"answer": "", "confidence": 0.0, "estimated_difficulty": 1.0},
     "features": [0.12, -0.3, ...], "created_at": "2026-11-24T16:00:00Z",
     "messages": [{"role": "system", "content": ...}, ..., {"role": "user", "content": <query>}]}

``producer`` is the edge model that escalated and ``edge`` what it said (its answer, empty when
it abstained, and its calibrated confidence), so the fleet can tell which student produced which
escalations. ``reasoning`` is the cloud's hidden reasoning, which a student can learn to follow.
``messages`` (schema 3) is the whole conversation the cloud answered when there was more to it than
the query (a system message, earlier turns); empty when the query was the whole request.
Schema 1 records (before ``reasoning``, ``edge``, ``budget``, ``finish_reason`` and ``status``)
still read, with those fields empty.

:func:`read_escalations` never trusts a line: a torn last line (a crash mid-write), a line that is
not JSON and a record that fails validation are each counted by reason and skipped.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.session import MAX_CONVERSATION_CHARS, MAX_MESSAGES, MAX_QUERY_CHARS, Message

__all__ = ["SCHEMA", "EdgeView", "Escalation", "ReadReport", "iter_escalations", "read_escalations"]

SCHEMA = 3
MAX_ANSWER_CHARS = 8192
MAX_REASONING_CHARS = 65536
MAX_FEATURES = 4096
MAX_LINE_BYTES = 1 << 20
"""A longer line is refused unread: no field of a valid record comes close."""
STATUSES = ("completed", "failed", "cancelled")


def _text(data: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string, got {type(value).__name__}")
    if required and not value:
        raise InvalidInputError(f"{name} is required")
    if len(value) > limit:
        raise InvalidInputError(f"{name} has {len(value)} characters; the limit is {limit}")
    return value


def _integer(data: dict[str, Any], name: str, default: int = 0) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _unit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


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
        if not isinstance(data, dict):
            raise InvalidInputError("edge must be an object")
        return cls(
            answer=_text(data, "answer", MAX_ANSWER_CHARS),
            confidence=_unit(data.get("confidence", 0.0), "edge.confidence"),
            estimated_difficulty=_unit(data.get("estimated_difficulty", 0.0), "edge.estimated_difficulty"),
        )


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
        """A validated record; InvalidInputError naming the first bad field."""
        if not isinstance(data, dict):
            raise InvalidInputError("a record must be a JSON object")
        schema = data.get("schema", 1)
        if schema not in range(1, SCHEMA + 1) or isinstance(schema, bool):
            raise InvalidInputError(f"schema {schema!r} is not one of 1..{SCHEMA}")
        budget_reached = data.get("budget_reached", False)
        if not isinstance(budget_reached, bool):
            raise InvalidInputError(f"budget_reached must be true or false, got {budget_reached!r}")
        producer = data.get("producer", {})
        if not isinstance(producer, dict) or not all(isinstance(k, str) for k in producer):
            raise InvalidInputError("producer must be an object")
        features = data.get("features", [])
        if (
            not isinstance(features, list)
            or len(features) > MAX_FEATURES
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in features)
        ):
            raise InvalidInputError(f"features must be a list of at most {MAX_FEATURES} finite numbers")
        status = data.get("status", "completed")
        if status not in STATUSES:
            raise InvalidInputError(f"status must be one of {STATUSES}, got {status!r}")
        edge = data.get("edge")
        return cls(
            request_id=_text(data, "request_id", 256, required=True),
            device_id=_text(data, "device_id", 256),
            query=_text(data, "query", MAX_QUERY_CHARS, required=True),
            answer=_text(data, "answer", MAX_ANSWER_CHARS),
            reasoning_tokens=_integer(data, "reasoning_tokens"),
            budget_reached=budget_reached,
            producer=dict(producer),
            features=[float(x) for x in features],
            created_at=_text(data, "created_at", 64),
            reasoning=_text(data, "reasoning", MAX_REASONING_CHARS),
            budget=_integer(data, "budget"),
            finish_reason=_text(data, "finish_reason", 32),
            status=status,
            edge=EdgeView.from_dict(edge) if edge is not None else None,
            messages=_messages(data.get("messages", [])),
            schema=SCHEMA,
        )


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or len(value) > MAX_MESSAGES:
        raise InvalidInputError(f"messages must be a list of at most {MAX_MESSAGES} chat messages")
    messages = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"role", "content"}:
            raise InvalidInputError(f"messages[{index}] must be an object with role and content")
        messages.append(Message(item["role"], item["content"]).to_dict())
    if sum(len(m["content"]) for m in messages) > MAX_CONVERSATION_CHARS:
        raise InvalidInputError(f"messages have more than {MAX_CONVERSATION_CHARS} characters")
    return messages


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
