"""Fixtures of the attack tests: a real device agent on a real mosquitto, real signed bundles
served over HTTP (recording what each request carried), and keys for the fleet and an attacker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecloud.edge.agent import DeviceAgent
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.daemon import create_daemon
from edgecloud.shared.bundles.signing import generate_keypair
from tests.helpers.device import Observer, RecordingServer, agent_config


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """``trusted`` signs bundles, ``command`` is the fleet manager's command key; ``rogue`` and
    ``rogue_command`` are an attacker's."""
    paths = {}
    for name in ("trusted", "rogue", "command", "rogue_command"):
        paths[f"{name}_private"] = tmp_path / "keys" / f"{name}.key"
        paths[f"{name}_public"] = tmp_path / "keys" / f"{name}.pub"
        paths[f"{name}_private"].parent.mkdir(exist_ok=True)
        generate_keypair(paths[f"{name}_private"], paths[f"{name}_public"])
    return paths


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[str], RecordingServer]]:
    """``servers(name)`` starts an artifact server over ``tmp_path/name``."""
    started: list[RecordingServer] = []

    def start(name: str) -> RecordingServer:
        root = tmp_path / name
        root.mkdir()
        started.append(RecordingServer(root))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def make_device(
    shipped_models: Path, tmp_path: Path, mqtt_broker: Any, keys: dict[str, Path]
) -> Iterator[Callable[..., tuple[DeviceAgent, Any, Observer]]]:
    """``make_device(**AgentConfig overrides)``: a started agent ("dev-1" unless ``device_id`` says
    otherwise) over the shipped bundle, and an observer of the fleet's topics that signs with the
    fleet's command key."""
    started: list[tuple[DeviceAgent, Observer]] = []

    def make(**overrides: Any) -> tuple[DeviceAgent, Any, Observer]:
        device = str(overrides.get("device_id", "dev-1"))
        outbox = tmp_path / ("outbox.sqlite3" if device == "dev-1" else f"outbox-{device}.sqlite3")
        _app, service = create_daemon(EdgeConfig(bundle=shipped_models / "edge-student", outbox=outbox))
        agent = DeviceAgent(agent_config(tmp_path, mqtt_broker, keys, **overrides), service)
        agent.start()
        assert agent.wait_connected(10)
        observer = Observer(mqtt_broker, keys["command_private"])
        started.append((agent, observer))
        return agent, service, observer

    yield make
    for agent, observer in started:
        observer.close()
        agent.stop()
