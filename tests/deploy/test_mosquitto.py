"""The shipped broker configuration (deploy/mosquitto/) enforced by a real mosquitto.

The config and ACL are the real files; only what cannot work in a test is rewritten (the
listener's port and address, file locations). Certificates come from make_certs.py, passwords
from mosquitto_passwd, and clients apply credentials and TLS the way the product does
(edgecloud.shared.fleetlink.broker).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.shared.fleetlink.broker import BrokerSettings, create_client
from edgecloud.shared.fleetlink.messages import Birth, Topics, encode
from tests.helpers.sim_fleet import command_key
from tests.helpers.waiting import wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
FLEET = "plant1"
MANAGER = "fleet-manager"  # the user name the ACL grants the whole tree
PASSWORDS = {MANAGER: "manager-secret", "dev-a": "secret-a", "dev-b": "secret-b"}


def _binary(name: str, fallback: str) -> str:
    found = shutil.which(name) or (fallback if Path(fallback).exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed (apt-get install mosquitto); .ci/run installs it")
    return found


def _load_make_certs():  # deploy/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("make_certs", DEPLOY / "make_certs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rewrite(config: str, values: dict[str, str]) -> str:
    """Replace the value of each named directive, which must occur exactly once, so a test
    notices when the shipped file changes shape instead of silently testing something else."""
    for directive, value in values.items():
        pattern = re.compile(rf"^{re.escape(directive)}\s.*$", re.MULTILINE)
        assert len(pattern.findall(config)) == 1, f"{directive} should appear once in mosquitto.conf"
        config = pattern.sub(f"{directive} {value}", config)
    return config


@dataclass
class SecureBroker:
    host: str
    port: int
    ca: Path
    log: Path


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    mosquitto = _binary("mosquitto", "/usr/sbin/mosquitto")
    mosquitto_passwd = _binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    work = tmp_path_factory.mktemp("broker")
    certs = work / "certs"
    assert _load_make_certs().main([str(certs)]) == 0
    passwd = work / "passwd"
    passwd.touch()
    for user, password in PASSWORDS.items():
        subprocess.run([mosquitto_passwd, "-b", str(passwd), user, password], check=True, capture_output=True)
    acl = work / "acl"
    shutil.copyfile(DEPLOY / "edgecloud.acl", acl)
    (work / "data").mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = rewrite(
        (DEPLOY / "mosquitto.conf").read_text(),
        {
            "listener": f"{port} 127.0.0.1",
            "persistence_location": f"{work / 'data'}/",
            "password_file": str(passwd),
            "acl_file": str(acl),
            "cafile": str(certs / "ca.crt"),
            "certfile": str(certs / "broker.crt"),
            "keyfile": str(certs / "broker.key"),
        },
    )
    if os.geteuid() == 0:
        # Started as root, mosquitto drops to the mosquitto user, which cannot enter pytest's
        # private temporary folder; in production the files are the broker user's own.
        config += "\nuser root\n"
    (work / "mosquitto.conf").write_text(config)
    log = work / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([mosquitto, "-c", str(work / "mosquitto.conf")], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start with the shipped config:\n{log.read_text()}")
            time.sleep(0.05)
        yield SecureBroker("127.0.0.1", port, certs / "ca.crt", log)
    finally:
        process.terminate()
        process.wait(10)


class Client:
    """A paho MQTT 5 client that records what it receives; connect() waits for CONNACK."""

    def __init__(self, broker: SecureBroker, user: str | None, password: str | None, *, tls: bool = True) -> None:
        settings = BrokerSettings(
            host=broker.host, port=broker.port, username=user, password=password, tls_ca=broker.ca if tls else None
        )
        self.client = create_client(settings, f"test-{user}-{time.monotonic_ns()}")
        self.broker = broker
        self.received: list[tuple[str, bytes]] = []
        self.result: str | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        self.result = "ok" if not reason_code.is_failure else str(reason_code)
        self._done.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        if not self._done.is_set():
            self.result = f"disconnected before CONNACK: {reason_code}"
            self._done.set()

    def _on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, message.payload))

    def connect(self) -> str:
        """ "ok", the broker's refusal reason, or the transport error."""
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=10)
        except OSError as exc:  # TLS handshake or connection refused/reset
            return f"transport: {exc}"
        self.client.loop_start()
        if not self._done.wait(5):
            self.result = "no CONNACK"
        return self.result or "no CONNACK"

    def topics(self) -> list[str]:
        with self._lock:
            return [topic for topic, _ in self.received]

    def subscribe(self, topic: str) -> None:
        info = self.client.subscribe(topic, qos=1)
        assert info[0] == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes = b"{}") -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(broker: SecureBroker) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


@pytest.fixture
def connect(broker: SecureBroker, clients: list[Client]):
    def make(user: str, *, password: str | None = None) -> Client:
        client = Client(broker, user, password or PASSWORDS[user])
        clients.append(client)
        assert client.connect() == "ok", user
        return client

    return make


def test_anonymous_wrong_password_and_plaintext_are_refused(broker: SecureBroker, clients: list[Client]) -> None:
    attempts = {
        "anonymous": Client(broker, None, None),
        "wrong password": Client(broker, "dev-a", "not-the-password"),
        "unknown user": Client(broker, "dev-z", "secret-a"),
        "plaintext": Client(broker, "dev-a", PASSWORDS["dev-a"], tls=False),
    }
    clients.extend(attempts.values())
    results = {what: client.connect() for what, client in attempts.items()}
    assert "ok" not in results.values(), results


def _sentinel_then_check(receiver: Client, sender: Client, sentinel: str) -> None:
    """Publish a permitted message after the forbidden ones; once it has arrived, anything the
    broker had let through before it would have arrived too."""
    sender.publish(sentinel, b"sentinel")
    wait_for(lambda: sentinel in receiver.topics(), 5, f"{sentinel} at the receiver")
    time.sleep(0.2)


def test_device_speaks_only_for_itself(connect) -> None:
    manager = connect(MANAGER)
    manager.subscribe("edgecloud/v1/#")
    time.sleep(0.2)  # the subscription is in place before anything is published
    a, b = Topics(FLEET, "dev-a"), Topics(FLEET, "dev-b")
    device = connect("dev-a")

    for topic in (a.state, a.telemetry, a.ack):
        device.publish(topic)
    wait_for(lambda: {a.state, a.telemetry, a.ack} <= set(manager.topics()), 5, "dev-a's own messages")

    for topic in (b.state, b.telemetry, b.ack, b.cmd, a.cmd, "edgecloud/v1/other"):
        device.publish(topic, b"forged")
    _sentinel_then_check(manager, device, a.telemetry)
    forged = [topic for topic, payload in manager.received if payload == b"forged"]
    assert forged == [], f"the broker delivered dev-a's publishes to {forged}"


def test_device_hears_only_its_own_commands(connect) -> None:
    a, b = Topics(FLEET, "dev-a"), Topics(FLEET, "dev-b")
    device = connect("dev-a")
    # Mosquitto may grant or refuse a forbidden subscription; what matters is what it delivers.
    device.subscribe(b.cmd)
    device.subscribe("edgecloud/v1/#")
    device.subscribe(a.cmd)
    time.sleep(0.2)
    manager = connect(MANAGER)
    manager.publish(b.cmd, b"for-b")
    manager.publish(b.state, b"b-state")
    manager.publish(a.cmd, b"for-a")
    wait_for(lambda: a.cmd in device.topics(), 5, "dev-a's own command")
    time.sleep(0.2)
    assert set(device.topics()) == {a.cmd}, device.received


def test_fleet_manager_records_a_birth_over_tls(broker: SecureBroker, connect, tmp_path: Path) -> None:
    settings = BrokerSettings(
        host=broker.host, port=broker.port, username=MANAGER, password=PASSWORDS[MANAGER], tls_ca=broker.ca
    )
    config = FleetManagerConfig(
        fleet=FLEET,
        broker=settings,
        store_path=tmp_path / "fleet.sqlite3",
        artifact_dir=tmp_path / "artifacts",
        command_key=command_key(tmp_path),
        tick_interval_s=0.2,
    )
    manager = FleetManager(config)
    manager.start()
    try:
        assert manager.wait_connected(10), broker.log.read_text()[-2000:]
        device = connect("dev-b")
        birth = Birth(
            online=True,
            device="dev-b",
            model_name="edge-student",
            model_version=3,
            session=1,
            labels={"site": "lab"},
            at=time.time(),
        )
        device.publish(Topics(FLEET, "dev-b").state, encode(birth.to_dict()))
        record = wait_for(
            lambda: next((d for d in manager.devices() if d["id"] == "dev-b" and d["online"]), None),
            10,
            "dev-b online at the fleet manager",
        )
        assert record["model_version"] == 3
    finally:
        manager.close()
