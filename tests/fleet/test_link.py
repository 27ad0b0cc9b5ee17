"""The fleet manager's MQTT link: each device message decoded and handed on (or counted as malformed,
never raised into paho's thread), every command signed for its device; and a whole rollout over a
real mosquitto on MQTT 3.1.1."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgecloud.fleet.link import FleetLink
from edgecloud.fleet.metrics import FleetMetrics
from edgecloud.fleet.rollout import FixedBatches, RolloutStatus
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.fleetlink.broker import BrokerSettings
from edgecloud.shared.fleetlink.commands import CommandSigner, open_command
from edgecloud.shared.fleetlink.messages import (
    AckStatus,
    Birth,
    BundleRef,
    Command,
    CommandAck,
    Telemetry,
    Topics,
    encode,
)
from tests.helpers.sim_fleet import (
    FLEET,
    SIM_KEY,
    SIM_TRUST,
    assert_applied_exactly_once,
    make_archive,
    manager_config,
    start_devices,
    start_manager,
    wait_devices_online,
    wait_status,
)


class Receiver:
    """Records what the link hands on; raises ``fail`` when set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.fail: Exception | None = None

    def _record(self, kind: str, device: str, message: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append((kind, device, message))

    def on_birth(self, device: str, birth: Birth) -> None:
        self._record("birth", device, birth)

    def on_telemetry(self, device: str, telemetry: Telemetry, raw: dict[str, Any]) -> None:
        self._record("telemetry", device, (telemetry, raw))

    def on_ack(self, device: str, ack: CommandAck) -> None:
        self._record("ack", device, ack)


class RecordingClient:
    """Stands in for paho's client where only ``publish`` is called."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, **_: Any) -> None:
        self.published.append((topic, payload, qos, retain))


@pytest.fixture
def link() -> FleetLink:
    return FleetLink(
        fleet=FLEET,
        broker=BrokerSettings(host="127.0.0.1", port=1),  # never connected: the tests feed messages
        client_id="test-link",
        signer=CommandSigner(SIM_KEY, ttl_s=600),
        metrics=FleetMetrics(),
    )


def message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    out = mqtt.MQTTMessage(topic=topic.encode())
    out.payload = payload
    return out


def counted(link: FleetLink, name: str, labels: dict[str, str] | None = None) -> float:
    return link.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def telemetry(device: str) -> dict[str, Any]:
    return Telemetry(
        device=device, at=1.0, model_name="edge-student", model_version=1, requests={"edge": 1},
        latency_ms={}, escalation_rate=0.0, degraded=0, errors=0, outbox_depth=0, cpu_percent=1.0, memory_mb=1.0,
    ).to_dict()  # fmt: skip


def test_each_leaf_is_decoded_and_handed_to_the_receiver_and_counted(link: FleetLink) -> None:
    receiver = Receiver()
    link._receiver = receiver  # what start() sets, without connecting
    dev = Topics(FLEET, "dev00")
    ack = CommandAck(command_id="c1", device="dev00", status=AckStatus.ACTIVE, revision=1, rollout_id="ro1")
    link._on_message(None, None, message(dev.state, encode(Birth(online=True, device="dev00", session=3).to_dict())))
    link._on_message(None, None, message(dev.telemetry, encode(telemetry("dev00"))))
    link._on_message(None, None, message(dev.ack, encode(ack.to_dict())))

    assert [(kind, device) for kind, device, _ in receiver.calls] == [
        ("birth", "dev00"),
        ("telemetry", "dev00"),
        ("ack", "dev00"),
    ]
    assert receiver.calls[0][2].session == 3
    parsed, raw = receiver.calls[1][2]
    assert parsed.model_version == 1 and raw == telemetry("dev00")  # the raw dict travels as it came
    assert receiver.calls[2][2] == ack
    for leaf in ("state", "telemetry", "cmd/ack"):
        assert counted(link, "edgecloud_fleet_messages_total", {"leaf": leaf}) == 1
    assert counted(link, "edgecloud_fleet_telemetry_lag_seconds_count") == 1
    assert counted(link, "edgecloud_fleet_malformed_messages_total") == 0


def test_another_fleet_an_unknown_leaf_and_anything_before_start_are_ignored(link: FleetLink) -> None:
    receiver = Receiver()
    birth = encode(Birth(online=True, device="dev00").to_dict())
    link.handle(Topics(FLEET, "dev00").state, birth)  # not started: no receiver yet
    link._receiver = receiver
    link.handle(Topics("elsewhere", "dev00").state, birth)
    link.handle(f"edgecloud/v1/{FLEET}/dev00/unknown/leaf", b"{}")
    assert receiver.calls == []
    assert counted(link, "edgecloud_fleet_messages_total", {"leaf": "state"}) == 0


def test_a_malformed_message_or_a_failing_handler_is_counted_never_raised(
    link: FleetLink, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver()
    link._receiver = receiver
    dev = Topics(FLEET, "dev00")
    with pytest.raises(InvalidInputError):
        link.handle(dev.state, b"not json")
    with caplog.at_level(logging.WARNING, logger="edgecloud.fleet.link"):
        link._on_message(None, None, message(dev.state, b"not json"))  # paho's path: counted, logged
        link._on_message(None, None, message("not/a/fleet/topic", b"{}"))
        receiver.fail = InvalidInputError("state of dev00 names device dev01")
        link._on_message(None, None, message(dev.state, encode(Birth(online=True, device="dev00").to_dict())))
        receiver.fail = RuntimeError("a bug in a handler")
        link._on_message(None, None, message(dev.state, encode(Birth(online=True, device="dev00").to_dict())))
    assert counted(link, "edgecloud_fleet_malformed_messages_total") == 4
    assert counted(link, "edgecloud_fleet_messages_total", {"leaf": "state"}) == 0
    logged = [r.getMessage() for r in caplog.records]
    assert sum("ignoring a malformed message" in m for m in logged) == 3
    assert sum("failed; dropped" in m for m in logged) == 1


def test_every_command_is_signed_for_its_device_and_one_without_a_device_is_not_sent(link: FleetLink) -> None:
    recorder = RecordingClient()
    link.client = recorder  # type: ignore[assignment]
    bundle = BundleRef(name="edge-student", version=2, url="http://fleet.test/a.tar.gz", sha256="a" * 64, size=1)
    commands = [
        Command(id=f"ro1-{d}-1", type="deploy", revision=1, bundle=bundle, rollout_id="ro1", device=d)
        for d in ("dev00", "dev01", "")
    ]
    link.publish(commands)

    assert [(topic, qos, retain) for topic, _, qos, retain in recorder.published] == [
        (Topics(FLEET, "dev00").cmd, 1, False),
        (Topics(FLEET, "dev01").cmd, 1, False),
    ]
    for (topic, payload, _, _), command in zip(recorder.published, commands, strict=False):
        opened = open_command(payload, SIM_TRUST, device=command.device)
        assert opened.id == command.id and 599 <= opened.expires_at - opened.issued_at <= 601
        assert json.loads(payload)["signature"]["key_id"]
    assert counted(link, "edgecloud_fleet_commands_published_total", {"type": "deploy"}) == 2


def test_a_manager_on_mqtt_3_1_1_runs_a_rollout(mqtt_broker, tmp_path: Path, sims, managers) -> None:  # type: ignore[no-untyped-def]
    devices = start_devices(mqtt_broker, sims, 3)
    v311 = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port, version="3.1.1")
    manager = start_manager(manager_config(mqtt_broker, tmp_path, broker=v311), managers)
    assert manager.link.client.protocol == 4  # MQTT 3.1.1 on the wire
    wait_devices_online(manager, 3)
    record = manager.register_bundle(make_archive(tmp_path, 2))
    rollout = manager.create_rollout(
        record.name, record.version, labels={"site": "lab"}, strategy=FixedBatches(size=2), device_timeout_s=60
    )
    wait_status(manager, rollout.id, RolloutStatus.COMPLETED)
    assert_applied_exactly_once(devices, rollout.id, rollout.spec.revision)
