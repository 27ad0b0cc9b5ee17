"""A student over ONNX's 2 GB single-file limit: export, int8 quantisation, loading on the edge, and
int8 latency per generated token on one thread, int8 against fp32 in the same run.

The student is Qwen3-0.6B-shaped (28 layers, hidden 1024, 16 query / 8 key-value heads, vocabulary
151,936, tied embeddings) with random weights: no weights can be downloaded here, and the shape,
not the weights, decides size and speed. Its tokenizer is a word-level one of the same vocabulary
size. A random model never says its end token, so every query generates ``--new-tokens`` tokens;
per-token latency is (query latency - prefill latency) / (tokens - 1), prefill being measured on its
own with one new token. Usage::

    python benchmarks/large_student.py --out out/bench/large_student [--new-tokens 32] [--n 5]

Prints JSON (sizes, times of each step, latencies) and writes it to ``OUT/large_student.json``.
Needs ~12 GB of memory and, on 2 cores, ~15 minutes; run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Qwen3Config, Qwen3ForCausalLM

from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit.export import export_student, external_data_file, onnx_io, quantize_student
from edgecloud.shared.bundles.manifest import write_bundle

VOCAB = 151936
EOS = "<|im_end|>"


def qwen3_0_6b_shaped() -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        eos_token_id=VOCAB - 1,
        pad_token_id=VOCAB - 2,
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config).eval()


def word_tokenizer(path: Path) -> None:
    vocab = {f"w{i}": i for i in range(VOCAB - 3)}
    vocab.update({"[UNK]": VOCAB - 3, "<|endoftext|>": VOCAB - 2, EOS: VOCAB - 1})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([EOS, "<|endoftext|>"])
    tokenizer.save(str(path))


def _size(path: Path) -> int:
    data = external_data_file(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _latency(model: EdgeModel, queries: list[str]) -> list[float]:
    out = []
    for query in queries:
        started = time.perf_counter()
        model.answer(query)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _time_graph(graph: Path | None, bundle: Path, decoding: dict[str, Any], queries: list[str]) -> dict[str, float]:
    """Load one graph (None: the bundle's, by the edge's loading path) and time its prefill and its tokens."""
    started = time.monotonic()
    if graph is None:
        full = EdgeModel.from_bundle(bundle, threads=1)  # the edge's loading path
    else:
        full = EdgeModel(graph, bundle / "tokenizer.json", **decoding, threads=1)
    load_s = time.monotonic() - started
    one = EdgeModel(full.model_file, bundle / "tokenizer.json", **{**decoding, "max_new_tokens": 1}, threads=1)
    generated = full.answer(queries[0]).output_tokens
    prefill = statistics.median(_latency(one, queries))
    whole = statistics.median(_latency(full, queries))
    return {
        "load_s": load_s,
        "tokens_generated": generated,
        "prefill_ms_p50": prefill,
        "query_ms_p50": whole,
        "per_token_ms": (whole - prefill) / max(generated - 1, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--n", type=int, default=5, help="queries timed per graph and length")
    parser.add_argument("--keep", action="store_true", help="keep the graphs (several GB) under OUT")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    torch.set_num_threads(os.cpu_count() or 1)
    result: dict[str, object] = {"load_average_at_start": os.getloadavg(), "machine": platform.processor()}

    model = qwen3_0_6b_shaped()
    params = sum(p.numel() for p in model.parameters())
    result["parameters"] = params
    result["fp32_bytes_in_torch"] = params * 4
    started = time.monotonic()
    fp32 = export_student(model, work / "reference" / "model.onnx")
    result["export_s"] = time.monotonic() - started
    result["fp32_graph_bytes"] = _size(fp32)
    result["fp32_external_data"] = external_data_file(fp32).exists()
    del model

    bundle = work / "edge-student"
    bundle.mkdir()
    started = time.monotonic()
    int8 = quantize_student(fp32, bundle / "model.int8.onnx")
    result["quantise_s"] = time.monotonic() - started
    result["int8_graph_bytes"] = _size(int8)
    result["int8_external_data"] = external_data_file(int8).exists()
    word_tokenizer(bundle / "tokenizer.json")
    decoding = {"prompt_template": "{query}", "eos_token": EOS, "max_new_tokens": args.new_tokens}
    write_bundle(
        bundle, name="large-student", kind="edge", version=1,
        io={**onnx_io(int8), "feature_dim": 1024, "tokenizer": "tokenizer.json", "graphs": {"int8": int8.name}, **decoding},
        calibration={}, golden=[], metadata={"benchmark": "large_student"},
    )  # fmt: skip

    queries = [" ".join(f"w{(i * 7919 + j * 104729) % (VOCAB - 3)}" for j in range(12)) for i in range(args.n)]
    figures = {}
    for name, graph in (("int8", None), ("fp32", fp32)):
        figures[name] = _time_graph(graph, bundle, decoding, queries)
    figures["int8_speedup_per_token"] = figures["fp32"]["per_token_ms"] / figures["int8"]["per_token_ms"]
    result["latency_one_thread"] = figures
    result["load_average_at_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(work)
    text = json.dumps(result, indent=2)
    (args.out / "large_student.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
