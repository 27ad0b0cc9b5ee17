"""Domain objects of a cloud reasoning session, shared by the cloud service and the edge client.

These are plain, validated values. Their protobuf form (``edgecloud.v1``)
lives in :mod:`edgecloud.shared.wire`, and nothing else touches generated code.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgecloud.shared.errors import InvalidInputError

if TYPE_CHECKING:
    from edgecloud.shared.features import EncodedFeatures

__all__ = [
    "MAX_HINT_ANSWER_CHARS",
    "MAX_QUERY_CHARS",
    "MAX_REQUEST_ID_CHARS",
    "EdgeHint",
    "Event",
    "EventKind",
    "Failure",
    "SessionInfo",
    "SessionStatus",
    "ThinkParams",
    "Timings",
    "Usage",
    "normalize_text",
]

MAX_QUERY_CHARS = 8192
MAX_REQUEST_ID_CHARS = 128
MAX_HINT_ANSWER_CHARS = 1024
_ID_RE = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")


class SessionStatus(enum.IntEnum):
    """Values match ``edgecloud.v1.SessionStatus``."""

    QUEUED = 1
    THINKING = 2
    ANSWERING = 3
    COMPLETED = 4
    FAILED = 5
    CANCELLED = 6

    @property
    def finished(self) -> bool:
        return self in (SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class EdgeHint:
    confidence: float = 0.0
    """The edge's calibrated probability that its own answer is right."""
    estimated_difficulty: float = 0.0
    """0 (trivial) .. 1 (hard)."""
    answer: str = ""
    """The edge's own answer (empty: it abstained), recorded with the escalation for the next student."""

    def __post_init__(self) -> None:
        for name in ("confidence", "estimated_difficulty"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # also refuses NaN
                raise InvalidInputError(f"hint.{name} must be in [0, 1], got {value!r}")
        if len(self.answer) > MAX_HINT_ANSWER_CHARS:
            raise InvalidInputError(
                f"hint.answer has {len(self.answer)} characters; the limit is {MAX_HINT_ANSWER_CHARS}"
            )


def _check_id(value: str, name: str, *, required: bool) -> None:
    if not value:
        if required:
            raise InvalidInputError(f"{name} is required")
        return
    if not _ID_RE.fullmatch(value):
        raise InvalidInputError(
            f"{name} must be 1..{MAX_REQUEST_ID_CHARS} characters of [A-Za-z0-9._:@/-], got {value[:40]!r}"
        )


@dataclass(frozen=True, slots=True)
class ThinkParams:
    """What a client asks for when it creates a session."""

    request_id: str
    query: str
    device_id: str = ""
    features: EncodedFeatures | None = None
    hint: EdgeHint | None = None
    max_reasoning_tokens: int | None = None
    """0 = answer without thinking; None = the server picks a budget."""
    max_output_tokens: int = 0
    """0 = the server's default."""
    stream_reasoning: bool = False

    def __post_init__(self) -> None:
        _check_id(self.request_id, "request_id", required=True)
        _check_id(self.device_id, "device_id", required=False)
        if not self.query.strip():
            raise InvalidInputError("query is empty")
        if len(self.query) > MAX_QUERY_CHARS:
            raise InvalidInputError(f"query has {len(self.query)} characters; the limit is {MAX_QUERY_CHARS}")
        if "\x00" in self.query:
            raise InvalidInputError("query contains a NUL character")
        if self.max_reasoning_tokens is not None and self.max_reasoning_tokens < 0:
            raise InvalidInputError(f"max_reasoning_tokens must be >= 0, got {self.max_reasoning_tokens}")
        if self.max_output_tokens < 0:
            raise InvalidInputError(f"max_output_tokens must be >= 0, got {self.max_output_tokens}")


@dataclass(frozen=True, slots=True)
class Usage:
    """Every generated token is counted once: reasoning (strictly inside the
    think block, what the budget limits) or output (everything else)."""

    input_tokens: int = 0
    reasoning_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Timings:
    queue_ms: float = 0.0
    reasoning_ms: float = 0.0
    answer_ms: float = 0.0
    total_ms: float = 0.0
    first_answer_token_ms: float = 0.0
    prefill_ms: float = 0.0
    """Reading the prompt: from the session's start on the model to its first generated token."""


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    """Stable machine-readable code, e.g. ``CANCELLED``, ``ENGINE_ERROR``."""
    message: str


class EventKind(enum.Enum):
    ACCEPTED = "accepted"
    REASONING_PROGRESS = "reasoning_progress"
    REASONING_DELTA = "reasoning_delta"
    ANSWER_DELTA = "answer_delta"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (EventKind.COMPLETED, EventKind.FAILED)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a session's log. ``seq`` is 1, 2, 3, ... per session."""

    seq: int
    session_id: str
    kind: EventKind
    text: str = ""
    """Delta text (reasoning or answer deltas) or the final answer (completed)."""
    reasoning_tokens: int = 0
    """Progress count (reasoning_progress)."""
    reasoning_budget: int = 0
    model_name: str = ""
    model_version: int = 0
    queue_position: int = 0
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    cached: bool = False
    budget_reached: bool = False
    finish_reason: str = ""
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    request_id: str
    status: SessionStatus
    last_seq: int
    answer: str = ""
    usage: Usage = field(default_factory=Usage)
    model_name: str = ""
    model_version: int = 0
    cached: bool = False
    failure: Failure | None = None
    reasoning_budget: int = 0
    device_id: str = ""


_SPACES = re.compile(r"\s+")
_SPACE_NEAR_SYMBOL = re.compile(r" ?([^\w ]) ?")


def normalize_text(query: str) -> str:
    """The cache key text of a query: NFKC, case-folded, whitespace collapsed,
    and spaces next to punctuation or operators dropped.

    Spaces between two word characters are kept, so ``4 1-7`` and ``41-7``
    stay different: two different expressions never share a key.
    """
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", query).casefold()).strip()
    return _SPACE_NEAR_SYMBOL.sub(r"\1", text)
