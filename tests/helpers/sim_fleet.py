"""Simulated devices and fleet-manager helpers shared by the fleet, deploy, security and CLI tests.

A simulated device is a small paho client: it publishes a retained birth on
every connect (session counter + 1), opens each command as a real device does
(signed by the test command key ``SIM_KEY``, for it, not expired; anything else
is counted in ``refused``), answers it with DOWNLOADING, VERIFYING and then
ACTIVE or FAILED, dedupes by command id (a repeat gets the final ack again) and
counts how often it *applied* each command id.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.fleet.rollout import RolloutStatus
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.manifest import write_bundle
from edgecloud.shared.bundles.signing import TrustStore
from edgecloud.shared.fleetlink.broker import BrokerSettings
from edgecloud.shared.fleetlink.commands import CommandRejectedError, open_command
from edgecloud.shared.fleetlink.messages import AckStatus, Birth, Command, CommandAck, Telemetry, Topics, encode
from edgecloud.shared.fleetlink.quality import FieldQuality
from tests.helpers.waiting import wait_for

FLEET = "testfleet"
SIM_KEY = Ed25519PrivateKey.generate()
"""The command key of the test managers; simulated devices trust its public half."""
SIM_TRUST = TrustStore([SIM_KEY.public_key()])


def command_key(directory: Path) -> Path:
    """``SIM_KEY`` as a PEM file in ``directory`` (what FleetManagerConfig.command_key names)."""
    path = directory / "command.key"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            SIM_KEY.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


class SimDevice:
    def __init__(
        self,
        broker: Any,
        device: str,
        *,
        fail: bool = False,
        labels: dict[str, str] | None = None,
        delay_s: float = 0.0,
        escalation_rate: float = 0.1,
    ) -> None:
        self.device, self.fail, self.delay_s = device, fail, delay_s
        self.labels = labels or {"site": "lab"}
        self.escalation_rate = escalation_rate
        self.field: dict[int, FieldQuality] = {}
        """What the device reports of each bundle version's field quality (the test sets it)."""
        self.topics = Topics(FLEET, device)
        self.version = 1
        self.session = 0
        self.applied: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.refused: list[str] = []
        """The reason code of every command this device refused to open."""
        self.done: dict[str, dict[str, Any]] = {}
        self._working: set[str] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"sim-{device}", protocol=mqtt.MQTTv5
        )
        self.client.will_set(
            self.topics.state, encode(Birth(online=False, device=device).to_dict()), qos=1, retain=True
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.client.connect_async(broker.host, broker.port, keepalive=10, clean_start=False, properties=properties)
        self.client.loop_start()

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            return
        self.session += 1
        client.subscribe(self.topics.cmd, qos=1)
        birth = Birth(
            online=True,
            device=self.device,
            model_name="edge-student",
            model_version=self.version,
            session=self.session,
            labels=self.labels,
            at=time.time(),
        )
        client.publish(self.topics.state, encode(birth.to_dict()), qos=1, retain=True)
        self.send_telemetry()

    def send_telemetry(self, state_problem: str = "") -> None:
        telemetry = Telemetry(
            device=self.device,
            at=time.time(),
            model_name="edge-student",
            model_version=self.version,
            requests={"edge": 9, "cloud": 1},
            latency_ms={},
            escalation_rate=self.escalation_rate,
            degraded=0,
            errors=0,
            outbox_depth=0,
            cpu_percent=1.0,
            memory_mb=10.0,
            state_problem=state_problem,
            quality=[self.field[v] for v in sorted(self.field)],
        )
        self.client.publish(self.topics.telemetry, encode(telemetry.to_dict()), qos=0)

    def _on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:
        try:
            command = open_command(message.payload, SIM_TRUST, device=self.device)
        except CommandRejectedError as exc:
            with self._lock:
                self.refused.append(exc.reason)
            return
        with self._lock:
            self.received[command.id] += 1
            done = self.done.get(command.id)
            if done is None:
                if command.id in self._working:
                    return  # the first delivery will answer
                self._working.add(command.id)
                self.applied[command.id] += 1
        if done is not None:
            self.client.publish(self.topics.ack, encode(done), qos=1)
            return
        threading.Thread(target=self._apply, args=(command,), daemon=True).start()

    def _ack(self, command: Command, status: AckStatus, reason: str = "") -> dict[str, Any]:
        ack = CommandAck(
            command_id=command.id,
            device=self.device,
            status=status,
            revision=command.revision,
            reason=reason,
            version=self.version,
            rollout_id=command.rollout_id,
            at=time.time(),
        ).to_dict()
        self.client.publish(self.topics.ack, encode(ack), qos=1)
        return ack

    def _apply(self, command: Command) -> None:
        self._ack(command, AckStatus.DOWNLOADING)
        time.sleep(self.delay_s)
        self._ack(command, AckStatus.VERIFYING)
        if self.fail:
            final = self._ack(command, AckStatus.FAILED, "self-test failed")
        else:
            self.version = command.bundle.version
            final = self._ack(command, AckStatus.ACTIVE)
            self.send_telemetry()  # what it reports of the version it serves now
        with self._lock:
            self.done[command.id] = final
            self._working.discard(command.id)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_devices(broker: Any, sims: list[SimDevice], count: int, **kwargs: Any) -> list[SimDevice]:
    fail = kwargs.pop("fail", set())
    labels = kwargs.pop("labels", lambda i: {"site": "lab"})
    for i in range(count):
        name = f"dev{i:02d}"
        sims.append(SimDevice(broker, name, fail=name in fail, labels=labels(i), **kwargs))
    return sims


def make_bundle(directory: Path, version: int, payload_bytes: int = 4096, kind: str = "edge") -> Path:
    bundle = directory / f"src-v{version}" / f"edge-student-v{version}"
    bundle.mkdir(parents=True)
    (bundle / "model.bin").write_bytes(os.urandom(payload_bytes))
    write_bundle(
        bundle,
        name="edge-student",
        kind=kind,
        version=version,  # type: ignore[arg-type]
        io={"inputs": [], "outputs": [], "feature_dim": 4, "tokenizer": "none"},
        calibration={},
        golden=[],
        metadata={},
    )
    return bundle


def make_archive(directory: Path, version: int, payload_bytes: int = 4096, kind: str = "edge") -> Path:
    """A .tar.gz of the bundle as devices take it: files at the root (pack_bundle)."""
    bundle = make_bundle(directory, version, payload_bytes, kind)
    archive = directory / f"edge-student-v{version}.tar.gz"
    pack_bundle(bundle, archive)
    return archive


def manager_config(mqtt_broker: Any, tmp_path: Path, **overrides: Any) -> FleetManagerConfig:
    values: dict[str, Any] = {
        "fleet": FLEET,
        "broker": BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port),
        "store_path": tmp_path / "fleet.sqlite3",
        "artifact_dir": tmp_path / "artifacts",
        "command_key": command_key(tmp_path),
        "tick_interval_s": 0.2,
    }
    values.update(overrides)
    return FleetManagerConfig(**values)


def start_manager(config: FleetManagerConfig, managers: list[FleetManager]) -> FleetManager:
    manager = FleetManager(config)
    managers.append(manager)
    manager.start()
    assert manager.wait_connected(10)
    return manager


def wait_devices_online(manager: FleetManager, count: int) -> None:
    wait_for(lambda: sum(d["online"] for d in manager.devices()) >= count, 15, f"{count} devices online")


def wait_status(manager: FleetManager, rollout_id: str, *statuses: RolloutStatus, timeout: float = 45) -> None:
    wait_for(
        lambda: manager.get_rollout(rollout_id).status in statuses,
        timeout,
        f"rollout {rollout_id} in {statuses}; it is {manager.get_rollout(rollout_id)!r}",
    )


def assert_applied_exactly_once(devices: list[SimDevice], rollout_id: str, revision: int) -> None:
    for device in devices:
        expected = f"{rollout_id}-{device.device}-{revision}"
        assert device.applied == Counter({expected: 1}), (device.device, device.applied)
        assert device.refused == [], (device.device, device.refused)  # every command signed, fresh, for it
