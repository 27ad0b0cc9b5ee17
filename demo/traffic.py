"""The demo's load: mixed queries sent to the edge daemons' HTTP APIs by a pool of
client threads, one record per query, plus a sampler of the daemons' own gauges.

Queries come from the task's TEST split (:meth:`~edgecloud.demo.workloads.DemoTask.queries`),
so every answer can be checked by the bundle's answer rule. While the cloud is down, a share of
the queries outside the task's simple group insists on the cloud (``route: cloud``): those are accepted into
the edge's outbox and fetched again once delivered.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edgecloud.demo.workloads import DemoQuery

__all__ = ["QueryRecord", "Sampler", "Traffic", "metric_values"]

AnswerCheck = Callable[[str | None, str], bool | None]


@dataclass
class QueryRecord:
    index: int
    group: str
    query: str
    expected: str
    edge: int
    """Index of the edge daemon it was sent to."""
    requested: str
    phase: str
    sent_at: float
    """Seconds since the demo's traffic began."""
    http_status: int = 0
    error: str = ""
    id: str = ""
    status: str = ""
    route: str = ""
    reason: str = ""
    answer: str | None = None
    correct: bool | None = None
    confidence: float | None = None
    edge_answer: str | None = None
    edge_correct: bool | None = None
    latency_ms: float = 0.0
    client_ms: float = 0.0
    reasoning_tokens: int = 0
    degraded: bool = False
    model_version: int = 0
    delivered_after_s: float | None = None
    """For outboxed queries: seconds from acceptance to the delivered answer being fetched."""

    @property
    def failed(self) -> bool:
        return self.http_status not in (200, 202) or bool(self.error)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def metric_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric in a Prometheus text page, by their sorted labels."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


class Traffic:
    """Sends ``queries`` round-robin over ``edge_urls`` with ``concurrency`` client threads, judging
    each answer with ``correct``."""

    def __init__(
        self,
        edge_urls: list[str],
        queries: list[DemoQuery],
        *,
        correct: AnswerCheck,
        concurrency: int,
        phase: Callable[[], str],
        insist_on_cloud: Callable[[], bool],
        on_done: Callable[[QueryRecord], None],
        gate: Callable[[], None] = lambda: None,
        timeout_s: float = 120.0,
    ) -> None:
        self.edge_urls = edge_urls
        self.queries = queries
        self.correct = correct
        self.concurrency = concurrency
        self.phase = phase
        self.insist_on_cloud = insist_on_cloud
        self.on_done = on_done
        self.gate = gate
        self.records: list[QueryRecord | None] = [None] * len(queries)
        self.started = time.monotonic()
        self._clients = [httpx.Client(base_url=url, timeout=timeout_s) for url in edge_urls]
        self._insisted = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _send(self, index: int) -> QueryRecord:
        self.gate()  # may hold the clients back (the demo does while the cloud is down)
        query = self.queries[index]
        edge = index % len(self.edge_urls)
        phase = self.phase()
        requested = "cloud" if not query.simple and self.insist_on_cloud() and index % 3 == 0 else "auto"
        record = QueryRecord(
            index=index,
            group=query.group,
            query=query.query,
            expected=query.answer,
            edge=edge,
            requested=requested,
            phase=phase,
            sent_at=round(self.elapsed(), 3),
        )
        started = time.perf_counter()
        try:
            response = self._clients[edge].post("/v1/query", json={"query": query.query, "route": requested})
            record.http_status = response.status_code
            body = response.json()
            if response.status_code not in (200, 202):  # 202: accepted into the outbox
                record.error = str(body.get("error", body))[:300]
            else:
                self._fill(record, body)
        except (httpx.HTTPError, ValueError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"[:300]
        record.client_ms = round((time.perf_counter() - started) * 1e3, 3)
        self.records[index] = record
        self.on_done(record)
        return record

    def _fill(self, record: QueryRecord, body: dict[str, Any]) -> None:
        record.id = body["id"]
        record.status = body["status"]
        record.route = body["route_taken"]
        record.reason = body["reason"]
        record.answer = body["answer"]
        record.correct = self.correct(body["answer"], record.expected)
        record.confidence = body.get("confidence")
        record.edge_answer = body.get("edge_answer", body["answer"] if body["route_taken"] == "edge" else None)
        record.edge_correct = self.correct(record.edge_answer, record.expected)
        record.latency_ms = float(body["latency_ms"])
        record.reasoning_tokens = int(body["usage"]["reasoning_tokens"])
        record.degraded = bool(body["degraded"])
        record.model_version = int(body["model_version"])

    def run(self) -> list[QueryRecord]:
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="demo-client") as pool:
            list(pool.map(self._send, range(len(self.queries))))
        return [r for r in self.records if r is not None]

    def collect_outbox(self, timeout_s: float) -> list[QueryRecord]:
        """Poll every accepted query until the edge has its delivered answer; the ones still waiting."""
        waiting = [r for r in self.records if r is not None and r.status == "accepted"]
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            for record in list(waiting):
                try:
                    response = self._clients[record.edge].get(f"/v1/query/{record.id}")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200 and response.json()["status"] == "completed":
                    body = response.json()
                    record.delivered_after_s = round(self.elapsed() - record.sent_at, 2)
                    record.answer = body["answer"]
                    record.correct = self.correct(body["answer"], record.expected)
                    record.reasoning_tokens = int(body["usage"]["reasoning_tokens"])
                    waiting.remove(record)
            time.sleep(0.25)
        return waiting

    def close(self) -> None:
        for client in self._clients:
            client.close()


@dataclass
class Sample:
    t: float
    outbox_depth: list[float]
    cloud_up: list[float]
    model_version: list[float]
    shadow_checks: list[float] = field(default_factory=list)
    """Each daemon's shadow checks so far that the cloud answered (agreed or not)."""


@dataclass
class Sampler:
    """Reads each daemon's outbox depth, cloud health, model version and shadow checks twice a second."""

    edge_urls: list[str]
    clock: Callable[[], float]
    samples: list[Sample] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.wait(0.5):
                depth, up, version, checks = [], [], [], []
                for url in self.edge_urls:
                    try:
                        text = client.get(f"{url}/metrics").text
                    except httpx.HTTPError:
                        self.counts["scrape_failed"] += 1
                        continue
                    depth.append(sum(metric_values(text, "edgecloud_edge_outbox_depth").values()))
                    up.append(sum(metric_values(text, "edgecloud_edge_cloud_up").values()))
                    version.append(max(metric_values(text, "edgecloud_edge_model_version").values(), default=0))
                    outcomes = metric_values(text, "edgecloud_edge_shadow_checks_total")
                    checks.append(sum(v for labels, v in outcomes.items() if ("outcome", "shed") not in labels))
                self.samples.append(Sample(round(self.clock(), 2), depth, up, version, checks))
