"""Prometheus metrics of the fleet manager, on a registry of its own so tests
can run several managers in one process. Served at the REST API's ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["FleetMetrics"]


class FleetMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "edgecloud_fleet_messages", "Device messages handled, by topic leaf", ["leaf"], registry=r
        )
        self.malformed = Counter(
            "edgecloud_fleet_malformed_messages", "Device messages refused as malformed", registry=r
        )
        self.commands = Counter(
            "edgecloud_fleet_commands_published", "Commands published, by type (repeats too)", ["type"], registry=r
        )
        self.telemetry_lag = Histogram(
            "edgecloud_fleet_telemetry_lag_seconds",
            "From a device stamping its telemetry to the manager storing it (includes clock skew)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.devices_online = Gauge("edgecloud_fleet_devices_online", "Devices whose last state is online", registry=r)
        self.devices_known = Gauge(
            "edgecloud_fleet_devices_known", "Devices that ever announced themselves", registry=r
        )
        self.rollouts_live = Gauge("edgecloud_fleet_rollouts_live", "Rollouts RUNNING or PAUSED", registry=r)

    def bind(self, online: Callable[[], int], known: Callable[[], int], live_rollouts: Callable[[], int]) -> None:
        self.devices_online.set_function(online)
        self.devices_known.set_function(known)
        self.rollouts_live.set_function(live_rollouts)

    def handled(self, leaf: str) -> int:
        """How many ``leaf`` messages (state, telemetry, cmd/ack) were handled so far."""
        value = self.registry.get_sample_value("edgecloud_fleet_messages_total", {"leaf": leaf})
        return int(value or 0)
