"""The fleet's use cases, one plain method each: what an operator asks (register a bundle; plan, start,
pause, resume, abort or roll back a rollout) and what a device reports (its birth, telemetry and acks).

This is where the fleet decides, apart from the wire (:mod:`edgecloud.fleet.link`) and from what an
operator is shown (:mod:`edgecloud.fleet.views`), so it reads and tests without a broker. Every change
keeps the order the delivery guarantees rest on (:mod:`edgecloud.fleet.manager`): change the state
(:class:`~edgecloud.fleet.state.FleetState`) under its lock, save the change to the store, release the
lock, then hand the commands the change produced to ``publish`` (the link signs and sends them). A crash
between save and publish leaves deliveries marked SENT; :meth:`FleetService.republish_in_flight` and a
device's re-announcement send them again with their original ids (devices dedupe by id).

No MQTT and no thread of its own: the link calls the device methods on paho's thread, the
manager's tick thread calls :meth:`FleetService.tick`, the REST API the operator's methods.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgecloud.fleet.quality import QualityGate, fleet_quality, quality_of
from edgecloud.fleet.registry import BundleRegistry
from edgecloud.fleet.rollout import (
    AbortCriteria,
    Delivery,
    DeviceStatus,
    FixedBatches,
    Rollout,
    RolloutSpec,
    RolloutStatus,
    Strategy,
)
from edgecloud.fleet.state import FleetState
from edgecloud.fleet.store import BundleRecord, DeviceRecord, FleetStorage
from edgecloud.shared.base.errors import InvalidInputError, NotFoundError
from edgecloud.shared.fleetlink.messages import AckStatus, Birth, BundleRef, Command, CommandAck, Telemetry

__all__ = ["FleetService", "in_flight"]

log = logging.getLogger(__name__)

_IN_FLIGHT = frozenset({DeviceStatus.SENT, DeviceStatus.DOWNLOADING, DeviceStatus.VERIFYING})

Publish = Callable[[Iterable[Command]], None]
"""Sends commands to their devices (:meth:`edgecloud.fleet.link.FleetLink.publish`)."""


def in_flight(rollout: Rollout, device: str | None = None) -> list[Command]:
    """The commands of ``rollout`` (to ``device``, or to every device) still waiting for a final ack,
    rebuilt with their original ids so a device that already has one dedupes the repeat."""
    spec, out = rollout.spec, []
    states = rollout.devices.values() if device is None else filter(None, [rollout.devices.get(device)])

    def rebuild(target: str, delivery: Delivery, kind: str, bundle: BundleRef | None, revision: int) -> None:
        if delivery.status in _IN_FLIGHT and bundle is not None and delivery.command_id:
            out.append(
                Command(
                    id=delivery.command_id,
                    type=kind,
                    revision=revision,
                    bundle=bundle,
                    rollout_id=rollout.id,
                    issued_at=delivery.sent_at or 0.0,
                    device=target,
                )
            )

    for state in states:
        if rollout.status.live:
            rebuild(state.device, state.deploy, spec.kind, spec.bundle, spec.revision)
        if rollout.status is RolloutStatus.ROLLED_BACK and state.rollback is not None:
            rebuild(state.device, state.rollback, "rollback", rollout.rollback_bundle, rollout.rollback_revision)
    return out


class FleetService:
    """The use cases over one :class:`FleetState`; thread-safe through its lock."""

    def __init__(self, state: FleetState, store: FleetStorage, registry: BundleRegistry, publish: Publish) -> None:
        self.state = state
        self.store = store
        self.registry = registry
        self._publish = publish
        # The stored counter; a store from before it had one starts above its rollouts' revisions.
        self._revisions_in_rollouts = max(
            (max(r.spec.revision, r.rollback_revision) for r in state.rollouts.values()), default=0
        )

    # -- what devices report (the link calls these on paho's thread) ------------------

    def on_birth(self, device: str, birth: Birth) -> None:
        """Record the device's state; when it (re)connected with a new session, publish again every
        command it still owes a final ack for."""
        if birth.device != device:
            raise InvalidInputError(f"state of {device!r} names device {birth.device!r}")
        now = time.time()
        with self.state.lock:
            old = self.state.devices.get(device)
            reborn = birth.online and (old is None or not old.online or birth.session != old.session)
            record = DeviceRecord(
                id=device,
                labels=dict(birth.labels) or (dict(old.labels) if old else {}),
                online=birth.online,
                model_name=birth.model_name or (old.model_name if old else ""),
                model_version=birth.model_version or (old.model_version if old else 0),
                session=birth.session if birth.online or old is None else old.session,
                last_seen=now,
                telemetry=old.telemetry if old else None,
            )
            self.state.devices[device] = record
            self.store.save_device(record)
            rollouts = self.state.rollouts.values()
            pending = [cmd for r in rollouts for cmd in in_flight(r, device)] if reborn else []
        if pending:
            log.info("%s re-announced (session %d): re-publishing %d command(s)", device, birth.session, len(pending))
        self._publish(pending)

    def on_telemetry(self, device: str, telemetry: Telemetry, raw: dict[str, Any]) -> None:
        """Keep the device's latest telemetry (``raw``, as it came) and the model it says it serves."""
        if telemetry.device != device:
            raise InvalidInputError(f"telemetry of {device!r} names device {telemetry.device!r}")
        with self.state.lock:
            old = self.state.devices.get(device) or DeviceRecord(id=device)
            if telemetry.state_problem and telemetry.state_problem != (old.telemetry or {}).get("state_problem"):
                # said once per problem, not per message: the device repeats it in every telemetry
                log.warning("device %s runs on a damaged agent state: %s", device, telemetry.state_problem)
            record = replace(
                old,
                last_seen=time.time(),
                telemetry=raw,
                model_name=telemetry.model_name,
                model_version=telemetry.model_version,
            )
            self.state.devices[device] = record
            self.store.save_device(record)

    def on_ack(self, device: str, ack: CommandAck) -> None:
        """Move the ack's delivery forward in its rollout and publish what that releases (the next wave,
        a rollback); an ack that names no rollout is a refusal by the device, logged only."""
        if ack.device != device:
            raise InvalidInputError(f"ack on {device!r}'s topic names device {ack.device!r}")
        now = time.time()
        with self.state.lock:
            old = self.state.devices.get(device)
            if old is not None:
                record = replace(old, last_seen=now, model_version=ack.version or old.model_version)
                self.state.devices[device] = record
                self.store.save_device(record)
            rollout = self.state.rollouts.get(ack.rollout_id)
            if rollout is None:
                if ack.status is AckStatus.FAILED and not ack.rollout_id:
                    # how a device reports a command it refused (unsigned, forged, expired...): it
                    # names no rollout, so a forger cannot fail a real delivery through the device
                    log.warning("%s refused command %r: %s", device, ack.command_id, ack.reason[:300])
                else:
                    log.info("ack %s for unknown rollout %r ignored", ack.command_id, ack.rollout_id)
                return
            before = (rollout.status, rollout.updated_at)
            commands = rollout.on_ack(ack, now)
            if commands or (rollout.status, rollout.updated_at) != before:
                self.store.save_rollout(rollout)
        self._publish(commands)

    # -- the clock and re-publishing ---------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Time out devices and advance every live rollout (the manager's tick thread calls this)."""
        now = time.time() if now is None else now
        commands: list[Command] = []
        with self.state.lock:
            for rollout in self.state.rollouts.values():
                if not (rollout.status.live or rollout.status is RolloutStatus.ROLLED_BACK):
                    continue
                before = (rollout.status, rollout.updated_at)
                out = rollout.tick(now)
                if rollout.awaiting_quality:
                    out += self._judge_quality(rollout, now)
                if out or (rollout.status, rollout.updated_at) != before:
                    self.store.save_rollout(rollout)
                commands.extend(out)
        self._publish(commands)

    def _judge_quality(self, rollout: Rollout, now: float) -> list[Command]:
        """Feed the rollout its gate's decision on the current wave: the new version's field quality
        over the wave's devices against the previous registered version's over the fleet (each
        device's latest telemetry). A failed wave aborts the rollout and rolls it back. Under the lock."""
        spec, gate = rollout.spec, rollout.spec.quality
        assert gate is not None
        name, devices = spec.bundle.name, self.state.devices
        wave = [devices[d].telemetry for d in rollout.waves[rollout.wave] if d in devices]
        new = quality_of(fleet_quality(wave), name, spec.bundle.version)
        try:
            previous: BundleRecord | None = self._rollback_target(rollout, None)
        except NotFoundError:
            previous = None  # nothing to compare against: the gate waits, saying the baseline has no evidence
        fleet = fleet_quality(d.telemetry for d in devices.values())
        baseline = quality_of(fleet, name, previous.version if previous else 0)
        decision = gate.judge(new, baseline)
        commands = rollout.on_quality(decision, now)
        if decision.verdict == "failed" and previous is not None:
            log.warning("rollout %s: %s; rolling back to v%d", rollout.id, rollout.abort_reason, previous.version)
            commands += rollout.rollback(self.registry.ref(previous), self.next_revision(), now)
        return commands

    def republish_in_flight(self) -> None:
        """Publish again every command still waiting for a final ack (at start: a crash between save and
        publish left some unsent; devices dedupe the others)."""
        with self.state.lock:
            pending = [cmd for r in self.state.rollouts.values() for cmd in in_flight(r)]
        self._publish(pending)

    # -- bundles (the registry) --------------------------------------------------------

    def register_bundle(self, archive_path: str | os.PathLike[str]) -> BundleRecord:
        """Register an edge bundle archive (:meth:`BundleRegistry.register`)."""
        return self.registry.register(archive_path)

    def bundles(self) -> list[BundleRecord]:
        return self.registry.records()

    def artifact_path(self, sha256: str) -> Path:
        """The stored archive with that digest; NotFoundError for anything else."""
        return self.registry.artifact_path(sha256)

    # -- rollouts ----------------------------------------------------------------------

    def next_revision(self) -> int:
        """A revision never handed out before, also across restarts (the store keeps the counter)."""
        return self.store.next_revision(at_least=self._revisions_in_rollouts)

    def resolve_targets(self, devices: Sequence[str] = (), labels: Mapping[str, str] | None = None) -> list[str]:
        """Device ids in rollout order: the named ones, then those matching every label (by id)."""
        with self.state.lock:
            known = dict(self.state.devices)
        targets: list[str] = []
        for device in devices:
            if device not in known:
                raise NotFoundError(f"no device {device!r}")
            if device not in targets:
                targets.append(device)
        if labels:
            for device in sorted(known):
                record = known[device]
                if all(record.labels.get(k) == v for k, v in labels.items()) and device not in targets:
                    targets.append(device)
        if not targets:
            raise InvalidInputError("no device matches the given ids and labels")
        return targets

    def create_rollout(
        self,
        bundle: str,
        version: int,
        *,
        devices: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        strategy: Strategy | None = None,
        abort: AbortCriteria | None = None,
        quality: QualityGate | None = None,
        device_timeout_s: float = 900.0,
        success_statuses: Iterable[DeviceStatus | str] | None = None,
        rollout_id: str | None = None,
        start: bool = True,
    ) -> Rollout:
        """Plan a rollout of a registered bundle and (by default) send its first wave.

        ``strategy`` defaults to one wave of every target. A device already in
        a live rollout cannot be targeted again until that one ends.
        """
        ref = self.registry.ref(self.registry.load(bundle, version))
        if quality is not None and self._previous_version(bundle, version) is None:
            raise InvalidInputError(
                f"a quality gate compares v{version} with the version before it, and rolls back to it: register an "
                f"older {bundle} version first (POST /v1/bundles), or start the rollout without a quality gate"
            )
        targets = self.resolve_targets(devices, labels)
        now = time.time()
        with self.state.lock:
            busy = self.state.live_rollouts_by_device()
            clash = [f"{d} ({busy[d].id})" for d in targets if d in busy]
            if clash:
                raise InvalidInputError(f"device(s) already in a live rollout: {', '.join(clash[:5])}")
            revision = self.next_revision()
            rollout_id = rollout_id or f"ro{revision}"
            if rollout_id in self.state.rollouts:
                raise InvalidInputError(f"rollout {rollout_id!r} exists")
            spec = RolloutSpec(
                id=rollout_id,
                bundle=ref,
                targets=tuple(targets),
                revision=revision,
                strategy=strategy or FixedBatches(size=len(targets)),
                abort=abort,
                quality=quality,
                device_timeout_s=device_timeout_s,
                success_statuses=frozenset(success_statuses or {DeviceStatus.ACTIVE}),
            )
            rollout = Rollout(spec)
            commands = rollout.start(now) if start else []
            self.state.rollouts[rollout.id] = rollout
            self.store.save_rollout(rollout)
        self._publish(commands)
        log.info("rollout %s: %s v%d to %d device(s), revision %d", rollout.id, bundle, version, len(targets), revision)
        return rollout

    def start_rollout(self, rollout_id: str) -> dict[str, Any]:
        """Send the first wave of a rollout planned with ``start=False``; its summary."""
        return self._change(rollout_id, Rollout.start)

    def pause_rollout(self, rollout_id: str) -> dict[str, Any]:
        """Hold the next waves (deliveries already sent go on); its summary."""
        return self._change(rollout_id, Rollout.pause)

    def resume_rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._change(rollout_id, Rollout.resume)

    def abort_rollout(self, rollout_id: str, reason: str = "aborted by an operator") -> dict[str, Any]:
        """Issue no new command (devices already sent keep reporting; :meth:`rollback_rollout` is the way
        back); its summary."""
        return self._change(rollout_id, lambda rollout, now: rollout.abort(reason, now=now))

    def rollback_rollout(self, rollout_id: str, to_version: int | None = None) -> dict[str, Any]:
        """Send devices that went ACTIVE back to ``to_version`` (default: the newest registered
        version of the same bundle older than the rollout's), under a new revision; its summary."""

        def rollback(rollout: Rollout, now: float) -> list[Command]:
            previous = self.registry.ref(self._rollback_target(rollout, to_version))
            return rollout.rollback(previous, self.next_revision(), now)

        return self._change(rollout_id, rollback)

    def _rollback_target(self, rollout: Rollout, to_version: int | None) -> BundleRecord:
        name, version = rollout.spec.bundle.name, rollout.spec.bundle.version
        if to_version is not None:
            return self.registry.load(name, to_version)
        previous = self._previous_version(name, version)
        if previous is None:
            raise NotFoundError(f"no registered {name} version older than v{version} to roll back to")
        return previous

    def _previous_version(self, name: str, version: int) -> BundleRecord | None:
        """The newest registered ``name`` older than ``version``: the quality gate's baseline, the rollback target."""
        older = [b for b in self.store.list_bundles(name) if b.version < version]
        return older[-1] if older else None

    def _change(self, rollout_id: str, step: Callable[[Rollout, float], list[Command]]) -> dict[str, Any]:
        """Apply ``step`` to the rollout under the lock and save it, then publish what it produced."""
        now = time.time()
        with self.state.lock:
            rollout = self.state.rollout(rollout_id)
            commands = step(rollout, now)
            self.store.save_rollout(rollout)
            summary = rollout.summary()
        self._publish(commands)
        return summary
