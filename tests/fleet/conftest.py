"""Fixtures of the fleet tests: simulated devices and managers, stopped after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgecloud.fleet.manager import FleetManager
from tests.fleet.sim import SimDevice


@pytest.fixture
def sims() -> Iterator[list[SimDevice]]:
    started: list[SimDevice] = []
    yield started
    for device in started:
        device.stop()


@pytest.fixture
def managers() -> Iterator[list[FleetManager]]:
    started: list[FleetManager] = []
    yield started
    for manager in started:
        if not manager._stop.is_set():
            manager.close()
