"""The fleet's use cases without a broker, shared by the service and views tests: a
:class:`~edgecloud.fleet.service.FleetService` over an in-memory store, whose ``publish`` records the
commands it would send, and the device messages that drive it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgecloud.fleet.registry import BundleRegistry
from edgecloud.fleet.service import FleetService
from edgecloud.fleet.state import FleetState
from edgecloud.fleet.store import FleetStore
from edgecloud.fleet.views import FleetViews
from edgecloud.shared.fleetlink.messages import AckStatus, Birth, Command, CommandAck
from tests.helpers.sim_fleet import make_archive


@dataclass
class OfflineFleet:
    service: FleetService
    views: FleetViews
    state: FleetState
    store: FleetStore
    sent: list[Command] = field(default_factory=list)
    """Every command the use cases handed to ``publish``, in order."""

    def take_sent(self) -> list[Command]:
        sent, self.sent[:] = list(self.sent), []
        return sent


def offline_fleet(directory: Path, store: FleetStore | None = None) -> OfflineFleet:
    """The use cases and views over ``store`` (a new in-memory one by default); archives under ``directory``."""
    store = store if store is not None else FleetStore()
    registry = BundleRegistry(
        store,
        directory / "artifacts",
        trusted_keys=(),
        max_bundle_bytes=1 << 30,
        artifact_url=lambda sha256: f"http://fleet.test/artifacts/{sha256}.tar.gz",
    )
    state = FleetState.load(store)
    sent: list[Command] = []
    service = FleetService(state, store, registry, publish=sent.extend)
    return OfflineFleet(service, FleetViews(state), state, store, sent)


def register_versions(fleet: OfflineFleet, directory: Path, *versions: int) -> None:
    for version in versions:
        fleet.service.register_bundle(make_archive(directory / f"v{version}", version))


def birth(device: str, session: int = 1, *, online: bool = True, site: str = "lab", version: int = 1) -> Birth:
    return Birth(
        online=online,
        device=device,
        model_name="edge-student",
        model_version=version,
        session=session,
        labels={"site": site} if online else {},
        at=time.time(),
    )


def ack(command: Command, status: AckStatus, **changes: object) -> CommandAck:
    """The device's ack of ``command`` (``version``: the bundle's once ACTIVE)."""
    values: dict[str, object] = {
        "command_id": command.id,
        "device": command.device,
        "status": status,
        "revision": command.revision,
        "version": command.bundle.version if status is AckStatus.ACTIVE else 0,
        "rollout_id": command.rollout_id,
        "at": time.time(),
    }
    values.update(changes)
    return CommandAck(**values)  # type: ignore[arg-type]
