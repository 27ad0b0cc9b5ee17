"""Fixtures for edge tests that talk to a real Reasoner (the shipped teacher on a loopback port;
``teacher`` and ``teacher_dir`` are in tests/conftest.py), and for the device agent's and the
deployer's tests (signing keys, an artifact server, a running device on a real mosquitto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.cloud import RunningServer, make_config
from tests.helpers.device import ArtifactServer, make_keys, running_device, serving_artifacts

if TYPE_CHECKING:  # the cloud's model backend needs torch; edge-only installs run without it
    from edgecloud.cloud.transformers_engine import LoadedModel


@pytest.fixture
def reasoner(teacher_dir: Path, teacher: LoadedModel, tmp_path: Path) -> Iterator[RunningServer]:
    """The real Reasoner serving the shipped teacher on a loopback port, with its own SQLite store."""
    running = RunningServer(make_config(teacher_dir, tmp_path), loaded=teacher)
    yield running
    running.stop()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    return make_keys(tmp_path)


@pytest.fixture
def artifacts(tmp_path: Path) -> Iterator[tuple[Path, ArtifactServer]]:
    with serving_artifacts(tmp_path) as served:
        yield served


@pytest.fixture
def device(shipped_models: Path, tmp_path: Path, mqtt_broker, keys: dict[str, Path]):  # type: ignore[no-untyped-def]
    with running_device(shipped_models, tmp_path, mqtt_broker, keys) as running:
        yield running
