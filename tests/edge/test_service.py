"""EdgeService logic that needs a cloud misbehaving on cue: a stand-in cloud client
(the real Reasoner over gRPC is exercised in test_api.py and test_escalation.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.outbox import Outbox
from edgecloud.edge.runtime import EdgeBundle, ModelSlot
from edgecloud.edge.service import EdgeService, QueryRequest
from edgecloud.edge.triage import Requested
from edgecloud.shared.errors import UnavailableError
from edgecloud.shared.reasoning import Event, EventKind, ThinkParams


class BreaksMidAnswer:
    """A cloud that starts answering, then drops for good."""

    async def healthy(self) -> bool:
        return True

    async def think(self, params: ThinkParams) -> AsyncIterator[Event]:
        yield Event(seq=1, session_id="s-1", kind=EventKind.ACCEPTED)
        yield Event(seq=2, session_id="s-1", kind=EventKind.ANSWER_DELTA, text="4")
        raise UnavailableError("connection refused, 6 attempts")

    async def close(self) -> None:
        return None


@pytest.fixture
def service(shipped_models: Path, tmp_path: Path) -> EdgeService:
    config = EdgeConfig(bundle=shipped_models / "edge-student", outbox=tmp_path / "outbox.sqlite3", cloud="127.0.0.1:9")
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
    request = QueryRequest(query="12 * 3 - 7 + 40", route=Requested.AUTO)
    result = asyncio.run(service.query(request))
    assert result.status == "completed" and result.route_taken == "edge"
    assert result.degraded and result.reason == "cloud_unavailable"
    assert result.answer == service.slot.current.model.answer(request.query).text


def test_a_live_stream_cut_after_its_answer_began_fails(service: EdgeService) -> None:
    async def consume() -> list[str]:
        seen = []
        async for item in service.stream(QueryRequest(query="12 * 3 - 7 + 40", route=Requested.AUTO)):
            seen.append(item.event)
        return seen

    with pytest.raises(UnavailableError, match="after the answer began"):
        asyncio.run(consume())
