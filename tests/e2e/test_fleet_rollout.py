"""The fleet end to end: a real mosquitto, the real fleet manager with its REST API and
artifact server, and three real device agents, each with its own edge daemon on the
shipped student bundle.

Nothing is simulated: bundles are signed, registered over HTTP, downloaded by the
devices from the manager's ``/artifacts`` route, verified against each device's trusted
keys, self-tested and hot-swapped into the device's model slot.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecloud.shared.bundles.manifest import load_manifest
from tests.helpers.real_fleet import DEVICES, LABELS, Fleet, signed_archive, start_rollout, wait_rollout
from tests.helpers.waiting import wait_for


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


def test_a_rollout_is_traced_from_the_manager_to_every_device(
    make_fleet: Callable[..., Fleet],
    shipped_models: Path,
    tmp_path: Path,
    keys: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Manager and devices share this process, but the trace context crosses the real broker (MQTT 5
    # user properties beside the signed command), as it does between machines.
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from edgecloud.shared.base import tracing

    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "_provider", None)  # restored (tracing off) after the test
    tracing.configure_tracing("edgecloud-test", exporter=exporter)
    fleet = make_fleet()
    new = load_manifest(shipped_models / "edge-student").version + 1
    fleet.register(signed_archive(shipped_models / "edge-student", tmp_path, new, keys["good"]))
    rollout = wait_rollout(fleet, start_rollout(fleet, new), "COMPLETED", "ABORTED")
    assert rollout["status"] == "COMPLETED", rollout

    def finished(name: str) -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.name == name]

    wait_for(lambda: len(finished("agent.command")) == len(DEVICES), 10, "every device's agent.command span")
    sent = {s.attributes["edgecloud.command_id"]: s for s in finished("fleet.command")}
    assert {s.attributes["edgecloud.device"] for s in sent.values()} == set(DEVICES)
    assert {s.attributes["edgecloud.rollout_id"] for s in sent.values()} == {rollout["id"]}
    for handled in finished("agent.command"):
        publish = sent[handled.attributes["edgecloud.command_id"]]
        assert handled.parent.span_id == publish.context.span_id  # across the broker
        assert handled.context.trace_id == publish.context.trace_id
        inside = [s for s in exporter.get_finished_spans() if s.parent and s.parent.span_id == handled.context.span_id]
        assert [s.name for s in sorted(inside, key=lambda s: s.start_time)] == [
            "agent.download", "agent.verify", "agent.swap", "agent.watch"
        ]  # fmt: skip
