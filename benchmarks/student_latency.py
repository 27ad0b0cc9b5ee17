"""Per-query latency of the edge student: int8 ONNX vs fp32 ONNX vs PyTorch fp32.

All three answer the same simple (k=1) test queries, one thread each, in one
run; the JSON printed gives p50/p99 and the speed-up ratios, plus the sizes on
disk. Usage::

    python benchmarks/student_latency.py [--models models] [--n 300] [--block 50] [--png out/bench/student_latency.png]

Each model answers the queries in blocks of ``--block`` consecutive queries,
the three models taking turns block by block (and the order rotating), as a
daemon serving a stream of queries runs one model at a time: that is the
steady-state figure the targets use. ``cold`` repeats the int8 measurement
with a PyTorch student call between every two queries, which evicts what the
int8 session had in the CPU caches: the latency of a query arriving after
other work ran. On the 2-core machine that roughly triples the int8 p50.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgecloud.edge.runtime import EdgeModel
from edgecloud.modelkit.arithmetic.evaluate import ModelPaths, latency_summary, torch_single_latency
from edgecloud.modelkit.arithmetic.task import Split, generate


def _interleaved(runners: dict[str, Callable[[str], float]], queries: list[str], size: int) -> dict[str, list[float]]:
    """Each runner's latencies over ``queries``, taking turns ``size`` queries at a time."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for turn, start in enumerate(range(0, len(queries), size)):
        block = queries[start : start + size]
        for name in names[turn % 3 :] + names[: turn % 3]:
            samples[name].extend(runners[name](q) for q in block)
    return samples


def _plot(samples: dict[str, list[float]], png: Path) -> None:
    """A box plot of each runner's latencies, written to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    names = list(samples)
    ax.boxplot([samples[n] for n in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("latency per simple query (ms)")
    ax.set_title("Edge student, one thread")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--n", type=int, default=300, help="number of k=1 queries")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument(
        "--block", type=int, default=50, help="consecutive queries per model before the next takes over"
    )
    parser.add_argument("--png", type=Path, default=None, help="also write a latency plot here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    paths = ModelPaths(args.models)
    queries = [p.query for p in generate(args.n * 4, args.seed, Split.TEST) if p.k == 1][: args.n]
    int8 = EdgeModel.from_bundle(paths.student_bundle, threads=1)
    fp32 = EdgeModel(paths.reference / "model.onnx", int8.tokenizer_file, **int8.decoding, threads=1)
    model = AutoModelForCausalLM.from_pretrained(str(paths.reference)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(paths.reference))
    decoding = {"template": int8.prompt_template, "max_new_tokens": int8.max_new_tokens}
    torch_single_latency(model, tokenizer, queries[:10], **decoding)  # warm-up

    # Interleave the three so that machine noise hits them alike.
    if args.block < 1:
        parser.error("--block must be >= 1")
    runners = {
        "onnx_int8": lambda q: int8.answer(q).latency_ms,
        "onnx_fp32": lambda q: fp32.answer(q).latency_ms,
        "torch_fp32": lambda q: torch_single_latency(model, tokenizer, [q], **decoding)[0],
    }
    samples = _interleaved(runners, queries, args.block)
    cold = []
    for query in queries:
        torch_single_latency(model, tokenizer, [query], **decoding)
        cold.append(int8.answer(query).latency_ms)
    stats = {name: latency_summary(values) for name, values in samples.items()}
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    report = {
        "benchmark": "student_latency",
        "queries": len(queries),
        "threads": 1,
        "block": args.block,
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "latency": stats,
        "cold_int8": latency_summary(cold),
        "speedup_p50": {
            "int8_vs_torch_fp32": p50["torch_fp32"] / p50["onnx_int8"],
            "int8_vs_onnx_fp32": p50["onnx_fp32"] / p50["onnx_int8"],
        },
        "size_bytes": {
            "onnx_int8": int8.model_file.stat().st_size,
            "onnx_fp32": fp32.model_file.stat().st_size,
            "torch_fp32_safetensors": (paths.reference / "model.safetensors").stat().st_size,
        },
    }
    if args.png is not None:
        _plot(samples, args.png)
        report["png"] = str(args.png)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
