"""Resume under disconnects: sessions whose clients drop the stream at random points
and re-attach, checked for no lost and no duplicated event.

One real Reasoner server (gRPC on loopback, SQLite store, the shipped demo teacher on
CPU, continuous batching). Each of ``--sessions`` clients (``--concurrency`` at a time)
starts ``Think`` with ``stream_reasoning=True`` (one event per reasoning delta, so many
events), reads a random number of events, cancels its stream (``call.cancel()``: any
events already buffered on the client are thrown away, as on a real drop), waits a
random short time, then ``Attach(session_id, after_seq=last_seen)``; it drops up to 3
times in all, and reads the last stream to the end. Per session the seqs received must
be exactly 1..N, end with ``completed``, and equal a final full replay
``Attach(after_seq=0)``. Each session's choices come from its own seeded RNG, so a run
is reproducible whatever the thread scheduling. Prints JSON; exits 1 if any invariant
breaks. Usage::

    python benchmarks/cloud_resume.py [--quick] [--sessions 50] [--concurrency 8] [--seed 11]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from benchmarks.support.cloud import RunningServer, load_teacher, machine_info, think_request, unique_problems
from edgecloud.cloud.engine import EngineConfig
from edgecloud.modelkit.arithmetic.task import Problem, parse_answer
from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.proto.edgecloud.v1 import reasoner_pb2_grpc as pb_grpc

MAX_DISCONNECTS = 3
TIMEOUT_S = 300


@dataclass
class Outcome:
    events: int = 0
    completed: bool = False
    correct: bool = False
    lost: int = 0
    duplicated: int = 0
    replay_matches: bool = False
    disconnects: int = 0
    drops_after_completion: int = 0
    """Planned drops that never happened because the stream ended first."""
    live_reattaches: int = 0
    """Re-attaches to a session that was still running (replay, then live events)."""


def read(call: Any, limit: int | None, into: list[pb.ThinkEvent]) -> bool:
    """Read up to ``limit`` events (all when None) into ``into``; True if the stream ended."""
    taken = 0
    while limit is None or taken < limit:
        try:
            event = next(call)
        except StopIteration:
            return True
        into.append(event)
        taken += 1
        if event.WhichOneof("event") in ("completed", "failed"):
            return True
    return False


def run_session(stub: pb_grpc.ReasonerStub, problem: Problem, rng: random.Random) -> Outcome:
    out = Outcome()
    seen: list[pb.ThinkEvent] = []
    drops = rng.randint(1, MAX_DISCONNECTS)
    call: Any = stub.Think(think_request(problem.query, stream_reasoning=True), timeout=TIMEOUT_S)
    while True:
        dropping = out.disconnects < drops
        ended = read(call, rng.randint(1, 40) if dropping else None, seen)
        if ended:
            out.drops_after_completion = drops - out.disconnects
            break
        call.cancel()  # the link goes down; whatever the client had buffered is lost
        out.disconnects += 1
        time.sleep(rng.uniform(0.0, 0.3))
        last = seen[-1]
        status = stub.GetSession(pb.SessionRef(session_id=last.session_id), timeout=TIMEOUT_S).status
        out.live_reattaches += status not in (pb.COMPLETED, pb.FAILED, pb.CANCELLED)
        call = stub.Attach(pb.AttachRequest(session_id=last.session_id, after_seq=last.seq), timeout=TIMEOUT_S)
    seqs = [e.seq for e in seen]
    counts = collections.Counter(seqs)
    out.events = len(seen)
    out.duplicated = sum(c - 1 for c in counts.values())
    out.lost = len(set(range(1, max(seqs) + 1)) - set(counts))
    final = seen[-1]
    out.completed = final.WhichOneof("event") == "completed"
    out.correct = out.completed and parse_answer(final.completed.answer) == problem.answer
    replay = list(stub.Attach(pb.AttachRequest(session_id=final.session_id, after_seq=0), timeout=TIMEOUT_S))
    out.replay_matches = replay == seen and seqs == list(range(1, len(seen) + 1))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 sessions, 2 at a time")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the engine")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    n, concurrency = (5, 2) if args.quick else (args.sessions, args.concurrency)

    problems = unique_problems(n, args.seed)
    rngs = [random.Random(f"cloud-resume/{args.seed}/{i}") for i in range(n)]
    start = time.perf_counter()
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RunningServer(Path(tmp) / "sessions.sqlite3", EngineConfig(threads=args.threads), load_teacher())
        try:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                futures = [pool.submit(run_session, server.stub, p, r) for p, r in zip(problems, rngs, strict=True)]
                outcomes: list[Outcome] = []
                for i, future in enumerate(futures):
                    try:
                        outcomes.append(future.result())
                    except grpc.RpcError as exc:
                        errors.append(f"session {i}: {exc.code()} {exc.details()}")
        finally:
            server.stop()
    wall = time.perf_counter() - start
    report: dict[str, Any] = {
        "benchmark": "cloud_resume",
        "machine": machine_info(args.threads),
        "seed": args.seed,
        "concurrency": concurrency,
        "sessions": n,
        "completed": sum(o.completed for o in outcomes),
        "lost_events": sum(o.lost for o in outcomes),
        "duplicated_events": sum(o.duplicated for o in outcomes),
        "replay_mismatches": sum(not o.replay_matches for o in outcomes),
        "disconnects": sum(o.disconnects for o in outcomes),
        "planned_drops_not_reached": sum(o.drops_after_completion for o in outcomes),
        "reattaches_while_running": sum(o.live_reattaches for o in outcomes),
        "events": sum(o.events for o in outcomes),
        "accuracy": sum(o.correct for o in outcomes) / max(len(outcomes), 1),
        "rpc_errors": errors,
        "wall_s": round(wall, 2),
    }
    ok = (
        not errors
        and report["completed"] == n
        and report["lost_events"] == 0
        and report["duplicated_events"] == 0
        and report["replay_mismatches"] == 0
    )
    report["ok"] = ok
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
