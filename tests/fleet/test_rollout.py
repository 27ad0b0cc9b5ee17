"""The rollout state machine, driven by hand: no broker, no clock."""

from __future__ import annotations

import json
import random
from collections import deque

import pytest

from edgecloud.fleet.rollout import (
    AbortCriteria,
    DeviceStatus,
    Exponential,
    FixedBatches,
    Rollout,
    RolloutSpec,
    RolloutStatus,
    transition,
)
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.fleetlink.messages import AckStatus, BundleRef, Command, CommandAck

BUNDLE = BundleRef(name="edge-student", version=2, url="https://fleet.example/b/2.tar.gz", sha256="a" * 64, size=1000)
PREVIOUS = BundleRef(name="edge-student", version=1, url="https://fleet.example/b/1.tar.gz", sha256="b" * 64, size=900)

A = AckStatus
D = DeviceStatus


def devices(n: int) -> tuple[str, ...]:
    return tuple(f"d{i:02d}" for i in range(n))


def make_spec(**overrides: object) -> RolloutSpec:
    fields: dict[str, object] = {
        "id": "r1",
        "bundle": BUNDLE,
        "targets": devices(20),
        "revision": 7,
        "strategy": FixedBatches(5),
        "device_timeout_s": 60.0,
    }
    fields.update(overrides)
    return RolloutSpec(**fields)  # type: ignore[arg-type]


def ack(
    rollout: Rollout,
    device: str,
    status: AckStatus,
    *,
    reason: str = "",
    revision: int | None = None,
    rollout_id: str | None = None,
) -> CommandAck:
    revision = rollout.spec.revision if revision is None else revision
    return CommandAck(
        command_id=rollout.spec.command_id(device, revision),
        device=device,
        status=status,
        revision=revision,
        reason=reason,
        version=2,
        rollout_id=rollout.id if rollout_id is None else rollout_id,
    )


def finish(rollout: Rollout, device: str, ok: bool, now: float) -> list[Command]:
    """What the edge agent reports for one deployment; the commands the rollout answered with."""
    out: list[Command] = []
    steps = (A.DOWNLOADING, A.VERIFYING, A.ACTIVE) if ok else (A.DOWNLOADING, A.FAILED)
    for status in steps:
        out += rollout.on_ack(ack(rollout, device, status, reason="" if ok else "self-test failed"), now)
    return out


def device_of(command: Command) -> str:
    return command.id.split("-")[1]


def drive(rollout: Rollout, failing: set[str]) -> tuple[list[list[str]], int | None]:
    """Run to the end, devices finishing in the order they were sent.

    Returns the devices of every batch of commands and after how many finished
    devices the rollout aborted (None if it did not).
    """
    batches = [[device_of(c) for c in rollout.start(now=0.0)]]
    pending = deque(batches[0])
    aborted_after, finished, now = None, 0, 0.0
    while pending:
        now += 1.0
        device = pending.popleft()
        sent = finish(rollout, device, device not in failing, now)
        finished += 1
        if aborted_after is None and rollout.status is RolloutStatus.ABORTED:
            aborted_after = finished
        if sent:
            batches.append([device_of(c) for c in sent])
            pending.extend(batches[-1])
    return batches, aborted_after


# -- waves -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "total", "sizes"),
    [
        (FixedBatches(5), 20, (5, 5, 5, 5)),
        (FixedBatches(7), 20, (7, 7, 6)),
        (FixedBatches(50), 3, (3,)),
        (FixedBatches(1), 3, (1, 1, 1)),
        (Exponential(1, 2), 20, (1, 2, 4, 8, 5)),
        (Exponential(2, 1.5), 20, (2, 3, 4, 6, 5)),
        (Exponential(3, 1), 7, (3, 3, 1)),
        (Exponential(1, 1.1), 3, (1, 1, 1)),
        (Exponential(5, 3), 4, (4,)),
    ],
)
def test_wave_sizes(strategy: FixedBatches | Exponential, total: int, sizes: tuple[int, ...]) -> None:
    assert strategy.wave_sizes(total) == sizes
    rollout = Rollout(make_spec(targets=devices(total), strategy=strategy))
    batches, aborted_after = drive(rollout, failing=set())
    assert [len(b) for b in batches] == list(sizes)
    assert [d for b in batches for d in b] == list(devices(total))  # in order, each exactly once
    assert aborted_after is None
    assert rollout.status is RolloutStatus.COMPLETED
    assert rollout.summary()["progress_percent"] == 100.0


def test_commands_are_deterministic_and_valid_on_the_wire() -> None:
    rollout = Rollout(make_spec(targets=devices(3), strategy=FixedBatches(2)))
    commands = rollout.start(now=12.5)
    assert [c.id for c in commands] == ["r1-d00-7", "r1-d01-7"]
    for command in commands:
        assert (command.type, command.revision, command.bundle, command.rollout_id, command.issued_at) == (
            "deploy",
            7,
            BUNDLE,
            "r1",
            12.5,
        )
        assert Command.from_dict(json.loads(json.dumps(command.to_dict()))) == command
    assert rollout.devices["d00"].deploy.status is D.SENT
    assert rollout.devices["d02"].deploy.status is D.QUEUED
    with pytest.raises(InvalidInputError, match="PENDING"):
        rollout.start(now=13.0)


def test_a_rollback_kind_rollout_sends_rollback_commands() -> None:
    rollout = Rollout(make_spec(targets=devices(2), kind="rollback", bundle=PREVIOUS))
    assert {c.type for c in rollout.start(now=0.0)} == {"rollback"}


# -- abort criteria --------------------------------------------------------------------

FAILING = {"d02", "d05", "d08", "d11", "d14", "d17"}  # 6 of 20: 30%
"""Devices finish in the order they are sent, so the failure rate after each finish is known."""


@pytest.mark.parametrize(
    ("strategy", "criteria", "aborted_after", "sent"),
    [
        # wave 1 = d00..d04, d02 fails: 1/5 = 20% >= 20% exactly when the 5th device finishes
        (FixedBatches(5), AbortCriteria(20, min_devices=5), 5, 5),
        # 1/3 = 33% at the 3rd finish, but min_devices holds it back until 1/4 = 25% at the 4th
        (FixedBatches(5), AbortCriteria(20, min_devices=4), 4, 5),
        # no minimum: d02 is the 3rd to finish, 33% >= 20%; the rest of wave 1 still reports
        (FixedBatches(5), AbortCriteria(20, min_devices=1), 3, 5),
        # 20% < 25% after wave 1; d05 is the 6th to finish: 2/6 = 33% >= 25%
        (FixedBatches(5), AbortCriteria(25, min_devices=5), 6, 10),
        # waves 1, 2, 4, 8, 5: d02 fails 3rd (below min 5); d04 finishes 5th: 1/5 = 20%, mid wave 3
        (Exponential(1, 2), AbortCriteria(20, min_devices=5), 5, 7),
        # the rate never reaches 35% (highest 2/6 = 33%): completes with 6 failures
        (FixedBatches(5), AbortCriteria(35, min_devices=5), None, 20),
        (Exponential(1, 2), AbortCriteria(35, min_devices=5), None, 20),
        # no criteria at all
        (FixedBatches(5), None, None, 20),
    ],
)
def test_abort_criteria(
    strategy: FixedBatches | Exponential, criteria: AbortCriteria | None, aborted_after: int | None, sent: int
) -> None:
    rollout = Rollout(make_spec(strategy=strategy, abort=criteria))
    batches, got_aborted_after = drive(rollout, FAILING)
    commanded = [d for b in batches for d in b]
    assert got_aborted_after == aborted_after
    assert commanded == list(devices(20))[:sent]  # later waves never sent
    summary = rollout.summary()
    if aborted_after is None:
        assert rollout.status is RolloutStatus.COMPLETED
        assert (summary["failed"], summary["succeeded"], summary["failure_percent"]) == (6, 14, 30.0)
        assert summary["abort_reason"] == ""
    else:
        assert rollout.status is RolloutStatus.ABORTED
        assert "finished devices failed" in summary["abort_reason"]
        assert summary["counts"]["QUEUED"] == 20 - sent
        assert rollout.tick(now=1e9) == []  # nothing more, ever
        with pytest.raises(InvalidInputError):
            rollout.resume(now=1e9)


def test_operator_abort_stops_new_waves_but_keeps_reports() -> None:
    rollout = Rollout(make_spec(targets=devices(4), strategy=FixedBatches(2)))
    rollout.start(now=0.0)
    assert rollout.abort("bad bundle", now=1.0) == []
    assert rollout.abort("again", now=2.0) == []  # idempotent
    assert (rollout.status, rollout.abort_reason, rollout.finished_at) == (RolloutStatus.ABORTED, "bad bundle", 1.0)
    assert finish(rollout, "d00", True, 3.0) + finish(rollout, "d01", True, 4.0) == []
    assert rollout.devices["d01"].deploy.status is D.ACTIVE
    assert rollout.devices["d02"].deploy.status is D.QUEUED


# -- timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("acks", "tick_at", "status", "reason"),
    [
        ([], 59.9, D.SENT, ""),
        ([], 60.0, D.FAILED, "timeout"),
        ([(A.DOWNLOADING, 50.0)], 60.0, D.FAILED, "timeout"),  # measured from the command, not the last ack
        ([(A.DOWNLOADING, 10.0), (A.VERIFYING, 20.0)], 100.0, D.FAILED, "timeout"),
        ([(A.ACTIVE, 59.0)], 1000.0, D.ACTIVE, ""),
        ([(A.FAILED, 5.0)], 1000.0, D.FAILED, "self-test failed"),
    ],
)
def test_device_timeout(acks: list[tuple[AckStatus, float]], tick_at: float, status: DeviceStatus, reason: str) -> None:
    rollout = Rollout(make_spec(targets=devices(1)))
    rollout.start(now=0.0)
    for ack_status, at in acks:
        rollout.on_ack(ack(rollout, "d00", ack_status, reason="self-test failed" if ack_status is A.FAILED else ""), at)
    rollout.tick(now=tick_at)
    delivery = rollout.devices["d00"].deploy
    assert (delivery.status, delivery.reason) == (status, reason)


def test_a_timeout_sends_the_next_wave_and_a_late_final_ack_replaces_it() -> None:
    rollout = Rollout(make_spec(targets=devices(4), strategy=FixedBatches(2), abort=AbortCriteria(50, 2)))
    rollout.start(now=0.0)
    assert finish(rollout, "d00", True, 10.0) == []
    assert rollout.tick(now=59.0) == []
    sent = rollout.tick(now=60.0)  # d01 times out: 1 of 2 failed = 50%
    assert sent == [] and rollout.status is RolloutStatus.ABORTED

    rollout = Rollout(make_spec(targets=devices(4), strategy=FixedBatches(2)))
    rollout.start(now=0.0)
    finish(rollout, "d00", True, 10.0)
    assert [c.id for c in rollout.tick(now=60.0)] == ["r1-d02-7", "r1-d03-7"]
    assert rollout.devices["d01"].deploy.timed_out
    assert rollout.on_ack(ack(rollout, "d01", A.DOWNLOADING), 61.0) == []  # progress does not revive it
    assert rollout.devices["d01"].deploy.status is D.FAILED
    rollout.on_ack(ack(rollout, "d01", A.ACTIVE), 62.0)  # the device's word wins
    assert (rollout.devices["d01"].deploy.status, rollout.devices["d01"].deploy.timed_out) == (D.ACTIVE, False)
    assert rollout.summary()["failed"] == 0


# -- pause and resume ------------------------------------------------------------------


def test_pause_holds_the_next_wave_until_resume() -> None:
    rollout = Rollout(make_spec(targets=devices(4), strategy=FixedBatches(2)))
    rollout.start(now=0.0)
    assert rollout.pause(now=1.0) == [] and rollout.pause() == []  # idempotent
    assert finish(rollout, "d00", True, 2.0) + finish(rollout, "d01", True, 3.0) == []
    assert rollout.tick(now=4.0) == []
    assert rollout.status is RolloutStatus.PAUSED and rollout.summary()["wave"] == 1
    assert [c.id for c in rollout.resume(now=5.0)] == ["r1-d02-7", "r1-d03-7"]
    assert rollout.resume(now=6.0) == []  # already running
    finish(rollout, "d02", True, 7.0)
    finish(rollout, "d03", True, 8.0)
    assert rollout.status is RolloutStatus.COMPLETED
    with pytest.raises(InvalidInputError, match="COMPLETED"):
        rollout.pause()


def test_abort_criteria_and_timeouts_apply_while_paused() -> None:
    rollout = Rollout(make_spec(targets=devices(4), strategy=FixedBatches(2), abort=AbortCriteria(50, 2)))
    rollout.start(now=0.0)
    rollout.pause(now=1.0)
    finish(rollout, "d00", True, 2.0)
    assert rollout.tick(now=60.0) == []  # d01 times out: 50%
    assert rollout.status is RolloutStatus.ABORTED
    with pytest.raises(InvalidInputError, match="ABORTED"):
        rollout.resume(now=61.0)


# -- acks: duplicates, order, strangers ------------------------------------------------


@pytest.mark.parametrize(
    ("current", "ack_status", "timed_out", "expected"),
    [
        (D.SENT, A.DOWNLOADING, False, D.DOWNLOADING),
        (D.SENT, A.RECEIVED, False, None),
        (D.SENT, A.ACTIVE, False, D.ACTIVE),  # steps may be lost
        (D.SENT, A.IGNORED, False, D.FAILED),  # the device has a newer revision
        (D.DOWNLOADING, A.DOWNLOADING, False, None),  # duplicate
        (D.VERIFYING, A.DOWNLOADING, False, None),  # out of order
        (D.VERIFYING, A.ROLLED_BACK, False, D.ROLLED_BACK),
        (D.ACTIVE, A.VERIFYING, False, None),
        (D.ACTIVE, A.ACTIVE, False, None),  # "watch window passed"
        (D.ACTIVE, A.ROLLED_BACK, False, D.ROLLED_BACK),
        (D.ACTIVE, A.FAILED, False, None),
        (D.ROLLED_BACK, A.ACTIVE, False, None),
        (D.ROLLED_BACK, A.ROLLED_BACK, False, None),
        (D.FAILED, A.ACTIVE, False, None),
        (D.FAILED, A.FAILED, False, None),
        (D.FAILED, A.ACTIVE, True, D.ACTIVE),  # a timeout is only the manager's guess
        (D.FAILED, A.FAILED, True, D.FAILED),
        (D.FAILED, A.ROLLED_BACK, True, D.ROLLED_BACK),
        (D.FAILED, A.DOWNLOADING, True, None),
        (D.QUEUED, A.ACTIVE, False, None),
    ],
)
def test_transition(
    current: DeviceStatus, ack_status: AckStatus, timed_out: bool, expected: DeviceStatus | None
) -> None:
    assert transition(current, ack_status, timed_out=timed_out) == expected


def test_duplicate_and_out_of_order_acks_change_nothing() -> None:
    rollout = Rollout(make_spec(targets=devices(4), strategy=FixedBatches(2)))
    rollout.start(now=0.0)
    rollout.on_ack(ack(rollout, "d00", A.ACTIVE), 1.0)
    before = rollout.to_dict()
    for status in (A.ACTIVE, A.VERIFYING, A.DOWNLOADING, A.RECEIVED, A.FAILED):
        assert rollout.on_ack(ack(rollout, "d00", status), 2.0) == []
    assert rollout.to_dict() == before
    # the wave's last final ack sends wave 2; its duplicate sends nothing again
    assert len(rollout.on_ack(ack(rollout, "d01", A.ACTIVE), 3.0)) == 2
    assert rollout.on_ack(ack(rollout, "d01", A.ACTIVE), 4.0) == []
    assert rollout.tick(now=5.0) == []


@pytest.mark.parametrize(
    "stranger",
    [
        {"rollout_id": "r2"},
        {"rollout_id": ""},
        {"device": "d99", "command_id": "r1-d99-7"},
        {"command_id": "r1-d00-6", "revision": 6},  # an older command to the same device
        {"command_id": "r1-d01-7"},  # another device's command id
    ],
)
def test_acks_for_other_rollouts_devices_or_commands_are_ignored(stranger: dict[str, object]) -> None:
    rollout = Rollout(make_spec(targets=devices(2), strategy=FixedBatches(2)))
    assert rollout.on_ack(ack(rollout, "d00", A.ACTIVE), 0.0) == []  # not started: ignored
    rollout.start(now=0.0)
    before = rollout.to_dict()
    fields = {**ack(rollout, "d00", A.FAILED).to_dict(), **stranger}
    assert rollout.on_ack(CommandAck.from_dict(fields), 1.0) == []
    assert rollout.to_dict() == before


def test_rolled_back_after_active_turns_success_into_failure() -> None:
    rollout = Rollout(make_spec(targets=devices(10), strategy=FixedBatches(5), abort=AbortCriteria(20, 5)))
    rollout.start(now=0.0)
    sent = [c for d in devices(5) for c in finish(rollout, d, True, 1.0)]
    assert len(sent) == 5 and rollout.summary()["failed"] == 0
    rollout.on_ack(ack(rollout, "d03", A.ROLLED_BACK, reason="p99 latency"), 2.0)
    summary = rollout.summary()
    assert (summary["succeeded"], summary["failed"], summary["counts"]["ROLLED_BACK"]) == (4, 1, 1)
    assert rollout.status is RolloutStatus.ABORTED  # 1 of 5 = 20%
    assert rollout.devices["d03"].deploy.reason == "p99 latency"

    done = Rollout(make_spec(targets=devices(2), strategy=FixedBatches(2)))
    done.start(now=0.0)
    finish(done, "d00", True, 1.0)
    finish(done, "d01", True, 1.0)
    assert done.status is RolloutStatus.COMPLETED
    done.on_ack(ack(done, "d01", A.ROLLED_BACK), 2.0)  # late: counted, the rollout stays completed
    assert (done.status, done.summary()["failed"]) == (RolloutStatus.COMPLETED, 1)


def test_success_statuses_can_move_on_before_activation() -> None:
    rollout = Rollout(
        make_spec(targets=devices(2), strategy=FixedBatches(1), success_statuses=frozenset({D.VERIFYING}))
    )
    rollout.start(now=0.0)
    assert [c.id for c in rollout.on_ack(ack(rollout, "d00", A.VERIFYING), 1.0)] == ["r1-d01-7"]
    assert rollout.tick(now=1000.0) == []  # a succeeded device does not time out
    assert rollout.devices["d00"].deploy.status is D.VERIFYING
    rollout.on_ack(ack(rollout, "d00", A.FAILED), 1001.0)
    assert rollout.summary()["failed"] == 2  # d00 failed late; d01 timed out


# -- rollback of the whole rollout -----------------------------------------------------


def test_rollback_targets_exactly_the_active_devices() -> None:
    rollout = Rollout(make_spec(targets=devices(10), strategy=FixedBatches(5)))
    rollout.start(now=0.0)
    finish(rollout, "d00", True, 1.0)
    finish(rollout, "d01", False, 1.0)
    finish(rollout, "d02", True, 1.0)
    rollout.on_ack(ack(rollout, "d02", A.ROLLED_BACK), 1.5)
    finish(rollout, "d03", True, 2.0)
    assert len(finish(rollout, "d04", True, 2.0)) == 5  # wave 2
    finish(rollout, "d05", True, 3.0)
    rollout.on_ack(ack(rollout, "d06", A.DOWNLOADING), 3.0)

    with pytest.raises(InvalidInputError, match="revision"):
        rollout.rollback(PREVIOUS, revision=7, now=4.0)
    commands = rollout.rollback(PREVIOUS, revision=8, now=4.0)
    assert sorted(device_of(c) for c in commands) == ["d00", "d03", "d04", "d05"]
    for command in commands:
        assert (command.type, command.bundle, command.revision, command.id) == (
            "rollback",
            PREVIOUS,
            8,
            f"r1-{device_of(command)}-8",
        )
    assert rollout.status is RolloutStatus.ROLLED_BACK
    with pytest.raises(InvalidInputError, match="ROLLED_BACK"):
        rollout.rollback(PREVIOUS, revision=9, now=5.0)

    # d06 was in flight: it goes ACTIVE late and is sent back too, once
    assert [c.id for c in rollout.on_ack(ack(rollout, "d06", A.ACTIVE), 5.0)] == ["r1-d06-8"]
    assert rollout.on_ack(ack(rollout, "d06", A.ACTIVE), 5.5) == []
    assert rollout.tick(now=6.0) == []  # no new deploy wave after a rollback

    rollout.on_ack(ack(rollout, "d00", A.ACTIVE, revision=8), 7.0)
    rollout.on_ack(ack(rollout, "d03", A.FAILED, revision=8), 7.0)
    summary = rollout.summary()["rollback"]
    assert (summary["total"], summary["counts"]["ACTIVE"], summary["counts"]["FAILED"], summary["counts"]["SENT"]) == (
        5,
        1,
        1,
        3,
    )
    rollout.tick(now=100.0)  # rollback commands time out like any other
    assert rollout.summary()["rollback"]["counts"]["FAILED"] == 4


def test_rollback_before_start_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="PENDING"):
        Rollout(make_spec()).rollback(PREVIOUS, revision=8, now=0.0)


# -- spec validation and serialisation -------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": "r 1"},
        {"targets": ()},
        {"targets": ("d00", "d00")},
        {"targets": ("x" * 60,)},  # the command id would exceed 64 characters
        {"revision": 0},
        {"device_timeout_s": 0},
        {"kind": "upgrade"},
        {"success_statuses": frozenset({D.FAILED})},
        {"success_statuses": frozenset()},
        {"bundle": BundleRef(name="b", version=1, url="ftp://x", sha256="a" * 64, size=1)},
        {"strategy": "fixed"},
    ],
)
def test_invalid_specs_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        make_spec(**overrides)


@pytest.mark.parametrize(
    "build",
    [
        lambda: FixedBatches(0),
        lambda: Exponential(0, 2),
        lambda: Exponential(1, 0.5),
        lambda: AbortCriteria(0, 5),
        lambda: AbortCriteria(101, 5),
        lambda: AbortCriteria(20, 0),
    ],
)
def test_invalid_parts_are_rejected(build: object) -> None:
    with pytest.raises(InvalidInputError):
        build()  # type: ignore[operator]


def test_to_dict_round_trips_through_json_midway() -> None:
    spec = make_spec(
        strategy=Exponential(2, 2), abort=AbortCriteria(40, 4), success_statuses=frozenset({D.VERIFYING, D.ACTIVE})
    )
    rollout = Rollout(spec)
    rollout.start(now=0.0)
    finish(rollout, "d00", True, 1.0)
    finish(rollout, "d01", False, 2.0)
    rollout.tick(now=61.0)
    copy = Rollout.from_dict(json.loads(json.dumps(rollout.to_dict())))
    assert copy == rollout and copy.spec == spec
    assert copy.summary() == rollout.summary()
    for device in ("d02", "d03", "d04"):
        assert finish(copy, device, True, 70.0) == finish(rollout, device, True, 70.0)
    assert copy == rollout


@pytest.mark.parametrize("seed", range(6))
def test_random_ack_storms_keep_the_tallies_consistent(seed: int) -> None:
    """Counts are kept incrementally; a reload recounts from scratch, and the two must always agree."""
    rng = random.Random(seed)
    rollout = Rollout(
        make_spec(
            targets=devices(40),
            strategy=Exponential(2, 2),
            abort=AbortCriteria(60, 10) if seed % 2 else None,
            success_statuses=frozenset({rng.choice([D.DOWNLOADING, D.VERIFYING, D.ACTIVE])}),
        )
    )
    statuses, weights = zip(
        *[
            (A.DOWNLOADING, 3),
            (A.VERIFYING, 3),
            (A.ACTIVE, 5),
            (A.FAILED, 1),
            (A.ROLLED_BACK, 1),
            (A.IGNORED, 0.3),
            (A.RECEIVED, 0.3),
            (A.SENT, 0.2),
        ]
    )
    sent = {device_of(c) for c in rollout.start(now=0.0)}
    now = 0.0
    for _ in range(400):
        now += rng.random() * 3
        twin = Rollout.from_dict(rollout.to_dict())  # recounted from scratch
        roll = rng.random()
        if roll < 0.1:
            new, twin_new = rollout.tick(now), twin.tick(now)
        elif roll < 0.13 and rollout.status.live:
            operation = "pause" if rollout.status is RolloutStatus.RUNNING else "resume"
            new, twin_new = getattr(rollout, operation)(now=now), getattr(twin, operation)(now=now)
        else:
            message = ack(rollout, rng.choice(sorted(sent)), rng.choices(statuses, weights)[0])
            new, twin_new = rollout.on_ack(message, now), twin.on_ack(message, now)
        assert new == twin_new and twin == rollout and twin.summary() == rollout.summary()
        assert not sent & {device_of(c) for c in new}  # never a second command
        sent |= {device_of(c) for c in new}
        assert rollout.summary()["counts"]["QUEUED"] == 40 - len(sent)
    # the storm got somewhere: past the first waves, or stopped by the criteria
    assert rollout.summary()["wave"] >= 3 or rollout.status is RolloutStatus.ABORTED
