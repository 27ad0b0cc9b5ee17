"""The demo's report: figures from the per-query records and the run's events, the
invariants that make the demo exit non-zero, and the plots.

Everything here is a pure function of what the run recorded, so the same report can
be rebuilt from ``report.json``'s records.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.demo.field_quality import field_quality_lines, mark_timeline, shadow_checks_over_time
from edgecloud.demo.traffic import QueryRecord

__all__ = ["build_report", "check_invariants", "format_report", "plot"]


def _pct(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2), "n": len(values)}


def _accuracy(records: list[QueryRecord]) -> float | None:
    judged = [r.correct for r in records if r.correct is not None]
    return round(sum(judged) / len(judged), 4) if judged else None


def route_of(record: QueryRecord) -> str:
    """``edge``, ``edge (degraded)``, ``cloud``, ``outbox`` (accepted, delivered later) or ``failed``."""
    if record.failed:
        return "failed"
    if record.status == "accepted":
        return "outbox"
    if record.route == "edge":
        return "edge (degraded)" if record.degraded else "edge"
    return "cloud"


def by_version(records: list[QueryRecord]) -> dict[str, dict[str, Any]]:
    """Escalation rate and accuracy of the traffic each edge model version served, outside the
    outage (where the cloud cannot take what the edge passes on). An answer degraded to the edge
    or held in the outbox counts as escalated: the edge did not keep it."""
    out: dict[str, dict[str, Any]] = {}
    for version in sorted({r.model_version for r in records if r.model_version}):
        rows = [
            r
            for r in records
            if r.model_version == version and r.phase != "outage" and r.requested == "auto" and not r.failed
        ]
        if not rows:
            continue
        kept = [r for r in rows if r.route == "edge" and not r.degraded]
        out[f"v{version}"] = {
            "requests": len(rows),
            "escalation_rate": round(1 - len(kept) / len(rows), 4),
            "accuracy": _accuracy(rows),
            "edge_kept_accuracy": _accuracy(kept),
            "escalation_rate_by_group": {
                group: round(1 - sum(r in kept for r in of_group) / len(of_group), 4)
                for group in sorted({r.group for r in rows})
                if (of_group := [r for r in rows if r.group == group])
            },
        }
    return out


def _by_route(records: list[QueryRecord]) -> dict[str, dict[str, Any]]:
    """Requests, accuracy and latency of each route that served any."""
    by_route: dict[str, dict[str, Any]] = {}
    for route in ("edge", "cloud", "edge (degraded)", "outbox", "failed"):
        rows = [r for r in records if route_of(r) == route]
        if rows:
            by_route[route] = {
                "requests": len(rows),
                "accuracy": _accuracy(rows),
                "latency_ms": _pct([r.latency_ms for r in rows if not r.failed]),
            }
    return by_route


def _outage(records: list[QueryRecord], undelivered: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """What happened while the cloud was down, and to the outbox after."""
    outage = [r for r in records if r.phase == "outage"]
    delivered = [r for r in records if route_of(r) == "outbox" and r.delivered_after_s is not None]
    return {
        "queries_during": len(outage),
        "degraded_answers": sum(r.degraded and r.route == "edge" for r in outage),
        "empty_answers": sum(r.status == "completed" and not (r.answer or "").strip() for r in records),
        "accepted_into_outbox": sum(r.status == "accepted" for r in records),
        "delivered_from_outbox": len(delivered),
        "undelivered": undelivered,
        "delivered_accuracy": _accuracy(delivered),
        "delivery_after_s": _pct([r.delivered_after_s for r in delivered if r.delivered_after_s is not None]),
        "max_outbox_depth": max((sum(s["outbox_depth"]) for s in samples), default=0),
    }


def _shadow_checks(samples: list[dict[str, Any]]) -> dict[str, Any]:
    over_time = shadow_checks_over_time(samples)
    return {"total": over_time[-1][1] if over_time else 0, "over_time": over_time}


def build_report(
    records: list[QueryRecord],
    *,
    events: list[dict[str, Any]],
    swap: dict[str, Any],
    bytes_per_escalation: dict[str, Any],
    exits: dict[str, list[int]],
    wall_s: float,
    broker: str,
    task: str = "arithmetic",
    undelivered: int,
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    answered = [r for r in records if not r.failed]
    cloud = [r for r in records if route_of(r) == "cloud"]
    reasoning = [r.reasoning_tokens for r in cloud]
    return {
        "task": task,
        "queries": len(records),
        "wall_s": round(wall_s, 1),
        "broker": broker,
        "failed_requests": sum(r.failed for r in records),
        "failures": [r.to_json() for r in records if r.failed][:20],
        "accuracy": _accuracy(answered),
        "accuracy_by_group": {
            group: _accuracy([r for r in answered if r.group == group]) for group in sorted({r.group for r in records})
        },
        "escalation_rate": round(sum(r.route == "cloud" for r in answered) / max(len(answered), 1), 4),
        "routes": _by_route(records),
        "reasoning_tokens": {
            "total": int(sum(reasoning)),
            "mean": round(float(np.mean(reasoning)), 1) if reasoning else None,
            "max": max(reasoning, default=0),
        },
        "bytes_per_escalation": bytes_per_escalation,
        "swap": swap,
        "by_model_version": by_version(records),
        "outage": _outage(records, undelivered, samples),
        "shadow_checks": _shadow_checks(samples),
        "events": events,
        "process_exits": exits,
    }


def check_invariants(
    report: dict[str, Any], *, edges: int, new_version: int, min_cloud_accuracy: float = 0.9
) -> list[str]:
    """What must hold for the demo to pass; each broken one is a line of the failure message."""
    broken = []
    if report["failed_requests"]:
        broken.append(f"{report['failed_requests']} request(s) failed (must be 0)")
    swap = report["swap"]
    if swap.get("status") != "COMPLETED":
        broken.append(f"the rollout ended {swap.get('status')!r}, not COMPLETED")
    gates = swap.get("quality_gates", [])
    if not gates or not all(gate and gate["verdict"] == "passed" for gate in gates):
        broken.append(f"not every wave passed the quality gate: {[g and g['verdict'] for g in gates]}")
    served = swap.get("first_served_by_new_version", {})
    if len(served) != edges:
        broken.append(f"only {len(served)} of {edges} edge daemons served v{new_version} after the rollout")
    outage = report["outage"]
    if outage.get("empty_answers", 0):
        broken.append(
            f"{outage['empty_answers']} queries were answered with nothing (an edge with no answer must wait)"
        )
    if outage["accepted_into_outbox"] == 0:
        broken.append("no query went through the outbox while the cloud was down")
    if outage["undelivered"]:
        broken.append(f"{outage['undelivered']} outboxed queries were never delivered")
    cloud_accuracy = report["routes"].get("cloud", {}).get("accuracy")
    if cloud_accuracy is None or cloud_accuracy < min_cloud_accuracy:
        broken.append(
            f"cloud answers were {cloud_accuracy} accurate (expected >= {min_cloud_accuracy} from the teacher)"
        )
    for name, codes in report["process_exits"].items():
        final = codes[-1] if codes else None
        if final != 0:
            broken.append(f"{name} exited with {final} when stopped (0 expected after SIGTERM)")
    return broken


def _summary_lines(report: dict[str, Any]) -> list[str]:
    """The header, the table of routes, accuracy, escalation, reasoning tokens and feature bytes."""
    lines = [
        f"edgecloud demo ({report.get('task', 'arithmetic')}): {report['queries']} queries in {report['wall_s']} s (broker: {report['broker']})",
        "",
    ]
    lines.append(f"{'route':<17}{'requests':>9}{'accuracy':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for route, row in report["routes"].items():
        latency = row["latency_ms"] or {}
        accuracy = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        lines.append(
            f"{route:<17}{row['requests']:>9}{accuracy:>10}{latency.get('p50', '-'):>10}{latency.get('p99', '-'):>10}"
        )
    acc = report["accuracy"]
    lines += [
        "",
        f"overall accuracy {100 * acc:.1f}%" if acc is not None else "overall accuracy -",
        "  by group: "
        + ", ".join(f"{g} {100 * v:.1f}%" for g, v in report["accuracy_by_group"].items() if v is not None),
        f"escalation rate {100 * report['escalation_rate']:.1f}%",
        (
            f"reasoning tokens per cloud answer: mean {report['reasoning_tokens']['mean']}, max "
            f"{report['reasoning_tokens']['max']}, total {report['reasoning_tokens']['total']}"
        ),
    ]
    b = report["bytes_per_escalation"]
    if b.get("wire_bytes") is not None:
        lines.append(
            f"features per escalation: {b['wire_bytes']:.1f} B on the wire vs {b['raw_bytes']} B raw float32 "
            f"({b['ratio']:.2f}x smaller), over {b['escalations']} escalations"
        )
    return lines


def _swap_lines(report: dict[str, Any]) -> list[str]:
    """The rollout: each device's steps, how the new version was built, and the traffic on each version."""
    lines: list[str] = []
    swap = report["swap"]
    lines += [
        "",
        (
            f"rollout {swap.get('rollout_id')}: v{swap.get('from_version')} -> v{swap.get('to_version')}, "
            f"{swap.get('status')} in {swap.get('duration_s')} s"
        ),
    ]
    for device, row in sorted(swap.get("devices", {}).items()):
        first = swap.get("first_served_by_new_version", {}).get(device)
        lines.append(
            f"  {device}: "
            + ", ".join(f"{s} at {t:.1f} s" for s, t in row)
            + (f"; first answer from v{swap.get('to_version')} at {first:.1f} s" if first is not None else "")
        )
    improve = swap.get("improve", {})
    if swap.get("built_by"):
        lines.append(
            f"  v{swap.get('to_version')} built by {swap['built_by']}"
            + (
                f" from {improve['used']} of {improve['records']} escalations so far in {improve['seconds']} s"
                if "used" in improve
                else ""
            )
        )
    for version, row in report.get("by_model_version", {}).items():
        kept = row["edge_kept_accuracy"]
        lines.append(
            f"  traffic on {version}: {row['requests']} queries, escalated {100 * row['escalation_rate']:.1f}%"
            f" (by group: {', '.join(f'{g} {100 * v:.0f}%' for g, v in row['escalation_rate_by_group'].items())}),"
            f" accuracy {100 * row['accuracy']:.1f}%"
            + (f", edge answers {100 * kept:.1f}% right" if kept is not None else "")
        )
    return lines


def _outage_lines(report: dict[str, Any]) -> list[str]:
    """The cloud outage: what was answered locally, what waited in the outbox and when it was delivered."""
    lines: list[str] = []
    o = report["outage"]
    lines += [
        "",
        f"cloud outage: {o['queries_during']} queries while down, {o['degraded_answers']} answered locally "
        f"(degraded), {o['accepted_into_outbox']} waited in the outbox (they insisted on the cloud, or the edge had "
        f"no answer), {o.get('empty_answers', 0)} answered with nothing "
        f"(max depth {o['max_outbox_depth']:.0f}); {o['delivered_from_outbox']} delivered after the restart"
        + (f" (p50 {o['delivery_after_s']['p50']} s after acceptance)" if o["delivery_after_s"] else ""),
    ]
    return lines


def format_report(report: dict[str, Any]) -> str:
    lines = _summary_lines(report) + _swap_lines(report) + field_quality_lines(report) + _outage_lines(report)
    lines += ["", "timeline:"] + [f"  {e['t']:7.1f} s  {e['event']}" for e in report["events"]]
    lines += ["", f"failed requests: {report['failed_requests']}"]
    return "\n".join(lines)


def _accuracy_curve(records: list[QueryRecord]) -> tuple[np.ndarray, np.ndarray, tuple[float, float]] | None:
    """Accuracy vs the share escalated, sweeping the confidence threshold over the queries routed
    normally (not during the outage). A query's edge answer is known for every one of them
    (``edge_answer``); its cloud answer only when it was escalated, so the few answered at the edge
    are scored at the cloud's measured accuracy for their group when a lower
    threshold would have escalated them."""
    rows = [
        r
        for r in records
        if not r.failed
        and r.phase != "outage"
        and r.status == "completed"
        and r.confidence is not None
        and r.edge_correct is not None
    ]
    if len(rows) < 10:
        return None
    cloud_by_group = {
        group: np.mean([r.correct for r in rows if r.route == "cloud" and r.group == group] or [0.0])
        for group in {r.group for r in rows}
    }
    confidence = np.array([r.confidence for r in rows])
    edge_ok = np.array([float(r.edge_correct) for r in rows])
    cloud_ok = np.array([float(r.correct) if r.route == "cloud" else cloud_by_group[r.group] for r in rows])
    order = np.argsort(-confidence)  # keep the most confident at the edge first
    shares, accuracies = [], []
    for kept in range(len(rows) + 1):
        local = np.zeros(len(rows), dtype=bool)
        local[order[:kept]] = True
        shares.append(1 - kept / len(rows))
        accuracies.append(float(np.where(local, edge_ok, cloud_ok).mean()))
    actual = (float(np.mean([r.route == "cloud" for r in rows])), float(np.mean([r.correct for r in rows])))
    return np.array(shares), np.array(accuracies), actual


def plot(records: list[QueryRecord], report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    curve = _accuracy_curve(records)
    if curve is not None:
        shares, accuracies, (share, accuracy) = curve
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.plot(100 * shares, 100 * accuracies, label="confidence threshold swept")
        ax.scatter([100 * share], [100 * accuracy], color="C3", zorder=3, label="this run (calibrated threshold)")
        ax.set_xlabel("queries escalated to the cloud (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy vs escalation share (demo traffic, cloud up)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "accuracy_vs_escalation.png", dpi=120)
        plt.close(fig)
        written.append(out / "accuracy_vs_escalation.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for route in ("edge", "edge (degraded)", "cloud", "outbox"):
        values = np.sort([r.latency_ms for r in records if route_of(r) == route])
        if values.size:
            ax.plot(values, np.arange(1, values.size + 1) / values.size, label=f"{route} (n={values.size})")
    ax.set_xscale("log")
    ax.set_xlabel("latency at the edge daemon (ms, log)")
    ax.set_ylabel("share of requests")
    ax.set_title("Latency by route")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "latency_by_route.png", dpi=120)
    plt.close(fig)
    written.append(out / "latency_by_route.png")

    fig, ax = plt.subplots(figsize=(8, 4.2))
    end = max((r.sent_at for r in records), default=0) + 1
    bins = np.arange(0, end + 1, 1.0)
    for route in ("edge", "edge (degraded)", "cloud", "outbox", "failed"):
        times = [r.sent_at for r in records if route_of(r) == route]
        if times:
            counts, _ = np.histogram(times, bins=bins)
            ax.plot(bins[:-1], counts, label=route, drawstyle="steps-post")
    for event in report["events"]:
        ax.axvline(event["t"], color="grey", alpha=0.4, linewidth=1)
    mark_timeline(ax, report)
    ax.set_xlabel("seconds since traffic began (grey: the timeline's events; green/red: quality-gate decisions)")
    ax.set_ylabel("queries sent per second")
    ax.set_title("Traffic by route over the run")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=120)
    plt.close(fig)
    written.append(out / "timeline.png")
    return written


def route_counts(records: list[QueryRecord]) -> Counter[str]:
    return Counter(route_of(r) for r in records)
