"""The one Server-Sent Events writer of the edge API: the wire form of an event, the first-event
rule, and an error mid-stream ending the stream with the body a JSON error carries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edgecloud.edge.api import sse
from edgecloud.edge.api.app import create_app
from edgecloud.edge.api.errors import error_body
from edgecloud.edge.api.response_store import ResponseStore
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.outbox import Outbox
from edgecloud.edge.runtime import EdgeBundle, ModelSlot
from edgecloud.edge.service import EdgeService
from edgecloud.shared.base.asgi import ThreadedServer
from edgecloud.shared.base.errors import InvalidInputError, UnavailableError
from edgecloud.shared.reasoner.session import Event, EventKind, ThinkParams
from tests.helpers.fake_cloud import FakeCloud


async def numbers(*values: int, fail: Exception | None = None) -> AsyncIterator[int]:
    for value in values:
        yield value
    if fail is not None:
        raise fail


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


def test_an_event_is_its_name_and_one_line_of_compact_json() -> None:
    assert sse.frame({"text": "4", "n": [1, 2]}, "answer") == b'event: answer\ndata: {"text":"4","n":[1,2]}\n\n'
    assert sse.frame({"a": "é"}) == b'data: {"a":"\\u00e9"}\n\n'  # OpenAI's chat stream names no event


def test_an_error_before_the_first_item_raises_while_a_status_can_still_be_sent() -> None:
    with pytest.raises(InvalidInputError, match="query is empty"):
        asyncio.run(sse.begin(numbers(fail=InvalidInputError("query is empty"))))

    async def begun() -> list[int]:
        items = await sse.begin(numbers(1, 2, 3))
        return [item async for item in items]

    assert asyncio.run(begun()) == [1, 2, 3]  # the first item taken early is not lost


def test_an_error_after_the_first_item_ends_the_stream_with_the_json_error_body() -> None:
    failure = UnavailableError("the cloud stream broke after the answer began")

    def render(value: int) -> list[bytes]:
        return [sse.frame({"n": value}, "answer")] * value

    def error(exc: UnavailableError) -> bytes:  # as POST /v1/query writes it
        return sse.frame(error_body(exc, openai=False), "error")

    chunks = asyncio.run(collect(sse.encode(numbers(1, 2, fail=failure), render, error)))  # type: ignore[arg-type]
    assert (
        len(chunks) == 4
        and chunks[:3] == [b'event: answer\ndata: {"n":1}\n\n'] + [b'event: answer\ndata: {"n":2}\n\n'] * 2
    )
    name, data = chunks[-1].decode().strip().split("\n")
    assert name == "event: error"
    assert json.loads(data.removeprefix("data: ")) == {"error": {"type": "unavailable", "message": str(failure)}}


def test_an_unexpected_error_is_not_turned_into_an_event() -> None:
    with pytest.raises(RuntimeError):
        asyncio.run(collect(sse.encode(numbers(1, fail=RuntimeError("bug")), lambda n: [b"x"], lambda e: b"e")))


def test_the_response_is_an_uncached_event_stream() -> None:
    response = sse.response(numbers())  # type: ignore[arg-type]
    assert response.media_type == "text/event-stream" and response.headers["cache-control"] == "no-cache"


class BreaksMidAnswer(FakeCloud):
    """A cloud that starts answering, then drops for good."""

    async def respond(self, params: ThinkParams) -> AsyncIterator[Event]:
        yield Event(seq=1, session_id="s-1", kind=EventKind.ACCEPTED)
        yield Event(seq=2, session_id="s-1", kind=EventKind.ANSWER_DELTA, text="4")
        raise UnavailableError("connection refused, 6 attempts")


def test_both_streaming_routes_end_a_broken_stream_with_their_json_error_body(
    shipped_base_models: Path, tmp_path: Path
) -> None:
    config = EdgeConfig(bundle=shipped_base_models / "edge-student", outbox=tmp_path / "outbox.sqlite3",
                        cloud="127.0.0.1:9", port=0, health_interval_s=3600)  # fmt: skip
    service = EdgeService(config, ModelSlot(EdgeBundle.load(config.bundle, threads=1)), client=BreaksMidAnswer(),
                          outbox=Outbox(config.outbox), metrics=EdgeMetrics())  # fmt: skip
    server = ThreadedServer(create_app(service, ResponseStore(config.outbox)), lifespan="on", name="edge-sse")
    server.start(timeout=60)
    query = "12 * 3 - 7 + 40"  # the shipped student abstains: escalated, and the cloud breaks mid-answer
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            own = http.post("/v1/query", json={"query": query, "stream": True}).text.strip().split("\n\n")
            assert own[0].startswith("event: route") and own[1] == 'event: answer\ndata: {"text":"4"}'
            name, data = own[-1].split("\n")
            assert name == "event: error" and set(json.loads(data[6:])["error"]) == {"type", "message"}
            assert json.loads(data[6:])["error"]["type"] == "unavailable"
            ask = {"model": "edgecloud", "stream": True, "messages": [{"role": "user", "content": query}]}
            chat = http.post("/v1/chat/completions", json=ask).text.strip().split("\n\n")
            assert chat[-1] == "data: [DONE]"
            error = json.loads(chat[-2][6:])["error"]
            assert error["code"] == "unavailable" and error["type"] == "server_error" and "broke" in error["message"]
    finally:
        server.stop(30)
