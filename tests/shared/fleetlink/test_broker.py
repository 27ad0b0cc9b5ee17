"""The fleet's broker connection: settings refused at construction, and on a real mosquitto the
persistent session (QoS 1 messages queued while a client was away reach it when it is back, on
MQTT 5 and 3.1.1; MQTT 5's session expiry) and MQTT 5 user properties.

(TLS, client certificates and passwords are enforced by the shipped broker configuration in
tests/deploy/test_mosquitto.py.)"""

from __future__ import annotations

import queue
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.fleetlink.broker import (
    BrokerSettings,
    connect_async,
    create_client,
    publish_properties,
    user_properties,
)

TIMEOUT = 15.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"host": ""}, "host must not be empty"),
        ({"port": 0}, "port must be in 1..65535"),
        ({"port": 65536}, "port must be in 1..65535"),
        ({"port": True}, "port must be in 1..65535"),
        ({"port": "1883"}, "port must be in 1..65535"),
        ({"password": "secret"}, "password was given without a username"),
        ({"tls_ca": "{pem}", "tls_cert": "{pem}"}, "certificate and key go together"),
        ({"tls_ca": "{pem}", "tls_key": "{pem}"}, "certificate and key go together"),
        ({"tls_cert": "{pem}", "tls_key": "{pem}"}, "needs the CA"),
        ({"tls_ca": "{missing}"}, "tls_ca .* is not a file"),
        ({"tls_ca": "{pem}", "tls_cert": "{pem}", "tls_key": "{missing}"}, "tls_key .* is not a file"),
        ({"version": "4"}, "5 or 3.1.1"),
        ({"version": 5}, "5 or 3.1.1"),
        ({"keepalive_s": 0}, "keepalive_s must be an integer >= 1"),
        ({"keepalive_s": 1.5}, "keepalive_s must be an integer >= 1"),
        ({"session_expiry_s": -1}, "session_expiry_s must be an integer >= 0"),
        ({"session_expiry_s": False}, "session_expiry_s must be an integer >= 0"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, settings: dict[str, object], message: str) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    paths = {"{pem}": pem, "{missing}": tmp_path / "missing.pem"}
    with pytest.raises(ConfigError, match=message):
        BrokerSettings(**{k: paths.get(v, v) if isinstance(v, str) else v for k, v in settings.items()})


def test_good_settings_are_kept_and_paths_become_paths(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = BrokerSettings(
        host="broker.local", port=8883, username="dev-a", password="secret", tls_ca=str(pem),  # type: ignore[arg-type]
        tls_cert=str(pem), tls_key=str(pem), version="3.1.1", session_expiry_s=0,  # type: ignore[arg-type]
    )  # fmt: skip
    assert settings.tls_ca == settings.tls_cert == settings.tls_key == pem and isinstance(settings.tls_ca, Path)
    assert settings.address == "broker.local:8883" and not settings.v5
    assert BrokerSettings().v5 and BrokerSettings().address == "127.0.0.1:1883"


def test_an_address_is_host_colon_port() -> None:
    assert BrokerSettings.from_address("broker.local:1883").address == "broker.local:1883"
    v6 = BrokerSettings.from_address("[::1]:8883", username="dev-a")
    assert (v6.host, v6.port, v6.username) == ("::1", 8883, "dev-a")
    for bad in ("broker.local", ":1883", "broker.local:", "broker.local:mqtt", "broker.local:-1"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            BrokerSettings.from_address(bad)
    with pytest.raises(ConfigError, match="port must be in"):
        BrokerSettings.from_address("broker.local:70000")


def test_user_properties_go_on_mqtt_5_only() -> None:
    properties = publish_properties({"traceparent": "00-abc-def-01"}, v5=True)
    assert properties is not None and properties.UserProperty == [("traceparent", "00-abc-def-01")]
    assert publish_properties({"traceparent": "00-abc-def-01"}, v5=False) is None
    assert publish_properties({}, v5=True) is None
    assert user_properties(mqtt.MQTTMessage()) == {}


class Client:
    """A client made and connected the product's way, and what its callbacks saw."""

    def __init__(self, settings: BrokerSettings, client_id: str) -> None:
        self.connects: queue.Queue[bool] = queue.Queue()
        self.subscribed: queue.Queue[int] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = create_client(settings, client_id)
        self.client.on_connect = lambda _c, _u, flags, _rc, _p: self.connects.put(flags.session_present)
        self.client.on_subscribe = lambda _c, _u, mid, _rc, _p: self.subscribed.put(mid)
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        connect_async(self.client, settings)
        self.client.loop_start()

    def session_present(self) -> bool:
        """Whether the broker kept a session for this client id (the CONNACK's flag)."""
        return self.connects.get(timeout=TIMEOUT)

    def subscribe(self, topic: str) -> None:
        _, mid = self.client.subscribe(topic, qos=1)
        assert self.subscribed.get(timeout=TIMEOUT) == mid

    def publish(self, topic: str, payload: bytes, user: dict[str, str] | None = None) -> None:
        v5 = self.client.protocol == mqtt.MQTTv5
        info = self.client.publish(topic, payload, qos=1, properties=publish_properties(user or {}, v5=v5))
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_qos1_messages_sent_while_a_client_was_away_reach_it_when_it_is_back(mqtt_broker, version: str) -> None:
    settings = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port, version=version)
    device = Client(settings, "dev-a")
    assert device.session_present() is False  # a client id the broker has never seen
    device.subscribe("fleet/dev-a/cmd")
    device.close()

    manager = Client(settings, "fleet-manager")
    manager.session_present()
    manager.publish("fleet/dev-a/cmd", b"install v7")  # the device is away
    manager.close()

    back = Client(settings, "dev-a")
    try:
        assert back.session_present() is True
        message = back.messages.get(timeout=TIMEOUT)  # without subscribing again
        assert (message.topic, message.payload, message.qos) == ("fleet/dev-a/cmd", b"install v7", 1)
    finally:
        back.close()


def test_an_mqtt_5_session_lasts_as_long_as_its_expiry(mqtt_broker) -> None:
    kept = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port, session_expiry_s=3600)
    gone = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port, session_expiry_s=0)
    for settings, present in ((kept, True), (gone, False)):
        first = Client(settings, f"dev-{settings.session_expiry_s}")
        first.session_present()
        first.subscribe("fleet/x")
        first.close()
        again = Client(settings, f"dev-{settings.session_expiry_s}")
        try:
            assert again.session_present() is present, settings.session_expiry_s
        finally:
            again.close()


@pytest.mark.parametrize(("version", "expected"), [("5", {"traceparent": "00-abc-def-01"}), ("3.1.1", {})])
def test_user_properties_travel_on_mqtt_5(mqtt_broker, version: str, expected: dict[str, str]) -> None:
    settings = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port, version=version)
    receiver, sender = Client(settings, "receiver"), Client(settings, "sender")
    try:
        receiver.session_present()
        sender.session_present()
        receiver.subscribe("fleet/trace")
        sender.publish("fleet/trace", b"{}", user={"traceparent": "00-abc-def-01"})
        message = receiver.messages.get(timeout=TIMEOUT)
        assert message.payload == b"{}" and user_properties(message) == expected
    finally:
        receiver.close()
        sender.close()
