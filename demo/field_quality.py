"""The demo's field quality: the rollout gate's decisions, each version's agreement with the cloud,
and the shadow checks behind them, as timeline events, report lines and marks on the timeline."""

from __future__ import annotations

from typing import Any

__all__ = ["field_quality_lines", "gate_line", "mark_timeline", "shadow_checks_over_time"]


def _rate(rate: dict[str, Any] | None) -> str:
    if not rate or rate.get("value") is None:
        return "no checks"
    return f"{100 * rate['value']:.1f}% [{100 * rate['low']:.1f}-{100 * rate['high']:.1f}] of {rate['n']}"


def gate_line(gate: dict[str, Any], old: int, new: int) -> str:
    """A wave's quality-gate decision in a line: the verdict, why, and the figures it rests on."""
    line = f"wave {gate['wave']} quality gate {gate['verdict']}: {gate['reason']}"
    if gate["verdict"] == "waiting":
        return line
    figures = (gate.get("new"), gate.get("baseline"))
    if all(figures):
        line += (
            f" (agreement with the cloud: v{new} {_rate(figures[0]['agreement'])}, "
            f"v{old} {_rate(figures[1]['agreement'])})"
        )
    return line


def field_quality_lines(report: dict[str, Any]) -> list[str]:
    """The report's field-quality section: each version's figures over the fleet and each wave's gate."""
    swap = report["swap"]
    lines = [
        "",
        f"field quality (shadow checks the cloud answered: {report.get('shadow_checks', {}).get('total', 0)}):",
    ]
    for row in swap.get("field_quality", []):
        lines.append(
            f"  {row['model_name']} v{row['model_version']} on {row['devices']} device(s): {row['read']} queries read, "
            f"agreement {_rate(row['agreement'])}, escalated {_rate(row['escalation_rate'])}"
        )
    for decision in swap.get("gate_decisions", []):
        lines.append(f"  {decision['t']:6.1f} s  " + gate_line(decision, swap["from_version"], swap["to_version"]))
    if not swap.get("gate_decisions"):
        lines.append("  the quality gate decided nothing")
    return lines


def shadow_checks_over_time(samples: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(t, shadow checks answered so far over the daemons scraped) per sample that scraped any."""
    out: list[tuple[float, float]] = []
    for sample in samples:
        checks = sample.get("shadow_checks") or []
        if checks:
            out.append((sample["t"], float(sum(checks))))
    return out


def mark_timeline(ax: Any, report: dict[str, Any]) -> None:
    """The cumulative shadow checks on a second axis, and each gate decision as a coloured line."""
    over_time = report.get("shadow_checks", {}).get("over_time", [])
    if over_time:
        checks = ax.twinx()
        checks.plot([t for t, _ in over_time], [n for _, n in over_time], color="C4", linestyle="--", linewidth=1)
        checks.set_ylabel("shadow checks answered (dashed, cumulative)", color="C4", fontsize="small")
    for decision in report["swap"].get("gate_decisions", []):
        colour = "green" if decision["verdict"] == "passed" else "red"
        ax.axvline(decision["t"], color=colour, linewidth=1.5)
        ax.annotate(
            f"wave {decision['wave']}: {decision['verdict']}",
            (decision["t"], 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize="x-small",
            color=colour,
        )
