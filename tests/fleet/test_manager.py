"""The fleet manager as one object (its config, bundle registration, its command key) and whole rollouts
through it against a real mosquitto and simulated devices (tests/helpers/sim_fleet.py): thresholds,
a broker restart, a manager restart. Its parts have their own tests: test_link, test_service,
test_views, test_state; its REST API test_api."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from pathlib import Path

import pytest

from edgecloud.fleet.manager import FleetManager, FleetManagerConfig
from edgecloud.fleet.quality import QualityGate
from edgecloud.fleet.registry import read_archive_manifest
from edgecloud.fleet.rollout import AbortCriteria, FixedBatches, RolloutStatus
from edgecloud.shared.base.errors import BundleError, ConfigError, InvalidInputError, ManifestError, NotFoundError
from edgecloud.shared.fleetlink.broker import BrokerSettings
from edgecloud.shared.fleetlink.quality import FieldQuality
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


def field(version: int, *, checks: int, agreed: int, escalated: int = 40) -> FieldQuality:
    return FieldQuality("edge-student", version, read=400, kept=400 - escalated, escalated=escalated, abstained=5,
                        checks=checks, agreed=agreed)  # fmt: skip


@pytest.mark.parametrize("defective", [True, False])
def test_a_wave_is_judged_by_its_field_quality(mqtt_broker, tmp_path, sims, managers, defective: bool) -> None:
    # v1 agrees with the cloud on 99 of 100 checks per device. v2, once served, on 54 of 60 (a
    # student wrong on 10% of what it keeps, unseen by its self-test and by the watch window), or on 60 of 60.
    devices = start_devices(mqtt_broker, sims, 6)
    for device in devices:
        device.field = {1: field(1, checks=100, agreed=99), 2: field(2, checks=60, agreed=54 if defective else 60)}
    manager = start_manager(manager_config(mqtt_broker, tmp_path, tick_interval_s=0.2), managers)
    wait_devices_online(manager, 6)
    for device in devices:
        device.send_telemetry()  # telemetry is not retained: sent once the manager listens
    old, new = (manager.register_bundle(make_archive(tmp_path / f"v{v}", v)) for v in (1, 2))
    wait_for(lambda: all(d["telemetry"] and d["telemetry"]["quality"] for d in manager.devices()), 20)

    gate = QualityGate(min_shadow_checks=100, max_agreement_drop=2.0, max_escalation_rise=5.0)
    rollout = manager.create_rollout(new.name, new.version, labels={"site": "lab"},
                                     strategy=FixedBatches(size=2), quality=gate)  # fmt: skip
    wait_status(manager, rollout.id, RolloutStatus.ROLLED_BACK if defective else RolloutStatus.COMPLETED)
    summary = manager.rollout(rollout.id)
    first, *later = summary["quality_gates"]
    assert first["new"]["checks"] == 120 and first["baseline"]["checks"] == 600  # the wave's, the fleet's
    if defective:
        assert first["verdict"] == "failed" and "agreement worse by 9.0 points" in summary["abort_reason"]
        assert later == [None, None] and summary["rollback"]["version"] == old.version
        wave_one = {"dev00", "dev01"}
        # ROLLED_BACK means the rollback commands are out; wave 1's devices apply them a moment later
        wait_for(lambda: all(device.version == 1 for device in devices), 20, "wave 1 back on v1")
        for device in devices:  # wave 1 went back to v1; nobody else ever heard of v2
            assert device.version == 1 and bool(device.received) == (device.device in wave_one)
    else:
        assert [g["verdict"] for g in summary["quality_gates"]] == ["passed"] * 3
        assert all(device.version == 2 for device in devices)


def test_a_quality_gate_without_an_older_version_to_compare_with_is_refused(mqtt_broker, tmp_path, managers) -> None:
    manager = start_manager(manager_config(mqtt_broker, tmp_path), managers)
    only = manager.register_bundle(make_archive(tmp_path, 2))
    gate = QualityGate(min_shadow_checks=10)
    with pytest.raises(InvalidInputError, match="register an older .* version first"):
        manager.create_rollout(only.name, only.version, labels={"site": "lab"}, quality=gate)
    assert manager.store.list_rollouts() == []  # nothing half-made: it would have waited for a baseline forever


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
        assert third.service.next_revision() == revision + 1  # revisions stay monotonic across restarts
    finally:
        third.close()
