"""One turn of the learning loop on a dataset's task, through the real edge and cloud.

The closed-loop benchmark (``closed_loop.py``) measures the built-in arithmetic task; this one takes
any bundles built by ``models build --data`` and their dataset folder:

1. ``--collect`` queries of ``--traffic`` (a dataset folder of the same task the build never saw,
   e.g. ``edgecloud data smarthome --seed 1``; its train split) go through a real
   :class:`EdgeService` (the base student, triage) to a real Reasoner (the build's teacher) on a
   loopback gRPC port, which writes its escalation log.
2. The dataset's test split (``--fresh`` rows) measures the system *before*: escalation rate,
   accuracy and kept answers' precision, overall and per ``group``; and cloud-only (every query
   routed to the cloud).
3. ``models improve`` (the library call) trains the next student on that log, on the base's data.
4. The same test rows measure the system *after* with the new bundle in the edge's slot.

Answers match by the bundle's rule. Prints JSON (also ``--out``/data_loop.json) and plots escalation
and accuracy before and after per group (``data_loop.png``). Usage::

    python benchmarks/data_loop.py --models DIR --data DIR --traffic DIR [--collect N] [--fresh N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.support.cloud import (
    RunningServer,
    busy_cpu_s,
    edge_traffic,
    load_teacher,
    machine_info,
    plot_before_after,
)
from edgecloud.cloud.engine import EngineConfig
from edgecloud.cloud.sessions import SessionConfig
from edgecloud.edge.service import QueryResult
from edgecloud.edge.triage import Requested
from edgecloud.modelkit.data.datasets import Row, read_dataset
from edgecloud.modelkit.loop.improve import GateFailedError, ImproveConfig, improve_student
from edgecloud.shared.base.errors import EdgecloudError
from edgecloud.shared.bundles.answers import answers_match, rule_of
from edgecloud.shared.bundles.manifest import load_manifest

log = logging.getLogger("data_loop")


def query_rows(rows: list[Row], n: int, what: str) -> list[Row]:
    """The first ``n`` rows that are a single query with an answer."""
    chosen = [row for row in rows if row.query is not None and row.answer.strip()][:n]
    if len(chosen) < n:
        raise SystemExit(f"error: {what} has {len(chosen)} query rows with an answer; {n} asked")
    return chosen


def figures(rows: list[Row], results: list[QueryResult], rule: str) -> dict[str, object]:
    """Escalation, accuracy and kept precision of one pass, overall and per group."""

    def of(pairs: list[tuple[Row, QueryResult]]) -> dict[str, object]:
        right = [r.answer is not None and answers_match(rule, r.answer, row.answer) for row, r in pairs]
        kept = [ok for (_, r), ok in zip(pairs, right, strict=True) if r.route_taken == "edge" and not r.degraded]
        return {
            "n": len(pairs),
            "escalation_rate": 1 - len(kept) / len(pairs),
            "accuracy": sum(right) / len(pairs),
            "kept_precision": sum(kept) / len(kept) if kept else None,
        }

    pairs = list(zip(rows, results, strict=True))
    groups = sorted({row.group or "(none)" for row in rows})
    return {**of(pairs), "groups": {g: of([p for p in pairs if (p[0].group or "(none)") == g]) for g in groups}}


def plot(report: dict, path: Path) -> None:
    title = f"one loop turn on {report['task']}: learnt from {report['collect']}, {report['fresh']} fresh"
    plot_before_after(report, "groups", title, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="the build's folder (cloud-teacher, edge-student)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset the bundles were built from")
    parser.add_argument("--traffic", type=Path, default=None, help="a dataset folder of new queries (train split)")
    parser.add_argument("--collect", type=int, default=10000, help="traffic queries whose escalations are learnt")
    parser.add_argument("--log", type=Path, default=None, help="learn from this escalation log instead of collecting")
    parser.add_argument("--fresh", type=int, default=2000, help="test rows measured before and after")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="models improve training steps (default: its own)")
    parser.add_argument("--lr", type=float, default=None, help="models improve peak learning rate (default: its own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (logs, bundles)")
    parser.add_argument("--out", type=Path, required=True, help="where data_loop.json and data_loop.png go")
    args = parser.parse_args()
    if (args.traffic is None) == (args.log is None):
        parser.error("pass --traffic DIR (collect a log) or --log FILE (reuse one), not both")
    return args


def improve(args: argparse.Namespace, base: Path, training_log: Path, work: Path, refused: dict) -> dict | int:
    """``models improve`` on the log, on the base's data; an exit code if it failed: 1 when the gate
    refused the new student (its verdict and ``refused`` written and printed), 2 for any other error."""
    config = ImproveConfig(
        logs=(training_log,),
        bundle=base,
        out=work / "improved",
        steps=args.steps,
        lr=args.lr,
        threads=args.threads,
        data=args.data,
    )
    try:
        return improve_student(config)
    except EdgecloudError as exc:
        if not isinstance(exc, GateFailedError):
            print(f"error: models improve: {exc}", file=sys.stderr)
            return 2
        refused = {"refused_by_gate": str(exc), "gate": exc.result.summary(), **refused}
        (args.out / "data_loop.json").write_text(json.dumps(refused, indent=2, default=str))
        print(json.dumps(refused, indent=2, default=str))
        return 1


def report_of(args: argparse.Namespace, task: str, rule: str, base: Path, phases: dict, summary: dict) -> dict:
    """The JSON of a whole turn; ``phases``: before, after, cloud (figures of each pass)."""
    before, after, cloud = phases["before"], phases["after"], phases["cloud"]
    cloud_accuracy = float(cloud["accuracy"])
    for phase in (before, after):
        phase["share_of_cloud_accuracy"] = float(phase["accuracy"]) / cloud_accuracy if cloud_accuracy else None
    return {
        "task": task,
        "answer_match": rule,
        "collect": args.collect if args.log is None else str(args.log),
        "fresh": args.fresh,
        "base_version": load_manifest(base).version,
        "new_version": summary["version"],
        "before": before,
        "after": after,
        "cloud_only": cloud,
        "escalation_drop_points": 100 * (float(before["escalation_rate"]) - float(after["escalation_rate"])),
        "accuracy_change_points": 100 * (float(after["accuracy"]) - float(before["accuracy"])),
        "improve": {k: summary.get(k) for k in ("records_read", "records_used", "records_dropped", "gate", "seconds")},
    }


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("data_loop", "benchmarks", "edgecloud.modelkit"):
        logging.getLogger(name).setLevel(logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.models / "edge-student"
    rule = rule_of(load_manifest(base).io)
    dataset = read_dataset(args.data)
    collect = [] if args.log else query_rows(read_dataset(args.traffic).train, args.collect, f"{args.traffic} (train)")
    fresh = query_rows(dataset.test, args.fresh, f"{args.data} (test)")
    started, busy_before, load_before = time.monotonic(), busy_cpu_s(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="data-loop-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        escalation_log = work / "escalations.jsonl"
        server = RunningServer(
            work / "sessions.sqlite3",
            EngineConfig(max_batch=32, max_queue=4096, device="cpu", threads=args.threads),
            load_teacher(args.models / "cloud-teacher"),
            model=args.models / "cloud-teacher",
            sessions=SessionConfig(escalation_log=escalation_log, result_cache_size=0),
        )
        timings: dict[str, float] = {}
        try:
            training_log = args.log or work / "training.jsonl"
            if args.log is None:
                t = time.monotonic()
                edge_traffic(base, server, collect, args.concurrency, work)
                shutil.copyfile(escalation_log, training_log)  # the fresh passes' escalations are not learnt
                timings["collect_s"] = time.monotonic() - t
                log.info("collected %s in %.0f s", training_log, timings["collect_s"])
            t = time.monotonic()
            before = figures(fresh, edge_traffic(base, server, fresh, args.concurrency, work), rule)
            cloud = figures(fresh, edge_traffic(base, server, fresh, args.concurrency, work, Requested.CLOUD), rule)
            timings["before_s"] = time.monotonic() - t
            t = time.monotonic()
            summary = improve(args, base, training_log, work, {"before": before, "cloud": cloud})
            if isinstance(summary, int):
                return summary
            timings["improve_s"] = time.monotonic() - t
            t = time.monotonic()
            new_bundle = work / "improved" / "edge-student"
            after = figures(fresh, edge_traffic(new_bundle, server, fresh, args.concurrency, work), rule)
            timings["after_s"] = time.monotonic() - t
        finally:
            server.stop()
    report = report_of(args, dataset.name, rule, base, {"before": before, "after": after, "cloud": cloud}, summary)
    report |= {
        "timings_s": timings,
        "wall_s": time.monotonic() - started,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "busy_cpu_s": busy_cpu_s() - busy_before,
        "machine": machine_info(args.threads),
    }
    (args.out / "data_loop.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, args.out / "data_loop.png")
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
