"""The section and plot of ``swap_under_load.py``: signed hot swaps under HTTP load, no failed request."""

from __future__ import annotations

from pathlib import Path

from benchmarks.reports.plots import figure, save
from benchmarks.reports.tables import Report, num, table, targets, text

SWAP_TARGET = 10
"""The issue's target: 0 failed requests during this many swaps (fewer swaps: not measured unless one failed)."""

HEADERS = (
    "swaps",
    "completed",
    "client threads",
    "requests",
    "requests/s",
    "failed requests",
    "swap p50 ms",
    "swap p99 ms",
    "swap max ms",
    "final version",
)


def render(r: Report) -> str:
    latency = r["swap_latency_ms"] or {}
    lines = table(
        HEADERS,
        [
            (
                r["swaps"],
                r["swaps_completed"],
                r["clients"],
                r["requests"],
                num(r["requests_per_s"], 1),
                r["failed_requests"],
                num(latency.get("p50"), 0),
                num(latency.get("p99"), 0),
                num(latency.get("max"), 0),
                r["final_version"],
            )
        ],
    )
    ok = r["failed_requests"] == 0 and r["swaps_completed"] == r["swaps"]
    measured = f"{r['failed_requests']} failed of {r['requests']}, {r['swaps_completed']}/{r['swaps']} swaps"
    met = ok if r["swaps"] >= SWAP_TARGET else (False if not ok else None)
    return text(lines + targets([(f"0 failed requests during {SWAP_TARGET} swaps", measured, met)]))


def plot(r: Report, out: Path) -> None:
    """``swap_under_load.png``: the swap latency's p50, p99 and max (nothing when no swap completed)."""
    latency = r["swap_latency_ms"]
    if not latency:
        return
    fig, ax = figure()
    bars = ax.bar(["p50", "p99", "max"], [latency["p50"], latency["p99"], latency["max"]], color="C0")
    ax.bar_label(bars, [f"{v:.0f} ms" for v in (latency["p50"], latency["p99"], latency["max"])])
    ax.margins(y=0.12)
    ax.set_ylabel("command publish -> new version serving (ms)")
    ax.set_title(
        f"{r['swaps_completed']} hot swaps under {r['requests_per_s']:.0f} req/s, "
        f"{r['failed_requests']} failed requests"
    )
    save(fig, out / "swap_under_load.png")
