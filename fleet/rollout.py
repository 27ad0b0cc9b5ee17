r"""A rollout's state machine: which device gets a bundle when, and when to stop.

Pure logic in the spirit of AWS IoT Jobs and Eclipse hawkBit: no MQTT, no
I/O, no clock. The caller passes ``now`` in, feeds every device ack to
:meth:`Rollout.on_ack`, calls :meth:`Rollout.tick` every few seconds, and
publishes the :class:`~edgecloud.shared.fleetlink.messages.Command` list each method returns.

The rollout::

    PENDING --start()--> RUNNING <--pause()/resume()--> PAUSED
                          |    \
     every wave finished  |     \  failures meet the abort criteria, or abort()
                          v      v
                  COMPLETED      ABORTED
    RUNNING, PAUSED, COMPLETED, ABORTED --rollback()--> ROLLED_BACK

One device's deployment (one command per device and rollout)::

    QUEUED --its wave--> SENT -> DOWNLOADING -> VERIFYING -> ACTIVE --device's watch--> ROLLED_BACK
                          |          |              |
                          +----------+--------------+--> FAILED (the device said FAILED or IGNORED,
                                                                 or no final ack in time)

Rules:

* Waves are planned from the spec (:class:`FixedBatches` or
  :class:`Exponential`); the next wave goes out only when every device of the
  current one has finished (succeeded or failed) and the rollout is RUNNING.
* A device gets a command only on QUEUED -> SENT, so never two for a wave;
  after an abort no new deploy command is issued.
* Acks for another rollout, an unknown device or a command id that is not the
  device's current one are ignored. Transitions only move forward
  (:func:`transition`), so duplicate and out-of-order acks change nothing.
  ROLLED_BACK after ACTIVE turns a success into a failure. A timeout is the
  manager's guess: a later final ack from the device replaces it.
* With a quality gate in the spec (:mod:`edgecloud.fleet.quality`), a finished wave also waits
  for the gate's decision on it (:meth:`Rollout.on_quality`, fed by the caller from the devices'
  telemetry): ``passed`` sends the next wave (or completes), ``failed`` aborts.
* The abort check runs after every change, also while PAUSED, and wins over
  completion: a rollout whose last ack crosses the threshold is ABORTED.
* :meth:`Rollout.rollback` sends a ``rollback`` command to every device whose
  deployment reached ACTIVE; a device that reports ACTIVE later (its command
  was in flight) is sent one when that ack arrives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from edgecloud.fleet.quality import GateDecision
from edgecloud.fleet.rollout_spec import (
    ID_SEGMENT,
    AbortCriteria,
    DeviceStatus,
    Exponential,
    FixedBatches,
    RolloutSpec,
    RolloutStatus,
    Strategy,
    strategy_from_dict,
)
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.fleetlink.messages import AckStatus, BundleRef, Command, CommandAck

__all__ = [
    "AbortCriteria",
    "Delivery",
    "DeviceState",
    "DeviceStatus",
    "Exponential",
    "FixedBatches",
    "Rollout",
    "RolloutSpec",
    "RolloutStatus",
    "Strategy",
    "strategy_from_dict",
    "transition",
]

_RANK = {
    DeviceStatus.QUEUED: 0,
    DeviceStatus.SENT: 1,
    DeviceStatus.DOWNLOADING: 2,
    DeviceStatus.VERIFYING: 3,
    DeviceStatus.ACTIVE: 4,
}
_IN_FLIGHT = frozenset({DeviceStatus.SENT, DeviceStatus.DOWNLOADING, DeviceStatus.VERIFYING})
_OPEN, _SUCCEEDED, _FAILED = 0, 1, 2
"""A device's outcome in a rollout: not finished yet, or finished either way."""


def transition(current: DeviceStatus, ack: AckStatus, *, timed_out: bool = False) -> DeviceStatus | None:
    """The status a delivery moves to on ``ack``, or None when the ack changes nothing.

    ``timed_out`` says ``current`` is a FAILED the manager set on a timeout,
    which any final ack from the device replaces.
    """
    in_flight = current in _IN_FLIGHT
    revivable = in_flight or (current is DeviceStatus.FAILED and timed_out)
    if ack in (AckStatus.DOWNLOADING, AckStatus.VERIFYING):
        target = DeviceStatus(ack.value)
        return target if in_flight and _RANK[target] > _RANK[current] else None
    if ack is AckStatus.ACTIVE:
        return DeviceStatus.ACTIVE if revivable else None
    if ack in (AckStatus.FAILED, AckStatus.IGNORED):
        return DeviceStatus.FAILED if revivable else None
    if ack is AckStatus.ROLLED_BACK:
        return DeviceStatus.ROLLED_BACK if revivable or current is DeviceStatus.ACTIVE else None
    return None  # QUEUED, SENT and RECEIVED add nothing to SENT


# -- per-device state ------------------------------------------------------------------


@dataclass
class Delivery:
    """One command to one device, and what the device said about it."""

    command_id: str = ""
    status: DeviceStatus = DeviceStatus.QUEUED
    reason: str = ""
    timed_out: bool = False
    version: int = 0
    """The model version the device said it serves, from its last counted ack."""
    sent_at: float | None = None
    updated_at: float | None = None

    def send(self, command_id: str, now: float) -> None:
        self.command_id, self.status, self.sent_at, self.updated_at = command_id, DeviceStatus.SENT, now, now

    def apply(self, ack: CommandAck, now: float) -> bool:
        """Whether ``ack`` changed anything."""
        new = transition(self.status, ack.status, timed_out=self.timed_out)
        if new is None:
            return False
        reason = f"ignored by the device: {ack.reason}" if ack.status is AckStatus.IGNORED else ack.reason
        self.status, self.reason, self.timed_out, self.version, self.updated_at = new, reason, False, ack.version, now
        return True

    def expire(self, now: float, timeout_s: float) -> bool:
        """FAILED "timeout" when in flight for ``timeout_s``; whether it did."""
        if self.status not in _IN_FLIGHT or self.sent_at is None or now < self.sent_at + timeout_s:
            return False
        self.status, self.reason, self.timed_out, self.updated_at = DeviceStatus.FAILED, "timeout", True, now
        return True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Delivery:
        return cls(**{**data, "status": DeviceStatus(data["status"])})


@dataclass
class DeviceState:
    device: str
    wave: int
    """0-based index of the wave the device belongs to."""
    deploy: Delivery = field(default_factory=Delivery)
    rollback: Delivery | None = None
    """The rollback command, once :meth:`Rollout.rollback` sent one to this device."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "wave": self.wave,
            "deploy": self.deploy.to_dict(),
            "rollback": self.rollback.to_dict() if self.rollback else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceState:
        rollback = data.get("rollback")
        return cls(
            device=data["device"],
            wave=data["wave"],
            deploy=Delivery.from_dict(data["deploy"]),
            rollback=Delivery.from_dict(rollback) if rollback else None,
        )


# -- the rollout -----------------------------------------------------------------------


def _outcome(status: DeviceStatus, success_statuses: Iterable[DeviceStatus]) -> int:
    """Where a device in ``status`` counts: _FAILED, _SUCCEEDED (at or past a success status) or _OPEN."""
    if status.failed:
        return _FAILED
    if any(_RANK[status] >= _RANK[s] for s in success_statuses):
        return _SUCCEEDED
    return _OPEN


def _status_counts(deliveries: Iterable[Delivery]) -> dict[str, int]:
    """How many deliveries are in each status, every status listed."""
    counts = {s.value: 0 for s in DeviceStatus}
    for delivery in deliveries:
        counts[delivery.status.value] += 1
    return counts


def _rollback_view(bundle: BundleRef | None, revision: int, devices: Iterable[DeviceState]) -> dict[str, Any] | None:
    """The rollback part of :meth:`Rollout.summary` (None without a rollback): what was sent, and how it went."""
    if bundle is None:
        return None
    sent = [state.rollback for state in devices if state.rollback is not None]
    return {
        "revision": revision,
        "bundle": bundle.name,
        "version": bundle.version,
        "total": len(sent),
        "counts": _status_counts(sent),
    }


class Rollout:
    """Mutable state of one rollout; every method returns the commands to publish now."""

    def __init__(self, spec: RolloutSpec) -> None:
        self.spec = spec
        self.waves = spec.waves()
        self.status = RolloutStatus.PENDING
        self.wave = -1
        """0-based index of the newest wave sent; -1 before start."""
        self.devices = {d: DeviceState(d, i) for i, wave in enumerate(self.waves) for d in wave}
        self.abort_reason = ""
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.updated_at: float | None = None
        self.rollback_bundle: BundleRef | None = None
        self.rollback_revision = 0
        self.quality_gates: list[dict[str, Any] | None] = [None] * len(self.waves)
        """Each wave's latest quality-gate decision (:meth:`on_quality`); None before one."""
        self._changed: set[str] = set(self.devices)
        self._recount()

    @property
    def id(self) -> str:
        return self.spec.id

    def take_changed(self) -> list[DeviceState]:
        """The devices whose state changed since the last call (all of them on a new
        rollout), by id; lets the store write O(changes) rather than O(fleet)."""
        changed = [self.devices[d] for d in sorted(self._changed)]
        self._changed.clear()
        return changed

    def mark_changed(self, devices: Iterable[str]) -> None:
        """Put devices back as changed (a save that failed must be retried in full)."""
        self._changed.update(d for d in devices if d in self.devices)

    # -- operations --------------------------------------------------------------------

    def start(self, now: float) -> list[Command]:
        if self.status is not RolloutStatus.PENDING:
            raise InvalidInputError(f"rollout {self.id} is {self.status.value}; only a PENDING one can start")
        self.status, self.started_at, self.updated_at = RolloutStatus.RUNNING, now, now
        return self._send_wave(0, now)

    def on_ack(self, ack: CommandAck, now: float) -> list[Command]:
        if ack.rollout_id != self.id or self.status is RolloutStatus.PENDING:
            return []
        state = self.devices.get(ack.device)
        if state is None:
            return []
        if ack.command_id == state.deploy.command_id:
            delivery = state.deploy
        elif state.rollback is not None and ack.command_id == state.rollback.command_id:
            delivery = state.rollback
        else:
            return []
        before = self._outcome(state)
        if not delivery.apply(ack, now):
            return []
        self._changed.add(state.device)
        self._account(state, before)
        self.updated_at = now
        if self.status is RolloutStatus.ROLLED_BACK:
            return self._send_rollbacks(now, (state,))
        return self._step(now)

    def tick(self, now: float) -> list[Command]:
        """Time devices out, then send the next wave, abort or complete as due."""
        changed = False
        for state in self.devices.values():
            before = self._outcome(state)
            if before == _OPEN and state.deploy.expire(now, self.spec.device_timeout_s):
                self._account(state, before)
                self._changed.add(state.device)
                changed = True
            if state.rollback is not None and state.rollback.expire(now, self.spec.device_timeout_s):
                self._changed.add(state.device)
                changed = True
        if changed:
            self.updated_at = now
        return self._step(now)

    @property
    def awaiting_quality(self) -> bool:
        """Whether the current wave has finished and waits for its quality gate to pass."""
        return (
            self.spec.quality is not None
            and self.status is RolloutStatus.RUNNING
            and self.wave >= 0
            and not self._open_in_wave
            and not self._gate_passed()
        )

    def on_quality(self, decision: GateDecision, now: float) -> list[Command]:
        """The quality gate's decision on the current wave: ``passed`` lets the rollout go on,
        ``failed`` aborts it (the caller rolls it back), ``waiting`` is recorded and changes nothing."""
        if not self.awaiting_quality:
            return []
        seen = self.quality_gates[self.wave]
        self.quality_gates[self.wave] = {"wave": self.wave + 1, "at": now, **decision.to_dict()}
        if seen is None or seen["verdict"] != decision.verdict or seen["reason"] != decision.reason:
            self.updated_at = now
        if decision.verdict == "failed":
            self._abort(f"wave {self.wave + 1} failed its quality gate: {decision.reason}", now)
            return []
        return self._step(now) if decision.verdict == "passed" else []

    def _gate_passed(self) -> bool:
        gate = self.quality_gates[self.wave] if self.wave >= 0 else None
        return gate is not None and gate["verdict"] == "passed"

    def pause(self, now: float | None = None) -> list[Command]:
        if self.status is RolloutStatus.PAUSED:
            return []
        if self.status is not RolloutStatus.RUNNING:
            raise InvalidInputError(f"rollout {self.id} is {self.status.value}; only a RUNNING one can pause")
        self.status = RolloutStatus.PAUSED
        self.updated_at = now if now is not None else self.updated_at
        return []

    def resume(self, now: float) -> list[Command]:
        if self.status is RolloutStatus.RUNNING:
            return []
        if self.status is not RolloutStatus.PAUSED:
            raise InvalidInputError(f"rollout {self.id} is {self.status.value}; only a PAUSED one can resume")
        self.status, self.updated_at = RolloutStatus.RUNNING, now
        return self._step(now)

    def abort(self, reason: str = "aborted by an operator", now: float | None = None) -> list[Command]:
        """Stop: no new command is issued. Devices already sent keep reporting."""
        if self.status is RolloutStatus.ABORTED:
            return []
        if not (self.status.live or self.status is RolloutStatus.PENDING):
            raise InvalidInputError(f"rollout {self.id} is {self.status.value} and cannot be aborted")
        self._abort(reason, now)
        return []

    def rollback(self, previous: BundleRef, revision: int, now: float) -> list[Command]:
        """Revert the whole rollout: a ``rollback`` command to ``previous`` for every
        device whose deployment reached ACTIVE. ``revision`` must be newer than the spec's."""
        if self.status in (RolloutStatus.PENDING, RolloutStatus.ROLLED_BACK):
            raise InvalidInputError(f"rollout {self.id} is {self.status.value} and cannot be rolled back")
        if not isinstance(revision, int) or revision <= self.spec.revision:
            raise InvalidInputError(f"rollback revision must be > {self.spec.revision}, got {revision!r}")
        BundleRef.from_dict(asdict(previous))
        for device in self.spec.targets:
            if not ID_SEGMENT.fullmatch(self.spec.command_id(device, revision)):
                raise InvalidInputError(f"rollback command id for {device!r} would be longer than 64 characters")
        self.status, self.rollback_bundle, self.rollback_revision = RolloutStatus.ROLLED_BACK, previous, revision
        self.finished_at = self.finished_at if self.finished_at is not None else now
        self.updated_at = now
        return self._step(now)

    # -- the machine -------------------------------------------------------------------

    # Tallies kept as acks arrive, so an ack costs O(1) however large the fleet:
    # devices by outcome, and the current wave's devices still open.

    def _outcome(self, state: DeviceState) -> int:
        return _outcome(state.deploy.status, self.spec.success_statuses)

    def _recount(self) -> None:
        self._tally = [0, 0, 0]
        for state in self.devices.values():
            self._tally[self._outcome(state)] += 1
        self._open_in_wave = (
            0 if self.wave < 0 else sum(1 for d in self.waves[self.wave] if self._outcome(self.devices[d]) == _OPEN)
        )

    def _account(self, state: DeviceState, before: int) -> None:
        after = self._outcome(state)
        if after != before:
            self._tally[before] -= 1
            self._tally[after] += 1
            if before == _OPEN and state.wave == self.wave:
                self._open_in_wave -= 1

    def _counts(self) -> tuple[int, int]:
        """(failed, finished) over all devices."""
        return self._tally[_FAILED], self._tally[_FAILED] + self._tally[_SUCCEEDED]

    def _command(self, device: str, kind: str, bundle: BundleRef, revision: int, now: float) -> Command:
        return Command(
            id=self.spec.command_id(device, revision),
            type=kind,
            revision=revision,
            bundle=bundle,
            rollout_id=self.id,
            issued_at=now,
            device=device,  # the manager signs it for this device only
        )

    def _send_wave(self, wave: int, now: float) -> list[Command]:
        self.wave = wave
        commands = []
        for device in self.waves[wave]:
            state = self.devices[device]
            if state.deploy.status is DeviceStatus.QUEUED:  # never a second command
                command = self._command(device, self.spec.kind, self.spec.bundle, self.spec.revision, now)
                state.deploy.send(command.id, now)
                self._changed.add(device)
                commands.append(command)
        self._recount()
        return commands

    def _abort(self, reason: str, now: float | None) -> None:
        self.status, self.abort_reason = RolloutStatus.ABORTED, reason
        if now is not None:
            self.finished_at, self.updated_at = now, now

    def _step(self, now: float) -> list[Command]:
        if self.status is RolloutStatus.ROLLED_BACK:
            return self._send_rollbacks(now)
        if not self.status.live:
            return []
        failed, finished = self._counts()
        if self.spec.abort is not None and self.spec.abort.met(failed, finished):
            self._abort(
                f"{failed} of {finished} finished devices failed "
                f"({100 * failed / finished:.1f}% >= {self.spec.abort.failure_percent:g}%)",
                now,
            )
            return []
        if self.status is RolloutStatus.PAUSED:
            return []
        if self._open_in_wave or (self.spec.quality is not None and not self._gate_passed()):
            return []  # a wave counts once every device finished and, with a gate, once it passed
        if self.wave + 1 < len(self.waves):
            return self._send_wave(self.wave + 1, now)
        self.status, self.finished_at, self.updated_at = RolloutStatus.COMPLETED, now, now
        return []

    def _send_rollbacks(self, now: float, states: Iterable[DeviceState] | None = None) -> list[Command]:
        assert self.rollback_bundle is not None
        commands = []
        for state in self.devices.values() if states is None else states:
            if state.deploy.status is DeviceStatus.ACTIVE and state.rollback is None:
                command = self._command(state.device, "rollback", self.rollback_bundle, self.rollback_revision, now)
                state.rollback = Delivery()
                state.rollback.send(command.id, now)
                self._changed.add(state.device)
                commands.append(command)
        if commands:
            self.updated_at = now
        return commands

    # -- views and persistence ---------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counts and progress for the API and the dashboard."""
        return _summary(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"spec": ..., "state": ...}``; :meth:`from_dict` restores it exactly."""
        state = self.header_dict()
        state["devices"] = [s.to_dict() for s in self.devices.values()]
        return {"spec": self.spec.to_dict(), "state": state}

    def header_dict(self) -> dict[str, Any]:
        """The rollout-level part of ``to_dict()["state"]``: everything but the devices."""
        return _header(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        rollout = cls(RolloutSpec.from_dict(data["spec"]))
        try:
            state = data["state"]
            devices = [DeviceState.from_dict(d) for d in state["devices"]]
            if [d.device for d in devices] != list(rollout.devices):
                raise InvalidInputError(f"rollout {rollout.id}: the saved devices do not match the spec's targets")
            rollout.devices = {d.device: d for d in devices}
            rollout.status = RolloutStatus(state["status"])
            rollout.wave = int(state["wave"])
            rollout.abort_reason = str(state["abort_reason"])
            rollout.started_at, rollout.finished_at = state["started_at"], state["finished_at"]
            rollout.updated_at = state["updated_at"]
            bundle = state.get("rollback_bundle")
            rollout.rollback_bundle = BundleRef.from_dict(bundle) if bundle else None
            rollout.rollback_revision = int(state.get("rollback_revision", 0))
            gates = state.get("quality_gates") or [None] * len(rollout.waves)
            if len(gates) != len(rollout.waves):
                raise InvalidInputError(
                    f"rollout {rollout.id}: {len(gates)} quality gates for {len(rollout.waves)} waves"
                )
            rollout.quality_gates = [dict(g) if g is not None else None for g in gates]
            rollout._recount()
            rollout._changed = set(rollout.devices)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"rollout {rollout.id}: unreadable state ({exc!r})") from None
        return rollout

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rollout) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Rollout({self.id!r}, {self.status.value}, wave {self.wave + 1}/{len(self.waves)})"


def _summary(rollout: Rollout) -> dict[str, Any]:
    """Counts and progress for the API and the dashboard."""
    failed, finished = rollout._counts()
    total = len(rollout.devices)
    return {
        "id": rollout.id,
        "kind": rollout.spec.kind,
        "status": rollout.status.value,
        "bundle": rollout.spec.bundle.name,
        "version": rollout.spec.bundle.version,
        "revision": rollout.spec.revision,
        "total": total,
        "counts": _status_counts(state.deploy for state in rollout.devices.values()),
        "succeeded": finished - failed,
        "failed": failed,
        "finished": finished,
        "progress_percent": round(100 * finished / total, 1),
        "failure_percent": round(100 * failed / finished, 1) if finished else 0.0,
        "wave": rollout.wave + 1,
        "waves": len(rollout.waves),
        "wave_sizes": [len(w) for w in rollout.waves],
        "abort_reason": rollout.abort_reason,
        "started_at": rollout.started_at,
        "finished_at": rollout.finished_at,
        "updated_at": rollout.updated_at,
        "rollback": _rollback_view(rollout.rollback_bundle, rollout.rollback_revision, rollout.devices.values()),
        "quality_gates": list(rollout.quality_gates) if rollout.spec.quality is not None else None,
    }


def _header(rollout: Rollout) -> dict[str, Any]:
    return {
        "status": rollout.status.value,
        "wave": rollout.wave,
        "abort_reason": rollout.abort_reason,
        "started_at": rollout.started_at,
        "finished_at": rollout.finished_at,
        "updated_at": rollout.updated_at,
        "rollback_bundle": asdict(rollout.rollback_bundle) if rollout.rollback_bundle else None,
        "rollback_revision": rollout.rollback_revision,
        "quality_gates": list(rollout.quality_gates),
    }
