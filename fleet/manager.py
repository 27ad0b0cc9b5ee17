"""The fleet manager: rollouts driven over MQTT, with every change persisted.

It glues pure pieces together: the MQTT contract (:mod:`edgecloud.shared.fleetlink.messages`), the rollout state
machine (:mod:`edgecloud.fleet.rollout`), the SQLite store (:mod:`edgecloud.fleet.store`) and the bundle registry
(:mod:`edgecloud.fleet.registry`). One paho client (MQTT 5, persistent session, auto-reconnect) subscribes at QoS 1
to every device's ``state``, ``telemetry`` and ``cmd/ack``; a tick thread times devices out and sends the next wave.

Delivery guarantees, in order of the steps that could lose something:

* A rollout is saved *before* the commands its change produced are published, so a crash in between
  leaves deliveries marked SENT whose command never left. On start every in-flight delivery of a live
  rollout is published again, with its original command id.
* Commands are QoS 1 on a device's persistent session, so the broker queues
  them while the device is away; the manager's own session is persistent too,
  so acks sent while it is down are delivered when it comes back.
* When a device re-announces with a new birth session (it reconnected, e.g.
  after a broker restart), every delivery of it still waiting for a final ack
  is published again. Devices dedupe by command id and answer a repeat with
  the final status they reached, so nothing is applied twice.

Every command is signed (:mod:`edgecloud.shared.fleetlink.commands`) with the configured command key for
the one device it addresses, at the moment it is published: a re-publish carries a fresh expiry,
so a device that was away longer than the expiry still gets a command it accepts.

No message from the broker stops the MQTT loop: a malformed or hostile state, telemetry or ack
payload is counted (``malformed``), logged with its reason and dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgecloud.fleet.metrics import FleetMetrics
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
from edgecloud.fleet.rollout_spec import ID_SEGMENT
from edgecloud.fleet.store import BundleRecord, DeviceRecord, FleetStorage, FleetStore
from edgecloud.shared.base.errors import ConfigError, InvalidInputError, NotFoundError
from edgecloud.shared.base.tracing import trace_headers, tracer, tracing_enabled
from edgecloud.shared.bundles.signing import load_private_key
from edgecloud.shared.fleetlink.broker import BrokerSettings, connect_async, create_client, publish_properties
from edgecloud.shared.fleetlink.commands import DEFAULT_TTL_S, CommandSigner
from edgecloud.shared.fleetlink.messages import AckStatus, Birth, BundleRef, Command, CommandAck, Telemetry, Topics
from edgecloud.shared.fleetlink.messages import decode as decode_payload

__all__ = ["FleetManager", "FleetManagerConfig"]

log = logging.getLogger(__name__)

_IN_FLIGHT = frozenset({DeviceStatus.SENT, DeviceStatus.DOWNLOADING, DeviceStatus.VERIFYING})


SESSION_EXPIRY_S = 24 * 3600
"""How long the broker keeps the manager's persistent session by default."""


@dataclass(frozen=True, kw_only=True)
class FleetManagerConfig:
    fleet: str = "default"
    """The fleet's segment of the topic tree."""
    broker: BrokerSettings = field(default_factory=lambda: BrokerSettings(session_expiry_s=SESSION_EXPIRY_S))
    """The broker and the manager's persistent session on it (kept a day by default, so acks
    queue while the manager is away)."""
    store_path: Path | str = ":memory:"
    """The SQLite file of bundles, devices and rollouts (``:memory:`` loses all on exit)."""
    artifact_dir: Path
    """Where registered archives are kept, named ``{sha256}.tar.gz``."""
    command_key: Path | None = None
    """Ed25519 private key (PEM) every command is signed with; required (devices act only on
    commands signed by a key they trust for commands). Create one with ``edgecloud models keygen``."""
    command_ttl_s: float = DEFAULT_TTL_S
    """How long a published command stays valid; it is signed afresh on every re-publish."""
    public_base_url: str = "http://127.0.0.1:8080"
    """How devices reach the API; artifact URLs are ``{public_base_url}/artifacts/{sha256}.tar.gz``."""
    tick_interval_s: float = 2.0
    """How often running rollouts are ticked (timeouts, next wave)."""
    client_id: str = ""
    """MQTT client id; keep it stable so the persistent session survives restarts. Default
    ``edgecloud-fleet-{fleet}``."""
    trusted_keys: tuple[Path, ...] = ()
    """Ed25519 public keys (PEM). When set, a bundle is registered only if its signature verifies
    against one of them and every file matches its manifest; when empty, bundles are registered
    unchecked (the devices still verify) and a warning is logged."""
    max_bundle_bytes: int = 1 << 30
    """Largest archive accepted; unpacking for verification may use four times that."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "artifact_dir", Path(self.artifact_dir))
        object.__setattr__(self, "trusted_keys", tuple(Path(k) for k in self.trusted_keys))
        if self.command_key is None:
            raise ConfigError(
                "the fleet manager needs a command signing key (command_key, --command-key KEY.pem): "
                "devices refuse unsigned commands"
            )
        object.__setattr__(self, "command_key", Path(self.command_key))
        ttl = self.command_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 60 <= ttl <= 30 * 24 * 3600:
            raise ConfigError(f"command_ttl_s must be in [60 s, 30 days], got {ttl!r}")
        if not isinstance(self.fleet, str) or not ID_SEGMENT.fullmatch(self.fleet):
            raise ConfigError(f"fleet must match [A-Za-z0-9._-]{{1,64}}, got {self.fleet!r}")
        if not isinstance(self.broker, BrokerSettings):
            raise ConfigError(f"broker must be BrokerSettings, got {type(self.broker).__name__}")
        if not self.public_base_url.startswith(("http://", "https://")):
            raise ConfigError(f"public_base_url must be http(s), got {self.public_base_url!r}")
        object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
        if not isinstance(self.tick_interval_s, (int, float)) or not 0 < self.tick_interval_s <= 3600:
            raise ConfigError(f"tick_interval_s must be in (0, 3600], got {self.tick_interval_s!r}")
        if self.client_id and not 1 <= len(self.client_id) <= 128:
            raise ConfigError("client_id must be 1..128 characters")
        if not isinstance(self.max_bundle_bytes, int) or self.max_bundle_bytes < 1:
            raise ConfigError(f"max_bundle_bytes must be an integer >= 1, got {self.max_bundle_bytes!r}")

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or f"edgecloud-fleet-{self.fleet}"

    def artifact_url(self, sha256: str) -> str:
        return f"{self.public_base_url}/artifacts/{sha256}.tar.gz"


# -- the manager -----------------------------------------------------------------------


class FleetManager:
    """Thread-safe: MQTT callbacks, the tick thread and API calls share one lock."""

    def __init__(self, config: FleetManagerConfig, store: FleetStorage | None = None) -> None:
        self.config = config
        assert config.command_key is not None  # the config refuses None
        # before anything opens: fail fast
        self._signer = CommandSigner(load_private_key(config.command_key), ttl_s=config.command_ttl_s)
        log.info("signing commands with key %s", self._signer.key_id)
        self.store = store if store is not None else FleetStore(config.store_path)
        self._owns_store = store is None
        self.registry = BundleRegistry(
            self.store,
            config.artifact_dir,
            trusted_keys=config.trusted_keys,
            max_bundle_bytes=config.max_bundle_bytes,
            artifact_url=config.artifact_url,
        )
        self._lock = threading.RLock()
        self._rollouts: dict[str, Rollout] = {r.id: r for r in self.store.list_rollouts()}
        self._devices: dict[str, DeviceRecord] = {d.id: d for d in self.store.list_devices()}
        # The stored counter; a store from before it had one starts above its rollouts' revisions.
        self._revisions_in_rollouts = max(
            (max(r.spec.revision, r.rollback_revision) for r in self._rollouts.values()), default=0
        )
        self.metrics = FleetMetrics()
        self.metrics.bind(
            online=lambda: sum(d.online for d in list(self._devices.values())),
            known=lambda: len(self._devices),
            live_rollouts=lambda: sum(r.status.live for r in list(self._rollouts.values())),
        )
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._tick_thread: threading.Thread | None = None
        self.client = self._make_client()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background, retrying), re-publish what was in flight, start ticking."""
        connect_async(self.client, self.config.broker)
        self.client.loop_start()
        with self._lock:  # a crash between save and publish left these unsent; devices dedupe
            pending = [cmd for r in self._rollouts.values() for cmd in self._in_flight(r)]
        self._publish(pending)
        self._tick_thread = threading.Thread(target=self._tick_loop, name="fleet-tick", daemon=True)
        self._tick_thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._tick_thread is not None:
            self._tick_thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- MQTT --------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = create_client(self.config.broker, self.config.mqtt_client_id, max_reconnect_delay_s=5)
        client.max_queued_messages_set(0)  # unbounded: a command must never be dropped client-side
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("broker refused the fleet manager: %s", reason_code)
            return
        fleet = self.config.fleet
        qos = SubscribeOptions(qos=1) if self.config.broker.v5 else 1
        client.subscribe([(Topics.fleet_wildcard(fleet, leaf), qos) for leaf in ("state", "telemetry", "cmd/ack")])
        self._connected.set()
        log.info("fleet manager connected to %s", self.config.broker.address)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("fleet manager lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:
        """Runs on paho's thread; the PUBACK goes out after it returns, so a crash re-delivers."""
        try:
            fleet, device, leaf = Topics.parse(message.topic)
            if fleet != self.config.fleet:
                return
            data = decode_payload(message.payload)
            if leaf == "state":
                self._on_birth(device, Birth.from_dict(data))
            elif leaf == "telemetry":
                telemetry = Telemetry.from_dict(data)
                self._on_telemetry(device, telemetry, data)
                self.metrics.telemetry_lag.observe(max(0.0, time.time() - telemetry.at))
            elif leaf == "cmd/ack":
                self._on_ack(device, CommandAck.from_dict(data))
            else:
                return
            self.metrics.messages.labels(leaf).inc()
        except InvalidInputError as exc:
            self.metrics.malformed.inc()
            log.warning("ignoring a malformed message on %s: %s", message.topic[:200], exc)
        except Exception:  # never let a message kill paho's thread: the broker would redeliver it forever
            self.metrics.malformed.inc()
            log.exception("handling a message on %s failed; dropped", message.topic[:200])

    def _publish(self, commands: Iterable[Command]) -> None:
        """Sign each command for its device, now (so every re-publish has a fresh expiry), and send it."""
        for command in commands:
            try:
                payload = self._signer.sign(command)
                topic = Topics(self.config.fleet, command.device).cmd
            except (ConfigError, InvalidInputError) as exc:  # a command without a device: a bug, not a send
                log.error("not publishing %s: %s", command.id, exc)
                continue
            if tracing_enabled():  # else no span: a rollout to thousands of devices makes none it would not record
                self._publish_traced(command, topic, payload)
            else:
                self.client.publish(topic, payload, qos=1, retain=False)
            self.metrics.commands.labels(command.type).inc()
            log.info("published %s (%s v%d) to %s", command.id, command.type, command.bundle.version, command.device)

    def _publish_traced(self, command: Command, topic: str, payload: bytes) -> None:
        """Publish in a ``fleet.command`` span, its trace context beside the signed payload (MQTT 5 user
        properties): the device's ``agent.command`` becomes its child; nothing it acts on changes."""
        attributes = {"edgecloud.command_id": command.id, "edgecloud.device": command.device,
                      "edgecloud.rollout_id": command.rollout_id, "edgecloud.command": command.type}  # fmt: skip
        with tracer().start_as_current_span("fleet.command", attributes=attributes) as span:
            properties = publish_properties(trace_headers(span), v5=self.config.broker.v5)
            self.client.publish(topic, payload, qos=1, retain=False, properties=properties)

    # -- device messages ---------------------------------------------------------------

    def _on_birth(self, device: str, birth: Birth) -> None:
        if birth.device != device:
            raise InvalidInputError(f"state of {device!r} names device {birth.device!r}")
        now = time.time()
        with self._lock:
            old = self._devices.get(device)
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
            self._devices[device] = record
            self.store.save_device(record)
            pending = [cmd for r in self._rollouts.values() for cmd in self._in_flight(r, device)] if reborn else []
        if pending:
            log.info("%s re-announced (session %d): re-publishing %d command(s)", device, birth.session, len(pending))
        self._publish(pending)

    def _on_telemetry(self, device: str, telemetry: Telemetry, raw: dict[str, Any]) -> None:
        if telemetry.device != device:
            raise InvalidInputError(f"telemetry of {device!r} names device {telemetry.device!r}")
        with self._lock:
            old = self._devices.get(device) or DeviceRecord(id=device)
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
            self._devices[device] = record
            self.store.save_device(record)

    def _on_ack(self, device: str, ack: CommandAck) -> None:
        if ack.device != device:
            raise InvalidInputError(f"ack on {device!r}'s topic names device {ack.device!r}")
        now = time.time()
        with self._lock:
            old = self._devices.get(device)
            if old is not None:
                record = replace(old, last_seen=now, model_version=ack.version or old.model_version)
                self._devices[device] = record
                self.store.save_device(record)
            rollout = self._rollouts.get(ack.rollout_id)
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

    # -- ticking -----------------------------------------------------------------------

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("rollout tick failed")

    def tick(self, now: float | None = None) -> None:
        """Time out devices and advance every live rollout (the tick thread calls this)."""
        now = time.time() if now is None else now
        commands: list[Command] = []
        with self._lock:
            for rollout in self._rollouts.values():
                if not (rollout.status.live or rollout.status is RolloutStatus.ROLLED_BACK):
                    continue
                before = (rollout.status, rollout.updated_at)
                out = rollout.tick(now)
                if out or (rollout.status, rollout.updated_at) != before:
                    self.store.save_rollout(rollout)
                commands.extend(out)
        self._publish(commands)

    # -- re-publishing -----------------------------------------------------------------

    @staticmethod
    def _in_flight(rollout: Rollout, device: str | None = None) -> list[Command]:
        """The commands of ``rollout`` still waiting for a final ack, rebuilt with their original ids."""
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

    def _next_revision(self) -> int:
        return self.store.next_revision(at_least=self._revisions_in_rollouts)

    def resolve_targets(self, devices: Sequence[str] = (), labels: Mapping[str, str] | None = None) -> list[str]:
        """Device ids in rollout order: the named ones, then those matching every label (by id)."""
        with self._lock:
            known = dict(self._devices)
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
        targets = self.resolve_targets(devices, labels)
        now = time.time()
        with self._lock:
            busy = {d: r.id for r in self._rollouts.values() if r.status.live for d in r.devices}
            clash = [f"{d} ({busy[d]})" for d in targets if d in busy]
            if clash:
                raise InvalidInputError(f"device(s) already in a live rollout: {', '.join(clash[:5])}")
            revision = self._next_revision()
            rollout_id = rollout_id or f"ro{revision}"
            if rollout_id in self._rollouts:
                raise InvalidInputError(f"rollout {rollout_id!r} exists")
            spec = RolloutSpec(
                id=rollout_id,
                bundle=ref,
                targets=tuple(targets),
                revision=revision,
                strategy=strategy or FixedBatches(size=len(targets)),
                abort=abort,
                device_timeout_s=device_timeout_s,
                success_statuses=frozenset(success_statuses or {DeviceStatus.ACTIVE}),
            )
            rollout = Rollout(spec)
            commands = rollout.start(now) if start else []
            self._rollouts[rollout.id] = rollout
            self.store.save_rollout(rollout)
        self._publish(commands)
        log.info("rollout %s: %s v%d to %d device(s), revision %d", rollout.id, bundle, version, len(targets), revision)
        return rollout

    def _get(self, rollout_id: str) -> Rollout:
        rollout = self._rollouts.get(rollout_id)
        if rollout is None:
            raise NotFoundError(f"no rollout {rollout_id!r}")
        return rollout

    def _operate(self, rollout_id: str, operation: str, *args: Any) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            rollout = self._get(rollout_id)
            if operation == "start":
                commands = rollout.start(now)
            elif operation == "pause":
                commands = rollout.pause(now)
            elif operation == "resume":
                commands = rollout.resume(now)
            elif operation == "abort":
                commands = rollout.abort(*args, now=now)
            else:  # rollback
                previous, revision = args
                commands = rollout.rollback(previous, revision, now)
            self.store.save_rollout(rollout)
            summary = rollout.summary()
        self._publish(commands)
        return summary

    def start_rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._operate(rollout_id, "start")

    def pause_rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._operate(rollout_id, "pause")

    def resume_rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._operate(rollout_id, "resume")

    def abort_rollout(self, rollout_id: str, reason: str = "aborted by an operator") -> dict[str, Any]:
        return self._operate(rollout_id, "abort", reason)

    def rollback_rollout(self, rollout_id: str, to_version: int | None = None) -> dict[str, Any]:
        """Send devices that went ACTIVE back to ``to_version`` (default: the newest registered
        version of the same bundle older than the rollout's)."""
        with self._lock:
            rollout = self._get(rollout_id)
            name, version = rollout.spec.bundle.name, rollout.spec.bundle.version
            if to_version is None:
                older = [b for b in self.store.list_bundles(name) if b.version < version]
                if not older:
                    raise NotFoundError(f"no registered {name} version older than v{version} to roll back to")
                record = older[-1]
            else:
                record = self.registry.load(name, to_version)
            revision = self._next_revision()
            return self._operate(rollout_id, "rollback", self.registry.ref(record), revision)

    # -- views -------------------------------------------------------------------------

    def rollouts(self) -> list[dict[str, Any]]:
        """Summaries, newest revision first."""
        with self._lock:
            ordered = sorted(self._rollouts.values(), key=lambda r: r.spec.revision, reverse=True)
            return [r.summary() for r in ordered]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """Summary plus the spec and every device's deliveries."""
        with self._lock:
            rollout = self._get(rollout_id)
            data = rollout.summary()
            data["spec"] = rollout.spec.to_dict()
            data["devices"] = [s.to_dict() for s in rollout.devices.values()]
            return data

    def get_rollout(self, rollout_id: str) -> Rollout:
        """The live object (tests and tools; mutate only through the manager's methods)."""
        with self._lock:
            return self._get(rollout_id)

    def devices(self) -> list[dict[str, Any]]:
        with self._lock:
            records = sorted(self._devices.values(), key=lambda d: d.id)
            live = {d: r for r in self._rollouts.values() if r.status.live for d in r.devices}
            out = []
            for d in records:
                telemetry = d.telemetry or {}
                rollout = live.get(d.id)
                out.append(
                    {
                        "id": d.id,
                        "online": d.online,
                        "labels": d.labels,
                        "model_name": d.model_name,
                        "model_version": d.model_version,
                        "session": d.session,
                        "last_seen": d.last_seen,
                        "escalation_rate": telemetry.get("escalation_rate"),
                        "state_problem": telemetry.get("state_problem", ""),
                        "telemetry_at": telemetry.get("at"),
                        "telemetry": d.telemetry,
                        "rollout": None
                        if rollout is None
                        else {"id": rollout.id, "status": rollout.devices[d.id].deploy.status.value},
                    }
                )
            return out
