"""The typed result of a query and its stream items: made once, serialised once by a router."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest

from edgecloud.edge.pipeline.request import QueryRequest
from edgecloud.edge.pipeline.result import (
    StreamItem,
    accepted_result,
    cloud_result,
    edge_result,
    final_result,
)
from edgecloud.edge.pipeline.verdict import LocalVerdict, judge
from edgecloud.edge.runtime import EdgeAnswer
from edgecloud.edge.triage import Requested, TriagePolicy
from edgecloud.shared.reasoner.session import Event, EventKind, Usage


@dataclass(frozen=True)
class Bundle:
    name: str = "student"
    version: int = 3
    sha256: str = "ab" * 32


def verdict(confidence: float = 0.99, output_tokens: int = 3) -> LocalVerdict:
    edge = EdgeAnswer("42", (-0.001,) * output_tokens, confidence, np.ones(4, np.float32), 9, output_tokens, 1.0)
    return judge(Bundle(), edge, TriagePolicy(threshold=0.5), requested=Requested.AUTO, cloud_healthy=True)  # type: ignore[arg-type]


def test_the_edge_result_withholds_an_answer_longer_than_the_limit() -> None:
    started = time.perf_counter()
    kept = edge_result(QueryRequest(query="q", max_output_tokens=3), verdict(), started, degraded=False)
    assert (kept.answer, kept.finish_reason, kept.reason, kept.route_taken) == ("42", "stop", "confident", "edge")
    cut = edge_result(QueryRequest(query="q", max_output_tokens=2), verdict(), started, degraded=True, reason="x")
    assert (cut.answer, cut.finish_reason, cut.reason, cut.degraded) == ("", "length", "x", True)
    assert cut.model_name == "student" and cut.model_version == 3 and cut.latency_ms >= 0


def test_the_cloud_result_keeps_what_the_edge_said_and_the_cloud_counted() -> None:
    usage = Usage(input_tokens=5, reasoning_tokens=40, output_tokens=2)
    completed = Event(seq=9, session_id="s", kind=EventKind.COMPLETED, text="84", usage=usage,
                      finish_reason="length", cached=True)  # fmt: skip
    result = cloud_result(QueryRequest(query="q"), verdict(0.2), completed, time.perf_counter(), "think")
    assert (result.answer, result.edge_answer, result.reasoning, result.cached) == ("84", "42", "think", True)
    assert (result.input_tokens, result.reasoning_tokens, result.output_tokens) == (5, 40, 2)
    assert result.finish_reason == "length" and result.route_taken == "cloud" and result.confidence == 0.2


def test_an_accepted_result_is_degraded_with_no_answer() -> None:
    result = accepted_result(QueryRequest(query="q", id="q-1"), verdict(), time.perf_counter())
    body = result.to_json()
    assert body["status"] == "accepted" and body["answer"] is None and body["degraded"] is True
    assert body["id"] == "q-1" and body["reason"] == "accepted_for_later_delivery"


@pytest.mark.parametrize(
    ("item", "data"),
    [
        (StreamItem(event="answer", text="4"), {"text": "4"}),
        (StreamItem(event="reasoning", text="so"), {"text": "so"}),
        (StreamItem(event="reasoning", reasoning_tokens=16), {"reasoning_tokens": 16}),
        (StreamItem.routed(verdict(0.1234567)), {"route": "cloud", "reason": "unsure", "confidence": 0.123457}),
        (StreamItem.routed(verdict(math.nan)), {"route": "cloud", "reason": "unsure", "confidence": None}),
    ],
)
def test_each_stream_item_has_the_data_of_edgecloud_s_own_stream(item: StreamItem, data: dict[str, object]) -> None:
    assert item.to_json() == data


def test_the_done_item_carries_the_typed_result() -> None:
    result = edge_result(QueryRequest(query="q"), verdict(), time.perf_counter(), degraded=False)
    done = StreamItem.done(result)
    assert done.event == "done" and done.result is result and done.to_json() == result.to_json()

    async def items(*these: StreamItem) -> AsyncIterator[StreamItem]:
        for item in these:
            yield item

    assert asyncio.run(final_result(items(StreamItem(event="answer", text="42"), done))) is result
    with pytest.raises(RuntimeError, match="without its result"):
        asyncio.run(final_result(items(StreamItem(event="answer", text="42"))))
