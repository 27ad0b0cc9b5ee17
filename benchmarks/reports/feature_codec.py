"""The section and plot of ``feature_codec.py``: bytes per escalation and the round trip's cosine."""

from __future__ import annotations

from pathlib import Path

from benchmarks.reports.plots import figure, save
from benchmarks.reports.tables import Report, num, ratio, table, targets, text

HEADERS = (
    "raw float32 bytes",
    "wire bytes mean",
    "payload bytes mean",
    "raw / wire",
    "raw / payload",
    "cosine mean",
    "cosine min",
    "encode us p50",
    "decode us p50",
)


def render(r: Report) -> str:
    encoded, cosine, t = r["encoded_bytes"], r["cosine"], r["time_us_per_vector"]
    lines = [
        (
            f"{r['queries']} mixed test queries through the shipped student, {r['feature_dim']}-d features, "
            f"int8 levels {num(r['config']['levels'], 0)}, zstd level {r['config']['zstd_level']}."
        ),
        "",
    ]
    lines += table(
        HEADERS,
        [
            (
                r["raw_float32_bytes"],
                num(encoded["mean"], 1),
                num(r["payload_bytes"]["mean"], 1),
                ratio(r["ratio"]),
                ratio(r["ratio_payload_only"]),
                num(cosine["mean"], 5),
                num(cosine["min"], 5),
                num(t["encode"]["p50"], 1),
                num(t["decode"]["p50"], 1),
            )
        ],
    )
    goal = r["targets"]
    lines += targets(
        [
            (f"wire bytes >= {goal['ratio']:g}x smaller than raw float32", ratio(r["ratio"]), goal["ratio_met"]),
            (
                f"round-trip cosine >= {goal['cosine_min']} (every vector)",
                f"min {num(cosine['min'], 5)}",
                goal["cosine_met"],
            ),
        ]
    )
    return text(lines)


def plot(r: Report, out: Path) -> None:
    """``feature_codec.png``: raw, wire and payload bytes per escalation (the script draws none)."""
    fig, ax = figure()
    labels = ["raw float32", "wire (mean)", "payload (mean)"]
    values = [r["raw_float32_bytes"], r["encoded_bytes"]["mean"], r["payload_bytes"]["mean"]]
    bars = ax.bar(labels, values, color=["grey", "C0", "C2"])
    ax.bar_label(bars, [f"{v:.0f} B" for v in values])
    ax.margins(y=0.12)
    ax.set_ylabel("bytes per escalation")
    ax.set_title(f"Feature codec: {r['ratio']:.2f}x smaller, cosine min {r['cosine']['min']:.4f}")
    save(fig, out / "feature_codec.png")
