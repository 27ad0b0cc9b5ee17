"""The fleet the end-to-end tests drive: a real mosquitto, the real fleet manager with its REST API
and artifact server, and three real device agents, each with its own edge daemon on the shipped
student bundle (the fixture that starts it, ``make_fleet``, is in tests/e2e/conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgecloud.edge.agent import DeviceAgent
from edgecloud.edge.service import EdgeService
from edgecloud.fleet.manager import FleetManager
from edgecloud.shared.base.asgi import ThreadedServer
from edgecloud.shared.bundles.artifacts import pack_bundle
from edgecloud.shared.bundles.manifest import copy_bundle
from edgecloud.shared.bundles.signing import load_private_key, sign_bundle
from tests.helpers.waiting import wait_for

FLEET = "e2e"
DEVICES = ("dev-a1", "dev-a2", "dev-a3")
LABELS = {"site": "a"}


def signed_archive(source: Path, work: Path, version: int, key: Path) -> Path:
    """``source`` re-versioned to ``version``, signed with ``key`` and packed as a .tar.gz."""
    directory = work / f"{source.name}-v{version}-{key.stem}"
    copy_bundle(source, directory, version=version)
    sign_bundle(directory, load_private_key(key))
    archive = work / f"{directory.name}.tar.gz"
    pack_bundle(directory, archive)
    return archive


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


def start_rollout(
    fleet: Fleet, version: int, abort: dict[str, Any] | None = None, quality: dict[str, Any] | None = None
) -> str:
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
    if quality is not None:
        body["quality"] = quality
    response = fleet.api.post("/v1/rollouts", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["total"] == len(DEVICES) and created["wave_sizes"] == [1] * len(DEVICES), created
    return str(created["id"])


def wait_rollout(fleet: Fleet, rollout_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        last.update(fleet.rollout(rollout_id))
        return dict(last) if last["status"] in statuses else None

    try:
        return wait_for(reached, timeout, f"rollout {rollout_id} in {statuses}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {json.dumps(last)[:4000]}") from None
