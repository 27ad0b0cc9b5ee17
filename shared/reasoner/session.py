"""Domain objects of a cloud reasoning session, shared by the cloud service and the edge client.

These are plain, validated values. Their protobuf form (``edgecloud.v1``)
lives in :mod:`edgecloud.shared.reasoner.wire`, and nothing else touches generated code.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgecloud.shared.base.errors import InvalidInputError

if TYPE_CHECKING:
    from edgecloud.shared.reasoner.features import EncodedFeatures

__all__ = [
    "MAX_CONVERSATION_CHARS",
    "MAX_HINT_ANSWER_CHARS",
    "MAX_MESSAGES",
    "MAX_QUERY_CHARS",
    "MAX_REQUEST_ID_CHARS",
    "PRIORITIES",
    "ROLES",
    "ROUTES",
    "EdgeHint",
    "Event",
    "EventKind",
    "Failure",
    "Message",
    "Sampling",
    "SessionInfo",
    "SessionStatus",
    "ThinkParams",
    "Timings",
    "Usage",
    "conversation_key",
    "normalize_text",
]

MAX_QUERY_CHARS = 8192
MAX_REQUEST_ID_CHARS = 128
MAX_HINT_ANSWER_CHARS = 1024
MAX_MESSAGES = 256
MAX_CONVERSATION_CHARS = 65_536
"""All of a conversation's messages together; a longer one is refused, never cut."""
ROLES = ("system", "developer", "user", "assistant")
ROUTES = ("auto", "edge", "cloud")
PRIORITIES = ("interactive", "verification")
MAX_SEED = (1 << 63) - 1
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
class Message:
    """One turn of a conversation, as OpenAI's chat messages have it (text content only)."""

    role: str
    """``system``, ``developer``, ``user`` or ``assistant``."""
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidInputError(f"message role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise InvalidInputError(f"message content must be text, got {type(self.content).__name__}")
        if "\x00" in self.content:
            raise InvalidInputError("a message contains a NUL character")

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the next token is picked. A field left None takes the model's default (its
    ``generation_config.json``); ``temperature == 0`` is greedy decoding."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    """With a seed, the same request samples the same text (a re-run after a restart too)."""

    def __post_init__(self) -> None:
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:  # also refuses NaN
            raise InvalidInputError(f"temperature must be in [0, 2], got {self.temperature!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise InvalidInputError(f"seed must be in [0, 2**63 - 1], got {self.seed!r}")

    @property
    def unset(self) -> bool:
        return self.temperature is None and self.top_p is None and self.seed is None


def _check_conversation(messages: tuple[Message, ...], query: str) -> None:
    if len(messages) > MAX_MESSAGES:
        raise InvalidInputError(f"the conversation has {len(messages)} messages; the limit is {MAX_MESSAGES}")
    if not all(isinstance(m, Message) for m in messages):
        raise InvalidInputError("messages must be Message objects")
    if messages[-1].role != "user" or messages[-1].content != query:
        raise InvalidInputError("the conversation must end with the user message that is the query")
    total = sum(len(m.content) for m in messages)
    if total > MAX_CONVERSATION_CHARS:
        raise InvalidInputError(
            f"the conversation has {total} characters; the limit is {MAX_CONVERSATION_CHARS} (nothing is cut: "
            "send fewer or shorter messages)"
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
    messages: tuple[Message, ...] = ()
    """The whole conversation (system, earlier turns, and last the user message that is ``query``);
    empty: ``query`` alone is the conversation."""
    sampling: Sampling = field(default_factory=Sampling)
    requested_route: str = "auto"
    """The route the caller asked for. ``cloud``: the caller chose the cloud, so the edge's view of
    the query never lowers the thinking budget below the server's default."""
    priority: str = "interactive"
    """``interactive`` (a user waits) or ``verification`` (a shadow check of an answer the edge kept,
    its answer in ``hint``): the cloud runs verification behind interactive work and refuses it first,
    and never gives it less than its default thinking budget (the edge's confidence in the answer
    being checked must not shrink the session that judges it)."""

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
        if self.messages:
            _check_conversation(self.messages, self.query)
        if self.requested_route not in ROUTES:
            raise InvalidInputError(f"requested_route must be one of {', '.join(ROUTES)}, got {self.requested_route!r}")
        if self.priority not in PRIORITIES:
            raise InvalidInputError(f"priority must be one of {', '.join(PRIORITIES)}, got {self.priority!r}")

    @property
    def conversation(self) -> tuple[Message, ...]:
        """The messages the model reads: the conversation, or the query as one user message."""
        return self.messages or (Message("user", self.query),)

    @property
    def multi_turn(self) -> bool:
        """Whether there is more to the request than the query alone (a system message or earlier turns)."""
        return len(self.messages) > 1


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


def conversation_key(messages: tuple[Message, ...]) -> str:
    """The cache key text of a conversation: each message's normalised text under its role. A
    single user message keys as its text alone, as a plain query does."""
    if len(messages) == 1 and messages[0].role == "user":
        return normalize_text(messages[0].content)
    return "\x1e".join(f"{m.role}\x1f{normalize_text(m.content)}" for m in messages)
