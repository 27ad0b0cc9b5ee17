"""The fleet's MQTT contract: topic tree and message schemas, shared by devices and the fleet manager.

Topic tree (``{fleet}`` and ``{device}`` are ``[A-Za-z0-9._-]{1,64}``)::

    edgecloud/v1/{fleet}/{device}/state      retained; birth on every connect, the MQTT will says offline
    edgecloud/v1/{fleet}/{device}/telemetry  QoS 0, every N seconds
    edgecloud/v1/{fleet}/{device}/cmd        QoS 1, fleet manager -> device
    edgecloud/v1/{fleet}/{device}/cmd/ack    QoS 1, device -> fleet manager: status transitions

Every payload is a JSON object. Each message's shape is a pydantic model (``_CommandMessage``
and its kin: strict types, bounded counts, finite numbers; unknown fields ignored, so a newer peer
may say more); parsing validates through it (:func:`~edgecloud.shared.base.documents.parse_document`)
and raises :class:`~edgecloud.shared.base.errors.InvalidInputError` naming the field: a device
must never act on a malformed command.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from edgecloud.shared.base.documents import Document, parse_document
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.fleetlink.quality import MAX_VERSIONS, FieldQuality

__all__ = [
    "AckStatus",
    "Birth",
    "BundleRef",
    "Command",
    "CommandAck",
    "Telemetry",
    "Topics",
    "decode",
]

ROOT = "edgecloud/v1"
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUNDLE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_REVISION = 2**53
"""Revisions and versions stay exact in every JSON reader (a double's integer range)."""


@dataclass(frozen=True)
class Topics:
    fleet: str
    device: str

    def __post_init__(self) -> None:
        for name in ("fleet", "device"):
            if not _SEGMENT.fullmatch(getattr(self, name)):
                raise InvalidInputError(f"{name} must match [A-Za-z0-9._-]{{1,64}}, got {getattr(self, name)!r}")

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.fleet}/{self.device}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def cmd(self) -> str:
        return f"{self.base}/cmd"

    @property
    def ack(self) -> str:
        return f"{self.base}/cmd/ack"

    @staticmethod
    def fleet_wildcard(fleet: str, leaf: str) -> str:
        """e.g. ``edgecloud/v1/{fleet}/+/telemetry`` for the fleet manager."""
        return f"{ROOT}/{fleet}/+/{leaf}"

    @staticmethod
    def parse(topic: str) -> tuple[str, str, str]:
        """``(fleet, device, leaf)`` of a topic in the tree; leaf is e.g. ``state`` or ``cmd/ack``."""
        parts = topic.split("/")
        if len(parts) < 5 or "/".join(parts[:2]) != ROOT:
            raise InvalidInputError(f"not an edgecloud/v1 topic: {topic!r}")
        return parts[2], parts[3], "/".join(parts[4:])


class AckStatus(str, enum.Enum):
    QUEUED = "QUEUED"
    SENT = "SENT"
    RECEIVED = "RECEIVED"
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    ACTIVE = "ACTIVE"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    IGNORED = "IGNORED"
    """Duplicate command id or an older deployment revision than one already seen."""

    @property
    def final(self) -> bool:
        return self in (AckStatus.ACTIVE, AckStatus.FAILED, AckStatus.ROLLED_BACK, AckStatus.IGNORED)


_Count = Annotated[int, Field(ge=0, le=MAX_REVISION)]
"""A non-negative integer of at most MAX_REVISION: larger ones would overflow SQLite's 64-bit
integers in the fleet store, and lose precision in JavaScript readers."""
_Revision = Annotated[int, Field(ge=1, le=MAX_REVISION)]
_Segment = Annotated[str, Field(pattern=rf"^{_SEGMENT.pattern}$")]
_Text = Annotated[str, Field(max_length=4096)]


def _http(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"must be http(s), got {url[:60]!r}")
    return url


class _Message(Document):
    """A message's shape: strict and finite, and unknown fields ignored (newer peers may say more)."""

    model_config = ConfigDict(extra="ignore")


class _BundleMessage(_Message):
    name: Annotated[str, Field(pattern=rf"^{_BUNDLE_NAME.pattern}$")]
    version: _Revision
    url: Annotated[str, Field(max_length=2048), AfterValidator(_http)]
    sha256: Annotated[str, Field(pattern=rf"^{_SHA256.pattern}$")]
    size: _Revision


class _CommandMessage(_Message):
    id: _Segment
    type: Literal["deploy", "rollback"]
    revision: _Revision
    bundle: _BundleMessage
    rollout_id: Annotated[str, Field(max_length=200)] = ""
    issued_at: float = 0.0
    device: Annotated[str, Field(pattern=rf"^({_SEGMENT.pattern})?$")] = ""
    expires_at: float = 0.0


class _AckMessage(_Message):
    command_id: str
    device: str
    status: AckStatus = Field(strict=False)  # its wire value, a string
    revision: _Count
    reason: _Text = ""
    version: _Count = 0
    rollout_id: Annotated[str, Field(max_length=200)] = ""
    at: float = 0.0


class _BirthMessage(_Message):
    online: bool
    device: str
    model_name: Annotated[str, Field(max_length=128)] = ""
    model_version: _Count = 0
    session: _Count = 0
    capabilities: list[Any] = Field(default_factory=list)
    labels: dict[str, Any] = Field(default_factory=dict)
    at: float = 0.0


class _TelemetryMessage(_Message):
    device: str
    at: float
    model_name: str
    model_version: _Count
    requests: dict[str, Any]
    latency_ms: dict[str, Any]
    escalation_rate: float
    degraded: _Count
    errors: _Count
    outbox_depth: _Count
    cpu_percent: float
    memory_mb: float
    state_problem: Annotated[str, Field(max_length=1024)] = ""
    quality: Annotated[list[dict[str, Any]], Field(max_length=MAX_VERSIONS, default_factory=list)]


@dataclass(frozen=True)
class BundleRef:
    name: str
    version: int
    url: str
    sha256: str
    size: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleRef:
        return cls(**vars(parse_document(_BundleMessage, data, InvalidInputError, where="bundle")))

    def to_dict(self) -> dict[str, Any]:
        # Written out, not dataclasses.asdict (which deep-copies every field): a rollout encodes one
        # command per device, and signs each (tests/shared/fleetlink/test_messages.py checks the two agree).
        return {"name": self.name, "version": self.version, "url": self.url, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Command:
    """``deploy`` installs ``bundle``; ``rollback`` goes back to an installed ``bundle`` version.

    On the wire a command travels signed (:mod:`edgecloud.shared.fleetlink.commands`): ``device``,
    ``issued_at`` and ``expires_at`` are covered by the signature, so a captured command can be
    replayed neither to another device nor after it expires."""

    id: str
    type: str
    revision: int
    """Deployment revision, monotonic per fleet: a device ignores anything older than the newest it saw."""
    bundle: BundleRef
    rollout_id: str = ""
    issued_at: float = 0.0
    device: str = ""
    """The device this command is for ("" only before it is addressed and signed)."""
    expires_at: float = 0.0
    """Unix time after which a device refuses it (0: not yet signed)."""

    TYPES = ("deploy", "rollback")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Command:
        fields = vars(parse_document(_CommandMessage, data, InvalidInputError, where="cmd"))
        return cls(**{**fields, "bundle": BundleRef(**vars(fields["bundle"]))})

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "revision": self.revision,
            "bundle": self.bundle.to_dict(),
            "rollout_id": self.rollout_id,
            "issued_at": self.issued_at,
            "device": self.device,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True)
class CommandAck:
    command_id: str
    device: str
    status: AckStatus
    revision: int
    reason: str = ""
    version: int = 0
    """The model version serving after this transition."""
    rollout_id: str = ""
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "device": self.device,
            "status": self.status.value,
            "revision": self.revision,
            "reason": self.reason,
            "version": self.version,
            "rollout_id": self.rollout_id,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommandAck:
        return cls(**vars(parse_document(_AckMessage, data, InvalidInputError, where="ack")))


@dataclass(frozen=True)
class Birth:
    """The retained state message: online with what the device runs, or the will's offline."""

    online: bool
    device: str
    model_name: str = ""
    model_version: int = 0
    session: int = 0
    """Incremented on every connect, so the manager can tell a rebirth from a stale retained message."""
    capabilities: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Birth:
        fields = dict(vars(parse_document(_BirthMessage, data, InvalidInputError, where="state")))
        fields["capabilities"] = [str(c) for c in fields["capabilities"]]
        fields["labels"] = {str(k): str(v) for k, v in fields["labels"].items()}
        return cls(**fields)


@dataclass(frozen=True)
class Telemetry:
    device: str
    at: float
    model_name: str
    model_version: int
    requests: dict[str, int]
    """Requests by route since start."""
    latency_ms: dict[str, dict[str, float]]
    """``{route: {"p50": .., "p99": ..}}`` over the recent window."""
    escalation_rate: float
    degraded: int
    errors: int
    outbox_depth: int
    cpu_percent: float
    memory_mb: float
    state_problem: str = ""
    """What was wrong with the agent's state files when it started ("" when nothing): a device
    that recovered from a corrupt state says so until it restarts cleanly."""
    quality: list[FieldQuality] = field(default_factory=list)
    """Field quality per bundle version served since start (:mod:`edgecloud.shared.fleetlink.quality`),
    the newest :data:`~edgecloud.shared.fleetlink.quality.MAX_VERSIONS`."""

    def to_dict(self) -> dict[str, Any]:
        # Written out (asdict deep-copies): every device sends one a second, and the manager of a
        # thousand parses as many (tests/shared/fleetlink/test_messages.py checks no field is left behind).
        return {
            "device": self.device,
            "at": self.at,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "requests": dict(self.requests),
            "latency_ms": {route: dict(values) for route, values in self.latency_ms.items()},
            "escalation_rate": self.escalation_rate,
            "degraded": self.degraded,
            "errors": self.errors,
            "outbox_depth": self.outbox_depth,
            "cpu_percent": self.cpu_percent,
            "memory_mb": self.memory_mb,
            "state_problem": self.state_problem,
            "quality": [entry.to_dict() for entry in self.quality],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Telemetry:
        fields = vars(parse_document(_TelemetryMessage, data, InvalidInputError, where="telemetry"))
        return cls(**{**fields, "quality": [FieldQuality.from_dict(entry) for entry in fields["quality"]]})


def decode(payload: bytes) -> dict[str, Any]:
    """A JSON object from an MQTT payload, size-capped."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidInputError(f"payload of {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and an integer of more than 4300 digits; RecursionError
        # a deeply nested array: both would otherwise escape an MQTT callback and kill its loop
        raise InvalidInputError(f"payload is not UTF-8 JSON: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError("payload must be a JSON object")
    if b"\\u" in payload:  # only an escape can smuggle in a lone surrogate, which SQLite and UTF-8 refuse later
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError("payload holds a lone UTF-16 surrogate; it is not valid Unicode") from None
    return data


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
