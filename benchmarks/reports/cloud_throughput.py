"""The section of ``cloud_throughput.py``: sequential against batched serving, per concurrency."""

from __future__ import annotations

from benchmarks.reports.tables import BUSY_SHARE, Lines, Report, num, pct, ratio, table, targets, text

CLOUD_RATIO_AT_16 = 4.0
"""The issue's target when the JSON carries none: batched >= this many times the sessions/s at 16 concurrent."""

HEADERS = (
    "concurrent",
    "sessions",
    "seq sessions/s",
    "batched sessions/s",
    "ratio",
    "seq tokens/s",
    "batched tokens/s",
    "ratio",
    "seq TTFT p50 ms",
    "batched TTFT p50 ms",
    "batched ms/token p50",
    "mean batch",
    "same answers",
    "batched accuracy",
    "CPU taken by other processes (seq / batched)",
)


def render(r: Report) -> str:
    lines = [
        (
            "Sequential = `max_batch=1`, batched = `max_batch=32`; same queries through both servers at each "
            "concurrency, ratio = batched / sequential."
        ),
        "",
    ]
    lines += table(HEADERS, [_row(p, r["machine"]["cpu_count"] or 1) for p in r["points"]])
    lines += _target(r)
    share = r.get("other_processes_cpu_share")
    lines += [
        (
            f"Other processes took {pct(share)} of the machine's CPU during the measurements; benchmark wall "
            f"time {num(r.get('wall_s'), 1)} s."
        ),
        "",
    ]
    if share is not None and share > BUSY_SHARE:
        lines += [
            (
                f"**The machine was busy (over {pct(BUSY_SHARE, 0)} of its CPU taken by other processes): these "
                "figures are less reliable than on an idle machine.**"
            ),
            "",
        ]
    return text(lines)


def _row(p: Report, cores: int) -> tuple[object, ...]:
    """One concurrency: both modes' figures and their ratios."""
    s, b = p["sequential"], p["batched"]
    return (
        p["concurrency"],
        s["sessions"],
        num(s["sessions_per_s"]),
        num(b["sessions_per_s"]),
        ratio(p["ratio"]["sessions_per_s"]),
        num(s["tokens_per_s"], 0),
        num(b["tokens_per_s"], 0),
        ratio(p["ratio"]["tokens_per_s"]),
        num(s["ttft_ms"]["p50"], 0),
        num(b["ttft_ms"]["p50"], 0),
        num(b["token_latency_ms_client"]["p50"]),
        num(b["engine"]["mean_batch"], 1),
        pct(p["same_answer_both_modes"], 0),
        pct(b["accuracy"], 0),
        f"{_foreign(s, cores)} / {_foreign(b, cores)}",
    )


def _target(r: Report) -> Lines:
    target = r.get("target")
    if target is None:
        return targets(
            [
                (
                    f"batched >= {CLOUD_RATIO_AT_16:g}x sessions/s at 16 concurrent",
                    "no 16-concurrency point in this run",
                    None,
                )
            ]
        )
    measured = r["ratio_sessions_per_s"][str(target["concurrency"])]
    return targets(
        [
            (
                f"batched >= {target['ratio']:g}x sessions/s at {target['concurrency']} concurrent",
                ratio(measured),
                target["met"],
            )
        ]
    )


def _foreign(point: Report, cores: int) -> str:
    """The share of the machine's CPU other processes took while one mode ran."""
    return pct(point["other_processes_cpu_s"] / point["wall_s"] / cores, 0)
