"""Run every benchmark and write ``benchmarks/RESULTS.md``: tables and plots, each
comparison a ratio measured within one run, with the machine it ran on.

Each benchmark runs as its own subprocess (this interpreter, cwd = the repository
root), its output folder at ``<results>/<name>/``, with a per-benchmark timeout and a
live progress line on stderr. Its JSON (from stdout, or the file it wrote) is kept as
``<results>/<name>/<name>.json``; a failure (exit code, timeout, no JSON) is recorded
and reported, the others still run, and the exit status is 1 if any failed. The run
itself (machine, command, status of each benchmark) goes to ``<results>/run.json``.

A benchmark is one entry of :data:`BENCHMARKS`: its script arguments (full and
``--quick``), a timeout, and a function that turns its JSON into Markdown (and, where
the script draws no plot, one that draws it). Usage::

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--out-md PATH] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

Report = dict[str, Any]
Lines = list[str]


# -- formatting ---------------------------------------------------------------------


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


# -- one section per benchmark ---------------------------------------------------------

# The targets of the issues that a script's JSON does not carry itself.
CLOUD_RATIO_AT_16 = 4.0
STUDENT_P50_MS = 2.0
APGR_TARGET = 0.9
STUDENT_SPEEDUP = 3.0
SWAP_TARGET = 10
BUSY_SHARE = 0.2
"""Above this share of the CPU taken by other processes, a timing section says the machine was busy."""


def cloud_throughput(r: Report) -> Lines:
    rows, cores = [], r["machine"]["cpu_count"] or 1
    for p in r["points"]:
        s, b = p["sequential"], p["batched"]
        rows.append(
            (
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
        )
    lines = [
        (
            "Sequential = `max_batch=1`, batched = `max_batch=32`; same queries through both servers at each "
            "concurrency, ratio = batched / sequential."
        ),
        "",
    ]
    lines += table(
        [
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
        ],
        rows,
    )
    target = r.get("target")
    if target is None:
        lines += targets(
            [
                (
                    f"batched >= {CLOUD_RATIO_AT_16:g}x sessions/s at 16 concurrent",
                    "no 16-concurrency point in this run",
                    None,
                )
            ]
        )
    else:
        measured = r["ratio_sessions_per_s"][str(target["concurrency"])]
        lines += targets(
            [
                (
                    f"batched >= {target['ratio']:g}x sessions/s at {target['concurrency']} concurrent",
                    ratio(measured),
                    target["met"],
                )
            ]
        )
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
    return lines


def _foreign(point: Report, cores: int) -> str:
    """The share of the machine's CPU other processes took while one mode ran."""
    return pct(point["other_processes_cpu_s"] / point["wall_s"] / cores, 0)


def cloud_resume(r: Report) -> Lines:
    lines = table(
        [
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
        ],
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
    return lines + targets(
        [
            (
                "every session completes after random disconnects, 0 lost, 0 duplicated events",
                f"{r['completed']}/{r['sessions']} completed, {r['lost_events']} lost, {r['duplicated_events']} duplicated",
                clean,
            )
        ]
    )


def student_latency(r: Report) -> Lines:
    latency, sizes = r["latency"], r["size_bytes"]
    int8_p50 = latency["onnx_int8"]["p50_ms"]
    size_key = {"onnx_int8": "onnx_int8", "onnx_fp32": "onnx_fp32", "torch_fp32": "torch_fp32_safetensors"}
    rows = [
        (
            name,
            num(s["p50_ms"]),
            num(s["p99_ms"]),
            num(s["mean_ms"]),
            ratio(s["p50_ms"] / int8_p50),
            num(sizes[size_key[name]] / 2**20, 1),
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
                f"{num(cold['p50_ms'])} ms, p99 {num(cold['p99_ms'])} ms ({ratio(cold['p50_ms'] / int8_p50)} the steady p50)."
            ),
        ]
    speedup = r["speedup_p50"]["int8_vs_torch_fp32"]
    return lines + targets(
        [
            (f"int8 ONNX p50 <= {STUDENT_P50_MS:g} ms", f"{num(int8_p50)} ms", int8_p50 <= STUDENT_P50_MS),
            (
                f"int8 ONNX >= {STUDENT_SPEEDUP:g}x faster than PyTorch fp32 (p50)",
                ratio(speedup),
                speedup >= STUDENT_SPEEDUP,
            ),
        ]
    )


def routing_quality(r: Report) -> Lines:
    routers = r["routers"]
    edge, cloud, cal = r["edge_only_accuracy"], r["cloud_only_accuracy"], r["calibrated"]
    lines = [
        (
            f"{r['n']} mixed test queries (multi-step share {pct(r['multi_step_share'])}); each answered by the "
            "edge student and the cloud teacher, routers choose which answer counts."
        ),
        "",
    ]
    lines += table(
        ["", "system accuracy", "of cloud-only", "escalated"],
        [
            ("edge only", pct(edge), pct(edge / cloud if cloud else None), pct(0.0)),
            ("cloud only", pct(cloud), pct(1.0), pct(1.0)),
            (
                f"calibrated threshold ({num(cal['threshold'], 3)})",
                pct(cal["system_accuracy"]),
                pct(cal["of_cloud"]),
                pct(cal["escalation_share"]),
            ),
            (
                "oracle (escalate exactly the edge's misses)",
                pct(r["oracle_point"]["system_accuracy"]),
                pct(r["oracle_point"]["of_cloud"]),
                pct(r["oracle_point"]["escalation_share"]),
            ),
        ],
    )
    random_apgr, oracle_apgr = routers["random"]["apgr"], routers["oracle"]["apgr"]
    rows = [
        (
            name,
            num(s["apgr"], 3),
            ratio(s["apgr"] / random_apgr if random_apgr else None),
            ratio(s["apgr"] / oracle_apgr if oracle_apgr else None),
            pct(s["cpt_95_cloud_accuracy"]),
            pct(s["cpt_95_pgr"]),
        )
        for name, s in routers.items()
    ]
    lines += table(
        [
            "router",
            "APGR",
            "APGR / random",
            "APGR / oracle",
            "escalated for 95% of cloud accuracy",
            "escalated for PGR 0.95",
        ],
        rows,
    )
    target = r["target"]
    best = target["confidence_sweep"]["best_within_cap"]
    return lines + targets(
        [
            (
                f"{target['rule']} (at the calibrated threshold)",
                (
                    f"{pct(cal['of_cloud'])} of cloud at {pct(cal['escalation_share'])} escalated "
                    f"(cap {pct(target['max_escalation_share'])})"
                ),
                target["calibrated_met"],
            ),
            (
                "the same, best confidence threshold within the cap",
                f"{pct(best['of_cloud'])} of cloud at {pct(best['escalation_share'])} escalated",
                best["met"],
            ),
            (
                f"APGR of the confidence router >= {APGR_TARGET:g}",
                num(routers["confidence"]["apgr"], 3),
                routers["confidence"]["apgr"] >= APGR_TARGET,
            ),
        ]
    )


def feature_codec(r: Report) -> Lines:
    encoded, cosine, t = r["encoded_bytes"], r["cosine"], r["time_us_per_vector"]
    lines = [
        (
            f"{r['queries']} mixed test queries through the shipped student, {r['feature_dim']}-d features, "
            f"int8 levels {num(r['config']['levels'], 0)}, zstd level {r['config']['zstd_level']}."
        ),
        "",
    ]
    lines += table(
        [
            "raw float32 bytes",
            "wire bytes mean",
            "payload bytes mean",
            "raw / wire",
            "raw / payload",
            "cosine mean",
            "cosine min",
            "encode us p50",
            "decode us p50",
        ],
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
    return lines + targets(
        [
            (f"wire bytes >= {goal['ratio']:g}x smaller than raw float32", ratio(r["ratio"]), goal["ratio_met"]),
            (
                f"round-trip cosine >= {goal['cosine_min']} (every vector)",
                f"min {num(cosine['min'], 5)}",
                goal["cosine_met"],
            ),
        ]
    )


def swap_under_load(r: Report) -> Lines:
    latency = r["swap_latency_ms"] or {}
    lines = table(
        [
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
        ],
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
    return lines + targets([(f"0 failed requests during {SWAP_TARGET} swaps", measured, met)])


def fleet_scale(r: Report) -> Lines:
    connect, steady, totals = r["connect"], r["telemetry"], r["telemetry_totals"]
    lines = [
        (
            f"{r['devices']} simulated devices (MQTT 5 clients in their own process), telemetry every "
            f"{num(r['telemetry_interval_s'], 1)} s, real mosquitto and fleet manager."
        ),
        "",
    ]
    lines += table(
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
    rollout = r.get("rollout")
    if rollout is not None:
        during = rollout["telemetry_during_rollout"]
        absorbed = during["absorbed_per_s"] / during["published_per_s"] if during["published_per_s"] else None
        lines += table(
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
    phases = [(name, r[name]["cpu_percent"]) for name in ("connect", "telemetry", "rollout") if name in r]
    lines += ["CPU % of one core per process and phase:", ""]
    lines += table(
        ["phase", "manager", "devices", "mosquitto"],
        [(name, num(c["manager"], 1), num(c["devices"], 1), num(c["mosquitto"], 1)) for name, c in phases],
    )
    return lines + targets(
        [
            (
                "the rollout reaches every device",
                "-" if rollout is None else f"{rollout['succeeded']}/{r['devices']}",
                None if rollout is None else rollout["status"] == "COMPLETED" and rollout["succeeded"] == r["devices"],
            ),
            ("no telemetry lost", f"{totals['lost']} lost of {totals['published']}", totals["lost"] == 0),
        ]
    )


def _p50_p99(stats: dict[str, float] | None) -> str:
    return "-" if not stats else f"{num(stats['p50'], 1)} / {num(stats['p99'], 1)}"


def generic(r: Report) -> Lines:
    """For a benchmark without a section of its own: its top-level figures."""
    rows = [
        (key, num(value, 4))
        for key, value in r.items()
        if isinstance(value, int | float | str | bool) and key != "benchmark"
    ]
    return table(["field", "value"], rows)


# -- plots for the scripts that draw none ------------------------------------------------


def _figure(width: float = 6.0, height: float = 3.4, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), dpi=100)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_feature_codec(r: Report, out: Path) -> None:
    fig, ax = _figure()
    labels = ["raw float32", "wire (mean)", "payload (mean)"]
    values = [r["raw_float32_bytes"], r["encoded_bytes"]["mean"], r["payload_bytes"]["mean"]]
    bars = ax.bar(labels, values, color=["grey", "C0", "C2"])
    ax.bar_label(bars, [f"{v:.0f} B" for v in values])
    ax.margins(y=0.12)
    ax.set_ylabel("bytes per escalation")
    ax.set_title(f"Feature codec: {r['ratio']:.2f}x smaller, cosine min {r['cosine']['min']:.4f}")
    _save(fig, out / "feature_codec.png")


def plot_swap_under_load(r: Report, out: Path) -> None:
    latency = r["swap_latency_ms"]
    if not latency:
        return
    fig, ax = _figure()
    bars = ax.bar(["p50", "p99", "max"], [latency["p50"], latency["p99"], latency["max"]], color="C0")
    ax.bar_label(bars, [f"{v:.0f} ms" for v in (latency["p50"], latency["p99"], latency["max"])])
    ax.margins(y=0.12)
    ax.set_ylabel("command publish -> new version serving (ms)")
    ax.set_title(
        f"{r['swaps_completed']} hot swaps under {r['requests_per_s']:.0f} req/s, "
        f"{r['failed_requests']} failed requests"
    )
    _save(fig, out / "swap_under_load.png")


def plot_fleet_scale(r: Report, out: Path) -> None:
    rollout = r.get("rollout")
    fig, (left, right) = _figure(9.0, 3.4, ncols=2)
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
    _save(fig, out / "fleet_scale.png")


# -- the benchmarks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    name: str
    section: Callable[[Report], Lines] = generic
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    """Arguments added by ``--quick`` (a smoke run)."""
    timeout_s: float = 1800
    output: str = "out"
    """How the script is told where to write: ``out`` (``--out DIR``), ``png`` (``--png DIR/<name>.png``), ``none``."""
    plot: Callable[[Report, Path], None] | None = None
    """Draws ``<name>.png`` for a script that draws no plot itself."""
    script: Path | None = None
    """Defaults to ``benchmarks/<name>.py``."""

    def command(self, out: Path, quick: bool) -> list[str]:
        command = [sys.executable, _shown(self.script or HERE / f"{self.name}.py"), *self.args]  # cwd: REPO
        if quick:
            command += self.quick
        if self.output == "out":
            command += ["--out", _shown(out)]
        elif self.output == "png":
            command += ["--png", _shown(out / f"{self.name}.png")]
        return command


BENCHMARKS = (
    Benchmark("cloud_throughput", cloud_throughput, quick=("--quick",), timeout_s=3600),
    Benchmark("cloud_resume", cloud_resume, quick=("--quick",), timeout_s=1800, output="none"),
    Benchmark("student_latency", student_latency, quick=("--n", "50"), timeout_s=900, output="png"),
    Benchmark("routing_quality", routing_quality, quick=("--quick",), timeout_s=3600),
    Benchmark("feature_codec", feature_codec, quick=("--n", "200"), timeout_s=900, plot=plot_feature_codec),
    Benchmark("swap_under_load", swap_under_load, quick=("--swaps", "3"), timeout_s=900, plot=plot_swap_under_load),
    Benchmark(
        "fleet_scale", fleet_scale, quick=("--devices", "100", "--window", "3"), timeout_s=1200, plot=plot_fleet_scale
    ),
)


# -- running them ------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    command: list[str]
    returncode: int | None = None
    timed_out: bool = False
    elapsed_s: float = 0.0
    loadavg_before: tuple[float, ...] = ()
    loadavg_after: tuple[float, ...] = ()
    report: Report | None = None
    problem: str = ""
    """Why it failed ("" if it did not)."""
    stderr_tail: str = ""
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def shown(self) -> str:
        """The command as a reader would type it in the repository root."""
        return " ".join(shlex.quote(part) for part in [_shown(Path(self.command[0])), *self.command[1:]])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "problem": self.problem,
            "returncode": self.returncode,
            "timed_out": self.timed_out,
            "elapsed_s": round(self.elapsed_s, 3),
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            "command": self.shown,
            "stderr_tail": "" if self.ok else self.stderr_tail,
        }

    @classmethod
    def load(cls, entry: dict[str, Any], results: Path) -> Outcome:
        """An outcome as ``run.json`` recorded it, with the JSON and plots now in ``results``."""
        out = results / entry["name"]
        written = out / f"{entry['name']}.json"
        return cls(
            entry["name"],
            shlex.split(entry["command"]),
            returncode=entry["returncode"],
            timed_out=entry["timed_out"],
            elapsed_s=entry["elapsed_s"],
            loadavg_before=tuple(entry["loadavg_before"]),
            loadavg_after=tuple(entry["loadavg_after"]),
            report=json.loads(written.read_text()) if written.exists() else None,
            problem=entry["problem"],
            stderr_tail=entry["stderr_tail"],
            files=_files(out),
        )


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _shown(path: Path) -> str:
    """An absolute ``path`` relative to the repository root when it lies inside it (as the scripts
    record it); a relative one as it is."""
    if not path.is_absolute():
        return str(path)
    path = Path(os.path.normpath(path))  # not resolve(): .venv/bin/python is a link to the base interpreter
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _progress(name: str, index: int, total: int, started: float, done: threading.Event) -> None:
    """A live ``[i/n] name  elapsed`` line on stderr: rewritten every second on a terminal,
    a new line every minute otherwise."""
    tty = sys.stderr.isatty()
    while not done.wait(1.0 if tty else 60.0):
        elapsed = time.monotonic() - started
        if tty:
            print(f"\r[{index}/{total}] {name:<18} {elapsed:6.0f} s", end="", file=sys.stderr, flush=True)
        else:
            print(f"[{index}/{total}] {name:<18} still running, {elapsed:.0f} s", file=sys.stderr, flush=True)


def _parse_json(text: str) -> Report | None:
    """The JSON object a script printed: all of stdout, else from its first line that opens an object."""
    for start in [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and text[i + 1 : i + 2] == "{"]:
        try:
            value = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_one(bench: Benchmark, results: Path, quick: bool, timeout_s: float | None, index: int, total: int) -> Outcome:
    out = (results / bench.name).absolute()
    shutil.rmtree(out, ignore_errors=True)  # nothing stale may pass for this run's figures
    out.mkdir(parents=True)
    outcome = Outcome(bench.name, bench.command(out, quick), loadavg_before=os.getloadavg())
    limit = timeout_s if timeout_s is not None else bench.timeout_s
    print(f"[{index}/{total}] {bench.name:<18} started (timeout {limit:.0f} s)", file=sys.stderr, flush=True)
    started, done = time.monotonic(), threading.Event()
    ticker = threading.Thread(target=_progress, args=(bench.name, index, total, started, done), daemon=True)
    ticker.start()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(outcome.command, cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            outcome.returncode = process.wait(limit)
        except subprocess.TimeoutExpired:
            outcome.timed_out = True
            _kill_group(process)
            outcome.returncode = process.wait()
        finally:
            done.set()
            ticker.join()
        outcome.elapsed_s = time.monotonic() - started
        outcome.loadavg_after = os.getloadavg()
        stdout.seek(0)
        stderr.seek(0)
        printed = stdout.read().decode(errors="replace")
        outcome.stderr_tail = _tail(stderr.read().decode(errors="replace"))
    written = out / f"{bench.name}.json"
    outcome.report = _parse_json(printed)
    if outcome.report is None and written.exists():
        outcome.report = _parse_json(written.read_text())
    if outcome.report is not None:
        written.write_text(json.dumps(outcome.report, indent=2) + "\n")
        if bench.plot is not None:
            try:
                bench.plot(outcome.report, out)
            except Exception as exc:  # noqa: BLE001 - a plot never hides the figures
                outcome.problem = f"plot failed: {type(exc).__name__}: {exc}"
    if outcome.timed_out:
        outcome.problem = f"timed out after {limit:.0f} s"
    elif outcome.returncode != 0:
        outcome.problem = f"exit code {outcome.returncode}"
    elif outcome.report is None:
        outcome.problem = "no JSON on stdout or in its output folder"
    outcome.files = _files(out)
    status = "ok" if outcome.ok else f"FAILED: {outcome.problem}"
    end = "\r" if sys.stderr.isatty() else ""
    print(f"{end}[{index}/{total}] {bench.name:<18} {outcome.elapsed_s:6.0f} s  {status}", file=sys.stderr, flush=True)
    return outcome


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the benchmark's process group (it and what it started), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(text: str, lines: int = 20, chars: int = 3000) -> str:
    kept = [line for line in text.replace("\r", "\n").splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-chars:]


# -- the machine -------------------------------------------------------------------------------


def _proc_field(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _os_name() -> str:
    pretty = ""
    try:
        pretty = next(
            (
                line.split("=", 1)[1].strip('"')
                for line in Path("/etc/os-release").read_text().splitlines()
                if line.startswith("PRETTY_NAME=")
            ),
            "",
        )
    except OSError:
        pass
    return f"{pretty}, {platform.platform()}" if pretty else platform.platform()


def machine(outputs: Sequence[Path] = ()) -> dict[str, Any]:
    """The machine, its packages, and the commit; a file under ``outputs`` (what this run
    writes) does not make the tree dirty."""
    memory = _proc_field("/proc/meminfo", "MemTotal")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        broker = subprocess.run(
            [mosquitto, "-h"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split("\n")[0]
    except OSError:
        broker = "not found"
    written = [_shown(path.absolute()) for path in outputs]
    changed = [
        line
        for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
        if line and not any(line[3:] == w or line[3:].startswith(w.rstrip("/") + "/") for w in written)
    ]
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
        "os": _os_name(),
        "python": platform.python_version(),
        "packages": {
            name: _version(name)
            for name in ("torch", "transformers", "onnxruntime", "grpcio", "paho-mqtt", "numpy", "zstandard")
        },
        "mosquitto": broker.strip(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(changed),
        "git_changed_files": len(changed),
    }


# -- the Markdown report --------------------------------------------------------------------------


def render(
    run: dict[str, Any], outcomes: Sequence[Outcome], md_path: Path, sections: dict[str, Callable[[Report], Lines]]
) -> str:
    m = run["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in m["packages"].items())
    dirty = f"dirty: {m['git_changed_files']} tracked files changed" if m["git_dirty"] else "clean"
    dirty += ", not counting this report and its results"
    lines = [
        "# Benchmark results",
        "",
        (
            "Generated by `benchmarks/run_all.py`; every comparison below is a ratio of two figures measured in the "
            "same run of the same benchmark, on this machine."
        ),
        "",
        "```",
        run["command"],
        "```",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu_model']}, {m['cpu_count']} cores |",
        f"| RAM | {num(m['memory_gib'], 1)} GiB |",
        f"| OS | {m['os']} |",
        f"| Python | {m['python']} |",
        f"| packages | {packages} |",
        f"| broker | {m['mosquitto']} |",
        f"| git commit | `{m['git_commit']}` ({dirty}) |",
        f"| date (UTC) | {run['started']} to {run['finished']} |",
        f"| load average (1, 5, 15 min) | before {_load(run['loadavg_before'])}, after {_load(run['loadavg_after'])} |",
        (
            f"| mode | {'quick (a smoke run, small sizes)' if run['quick'] else 'full'}, "
            f"wall time {num(run['wall_s'], 0)} s |"
        ),
        "",
        (
            "The machine may have been shared with other work while this ran: the load average before and after each "
            "benchmark is in the summary."
        ),
        "",
        "## Summary",
        "",
    ]
    lines += table(
        ["benchmark", "status", "wall s", "load before -> after"],
        [
            (
                f"[{o.name}](#{o.name})",
                "ok" if o.ok else f"**FAILED**: {o.problem}",
                num(o.elapsed_s, 0),
                f"{_load(o.loadavg_before[:1])} -> {_load(o.loadavg_after[:1])}",
            )
            for o in outcomes
        ],
    )
    for o in outcomes:
        lines += [f"## {o.name}", "", "```", o.shown, "```", ""]
        if not o.ok:
            lines += [
                f"**FAILED**: {o.problem} (ran {num(o.elapsed_s, 0)} s). The last lines of its stderr:",
                "",
                "```",
                o.stderr_tail or "(nothing)",
                "```",
                "",
            ]
        if o.report is not None:
            try:
                lines += sections.get(o.name, generic)(o.report)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                lines += [f"(its JSON lacks a figure this report expects: {type(exc).__name__}: {exc})", ""]
                lines += generic(o.report)
        for path in o.files:
            relative = Path(os.path.relpath(path.resolve(), md_path.resolve().parent)).as_posix()
            if path.suffix == ".png":
                lines += [f"![{o.name}]({relative})", ""]
        json_files = [p for p in o.files if p.suffix == ".json"]
        if json_files:
            relative = Path(os.path.relpath(json_files[0].resolve(), md_path.resolve().parent)).as_posix()
            lines += [f"Full figures: [{json_files[0].name}]({relative})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _load(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# -- main ------------------------------------------------------------------------------------------


def _extra(spec: str) -> Benchmark:
    name, sep, script = spec.partition("=")
    if not sep or not name or not script:
        raise argparse.ArgumentTypeError(f"expected NAME=SCRIPT, got {spec!r}")
    return Benchmark(name, script=Path(script).absolute(), timeout_s=600)


def main(argv: Sequence[str] | None = None) -> int:
    names = [bench.name for bench in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these, of: {', '.join(names)}")
    parser.add_argument("--quick", action="store_true", help="each script's small options: a smoke run of minutes")
    parser.add_argument("--out-md", type=Path, default=HERE / "RESULTS.md", help="the Markdown report")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="JSON and plots, one folder each")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: each its own)")
    parser.add_argument(
        "--extra",
        type=_extra,
        action="append",
        default=[],
        metavar="NAME=SCRIPT",
        help="also run SCRIPT as benchmark NAME (given --out DIR; reported field by field)",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: draw run_all's plots and write the report again from <results>/run.json and the JSON there",
    )
    args = parser.parse_args(argv)
    benchmarks = [*BENCHMARKS, *args.extra]
    sections = {bench.name: bench.section for bench in benchmarks}
    if args.render_only:
        summary = json.loads((args.results / "run.json").read_text())
        plots = {bench.name: bench.plot for bench in benchmarks if bench.plot is not None}
        for entry in summary["benchmarks"]:
            written = args.results / entry["name"] / f"{entry['name']}.json"
            if entry["name"] in plots and written.exists():
                plots[entry["name"]](json.loads(written.read_text()), written.parent)
        outcomes = [Outcome.load(entry, args.results) for entry in summary.pop("benchmarks")]
        args.out_md.write_text(render(summary, outcomes, args.out_md, sections))
        return 0 if all(o.ok for o in outcomes) else 1
    if args.only:
        known = {bench.name for bench in benchmarks}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        benchmarks = [bench for bench in benchmarks if bench.name in args.only]

    shown_argv = [_shown(Path(sys.executable)), _shown(Path(__file__)), *(sys.argv[1:] if argv is None else argv)]
    run: dict[str, Any] = {
        "command": " ".join(shlex.quote(part) for part in shown_argv),
        "quick": args.quick,
        "machine": machine([args.results, args.out_md]),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_before": os.getloadavg(),
    }
    started = time.monotonic()
    args.results.mkdir(parents=True, exist_ok=True)
    outcomes = [
        run_one(bench, args.results, args.quick, args.timeout, i, len(benchmarks))
        for i, bench in enumerate(benchmarks, 1)
    ]
    run |= {
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_after": os.getloadavg(),
        "wall_s": time.monotonic() - started,
    }
    summary = {**run, "benchmarks": [o.to_dict() for o in outcomes]}
    (args.results / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(render(run, outcomes, args.out_md, sections))
    failed = [o.name for o in outcomes if not o.ok]
    print(
        f"wrote {args.out_md} ({len(outcomes) - len(failed)} ok, {len(failed)} failed"
        f"{': ' + ', '.join(failed) if failed else ''}) in {run['wall_s']:.0f} s",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
