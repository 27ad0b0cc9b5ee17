"""The section of ``cloud_resume.py``: sessions resumed after random disconnects, every event once."""

from __future__ import annotations

from benchmarks.reports.tables import Report, num, pct, table, targets, text

HEADERS = (
    "sessions",
    "concurrency",
    "completed",
    "disconnects",
    "re-attached while running",
    "events",
    "lost",
    "duplicated",
    "replay mismatches",
    "RPC errors",
    "accuracy",
    "wall s",
)


def render(r: Report) -> str:
    lines = table(
        HEADERS,
        [
            (
                r["sessions"],
                r["concurrency"],
                r["completed"],
                r["disconnects"],
                r["reattaches_while_running"],
                r["events"],
                r["lost_events"],
                r["duplicated_events"],
                r["replay_mismatches"],
                len(r["rpc_errors"]),
                pct(r["accuracy"], 0),
                num(r["wall_s"], 1),
            )
        ],
    )
    clean = (
        r["completed"] == r["sessions"]
        and r["lost_events"] == 0
        and r["duplicated_events"] == 0
        and r["replay_mismatches"] == 0
        and not r["rpc_errors"]
    )
    return text(
        lines
        + targets(
            [
                (
                    "every session completes after random disconnects, 0 lost, 0 duplicated events",
                    (
                        f"{r['completed']}/{r['sessions']} completed, {r['lost_events']} lost, "
                        f"{r['duplicated_events']} duplicated"
                    ),
                    clean,
                )
            ]
        )
    )
