"""The fleet as an operator sees it: the JSON documents the REST API (:mod:`edgecloud.fleet.api`) and the
dashboard serve, read from the fleet's state under its lock.

Kept apart from the use cases (:mod:`edgecloud.fleet.service`) so that what is shown can change shape
without touching what the fleet does, and so that reading the fleet can never change it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from edgecloud.fleet.quality import fleet_quality
from edgecloud.fleet.rollout import Rollout
from edgecloud.fleet.state import FleetState
from edgecloud.fleet.store import DeviceRecord
from edgecloud.shared.fleetlink.quality import FieldQuality

__all__ = ["FleetViews", "device_view"]


def device_view(record: DeviceRecord, rollout: Rollout | None) -> dict[str, Any]:
    """One device as ``GET /v1/devices`` lists it; ``rollout`` is the live one it is in, if any."""
    telemetry = record.telemetry or {}
    return {
        "id": record.id,
        "online": record.online,
        "labels": record.labels,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "session": record.session,
        "last_seen": record.last_seen,
        "escalation_rate": telemetry.get("escalation_rate"),
        "state_problem": telemetry.get("state_problem", ""),
        "telemetry_at": telemetry.get("at"),
        "telemetry": record.telemetry,
        "rollout": None
        if rollout is None
        else {"id": rollout.id, "status": rollout.devices[record.id].deploy.status.value},
    }


class FleetViews:
    """Read-only views of one :class:`FleetState`; each is a consistent snapshot (taken under its lock)."""

    def __init__(self, state: FleetState) -> None:
        self.state = state

    def rollouts(self) -> list[dict[str, Any]]:
        """Summaries, newest revision first."""
        with self.state.lock:
            ordered = sorted(self.state.rollouts.values(), key=lambda r: r.spec.revision, reverse=True)
            return [r.summary() for r in ordered]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        """Summary plus the spec and every device's deliveries (NotFoundError for an unknown id)."""
        with self.state.lock:
            rollout = self.state.rollout(rollout_id)
            data = rollout.summary()
            data["spec"] = rollout.spec.to_dict()
            data["devices"] = [s.to_dict() for s in rollout.devices.values()]
            return data

    def devices(self) -> list[dict[str, Any]]:
        """Every device known, by id, with its latest telemetry and its place in a live rollout."""
        with self.state.lock:
            live = self.state.live_rollouts_by_device()
            return [device_view(d, live.get(d.id)) for d in sorted(self.state.devices.values(), key=lambda d: d.id)]

    def quality(self) -> list[dict[str, Any]]:
        """Field quality per bundle version over the fleet (each device's latest counts, added), with
        how many devices reported each version; newest version first."""
        with self.state.lock:
            telemetry = [d.telemetry for d in self.state.devices.values()]
        reported: Counter[tuple[str, int]] = Counter()
        totals: dict[tuple[str, int], FieldQuality] = {}
        for document in telemetry:  # one device's versions: an entry that is not valid is no report
            for key, entry in fleet_quality([document]).items():
                reported[key] += 1
                totals.setdefault(key, FieldQuality(*key)).add(entry)
        return [
            {**totals[key].summary(), "devices": reported.get(key, 0)}
            for key in sorted(totals, key=lambda k: (k[0], -k[1]))
        ]
