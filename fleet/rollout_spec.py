"""What a rollout is asked to do, and the statuses it reports: the vocabulary
:mod:`edgecloud.fleet.rollout`'s state machine, the store and the REST API share.

A :class:`RolloutSpec` names the bundle, the devices in rollout order, the
revision, the wave plan (:class:`FixedBatches` or :class:`Exponential`) and
when to give up (:class:`AbortCriteria`). Every field is validated at
construction, so a spec that exists is one a device would accept.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from edgecloud.fleet.quality import QualityGate
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.fleetlink.messages import BundleRef, Command

__all__ = [
    "AbortCriteria",
    "DeviceStatus",
    "Exponential",
    "FixedBatches",
    "RolloutSpec",
    "RolloutStatus",
    "Strategy",
    "strategy_from_dict",
]

ID_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""An id segment: rollout ids, device ids and the command ids made of them."""


class RolloutStatus(str, enum.Enum):
    PENDING = "PENDING"
    """Created, not started."""
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    """No new wave is sent; acks, timeouts and the abort check still apply."""
    COMPLETED = "COMPLETED"
    ABORTED = "ABORTED"
    ROLLED_BACK = "ROLLED_BACK"
    """The whole rollout was reverted with :meth:`Rollout.rollback`."""

    @property
    def live(self) -> bool:
        return self in (RolloutStatus.RUNNING, RolloutStatus.PAUSED)


class DeviceStatus(str, enum.Enum):
    QUEUED = "QUEUED"
    SENT = "SENT"
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    ACTIVE = "ACTIVE"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    """The device reverted the new bundle in its watch window: a failure."""

    @property
    def failed(self) -> bool:
        return self in (DeviceStatus.FAILED, DeviceStatus.ROLLED_BACK)


_SUCCESS_CHOICES = frozenset({DeviceStatus.DOWNLOADING, DeviceStatus.VERIFYING, DeviceStatus.ACTIVE})


@dataclass(frozen=True)
class FixedBatches:
    """Waves of ``size`` devices (the last one holds what is left)."""

    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise InvalidInputError(f"strategy.size must be an integer >= 1, got {self.size!r}")

    def wave_sizes(self, total: int) -> tuple[int, ...]:
        full, rest = divmod(total, self.size)
        return (self.size,) * full + ((rest,) if rest else ())

    def to_dict(self) -> dict[str, Any]:
        return {"type": "fixed", "size": self.size}


@dataclass(frozen=True)
class Exponential:
    """AWS IoT Jobs style: wave ``k`` holds ``floor(base_rate * increment_factor**k)``
    devices, capped by how many are left."""

    base_rate: int
    increment_factor: float

    def __post_init__(self) -> None:
        if not isinstance(self.base_rate, int) or isinstance(self.base_rate, bool) or self.base_rate < 1:
            raise InvalidInputError(f"strategy.base_rate must be an integer >= 1, got {self.base_rate!r}")
        if not isinstance(self.increment_factor, (int, float)) or not 1.0 <= self.increment_factor <= 100.0:
            raise InvalidInputError(f"strategy.increment_factor must be in [1, 100], got {self.increment_factor!r}")

    def wave_sizes(self, total: int) -> tuple[int, ...]:
        sizes: list[int] = []
        left, rate = total, float(self.base_rate)
        while left > 0:
            size = min(left, max(1, math.floor(rate + 1e-9)))
            sizes.append(size)
            left -= size
            rate *= self.increment_factor
        return tuple(sizes)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "exponential", "base_rate": self.base_rate, "increment_factor": self.increment_factor}


Strategy = FixedBatches | Exponential


def strategy_from_dict(data: dict[str, Any]) -> Strategy:
    kind = data.get("type")
    try:
        if kind == "fixed":
            return FixedBatches(size=data["size"])
        if kind == "exponential":
            return Exponential(base_rate=data["base_rate"], increment_factor=data["increment_factor"])
    except KeyError as exc:
        raise InvalidInputError(f"strategy.{exc.args[0]}: missing") from None
    raise InvalidInputError(f"strategy.type must be 'fixed' or 'exponential', got {kind!r}")


@dataclass(frozen=True)
class AbortCriteria:
    """Abort once at least ``min_devices`` have finished and
    ``failed / finished * 100 >= failure_percent`` (FAILED and ROLLED_BACK are failures)."""

    failure_percent: float
    min_devices: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.failure_percent, (int, float)) or not 0 < self.failure_percent <= 100:
            raise InvalidInputError(f"abort.failure_percent must be in (0, 100], got {self.failure_percent!r}")
        if not isinstance(self.min_devices, int) or isinstance(self.min_devices, bool) or self.min_devices < 1:
            raise InvalidInputError(f"abort.min_devices must be an integer >= 1, got {self.min_devices!r}")

    def met(self, failed: int, finished: int) -> bool:
        return finished >= self.min_devices and failed * 100 >= self.failure_percent * finished


@dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    id: str
    bundle: BundleRef
    targets: tuple[str, ...]
    """Device ids, in rollout order; the caller resolves ids and labels to them."""
    revision: int
    """Deployment revision, monotonic per fleet, given by the caller."""
    strategy: Strategy
    abort: AbortCriteria | None = None
    """None: never abort on its own."""
    success_statuses: frozenset[DeviceStatus] = frozenset({DeviceStatus.ACTIVE})
    """A device has succeeded once it reached one of these (or a later step); a
    subset of DOWNLOADING, VERIFYING, ACTIVE. A later FAILED or ROLLED_BACK still
    turns it into a failure."""
    device_timeout_s: float = 900.0
    """A sent device with no final ack this long after its command counts as FAILED "timeout"."""
    kind: str = "deploy"
    """The command type: ``deploy``, or ``rollback`` to a bundle the devices had."""
    quality: QualityGate | None = None
    """A wave counts only once its devices' field quality of the new version passes this gate
    (:mod:`edgecloud.fleet.quality`); one that fails it aborts the rollout and rolls it back."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        try:
            object.__setattr__(self, "success_statuses", frozenset(DeviceStatus(s) for s in self.success_statuses))
        except ValueError as exc:
            raise InvalidInputError(f"success_statuses: {exc}") from None
        if not isinstance(self.id, str) or not ID_SEGMENT.fullmatch(self.id):
            raise InvalidInputError(f"id must match [A-Za-z0-9._-]{{1,64}}, got {self.id!r}")
        if not isinstance(self.bundle, BundleRef):
            raise InvalidInputError(f"bundle must be a BundleRef, got {type(self.bundle).__name__}")
        BundleRef.from_dict(asdict(self.bundle))  # what a device would reject, rejected here
        if not isinstance(self.revision, int) or isinstance(self.revision, bool) or self.revision < 1:
            raise InvalidInputError(f"revision must be an integer >= 1, got {self.revision!r}")
        if not isinstance(self.strategy, (FixedBatches, Exponential)):
            raise InvalidInputError(f"strategy must be FixedBatches or Exponential, got {self.strategy!r}")
        if self.quality is not None and not isinstance(self.quality, QualityGate):
            raise InvalidInputError(f"quality must be a QualityGate or None, got {self.quality!r}")
        if self.abort is not None and not isinstance(self.abort, AbortCriteria):
            raise InvalidInputError(f"abort must be AbortCriteria or None, got {self.abort!r}")
        if not self.success_statuses or not self.success_statuses <= _SUCCESS_CHOICES:
            raise InvalidInputError("success_statuses must be a non-empty subset of DOWNLOADING, VERIFYING, ACTIVE")
        if not isinstance(self.device_timeout_s, (int, float)) or not 0 < self.device_timeout_s < math.inf:
            raise InvalidInputError(f"device_timeout_s must be > 0, got {self.device_timeout_s!r}")
        if self.kind not in Command.TYPES:
            raise InvalidInputError(f"kind must be one of {Command.TYPES}, got {self.kind!r}")
        if not self.targets:
            raise InvalidInputError("targets: a rollout needs at least one device")
        if len(set(self.targets)) != len(self.targets):
            raise InvalidInputError("targets: a device is listed twice")
        for device in self.targets:
            if not isinstance(device, str) or not ID_SEGMENT.fullmatch(self.command_id(device, self.revision)):
                raise InvalidInputError(
                    f"targets: {device!r} gives command id {self.command_id(str(device), self.revision)!r},"
                    " which must match [A-Za-z0-9._-]{1,64}"
                )

    def command_id(self, device: str, revision: int) -> str:
        return f"{self.id}-{device}-{revision}"

    def waves(self) -> tuple[tuple[str, ...], ...]:
        waves, start = [], 0
        for size in self.strategy.wave_sizes(len(self.targets)):
            waves.append(self.targets[start : start + size])
            start += size
        return tuple(waves)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bundle": asdict(self.bundle),
            "targets": list(self.targets),
            "revision": self.revision,
            "strategy": self.strategy.to_dict(),
            "abort": asdict(self.abort) if self.abort else None,
            "success_statuses": sorted(s.value for s in self.success_statuses),
            "device_timeout_s": self.device_timeout_s,
            "kind": self.kind,
            "quality": self.quality.to_dict() if self.quality else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutSpec:
        try:
            abort = data.get("abort")
            return cls(
                id=data["id"],
                bundle=BundleRef.from_dict(data["bundle"]),
                targets=tuple(data["targets"]),
                revision=data["revision"],
                strategy=strategy_from_dict(data["strategy"]),
                abort=AbortCriteria(**abort) if abort is not None else None,
                success_statuses=frozenset(data.get("success_statuses", ["ACTIVE"])),
                device_timeout_s=data.get("device_timeout_s", 900.0),
                kind=data.get("kind", "deploy"),
                quality=QualityGate.from_dict(data["quality"]) if data.get("quality") is not None else None,
            )
        except KeyError as exc:
            raise InvalidInputError(f"rollout spec.{exc.args[0]}: missing") from None
        except TypeError as exc:
            raise InvalidInputError(f"rollout spec: {exc}") from None
