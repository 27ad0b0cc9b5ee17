"""Cloud throughput: continuous batching vs one session at a time, same run, same queries.

Two real Reasoner servers (gRPC on loopback, SQLite store, the shipped demo teacher on
CPU, one model in memory) differ only in ``EngineConfig.max_batch``: 1 ("sequential")
and 32 ("batched"). At each concurrency C, C client threads drive concurrent ``Think``
streams (sync stub, thinking on at the server's default budget, reasoning hidden) over
the same unique test problems on both servers, alternating which goes first. Every
query has its own request_id and normalised text, so the result cache never answers.

Per mode and point: completed sessions/s and generated tokens/s (usage reasoning +
output tokens over wall time); client-side time to first answer token (request sent ->
first ``answer_delta``) p50/p99; client-side per-token latency p50/p99 (gaps between
consecutive ``reasoning_progress`` events divided by the reasoning tokens advanced, and
between consecutive ``answer_delta`` events, one token each) next to the server's mean
(reasoning_ms + answer_ms) / tokens; accuracy. Engine counters give the mean batch
occupancy and ms per step, and a timer around the model's forward gives the share of
wall time spent in the model (the rest is Python bookkeeping, gRPC and clients). Also
checked: both modes give the same answers. ``other_processes_cpu_s`` (from /proc/stat)
shows whether something else on the machine took CPU during a measurement.

With ``--stores``, the two servers are both batched and differ only in their session store: the
embedded SQLite file and a Redis (a real redis-server on loopback, started here), at 16 concurrent
sessions, rounds alternating which goes first; the ratio is Redis' sessions/s over SQLite's (the
target: Redis costs at most 10%).

With ``--engines``, the two servers differ in their backend: the transformers engine (continuous
batching, ``--threads`` torch threads) and the OpenAI backend driving llama.cpp's server
(llama-cpp-python from ``make llama-server``, ``--threads`` threads, one request at a time) serving
the same teacher as GGUF, on the same held-out queries: ``--engine-queries`` at 16 concurrent
sessions, and a quarter as many one at a time (tokens/s, time to first answer token, accuracy).

With ``--soak N``, one batched server (SQLite store, ``--soak-ttl`` seconds of session TTL) serves N unique
sessions at 16 concurrent, in windows of ``--window``; per window: sessions/s, tokens/s, accuracy, the
process's RSS (server and clients: one process), sessions held in memory, sessions and bytes in the store.
The target: the last window's sessions/s at least 95% of the first's. Usage::

    python benchmarks/cloud_throughput.py [--quick] [--threads 2] [--per-client 2] [--out DIR]
    python benchmarks/cloud_throughput.py --stores [--rounds 3] [--out DIR]
    python benchmarks/cloud_throughput.py --engines [--engine-queries 200] [--out DIR]
    python benchmarks/cloud_throughput.py --soak 50000 [--window 1000] [--soak-ttl 900] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.support.cloud import (
    TEACHER,
    RunningServer,
    busy_cpu_s,
    load_teacher,
    machine_info,
    think_request,
    unique_problems,
)
from edgecloud.cloud.engine import EngineConfig
from edgecloud.cloud.sessions import SessionConfig
from edgecloud.modelkit.arithmetic.task import Problem, parse_answer
from edgecloud.proto.edgecloud.v1 import reasoner_pb2_grpc as pb_grpc

MODES = {"sequential": 1, "batched": 32}
RATIOS = ("sessions_per_s", "tokens_per_s")
TARGET_RATIO_AT_16 = 4.0
ENGINE_CONCURRENCY = 16


@dataclass
class Session:
    answer: str = ""
    tokens: int = 0
    correct: bool = False
    cached: bool = False
    first_answer_s: float | None = None
    token_gaps_s: list[float] = field(default_factory=list)
    server_token_ms: float = 0.0


@dataclass
class ForwardTimer:
    """Wraps ``model.forward``: seconds in prefill (many positions) and decode (one)."""

    prefill_s: float = 0.0
    decode_s: float = 0.0

    def install(self, model: Any) -> None:
        forward: Callable[..., Any] = model.forward

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                if kwargs["input_ids"].shape[1] > 1:
                    self.prefill_s += spent
                else:
                    self.decode_s += spent

        model.forward = timed


def run_session(stub: pb_grpc.ReasonerStub, problem: Problem, **fields: Any) -> Session:
    out = Session()
    sent = time.perf_counter()
    last: tuple[str, float, int] | None = None  # kind, time, reasoning tokens
    for event in stub.Think(think_request(problem.query, **fields), timeout=600):
        now, kind = time.perf_counter(), event.WhichOneof("event")
        if kind == "reasoning_progress":
            count = event.reasoning_progress.reasoning_tokens
            if last is not None and last[0] == kind and count > last[2]:
                out.token_gaps_s.append((now - last[1]) / (count - last[2]))
            last = (kind, now, count)
        elif kind == "answer_delta":
            if out.first_answer_s is None:
                out.first_answer_s = now - sent
            elif last is not None and last[0] == kind:
                out.token_gaps_s.append(now - last[1])
            last = (kind, now, 0)
        elif kind == "completed":
            done = event.completed
            out.tokens = done.usage.reasoning_tokens + done.usage.output_tokens
            out.answer = done.answer
            out.correct = parse_answer(done.answer) == problem.answer
            out.cached = done.cached
            out.server_token_ms = (done.timings.reasoning_ms + done.timings.answer_ms) / max(out.tokens, 1)
        elif kind == "failed":
            raise RuntimeError(f"session failed: {event.failed.code} {event.failed.message}")
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def run_point(
    server: RunningServer, timer: ForwardTimer, problems: list[Problem], concurrency: int
) -> tuple[dict[str, Any], list[str]]:
    """Drive ``problems`` through ``server`` with ``concurrency`` client threads; returns the
    summary and the answers in problem order."""
    engine = server.service.engine
    steps0, tokens0, prefill0, decode0 = engine.steps, engine.tokens_generated, timer.prefill_s, timer.decode_s
    busy0, cpu0, start = busy_cpu_s(), time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        sessions = list(pool.map(lambda p: run_session(server.stub, p), problems))
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    foreign = max(busy_cpu_s() - busy0 - cpu, 0.0)
    steps = engine.steps - steps0
    forward = (timer.prefill_s - prefill0) + (timer.decode_s - decode0)
    ttft = [s.first_answer_s for s in sessions if s.first_answer_s is not None]
    gaps = [g for s in sessions for g in s.token_gaps_s]
    tokens = sum(s.tokens for s in sessions)
    summary = {
        "sessions": len(sessions),
        "wall_s": round(wall, 3),
        "sessions_per_s": len(sessions) / wall,
        "tokens_per_s": tokens / wall,
        "tokens": tokens,
        "ttft_ms": {"p50": 1e3 * percentile(ttft, 50), "p99": 1e3 * percentile(ttft, 99)},
        "token_latency_ms_client": {"p50": 1e3 * percentile(gaps, 50), "p99": 1e3 * percentile(gaps, 99)},
        "token_latency_ms_server_mean": statistics.fmean(s.server_token_ms for s in sessions),
        "accuracy": sum(s.correct for s in sessions) / len(sessions),
        "cache_hits": sum(s.cached for s in sessions),
        "engine": {
            "steps": steps,
            "mean_batch": (engine.tokens_generated - tokens0) / max(steps, 1),
            "ms_per_step": 1e3 * wall / max(steps, 1),
            "forward_share_of_wall": forward / wall,
            "prefill_s": timer.prefill_s - prefill0,
            "decode_s": timer.decode_s - decode0,
        },
        "process_cpu_s": round(cpu, 2),
        "cpu_utilisation": cpu / wall / (os.cpu_count() or 1),
        "other_processes_cpu_s": round(foreign, 2),
    }
    return summary, [s.answer for s in sessions]


def write_report(
    report: dict[str, Any], out: Path | None, name: str, plot: Callable[[dict[str, Any], Path], None] | None = None
) -> int:
    """Print ``report``; with ``out``, also write it as ``name``.json (and its picture as ``name``.png)."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if plot is not None:
            plot(report, out / f"{name}.png")
        (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["concurrency"] for p in report["points"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for ax, metric, label in zip(axes, ("sessions_per_s", "tokens_per_s"), ("sessions/s", "tokens/s"), strict=True):
        for mode, max_batch in MODES.items():
            ys = [p[mode][metric] for p in report["points"]]
            ax.plot(xs, ys, marker="o", label=f"{mode} (max_batch={max_batch})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(f"Cloud teacher on CPU ({machine['cpu_count']} cores, {machine['torch_threads']} torch threads)")
    fig.tight_layout()
    fig.savefig(path)


def measure(levels: list[int], sizes: list[int], threads: int, seed: int) -> list[dict[str, Any]]:
    """Both servers up at once (one model in memory, the idle engine sleeps); per level,
    the same fresh problems through each, the order alternating between levels."""
    warmup = 2
    problems = unique_problems(warmup + sum(sizes), seed)
    loaded = load_teacher()
    timer = ForwardTimer()
    timer.install(loaded.model)
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            mode: RunningServer(Path(tmp) / f"{mode}.sqlite3", EngineConfig(max_batch=size, threads=threads), loaded)
            for mode, size in MODES.items()
        }
        try:
            for server in servers.values():
                for problem in problems[:warmup]:
                    run_session(server.stub, problem)
            offset = warmup
            for i, (concurrency, size) in enumerate(zip(levels, sizes, strict=True)):
                chunk, offset = problems[offset : offset + size], offset + size
                point: dict[str, Any] = {"concurrency": concurrency}
                answers: dict[str, list[str]] = {}
                for mode in list(MODES) if i % 2 == 0 else list(reversed(MODES)):
                    point[mode], answers[mode] = run_point(servers[mode], timer, chunk, concurrency)
                    rate = point[mode]["sessions_per_s"]
                    print(f"C={concurrency:>2} {mode:>10}: {rate:.2f} sessions/s", file=sys.stderr)
                same = sum(a == b for a, b in zip(answers["sequential"], answers["batched"], strict=True))
                point["same_answer_both_modes"] = same / size
                point["ratio"] = {m: point["batched"][m] / point["sequential"][m] for m in RATIOS}
                points.append(point)
        finally:
            for server in servers.values():
                server.stop()
    return points


STORE_CONCURRENCY = 16
TARGET_REDIS_RATIO = 0.90


def measure_stores(rounds: int, per_round: int, threads: int, seed: int) -> dict[str, Any]:
    """SQLite vs Redis behind the same batched engine: the same fresh problems through each, per round."""
    from tests.helpers.redis_server import RedisServer  # the tests' launcher of a real redis-server

    problems = unique_problems(2 + rounds * per_round, seed)
    loaded = load_teacher()
    timer = ForwardTimer()
    timer.install(loaded.model)
    results: dict[str, list[dict[str, Any]]] = {"sqlite": [], "redis": []}
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        stores: dict[str, Path | str] = {"sqlite": Path(tmp) / "sessions.sqlite3", "redis": redis.url}
        engine = EngineConfig(max_batch=MODES["batched"], threads=threads)
        servers = {name: RunningServer(store, engine, loaded) for name, store in stores.items()}  # type: ignore[arg-type]
        try:
            for server in servers.values():
                for problem in problems[:2]:
                    run_session(server.stub, problem)
            for r in range(rounds):
                chunk = problems[2 + r * per_round : 2 + (r + 1) * per_round]
                for name in list(stores) if r % 2 == 0 else list(reversed(stores)):
                    summary, _ = run_point(servers[name], timer, chunk, STORE_CONCURRENCY)
                    results[name].append(summary)
                    print(f"round {r} {name:>6}: {summary['sessions_per_s']:.2f} sessions/s", file=sys.stderr)
        finally:
            for server in servers.values():
                server.stop()
            redis.stop()
    rate = {name: statistics.fmean(p["sessions_per_s"] for p in points) for name, points in results.items()}
    ratio = rate["redis"] / rate["sqlite"]
    return {
        "concurrency": STORE_CONCURRENCY,
        "rounds": results,
        "sessions_per_s": rate,
        "ratio_redis_over_sqlite": ratio,
        "target": {"ratio_at_least": TARGET_REDIS_RATIO, "met": ratio >= TARGET_REDIS_RATIO},
    }


def stores_main(args: argparse.Namespace) -> int:
    load0, start = os.getloadavg(), time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "cloud_throughput_stores",
        "machine": machine_info(args.threads) | {"loadavg_before": load0},
        "settings": {"seed": args.seed, "rounds": args.rounds, "sessions_per_round": args.per_round},
    }
    report |= measure_stores(args.rounds, args.per_round, args.threads, args.seed)
    report["machine"]["loadavg_after"] = os.getloadavg()
    report["wall_s"] = round(time.perf_counter() - start, 1)
    return write_report(report, args.out, "cloud_stores")


def measure_engines(queries: int, threads: int, seed: int) -> dict[str, Any]:
    """The transformers engine vs the OpenAI backend on llama.cpp's server: the same problems
    through each, alternating which goes first."""
    from edgecloud.cloud.config import RemoteEngineConfig
    from edgecloud.modelkit.gguf_export import export_gguf
    from tests.helpers.llama_server import LlamaServer, llama_python

    python = llama_python()
    if python is None:
        raise SystemExit("error: llama-cpp-python[server] is not built; run `make llama-server`")
    problems = unique_problems(2 + queries + queries // 4, seed)
    points = {
        "concurrent": (ENGINE_CONCURRENCY, problems[2 : 2 + queries]),
        "one_at_a_time": (1, problems[2 + queries :]),
    }
    loaded = load_teacher()
    idle = ForwardTimer()  # the OpenAI backend's model runs in another process: nothing to time here
    timer = ForwardTimer()
    timer.install(loaded.model)
    results: dict[str, dict[str, Any]] = {"transformers": {}, "llama.cpp": {}}
    answers: dict[str, list[str]] = {"transformers": [], "llama.cpp": []}
    with tempfile.TemporaryDirectory() as tmp:
        llama = LlamaServer(
            python, export_gguf(TEACHER, Path(tmp) / "teacher.gguf"), Path(tmp) / "llama.log", threads=threads
        )
        servers = _engine_servers(Path(tmp), loaded, threads, RemoteEngineConfig(url=llama.url))
        try:
            for server in servers.values():
                for problem in problems[:2]:
                    run_session(server.stub, problem)
            for i, (point, (concurrency, chunk)) in enumerate(points.items()):
                for name in list(servers) if i % 2 == 0 else list(reversed(servers)):
                    summary, said = run_point(
                        servers[name], timer if name == "transformers" else idle, chunk, concurrency
                    )
                    results[name][point] = summary
                    answers[name] += said
                    print(f"{point} {name:>12}: {summary['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
        finally:
            for server in servers.values():
                server.stop()
            llama.stop()
    same = sum(a == b for a, b in zip(answers["transformers"], answers["llama.cpp"], strict=True))
    return {
        "queries": {point: len(chunk) for point, (_, chunk) in points.items()},
        "concurrency": {point: c for point, (c, _) in points.items()},
        "engines": results,
        "ratio_llama_over_transformers": {
            point: {
                key: results["llama.cpp"][point][key] / results["transformers"][point][key]
                for key in ("sessions_per_s", "tokens_per_s")
            }
            for point in points
        },
        "same_answer_share": same / len(answers["transformers"]),
    }


def _engine_servers(tmp: Path, loaded: Any, threads: int, remote: Any) -> dict[str, RunningServer]:
    engine = EngineConfig(max_batch=MODES["batched"], threads=threads)
    return {
        "transformers": RunningServer(tmp / "t.sqlite3", engine, loaded),
        "llama.cpp": RunningServer(tmp / "l.sqlite3", engine, loaded, remote=remote),
    }


def engines_main(args: argparse.Namespace) -> int:
    load0, start = os.getloadavg(), time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "cloud_throughput_engines",
        "machine": machine_info(args.threads) | {"loadavg_before": load0},
        "settings": {"seed": args.seed, "llama_cpp_python": "0.3.36", "threads_each": args.threads},
    }
    report |= measure_engines(args.engine_queries, args.threads, args.seed)
    report["machine"]["loadavg_after"] = os.getloadavg()
    report["wall_s"] = round(time.perf_counter() - start, 1)
    return write_report(report, args.out, "cloud_engines", plot_engines)


def plot_engines(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = (("tokens_per_s", "tokens/s"), ("ttft_ms", "first answer token p50 (ms)"), ("accuracy", "accuracy"))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    points = list(report["queries"])
    for ax, (key, label) in zip(axes, figures, strict=True):
        for k, name in enumerate(report["engines"]):
            values = [report["engines"][name][p][key] for p in points]
            values = [v["p50"] if isinstance(v, dict) else v for v in values]
            ax.bar([x + 0.4 * k for x in range(len(points))], values, width=0.4, label=name)
        ax.set_xticks([x + 0.2 for x in range(len(points))], points)
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle("transformers engine vs llama.cpp server (OpenAI backend), same teacher, same queries")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SOAK_CONCURRENCY = 16
TARGET_SOAK_RATIO = 0.95


def _footprint(store: Path) -> dict[str, float]:
    """This process's RSS, and the store's files (database, WAL) and sessions, read on a connection of its own."""
    import sqlite3

    status = Path("/proc/self/status").read_text()
    rss = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)
    files = sum(f.stat().st_size for f in store.parent.glob(store.name + "*"))
    with contextlib.closing(sqlite3.connect(store)) as db:
        (count,) = db.execute("SELECT count(*) FROM sessions").fetchone()
    return {"rss_mb": round(rss, 1), "store_mb": round(files / 1e6, 2), "store_sessions": count}


def measure_soak(
    sessions: int, window: int, threads: int, seed: int, ttl_s: float, budget: int | None
) -> list[dict[str, Any]]:
    """``sessions`` unique problems through one server, ``window`` at a time; one row per window.
    ``budget`` set: every request asks for that many reasoning tokens (short sessions weigh the
    per-session bookkeeping more)."""
    fields = {} if budget is None else {"max_reasoning_tokens": budget}
    problems = unique_problems(2 + sessions, seed)
    loaded = load_teacher()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=SOAK_CONCURRENCY) as pool:
        store = Path(tmp) / "sessions.sqlite3"
        engine = EngineConfig(max_batch=MODES["batched"], threads=threads)
        server = RunningServer(store, engine, loaded, sessions=SessionConfig(ttl_s=ttl_s))
        try:
            for problem in problems[:2]:
                run_session(server.stub, problem)
            for start in range(2, 2 + sessions, window):
                busy0, cpu0, began = busy_cpu_s(), time.process_time(), time.perf_counter()
                done = list(pool.map(lambda p: run_session(server.stub, p, **fields), problems[start : start + window]))
                wall = time.perf_counter() - began
                foreign = max(busy_cpu_s() - busy0 - (time.process_time() - cpu0), 0.0)
                row = {
                    "after_sessions": start - 2 + len(done),
                    "sessions_per_s": round(len(done) / wall, 3),
                    "tokens_per_s": round(sum(s.tokens for s in done) / wall, 1),
                    "accuracy": sum(s.correct for s in done) / len(done),
                    "sessions_in_memory": len(server.service.sessions._sessions),
                    **_footprint(store),
                    "other_processes_cpu_s": round(foreign, 1),
                    "loadavg_1m": os.getloadavg()[0],
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            server.stop()
    return rows


def soak_main(args: argparse.Namespace) -> int:
    load0, start = os.getloadavg(), time.perf_counter()
    rows = measure_soak(args.soak, args.window, args.threads, args.seed, args.soak_ttl, args.soak_budget)
    ratio = rows[-1]["sessions_per_s"] / rows[0]["sessions_per_s"]
    report: dict[str, Any] = {
        "benchmark": "cloud_throughput_soak",
        "machine": machine_info(args.threads) | {"loadavg_before": load0, "loadavg_after": os.getloadavg()},
        "settings": {
            "sessions": args.soak,
            "window": args.window,
            "concurrency": SOAK_CONCURRENCY,
            "session_ttl_s": args.soak_ttl,
            "reasoning_budget": args.soak_budget or "the server's choice",
            "finished_in_memory": SessionConfig().finished_in_memory,
        },
        "windows": rows,
        "ratio_last_over_first": ratio,
        "peak": {
            key: max(r[key] for r in rows) for key in ("rss_mb", "sessions_in_memory", "store_mb", "store_sessions")
        },
        "target": {"ratio_at_least": TARGET_SOAK_RATIO, "met": ratio >= TARGET_SOAK_RATIO},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    return write_report(report, args.out, "cloud_soak", plot_soak)


def plot_soak(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["windows"]
    xs = [r["after_sessions"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(xs, [r["sessions_per_s"] for r in rows], marker=".")
    axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel("sessions/s (window)")
    for key, label in (("rss_mb", "RSS (MB)"), ("store_mb", "store (MB)")):
        axes[1].plot(xs, [r[key] for r in rows], label=label)
    axes[1].set_ylim(bottom=0)
    axes[1].legend()
    for ax in axes:
        ax.set_xlabel("sessions served")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"One Reasoner, {len(xs) and xs[-1]} sessions at 16 concurrent: last/first = "
        f"{report['ratio_last_over_first']:.3f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run: concurrency 1 and 4, 4 sessions each")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--per-client", type=int, default=2, help="sessions per client thread (at least 16 per point)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the engine")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write cloud_throughput.json and .png here")
    parser.add_argument("--stores", action="store_true", help="SQLite vs Redis store at 16 concurrent sessions")
    parser.add_argument("--rounds", type=int, default=3, help="--stores: rounds, alternating which store goes first")
    parser.add_argument("--per-round", type=int, default=64, help="--stores: sessions per store and round")
    parser.add_argument("--engines", action="store_true", help="transformers engine vs llama.cpp's server")
    parser.add_argument("--engine-queries", type=int, default=200, help="--engines: held-out queries at 16 concurrent")
    parser.add_argument("--soak", type=int, default=0, help="sessions through one server, measured per window")
    parser.add_argument("--window", type=int, default=1000, help="--soak: sessions per window")
    parser.add_argument("--soak-ttl", type=float, default=900.0, help="--soak: the server's session ttl (s)")
    parser.add_argument("--soak-budget", type=int, default=None, help="--soak: reasoning tokens each request asks for")
    args = parser.parse_args()
    if args.soak:
        return soak_main(args)
    if args.stores:
        return stores_main(args)
    if args.engines:
        return engines_main(args)

    levels = [1, 4] if args.quick else args.concurrency
    sizes = [4 if args.quick else max(args.per_client * c, 16) for c in levels]
    load0, start = os.getloadavg(), time.perf_counter()
    points = measure(levels, sizes, args.threads, args.seed)
    wall = time.perf_counter() - start
    by_c = {p["concurrency"]: p["ratio"]["sessions_per_s"] for p in points}
    other = sum(p[m]["other_processes_cpu_s"] for p in points for m in MODES)
    measured = sum(p[m]["wall_s"] for p in points for m in MODES)
    report: dict[str, Any] = {
        "benchmark": "cloud_throughput",
        "machine": machine_info(args.threads) | {"loadavg_before": load0, "loadavg_after": os.getloadavg()},
        "settings": {
            "modes": MODES,
            "seed": args.seed,
            "sessions_per_point": dict(zip(levels, sizes, strict=True)),
            "reasoning": "hidden (progress events), server's default budget",
        },
        "points": points,
        "ratio_sessions_per_s": by_c,
        "target": {"concurrency": 16, "ratio": TARGET_RATIO_AT_16, "met": by_c[16] >= TARGET_RATIO_AT_16}
        if 16 in by_c
        else None,
        "other_processes_cpu_share": other / measured / (os.cpu_count() or 1),
        "wall_s": round(wall, 1),
    }
    if args.out is not None:
        report["files"] = [str(args.out / "cloud_throughput.json"), str(args.out / "cloud_throughput.png")]
    return write_report(report, args.out, "cloud_throughput", plot)


if __name__ == "__main__":
    sys.exit(main())
