"""The fleet end to end: a real mosquitto, the real fleet manager with its REST API and
artifact server, and three real device agents, each with its own edge daemon on the
shipped student bundle.

Nothing is simulated: bundles are signed, registered over HTTP, downloaded by the
devices from the manager's ``/artifacts`` route, verified against each device's trusted
keys, self-tested and hot-swapped into the device's model slot.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.edge.agent import AgentConfig, DeviceAgent
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.daemon import create_daemon
from edgecloud.edge.service import EdgeService
from edgecloud.fleet.api import create_server
from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.shared.artifacts import pack_bundle
from edgecloud.shared.asgi import ThreadedServer
from edgecloud.shared.broker import BrokerSettings
from edgecloud.shared.bundle import copy_bundle, load_manifest
from edgecloud.shared.signing import generate_keypair, load_private_key, sign_bundle

FLEET = "e2e"
DEVICES = ("dev-a1", "dev-a2", "dev-a3")
LABELS = {"site": "a"}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signed_archive(source: Path, work: Path, version: int, key: Path) -> Path:
    """``source`` re-versioned to ``version``, signed with ``key`` and packed as a .tar.gz."""
    directory = work / f"{source.name}-v{version}-{key.stem}"
    copy_bundle(source, directory, version=version)
    sign_bundle(directory, load_private_key(key))
    archive = work / f"{directory.name}.tar.gz"
    pack_bundle(directory, archive)
    return archive


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for name in ("good", "rogue"):
        paths[name], paths[f"{name}.pub"] = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
        generate_keypair(paths[name], paths[f"{name}.pub"])
    return paths


@dataclass
class Fleet:
    manager: FleetManager
    server: ThreadedServer
    api: httpx.Client
    agents: dict[str, DeviceAgent]
    services: dict[str, EdgeService]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/rollouts/{rollout_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def devices(self) -> dict[str, dict[str, Any]]:
        response = self.api.get("/v1/devices")
        assert response.status_code == 200, response.text
        return {d["id"]: d for d in response.json()["devices"]}

    def register(self, archive: Path) -> dict[str, Any]:
        response = self.api.post(
            "/v1/bundles", content=archive.read_bytes(), headers={"Content-Type": "application/gzip"}
        )
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def make_fleet(
    mqtt_broker: Any, shipped_models: Path, tmp_path: Path, keys: dict[str, Path]
) -> Iterator[Callable[..., Fleet]]:
    """Start the manager (trusting ``manager_keys``), its API, and the three devices (trusting the good key)."""
    started: list[Fleet] = []

    def make(manager_keys: tuple[str, ...] = ("good.pub",)) -> Fleet:
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
                EdgeConfig(bundle=shipped_models / "edge-student", outbox=tmp_path / device / "outbox.sqlite3")
            )
            agent = DeviceAgent(
                AgentConfig(
                    device_id=device,
                    fleet=FLEET,
                    state_dir=tmp_path / device / "agent",
                    trusted_keys=(keys["good.pub"],),
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


def start_rollout(fleet: Fleet, version: int, abort: dict[str, Any] | None = None) -> str:
    name = next(iter(fleet.services.values())).slot.current.name
    body: dict[str, Any] = {
        "bundle": name,
        "version": version,
        "labels": LABELS,
        "strategy": {"type": "fixed", "size": 1},
        "device_timeout_s": 30,
    }
    if abort is not None:
        body["abort"] = abort
    response = fleet.api.post("/v1/rollouts", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["total"] == len(DEVICES) and created["wave_sizes"] == [1] * len(DEVICES), created
    return str(created["id"])


def wait_rollout(fleet: Fleet, rollout_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (r := fleet.rollout(rollout_id))["status"] in statuses and r,
        timeout,
        f"rollout {rollout_id} in {statuses}",
    )


def test_signed_bundle_rolls_out_to_every_device_one_at_a_time(
    make_fleet: Callable[..., Fleet], shipped_models: Path, tmp_path: Path, keys: dict[str, Path]
) -> None:
    fleet = make_fleet()
    old = load_manifest(shipped_models / "edge-student").version
    new = old + 1
    assert {s.slot.current.version for s in fleet.services.values()} == {old}
    record = fleet.register(signed_archive(shipped_models / "edge-student", tmp_path, new, keys["good"]))
    assert record["version"] == new and record["key_id"]

    rollout_id = start_rollout(fleet, new)
    rollout = wait_rollout(fleet, rollout_id, "COMPLETED", "ABORTED")
    assert rollout["status"] == "COMPLETED", rollout
    assert rollout["succeeded"] == len(DEVICES) and rollout["failed"] == 0

    # Every device downloaded from the manager's artifact route and now serves the new model.
    assert rollout["spec"]["bundle"]["url"].startswith(f"{fleet.manager.config.public_base_url}/artifacts/")
    for device, service in fleet.services.items():
        assert service.slot.current.version == new, device
        assert service.slot.current.model.answer("2+2").text
    # Fixed batches of one: each device got its command only after the previous one was ACTIVE.
    deliveries = sorted((d["deploy"] for d in rollout["devices"]), key=lambda d: d["sent_at"])
    assert all(d["status"] == "ACTIVE" and d["version"] == new for d in deliveries)
    for earlier, later in itertools.pairwise(deliveries):
        assert later["sent_at"] >= earlier["updated_at"]

    # The manager's view: the new version, from telemetry sent after the swap.
    finished_at = rollout["finished_at"]

    def fresh() -> bool:
        devices = fleet.devices()
        return all(
            d["model_version"] == new
            and d["telemetry"]
            and d["telemetry"]["model_version"] == new
            and d["telemetry_at"] > finished_at
            for d in devices.values()
        )

    wait_for(fresh, 10, "telemetry of the new version from every device")
    devices = fleet.devices()
    assert sorted(devices) == sorted(DEVICES)
    for view in devices.values():
        assert view["online"] and view["labels"] == LABELS and view["rollout"] is None
        assert time.time() - view["telemetry_at"] < 5


def test_bundle_from_an_untrusted_key_fails_on_devices_and_aborts(
    make_fleet: Callable[..., Fleet], shipped_models: Path, tmp_path: Path, keys: dict[str, Path]
) -> None:
    fleet = make_fleet(manager_keys=("good.pub", "rogue.pub"))  # the manager accepts it; the devices must not
    old = load_manifest(shipped_models / "edge-student").version
    before = {device: service.slot.current for device, service in fleet.services.items()}
    record = fleet.register(signed_archive(shipped_models / "edge-student", tmp_path, old + 1, keys["rogue"]))
    assert record["version"] == old + 1

    rollout_id = start_rollout(fleet, old + 1, abort={"failure_percent": 50, "min_devices": 1})
    rollout = wait_rollout(fleet, rollout_id, "ABORTED", "COMPLETED")
    assert rollout["status"] == "ABORTED", rollout
    assert "1 of 1 finished devices failed" in rollout["abort_reason"]

    states = {d["device"]: d["deploy"] for d in rollout["devices"]}
    failed = [d for d in states.values() if d["status"] == "FAILED"]
    assert len(failed) == 1 and "not trusted" in failed[0]["reason"], states
    assert sorted(d["status"] for d in states.values()) == ["FAILED", "QUEUED", "QUEUED"]  # later waves never sent

    time.sleep(0.5)  # nothing else arrives after the abort
    assert fleet.rollout(rollout_id)["counts"]["QUEUED"] == 2
    for device, service in fleet.services.items():
        assert service.slot.current is before[device] and service.slot.current.version == old
        assert service.slot.current.model.answer("2+2").text
    assert {d["model_version"] for d in fleet.devices().values()} == {old}
