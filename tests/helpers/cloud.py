"""The real Reasoner server on a loopback port, run on its own event loop thread, its config, and
the tiny random Qwen3 that exercises the "bring your own model" path. (The fixtures that start them,
``server`` and ``teacher``, are in the conftests.)"""

from __future__ import annotations

import asyncio
import threading
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

__all__ = ["RunningServer", "endless_thinker_model", "make_config", "tiny_qwen3_config"]


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


def make_config(model: Path, tmp_path: Path, **overrides: object) -> CloudConfig:
    config = CloudConfig(model=model, port=0, metrics_port=None, store=tmp_path / "sessions.sqlite3", grace_s=1.0)
    return replace(config, **overrides)  # type: ignore[arg-type]


def endless_thinker_model(directory: Path) -> LoadedModel:
    """A tiny random Qwen3 with two weights set so that it opens its think block at once and never
    closes it or ends on its own: its reasoning budget and answer limit set every length, so a
    session runs as long as a test needs, and its token counts are known exactly."""
    import torch
    from transformers import Qwen3ForCausalLM

    from edgecloud.cloud.transformers_engine import LoadedModel
    from edgecloud.modelkit.tokenizer import SPECIAL_TOKENS, build_tokenizer
    from edgecloud.shared.reasoner.thinking import THINK_START

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(tokenizer, max_position_embeddings=1024, tie_word_embeddings=False))
    ids = tokenizer.convert_tokens_to_ids
    with torch.no_grad():
        # Dimension 0 of every embedding is 1 and dimension 1 is 1 for a newline only. The layers
        # add little to that, so the last hidden state carries both: lm_head's column 0 acts as a
        # bias on every token, and its column 1 as a bias on the token after a newline.
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed[:, :2] = 0.0
        embed[:, 0] = 1.0
        embed[ids("\n"), 1] = 1.0
        head[:, 1] = 0.0
        head[[ids(t) for t in (*SPECIAL_TOKENS, "\n")], 0] = -4.0  # never an end, a tag or a newline ...
        head[ids(THINK_START), 1] = 10.0  # ... but <think> after the prompt's closing newline
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return LoadedModel.from_dir(directory, device="cpu", name="endless-thinker", version=1)
