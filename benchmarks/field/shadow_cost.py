"""Shadow checks' cost: the same traffic through the same edge and cloud, with and without them.

Each round starts two fresh real Reasoner servers in turn (gRPC on loopback, SQLite store, the
shipped demo teacher on CPU, batched, an escalation log) and drives the same unique mixed test
queries through a real :class:`~edgecloud.edge.service.EdgeService` on the shipped student,
``--concurrency`` at a time, ``--cloud-share`` of them sent to the cloud by their users (route
``cloud``: the shipped student keeps nearly every test query, so without them the cloud idles, as
a deployment sized for its escalations does not): once with shadow checks off (``shadow_share 0``) and once at
``--share`` (default 0.02, the daemon's default; the per-minute cap raised so that the share, not
the cap, decides). Which mode goes first alternates by round; every server is fresh, so the
result cache never answers a query the other mode sent.

Per mode: the wall time until every user query is answered *and* every shadow check has finished
(so the checks' cloud work counts), the cloud's escalations per second over that time, the
reasoning tokens the cloud generated (from its escalation log, by record kind), and the users'
latency: kept answers (local) and escalated answers (through the cloud), p50 and p99.

The issue's targets: at 2%, shadow checks cost at most 3% of cloud throughput (the ratio of
escalations/s with over without, and the checks' share of the cloud's reasoning tokens) and no
measurable user latency (p50/p99 with vs without, next to the spread between rounds of the same
mode). Usage::

    python benchmarks/field/shadow_cost.py [--rounds 3] [--queries 240] [--concurrency 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.support.cloud import (
    RunningServer,
    busy_cpu_s,
    edge_service,
    load_teacher,
    machine_info,
    unique_problems,
)
from edgecloud.cloud.engine import EngineConfig
from edgecloud.cloud.sessions import SessionConfig
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.runtime import EdgeBundle
from edgecloud.edge.service import EdgeService, QueryRequest, QueryResult
from edgecloud.edge.triage import Requested
from edgecloud.modelkit.arithmetic.task import Problem, parse_answer
from edgecloud.shared.escalations.records import read_escalations

REPO = Path(__file__).resolve().parents[2]
STUDENT = REPO / "models" / "edge-student"
TARGET_THROUGHPUT_COST = 0.03
MODES = ("off", "on")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def routes(n: int, cloud_share: float, seed: int) -> list[Requested]:
    """Which queries the users send to the cloud themselves (the same in both modes)."""
    rng = random.Random(seed)
    return [Requested.CLOUD if rng.random() < cloud_share else Requested.AUTO for _ in range(n)]


async def _drive(
    service: EdgeService, problems: list[Problem], route: list[Requested], concurrency: int
) -> list[QueryResult]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(problem: Problem, requested: Requested) -> QueryResult:
        async with semaphore:
            return await service.query(QueryRequest(query=problem.query, route=requested))

    return await asyncio.gather(*(one(p, r) for p, r in zip(problems, route, strict=True)))


async def _serve(
    server: RunningServer,
    bundle: EdgeBundle,
    problems: list[Problem],
    route: list[Requested],
    share: float,
    args: Any,
    work: Path,
) -> tuple[list[QueryResult], float, int]:
    """The queries through a fresh edge service: results, wall time (shadow checks drained), checks skipped."""
    config = EdgeConfig(
        bundle=STUDENT, outbox=work / "outbox.sqlite3", cloud="bench", shadow_share=share, shadow_per_minute=60_000.0
    )
    service = edge_service(config, bundle, server)
    await service.start()
    try:
        started = time.perf_counter()
        results = await _drive(service, problems, route, args.concurrency)
        if service.shadow is not None:
            await service.shadow.drain()  # the checks' cloud work counts in the wall time
        wall = time.perf_counter() - started
        return results, wall, service.shadow.skipped if service.shadow is not None else 0
    finally:
        await service.stop()


def run_mode(
    bundle: EdgeBundle,
    loaded: Any,
    problems: list[Problem],
    route: list[Requested],
    share: float,
    args: Any,
    work: Path,
) -> dict:
    log_path = work / "escalations.jsonl"
    server = RunningServer(
        work / "store.sqlite3", EngineConfig(max_batch=32), loaded, sessions=SessionConfig(escalation_log=log_path)
    )
    cpu_before, own_before = busy_cpu_s(), time.process_time()
    try:
        results, wall, skipped = asyncio.run(_serve(server, bundle, problems, route, share, args, work))
    finally:
        server.stop()
    other_cpu = (busy_cpu_s() - cpu_before) - (time.process_time() - own_before)
    records = read_escalations(log_path) if log_path.exists() else []
    checks = [r for r in records if r.kind == "shadow_check"]
    kept = [r for r in results if r.route_taken == "edge"]
    escalated = [r for r in results if r.route_taken == "cloud"]
    return {
        "share": share,
        "queries": len(results),
        "kept": len(kept),
        "sent_to_cloud_by_users": sum(r is Requested.CLOUD for r in route),
        "escalated": len(escalated),
        "wall_s": round(wall, 3),
        "escalations_per_s": len(escalated) / wall,
        "correct": sum(parse_answer(r.answer or "") == p.answer for r, p in zip(results, problems, strict=True)),
        "shadow_checks": len(checks),
        "shadow_checks_skipped": skipped,
        "shadow_agreed": sum(
            r.edge is not None and parse_answer(r.edge.answer) == parse_answer(r.answer) for r in checks
        ),
        "cloud_sessions": len(records),
        "cloud_reasoning_tokens": {
            kind: sum(r.reasoning_tokens for r in records if r.kind == kind) for kind in ("escalation", "shadow_check")
        },
        "latency_ms": {
            "kept_p50": percentile([r.latency_ms for r in kept], 50),
            "kept_p99": percentile([r.latency_ms for r in kept], 99),
            "escalated_p50": percentile([r.latency_ms for r in escalated], 50),
            "escalated_p99": percentile([r.latency_ms for r in escalated], 99),
        },
        "other_processes_cpu_s": round(other_cpu, 2),
    }


def summarise(rounds: list[dict[str, dict]]) -> dict[str, Any]:
    """Medians per mode over the rounds, the with/without ratios, and the spread between rounds."""

    def values(mode: str, key: str, sub: str | None = None) -> list[float]:
        return [
            (r[mode][key][sub] if sub else r[mode][key])
            for r in rounds
            if (r[mode][key][sub] if sub else r[mode][key]) is not None
        ]

    out: dict[str, Any] = {}
    off_rate, on_rate = (
        statistics.median(values("off", "escalations_per_s")),
        statistics.median(values("on", "escalations_per_s")),
    )
    per_round = [r["on"]["escalations_per_s"] / r["off"]["escalations_per_s"] for r in rounds]
    check_tokens = sum(r["on"]["cloud_reasoning_tokens"].get("shadow_check", 0) for r in rounds)
    all_tokens = sum(sum(r["on"]["cloud_reasoning_tokens"].values()) for r in rounds)
    checks = sum(r["on"]["shadow_checks"] for r in rounds)
    out["throughput"] = {
        "escalations_per_s_off_median": off_rate,
        "escalations_per_s_on_median": on_rate,
        "ratio_on_over_off_median": statistics.median(per_round),
        "ratio_per_round": per_round,
        "cost_median": 1 - statistics.median(per_round),
        "shadow_checks": checks,
        "shadow_check_sessions_share": checks / max(1, sum(r["on"]["cloud_sessions"] for r in rounds)),
        "shadow_check_reasoning_tokens_share": check_tokens / max(1, all_tokens),
        "target_cost": TARGET_THROUGHPUT_COST,
    }
    latency: dict[str, Any] = {}
    for key in ("kept_p50", "kept_p99", "escalated_p50", "escalated_p99"):
        off, on = values("off", "latency_ms", key), values("on", "latency_ms", key)
        if off and on:
            latency[key] = {
                "off_median": statistics.median(off),
                "on_median": statistics.median(on),
                "ratio_on_over_off": statistics.median(on) / statistics.median(off),
                "off_range": [min(off), max(off)],
                "on_range": [min(on), max(on)],
            }
    out["latency_ms"] = latency
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    x = range(1, len(rounds) + 1)
    for ax, key, sub, title in (
        (axes[0], "escalations_per_s", None, "cloud escalations / s"),
        (axes[1], "latency_ms", "kept_p99", "kept answers, p99 ms"),
        (axes[2], "latency_ms", "escalated_p99", "escalated answers, p99 ms"),
    ):
        for mode, offset in (("off", -0.18), ("on", 0.18)):
            heights = [(r[mode][key][sub] if sub else r[mode][key]) or 0 for r in rounds]
            label = "shadow off" if mode == "off" else f"shadow {report['settings']['share']:.0%}"
            ax.bar([i + offset for i in x], heights, 0.36, label=label)
        ax.set_xticks(list(x), [f"round {i}" for i in x])
        ax.set_title(title)
        ax.legend(loc="lower right")
    fig.suptitle("Shadow checks: same queries, fresh cloud per mode, with and without")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=240, help="unique mixed test queries per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--share", type=float, default=0.02)
    parser.add_argument(
        "--cloud-share",
        type=float,
        default=0.5,
        help="the share of queries users send to the cloud themselves (route cloud): the student keeps nearly "
        "every test query, so without them the cloud idles and the checks cost nothing measurable",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the teacher")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="1 round of 60 queries")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "shadow_cost")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.queries = 1, 60
    if not 0 < args.share <= 1 or args.rounds < 1 or args.queries < 1:
        parser.error("--share must be in (0, 1], --rounds and --queries at least 1")
    import torch

    torch.set_num_threads(args.threads)
    loaded = load_teacher()
    bundle = EdgeBundle.load(STUDENT, threads=1)
    load_before = os.getloadavg()
    rounds: list[dict[str, dict]] = []
    for index in range(args.rounds):
        problems = unique_problems(args.queries, args.seed + index)
        route = routes(len(problems), args.cloud_share, args.seed + index)
        order = MODES if index % 2 == 0 else MODES[::-1]
        row: dict[str, dict] = {}
        for mode in order:
            with tempfile.TemporaryDirectory(prefix=f"shadow-{mode}-") as tmp:
                row[mode] = run_mode(
                    bundle, loaded, problems, route, args.share if mode == "on" else 0.0, args, Path(tmp)
                )
            print(f"round {index + 1} {mode}: {json.dumps(row[mode])}", file=sys.stderr, flush=True)
        row["first"] = order[0]  # type: ignore[assignment]
        rounds.append(row)
    report = {
        "benchmark": "shadow_cost",
        "machine": {**machine_info(args.threads), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": {
            "rounds": args.rounds,
            "queries": args.queries,
            "concurrency": args.concurrency,
            "share": args.share,
            "seed": args.seed,
        },
        "rounds": rounds,
        "summary": summarise(rounds),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shadow_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "shadow_cost.png")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
