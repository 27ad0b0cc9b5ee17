"""Field quality of one edge bundle version: what its devices saw, as counts that add up.

A device counts, per bundle version it served, the ``auto`` queries its model read and what
triage made of them, and the shadow checks of kept answers that the cloud verified. It reports
the counts in its telemetry (``quality``, one entry per version); the fleet manager adds the
entries of every device that ran a version and draws rates from the sums, each with a 95% Wilson
score interval, so the number of checks behind a figure is never hidden::

    count      what it counts (``auto`` queries the edge's model read)
    read       all of them
    kept       triage kept the edge's answer (confident)
    escalated  triage sent the query on (unsure, too difficult, or an abstention), even when the
               cloud was down and the edge answered anyway: the model's decision, not the link's
    abstained  the edge had no answer (a subset of ``escalated``)
    checks     kept answers the cloud answered too (shadow checks that completed)
    agreed     of ``checks``, those whose answers match by the bundle's rule
    shed       shadow checks that did not complete (refused under load, the cloud unreachable)

    agreement = agreed / checks    escalation rate = escalated / read    abstention rate = abstained / read
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from edgecloud.shared.base.documents import Document, parse_document
from edgecloud.shared.base.errors import InvalidInputError

__all__ = ["COUNTS", "MAX_VERSIONS", "FieldQuality", "Rate", "wilson_interval"]

MAX_VERSIONS = 8
"""Versions a device reports at most (the newest it served)."""

COUNTS = ("read", "kept", "escalated", "abstained", "checks", "agreed", "shed")

_Count = Annotated[int, Field(ge=0, le=2**53)]


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for the default ``z``); (0, 1) with no trials.
    Unlike the normal approximation it stays inside [0, 1] and is honest at 0/n and n/n."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # at 0 of n and n of n the bound is exactly 0 or 1; the formula's rounding would put 1 outside it
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Rate:
    """A proportion with the evidence behind it: ``value`` is NaN when ``trials`` is 0."""

    successes: int
    trials: int

    @property
    def value(self) -> float:
        return self.successes / self.trials if self.trials else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.trials)

    def points_below(self, baseline: float) -> tuple[float, float]:
        """Percentage points this rate falls short of ``baseline``: by its value, and clearly (by the
        top of its 95% interval: what the evidence shows at least)."""
        return 100 * (baseline - self.value), 100 * (baseline - self.interval[1])

    def points_above(self, baseline: float) -> tuple[float, float]:
        """Percentage points this rate exceeds ``baseline``: by its value, and clearly (by the bottom
        of its 95% interval)."""
        return 100 * (self.value - baseline), 100 * (self.interval[0] - baseline)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        value = None if not self.trials else round(self.value, 6)
        return {"value": value, "low": round(low, 6), "high": round(high, 6), "n": self.trials}


class _QualityMessage(Document):
    model_config = ConfigDict(extra="ignore")  # a newer device may count more

    model_name: Annotated[str, Field(min_length=1, max_length=128)]
    model_version: _Count
    read: _Count = 0
    kept: _Count = 0
    escalated: _Count = 0
    abstained: _Count = 0
    checks: _Count = 0
    agreed: _Count = 0
    shed: _Count = 0


@dataclass
class FieldQuality:
    """The counts of one bundle version (on one device, or summed over a fleet)."""

    model_name: str
    model_version: int
    read: int = 0
    kept: int = 0
    escalated: int = 0
    abstained: int = 0
    checks: int = 0
    agreed: int = 0
    shed: int = 0

    @property
    def agreement(self) -> Rate:
        return Rate(self.agreed, self.checks)

    @property
    def escalation(self) -> Rate:
        return Rate(self.escalated, self.read)

    @property
    def abstention(self) -> Rate:
        return Rate(self.abstained, self.read)

    def add(self, other: FieldQuality) -> None:
        """Add ``other``'s counts (the same version on another device) to these."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> dict[str, Any]:
        """The counts and the three rates with their intervals (what the REST API and dashboard show)."""
        return {
            **self.to_dict(),
            "agreement": self.agreement.to_dict(),
            "escalation_rate": self.escalation.to_dict(),
            "abstention_rate": self.abstention.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> FieldQuality:
        """A validated entry; InvalidInputError naming the first bad field, or a count that exceeds
        the one it is part of (agreed > checks, kept + escalated > read, abstained > escalated)."""
        entry = cls(**vars(parse_document(_QualityMessage, data, InvalidInputError, where="quality")))
        if (
            entry.agreed > entry.checks
            or entry.kept + entry.escalated > entry.read
            or entry.abstained > entry.escalated
        ):
            raise InvalidInputError(
                f"quality of {entry.model_name}@{entry.model_version}: counts do not add up "
                "(agreed <= checks, kept + escalated <= read, abstained <= escalated)"
            )
        return entry
