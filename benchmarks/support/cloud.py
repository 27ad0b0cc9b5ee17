"""What the cloud benchmarks share: a real Reasoner server on a loopback port, run on
its own event-loop thread (the same logic as ``tests/cloud/conftest.py``, copied so
benchmarks do not import tests), a real edge service sending traffic to it, unique test
problems, and machine facts."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
import torch

from edgecloud.cloud.config import CloudConfig, RemoteEngineConfig
from edgecloud.cloud.engine import EngineConfig
from edgecloud.cloud.server import CloudService, create_server
from edgecloud.cloud.sessions import SessionConfig
from edgecloud.cloud.transformers_engine import LoadedModel
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.escalation import CloudClient, CloudClientConfig
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.outbox import Outbox
from edgecloud.edge.runtime import EdgeBundle, ModelSlot
from edgecloud.edge.service import EdgeService, QueryRequest, QueryResult
from edgecloud.edge.triage import Requested
from edgecloud.modelkit.arithmetic.task import Problem, Split, generate
from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.proto.edgecloud.v1 import reasoner_pb2_grpc as pb_grpc
from edgecloud.shared.reasoner.session import normalize_text

__all__ = [
    "RunningServer",
    "busy_cpu_s",
    "edge_service",
    "edge_traffic",
    "load_teacher",
    "machine_info",
    "plot_before_after",
    "think_request",
    "unique_problems",
]

log = logging.getLogger("benchmarks")

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "models" / "cloud-teacher"


class RunningServer:
    """``create_server`` on port 0, its asyncio loop on a daemon thread, a sync stub."""

    def __init__(
        self,
        store: Path,
        engine: EngineConfig,
        loaded: LoadedModel,
        model: Path = TEACHER,
        sessions: SessionConfig | None = None,
        remote: RemoteEngineConfig | None = None,
    ) -> None:
        """``remote`` set: the OpenAI backend drives that server (``loaded`` is not used)."""
        config = CloudConfig(
            model=model,
            port=0,
            metrics_port=None,
            store=store,
            grace_s=1.0,
            engine=engine,
            remote_engine=remote,
            **({"sessions": sessions} if sessions is not None else {}),
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-server-loop", daemon=True)
        self.thread.start()
        self.service: CloudService
        self.service, self.port = self.call(create_server(config, loaded=None if remote else loaded), timeout=300)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.ReasonerStub(self.channel)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.channel.close()
        self.call(self.service.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class HasQuery(Protocol):
    @property
    def query(self) -> str: ...


def edge_service(config: EdgeConfig, bundle: EdgeBundle, server: RunningServer) -> EdgeService:
    """A real edge service (not started) serving ``bundle`` by ``config``, escalating over gRPC to ``server``."""
    client = CloudClient(CloudClientConfig(target=f"127.0.0.1:{server.port}", deadline_s=600))
    return EdgeService(config, ModelSlot(bundle), client=client, outbox=Outbox(config.outbox), metrics=EdgeMetrics())


def edge_traffic(
    bundle: Path,
    server: RunningServer,
    queries: Sequence[HasQuery],
    concurrency: int,
    work: Path,
    route: Requested = Requested.AUTO,
    budget: int | None = None,
) -> list[QueryResult]:
    """Each query through a real :class:`EdgeService` on ``bundle`` (triage, escalation over gRPC
    to ``server``), ``concurrency`` at a time; the results in the queries' order."""

    async def send(service: EdgeService) -> list[QueryResult]:
        semaphore = asyncio.Semaphore(concurrency)
        done = 0

        async def one(item: HasQuery) -> QueryResult:
            nonlocal done
            async with semaphore:
                request = QueryRequest(query=item.query, route=route, max_reasoning_tokens=budget)
                result = await service.query(request)
            done += 1
            if done % 500 == 0:
                log.info("%d / %d queries", done, len(queries))
            return result

        return await asyncio.gather(*(one(q) for q in queries))

    async def main() -> list[QueryResult]:
        config = EdgeConfig(bundle=bundle, outbox=work / f"outbox-{time.monotonic_ns()}.sqlite3", cloud="bench")
        service = edge_service(config, EdgeBundle.load(bundle, threads=1), server)
        await service.start()
        try:
            return await send(service)
        finally:
            await service.stop()

    return asyncio.run(main())


def load_teacher(model: Path = TEACHER) -> LoadedModel:
    return LoadedModel.from_dir(model, device="cpu", name=model.name, version=1)


def unique_problems(n: int, seed: int) -> list[Problem]:
    """``n`` mixed test problems whose cache keys (normalised text) are all distinct,
    so the server's result cache can never answer one of them."""
    seen: set[str] = set()
    out: list[Problem] = []
    batch = 0
    while len(out) < n:
        for problem in generate(2 * n, seed * 1000 + batch, Split.TEST):
            key = normalize_text(problem.query)
            if key not in seen and len(out) < n:
                seen.add(key)
                out.append(problem)
        batch += 1
    return out


def think_request(query: str, **fields: Any) -> pb.ThinkRequest:
    return pb.ThinkRequest(request_id=uuid.uuid4().hex, device_id="bench", query=query, **fields)


def busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine so far (Linux ``/proc/stat``; 0 elsewhere).
    Minus this process's CPU time over an interval, it shows what other processes took."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def machine_info(threads: int) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "grpc": grpc.__version__,
        "torch_threads": threads,
    }


def plot_before_after(report: dict[str, Any], breakdown: str, title: str, path: Path) -> None:
    """Bars of escalation rate and accuracy before and after a loop turn, per group and overall.
    ``report``: a loop benchmark's, with ``before`` and ``after`` figures (``escalation_rate``,
    ``accuracy``, and the same per group under ``breakdown``), ``base_version`` and ``new_version``."""
    before, after = report["before"], report["after"]
    groups = {g: (before[breakdown][g], after[breakdown][g]) for g in before[breakdown]}
    overall = (before, after)
    labels = (f"before (v{report['base_version']})", f"after (v{report['new_version']})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [*groups.values(), overall]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width, x = 0.38, range(len(rows))
    for ax, key, heading in (
        (axes[0], "escalation_rate", "escalated to the cloud"),
        (axes[1], "accuracy", "answers right"),
    ):
        for side, (offset, label) in enumerate(((-width / 2, labels[0]), (width / 2, labels[1]))):
            ax.bar([i + offset for i in x], [100 * row[side][key] for row in rows], width, label=label)
        ax.set_xticks(list(x), [*groups, "all"])
        ax.set_ylabel("%")
        ax.set_title(heading)
        ax.set_ylim(0, 105)
        ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
