"""A real Reasoner server on a loopback port, run on its own event loop thread,
and the tiny random Qwen3 model that exercises the "bring your own model" path."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from edgecloud.cloud.config import CloudConfig
from edgecloud.proto.edgecloud.v1 import reasoner_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from edgecloud.cloud.server import CloudService
    from edgecloud.cloud.transformers_engine import LoadedModel


class RunningServer:
    def __init__(self, config: CloudConfig, loaded: LoadedModel | None = None) -> None:
        # The server needs the cloud extra (grpcio-reflection); an edge-only install skips what needs it.
        pytest.importorskip("grpc_reflection", reason="the cloud service needs the cloud extra")
        from edgecloud.cloud.server import create_server

        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self.thread.start()
        self.service: CloudService
        self.service, self.port = self.call(create_server(config, loaded=loaded), timeout=300)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.ReasonerStub(self.channel)

    def call(self, coroutine, timeout: float = 60):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, grace: float | None = 0) -> None:
        self.channel.close()
        self.call(self.service.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def tiny_qwen3_config(tokenizer, **overrides):
    """A two-layer, 32-wide Qwen3 over ``tokenizer``: random weights, seconds to run."""
    from transformers import Qwen3Config

    fields = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
    }
    return Qwen3Config(**{**fields, **overrides})


@pytest.fixture(scope="session")
def teacher_dir(shipped_models: Path) -> Path:
    return shipped_models / "cloud-teacher"


@pytest.fixture(scope="session")
def teacher(teacher_dir: Path) -> LoadedModel:
    pytest.importorskip("torch", reason="the cloud's model backend needs torch (an edge-only install has none)")
    from edgecloud.cloud.transformers_engine import LoadedModel

    return LoadedModel.from_dir(teacher_dir, device="cpu", name="cloud-teacher", version=1)


@pytest.fixture(scope="session")
def random_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Qwen3 saved like any Hugging Face model: it never closes its
    think block on its own, which makes it a long-running session on demand."""
    torch = pytest.importorskip("torch", reason="the cloud's model backend needs torch")
    from transformers import Qwen3ForCausalLM

    from edgecloud.modelkit.tokenizer import build_tokenizer

    directory = tmp_path_factory.mktemp("random-qwen3")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(tokenizer, max_position_embeddings=8192))
    with torch.no_grad():  # logits of 0 for the end tokens, while greedy picks a positive one
        for token in (tokenizer.eos_token, "</think>"):
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(token)] = 0.0
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def make_config(model: Path, tmp_path: Path, **overrides: object) -> CloudConfig:
    config = CloudConfig(model=model, port=0, metrics_port=None, store=tmp_path / "sessions.sqlite3", grace_s=1.0)
    return replace(config, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def server(teacher_dir: Path, teacher: LoadedModel, tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(make_config(teacher_dir, tmp_path, metrics_port=0), loaded=teacher)
    yield running
    running.stop()
