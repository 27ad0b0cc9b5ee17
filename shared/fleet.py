"""The fleet's MQTT contract: topic tree and message schemas, shared by devices and the fleet manager.

Topic tree (``{fleet}`` and ``{device}`` are ``[A-Za-z0-9._-]{1,64}``)::

    edgecloud/v1/{fleet}/{device}/state      retained; birth on every connect, the MQTT will says offline
    edgecloud/v1/{fleet}/{device}/telemetry  QoS 0, every N seconds
    edgecloud/v1/{fleet}/{device}/cmd        QoS 1, fleet manager -> device
    edgecloud/v1/{fleet}/{device}/cmd/ack    QoS 1, device -> fleet manager: status transitions

Every payload is a JSON object. Parsing validates and raises
:class:`~edgecloud.shared.errors.InvalidInputError` naming the field: a device must
never act on a malformed command.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from edgecloud.shared.errors import InvalidInputError

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
MAX_PAYLOAD_BYTES = 64 * 1024


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
        if ref.version < 1 or ref.size < 1 or not _SHA256.fullmatch(ref.sha256):
            raise InvalidInputError("bundle: version and size must be >= 1 and sha256 64 hex digits")
        if not ref.url.startswith(("http://", "https://")):
            raise InvalidInputError(f"bundle.url must be http(s), got {ref.url[:60]!r}")
        return ref


@dataclass(frozen=True)
class Command:
    """``deploy`` installs ``bundle``; ``rollback`` goes back to an installed ``bundle`` version."""

    id: str
    type: str
    revision: int
    """Deployment revision, monotonic per fleet: a device ignores anything older than the newest it saw."""
    bundle: BundleRef
    rollout_id: str = ""
    issued_at: float = 0.0

    TYPES = ("deploy", "rollback")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Command:
        command = cls(
            id=_get(data, "id", str, "cmd"),
            type=_get(data, "type", str, "cmd"),
            revision=_get(data, "revision", int, "cmd"),
            bundle=BundleRef.from_dict(_get(data, "bundle", dict, "cmd")),
            rollout_id=str(data.get("rollout_id", "")),
            issued_at=float(data.get("issued_at", 0.0)),
        )
        if command.type not in cls.TYPES:
            raise InvalidInputError(f"cmd.type must be one of {cls.TYPES}, got {command.type!r}")
        if not _SEGMENT.fullmatch(command.id) or command.revision < 1:
            raise InvalidInputError("cmd.id must match [A-Za-z0-9._-]{1,64} and cmd.revision be >= 1")
        return command

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        data = asdict(self)
        data["status"] = self.status.value
        return data

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
            revision=_get(data, "revision", int, "ack"),
            reason=str(data.get("reason", "")),
            version=int(data.get("version", 0)),
            rollout_id=str(data.get("rollout_id", "")),
            at=float(data.get("at", 0.0)),
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
            model_name=str(data.get("model_name", "")),
            model_version=int(data.get("model_version", 0)),
            session=int(data.get("session", 0)),
            capabilities=[str(c) for c in data.get("capabilities", [])],
            labels={str(k): str(v) for k, v in dict(data.get("labels", {})).items()},
            at=float(data.get("at", 0.0)),
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Telemetry:
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"telemetry: {exc}") from exc


def decode(payload: bytes) -> dict[str, Any]:
    """A JSON object from an MQTT payload, size-capped."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidInputError(f"payload of {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError("payload must be a JSON object")
    return data


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
