"""The figures and tables a section is made of, and the section of a benchmark without its own."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Report = dict[str, Any]
"""A benchmark's JSON, as its script printed it."""
Lines = list[str]

BUSY_SHARE = 0.2
"""Above this share of the CPU taken by other processes, a timing section says the machine was busy."""


def num(value: Any, digits: int = 2) -> str:
    """A figure for a table: ``-`` for missing, ints as they are, floats to ``digits`` places."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def ratio(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Lines:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return out + [""]


def verdict(met: bool | None, note: str = "") -> str:
    """``met`` / ``**missed**`` / ``not measured``; ``note`` says why, if anything."""
    text = "not measured" if met is None else ("met" if met else "**missed**")
    return f"{text} ({note})" if note else text


def targets(rows: Sequence[tuple[str, str, bool | None]]) -> Lines:
    """A target table: (target, measured, met?) per row."""
    return ["Targets:", ""] + table(["target", "measured", "verdict"], [(t, m, verdict(v)) for t, m, v in rows])


def text(lines: Lines) -> str:
    """A section's lines as the Markdown :func:`render` functions return."""
    return "\n".join(lines)


def generic(result: Report) -> str:
    """For a benchmark without a section of its own: its top-level figures."""
    rows = [
        (key, num(value, 4))
        for key, value in result.items()
        if isinstance(value, int | float | str | bool) and key != "benchmark"
    ]
    return text(table(["field", "value"], rows))
