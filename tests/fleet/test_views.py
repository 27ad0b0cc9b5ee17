"""The JSON views the REST API serves, read from a fleet driven through its use cases without a broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgecloud.fleet.store import DeviceRecord
from edgecloud.fleet.views import device_view
from edgecloud.shared.base.errors import NotFoundError
from edgecloud.shared.fleetlink.messages import Telemetry
from tests.helpers.fleet_service import OfflineFleet, birth, offline_fleet, register_versions


@pytest.fixture
def fleet(tmp_path: Path) -> OfflineFleet:
    fleet = offline_fleet(tmp_path)
    for device in ("dev01", "dev00", "dev02"):
        fleet.service.on_birth(device, birth(device))
    register_versions(fleet, tmp_path, 2)
    return fleet


def test_a_device_without_telemetry_or_rollout() -> None:
    view = device_view(DeviceRecord(id="dev00", labels={"site": "lab"}, online=True), None)
    assert view["id"] == "dev00" and view["labels"] == {"site": "lab"} and view["online"] is True
    assert (view["escalation_rate"], view["state_problem"], view["telemetry_at"], view["telemetry"]) == (
        None,
        "",
        None,
        None,
    )
    assert view["rollout"] is None


def test_devices_by_id_with_their_telemetry_and_live_rollout(fleet: OfflineFleet) -> None:
    telemetry = Telemetry(
        device="dev01", at=time.time(), model_name="edge-student", model_version=1, requests={"edge": 3},
        latency_ms={}, escalation_rate=0.25, degraded=0, errors=0, outbox_depth=0, cpu_percent=1.0, memory_mb=1.0,
        state_problem="damaged",
    )  # fmt: skip
    fleet.service.on_telemetry("dev01", telemetry, telemetry.to_dict())
    rollout = fleet.service.create_rollout("edge-student", 2, devices=["dev01"], rollout_id="r1")

    devices = fleet.views.devices()
    assert [d["id"] for d in devices] == ["dev00", "dev01", "dev02"]
    dev01 = devices[1]
    assert (dev01["escalation_rate"], dev01["state_problem"], dev01["telemetry_at"]) == (0.25, "damaged", telemetry.at)
    assert dev01["telemetry"]["requests"] == {"edge": 3}
    assert dev01["rollout"] == {"id": "r1", "status": "SENT"}
    assert devices[0]["rollout"] is None
    fleet.service.abort_rollout(rollout.id)
    assert fleet.views.devices()[1]["rollout"] is None  # an ended rollout is not shown on the device


def test_rollouts_newest_first_and_one_with_its_spec_and_deliveries(fleet: OfflineFleet) -> None:
    older = fleet.service.create_rollout("edge-student", 2, devices=["dev00"], rollout_id="older")
    newer = fleet.service.create_rollout("edge-student", 2, devices=["dev01", "dev02"], rollout_id="newer")
    assert [r["id"] for r in fleet.views.rollouts()] == ["newer", "older"]
    detail = fleet.views.rollout(newer.id)
    assert {k: detail[k] for k in ("id", "status", "total")} == {"id": "newer", "status": "RUNNING", "total": 2}
    assert detail["spec"] == newer.spec.to_dict()
    assert [d["device"] for d in detail["devices"]] == ["dev01", "dev02"]
    assert fleet.views.rollout(older.id)["spec"]["revision"] < detail["spec"]["revision"]
    with pytest.raises(NotFoundError):
        fleet.views.rollout("nope")
