"""The field-quality gate as pure logic: fleet sums from telemetry documents, the gate's table
(waiting, passed, failed, never on no evidence), and a rollout that waits for it between waves."""

from __future__ import annotations

from typing import Any

import pytest

from edgecloud.fleet.quality import QualityGate, fleet_quality, quality_of
from edgecloud.fleet.rollout import DeviceStatus, FixedBatches, Rollout, RolloutSpec, RolloutStatus
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.fleetlink.messages import AckStatus, BundleRef, CommandAck
from edgecloud.shared.fleetlink.quality import FieldQuality

BUNDLE = BundleRef(name="edge-student", version=2, url="https://fleet.example/b/2.tar.gz", sha256="a" * 64, size=1000)
GATE = QualityGate(min_shadow_checks=100, max_agreement_drop=2.0, max_escalation_rise=5.0)


def q(version: int, *, checks: int = 0, agreed: int = 0, read: int = 0, escalated: int = 0) -> FieldQuality:
    return FieldQuality("edge-student", version, read=read, kept=read - escalated, escalated=escalated,
                        checks=checks, agreed=agreed)  # fmt: skip


def test_the_fleet_adds_each_devices_latest_counts_per_version() -> None:
    documents: list[dict[str, Any] | None] = [
        {"quality": [q(1, checks=10, agreed=9).to_dict(), q(2, checks=5, agreed=5).to_dict()]},
        {"quality": [q(2, checks=7, agreed=6).to_dict(), {"model_name": "edge-student", "model_version": 2, "agreed": 9}]},
        None,  # a device that never sent telemetry
        {},
    ]  # fmt: skip
    totals = fleet_quality(documents)
    assert (quality_of(totals, "edge-student", 2).checks, quality_of(totals, "edge-student", 2).agreed) == (12, 11)
    assert quality_of(totals, "edge-student", 1).checks == 10 and quality_of(totals, "other", 1).checks == 0


@pytest.mark.parametrize(
    ("new", "baseline", "verdict", "reason"),
    [
        (q(2, checks=99, agreed=99, read=500), q(1, checks=500, agreed=495, read=5000), "waiting", "99 of 100"),
        (q(2, checks=100, agreed=97, read=500), q(1, checks=500, agreed=495, read=5000), "passed", "within"),
        # 96%: 3 points worse, but its interval reaches 98.5%: not yet clear
        (q(2, checks=100, agreed=96, read=500), q(1, checks=500, agreed=495, read=5000), "waiting", "not yet clearly"),
        (q(2, checks=400, agreed=376, read=500), q(1, checks=500, agreed=495, read=5000), "failed", "agreement worse by 5.0"),
        (q(2, checks=100, agreed=90, read=500), q(1, checks=500, agreed=495, read=5000), "failed", "agreement worse by 9.0"),
        (q(2, checks=100, agreed=99, read=500, escalated=100), q(1, checks=500, agreed=495, read=5000, escalated=500),
         "failed", "escalation rate worse by 10.0"),
        (q(2, checks=100, agreed=99, read=500), q(1, checks=20, agreed=20, read=5000), "waiting", "baseline has 20 of 100"),
        (q(2, checks=100, agreed=40, read=500), q(1), "waiting", "baseline has 0 of 100"),  # never passes on nothing
    ],
)  # fmt: skip
def test_the_gate_waits_passes_or_fails_as_its_table_says(
    new: FieldQuality, baseline: FieldQuality, verdict: str, reason: str
) -> None:
    decision = GATE.judge(new, baseline)
    assert decision.verdict == verdict and reason in decision.reason
    assert decision.to_dict()["new"]["checks"] == new.checks


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"min_shadow_checks": 0}, "never passes on no evidence"),
        ({"max_agreement_drop": -1}, "max_agreement_drop must be in"),
        ({"max_agreement_drop": None, "max_escalation_rise": None}, "set max_agreement_drop"),
        ({"min_shadow_checks": True}, "must be an integer"),
        ({"max_drop": 1}, "unknown field"),
        ([], "must be an object"),
    ],
)
def test_a_bad_gate_is_refused(data: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        QualityGate.from_dict(data)


def active(rollout: Rollout, device: str, now: float) -> None:
    revision = rollout.spec.revision
    rollout.on_ack(CommandAck(command_id=rollout.spec.command_id(device, revision), device=device,
                              status=AckStatus.ACTIVE, revision=revision, version=2, rollout_id=rollout.id), now)  # fmt: skip


def test_a_rollout_with_a_gate_waits_between_waves_until_its_wave_passes() -> None:
    spec = RolloutSpec(id="r1", bundle=BUNDLE, targets=("d0", "d1", "d2", "d3"), revision=3,
                       strategy=FixedBatches(2), quality=GATE)  # fmt: skip
    rollout = Rollout(spec)
    rollout.start(0.0)
    assert not rollout.awaiting_quality  # its devices are still installing
    for device in ("d0", "d1"):
        active(rollout, device, 1.0)
    assert rollout.awaiting_quality and rollout.tick(2.0) == [] and rollout.wave == 0  # no second wave yet
    waiting = GATE.judge(q(2, checks=10, agreed=10), q(1, checks=500, agreed=495, read=500))
    assert rollout.on_quality(waiting, 3.0) == [] and rollout.quality_gates[0]["verdict"] == "waiting"
    passed = GATE.judge(q(2, checks=100, agreed=100, read=100), q(1, checks=500, agreed=495, read=500))
    commands = rollout.on_quality(passed, 4.0)
    assert [c.device for c in commands] == ["d2", "d3"] and rollout.wave == 1
    assert Rollout.from_dict(rollout.to_dict()).quality_gates == rollout.quality_gates  # survives a restart
    for device in ("d2", "d3"):
        active(rollout, device, 5.0)
    failed = GATE.judge(q(2, checks=100, agreed=80, read=100), q(1, checks=500, agreed=495, read=500))
    assert rollout.on_quality(failed, 6.0) == []
    assert rollout.status is RolloutStatus.ABORTED and "wave 2 failed its quality gate" in rollout.abort_reason
    assert rollout.on_quality(passed, 7.0) == [] and rollout.status is RolloutStatus.ABORTED  # too late to change it
    assert rollout.devices["d3"].deploy.status is DeviceStatus.ACTIVE  # the caller rolls it back


def test_a_rollout_without_a_gate_is_as_before() -> None:
    rollout = Rollout(RolloutSpec(id="r2", bundle=BUNDLE, targets=("d0", "d1"), revision=3, strategy=FixedBatches(1)))
    rollout.start(0.0)
    active(rollout, "d0", 1.0)
    assert not rollout.awaiting_quality and rollout.wave == 1 and rollout.summary()["quality_gates"] is None
