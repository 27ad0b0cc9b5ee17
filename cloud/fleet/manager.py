"""The fleet manager: rollouts driven over MQTT, with every change persisted.

It glues three pure pieces together: the MQTT contract (:mod:`shared.fleet`),
the rollout state machine (:mod:`cloud.fleet.rollout`) and the SQLite store
(:mod:`cloud.fleet.store`). One paho client (MQTT 5, persistent session,
auto-reconnect) subscribes at QoS 1 to every device's ``state``,
``telemetry`` and ``cmd/ack``; a tick thread times devices out and sends the
next wave.

Delivery guarantees, in order of the steps that could lose something:

* A rollout is saved *before* the commands its change produced are published,
  so a crash in between leaves deliveries marked SENT whose command never
  left. On start every in-flight delivery of a live rollout is published
  again, with its original command id.
* Commands are QoS 1 on a device's persistent session, so the broker queues
  them while the device is away; the manager's own session is persistent too,
  so acks sent while it is down are delivered when it comes back.
* When a device re-announces with a new birth session (it reconnected, e.g.
  after a broker restart), every delivery of it still waiting for a final ack
  is published again. Devices dedupe by command id and answer a repeat with
  the final status they reached, so nothing is applied twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud.fleet.metrics import FleetMetrics
from cloud.fleet.rollout import (
    AbortCriteria,
    Delivery,
    DeviceStatus,
    FixedBatches,
    Rollout,
    RolloutSpec,
    RolloutStatus,
    Strategy,
)
from cloud.fleet.store import BundleRecord, DeviceRecord, FleetStore
from shared.bundle import MANIFEST_FILE, Manifest, file_digest
from shared.errors import BundleError, ConfigError, InvalidInputError, ManifestError, NotFoundError
from shared.fleet import Birth, BundleRef, Command, CommandAck, Telemetry, Topics, decode, encode
from shared.mqtt_security import apply_security, validate_security

__all__ = ["FleetManager", "FleetManagerConfig"]

log = logging.getLogger(__name__)

_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_IN_FLIGHT = frozenset({DeviceStatus.SENT, DeviceStatus.DOWNLOADING, DeviceStatus.VERIFYING})
_MAX_MANIFEST_BYTES = 4 << 20


@dataclass(frozen=True, kw_only=True)
class FleetManagerConfig:
    fleet: str = "default"
    """The fleet's segment of the topic tree."""
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    """CA bundle; setting it turns TLS on."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    store_path: Path | str = ":memory:"
    """The SQLite file of bundles, devices and rollouts (``:memory:`` loses all on exit)."""
    artifact_dir: Path
    """Where registered archives are kept, named ``{sha256}.tar.gz``."""
    public_base_url: str = "http://127.0.0.1:8080"
    """How devices reach the API; artifact URLs are ``{public_base_url}/artifacts/{sha256}.tar.gz``."""
    tick_interval_s: float = 2.0
    """How often running rollouts are ticked (timeouts, next wave)."""
    client_id: str = ""
    """MQTT client id; keep it stable so the persistent session survives restarts. Default
    ``edgecloud-fleet-{fleet}``."""
    session_expiry_s: int = 24 * 3600
    """How long the broker keeps the manager's session (and queues acks) while it is away."""
    keepalive_s: int = 30
    mqtt_version: str = "5"
    """``5`` (persistent session with expiry) or ``3.1.1`` (persistent session without expiry)."""
    trusted_keys: tuple[Path, ...] = ()
    """Ed25519 public keys (PEM). When set, a bundle is registered only if its signature verifies
    against one of them and every file matches its manifest; when empty, bundles are registered
    unchecked (the devices still verify) and a warning is logged."""
    max_bundle_bytes: int = 1 << 30
    """Largest archive accepted; unpacking for verification may use four times that."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "artifact_dir", Path(self.artifact_dir))
        object.__setattr__(self, "trusted_keys", tuple(Path(k) for k in self.trusted_keys))
        if not isinstance(self.fleet, str) or not _SEGMENT.fullmatch(self.fleet):
            raise ConfigError(f"fleet must match [A-Za-z0-9._-]{{1,64}}, got {self.fleet!r}")
        if not self.broker_host:
            raise ConfigError("broker_host must not be empty")
        if not isinstance(self.broker_port, int) or not 0 < self.broker_port < 65536:
            raise ConfigError(f"broker_port must be in 1..65535, got {self.broker_port!r}")
        validate_security(self.username, self.password, self.tls_ca, self.tls_cert, self.tls_key)
        if self.mqtt_version not in ("5", "3.1.1"):
            raise ConfigError(f"mqtt_version must be 5 or 3.1.1, got {self.mqtt_version!r}")
        if not self.public_base_url.startswith(("http://", "https://")):
            raise ConfigError(f"public_base_url must be http(s), got {self.public_base_url!r}")
        object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
        if not isinstance(self.tick_interval_s, (int, float)) or not 0 < self.tick_interval_s <= 3600:
            raise ConfigError(f"tick_interval_s must be in (0, 3600], got {self.tick_interval_s!r}")
        if self.client_id and not 1 <= len(self.client_id) <= 128:
            raise ConfigError("client_id must be 1..128 characters")
        if not isinstance(self.max_bundle_bytes, int) or self.max_bundle_bytes < 1:
            raise ConfigError(f"max_bundle_bytes must be an integer >= 1, got {self.max_bundle_bytes!r}")
        if self.session_expiry_s < 0 or self.keepalive_s < 1:
            raise ConfigError("session_expiry_s must be >= 0 and keepalive_s >= 1")

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or f"edgecloud-fleet-{self.fleet}"

    def artifact_url(self, sha256: str) -> str:
        return f"{self.public_base_url}/artifacts/{sha256}.tar.gz"


# -- bundles ---------------------------------------------------------------------------


def read_archive_manifest(archive: Path) -> Manifest:
    """The validated ``manifest.json`` at the root of a bundle archive."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # at the root, as pack_bundle writes it and as devices unpack it (a bundle in a top
            # folder would register here and then fail on every device)
            candidates = [m for m in tar.getmembers() if m.name.removeprefix("./") == MANIFEST_FILE]
            if not candidates:
                raise ManifestError(f"{archive.name}: no {MANIFEST_FILE} at the archive's root "
                                    "(pack bundles with shared.artifacts.pack_bundle or `tar -C BUNDLE_DIR -czf X .`)")
            member = candidates[0]
            if not member.isfile() or member.size > _MAX_MANIFEST_BYTES:
                raise ManifestError(f"{archive.name}: {member.name} is not a regular file under 4 MiB")
            handle = tar.extractfile(member)
            assert handle is not None
            raw = handle.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{archive.name} is not a readable .tar.gz: {exc}") from exc
    try:
        return Manifest.from_dict(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{archive.name}: {MANIFEST_FILE} is not UTF-8 JSON: {exc}") from exc


def _verify_signature(archive: Path, trusted_keys: Sequence[Path], max_unpacked_bytes: int) -> str:
    """Unpack to a temporary folder and verify signature and files; the signing key's id."""
    from shared.artifacts import unpack_bundle
    from shared.signing import TrustStore, read_signature, verify_signed_bundle

    trust = TrustStore.from_paths(list(trusted_keys))
    with tempfile.TemporaryDirectory(prefix="fleet-verify-") as tmp:
        directory = unpack_bundle(archive, Path(tmp), max_total_bytes=max_unpacked_bytes)
        verify_signed_bundle(directory, trust)
        kid, _ = read_signature(directory)
    return kid


# -- the manager -----------------------------------------------------------------------


class FleetManager:
    """Thread-safe: MQTT callbacks, the tick thread and API calls share one lock."""

    def __init__(self, config: FleetManagerConfig, store: FleetStore | None = None) -> None:
        self.config = config
        config.artifact_dir.mkdir(parents=True, exist_ok=True)
        self.store = store if store is not None else FleetStore(config.store_path)
        self._owns_store = store is None
        self._lock = threading.RLock()
        self._rollouts: dict[str, Rollout] = {r.id: r for r in self.store.list_rollouts()}
        self._devices: dict[str, DeviceRecord] = {d.id: d for d in self.store.list_devices()}
        self._revision = max((max(r.spec.revision, r.rollback_revision) for r in self._rollouts.values()),
                             default=0)
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
        c = self.config
        if c.mqtt_version == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = c.session_expiry_s
            self.client.connect_async(c.broker_host, c.broker_port, keepalive=c.keepalive_s, clean_start=False,
                                      properties=properties)
        else:  # the persistent session comes from clean_session=False on the client
            self.client.connect_async(c.broker_host, c.broker_port, keepalive=c.keepalive_s)
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

    def __enter__(self) -> FleetManager:
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
        c = self.config
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=c.mqtt_client_id,
                             protocol=mqtt.MQTTv5 if c.mqtt_version == "5" else mqtt.MQTTv311,
                             clean_session=None if c.mqtt_version == "5" else False)
        apply_security(client, c.username, c.password, c.tls_ca, c.tls_cert, c.tls_key)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
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
        qos = SubscribeOptions(qos=1) if self.config.mqtt_version == "5" else 1
        client.subscribe([(Topics.fleet_wildcard(fleet, leaf), qos) for leaf in ("state", "telemetry", "cmd/ack")])
        self._connected.set()
        log.info("fleet manager connected to %s:%d", self.config.broker_host, self.config.broker_port)

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
            data = decode(message.payload)
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
            log.warning("ignoring a malformed message on %s: %s", message.topic, exc)
        except Exception:  # noqa: BLE001 - one bad message must not kill the network thread
            log.exception("handling a message on %s failed", message.topic)

    def _publish(self, commands: Iterable[Command]) -> None:
        for command in commands:
            device = command.id[len(command.rollout_id) + 1:command.id.rindex("-")]
            self.client.publish(Topics(self.config.fleet, device).cmd, encode(command.to_dict()), qos=1,
                                 retain=False)
            self.metrics.commands.labels(command.type).inc()
            log.info("published %s (%s v%d) to %s", command.id, command.type, command.bundle.version, device)

    # -- device messages ---------------------------------------------------------------

    def _on_birth(self, device: str, birth: Birth) -> None:
        if birth.device != device:
            raise InvalidInputError(f"state of {device!r} names device {birth.device!r}")
        now = time.time()
        with self._lock:
            old = self._devices.get(device)
            reborn = birth.online and (old is None or not old.online or birth.session != old.session)
            record = DeviceRecord(
                id=device, labels=dict(birth.labels) or (dict(old.labels) if old else {}), online=birth.online,
                model_name=birth.model_name or (old.model_name if old else ""),
                model_version=birth.model_version or (old.model_version if old else 0),
                session=birth.session if birth.online or old is None else old.session,
                last_seen=now, telemetry=old.telemetry if old else None,
            )
            self._devices[device] = record
            self.store.save_device(record)
            pending = [cmd for r in self._rollouts.values() for cmd in self._in_flight(r, device)] if reborn else []
        if pending:
            log.info("%s re-announced (session %d): re-publishing %d command(s)", device, birth.session,
                     len(pending))
        self._publish(pending)

    def _on_telemetry(self, device: str, telemetry: Telemetry, raw: dict[str, Any]) -> None:
        if telemetry.device != device:
            raise InvalidInputError(f"telemetry of {device!r} names device {telemetry.device!r}")
        with self._lock:
            old = self._devices.get(device) or DeviceRecord(id=device)
            record = replace(old, last_seen=time.time(), telemetry=raw, model_name=telemetry.model_name,
                             model_version=telemetry.model_version)
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
            except Exception:  # noqa: BLE001 - keep ticking
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

        def rebuild(delivery: Delivery, kind: str, bundle: BundleRef | None, revision: int) -> None:
            if delivery.status in _IN_FLIGHT and bundle is not None and delivery.command_id:
                out.append(Command(id=delivery.command_id, type=kind, revision=revision, bundle=bundle,
                                   rollout_id=rollout.id, issued_at=delivery.sent_at or 0.0))

        for state in states:
            if rollout.status.live:
                rebuild(state.deploy, spec.kind, spec.bundle, spec.revision)
            if rollout.status is RolloutStatus.ROLLED_BACK and state.rollback is not None:
                rebuild(state.rollback, "rollback", rollout.rollback_bundle, rollout.rollback_revision)
        return out

    # -- bundles -----------------------------------------------------------------------

    def register_bundle(self, archive_path: str | os.PathLike[str]) -> BundleRecord:
        """Validate an edge bundle archive (.tar.gz), keep it under its sha256 and record it.

        Registering the same archive twice returns the first record; another
        archive under a registered name and version is refused.
        """
        source = Path(archive_path)
        if not source.is_file():
            raise NotFoundError(f"no archive at {source}")
        if source.stat().st_size > self.config.max_bundle_bytes:
            raise InvalidInputError(f"{source.name} is over max_bundle_bytes ({self.config.max_bundle_bytes})")
        sha256, size = file_digest(source)
        manifest = read_archive_manifest(source)
        if manifest.kind != "edge":
            raise InvalidInputError(f"{manifest.name} v{manifest.version} is a {manifest.kind} bundle; "
                                    "devices install edge bundles only")
        key_id = ""
        if self.config.trusted_keys:
            key_id = _verify_signature(source, self.config.trusted_keys, 4 * self.config.max_bundle_bytes)
        else:
            log.warning("%s v%d registered without a signature check: no trusted_keys configured",
                        manifest.name, manifest.version)
        try:
            existing = self.store.load_bundle(manifest.name, manifest.version)
        except NotFoundError:
            existing = None
        if existing is not None:
            if existing.sha256 != sha256:
                raise InvalidInputError(f"bundle {manifest.name} v{manifest.version} is already registered "
                                        f"with another sha256 ({existing.sha256[:12]}..)")
            return existing
        target = self.config.artifact_dir / f"{sha256}.tar.gz"
        if not target.exists():
            tmp = target.with_name(f".{sha256}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        record = BundleRecord(name=manifest.name, version=manifest.version, sha256=sha256, size=size,
                              path=str(target), key_id=key_id, registered_at=time.time())
        self.store.save_bundle(record)
        log.info("registered %s v%d (%s, %d bytes)", record.name, record.version, sha256[:12], size)
        return record

    def bundles(self) -> list[BundleRecord]:
        return self.store.list_bundles()

    def artifact_path(self, sha256: str) -> Path:
        """The stored archive with that digest; NotFoundError for anything else."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise NotFoundError(f"no artifact {sha256[:70]!r}")
        path = self.config.artifact_dir / f"{sha256}.tar.gz"
        if not path.is_file():
            raise NotFoundError(f"no artifact {sha256}")
        return path

    def _ref(self, record: BundleRecord) -> BundleRef:
        return BundleRef(name=record.name, version=record.version, url=self.config.artifact_url(record.sha256),
                         sha256=record.sha256, size=record.size)

    # -- rollouts ----------------------------------------------------------------------

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

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
        ref = self._ref(self.store.load_bundle(bundle, version))
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
                id=rollout_id, bundle=ref, targets=tuple(targets), revision=revision,
                strategy=strategy or FixedBatches(size=len(targets)), abort=abort,
                device_timeout_s=device_timeout_s,
                success_statuses=frozenset(success_statuses or {DeviceStatus.ACTIVE}),
            )
            rollout = Rollout(spec)
            commands = rollout.start(now) if start else []
            self._rollouts[rollout.id] = rollout
            self.store.save_rollout(rollout)
        self._publish(commands)
        log.info("rollout %s: %s v%d to %d device(s), revision %d", rollout.id, bundle, version, len(targets),
                 revision)
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
                record = self.store.load_bundle(name, to_version)
            revision = self._next_revision()
            return self._operate(rollout_id, "rollback", self._ref(record), revision)

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
                out.append({
                    "id": d.id, "online": d.online, "labels": d.labels, "model_name": d.model_name,
                    "model_version": d.model_version, "session": d.session, "last_seen": d.last_seen,
                    "escalation_rate": telemetry.get("escalation_rate"),
                    "telemetry_at": telemetry.get("at"), "telemetry": d.telemetry,
                    "rollout": None if rollout is None else {
                        "id": rollout.id, "status": rollout.devices[d.id].deploy.status.value},
                })
            return out
