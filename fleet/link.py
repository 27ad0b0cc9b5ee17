"""The fleet manager's MQTT link: one paho client, its subscriptions, and every command signed and sent on it.

It holds the broker's side of the delivery guarantees (:mod:`edgecloud.fleet.manager`), apart from
what the fleet decides, so the use cases can be read and tested without a broker and the wire can
change without touching them: a persistent session (acks queue at the broker while the manager is
away), QoS 1 subscriptions to every device's ``state``, ``telemetry`` and ``cmd/ack``, an unbounded
client-side queue (a command is never dropped here), auto-reconnect, and a signature made at each
publish (:mod:`edgecloud.shared.fleetlink.commands`), for the one device a command addresses, so a
re-publish carries a fresh expiry.

It decides nothing: each message is decoded against the contract
(:mod:`edgecloud.shared.fleetlink.messages`) and handed to a :class:`DeviceMessages`, the fleet's use
cases (:class:`~edgecloud.fleet.service.FleetService`). No message stops the MQTT loop: a malformed or
hostile payload, or one its handler fails on, is counted (``malformed``), logged and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgecloud.fleet.metrics import FleetMetrics
from edgecloud.shared.base.errors import ConfigError, InvalidInputError
from edgecloud.shared.base.tracing import trace_headers, tracer, tracing_enabled
from edgecloud.shared.fleetlink.broker import BrokerSettings, connect_async, create_client, publish_properties
from edgecloud.shared.fleetlink.commands import CommandSigner
from edgecloud.shared.fleetlink.messages import Birth, Command, CommandAck, Telemetry, Topics
from edgecloud.shared.fleetlink.messages import decode as decode_payload

__all__ = ["SUBSCRIBED_LEAVES", "DeviceMessages", "FleetLink"]

log = logging.getLogger(__name__)

SUBSCRIBED_LEAVES = ("state", "telemetry", "cmd/ack")
"""What the manager reads of every device of its fleet."""


class DeviceMessages(Protocol):
    """What the link hands a decoded device message to. Each runs on paho's thread; one that raises
    InvalidInputError has refused a malformed message."""

    def on_birth(self, device: str, birth: Birth) -> None:
        """``device``'s retained state: its birth on every connect, or its will's offline."""
        ...

    def on_telemetry(self, device: str, telemetry: Telemetry, raw: dict[str, Any]) -> None:
        """``device``'s periodic telemetry, parsed, and ``raw``, the document as it came."""
        ...

    def on_ack(self, device: str, ack: CommandAck) -> None:
        """``device``'s ack of a command: a status step of its delivery, or a refusal naming no rollout."""
        ...


class FleetLink:
    """The manager's MQTT client. Thread-safe: :meth:`publish` may be called from any thread."""

    def __init__(
        self, *, fleet: str, broker: BrokerSettings, client_id: str, signer: CommandSigner, metrics: FleetMetrics
    ) -> None:
        self.fleet = fleet
        self.broker = broker
        self.metrics = metrics
        self._signer = signer
        self._receiver: DeviceMessages | None = None
        self._connected = threading.Event()
        self._closing = threading.Event()
        self.client = create_client(broker, client_id, max_reconnect_delay_s=5)
        self.client.max_queued_messages_set(0)  # unbounded: a command must never be dropped client-side
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self, receiver: DeviceMessages) -> None:
        """Connect in the background (retrying) and hand every device message to ``receiver`` from then on."""
        self._receiver = receiver
        connect_async(self.client, self.broker)
        self.client.loop_start()

    def close(self) -> None:
        self._closing.set()
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- publishing --------------------------------------------------------------------

    def publish(self, commands: Iterable[Command]) -> None:
        """Sign each command for its device, now (so every re-publish has a fresh expiry), and send it at
        QoS 1; before the first connect, and while reconnecting, paho queues it."""
        for command in commands:
            try:
                payload = self._signer.sign(command)
                topic = Topics(self.fleet, command.device).cmd
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
            properties = publish_properties(trace_headers(span), v5=self.broker.v5)
            self.client.publish(topic, payload, qos=1, retain=False, properties=properties)

    # -- paho's callbacks --------------------------------------------------------------

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("broker refused the fleet manager: %s", reason_code)
            return
        qos = SubscribeOptions(qos=1) if self.broker.v5 else 1
        client.subscribe([(Topics.fleet_wildcard(self.fleet, leaf), qos) for leaf in SUBSCRIBED_LEAVES])
        self._connected.set()
        log.info("fleet manager connected to %s", self.broker.address)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        self._connected.clear()
        if not self._closing.is_set():
            log.warning("fleet manager lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        """Runs on paho's thread; the PUBACK goes out after it returns, so a crash re-delivers."""
        try:
            self.handle(message.topic, message.payload)
        except InvalidInputError as exc:
            self.metrics.malformed.inc()
            log.warning("ignoring a malformed message on %s: %s", message.topic[:200], exc)
        except Exception:  # never let a message kill paho's thread: the broker would redeliver it forever
            self.metrics.malformed.inc()
            log.exception("handling a message on %s failed; dropped", message.topic[:200])

    def handle(self, topic: str, payload: bytes) -> None:
        """Decode one message and hand it to the receiver; raises InvalidInputError on a malformed one.
        Another fleet's message, an unknown leaf and anything before :meth:`start` are ignored."""
        fleet, device, leaf = Topics.parse(topic)
        receiver = self._receiver
        if fleet != self.fleet or receiver is None:
            return
        data = decode_payload(payload)
        if leaf == "state":
            receiver.on_birth(device, Birth.from_dict(data))
        elif leaf == "telemetry":
            telemetry = Telemetry.from_dict(data)
            receiver.on_telemetry(device, telemetry, data)
            self.metrics.telemetry_lag.observe(max(0.0, time.time() - telemetry.at))
        elif leaf == "cmd/ack":
            receiver.on_ack(device, CommandAck.from_dict(data))
        else:
            return
        self.metrics.messages.labels(leaf).inc()
