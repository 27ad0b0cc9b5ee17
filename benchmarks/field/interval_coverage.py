"""Does a version's field agreement interval contain its precision measured offline on the same traffic?

The fleet judges a version by the agreement of its kept answers with the cloud's, a 95% Wilson
interval over the shadow checks its devices ran (:mod:`edgecloud.shared.fleetlink.quality`). This
checks that figure against the truth: ``--runs`` independent runs of fresh traffic (``--queries``
unique mixed test queries each, a new seed per run) through a real
:class:`~edgecloud.edge.service.EdgeService` that checks ``--share`` of its kept answers with a
real Reasoner server (gRPC on loopback, the shipped demo teacher). Per run: the interval from the
service's own field counts (what its telemetry reports), and the precision of *every* answer it
kept on that run's traffic, measured offline against the task's exact answers. A run counts when
the interval contains the precision; the issue's target is at least 19 of 20.

Two versions by default: the shipped student (``good``) and the same student writing 8 for every
9 (``defective``: a ``Replace`` step in its tokenizers' decoder, so it is wrong as confidently as
it is right on the answers with a 9), where precision is far from 100% and the interval has work
to do. The cloud's own mistakes on the checked queries are counted too: agreement measures
precision only as far as the cloud is right. Usage::

    python benchmarks/field/interval_coverage.py [--runs 20] [--queries 300] [--share 0.35] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.support.cloud import RunningServer, edge_service, load_teacher, machine_info, unique_problems
from edgecloud.cloud.engine import EngineConfig
from edgecloud.cloud.sessions import SessionConfig
from edgecloud.edge.config import EdgeConfig, ShadowPolicy
from edgecloud.edge.field.shadow import ShadowChecker
from edgecloud.edge.runtime import EdgeBundle
from edgecloud.edge.service import QueryRequest, QueryResult
from edgecloud.modelkit.arithmetic.task import Problem, normalize_query, parse_answer
from edgecloud.shared.bundles.manifest import load_manifest, write_bundle
from edgecloud.shared.escalations.records import read_escalations
from edgecloud.shared.fleetlink.quality import Rate

REPO = Path(__file__).resolve().parents[2]
STUDENT = REPO / "models" / "edge-student"
TARGET = (19, 20)


def defective_copy(source: Path, directory: Path) -> Path:
    """``source`` writing 8 for every 9, as a new version (unsigned: it is loaded here, not deployed)."""
    shutil.copytree(source, directory)
    (directory / "manifest.sig").unlink(missing_ok=True)
    for path in directory.rglob("tokenizer.json"):
        tokenizer = json.loads(path.read_text())
        replace = {"type": "Replace", "pattern": {"String": "9"}, "content": "8"}
        tokenizer["decoder"] = {"type": "Sequence", "decoders": [tokenizer["decoder"], replace]}
        path.write_text(json.dumps(tokenizer))
    old = load_manifest(directory)
    (directory / "manifest.json").unlink()
    write_bundle(directory, name=old.name, kind="edge", version=old.version + 1, io=old.io,
                 calibration=old.calibration, golden=[], metadata=old.metadata)  # fmt: skip
    return directory


async def _one_run(
    bundle: EdgeBundle, server: RunningServer, problems: list[Problem], args: Any, work: Path
) -> tuple[list[QueryResult], Rate, dict[str, int]]:
    config = EdgeConfig(bundle=bundle.directory, outbox=work / "outbox.sqlite3", cloud="bench", shadow_share=0.0)
    service = edge_service(config, bundle, server)
    # no per-minute cap (a run's sample is its share); at most 16 in flight, below the cloud's batch, so the
    # cloud sheds none (a skip is decided by timing alone, not by whether the answer is right)
    policy = ShadowPolicy(share=args.share, per_minute=1e6, max_in_flight=16)
    service.shadow = ShadowChecker(service.client, service.quality, policy, device_id="coverage")
    await service.start()
    try:
        semaphore = asyncio.Semaphore(args.concurrency)

        async def one(problem: Problem) -> QueryResult:
            async with semaphore:
                return await service.query(QueryRequest(query=problem.query))

        results = await asyncio.gather(*(one(p) for p in problems))
        await service.shadow.drain()
        counts = service.quality.of(bundle.name, bundle.version)
        return results, Rate(counts.agreed, counts.checks), {"shed": counts.shed, "skipped": service.shadow.skipped}
    finally:
        await service.stop()


def run_version(name: str, directory: Path, server: RunningServer, log: Path, args: Any, work: Path) -> dict:
    bundle = EdgeBundle.load(directory, threads=1)
    runs = []
    truth: dict[str, int] = {}
    for index in range(args.runs):
        problems = unique_problems(args.queries, args.seed + index)
        truth.update({normalize_query(p.query): p.answer for p in problems})
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            results, field, shed = asyncio.run(_one_run(bundle, server, problems, args, Path(tmp)))
        kept = [(r, p) for r, p in zip(results, problems, strict=True) if r.route_taken == "edge"]
        right = sum(parse_answer(r.answer or "") == p.answer for r, p in kept)
        precision = right / len(kept) if kept else float("nan")
        low, high = field.interval
        runs.append({
            "run": index + 1, "queries": len(problems), "kept": len(kept), "kept_right": right,
            "precision_offline": precision, "checks": field.trials, "agreed": field.successes, **shed,
            "agreement": field.value, "interval": [low, high], "contains": low <= precision <= high,
            "wall_s": round(time.perf_counter() - started, 2),
        })  # fmt: skip
        print(f"{name} run {index + 1}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    checked = [r for r in read_escalations(log) if r.kind == "shadow_check"] if log.exists() else []
    cloud_wrong = sum(parse_answer(r.answer) != truth.get(normalize_query(r.query)) for r in checked)
    return {
        "bundle": {"name": bundle.name, "version": bundle.version, "directory": str(directory)},
        "runs": runs,
        "contained": sum(r["contains"] for r in runs),
        "of": len(runs),
        "mean_precision_offline": sum(r["precision_offline"] for r in runs) / len(runs),
        "mean_checks_per_run": sum(r["checks"] for r in runs) / len(runs),
        "cloud_wrong_on_checks": {"wrong": cloud_wrong, "checks_logged": len(checked)},
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = report["versions"]
    fig, axes = plt.subplots(1, len(versions), figsize=(6 * len(versions), 4), squeeze=False)
    for ax, (name, result) in zip(axes[0], versions.items(), strict=True):
        runs = result["runs"]
        x = [r["run"] for r in runs]
        low = [max(0.0, 100 * (r["agreement"] - r["interval"][0])) for r in runs]
        high = [max(0.0, 100 * (r["interval"][1] - r["agreement"])) for r in runs]
        ax.errorbar(x, [100 * r["agreement"] for r in runs], yerr=[low, high], fmt="o", capsize=3,
                    label="field agreement, 95% interval")  # fmt: skip
        colours = ["tab:green" if r["contains"] else "tab:red" for r in runs]
        ax.scatter(x, [100 * r["precision_offline"] for r in runs], marker="x", c=colours, zorder=3,
                   label="precision offline (red: outside)")  # fmt: skip
        ax.set_title(f"{name} (v{result['bundle']['version']}): {result['contained']} of {result['of']} contained")
        ax.set_xlabel("run")
        ax.set_ylabel("% of kept answers")
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--queries", type=int, default=300, help="unique mixed test queries per run")
    parser.add_argument("--share", type=float, default=0.35, help="kept answers checked (about 100 checks a run)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--versions", default="good,defective", help="good, defective or both")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the teacher")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--quick", action="store_true", help="3 runs of 100 queries")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "interval_coverage")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.queries = 3, 100
    chosen = [v.strip() for v in args.versions.split(",") if v.strip()]
    if not chosen or set(chosen) - {"good", "defective"}:
        parser.error("--versions takes good, defective or both, comma-separated")
    if not 0 < args.share <= 1 or args.runs < 1 or args.queries < 1:
        parser.error("--share must be in (0, 1], --runs and --queries at least 1")
    import torch

    torch.set_num_threads(args.threads)
    loaded = load_teacher()
    load_before = os.getloadavg()
    versions: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="coverage-") as tmp:
        work = Path(tmp)
        for name in chosen:
            directory = STUDENT if name == "good" else defective_copy(STUDENT, work / "defective")
            log = work / f"{name}-escalations.jsonl"
            server = RunningServer(work / f"{name}.sqlite3", EngineConfig(max_batch=32), loaded,
                                   sessions=SessionConfig(escalation_log=log))  # fmt: skip
            try:
                versions[name] = run_version(name, directory, server, log, args, work)
            finally:
                server.stop()
    report = {
        "benchmark": "interval_coverage",
        "machine": {**machine_info(args.threads), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": {
            "runs": args.runs,
            "queries": args.queries,
            "share": args.share,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "target": f"{TARGET[0]} of {TARGET[1]}",
        },
        "versions": versions,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "interval_coverage.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "interval_coverage.png")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
