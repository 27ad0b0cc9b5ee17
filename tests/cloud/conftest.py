"""The cloud tests' fixture: the real Reasoner serving the shipped teacher on a loopback port
(``teacher`` and the random Qwen3 are in tests/conftest.py, the server itself in tests/helpers/cloud.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.cloud import RunningServer, endless_thinker_model, make_config
from tests.helpers.llama_server import LlamaServer, serve_model

if TYPE_CHECKING:
    from edgecloud.cloud.transformers_engine import LoadedModel


@pytest.fixture
def server(teacher_dir: Path, teacher: LoadedModel, tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(make_config(teacher_dir, tmp_path, metrics_port=0), loaded=teacher)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def endless_thinker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny Qwen3 that thinks and answers exactly as long as its limits let it
    (tests/helpers/cloud.py)."""
    pytest.importorskip("torch", reason="the cloud's model backend needs torch")
    directory = tmp_path_factory.mktemp("endless-thinker")
    endless_thinker_model(directory)
    return directory


@pytest.fixture(scope="module")
def endless_thinker(endless_thinker_dir: Path) -> LoadedModel:
    from edgecloud.cloud.transformers_engine import LoadedModel

    return LoadedModel.from_dir(endless_thinker_dir, device="cpu", name="endless-thinker", version=1)


@pytest.fixture(scope="module")
def endless_thinker_llama(endless_thinker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama.cpp's OpenAI-compatible server serving the endless thinker as GGUF."""
    server = serve_model(endless_thinker_dir, tmp_path_factory.mktemp("endless-llama"), n_ctx=1024)
    yield server
    server.stop()
