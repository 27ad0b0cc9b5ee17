"""The fleet's MQTT contract: topic tree and message schemas, shared by devices and the fleet manager.

Topic tree (``{fleet}`` and ``{device}`` are ``[A-Za-z0-9._-]{1,64}``)::

    edgecloud/v1/{fleet}/{device}/state      retained; birth on every connect, the MQTT will says offline
    edgecloud/v1/{fleet}/{device}/telemetry  QoS 0, every N seconds
    edgecloud/v1/{fleet}/{device}/cmd        QoS 1, fleet manager -> device
    edgecloud/v1/{fleet}/{device}/cmd/ack    QoS 1, device -> fleet manager: status transitions

Every payload is a JSON object. Parsing validates and raises
:class:`~edgecloud.shared.base.errors.InvalidInputError` naming the field: a device must
never act on a malformed command.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from edgecloud.shared.base.errors import InvalidInputError

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


def _get(data: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in data:
        raise InvalidInputError(f"{where}.{name}: missing")
    value = data[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InvalidInputError(f"{where}.{name}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _number(data: dict[str, Any], name: str, where: str, default: float = 0.0) -> float:
    """A finite number field (an int or a float, never a bool or a string)."""
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{where}.{name}: expected a finite number, got {value!r}"[:200])
    return float(value)


def _count(data: dict[str, Any], name: str, where: str, default: int | None = None) -> int:
    """A non-negative integer field of at most MAX_REVISION: larger ones would overflow SQLite's
    64-bit integers in the fleet store, and lose precision in JavaScript readers."""
    if default is None:
        value = _get(data, name, int, where)
    else:
        value = data.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInputError(f"{where}.{name}: expected int, got {value!r}"[:200])
    if not 0 <= value <= MAX_REVISION:
        raise InvalidInputError(f"{where}.{name}: must be in 0..{MAX_REVISION}, got {value}"[:200])
    return value


def _optional(data: dict[str, Any], name: str, kind: type, default: Any, where: str, limit: int = 4096) -> Any:
    """An optional field of type ``kind`` (bools are not ints, ints are bounded counts, floats
    finite); strings at most ``limit`` long."""
    if kind is float:
        return _number(data, name, where, default)
    if kind is int:
        return _count(data, name, where, default)
    value = data.get(name, default)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InvalidInputError(f"{where}.{name}: expected {kind.__name__}, got {value!r}"[:200])
    if isinstance(value, str) and len(value) > limit:
        raise InvalidInputError(f"{where}.{name}: longer than {limit} characters")
    return value


@dataclass(frozen=True)
class BundleRef:
    name: str
    version: int
    url: str
    sha256: str
    size: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleRef:
        ref = cls(
            name=_get(data, "name", str, "bundle"),
            version=_get(data, "version", int, "bundle"),
            url=_get(data, "url", str, "bundle"),
            sha256=_get(data, "sha256", str, "bundle"),
            size=_get(data, "size", int, "bundle"),
        )
        if (
            not 1 <= ref.version <= MAX_REVISION
            or not 1 <= ref.size <= MAX_REVISION
            or not _SHA256.fullmatch(ref.sha256)
        ):
            raise InvalidInputError(
                f"bundle: version and size must be >= 1 (and <= {MAX_REVISION}) and sha256 64 hex digits"
            )
        if not _BUNDLE_NAME.fullmatch(ref.name) or len(ref.url) > 2048:
            raise InvalidInputError("bundle: name must match [A-Za-z0-9._-]{1,128} and url be at most 2048 characters")
        if not ref.url.startswith(("http://", "https://")):
            raise InvalidInputError(f"bundle.url must be http(s), got {ref.url[:60]!r}")
        return ref

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
        rollout_id = data.get("rollout_id", "")
        device = data.get("device", "")
        if not isinstance(rollout_id, str) or len(rollout_id) > 200:
            raise InvalidInputError("cmd.rollout_id: expected a string of at most 200 characters")
        if not isinstance(device, str) or device and not _SEGMENT.fullmatch(device):
            raise InvalidInputError(f"cmd.device must match [A-Za-z0-9._-]{{1,64}}, got {device!r}"[:200])
        command = cls(
            id=_get(data, "id", str, "cmd"),
            type=_get(data, "type", str, "cmd"),
            revision=_get(data, "revision", int, "cmd"),
            bundle=BundleRef.from_dict(_get(data, "bundle", dict, "cmd")),
            rollout_id=rollout_id,
            issued_at=_number(data, "issued_at", "cmd"),
            device=device,
            expires_at=_number(data, "expires_at", "cmd"),
        )
        if command.type not in cls.TYPES:
            raise InvalidInputError(f"cmd.type must be one of {cls.TYPES}, got {command.type!r}"[:200])
        if not _SEGMENT.fullmatch(command.id) or not 1 <= command.revision <= MAX_REVISION:
            raise InvalidInputError(
                f"cmd.id must match [A-Za-z0-9._-]{{1,64}} and cmd.revision be in 1..{MAX_REVISION}"
            )
        return command

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
        try:
            status = AckStatus(_get(data, "status", str, "ack"))
        except ValueError:
            raise InvalidInputError(f"ack.status: unknown {data.get('status')!r}") from None
        return cls(
            command_id=_get(data, "command_id", str, "ack"),
            device=_get(data, "device", str, "ack"),
            status=status,
            revision=_count(data, "revision", "ack"),
            reason=_optional(data, "reason", str, "", "ack"),
            version=_optional(data, "version", int, 0, "ack"),
            rollout_id=_optional(data, "rollout_id", str, "", "ack", limit=200),
            at=_optional(data, "at", float, 0.0, "ack"),
        )


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
        return cls(
            online=_get(data, "online", bool, "state"),
            device=_get(data, "device", str, "state"),
            model_name=_optional(data, "model_name", str, "", "state", limit=128),
            model_version=_optional(data, "model_version", int, 0, "state"),
            session=_optional(data, "session", int, 0, "state"),
            capabilities=[str(c) for c in _optional(data, "capabilities", list, [], "state")],
            labels={str(k): str(v) for k, v in _optional(data, "labels", dict, {}, "state").items()},
            at=_optional(data, "at", float, 0.0, "state"),
        )


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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Telemetry:
        values: dict[str, Any] = {}
        for name, kind in _TELEMETRY_FIELDS.items():
            value = data.get(name)
            exact = type(value)  # the well-formed case inline; anything else takes the checks that explain
            if kind is float and (exact is float or exact is int) and math.isfinite(value):  # type: ignore[arg-type]
                values[name] = float(value)  # type: ignore[arg-type]
            elif (kind is int and exact is int and 0 <= value <= MAX_REVISION) or (  # type: ignore[operator]
                exact is kind and kind is not float and kind is not int
            ):
                values[name] = value
            elif name not in data:
                raise InvalidInputError(f"telemetry.{name}: missing")
            elif kind is float:
                values[name] = _number(data, name, "telemetry")
            elif kind is int:
                values[name] = _count(data, name, "telemetry")
            else:
                values[name] = _get(data, name, kind, "telemetry")
        values["state_problem"] = _optional(data, "state_problem", str, "", "telemetry", limit=1024)
        return cls(**values)


_TELEMETRY_FIELDS: dict[str, type] = {
    "device": str,
    "at": float,
    "model_name": str,
    "model_version": int,
    "requests": dict,
    "latency_ms": dict,
    "escalation_rate": float,
    "degraded": int,
    "errors": int,
    "outbox_depth": int,
    "cpu_percent": float,
    "memory_mb": float,
}


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
