"""What the fleet manager knows right now: every device and every rollout, in memory, under one lock.

The use cases (:mod:`edgecloud.fleet.service`) change it and the views (:mod:`edgecloud.fleet.views`)
read it; both go through this one object, so a view never sees half a change and the two cannot
disagree on which lock guards what. The store (:mod:`edgecloud.fleet.store`) holds the durable copy:
the state is loaded from it once, at start, and the use case that changes it saves the change.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from edgecloud.fleet.rollout import Rollout
from edgecloud.fleet.store import DeviceRecord, FleetStorage
from edgecloud.shared.base.errors import NotFoundError

__all__ = ["FleetState"]


@dataclass
class FleetState:
    """Thread-safe through ``lock``: MQTT callbacks, the tick thread and API calls take it around every
    read or change of ``devices`` and ``rollouts``. It is re-entrant, so the methods below take it too."""

    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @classmethod
    def load(cls, store: FleetStorage) -> FleetState:
        """The devices and rollouts ``store`` holds."""
        return cls(devices={d.id: d for d in store.list_devices()}, rollouts={r.id: r for r in store.list_rollouts()})

    def rollout(self, rollout_id: str) -> Rollout:
        """The live rollout object (NotFoundError for an unknown id); mutate it only under ``lock``."""
        with self.lock:
            rollout = self.rollouts.get(rollout_id)
        if rollout is None:
            raise NotFoundError(f"no rollout {rollout_id!r}")
        return rollout

    def live_rollouts_by_device(self) -> dict[str, Rollout]:
        """Each device of a live (RUNNING or PAUSED) rollout -> that rollout: a device is in one at most."""
        with self.lock:
            return {d: r for r in self.rollouts.values() if r.status.live for d in r.devices}

    # Read without the lock (a copy of the values is enough): Prometheus calls these on its own thread.

    def online_count(self) -> int:
        return sum(d.online for d in list(self.devices.values()))

    def live_count(self) -> int:
        return sum(r.status.live for r in list(self.rollouts.values()))
