"""The section and plot of ``fleet_scale.py``: connect, telemetry ingest and a rollout across N devices."""

from __future__ import annotations

from pathlib import Path

from benchmarks.reports.plots import figure, save
from benchmarks.reports.tables import Lines, Report, num, ratio, table, targets, text


def render(r: Report) -> str:
    lines = [
        (
            f"{r['devices']} simulated devices (MQTT 5 clients in their own process), telemetry every "
            f"{num(r['telemetry_interval_s'], 1)} s, real mosquitto and fleet manager."
        ),
        "",
    ]
    lines += _phases(r)
    rollout = r.get("rollout")
    if rollout is not None:
        lines += _rollout(rollout)
    phases = [(name, r[name]["cpu_percent"]) for name in ("connect", "telemetry", "rollout") if name in r]
    lines += ["CPU % of one core per process and phase:", ""]
    lines += table(
        ["phase", "manager", "devices", "mosquitto"],
        [(name, num(c["manager"], 1), num(c["devices"], 1), num(c["mosquitto"], 1)) for name, c in phases],
    )
    totals = r["telemetry_totals"]
    lines += targets(
        [
            (
                "the rollout reaches every device",
                "-" if rollout is None else f"{rollout['succeeded']}/{r['devices']}",
                None if rollout is None else rollout["status"] == "COMPLETED" and rollout["succeeded"] == r["devices"],
            ),
            ("no telemetry lost", f"{totals['lost']} lost of {totals['published']}", totals["lost"] == 0),
        ]
    )
    return text(lines)


def _phases(r: Report) -> Lines:
    """Connecting, steady telemetry and the whole run's telemetry totals."""
    connect, steady, totals = r["connect"], r["telemetry"], r["telemetry_totals"]
    return table(
        ["phase", "figure", "value"],
        [
            ("connect", "all devices connected", f"{num(connect['all_connected_s'])} s"),
            ("connect", "all births absorbed by the manager", f"{num(connect['all_births_absorbed_s'])} s"),
            (
                "telemetry",
                "offered / published / absorbed per s",
                (
                    f"{num(steady['offered_per_s'], 1)} / {num(steady['published_per_s'], 1)} / "
                    f"{num(steady['absorbed_per_s'], 1)}"
                ),
            ),
            ("telemetry", "absorbed / published", ratio(steady["absorbed_ratio"])),
            ("telemetry", "ingest lag p50 / p99 ms", _p50_p99(steady["ingest_lag_ms"])),
            (
                "telemetry",
                "device rows updated in window",
                f"{steady['device_rows_updated_in_window']} of {r['devices']}",
            ),
            (
                "whole run",
                "telemetry published / absorbed / lost",
                f"{totals['published']} / {totals['absorbed']} / {totals['lost']}",
            ),
        ],
    )


def _rollout(rollout: Report) -> Lines:
    during = rollout["telemetry_during_rollout"]
    absorbed = during["absorbed_per_s"] / during["published_per_s"] if during["published_per_s"] else None
    return table(
        ["rollout", "value"],
        [
            ("status", f"{rollout['status']} ({rollout['succeeded']} succeeded, {rollout['failed']} failed)"),
            ("create_rollout -> COMPLETED", f"{num(rollout['to_completed_s'])} s"),
            ("waves (size: ms)", ", ".join(f"{w['size']}: {num(w['duration_ms'], 0)}" for w in rollout["waves"])),
            ("command publish -> ACTIVE p50 / p99 ms", _p50_p99(rollout["device_publish_to_active_ms"])),
            ("telemetry during rollout absorbed / published", ratio(absorbed)),
            ("telemetry ingest lag during rollout p50 / p99 ms", _p50_p99(during["ingest_lag_ms"])),
        ],
    )


def _p50_p99(stats: dict[str, float] | None) -> str:
    return "-" if not stats else f"{num(stats['p50'], 1)} / {num(stats['p99'], 1)}"


def plot(r: Report, out: Path) -> None:
    """``fleet_scale.png``: telemetry published and absorbed per phase; the rollout's wave durations."""
    rollout = r.get("rollout")
    fig, (left, right) = figure(9.0, 3.4, ncols=2)
    steady = r["telemetry"]
    phases = {"steady": steady}
    if rollout is not None:
        phases["during rollout"] = rollout["telemetry_during_rollout"]
    xs = range(len(phases))
    left.bar([x - 0.2 for x in xs], [p["published_per_s"] for p in phases.values()], 0.4, label="published")
    left.bar([x + 0.2 for x in xs], [p["absorbed_per_s"] for p in phases.values()], 0.4, label="absorbed")
    left.set_xticks(list(xs), list(phases))
    left.set_ylabel("telemetry messages/s")
    left.legend(fontsize=8, loc="lower center")
    left.set_title(f"{r['devices']} devices")
    if rollout is not None and rollout["waves"]:
        waves = rollout["waves"]
        right.bar([str(w["size"]) for w in waves], [w["duration_ms"] for w in waves], color="C2")
        right.set_xlabel("wave size (devices)")
        right.set_ylabel("wave duration (ms)")
        right.set_title(f"rollout {rollout['to_completed_s']:.2f} s to {rollout['status']}")
    save(fig, out / "fleet_scale.png")
