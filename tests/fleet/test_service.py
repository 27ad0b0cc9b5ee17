"""The fleet's use cases without a broker (tests/helpers/fleet_service.py records what they would
publish): device births, telemetry and acks; planning and steering rollouts; re-publishing what is in
flight. The last test sends a damaged agent state from a simulated device over a real mosquitto."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from edgecloud.fleet.rollout import DeviceStatus, FixedBatches, RolloutStatus
from edgecloud.fleet.service import in_flight
from edgecloud.fleet.store import FleetStore
from edgecloud.shared.base.errors import InvalidInputError, NotFoundError
from edgecloud.shared.fleetlink.messages import AckStatus, Birth, Telemetry
from tests.helpers.fleet_service import OfflineFleet, ack, birth, offline_fleet, register_versions
from tests.helpers.sim_fleet import manager_config, start_devices, start_manager, wait_devices_online
from tests.helpers.waiting import wait_for


@pytest.fixture
def fleet(tmp_path: Path) -> OfflineFleet:
    fleet = offline_fleet(tmp_path)
    for device, site in (("dev00", "lab"), ("dev01", "lab"), ("dev02", "field")):
        fleet.service.on_birth(device, birth(device, site=site))
    register_versions(fleet, tmp_path, 1, 2)
    return fleet


def telemetry(device: str, state_problem: str = "", version: int = 1) -> Telemetry:
    return Telemetry(
        device=device, at=time.time(), model_name="edge-student", model_version=version, requests={"edge": 1},
        latency_ms={}, escalation_rate=0.25, degraded=0, errors=0, outbox_depth=0, cpu_percent=1.0, memory_mb=1.0,
        state_problem=state_problem,
    )  # fmt: skip


# -- what devices report ---------------------------------------------------------------


def test_a_birth_records_the_device_and_an_offline_will_keeps_what_it_knew(fleet: OfflineFleet) -> None:
    record = fleet.state.devices["dev00"]
    assert (record.online, record.labels, record.session, record.model_version) == (True, {"site": "lab"}, 1, 1)
    assert fleet.store.load_device("dev00") == record
    fleet.service.on_birth("dev00", Birth(online=False, device="dev00"))  # the will: no labels, no session
    gone = fleet.state.devices["dev00"]
    assert (gone.online, gone.labels, gone.session, gone.model_name) == (False, {"site": "lab"}, 1, "edge-student")
    assert fleet.sent == []


def test_a_message_naming_another_device_than_its_topic_is_refused(fleet: OfflineFleet) -> None:
    before = dict(fleet.state.devices)
    with pytest.raises(InvalidInputError, match="names device"):
        fleet.service.on_birth("dev00", birth("dev01"))
    with pytest.raises(InvalidInputError, match="names device"):
        fleet.service.on_telemetry("dev00", telemetry("dev01"), telemetry("dev01").to_dict())
    rollout = fleet.service.create_rollout("edge-student", 2, devices=["dev00"])
    (command,) = fleet.take_sent()
    with pytest.raises(InvalidInputError, match="names device"):
        fleet.service.on_ack("dev01", ack(command, AckStatus.ACTIVE))
    assert fleet.state.devices == before and rollout.devices["dev00"].deploy.status is DeviceStatus.SENT


def test_telemetry_is_kept_as_it_came_and_a_damaged_state_is_said_once(
    fleet: OfflineFleet, caplog: pytest.LogCaptureFixture
) -> None:
    problem = "agent-state.json is unreadable; recovered the previous generation"
    with caplog.at_level(logging.WARNING, logger="edgecloud.fleet.service"):
        for _ in range(3):
            message = telemetry("dev00", problem, version=2)
            fleet.service.on_telemetry("dev00", message, message.to_dict())
    record = fleet.state.devices["dev00"]
    assert record.telemetry == message.to_dict() and record.model_version == 2
    assert fleet.store.load_device("dev00").telemetry == message.to_dict()
    said = [r for r in caplog.records if "damaged agent state" in r.getMessage()]
    assert len(said) == 1 and problem in said[0].getMessage()
    fleet.service.on_telemetry("new-device", telemetry("new-device"), telemetry("new-device").to_dict())
    assert fleet.state.devices["new-device"].telemetry is not None  # telemetry before any birth: recorded


def test_acks_carry_a_rollout_to_completion_and_a_refusal_fails_no_delivery(
    fleet: OfflineFleet, caplog: pytest.LogCaptureFixture
) -> None:
    rollout = fleet.service.create_rollout("edge-student", 2, labels={"site": "lab"}, strategy=FixedBatches(size=1))
    (first,) = fleet.take_sent()
    assert (first.device, first.type, first.bundle.version) == ("dev00", "deploy", 2)

    with caplog.at_level(logging.WARNING, logger="edgecloud.fleet.service"):
        fleet.service.on_ack("dev00", ack(first, AckStatus.FAILED, rollout_id="", reason="refused (bad-signature)"))
    assert rollout.devices["dev00"].deploy.status is DeviceStatus.SENT
    assert any("refused command" in r.getMessage() for r in caplog.records)
    fleet.service.on_ack("dev00", ack(first, AckStatus.ACTIVE, rollout_id="nope"))  # unknown rollout: ignored
    assert rollout.devices["dev00"].deploy.status is DeviceStatus.SENT

    fleet.service.on_ack("dev00", ack(first, AckStatus.ACTIVE))
    (second,) = fleet.take_sent()  # the next wave
    assert second.device == "dev01" and fleet.state.devices["dev00"].model_version == 2
    fleet.service.on_ack("dev01", ack(second, AckStatus.ACTIVE))
    assert rollout.status is RolloutStatus.COMPLETED
    assert fleet.store.load_rollout(rollout.id).status is RolloutStatus.COMPLETED


def test_a_rebirth_republishes_what_the_device_still_owes_an_ack_for(fleet: OfflineFleet) -> None:
    rollout = fleet.service.create_rollout("edge-student", 2, devices=["dev00", "dev01"])
    first = {c.device: c for c in fleet.take_sent()}
    fleet.service.on_birth("dev00", birth("dev00", session=1))  # the same session: a stale retained message
    assert fleet.sent == []
    fleet.service.on_birth("dev00", birth("dev00", session=2))
    (again,) = fleet.take_sent()
    assert again.device == "dev00" and again.id == first["dev00"].id  # the original id: the device dedupes
    fleet.service.on_ack("dev01", ack(first["dev01"], AckStatus.ACTIVE))
    fleet.service.on_birth("dev01", birth("dev01", session=2))
    assert fleet.sent == []  # nothing in flight for dev01 any more
    assert [c.device for c in in_flight(rollout)] == ["dev00"]
    assert [c.id for c in in_flight(rollout, "dev01")] == []


def test_after_a_restart_every_in_flight_command_is_published_again(fleet: OfflineFleet, tmp_path: Path) -> None:
    rollout = fleet.service.create_rollout("edge-student", 2, devices=["dev00", "dev01"])
    sent = {c.id for c in fleet.take_sent()}
    successor = offline_fleet(tmp_path / "successor", store=fleet.store)  # what a new process loads
    successor.service.republish_in_flight()
    assert {c.id for c in successor.sent} == sent
    assert successor.service.next_revision() > rollout.spec.revision


def test_tick_times_out_a_silent_device(fleet: OfflineFleet) -> None:
    rollout = fleet.service.create_rollout("edge-student", 2, devices=["dev00"], device_timeout_s=60)
    fleet.service.tick(time.time() + 1)
    assert rollout.devices["dev00"].deploy.status is DeviceStatus.SENT
    fleet.service.tick(time.time() + 61)
    assert rollout.devices["dev00"].deploy.status is DeviceStatus.FAILED
    assert fleet.store.load_rollout(rollout.id).devices["dev00"].deploy.status is DeviceStatus.FAILED


# -- what an operator asks -------------------------------------------------------------


def test_targets_are_the_named_devices_then_the_labelled_ones_once_each(fleet: OfflineFleet) -> None:
    resolve = fleet.service.resolve_targets
    assert resolve(["dev01"], {"site": "lab"}) == ["dev01", "dev00"]
    assert resolve(["dev02", "dev02"]) == ["dev02"]
    with pytest.raises(NotFoundError, match="no device 'ghost'"):
        resolve(["ghost"])
    with pytest.raises(InvalidInputError, match="no device matches"):
        resolve([], {"site": "moon"})


def test_a_device_is_in_one_live_rollout_at_most_and_ids_are_unique(fleet: OfflineFleet) -> None:
    first = fleet.service.create_rollout("edge-student", 2, devices=["dev00"], rollout_id="first")
    with pytest.raises(InvalidInputError, match=r"dev00 \(first\)"):
        fleet.service.create_rollout("edge-student", 2, labels={"site": "lab"})
    with pytest.raises(InvalidInputError, match="exists"):
        fleet.service.create_rollout("edge-student", 2, devices=["dev01"], rollout_id="first")
    with pytest.raises(NotFoundError):
        fleet.service.create_rollout("edge-student", 9, devices=["dev01"])
    fleet.service.abort_rollout(first.id)
    again = fleet.service.create_rollout("edge-student", 2, devices=["dev00"])  # free once it ended
    assert again.spec.revision > first.spec.revision


def test_start_pause_resume_and_abort_each_save_and_publish_what_they_release(fleet: OfflineFleet) -> None:
    rollout = fleet.service.create_rollout(
        "edge-student", 2, labels={"site": "lab"}, strategy=FixedBatches(size=1), start=False
    )
    assert rollout.status is RolloutStatus.PENDING and fleet.sent == []
    assert fleet.service.start_rollout(rollout.id)["status"] == "RUNNING"
    (first,) = fleet.take_sent()
    assert fleet.service.pause_rollout(rollout.id)["status"] == "PAUSED"
    fleet.service.on_ack("dev00", ack(first, AckStatus.ACTIVE))
    assert fleet.sent == []  # paused: no second wave
    assert fleet.service.resume_rollout(rollout.id)["status"] == "RUNNING"
    assert [c.device for c in fleet.take_sent()] == ["dev01"]
    summary = fleet.service.abort_rollout(rollout.id, "changed my mind")
    assert (summary["status"], summary["abort_reason"]) == ("ABORTED", "changed my mind")
    assert fleet.store.load_rollout(rollout.id).status is RolloutStatus.ABORTED
    with pytest.raises(InvalidInputError, match="only a PAUSED one can resume"):
        fleet.service.resume_rollout(rollout.id)
    with pytest.raises(NotFoundError, match="no rollout 'nope'"):
        fleet.service.pause_rollout("nope")


def test_a_rollback_goes_to_the_newest_older_version_under_a_new_revision(fleet: OfflineFleet, tmp_path: Path) -> None:
    rollout = fleet.service.create_rollout("edge-student", 2, devices=["dev00"])
    (command,) = fleet.take_sent()
    fleet.service.on_ack("dev00", ack(command, AckStatus.ACTIVE))
    summary = fleet.service.rollback_rollout(rollout.id)
    assert summary["status"] == "ROLLED_BACK" and summary["rollback"]["revision"] > rollout.spec.revision
    (back,) = fleet.take_sent()
    assert (back.type, back.device, back.bundle.version) == ("rollback", "dev00", 1)

    register_versions(fleet, tmp_path, 3)
    newer = fleet.service.create_rollout("edge-student", 3, devices=["dev01"])
    with pytest.raises(NotFoundError):
        fleet.service.rollback_rollout(newer.id, to_version=7)
    assert fleet.service.rollback_rollout(newer.id, to_version=2)["status"] == "ROLLED_BACK"
    only = offline_fleet(tmp_path / "one")
    only.service.on_birth("dev00", birth("dev00"))
    register_versions(only, tmp_path / "one", 1)
    first = only.service.create_rollout("edge-student", 1, devices=["dev00"])
    with pytest.raises(NotFoundError, match="no registered edge-student version older than v1"):
        only.service.rollback_rollout(first.id)


def test_a_store_without_a_counter_starts_above_its_rollouts_revisions(tmp_path: Path) -> None:
    fleet = offline_fleet(tmp_path)
    fleet.service.on_birth("dev00", birth("dev00"))
    register_versions(fleet, tmp_path, 1)
    rollout = fleet.service.create_rollout("edge-student", 1, devices=["dev00"])
    fresh = FleetStore()  # the rollout copied into a store that never handed out a revision
    fresh.save_rollout(rollout)
    assert offline_fleet(tmp_path / "fresh", store=fresh).service.next_revision() == rollout.spec.revision + 1


# -- over a real broker ----------------------------------------------------------------


def test_a_device_on_a_damaged_agent_state_is_said_once_and_listed(  # type: ignore[no-untyped-def]
    mqtt_broker, tmp_path, sims, managers, caplog
) -> None:
    (device,) = start_devices(mqtt_broker, sims, 1)
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 1)
    problem = "agent-state.json is unreadable (Expecting value); recovered the previous generation"
    with caplog.at_level(logging.WARNING, logger="edgecloud.fleet.service"):
        for _ in range(3):
            device.send_telemetry(state_problem=problem)
        wait_for(lambda: manager.devices()[0]["state_problem"] == problem, 10, "the device's state problem")
        time.sleep(0.3)
    said = [r for r in caplog.records if "damaged agent state" in r.getMessage()]
    assert len(said) == 1 and "dev00" in said[0].getMessage() and problem in said[0].getMessage()
    device.send_telemetry()
    wait_for(lambda: manager.devices()[0]["state_problem"] == "", 10, "the problem cleared")
