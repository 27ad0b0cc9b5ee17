"""Fixtures of the end-to-end tests: signing keys and a running fleet (see ``fleet.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.edge.agent import AgentConfig, DeviceAgent
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.daemon import create_daemon
from edgecloud.fleet.api import create_server
from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.shared.bundles.signing import generate_keypair
from edgecloud.shared.fleetlink.broker import BrokerSettings
from tests.helpers.real_fleet import DEVICES, FLEET, LABELS, Fleet
from tests.helpers.waiting import free_port, wait_for


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for name in ("good", "rogue", "command"):
        paths[name], paths[f"{name}.pub"] = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
        generate_keypair(paths[name], paths[f"{name}.pub"])
    return paths


@pytest.fixture
def make_fleet(
    mqtt_broker: Any, shipped_models: Path, tmp_path: Path, keys: dict[str, Path]
) -> Iterator[Callable[..., Fleet]]:
    """Start the manager (trusting ``manager_keys``), its API, and the three devices (trusting the good key)."""
    started: list[Fleet] = []

    def make(manager_keys: tuple[str, ...] = ("good.pub",), **edge: Any) -> Fleet:
        """``edge``: more EdgeConfig settings for every daemon (a cloud to escalate to, shadow checks)."""
        port = free_port()
        manager = FleetManager(
            FleetManagerConfig(
                fleet=FLEET,
                broker=BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port),
                store_path=tmp_path / "fleet.sqlite3",
                artifact_dir=tmp_path / "fleet-artifacts",
                public_base_url=f"http://127.0.0.1:{port}",
                tick_interval_s=0.2,
                trusted_keys=tuple(keys[k] for k in manager_keys),
                command_key=keys["command"],
            )
        )
        manager.start()
        server, bound = create_server(manager, host="127.0.0.1", port=port)
        fleet = Fleet(manager, server, httpx.Client(base_url=f"http://127.0.0.1:{bound}", timeout=30), {}, {})
        started.append(fleet)
        assert manager.wait_connected(10)
        for device in DEVICES:
            (tmp_path / device).mkdir(exist_ok=True)
            _app, service = create_daemon(
                EdgeConfig(bundle=shipped_models / "edge-student", outbox=tmp_path / device / "outbox.sqlite3", **edge)
            )
            agent = DeviceAgent(
                AgentConfig(
                    device_id=device,
                    fleet=FLEET,
                    state_dir=tmp_path / device / "agent",
                    trusted_keys=(keys["good.pub"],),
                    command_keys=(keys["command.pub"],),
                    fleet_origin=f"http://127.0.0.1:{port}",
                    broker=BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port),
                    labels=dict(LABELS),
                    telemetry_interval_s=0.2,
                    watch_s=0.5,
                    watch_min_requests=5,
                ),
                service,
            )
            fleet.agents[device], fleet.services[device] = agent, service
            agent.start()
        for agent in fleet.agents.values():
            assert agent.wait_connected(10)
        wait_for(
            lambda: sum(d["online"] for d in fleet.devices().values()) == len(DEVICES),
            15,
            "every device online at the manager",
        )
        return fleet

    yield make
    for fleet in started:
        for agent in fleet.agents.values():
            agent.stop()
        fleet.api.close()
        fleet.server.stop()
        fleet.manager.close()
