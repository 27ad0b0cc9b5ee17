"""Attacks on the fleet manager's side of the broker, against the real FleetManager on a real
mosquitto with simulated devices (tests/fleet/sim.py) that verify every command's signature.

Whatever a device (or anyone who can publish on a device's topics) sends on ``state``,
``telemetry`` or ``cmd/ack``, the manager's MQTT loop keeps running, no device record or rollout
is corrupted, and a real rollout right after still completes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgecloud.fleet.rollout import DeviceStatus, FixedBatches, RolloutStatus
from edgecloud.shared.fleetlink.commands import CommandRejectedError, open_command
from edgecloud.shared.fleetlink.messages import Birth, Command, Telemetry, Topics, encode
from tests.helpers.sim_fleet import (
    FLEET,
    SIM_TRUST,
    assert_applied_exactly_once,
    make_archive,
    manager_config,
    start_devices,
    start_manager,
    wait_devices_online,
    wait_status,
)
from tests.helpers.waiting import wait_for


class Attacker:
    """A raw MQTT client that can publish on any device's topics and listens to the commands."""

    def __init__(self, broker: Any) -> None:
        self.commands: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"attacker-{uuid.uuid4().hex[:6]}"
        )
        self.client.on_message = lambda _c, _u, m: self.commands.append((m.topic, bytes(m.payload)))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(Topics.fleet_wildcard(FLEET, "cmd"), qos=1)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def telemetry(device: str, **changes: Any) -> bytes:
    good = Telemetry(
        device=device, at=time.time(), model_name="edge-student", model_version=1, requests={"edge": 1},
        latency_ms={}, escalation_rate=0.0, degraded=0, errors=0, outbox_depth=0, cpu_percent=1.0, memory_mb=1.0,
    )  # fmt: skip
    return encode({**good.to_dict(), **changes})


def test_poison_on_every_topic_the_manager_reads_changes_nothing_and_a_rollout_still_completes(
    mqtt_broker, tmp_path, sims, managers
) -> None:  # type: ignore[no-untyped-def]
    devices = start_devices(mqtt_broker, sims, 3)
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 3)
    record = manager.register_bundle(make_archive(tmp_path, 2))
    attacker = Attacker(mqtt_broker)
    try:
        before = {d["id"]: d for d in manager.devices()}
        dev = Topics(FLEET, "dev00")
        ack = {"command_id": "c", "device": "dev00", "status": "ACTIVE", "revision": 1}
        poison = [
            (dev.state, b"not json"),
            (dev.state, b"[" * 60000),
            (dev.state, b'{"online": true, "device": "dev00", "session": ' + b"9" * 5000 + b"}"),
            (dev.state, encode(Birth(online=True, device="dev00").to_dict() | {"model_version": 2**64})),
            (dev.state, encode(Birth(online=True, device="dev00").to_dict() | {"labels": ["site"]})),
            (dev.state, b'{"online": true, "device": "dev00", "model_name": "\\ud800"}'),
            (dev.state, encode(Birth(online=False, device="dev01").to_dict())),  # another device's state
            (dev.telemetry, telemetry("dev00", at="noon")),
            (dev.telemetry, telemetry("dev00", model_version=2**63)),
            (dev.telemetry, telemetry("dev00", cpu_percent=float("nan"))),
            (dev.telemetry, b"\xff" * 100),
            (dev.telemetry, b'{"x": "' + b"a" * (70 * 1024) + b'"}'),
            (dev.ack, encode(ack | {"revision": 2**63})),
            (dev.ack, encode(ack | {"at": "soon"})),
            (dev.ack, encode(ack | {"status": "PWNED"})),
            (dev.ack, encode(ack | {"device": "dev01"})),
            (f"edgecloud/v1/{FLEET}/dev00/unknown/leaf", b"?"),
        ]

        def refused() -> float:
            return manager.metrics.registry.get_sample_value("edgecloud_fleet_malformed_messages_total") or 0.0

        malformed = refused()
        for topic, payload in poison:
            attacker.publish(topic, payload)
        # every one but the unknown leaf, which is not the manager's to read
        wait_for(lambda: refused() - malformed >= len(poison) - 1, 15, "every refusal")

        assert manager.link.client._thread is not None and manager.link.client._thread.is_alive()
        after = {d["id"]: d for d in manager.devices()}
        for device in ("dev00", "dev01", "dev02"):
            for field in ("online", "model_version", "session", "labels", "model_name"):
                assert after[device][field] == before[device][field], (device, field)
        assert set(after) == set(before)

        rollout = manager.create_rollout(
            record.name, record.version, labels={"site": "lab"}, strategy=FixedBatches(size=3), device_timeout_s=60
        )
        wait_status(manager, rollout.id, RolloutStatus.COMPLETED)
        assert_applied_exactly_once(devices, rollout.id, rollout.spec.revision)
    finally:
        attacker.close()


def test_commands_are_signed_for_their_device_and_signed_afresh_when_re_published(
    mqtt_broker, tmp_path, sims, managers
) -> None:  # type: ignore[no-untyped-def]
    devices = start_devices(mqtt_broker, sims, 2, delay_s=6.0)  # slow: the deliveries stay in flight
    manager = start_manager(manager_config(mqtt_broker, tmp_path, command_ttl_s=600), managers)
    wait_devices_online(manager, 2)
    record = manager.register_bundle(make_archive(tmp_path, 2))
    attacker = Attacker(mqtt_broker)
    try:
        rollout = manager.create_rollout(record.name, record.version, devices=["dev00", "dev01"])
        wait_for(lambda: len(attacker.commands) >= 2, 10, "both commands")
        first = {topic: payload for topic, payload in attacker.commands}
        for device in ("dev00", "dev01"):
            command = open_command(first[Topics(FLEET, device).cmd], SIM_TRUST, device=device)
            assert command.device == device and 599 <= command.expires_at - command.issued_at <= 601
            # a captured command is worthless on another device's topic
            other = "dev01" if device == "dev00" else "dev00"
            attacker.publish(Topics(FLEET, other).cmd, first[Topics(FLEET, device).cmd])
        wait_for(lambda: all(d.refused == ["wrong-device"] for d in devices), 10, "both replays refused")

        # what a device sends for a command it refused borrows the real id but names no rollout:
        # the manager logs it and the real delivery stays in flight
        real_id = manager.get_rollout(rollout.id).devices["dev00"].deploy.command_id
        refusal = {"command_id": real_id, "device": "dev00", "status": "FAILED", "revision": 0,
                   "reason": "refused (bad-signature): forged", "rollout_id": ""}  # fmt: skip
        attacker.publish(Topics(FLEET, "dev00").ack, encode(refusal))
        time.sleep(0.5)
        assert manager.get_rollout(rollout.id).devices["dev00"].deploy.status is not DeviceStatus.FAILED

        time.sleep(1.1)  # a later signature has a later issue time
        dev00 = devices[0]
        rebirth = Birth(online=True, device="dev00", model_name="edge-student", model_version=1, session=99)
        dev00.client.publish(dev00.topics.state, encode(rebirth.to_dict()), qos=1, retain=True)
        topic = Topics(FLEET, "dev00").cmd

        def republished() -> Command | None:  # on dev00's topic, for dev00, not the first one nor a replay
            for t, payload in list(attacker.commands):
                if t == topic and payload != first[topic]:
                    try:
                        return open_command(payload, SIM_TRUST, device="dev00")
                    except CommandRejectedError:
                        continue
            return None

        new = wait_for(republished, 10, "the re-published command")
        old = open_command(first[topic], SIM_TRUST, device="dev00")
        assert new.id == old.id and new.issued_at > old.issued_at and new.expires_at > old.expires_at

        wait_status(manager, rollout.id, RolloutStatus.COMPLETED, timeout=30)
        assert all(sum(d.applied.values()) == 1 for d in devices)
    finally:
        attacker.close()
