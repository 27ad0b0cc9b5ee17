"""Fixtures for edge tests that talk to a real Reasoner: the cloud fixtures
(shipped teacher, random Qwen3) re-declared here, and the teacher on a loopback port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.cloud.conftest import RunningServer, make_config, random_qwen3_dir, teacher, teacher_dir

if TYPE_CHECKING:  # the cloud's model backend needs torch; edge-only installs run without it
    from edgecloud.cloud.transformers_engine import LoadedModel

__all__ = ["free_port", "random_qwen3_dir", "reasoner", "teacher", "teacher_dir"]


def free_port() -> int:
    """A loopback port nothing listens on (for a cloud that is down, or comes up later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def reasoner(teacher_dir: Path, teacher: LoadedModel, tmp_path: Path) -> Iterator[RunningServer]:
    """The real Reasoner serving the shipped teacher on a loopback port, with its own SQLite store."""
    running = RunningServer(make_config(teacher_dir, tmp_path), loaded=teacher)
    yield running
    running.stop()
