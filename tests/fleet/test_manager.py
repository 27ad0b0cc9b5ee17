"""The fleet manager against a real mosquitto and simulated devices (tests/fleet/sim.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecloud.fleet.api import create_app, create_server
from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.fleet.registry import read_archive_manifest
from edgecloud.fleet.rollout import AbortCriteria, FixedBatches, RolloutStatus
from edgecloud.shared.base.errors import BundleError, ConfigError, InvalidInputError, ManifestError, NotFoundError
from edgecloud.shared.fleetlink.broker import BrokerSettings
from tests.helpers.sim_fleet import (
    assert_applied_exactly_once,
    command_key,
    make_archive,
    make_bundle,
    manager_config,
    start_devices,
    start_manager,
    wait_devices_online,
    wait_status,
)
from tests.helpers.waiting import wait_for

# -- config and bundles ----------------------------------------------------------------


def test_config_validates(tmp_path: Path) -> None:
    key = command_key(tmp_path)
    FleetManagerConfig(artifact_dir=tmp_path, command_key=key)
    for bad in (
        {"fleet": "a/b"},
        {"public_base_url": "ftp://x"},
        {"tick_interval_s": 0},
        {"broker": "host:1883"},
        {"command_ttl_s": 0},
        {"command_ttl_s": 31 * 24 * 3600},
    ):
        with pytest.raises(ConfigError):
            FleetManagerConfig(artifact_dir=tmp_path, command_key=key, **bad)
    for bad in ({"port": 0}, {"password": "p"}, {"tls_cert": Path("c")}, {"version": "4"}, {"keepalive_s": 0}):
        with pytest.raises(ConfigError):
            BrokerSettings(**bad)


def test_register_bundle_content_addressed_and_checked(tmp_path: Path) -> None:
    manager = FleetManager(FleetManagerConfig(artifact_dir=tmp_path / "artifacts", command_key=command_key(tmp_path)))
    try:
        archive = make_archive(tmp_path, 2)
        record = manager.register_bundle(archive)
        assert (record.name, record.version, record.size) == ("edge-student", 2, archive.stat().st_size)
        assert record.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert Path(record.path) == tmp_path / "artifacts" / f"{record.sha256}.tar.gz"
        assert manager.register_bundle(archive) == record  # idempotent
        other = make_archive(tmp_path / "other", 2)
        with pytest.raises(InvalidInputError, match="another sha256"):
            manager.register_bundle(other)
        with pytest.raises(InvalidInputError, match="cloud bundle"):
            manager.register_bundle(make_archive(tmp_path / "cloud", 3, kind="cloud"))
        junk = tmp_path / "junk.tar.gz"
        junk.write_bytes(b"not a tarball")
        with pytest.raises(BundleError):
            read_archive_manifest(junk)
        nested = tmp_path / "nested.tar.gz"  # the bundle in a top folder: devices would refuse it
        with tarfile.open(nested, "w:gz") as tar:
            tar.add(make_bundle(tmp_path / "nested", 4), arcname="edge-student-v4")
        with pytest.raises(ManifestError, match="the archive's first member at its root"):
            manager.register_bundle(nested)
        with pytest.raises(NotFoundError):
            manager.artifact_path("0" * 64)
    finally:
        manager.close()


def test_register_bundle_verifies_the_signature_when_keys_are_trusted(tmp_path: Path) -> None:
    from edgecloud.shared.bundles.artifacts import pack_bundle
    from edgecloud.shared.bundles.signing import (
        ExpiredBundleError,
        SignatureError,
        UntrustedKeyError,
        generate_keypair,
        load_private_key,
        sign_bundle,
    )

    kid = generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    manager = FleetManager(
        FleetManagerConfig(
            artifact_dir=tmp_path / "artifacts", trusted_keys=(tmp_path / "k.pub",), command_key=command_key(tmp_path)
        )
    )

    def archive(version: int, key: str | None, expires_at: str | None = None) -> Path:
        folder = make_bundle(tmp_path / f"s{version}", version)
        if expires_at is not None and expires_at < "2021":  # a release from long ago, replayed
            data = json.loads((folder / "manifest.json").read_text())
            (folder / "manifest.json").write_text(json.dumps({**data, "created_at": "2020-01-01T00:00:00Z"}))
        if key:
            sign_bundle(folder, load_private_key(tmp_path / key), expires_at=expires_at)
        out = tmp_path / f"signed-v{version}.tar.gz"
        pack_bundle(folder, out)  # files at the archive's root
        return out

    try:
        assert manager.register_bundle(archive(2, "k.pem")).key_id == kid
        with pytest.raises(SignatureError):
            manager.register_bundle(archive(3, None))
        with pytest.raises(UntrustedKeyError):
            manager.register_bundle(archive(4, "other.pem"))
        expiring = archive(5, "k.pem", expires_at="2099-01-01T00:00:00Z")
        assert manager.register_bundle(expiring).version == 5  # fresh: registered
        with pytest.raises(ExpiredBundleError):  # signed correctly, but stale: a freeze or replay
            manager.register_bundle(archive(6, "k.pem", expires_at="2020-02-01T00:00:00Z"))
        assert [b.version for b in manager.bundles()] == [2, 5]
    finally:
        manager.close()


def test_the_manager_refuses_to_start_without_a_usable_command_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a command signing key"):
        FleetManagerConfig(artifact_dir=tmp_path)
    with pytest.raises(ConfigError, match="cannot read key"):
        FleetManager(FleetManagerConfig(artifact_dir=tmp_path, command_key=tmp_path / "missing.key"))
    public = tmp_path / "k.pub"
    from edgecloud.shared.bundles.signing import generate_keypair

    generate_keypair(tmp_path / "k.key", public)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        FleetManager(FleetManagerConfig(artifact_dir=tmp_path, command_key=public))


# -- rollouts over MQTT ----------------------------------------------------------------


def test_rollout_aborts_at_threshold_and_never_sends_later_waves(mqtt_broker, tmp_path, sims, managers) -> None:
    failing = {f"dev{i:02d}" for i in (1, 4, 7, 11, 14, 17)}  # 30%
    devices = start_devices(mqtt_broker, sims, 20, fail=failing)
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 20)
    record = manager.register_bundle(make_archive(tmp_path, 2))

    rollout = manager.create_rollout(
        record.name,
        record.version,
        labels={"site": "lab"},
        strategy=FixedBatches(size=5),
        abort=AbortCriteria(failure_percent=25, min_devices=5),
        device_timeout_s=60,
    )
    wait_status(manager, rollout.id, RolloutStatus.ABORTED)
    time.sleep(1.0)  # several ticks: still nothing more goes out

    summary = manager.rollout(rollout.id)
    assert summary["status"] == "ABORTED" and summary["wave"] == 1
    assert (summary["failed"], summary["finished"]) == (2, 5)  # 40% >= 25% once 5 had finished
    assert "25%" in summary["abort_reason"]
    first_wave = {f"dev{i:02d}" for i in range(5)}
    for device in devices:
        if device.device in first_wave:
            assert sum(device.applied.values()) == 1
        else:
            assert not device.received, f"{device.device} got a command of a later wave"
    assert manager.store.load_rollout(rollout.id).status is RolloutStatus.ABORTED


def test_a_manager_on_mqtt_3_1_1_runs_a_rollout(mqtt_broker, tmp_path, sims, managers) -> None:
    devices = start_devices(mqtt_broker, sims, 3)
    v311 = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port, version="3.1.1")
    manager = start_manager(manager_config(mqtt_broker, tmp_path, broker=v311), managers)
    assert manager.client.protocol == 4  # MQTT 3.1.1 on the wire
    wait_devices_online(manager, 3)
    record = manager.register_bundle(make_archive(tmp_path, 2))
    rollout = manager.create_rollout(
        record.name, record.version, labels={"site": "lab"}, strategy=FixedBatches(size=2), device_timeout_s=60
    )
    wait_status(manager, rollout.id, RolloutStatus.COMPLETED)
    assert_applied_exactly_once(devices, rollout.id, rollout.spec.revision)


def test_broker_restart_mid_rollout_loses_and_repeats_nothing(mqtt_broker, tmp_path, sims, managers) -> None:
    devices = start_devices(mqtt_broker, sims, 20, delay_s=0.3)
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 20)
    record = manager.register_bundle(make_archive(tmp_path, 2))
    rollout = manager.create_rollout(
        record.name, record.version, labels={"site": "lab"}, strategy=FixedBatches(size=5), device_timeout_s=60
    )
    wait_for(lambda: manager.get_rollout(rollout.id).wave >= 1, 20, "the second wave")
    sessions = [d.session for d in devices]

    mqtt_broker.restart()

    wait_status(manager, rollout.id, RolloutStatus.COMPLETED, timeout=60)
    assert all(d.session > s for d, s in zip(devices, sessions, strict=True)), "every device re-announced"
    summary = manager.rollout(rollout.id)
    assert summary["counts"]["ACTIVE"] == 20 and summary["failed"] == 0
    assert all(d.version == 2 for d in devices)
    assert_applied_exactly_once(devices, rollout.id, rollout.spec.revision)
    wait_for(
        lambda: all(d["online"] and d["model_version"] == 2 for d in manager.devices()),
        10,
        "the manager sees every device online on v2",
    )


def test_manager_restart_mid_rollout_continues_then_rolls_back(mqtt_broker, tmp_path, sims, managers) -> None:
    devices = start_devices(mqtt_broker, sims, 20, delay_s=0.3)
    config = manager_config(mqtt_broker, tmp_path)
    manager = start_manager(config, managers)
    wait_devices_online(manager, 20)
    manager.register_bundle(make_archive(tmp_path, 1))
    record = manager.register_bundle(make_archive(tmp_path, 2))
    rollout = manager.create_rollout(
        record.name, record.version, labels={"site": "lab"}, strategy=FixedBatches(size=5), device_timeout_s=60
    )
    wait_for(lambda: manager.get_rollout(rollout.id).wave >= 1, 20, "the second wave")
    manager.close()
    time.sleep(1.0)  # the wave's acks arrive while no manager listens: the broker queues them

    successor = start_manager(config, managers)
    wait_status(successor, rollout.id, RolloutStatus.COMPLETED, timeout=60)
    assert successor.rollout(rollout.id)["counts"]["ACTIVE"] == 20
    assert_applied_exactly_once(devices, rollout.id, rollout.spec.revision)

    summary = successor.rollback_rollout(rollout.id)  # to v1, under a newer revision
    revision = summary["rollback"]["revision"]
    assert revision > rollout.spec.revision
    wait_for(lambda: successor.rollout(rollout.id)["rollback"]["counts"]["ACTIVE"] == 20, 30, "every rollback")
    assert all(d.version == 1 for d in devices)
    for device in devices:
        assert device.applied[f"{rollout.id}-{device.device}-{revision}"] == 1
    successor.close()
    third = FleetManager(config)
    try:
        assert third._next_revision() == revision + 1  # revisions stay monotonic across restarts
    finally:
        third.close()


# -- the REST API ----------------------------------------------------------------------


def test_rest_api(mqtt_broker, tmp_path, sims, managers) -> None:
    labels = {0: {"site": "lab"}, 1: {"site": "lab"}, 2: {"site": "lab"}, 3: {"site": "field"}}
    devices = start_devices(mqtt_broker, sims, 4, delay_s=0.8, labels=labels.__getitem__)
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 4)
    server, port = create_server(manager, api_key="sekrit")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": "Bearer sekrit"}, timeout=10) as api:
            unauthenticated = httpx.get(f"{base}/v1/devices")
            assert unauthenticated.status_code == 401
            assert unauthenticated.json()["error"]["type"] == "unauthenticated"
            assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "mqtt_connected": True}
            assert "edgecloud fleet" in httpx.get(f"{base}/").text

            archive = make_archive(tmp_path, 2, payload_bytes=300_000)
            data = archive.read_bytes()
            created = api.post("/v1/bundles", content=data, headers={"Content-Type": "application/gzip"})
            assert created.status_code == 201, created.text
            bundle = created.json()
            assert bundle["sha256"] == hashlib.sha256(data).hexdigest()
            v1 = api.post(
                "/v1/bundles",
                content=make_archive(tmp_path, 1).read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert v1.status_code == 201 and v1.json()["version"] == 1
            listed = api.get("/v1/bundles").json()["bundles"]
            assert [(b["name"], b["version"]) for b in listed] == [("edge-student", 1), ("edge-student", 2)]
            assert listed[1]["url"].endswith(f"/artifacts/{bundle['sha256']}.tar.gz")

            for device in devices:  # periodic on a real device; the manager was not there for the first
                device.send_telemetry()
            wait_for(
                lambda: all(d["escalation_rate"] == 0.1 for d in api.get("/v1/devices").json()["devices"]),
                10,
                "telemetry of every device",
            )
            listed_devices = api.get("/v1/devices").json()["devices"]
            assert [d["id"] for d in listed_devices] == ["dev00", "dev01", "dev02", "dev03"]
            assert listed_devices[0]["telemetry"]["requests"] == {"edge": 9, "cloud": 1}

            bad = api.post(
                "/v1/rollouts",
                json={
                    "bundle": "edge-student",
                    "version": 2,
                    "strategy": {"type": "spiral"},
                    "labels": {"site": "lab"},
                },
            )
            assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_input"
            assert api.get("/v1/rollouts/nope").status_code == 404
            missing = api.post("/v1/rollouts", json={"bundle": "edge-student", "version": 9, "labels": {}})
            assert missing.status_code == 404

            made = api.post(
                "/v1/rollouts",
                json={
                    "bundle": "edge-student",
                    "version": 2,
                    "labels": {"site": "lab"},
                    "strategy": {"type": "fixed", "size": 1},
                    "device_timeout_s": 60,
                },
            )
            assert made.status_code == 201, made.text
            rollout = made.json()
            assert rollout["total"] == 3 and [d["device"] for d in rollout["devices"]] == ["dev00", "dev01", "dev02"]
            paused = api.post(f"/v1/rollouts/{rollout['id']}/pause", json={}).json()
            assert paused["status"] == "PAUSED"
            time.sleep(1.6)  # dev00 finishes; no second wave while paused
            state = api.get(f"/v1/rollouts/{rollout['id']}").json()
            assert state["status"] == "PAUSED" and state["wave"] == 1 and state["succeeded"] == 1
            assert not devices[1].received
            assert api.post(f"/v1/rollouts/{rollout['id']}/resume", json={}).json()["status"] == "RUNNING"
            wait_for(
                lambda: api.get(f"/v1/rollouts/{rollout['id']}").json()["status"] == "COMPLETED",
                20,
                "completion after resume",
            )

            other = api.post(
                "/v1/rollouts", json={"id": "field-1", "bundle": "edge-student", "version": 2, "devices": ["dev03"]}
            ).json()
            aborted = api.post(f"/v1/rollouts/{other['id']}/abort", json={"reason": "changed my mind"}).json()
            assert aborted["status"] == "ABORTED" and aborted["abort_reason"] == "changed my mind"
            conflict = api.post(f"/v1/rollouts/{other['id']}/resume", json={})
            assert conflict.status_code == 400
            assert [r["id"] for r in api.get("/v1/rollouts").json()["rollouts"]] == ["field-1", rollout["id"]]

            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
                for s in family.samples
            }
            assert samples[("edgecloud_fleet_messages_total", (("leaf", "telemetry"),))] >= 4
            assert samples[("edgecloud_fleet_messages_total", (("leaf", "cmd/ack"),))] >= 3
            assert samples[("edgecloud_fleet_commands_published_total", (("type", "deploy"),))] >= 3
            assert samples[("edgecloud_fleet_devices_online", ())] == 4
            assert samples[("edgecloud_fleet_rollouts_live", ())] == 0
            assert manager.metrics.handled("telemetry") >= 4

            url = f"/artifacts/{bundle['sha256']}.tar.gz"
            part = httpx.get(f"{base}{url}", headers={"Range": "bytes=100-199"})
            assert part.status_code == 206
            assert part.content == data[100:200]
            assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
            half = len(data) // 2  # a resumed download: the first half, then the rest
            first = httpx.get(f"{base}{url}", headers={"Range": f"bytes=0-{half - 1}"}).content
            rest = httpx.get(f"{base}{url}", headers={"Range": f"bytes={half}-"})
            assert rest.status_code == 206 and first + rest.content == data
            assert httpx.get(f"{base}/artifacts/{'0' * 64}.tar.gz").status_code == 404
    finally:
        server.stop()


def test_api_errors_without_broker(tmp_path: Path) -> None:
    """Pure API checks over the ASGI transport: JSON errors, auth off by default, no server-side paths."""
    import asyncio

    manager = FleetManager(FleetManagerConfig(artifact_dir=tmp_path / "a", command_key=command_key(tmp_path)))
    on_the_host = make_archive(tmp_path, 1)

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(manager))
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
            return [
                await client.post("/v1/bundles", content=b"x", headers={"Content-Type": "text/plain"}),
                await client.post("/v1/bundles", json={"path": str(on_the_host)}),
                await client.post("/v1/bundles", content=b"", headers={"Content-Type": "application/gzip"}),
                await client.post("/v1/rollouts/x/pause", json={}),
                await client.get("/v1/devices"),
            ]

    try:
        bad_type, by_path, empty, unknown, devices = asyncio.run(calls())
        assert manager.bundles() == []  # a path on the manager's host registers nothing
    finally:
        manager.close()
    assert bad_type.status_code == 415 and bad_type.json()["error"]["type"] == "unsupported_media_type"
    assert by_path.status_code == 415
    assert empty.status_code == 400 and empty.json()["error"]["type"] == "invalid_input"
    assert unknown.status_code == 404
    assert devices.json() == {"devices": []}


def test_a_device_on_a_damaged_agent_state_is_said_once_and_listed(  # type: ignore[no-untyped-def]
    mqtt_broker, tmp_path, sims, managers, caplog
) -> None:
    (device,) = start_devices(mqtt_broker, sims, 1)
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    wait_devices_online(manager, 1)
    problem = "agent-state.json is unreadable (Expecting value); recovered the previous generation"
    with caplog.at_level(logging.WARNING, logger="edgecloud.fleet.manager"):
        for _ in range(3):
            device.send_telemetry(state_problem=problem)
        wait_for(lambda: manager.devices()[0]["state_problem"] == problem, 10, "the device's state problem")
        time.sleep(0.3)
    said = [r for r in caplog.records if "damaged agent state" in r.getMessage()]
    assert len(said) == 1 and "dev00" in said[0].getMessage() and problem in said[0].getMessage()
    device.send_telemetry()
    wait_for(lambda: manager.devices()[0]["state_problem"] == "", 10, "the problem cleared")
