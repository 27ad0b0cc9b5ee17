"""Field quality counts per bundle version, on one device.

The service tells :class:`FieldCounter` what triage made of every ``auto`` query the model read
(:meth:`FieldCounter.observe`) and the shadow checker what came of each check; telemetry reports
:meth:`FieldCounter.snapshot` (the contract and the meaning of each count:
:mod:`edgecloud.shared.fleetlink.quality`), ``/metrics`` the same counts labelled by version.
Counts live in memory since the daemon started: the fleet manager keeps what each device last said.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.pipeline.verdict import LocalVerdict
from edgecloud.edge.runtime import EdgeBundle
from edgecloud.edge.triage import Reason, Requested
from edgecloud.shared.fleetlink.quality import MAX_VERSIONS, FieldQuality

__all__ = ["FieldCounter", "field_regression"]


class FieldCounter:
    """Counts per (bundle name, version), the newest :data:`MAX_VERSIONS` kept. Thread-safe."""

    def __init__(self, metrics: EdgeMetrics | None = None) -> None:
        self.metrics = metrics or EdgeMetrics()
        self._entries: collections.OrderedDict[tuple[str, int], FieldQuality] = collections.OrderedDict()
        self._lock = threading.Lock()

    def observe(self, verdict: LocalVerdict, requested: Requested) -> None:
        """Count an ``auto`` query the model read (others say nothing of the model's judgement)."""
        if requested is not Requested.AUTO or not verdict.read:
            return
        kept = verdict.decision.reason == Reason.CONFIDENT
        outcome = "kept" if kept else "abstained" if verdict.answer.abstained else "escalated"
        with self._lock:
            entry = self._entry(verdict.bundle)
            entry.read += 1
            if kept:
                entry.kept += 1
            else:
                entry.escalated += 1
                entry.abstained += verdict.answer.abstained
        self.metrics.field_queries.labels(str(verdict.bundle.version), outcome).inc()

    def checked(self, bundle: EdgeBundle, *, agreed: bool) -> None:
        """A shadow check of ``bundle``'s kept answer completed; the answers matched or not."""
        with self._lock:
            entry = self._entry(bundle)
            entry.checks += 1
            entry.agreed += agreed
        self.metrics.shadow_checks.labels(str(bundle.version), "agreed" if agreed else "disagreed").inc()

    def shed(self, bundle: EdgeBundle) -> None:
        """A shadow check of ``bundle``'s answer did not complete (refused under load, cloud unreachable)."""
        with self._lock:
            self._entry(bundle).shed += 1
        self.metrics.shadow_checks.labels(str(bundle.version), "shed").inc()

    def snapshot(self) -> list[FieldQuality]:
        """Copies of the counts, oldest version first."""
        with self._lock:
            return [dataclasses.replace(entry) for entry in self._entries.values()]

    def of(self, name: str, version: int) -> FieldQuality:
        """A copy of one version's counts (zeros when it has none)."""
        with self._lock:
            entry = self._entries.get((name, version))
            return dataclasses.replace(entry) if entry is not None else FieldQuality(name, version)

    def _entry(self, bundle: EdgeBundle) -> FieldQuality:
        key = (bundle.name, bundle.version)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = FieldQuality(bundle.name, bundle.version)
            while len(self._entries) > MAX_VERSIONS:
                self._entries.popitem(last=False)
        return entry


def field_regression(new: FieldQuality, before: FieldQuality, *, min_checks: int, max_agreement_drop: float) -> str:
    """A reason to roll back from ``new`` to the version it replaced, or '' (the watch window's field signal).

    One device sees few checks in a watch window, so only clear evidence counts: both versions have
    at least ``min_checks`` checks and even the upper end of the new version's agreement interval is
    more than ``max_agreement_drop`` points below the old version's agreement. The fleet's quality
    gate (:mod:`edgecloud.fleet.quality`) judges the sum over a wave's devices with the same limit.
    """
    if min(new.checks, before.checks) < min_checks:
        return ""
    _worse, clearly = new.agreement.points_below(before.agreement.value)
    if clearly > max_agreement_drop:
        return (
            f"the cloud agreed with {new.agreed} of {new.checks} checked answers of v{new.model_version} "
            f"({new.agreement.value:.1%}, at most {new.agreement.interval[1]:.1%}); v{before.model_version} "
            f"had {before.agreement.value:.1%} over {before.checks} (limit: {max_agreement_drop:g} points lower)"
        )
    return ""
