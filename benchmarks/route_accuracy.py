"""Accuracy by the route the caller asks for, through the real system: the edge daemon (shipped int8
student, triage, HTTP) in front of the real cloud Reasoner (shipped teacher, gRPC), against the
teacher's own accuracy run offline with a generous budget.

Every fresh test query of the evaluation mix is sent twice over HTTP, once with ``route: cloud``
and once with ``route: auto``; the teacher also answers each one directly (batched, budget
``--budget``). A caller who chose the cloud must get the teacher's accuracy: the edge's view of the
query must not shrink the thinking it gets (issue 25). Prints one JSON object; ``--out`` also
writes it there. Usage::

    python benchmarks/route_accuracy.py [--n 2000] [--seed 4242] [--concurrency 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import torch

from benchmarks.support.cloud import REPO, RunningServer, load_teacher, machine_info, unique_problems
from edgecloud.cloud.engine import EngineConfig
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.daemon import create_daemon
from edgecloud.modelkit.arithmetic.evaluate import per_k_accuracy, run_batched
from edgecloud.modelkit.arithmetic.task import Problem, parse_answer
from edgecloud.shared.base.asgi import ThreadedServer


def _ask(http: httpx.Client, problem: Problem, route: str) -> dict[str, object]:
    body = http.post("/v1/query", json={"query": problem.query, "route": route}).json()
    return {"answer": body.get("answer") or "", "route_taken": body.get("route_taken"), "budget": body.get("usage")}


def _through_the_system(problems: list[Problem], route: str, url: str, concurrency: int) -> list[dict[str, object]]:
    with httpx.Client(base_url=url, timeout=300) as http, ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda p: _ask(http, p, route), problems))


def _summary(problems: list[Problem], answers: list[str], routes: list[object] | None = None) -> dict[str, object]:
    right = [parse_answer(a) == p.answer for a, p in zip(answers, problems, strict=True)]
    summary: dict[str, object] = {"accuracy": sum(right) / len(right), "by_k": per_k_accuracy(problems, answers)}
    if routes is not None:
        summary["escalated"] = sum(r == "cloud" for r in routes) / len(routes)
        kept = [ok for ok, r in zip(right, routes, strict=True) if r == "edge"]
        summary["kept_right"] = sum(kept) / len(kept) if kept else None
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="fresh mixed test queries (default 2000)")
    parser.add_argument("--seed", type=int, default=4242, help="TEST-split seed (used by no other benchmark)")
    parser.add_argument("--budget", type=int, default=1024, help="the teacher's own budget offline (default 1024)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problems = unique_problems(args.n, args.seed)
    teacher = load_teacher()
    started = time.monotonic()
    load = os.getloadavg()
    offline = run_batched(teacher.model, teacher.tokenizer, problems, thinking=True, budget=args.budget, batch_size=64)
    result: dict[str, object] = {
        "n": len(problems),
        "teacher_offline": {"budget": args.budget, **_summary(problems, [g.answer_text for g in offline])},
    }
    with tempfile.TemporaryDirectory() as scratch:
        cloud = RunningServer(Path(scratch) / "sessions.sqlite3", EngineConfig(threads=args.threads), teacher)
        config = EdgeConfig(bundle=REPO / "models" / "edge-student", port=0, cloud=f"127.0.0.1:{cloud.port}",
                            outbox=Path(scratch) / "outbox.sqlite3", cloud_timeout_s=300)  # fmt: skip
        app, _service = create_daemon(config)
        daemon = ThreadedServer(app, lifespan="on", name="bench-edge")
        daemon.start(timeout=60)
        try:
            for route in ("cloud", "auto"):
                replies = _through_the_system(problems, route, daemon.url, args.concurrency)
                answers = [str(r["answer"]) for r in replies]
                routes = [r["route_taken"] for r in replies] if route == "auto" else None
                result[f"route_{route}"] = _summary(problems, answers, routes)
        finally:
            daemon.stop(30)
            cloud.stop()
    teacher_accuracy = result["teacher_offline"]["accuracy"]  # type: ignore[index]
    result["route_cloud_minus_teacher_points"] = 100 * (result["route_cloud"]["accuracy"] - teacher_accuracy)  # type: ignore[index]
    result["auto_over_cloud"] = result["route_auto"]["accuracy"] / result["route_cloud"]["accuracy"]  # type: ignore[index]
    result["seconds"] = time.monotonic() - started
    result["load_average_at_start"] = load
    result["machine"] = machine_info(args.threads)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "route_accuracy.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
