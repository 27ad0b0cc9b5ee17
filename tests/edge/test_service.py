"""EdgeService logic that needs a cloud misbehaving on cue: the stand-in cloud client of
tests/helpers/fake_cloud.py (the real Reasoner over gRPC is exercised in api/test_app.py and
test_escalation.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.outbox import Outbox
from edgecloud.edge.runtime import EdgeBundle, ModelSlot
from edgecloud.edge.service import EdgeService, QueryRequest
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.errors import ResourceExhaustedError, UnavailableError
from edgecloud.shared.reasoner.session import Event, EventKind, ThinkParams
from tests.helpers.fake_cloud import FakeCloud


class BreaksMidAnswer(FakeCloud):
    """A cloud that starts answering, then drops for good."""

    async def respond(self, params: ThinkParams) -> AsyncIterator[Event]:
        yield Event(seq=1, session_id="s-1", kind=EventKind.ACCEPTED)
        yield Event(seq=2, session_id="s-1", kind=EventKind.ANSWER_DELTA, text="4")
        raise UnavailableError("connection refused, 6 attempts")


@pytest.fixture
def service(shipped_base_models: Path, tmp_path: Path) -> EdgeService:
    config = EdgeConfig(
        bundle=shipped_base_models / "edge-student", outbox=tmp_path / "outbox.sqlite3", cloud="127.0.0.1:9"
    )
    bundle = EdgeBundle.load(config.bundle, threads=1)
    service = EdgeService(
        config,
        ModelSlot(bundle),
        client=BreaksMidAnswer(),
        outbox=Outbox(config.outbox),  # type: ignore[arg-type]
        metrics=EdgeMetrics(),
    )
    service.cloud_healthy = True
    return service


def test_a_cloud_answer_cut_midway_falls_back_locally_when_nothing_was_shown(service: EdgeService) -> None:
    unsure = EdgeBundle(
        Unsure(service.slot.current.model), service.slot.current.manifest, service.slot.current.directory
    )
    service.slot.swap(unsure)  # type: ignore[arg-type]
    request = QueryRequest(query="12 * 3 - 7 + 40", route=Requested.AUTO)
    result = asyncio.run(service.query(request))
    assert result.status == "completed" and result.route_taken == "edge"
    assert result.degraded and result.reason == "cloud_unavailable"
    assert result.answer == "45"


def test_a_cloud_answer_cut_midway_waits_in_the_outbox_when_the_edge_abstained(service: EdgeService) -> None:
    # The shipped student abstains on multi-step queries: an empty "degraded" answer would be no
    # answer at all, so the query waits in the outbox for the cloud instead.
    request = QueryRequest(query="12 * 3 - 7 + 40", route=Requested.AUTO)
    assert service.slot.current.model.answer(request.query).abstained
    result = asyncio.run(service.query(request))
    assert result.status == "accepted" and result.route_taken == "cloud" and result.answer is None
    assert service.outbox.get(request.id) is not None


class Unsure:
    """The shipped student, but with an answer it doubts (confidence 0.1) on every query."""

    def __init__(self, model: Any) -> None:
        self.model, self.calibration = model, model.calibration

    def answer(self, query: str) -> Any:
        return dataclasses.replace(self.model.answer(query), text="45", confidence=0.1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def test_a_live_stream_cut_after_its_answer_began_fails(service: EdgeService) -> None:
    async def consume() -> list[str]:
        seen = []
        async for item in service.stream(QueryRequest(query="12 * 3 - 7 + 40", route=Requested.AUTO)):
            seen.append(item.event)
        return seen

    with pytest.raises(UnavailableError, match="after the answer began"):
        asyncio.run(consume())


class FluentButUnsure:
    """The shipped student's features, with what a pair's reasoner gives on a hard query: an answer
    after ninety near-certain scratchpad tokens, which its calibration doubts (confidence 0.09)."""

    def __init__(self, model: Any) -> None:
        self.model, self.calibration = model, model.calibration

    def answer(self, query: str) -> Any:
        real = self.model.answer(query)
        fluent = (math.log(0.999),) * 90
        return dataclasses.replace(real, text="9533", token_logprobs=fluent, confidence=0.09, reasoning_tokens=85)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def test_an_escalation_says_the_query_is_at_least_as_hard_as_the_edge_is_unsure(
    shipped_base_models: Path, tmp_path: Path
) -> None:
    # The cloud sizes its thinking budget by the hint's difficulty: a fluent scratchpad ending in an
    # answer the edge doubts must not read as an easy query (the cloud gave k=4 ~40 tokens, and failed).
    from edgecloud.modelkit.arithmetic.task import Split, generate

    config = EdgeConfig(
        bundle=shipped_base_models / "edge-student", outbox=tmp_path / "outbox.sqlite3", cloud="127.0.0.1:9"
    )
    real = EdgeBundle.load(config.bundle, threads=1)
    cloud = FakeCloud()  # answers at once and keeps the parameters of every escalation
    service = EdgeService(
        config,
        ModelSlot(EdgeBundle(FluentButUnsure(real.model), real.manifest, real.directory)),  # type: ignore[arg-type]
        client=cloud,
        outbox=Outbox(config.outbox),
        metrics=EdgeMetrics(),
    )
    service.cloud_healthy = True
    for problem in generate(40, 23, Split.TEST, {3: 0.5, 4: 0.5}):
        asyncio.run(service.query(QueryRequest(query=problem.query, route=Requested.AUTO)))
    assert len(cloud.asked) >= 30  # the shipped student escalates multi-step queries
    for params in cloud.asked:
        assert params.hint is not None and params.hint.confidence == pytest.approx(0.09)
        assert params.hint.estimated_difficulty >= 1 - params.hint.confidence - 1e-9, params.hint


class AtCapacity(FakeCloud):
    """A cloud that is up but refuses every session: its queue is full."""

    async def respond(self, params: ThinkParams) -> AsyncIterator[Event]:
        raise ResourceExhaustedError("queue full (64 sessions queued)")
        yield  # an async generator, as FakeCloud.respond is


def test_a_cloud_at_capacity_is_a_429_to_retry_for_openai_clients(shipped_base_models: Path, tmp_path: Path) -> None:
    import openai

    from edgecloud.edge.api.app import create_app
    from edgecloud.edge.api.response_store import ResponseStore
    from edgecloud.shared.base.asgi import ThreadedServer

    config = EdgeConfig(bundle=shipped_base_models / "edge-student", outbox=tmp_path / "outbox.sqlite3", cloud="127.0.0.1:9",
                        port=0, health_interval_s=3600)  # fmt: skip
    service = EdgeService(config, ModelSlot(EdgeBundle.load(config.bundle, threads=1)), client=AtCapacity(),
                          outbox=Outbox(config.outbox), metrics=EdgeMetrics())  # fmt: skip
    server = ThreadedServer(create_app(service, ResponseStore(config.outbox)), lifespan="on", name="edge-at-capacity")
    server.start(timeout=60)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "12 * 3 - 7 + 40"}]
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="edgecloud-cloud", messages=messages)
        assert limited.value.status_code == 429 and limited.value.response.headers["retry-after"]
        assert "at capacity" in limited.value.message and limited.value.body["type"] == "rate_limit_error"
        # The edge abstains on this one: with nothing to fall back on, auto is refused the same way.
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="edgecloud", messages=messages)
        simple = client.chat.completions.create(model="edgecloud", messages=[{"role": "user", "content": "12 + 30"}])
        assert simple.model_extra["edgecloud"]["route_taken"] == "edge" and simple.choices[0].message.content == "42"
        queued = client.responses.create(model="edgecloud-cloud", input="12 * 3 - 7 + 40")  # may wait: outbox
        assert queued.status == "queued"
    finally:
        server.stop(30)
