"""The fleet store: bundles, devices and rollouts survive a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.fleet.rollout import AbortCriteria, Exponential, FixedBatches, Rollout, RolloutSpec, RolloutStatus
from edgecloud.fleet.store import BundleRecord, DeviceRecord, FleetStore
from edgecloud.shared.base.errors import ConfigError, InvalidInputError, NotFoundError
from edgecloud.shared.fleetlink.messages import AckStatus, BundleRef, CommandAck

BUNDLE = BundleRef(name="edge-student", version=2, url="https://fleet.example/b/2.tar.gz", sha256="a" * 64, size=1000)
PREVIOUS = BundleRef(name="edge-student", version=1, url="https://fleet.example/b/1.tar.gz", sha256="b" * 64, size=900)
DEVICES = tuple(f"d{i:02d}" for i in range(12))


def ack(rollout: Rollout, device: str, status: AckStatus, revision: int = 7) -> CommandAck:
    return CommandAck(
        command_id=rollout.spec.command_id(device, revision),
        device=device,
        status=status,
        revision=revision,
        version=2,
        rollout_id=rollout.id,
    )


def midway(rollout_id: str = "r1") -> Rollout:
    """Waves of 3, 6, 3. Wave 1 done (one failure); wave 2 under way: two active, one verifying, three sent."""
    rollout = Rollout(
        RolloutSpec(
            id=rollout_id,
            bundle=BUNDLE,
            targets=DEVICES,
            revision=7,
            strategy=Exponential(3, 2),
            abort=AbortCriteria(50, 4),
            device_timeout_s=60,
        )
    )
    rollout.start(now=0.0)
    for device, status in (("d00", AckStatus.ACTIVE), ("d01", AckStatus.FAILED), ("d02", AckStatus.ACTIVE)):
        rollout.on_ack(ack(rollout, device, AckStatus.DOWNLOADING), 1.0)
        rollout.on_ack(ack(rollout, device, status), 2.0)
    rollout.on_ack(ack(rollout, "d03", AckStatus.ACTIVE), 30.0)
    rollout.on_ack(ack(rollout, "d04", AckStatus.VERIFYING), 40.0)
    rollout.on_ack(ack(rollout, "d05", AckStatus.VERIFYING), 50.0)
    rollout.tick(now=50.0)
    rollout.on_ack(ack(rollout, "d05", AckStatus.ACTIVE), 55.0)
    return rollout


def test_a_rollout_saved_midway_reloads_identical_and_continues(tmp_path: Path) -> None:
    rollout = midway()
    assert rollout.summary()["wave"] == 2 and rollout.status is RolloutStatus.RUNNING
    path = tmp_path / "fleet.db"
    with FleetStore(path) as store:
        store.save_rollout(rollout)

    with FleetStore(path) as store:  # the fleet manager restarted
        loaded = store.load_rollout("r1")
    assert loaded == rollout
    assert loaded.to_dict() == rollout.to_dict() and loaded.summary() == rollout.summary()

    # both go on the same way: the rest of wave 2 reports, d06 times out, and that ends wave 2,
    # so wave 3 (the last 3 devices) goes out, exactly once
    sent = []
    for r in (rollout, loaded):
        for device in ("d04", "d07", "d08"):
            assert r.on_ack(ack(r, device, AckStatus.ACTIVE), 61.0) == []
        sent.append(r.tick(now=62.5))
        assert r.devices["d06"].deploy.reason == "timeout"
    assert sent[0] == sent[1] and [c.id for c in sent[1]] == ["r1-d09-7", "r1-d10-7", "r1-d11-7"]
    assert loaded == rollout
    assert loaded.tick(now=65.0) == []
    for d in ("d09", "d10", "d11"):
        assert loaded.on_ack(ack(loaded, d, AckStatus.ACTIVE), 66.0) == []
    assert loaded.status is RolloutStatus.COMPLETED
    assert (loaded.summary()["succeeded"], loaded.summary()["failed"]) == (10, 2)


def test_saves_write_only_changed_devices_and_every_step_reloads_identical(tmp_path: Path) -> None:
    rollout = Rollout(
        RolloutSpec(id="r1", bundle=BUNDLE, targets=DEVICES, revision=7, strategy=FixedBatches(4), device_timeout_s=60)
    )
    path = tmp_path / "fleet.db"
    with FleetStore(path) as store:
        assert len(rollout.take_changed()) == len(DEVICES)  # a new rollout: all of them
        rollout.mark_changed(DEVICES)
        store.save_rollout(rollout)
        assert rollout.take_changed() == []

        steps = [lambda: rollout.start(now=0.0)]
        steps += [lambda d=d: rollout.on_ack(ack(rollout, d, AckStatus.ACTIVE), 1.0) for d in DEVICES[:4]]
        steps += [
            lambda: rollout.on_ack(ack(rollout, "d04", AckStatus.FAILED), 2.0),
            lambda: rollout.on_ack(ack(rollout, "d04", AckStatus.FAILED), 2.5),  # duplicate: no change
            lambda: rollout.tick(now=100.0),
        ]  # d05..d07 time out, the last wave goes out
        written = []
        for step in steps:
            step()
            written.append(sorted(s.device for s in rollout.take_changed()))
            rollout.mark_changed(written[-1])
            store.save_rollout(rollout)
            with FleetStore(path) as reader:
                assert reader.load_rollout("r1") == rollout
        # the last ack of wave 1 also sends wave 2
        assert written == [
            ["d00", "d01", "d02", "d03"],
            ["d00"],
            ["d01"],
            ["d02"],
            ["d03", "d04", "d05", "d06", "d07"],
            ["d04"],
            [],
            ["d05", "d06", "d07", "d08", "d09", "d10", "d11"],
        ]


def test_a_rolled_back_rollout_keeps_rolling_back_after_a_restart(tmp_path: Path) -> None:
    rollout = midway()
    assert sorted(c.id for c in rollout.rollback(PREVIOUS, revision=8, now=56.0)) == [
        "r1-d00-8",
        "r1-d02-8",
        "r1-d03-8",
        "r1-d05-8",
    ]
    with FleetStore(tmp_path / "fleet.db") as store:
        store.save_rollout(rollout)
    with FleetStore(tmp_path / "fleet.db") as store:
        loaded = store.load_rollout("r1")
    assert loaded == rollout and loaded.rollback_bundle == PREVIOUS
    assert [c.id for c in loaded.on_ack(ack(loaded, "d04", AckStatus.ACTIVE), 57.0)] == ["r1-d04-8"]
    loaded.on_ack(ack(loaded, "d00", AckStatus.ACTIVE, revision=8), 58.0)
    assert loaded.devices["d00"].rollback is not None
    assert loaded.devices["d00"].rollback.status.value == "ACTIVE"


def test_saving_again_replaces_and_lists_filter_by_status(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.db")
    running = midway("r1")
    store.save_rollout(running)
    paused = midway("r2")
    paused.pause(now=60.0)
    store.save_rollout(paused)
    done = Rollout(RolloutSpec(id="r3", bundle=BUNDLE, targets=("d00",), revision=9, strategy=FixedBatches(1)))
    done.start(now=0.0)
    store.save_rollout(done)
    done.abort("operator", now=61.0)
    store.save_rollout(done)  # replaced, not duplicated

    assert [r.id for r in store.list_rollouts()] == ["r1", "r2", "r3"]
    live = store.list_rollouts([RolloutStatus.RUNNING, RolloutStatus.PAUSED])
    assert [(r.id, r.status) for r in live] == [("r1", RolloutStatus.RUNNING), ("r2", RolloutStatus.PAUSED)]
    assert store.load_rollout("r3").status is RolloutStatus.ABORTED
    with pytest.raises(NotFoundError):
        store.load_rollout("nope")
    store.close()


def test_bundles_are_registered_once(tmp_path: Path) -> None:
    record = BundleRecord(
        name="edge-student",
        version=2,
        sha256="a" * 64,
        size=1000,
        path="/srv/artifacts/aaaa.tar.gz",
        key_id="release-2025",
        registered_at=100.0,
    )
    with FleetStore(tmp_path / "fleet.db") as store:
        store.save_bundle(record)
        store.save_bundle(record)  # idempotent
        store.save_bundle(
            BundleRecord(
                name="edge-student",
                version=1,
                sha256="b" * 64,
                size=900,
                path="/srv/artifacts/bbbb.tar.gz",
                key_id="release-2025",
                registered_at=50.0,
            )
        )
        with pytest.raises(InvalidInputError, match="another sha256"):
            store.save_bundle(
                BundleRecord(
                    name="edge-student",
                    version=2,
                    sha256="c" * 64,
                    size=1000,
                    path="/elsewhere",
                    key_id="k",
                    registered_at=200.0,
                )
            )
    with FleetStore(tmp_path / "fleet.db") as store:
        assert store.load_bundle("edge-student", 2) == record
        assert [b.version for b in store.list_bundles("edge-student")] == [1, 2]
        assert store.list_bundles("other") == []
        with pytest.raises(NotFoundError):
            store.load_bundle("edge-student", 3)


def test_devices_keep_their_latest_state(tmp_path: Path) -> None:
    telemetry = {"device": "cam-2", "at": 10.0, "latency_ms": {"edge": {"p50": 1.5, "p99": 4.0}}, "errors": 0}
    with FleetStore(tmp_path / "fleet.db") as store:
        store.save_device(
            DeviceRecord(
                id="cam-2",
                labels={"site": "lyon"},
                online=True,
                model_name="edge-student",
                model_version=1,
                session=3,
                last_seen=5.0,
            )
        )
        updated = DeviceRecord(
            id="cam-2",
            labels={"site": "lyon", "ring": "canary"},
            online=False,
            model_name="edge-student",
            model_version=2,
            session=4,
            last_seen=10.0,
            telemetry=telemetry,
        )
        store.save_device(updated)
        store.save_device(DeviceRecord(id="cam-1"))
    with FleetStore(tmp_path / "fleet.db") as store:
        assert store.load_device("cam-2") == updated
        assert [d.id for d in store.list_devices()] == ["cam-1", "cam-2"]
        assert store.load_device("cam-1").telemetry is None
        with pytest.raises(NotFoundError):
            store.load_device("cam-9")


def test_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        FleetStore(tmp_path / "no-such-dir" / "fleet.db")
    with FleetStore() as store:  # in memory
        assert store.list_rollouts() == []


def test_the_revision_counter_is_stored_and_never_hands_out_a_revision_twice(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite3"
    with FleetStore(path) as store:
        assert [store.next_revision() for _ in range(3)] == [1, 2, 3]
        assert store.next_revision(at_least=10) == 11  # a store from before the counter: above its rollouts
        assert store.next_revision(at_least=2) == 12
    with FleetStore(path) as reopened:  # nothing rebuilt from rollouts: there are none here
        assert reopened.next_revision() == 13
    rollout = midway("r9")
    with FleetStore(tmp_path / "other.sqlite3") as store:
        store.save_rollout(rollout)
        assert store.next_revision() == 1  # the counter alone; the manager passes at_least
