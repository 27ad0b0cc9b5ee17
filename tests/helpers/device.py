"""A device agent under test, and what drives it as the fleet would: signed commands, an observer of
the fleet's MQTT topics (that signs and sends commands too), signed bundles served over HTTP by an
artifact server (one that records each request's Authorization header for the attack tests), the
agent's config on a test broker, its keys, and a started agent on the shipped bundle."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgecloud.edge.agent import AgentConfig, DeviceAgent
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.daemon import create_daemon
from edgecloud.edge.service import EdgeService
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.manifest import copy_bundle, load_manifest
from edgecloud.shared.bundles.signing import generate_keypair, load_private_key, sign_bundle
from edgecloud.shared.fleetlink.broker import BrokerSettings
from edgecloud.shared.fleetlink.commands import sign_command
from edgecloud.shared.fleetlink.messages import Command, Topics, encode

FLEET = "test"


def sign(command: dict, key: Path, device: str = "dev-1", **kwargs: float) -> bytes:
    """``command`` (a dict as :func:`command` makes) signed for ``device``, as the fleet manager sends it."""
    return sign_command(Command.from_dict({**command, "device": device}), load_private_key(key), **kwargs)


class Observer:
    """Subscribes to the whole fleet tree and keeps every message; ``send`` signs a command with
    ``command_key`` and publishes it to dev-1, as the fleet manager would."""

    def __init__(self, broker, command_key: Path | None = None) -> None:  # type: ignore[no-untyped-def]
        self.command_key = command_key
        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"edgecloud/v1/{FLEET}/#", qos=1)
        self.client.loop_start()

    def _on_message(self, _c, _u, message) -> None:  # type: ignore[no-untyped-def]
        try:
            data = json.loads(message.payload)
        except (ValueError, RecursionError):  # an attack test's poison pill on a command topic
            return
        with self.lock:
            self.messages.append((message.topic, data, message.retain))

    def of(self, leaf: str) -> list[dict]:
        with self.lock:
            return [m for t, m, _ in self.messages if t.endswith("/" + leaf) and isinstance(m, dict)]

    def wait_for(self, predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; messages: {self.messages[-10:]}"
            time.sleep(0.05)

    def publish(self, topic: str, payload: dict | bytes) -> None:
        data = payload if isinstance(payload, bytes) else encode(payload)
        self.client.publish(topic, data, qos=1).wait_for_publish(5)

    def send(self, command: dict, device: str = "dev-1") -> None:
        assert self.command_key is not None
        self.publish(Topics(FLEET, device).cmd, sign(command, self.command_key, device))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class ArtifactServer:
    """Serves ``root`` over HTTP on a loopback port; ``handler`` may serve it another way."""

    def __init__(self, root: Path, handler: Any = None) -> None:
        self.root = root
        handler = functools.partial(handler or _QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class RecordingServer(ArtifactServer):
    """Serves ``root`` over HTTP on loopback and records the Authorization header of every GET."""

    def __init__(self, root: Path) -> None:
        self.authorizations: list[str | None] = []
        super().__init__(root, functools.partial(_RecordingHandler, self))


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, server_state: RecordingServer, *args: Any, **kwargs: Any) -> None:
        self.state = server_state
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.state.authorizations.append(self.headers.get("Authorization"))
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


def make_bundle(source: Path, out: Path, version: int, key: Path | None) -> Path:
    """A copy of ``source`` re-versioned and (optionally) signed."""
    copy_bundle(source, out, version=version)
    if key is not None:
        sign_bundle(out, load_private_key(key))
    return out


def publish_bundle(directory: Path, artifacts: tuple[Path, ArtifactServer], name: str) -> dict:
    root, server = artifacts
    sha, size = pack_bundle(directory, root / name)
    manifest = load_manifest(directory)
    return {
        "name": manifest.name,
        "version": manifest.version,
        "url": f"{server.url}/{name}",
        "sha256": sha,
        "size": size,
    }


def command(bundle: dict, revision: int, kind: str = "deploy") -> dict:
    return {"id": f"c-{uuid.uuid4().hex[:12]}", "type": kind, "revision": revision, "bundle": bundle}


def agent_config(tmp_path: Path, broker, keys: dict[str, Path], **overrides: object) -> AgentConfig:  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "device_id": "dev-1",
        "fleet": FLEET,
        "state_dir": tmp_path / "agent",
        "trusted_keys": (keys["trusted_public"],),
        "command_keys": (keys["command_public"],),
        "broker": BrokerSettings(port=broker.port),
        "telemetry_interval_s": 0.2,
        "watch_s": 0.5,
        "watch_min_requests": 5,
        "p99_allowance_ms": 1000.0,  # a busy CI machine's jitter must not roll back a healthy model
    }
    values.update(overrides)
    return AgentConfig(**values)  # type: ignore[arg-type]


def acks_for(observer: Observer, command_id: str) -> list[str]:
    return [a["status"] for a in observer.of("cmd/ack") if a["command_id"] == command_id]


def artifacts_of(server: Any) -> tuple[Path, Any]:
    return server.root, server


def acted(observer: Any, command_id: str) -> list[str]:
    """The statuses of ``command_id`` from acting on it: refusal acks (revision 0) left out, since a
    forgery may borrow a real command's id."""
    return [a["status"] for a in observer.of("cmd/ack") if a["command_id"] == command_id and a["revision"]]


def wait_final(observer: Any, command_id: str, timeout: float = 30) -> str:
    final = {"ACTIVE", "FAILED", "ROLLED_BACK", "IGNORED"}
    observer.wait_for(lambda: final & set(acted(observer, command_id)), timeout)
    return next(s for s in reversed(acted(observer, command_id)) if s in final)


def make_keys(folder: Path, names: tuple[str, ...] = ("trusted", "rogue", "command")) -> dict[str, Path]:
    """A key pair per name in ``folder``: ``{name}_private`` and ``{name}_public``."""
    paths = {}
    for name in names:
        paths[f"{name}_private"] = folder / f"{name}.key"
        paths[f"{name}_public"] = folder / f"{name}.pub"
        generate_keypair(paths[f"{name}_private"], paths[f"{name}_public"])
    return paths


@contextlib.contextmanager
def serving_artifacts(tmp_path: Path) -> Iterator[tuple[Path, ArtifactServer]]:
    """An artifact server over ``tmp_path/artifacts``, and that folder."""
    root = tmp_path / "artifacts"
    root.mkdir()
    server = ArtifactServer(root)
    try:
        yield root, server
    finally:
        server.close()


@contextlib.contextmanager
def running_device(
    shipped_models: Path, tmp_path: Path, broker: Any, keys: dict[str, Path]
) -> Iterator[tuple[DeviceAgent, EdgeService, Observer]]:
    """A started, connected agent ("dev-1") over an edge daemon on the shipped bundle, and an
    observer of the fleet's topics that signs with the fleet's command key."""
    _app, service = create_daemon(
        EdgeConfig(bundle=shipped_models / "edge-student", outbox=tmp_path / "outbox.sqlite3")
    )
    agent = DeviceAgent(agent_config(tmp_path, broker, keys), service)
    agent.start()
    try:
        assert agent.wait_connected(10)
        observer = Observer(broker, keys["command_private"])
        try:
            yield agent, service, observer
        finally:
            observer.close()
    finally:
        agent.stop()
