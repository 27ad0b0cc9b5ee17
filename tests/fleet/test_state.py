"""The fleet's in-memory state: loaded from the store, one live rollout per device, counts for the metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.fleet.state import FleetState
from edgecloud.fleet.store import DeviceRecord
from edgecloud.shared.base.errors import NotFoundError
from tests.helpers.fleet_service import birth, offline_fleet, register_versions


def test_the_state_loads_what_the_store_holds_and_counts_for_the_metrics(tmp_path: Path) -> None:
    fleet = offline_fleet(tmp_path)
    fleet.service.on_birth("dev00", birth("dev00"))
    fleet.service.on_birth("dev01", birth("dev01"))
    fleet.service.on_birth("dev01", birth("dev01", online=False))
    register_versions(fleet, tmp_path, 2)
    running = fleet.service.create_rollout("edge-student", 2, devices=["dev00"])

    loaded = FleetState.load(fleet.store)
    assert set(loaded.devices) == {"dev00", "dev01"} and set(loaded.rollouts) == {running.id}
    assert (loaded.online_count(), loaded.live_count()) == (1, 1)
    assert loaded.rollout(running.id).spec == running.spec
    assert set(loaded.live_rollouts_by_device()) == {"dev00"}
    fleet.service.abort_rollout(running.id)
    assert fleet.state.live_rollouts_by_device() == {} and fleet.state.live_count() == 0


def test_an_unknown_rollout_is_not_found() -> None:
    state = FleetState(devices={"dev00": DeviceRecord(id="dev00")})
    with pytest.raises(NotFoundError, match="no rollout 'nope'"):
        state.rollout("nope")
    assert (state.online_count(), state.live_count(), state.live_rollouts_by_device()) == (0, 0, {})
