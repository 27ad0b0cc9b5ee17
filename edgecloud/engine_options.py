"""``cloud serve``'s serving-engine options: decode here (transformers) or on an OpenAI-compatible
server (llama.cpp, vLLM, SGLang) the Reasoner drives over HTTP; and ``models gguf``, which writes a
model kit teacher for llama.cpp."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgecloud.cloud.config import RemoteEngineConfig

__all__ = ["add_engine_arguments", "add_gguf_command", "remote_engine_config"]


def add_engine_arguments(serve: argparse.ArgumentParser) -> None:
    engine = serve.add_argument_group("serving engine (see docs/engines.md)")
    engine.add_argument(
        "--engine",
        choices=("transformers", "openai"),
        default="transformers",
        help="transformers: decode --model here (default); openai: an OpenAI-compatible server at --engine-url "
        "(llama.cpp, vLLM, SGLang) decodes, --model gives the tokenizer and chat template",
    )
    engine.add_argument("--engine-url", help="the server's OpenAI API root, e.g. http://127.0.0.1:8080/v1")
    engine.add_argument("--engine-model", default="", help="the model name the server serves (default: its first)")
    engine.add_argument("--engine-api-key-file", type=Path, help="file holding the server's API key")
    engine.add_argument(
        "--engine-allow-plaintext",
        action="store_true",
        help="allow plain http:// to a server that is not on loopback (a trusted cluster network)",
    )
    engine.add_argument(
        "--engine-retries",
        type=int,
        default=3,
        help="calls tried again when the server drops or refuses one (5xx, lost connection); each goes on "
        "from what the session streamed",
    )


def remote_engine_config(args: argparse.Namespace) -> RemoteEngineConfig | None:
    """The OpenAI-compatible server to decode on, or None to decode here."""
    from edgecloud.cloud.config import RemoteEngineConfig

    if args.engine != "openai":
        if args.engine_url:
            raise SystemExit("error: --engine-url is for --engine openai")
        return None
    if not args.engine_url:
        raise SystemExit("error: --engine openai needs --engine-url")
    return RemoteEngineConfig(
        url=args.engine_url,
        served_model=args.engine_model,
        api_key_file=args.engine_api_key_file,
        allow_plaintext=args.engine_allow_plaintext,
        retries=args.engine_retries,
    )


def add_gguf_command(models: argparse._SubParsersAction) -> None:
    gguf = models.add_parser(
        "gguf",
        help="write a model kit teacher as one GGUF file for llama.cpp's server (real Qwen3 models: use "
        "llama.cpp's convert_hf_to_gguf.py)",
    )
    gguf.add_argument("--model", type=Path, default=Path("models/cloud-teacher"), help="the teacher's folder")
    gguf.add_argument("--out", type=Path, default=None, help="the GGUF file (default: MODEL/model.gguf)")
    gguf.add_argument("--half", action="store_true", help="store the matrices as float16 (default: float32)")
    gguf.set_defaults(func=_models_gguf)


def _models_gguf(args: argparse.Namespace) -> int:
    from edgecloud.modelkit.gguf_export import export_gguf
    from edgecloud.shared.base.errors import ConfigError

    try:
        out = export_gguf(args.model, args.out, half=args.half)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
