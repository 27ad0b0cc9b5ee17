"""The simulated devices of ``benchmarks/fleet_scale.py``, run in a process of their own (so that they do not
share the fleet manager's GIL): each one its own MQTT 5 client with its own client id, will (retained
offline state), persistent session, retained birth on connect and QoS 0 telemetry; ``--threads``
selector loops drive them through paho's external-loop API (one socket each, no thread per device).
A device checks a deploy command's signature as a real agent does, answers it at once with
DOWNLOADING, VERIFYING and ACTIVE acks (QoS 1) and then reports the new version; it downloads
nothing. :func:`run_devices` is the process's target; shared arrays carry its counts back."""

from __future__ import annotations

import heapq
import random
import resource
import selectors
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgecloud.shared.bundles.signing import TrustStore
from edgecloud.shared.fleetlink.commands import CommandRejectedError, open_command
from edgecloud.shared.fleetlink.messages import AckStatus, Birth, CommandAck, Telemetry, Topics, encode

FLEET = "bench"
BUNDLE = "edge-student"
LABELS = {"bench": "fleet-scale"}


def raise_nofile() -> tuple[int, int]:
    """Lift the soft open-files limit to the hard one (children such as mosquitto inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class SimDevice:
    """One device: its own paho client, driven by a selector loop of the owning thread."""

    def __init__(self, index: int, host: str, port: int, version: int, trust: TrustStore) -> None:
        self.device = f"sim{index:05d}"
        self.trust = trust
        self.refused = 0
        self.topics = Topics(FLEET, self.device)
        self.host, self.port, self.version = host, port, version
        self.labels = {**LABELS, "site": f"s{index % 10}"}
        self.session = 0
        self.seq = 0
        self.connected = False
        self.commands = 0
        self.done: dict[str, bytes] = {}
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"edgecloud-{FLEET}-{self.device}",
            protocol=mqtt.MQTTv5,
        )
        self.client.will_set(
            self.topics.state, encode(Birth(online=False, device=self.device).to_dict()), qos=1, retain=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.client.connect(self.host, self.port, keepalive=60, clean_start=False, properties=properties)

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            return
        self.session += 1
        client.subscribe(self.topics.cmd, qos=1)
        birth = Birth(
            online=True,
            device=self.device,
            model_name=BUNDLE,
            model_version=self.version,
            session=self.session,
            capabilities=["deploy", "telemetry"],
            labels=self.labels,
            at=time.time(),
        )
        client.publish(self.topics.state, encode(birth.to_dict()), qos=1, retain=True)
        self.connected = True

    def _on_disconnect(self, *_: object) -> None:
        self.connected = False

    def send_telemetry(self) -> None:
        self.seq += 1
        telemetry = Telemetry(
            device=self.device,
            at=time.time(),
            model_name=BUNDLE,
            model_version=self.version,
            requests={"edge": 90 * self.seq, "cloud": 10 * self.seq},
            latency_ms={"edge": {"p50": 3.0, "p99": 9.0}},
            escalation_rate=0.1,
            degraded=0,
            errors=0,
            outbox_depth=0,
            cpu_percent=5.0,
            memory_mb=120.0,
        )
        self.client.publish(self.topics.telemetry, encode({**telemetry.to_dict(), "seq": self.seq}), qos=0)

    def _on_message(self, client, _userdata, message: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        try:  # what a real agent does first: check the manager's signature, the device and the expiry
            command = open_command(message.payload, self.trust, device=self.device)
        except CommandRejectedError:
            self.refused += 1
            return
        self.commands += 1
        if command.id in self.done:  # a redelivery: say again how it ended
            client.publish(self.topics.ack, self.done[command.id], qos=1)
            return
        for status in (AckStatus.DOWNLOADING, AckStatus.VERIFYING, AckStatus.ACTIVE):
            if status is AckStatus.ACTIVE:
                self.version = command.bundle.version
            ack = encode(
                CommandAck(
                    command_id=command.id,
                    device=self.device,
                    status=status,
                    revision=command.revision,
                    version=self.version,
                    rollout_id=command.rollout_id,
                    at=time.time(),
                ).to_dict()
            )
            client.publish(self.topics.ack, ack, qos=1)
        self.done[command.id] = ack


def _device_loop(
    devices: list[SimDevice],
    slot: int,
    interval: float,
    stop: Any,
    published: Any,
    connected: Any,
    commands: Any,
    late_ms: Any,
) -> None:
    """Connect ``devices`` and serve them until ``stop``: reads, queued writes, telemetry, keepalive."""
    selector = selectors.DefaultSelector()
    for device in devices:
        device.connect()
        selector.register(device.client.socket(), selectors.EVENT_READ, device)
    rng = random.Random(slot)
    start = time.monotonic()
    due = [(start + interval * rng.random(), i) for i in range(len(devices))]
    heapq.heapify(due)
    next_misc = start + 1.0
    worst_late = 0.0

    def flush(device: SimDevice) -> None:
        if device.client.want_write():
            device.client.loop_write()

    while not stop.is_set():
        now = time.monotonic()
        timeout = max(0.0, min(due[0][0] if due else now + 0.1, next_misc, now + 0.1) - now)
        for key, _ in selector.select(timeout):
            device = key.data
            if device.client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                selector.unregister(key.fileobj)
                device.connected = False
                continue
            flush(device)
        now = time.monotonic()
        while due and due[0][0] <= now:
            at, i = heapq.heappop(due)
            device = devices[i]
            if device.connected:
                worst_late = max(worst_late, now - at)
                device.send_telemetry()  # outside a callback paho writes at once
                published[slot] += 1
            heapq.heappush(due, (at + interval, i))
        if now >= next_misc:
            for device in devices:
                device.client.loop_misc()
                flush(device)
            connected[slot] = sum(d.connected for d in devices)
            commands[slot] = sum(d.commands for d in devices)
            late_ms[slot] = worst_late * 1e3
            next_misc = now + 0.5
    for device in devices:
        if device.client.socket() is not None:
            device.client.disconnect()
            flush(device)


def run_devices(
    count: int,
    threads: int,
    host: str,
    port: int,
    version: int,
    interval: float,
    stop: Any,
    published: Any,
    connected: Any,
    commands: Any,
    late_ms: Any,
    command_public_key: str,
) -> None:
    """The device process: ``count`` devices spread over ``threads`` selector loops."""
    raise_nofile()
    trust = TrustStore.from_paths([command_public_key])
    devices = [SimDevice(i, host, port, version, trust) for i in range(count)]
    workers = [
        threading.Thread(
            target=_device_loop,
            name=f"devices-{slot}",
            args=(devices[slot::threads], slot, interval, stop, published, connected, commands, late_ms),
        )
        for slot in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
