"""The section of ``student_latency.py``: the int8 ONNX, fp32 ONNX and PyTorch students, one thread."""

from __future__ import annotations

from benchmarks.reports.tables import Report, num, ratio, table, targets, text

STUDENT_P50_MS = 2.0
"""The issue's target: the int8 student's p50 at most this many milliseconds."""
STUDENT_SPEEDUP = 3.0
"""The issue's target: int8 ONNX at least this many times faster than PyTorch fp32 (p50)."""

SIZE_KEY = {"onnx_int8": "onnx_int8", "onnx_fp32": "onnx_fp32", "torch_fp32": "torch_fp32_safetensors"}
"""Each model's name in ``latency`` -> its name in ``size_bytes``."""


def render(r: Report) -> str:
    latency, sizes = r["latency"], r["size_bytes"]
    int8_p50 = latency["onnx_int8"]["p50_ms"]
    rows = [
        (
            name,
            num(s["p50_ms"]),
            num(s["p99_ms"]),
            num(s["mean_ms"]),
            ratio(s["p50_ms"] / int8_p50),
            num(sizes[SIZE_KEY[name]] / 2**20, 1),
        )
        for name, s in latency.items()
    ]
    block = r.get("block")
    order = f"in turns of {block} consecutive queries per model" if block else "the three interleaved"
    lines = [f"{r['queries']} simple (k=1) queries, {r['threads']} thread, {order}.", ""]
    lines += table(["model", "p50 ms", "p99 ms", "mean ms", "p50 / int8 p50", "size MiB"], rows)
    if "cold_int8" in r:
        cold = r["cold_int8"]
        lines += [
            "",
            (
                f"Cold: int8 with a PyTorch call between every two queries (caches evicted): p50 "
                f"{num(cold['p50_ms'])} ms, p99 {num(cold['p99_ms'])} ms ({ratio(cold['p50_ms'] / int8_p50)} the "
                "steady p50)."
            ),
        ]
    speedup = r["speedup_p50"]["int8_vs_torch_fp32"]
    lines += targets(
        [
            (f"int8 ONNX p50 <= {STUDENT_P50_MS:g} ms", f"{num(int8_p50)} ms", int8_p50 <= STUDENT_P50_MS),
            (
                f"int8 ONNX >= {STUDENT_SPEEDUP:g}x faster than PyTorch fp32 (p50)",
                ratio(speedup),
                speedup >= STUDENT_SPEEDUP,
            ),
        ]
    )
    return text(lines)
