"""One turn of the learning loop, through the real edge and cloud: does the edge take over work?

1. ``--collect`` mixed queries (evaluation mix) go through a real :class:`EdgeService` (the shipped
   student, triage) to a real Reasoner on a loopback gRPC port, which writes its escalation log.
2. ``--fresh`` other queries of the same mix measure the system *before*: escalation rate,
   accuracy per k, edge latency per k.
3. ``edgecloud models improve`` (the library call) trains the next student on that log.
4. The new bundle is swapped into the edge's slot (the fleet rollout path is tested in
   ``tests/e2e``), and the same fresh queries measure the system *after*.

Prints JSON (also written to ``--out``/closed_loop.json) and plots escalation rate and accuracy
before and after, per k (``closed_loop.png``). Cloud accuracy is the thinking model's; the ratio
"system / cloud-only" uses the cloud's answers to every fresh query, asked once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.support.cloud import (
    REPO,
    RunningServer,
    busy_cpu_s,
    edge_traffic,
    load_teacher,
    machine_info,
    plot_before_after,
    unique_problems,
)
from edgecloud.cloud.engine import EngineConfig
from edgecloud.cloud.sessions import SessionConfig
from edgecloud.edge.runtime import EdgeBundle
from edgecloud.edge.triage import Requested
from edgecloud.modelkit.arithmetic.task import Problem, parse_answer
from edgecloud.modelkit.loop.improve import GateFailedError, ImproveConfig, improve_student

log = logging.getLogger("closed_loop")

CLOUD_ONLY_BUDGET = 1024


def _phase(problems: list[Problem], results: list) -> dict[str, object]:
    by_k: dict[int, list[tuple[bool, bool, float]]] = {}
    for problem, result in zip(problems, results, strict=True):
        right = result.answer is not None and parse_answer(result.answer) == problem.answer
        escalated = result.route_taken == "cloud"
        by_k.setdefault(problem.k, []).append((right, escalated, result.latency_ms))
    rows = [r for rs in by_k.values() for r in rs]
    edge_rows = [
        (problem, result)
        for problem, result in zip(problems, results, strict=True)
        if result.route_taken == "edge" and not result.degraded
    ]
    edge_right = [parse_answer(r.answer or "") == p.answer for p, r in edge_rows]
    return {
        "n": len(rows),
        "escalation_rate": sum(e for _, e, _ in rows) / len(rows),
        "accuracy": sum(r for r, _, _ in rows) / len(rows),
        "kept_precision": sum(edge_right) / len(edge_right) if edge_right else None,
        "edge_answered": len(edge_rows),
        # A pair's reasoner writes a scratchpad: the edge answers it gave.
        "edge_answered_with_reasoning": sum(r.reasoning_tokens > 0 for _, r in edge_rows),
        "per_k": {
            f"k{k}": {
                "n": len(rs),
                "escalation_rate": sum(e for _, e, _ in rs) / len(rs),
                "accuracy": sum(r for r, _, _ in rs) / len(rs),
                "edge_latency_ms_p50": statistics.median([ms for _, e, ms in rs if not e])
                if any(not e for _, e, _ in rs)
                else None,
            }
            for k, rs in sorted(by_k.items())
        },
    }


def _edge_latency_by_k(bundle: Path, problems: list[Problem], n_per_k: int = 200) -> dict[str, object]:
    """The edge model alone, one thread, per k: what reasoning on the edge costs."""
    model = EdgeBundle.load(bundle, threads=1).model
    out = {}
    for k in sorted({p.k for p in problems}):
        chosen = [p for p in problems if p.k == k][:n_per_k]
        answers = [model.answer(p.query) for p in chosen]
        out[f"k{k}"] = {
            "n": len(chosen),
            "latency_ms_p50": statistics.median(a.latency_ms for a in answers),
            "latency_ms_p90": sorted(a.latency_ms for a in answers)[int(0.9 * (len(answers) - 1))],
            "reasoned": sum(a.reasoning_tokens > 0 for a in answers) / len(answers),
            "mean_output_tokens": statistics.mean(a.output_tokens for a in answers),
        }
    return out


def _reused_summary(base: Path, improved: Path) -> dict:
    from edgecloud.shared.bundles.manifest import load_manifest

    manifest = load_manifest(improved)
    reused = {"reused": str(improved), "training_set": manifest.metadata.get("training_set")}
    return {"base": {"version": load_manifest(base).version}, "version": manifest.version, "reused": reused}


def plot(report: dict, path: Path) -> None:
    title = f"one turn of the learning loop: {report['collect']} queries collected, {report['fresh']} fresh"
    plot_before_after(report, "per_k", title, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", type=int, default=20000, help="queries whose escalations train the new student")
    parser.add_argument("--fresh", type=int, default=2000, help="fresh queries before and after")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="models improve training steps (default: its own)")
    parser.add_argument(
        "--student", choices=("auto", "fine-tune", "fresh"), default="auto", help="as models improve's flag"
    )
    parser.add_argument(
        "--learn-reasoning", choices=("auto", "yes", "no"), default="auto", help="as models improve's flag"
    )
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--log", type=Path, default=None, help="reuse this escalation log instead of collecting")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "closed_loop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--keep", type=Path, default=None, help="work folder to keep (logs, bundles); default: a temporary one"
    )
    parser.add_argument("--collect-only", action="store_true", help="stop after writing the training log")
    parser.add_argument(
        "--improved", type=Path, default=None, metavar="DIR",
        help="measure the edge-student that an earlier run's `models improve` wrote in DIR (with --log, "
        "the log it was trained on) instead of training again",
    )  # fmt: skip
    return parser.parse_args()


@dataclass
class Turn:
    """What one turn measured: the fresh queries' results before, cloud-only and after, and the rest."""

    training_log: Path
    before: list
    cloud_only: list
    summary: dict
    after: list
    latency: dict
    timings: dict[str, float]


def collect_log(
    args: argparse.Namespace,
    server: RunningServer,
    base: Path,
    collect: list[Problem],
    work: Path,
    escalation_log: Path,
    timings: dict[str, float],
) -> Path:
    """The escalation log ``collect`` left, copied aside as the training log."""
    t = time.monotonic()
    edge_traffic(base, server, collect, args.concurrency, work)
    timings["collect_s"] = time.monotonic() - t
    # The log goes on growing with the fresh queries' escalations: train on what the collection wrote.
    training_log = work / "training.jsonl"
    shutil.copyfile(escalation_log, training_log)
    log.info("collected %s in %.0f s", training_log, timings["collect_s"])
    return training_log


def improve(args: argparse.Namespace, base: Path, training_log: Path, work: Path, refused: dict) -> dict | None:
    """``models improve`` on the log (or the summary of an earlier run's bundle, given ``--improved``);
    None if the gate refused the new student, with its verdict and ``refused`` written and printed."""
    if args.improved is not None:
        return _reused_summary(base, args.improved / "edge-student")
    t = time.monotonic()
    try:
        return improve_student(
            ImproveConfig(
                logs=(training_log,),
                bundle=base,
                out=work / "improved",
                steps=args.steps,
                student=args.student,
                threads=args.threads,
                learn_reasoning={"auto": None, "yes": True, "no": False}[args.learn_reasoning],
            )
        )
    except GateFailedError as exc:  # nothing to roll out: record the gate's verdict and the before
        timings = {**refused.pop("timings_s"), "improve_s": time.monotonic() - t}
        refused = {"refused_by_gate": str(exc), "gate": exc.result.summary(), **refused, "timings_s": timings}
        refused |= {"learn_reasoning": args.learn_reasoning, "student": args.student, "steps": args.steps}
        (args.out / "closed_loop.json").write_text(json.dumps(refused, indent=2, default=str))
        print(json.dumps(refused, indent=2, default=str))
        return None


def turn(
    args: argparse.Namespace,
    server: RunningServer,
    base: Path,
    problems: tuple[list[Problem], list[Problem]],
    work: Path,
    escalation_log: Path,
) -> Turn | int:
    """Collect (unless ``--log``), measure before, improve, measure after; an exit code where it stops early."""
    collect, fresh = problems
    timings: dict[str, float] = {}
    if args.log is None:
        training_log = collect_log(args, server, base, collect, work, escalation_log, timings)
        if args.collect_only:
            return 0
    else:
        training_log = args.log
    t = time.monotonic()
    before = edge_traffic(base, server, fresh, args.concurrency, work)
    # The cloud on every query at its full budget: the strongest baseline. (On `cloud` routing the
    # edge's hint still sizes the budget, and a simple query's hint starves the teacher's scratchpad.)
    cloud_only = edge_traffic(
        base, server, fresh, args.concurrency, work, route=Requested.CLOUD, budget=CLOUD_ONLY_BUDGET
    )
    timings["before_s"] = time.monotonic() - t
    t = time.monotonic()
    refused = {
        "before": _phase(fresh, before),
        "cloud_only_accuracy": _phase(fresh, cloud_only)["accuracy"],
        "timings_s": timings,
    }
    summary = improve(args, base, training_log, work, refused)
    if summary is None:
        return 1
    if args.improved is None:
        timings["improve_s"] = time.monotonic() - t
    new_bundle = (args.improved or work / "improved") / "edge-student"
    t = time.monotonic()
    after = edge_traffic(new_bundle, server, fresh, args.concurrency, work)
    timings["after_s"] = time.monotonic() - t
    latency = {"before": _edge_latency_by_k(base, fresh), "after": _edge_latency_by_k(new_bundle, fresh)}
    return Turn(training_log, before, cloud_only, summary, after, latency, timings)


IMPROVE_FIELDS = (
    "records_read",
    "records_used",
    "records_dropped",
    "lines_skipped",
    "learn_reasoning",
    "replay_examples",
    "student",
    "schedule",
    "parameters",
    "gate",
    "seconds",
)
"""What the report keeps of ``models improve``'s summary."""


def report_of(args: argparse.Namespace, done: Turn, fresh: list[Problem], measured: dict) -> dict:
    """The JSON of a whole turn; ``measured``: wall time, load and busy CPU around it."""
    cloud_acc = _phase(fresh, done.cloud_only)["accuracy"]
    summary = done.summary
    report = {
        "collect": args.collect,
        "fresh": args.fresh,
        "training_log": str(done.training_log),
        "learn_reasoning": args.learn_reasoning,
        "steps": args.steps,
        "base_version": summary["base"]["version"],
        "new_version": summary["version"],
        "before": _phase(fresh, done.before),
        "after": _phase(fresh, done.after),
        "cloud_only_accuracy": cloud_acc,
        "edge_latency_by_k": done.latency,
        "improve": summary.get("reused") or {k: summary[k] for k in IMPROVE_FIELDS},
        "timings_s": done.timings,
        **measured,
        "machine": machine_info(args.threads),
    }
    for phase in ("before", "after"):
        report[phase]["share_of_cloud_accuracy"] = report[phase]["accuracy"] / cloud_acc if cloud_acc else None
    report["escalation_drop_points"] = 100 * (report["before"]["escalation_rate"] - report["after"]["escalation_rate"])
    return report


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("closed_loop", "edgecloud.modelkit"):
        logging.getLogger(name).setLevel(logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.models / "edge-student"
    problems = unique_problems(args.collect + args.fresh, seed=13)
    collect, fresh = problems[: args.collect], problems[args.collect :]
    started, busy_before, load_before = time.monotonic(), busy_cpu_s(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="closed-loop-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        escalation_log = args.log or work / "escalations.jsonl"
        server = RunningServer(
            work / "sessions.sqlite3",
            EngineConfig(max_batch=32, max_queue=4096, device="cpu", threads=args.threads),
            load_teacher(args.models / "cloud-teacher"),
            model=args.models / "cloud-teacher",
            sessions=SessionConfig(escalation_log=None if args.log else escalation_log, result_cache_size=0),
        )
        try:
            done = turn(args, server, base, (collect, fresh), work, escalation_log)
        finally:
            server.stop()
    if isinstance(done, int):
        return done
    measured = {
        "wall_s": time.monotonic() - started,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "busy_cpu_s": busy_cpu_s() - busy_before,
    }
    report = report_of(args, done, fresh, measured)
    (args.out / "closed_loop.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, args.out / "closed_loop.png")
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
