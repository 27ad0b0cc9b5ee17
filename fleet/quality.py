"""Field quality across the fleet, and the rollout gate that judges a wave by it.

Devices report counts per bundle version in their telemetry
(:class:`~edgecloud.shared.fleetlink.quality.FieldQuality`); :func:`fleet_quality` adds the latest
report of each device, over the whole fleet or a wave's devices. :class:`QualityGate` is what a
rollout spec accepts against the version its devices ran before (pure logic, no clock, no I/O)::

    wave's checks on the new version < min_shadow_checks          -> WAITING (the wave is not done)
    baseline agreement - new agreement > max_agreement_drop       -> FAILED  (abort, roll back)
    new escalation rate - baseline rate > max_escalation_rise     -> FAILED
    otherwise                                                     -> PASSED

Limits are in percentage points and compare point estimates once both sides have evidence: the
new version ``min_shadow_checks`` checks in the wave, the baseline as many checks (for agreement)
and queries (for the escalation rate) over the fleet. A baseline with less evidence than that
cannot be compared against, so the gate waits (and says so) rather than passing on no evidence.
A device's counts start again when its daemon restarts; the fleet keeps each device's latest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.fleetlink.quality import FieldQuality

__all__ = ["GateDecision", "QualityGate", "fleet_quality", "quality_of"]


def fleet_quality(telemetry: Iterable[Mapping[str, Any] | None]) -> dict[tuple[str, int], FieldQuality]:
    """The counts of every version, added over the devices' latest telemetry documents (already
    validated when they arrived; an entry that is not valid is skipped)."""
    totals: dict[tuple[str, int], FieldQuality] = {}
    for document in telemetry:
        for raw in (document or {}).get("quality", ()):
            try:
                entry = FieldQuality.from_dict(raw)
            except InvalidInputError:
                continue
            key = (entry.model_name, entry.model_version)
            totals.setdefault(key, FieldQuality(*key)).add(entry)
    return totals


def quality_of(totals: Mapping[tuple[str, int], FieldQuality], name: str, version: int) -> FieldQuality:
    return totals.get((name, version)) or FieldQuality(name, version)


@dataclass(frozen=True)
class GateDecision:
    verdict: str
    """``waiting``, ``passed`` or ``failed``."""
    reason: str
    figures: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, **self.figures}


@dataclass(frozen=True, kw_only=True)
class QualityGate:
    """What a rollout accepts of a new version's field quality against the baseline's."""

    min_shadow_checks: int = 50
    """Shadow checks a wave's devices must have made of the new version before the wave counts."""
    max_agreement_drop: float | None = 2.0
    """Most the agreement with the cloud may fall, in percentage points (None: not judged)."""
    max_escalation_rise: float | None = 5.0
    """Most the escalation rate may rise, in percentage points (None: not judged)."""

    def __post_init__(self) -> None:
        if isinstance(self.min_shadow_checks, bool) or not isinstance(self.min_shadow_checks, int):
            raise InvalidInputError(f"quality.min_shadow_checks must be an integer, got {self.min_shadow_checks!r}")
        if self.min_shadow_checks < 1:
            raise InvalidInputError("quality.min_shadow_checks must be >= 1: a gate never passes on no evidence")
        for name in ("max_agreement_drop", "max_escalation_rise"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 100):  # fmt: skip
                raise InvalidInputError(f"quality.{name} must be in [0, 100] points, got {value!r}")
        if self.max_agreement_drop is None and self.max_escalation_rise is None:
            raise InvalidInputError("quality: set max_agreement_drop, max_escalation_rise or both")

    def judge(self, new: FieldQuality, baseline: FieldQuality) -> GateDecision:
        """The decision on a wave: ``new`` is the new version's counts on the wave's devices,
        ``baseline`` the previous version's over the fleet."""
        need = self.min_shadow_checks
        figures = {"new": new.summary(), "baseline": baseline.summary(), "min_shadow_checks": need}
        if new.checks < need:
            return GateDecision("waiting", f"{new.checks} of {need} shadow checks of the new version", figures)
        # each: the limit, the baseline's evidence, worse by (point estimates), clearly worse by (the
        # new version's 95% interval bound nearest the baseline): one wave's checks are few
        judged = [
            ("agreement", self.max_agreement_drop, baseline.checks,
             *new.agreement.points_below(baseline.agreement.value)),
            ("escalation rate", self.max_escalation_rise, baseline.read,
             *new.escalation.points_above(baseline.escalation.value)),
        ]  # fmt: skip
        for what, limit, evidence, worse_by, clearly in judged:
            if limit is None:
                continue
            if evidence < need:
                return GateDecision("waiting", f"the baseline has {evidence} of {need} for its {what}", figures)
            worse_by = round(worse_by, 9)  # 100 * (0.99 - 0.97) is 2.0000000000000018: at the limit is within it
            figures[f"{what.replace(' ', '_')}_worse_by_points"] = round(worse_by, 3)
            if math.isnan(worse_by) or worse_by <= limit:
                continue
            if clearly > limit:
                return GateDecision("failed", f"{what} worse by {worse_by:.1f} points (limit {limit:g})", figures)
            return GateDecision(
                "waiting",
                f"{what} worse by {worse_by:.1f} points, not yet clearly beyond the limit of {limit:g} "
                f"(by its 95% interval at least {clearly:.1f}): more checks needed",
                figures,
            )
        return GateDecision("passed", "within every limit", figures)

    def to_dict(self) -> dict[str, Any]:
        return {"min_shadow_checks": self.min_shadow_checks, "max_agreement_drop": self.max_agreement_drop,
                "max_escalation_rise": self.max_escalation_rise}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any) -> QualityGate:
        if not isinstance(data, dict):
            raise InvalidInputError(f"quality must be an object, got {type(data).__name__}")
        unknown = set(data) - {"min_shadow_checks", "max_agreement_drop", "max_escalation_rise"}
        if unknown:
            raise InvalidInputError(f"quality: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**data)
