"""The cloud tests' fixture: the real Reasoner serving the shipped teacher on a loopback port
(``teacher`` and the random Qwen3 are in tests/conftest.py, the server itself in tests/helpers/cloud.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.cloud import RunningServer, endless_thinker_model, make_config

if TYPE_CHECKING:
    from edgecloud.cloud.transformers_engine import LoadedModel


@pytest.fixture
def server(teacher_dir: Path, teacher: LoadedModel, tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(make_config(teacher_dir, tmp_path, metrics_port=0), loaded=teacher)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def endless_thinker(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A tiny Qwen3 that thinks and answers exactly as long as its limits let it (tests/helpers/cloud.py)."""
    pytest.importorskip("torch", reason="the cloud's model backend needs torch")
    return endless_thinker_model(tmp_path_factory.mktemp("endless-thinker"))
