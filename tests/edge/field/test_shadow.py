"""Shadow checks against the real Reasoner (the shipped teacher over gRPC on a loopback port): the
answers the edge keeps are verified at low priority after the caller has them, agreement is
counted per bundle version by the bundle's matching rule, the cloud logs each check as one, and a
check the cloud sheds under load is dropped at once, never retried."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.escalation import CloudClient, CloudClientConfig
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.outbox import Outbox
from edgecloud.edge.runtime import EdgeAnswer, EdgeBundle, ModelSlot
from edgecloud.edge.service import EdgeService, QueryRequest
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.errors import ResourceExhaustedError
from edgecloud.shared.escalations.records import read_escalations
from edgecloud.shared.reasoner.session import ThinkParams
from tests.helpers.cloud import RunningServer, make_config

SIMPLE = ["3 + 4", "12 - 5", "6 * 7", "20 + 22", "9 * 9", "15 - 8", "7 + 8", "4 * 6"]


class ConfidentlyWrong:
    """The shipped student, except that every answer it gives is off by one and sure of itself."""

    def __init__(self, model: Any) -> None:
        self.model, self.calibration = model, model.calibration

    def answer(self, query: str) -> EdgeAnswer:
        right = self.model.answer(query)
        wrong = str(int(right.text) + 1) if right.text.lstrip("-").isdigit() else right.text
        return dataclasses.replace(right, text=wrong, confidence=0.999)


def make_service(bundle_dir: Path, port: int, tmp_path: Path, **overrides: Any) -> EdgeService:
    config = EdgeConfig(bundle=bundle_dir, outbox=tmp_path / "outbox.sqlite3", cloud=f"127.0.0.1:{port}",
                        device_id="dev-shadow", **{"shadow_share": 1.0, "shadow_per_minute": 6000.0, **overrides})  # fmt: skip
    client = CloudClient(CloudClientConfig(target=config.cloud or "", deadline_s=60.0))
    return EdgeService(config, ModelSlot(EdgeBundle.load(config.bundle, threads=1)), client=client,
                       outbox=Outbox(config.outbox), metrics=EdgeMetrics())  # fmt: skip


async def answer_all(service: EdgeService, queries: list[str], *, burst: bool = False) -> list[Any]:
    """The queries one after another; unless ``burst``, each one's check ends before the next query
    (a burst meets the in-flight cap and the rate limit)."""
    await service.start()
    try:
        results = []
        for query in queries:
            results.append(await service.query(QueryRequest(query=query, route=Requested.AUTO)))
            if not burst:
                await service.shadow.drain()  # type: ignore[union-attr]
        await service.shadow.drain()  # type: ignore[union-attr]
        return results
    finally:
        await service.stop()


@pytest.fixture
def logging_reasoner(teacher_dir: Path, teacher: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    from edgecloud.cloud.sessions import SessionConfig

    sessions = SessionConfig(escalation_log=tmp_path / "escalations.jsonl")
    running = RunningServer(make_config(teacher_dir, tmp_path, sessions=sessions), loaded=teacher)
    yield running
    running.stop()


def test_kept_answers_are_checked_after_the_caller_has_them_and_agreement_is_counted(
    shipped_base_models: Path, logging_reasoner: RunningServer, tmp_path: Path
) -> None:
    service = make_service(shipped_base_models / "edge-student", logging_reasoner.port, tmp_path)
    results = asyncio.run(answer_all(service, SIMPLE))
    kept = [r for r in results if r.route_taken == "edge" and r.reason == "confident"]
    assert len(kept) >= 6, [(r.answer, r.reason) for r in results]
    bundle = service.slot.current
    quality = service.quality.of(bundle.name, bundle.version)
    assert (quality.read, quality.kept, quality.checks, quality.shed) == (len(SIMPLE), len(kept), len(kept), 0)
    assert quality.agreed == quality.checks  # the teacher gets these right, and so does the shipped student

    checks = [r for r in read_escalations(logging_reasoner.config.sessions.escalation_log) if r.kind == "shadow_check"]
    assert sorted(r.request_id for r in checks) == sorted(f"shadow-{r.id}" for r in kept)
    by_id = {f"shadow-{r.id}": r.answer for r in kept}
    assert all(c.edge is not None and c.edge.answer == by_id[c.request_id] for c in checks)
    assert all(c.device_id == "dev-shadow" and c.features for c in checks)  # the features travel too
    samples = service.metrics.registry.get_sample_value
    assert samples("edgecloud_edge_shadow_checks_total", {"version": str(bundle.version), "outcome": "agreed"}) == len(
        kept
    )


def test_a_confidently_wrong_student_disagrees_with_the_cloud(
    shipped_base_models: Path, logging_reasoner: RunningServer, tmp_path: Path
) -> None:
    service = make_service(shipped_base_models / "edge-student", logging_reasoner.port, tmp_path)
    current = service.slot.current
    service.slot.swap(EdgeBundle(ConfidentlyWrong(current.model), current.manifest, current.directory))  # type: ignore[arg-type]
    results = asyncio.run(answer_all(service, SIMPLE))
    assert all(r.route_taken == "edge" for r in results)  # the watch window would see nothing wrong
    quality = service.quality.of(current.name, current.version)
    assert quality.checks == len(SIMPLE) and quality.agreed == 0
    assert quality.agreement.interval[1] < 0.4


def test_the_share_and_the_rate_limit_bound_the_checks(
    shipped_base_models: Path, logging_reasoner: RunningServer, tmp_path: Path
) -> None:
    off = make_service(shipped_base_models / "edge-student", logging_reasoner.port, tmp_path, shadow_share=0.0)
    assert off.shadow is None
    (tmp_path / "l").mkdir()
    limited = make_service(
        shipped_base_models / "edge-student", logging_reasoner.port, tmp_path / "l", shadow_per_minute=6.0
    )  # a bucket of one check: the rest of the burst is skipped
    results = asyncio.run(answer_all(limited, SIMPLE, burst=True))
    bundle = limited.slot.current
    assert limited.quality.of(bundle.name, bundle.version).checks == 1
    kept = sum(r.reason == "confident" for r in results)
    assert limited.shadow is not None and limited.shadow.skipped == kept - 1


def test_a_verification_the_cloud_sheds_is_refused_at_once_and_not_retried(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the cloud's model backend needs torch")
    from edgecloud.cloud.engine import EngineConfig
    from tests.helpers.cloud import endless_thinker_model

    loaded = endless_thinker_model(tmp_path / "endless")  # busy for as long as its budget says
    busy = RunningServer(make_config(tmp_path / "endless", tmp_path, engine=EngineConfig(max_batch=1)), loaded=loaded)
    try:

        async def main() -> tuple[float, int]:
            async with CloudClient(CloudClientConfig(target=f"127.0.0.1:{busy.port}", deadline_s=30.0)) as client:
                for i in range(3):  # one runs (about a second each), the others wait
                    await client.submit(ThinkParams(request_id=f"user-{i}", query="1+1", device_id="d",
                                                    max_reasoning_tokens=1000))  # fmt: skip
                engine = busy.service.sessions.engine
                while engine.active + engine.queue_depth < 3:  # the decode thread has taken the first
                    await asyncio.sleep(0.01)
                started = time.monotonic()
                check = ThinkParams(request_id="shadow-1", query="2+2", device_id="d", priority="verification")
                with pytest.raises(ResourceExhaustedError, match="verification shed"):
                    async for _ in client.think(check):
                        pass
                return time.monotonic() - started, client.reconnects

        took, reconnects = busy.call(main(), timeout=60)
        assert reconnects == 0 and took < 2.0
    finally:
        busy.stop()
