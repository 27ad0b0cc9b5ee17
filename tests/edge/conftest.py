"""Fixtures for edge tests that talk to a real Reasoner: the shipped teacher on a loopback port
(``teacher`` and ``teacher_dir`` are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.cloud import RunningServer, make_config

if TYPE_CHECKING:  # the cloud's model backend needs torch; edge-only installs run without it
    from edgecloud.cloud.transformers_engine import LoadedModel


@pytest.fixture
def reasoner(teacher_dir: Path, teacher: LoadedModel, tmp_path: Path) -> Iterator[RunningServer]:
    """The real Reasoner serving the shipped teacher on a loopback port, with its own SQLite store."""
    running = RunningServer(make_config(teacher_dir, tmp_path), loaded=teacher)
    yield running
    running.stop()
