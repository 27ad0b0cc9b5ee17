"""OpenAI's Responses API on the edge daemon: ``POST /v1/responses`` (streaming or not, in the
background or not) and ``GET /v1/responses/{id}``.

Routed like ``/v1/chat/completions`` (the model id or edgecloud's ``route`` field; ``reasoning.effort``
sets the cloud's thinking budget). A stream sends OpenAI's events, each with its
``sequence_number``: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, ``response.completed``. The hidden
reasoning is counted in ``usage.output_tokens_details.reasoning_tokens``.

``background: true`` answers at once (``queued``) and runs the query; ``GET /v1/responses/{id}``
polls it (``in_progress``, then ``completed``). A cloud-only query while the cloud is down goes to
the outbox, as on ``/v1/query``: it is ``queued`` until the cloud answers it, after a daemon
restart too. With ``stream: true`` too, the events are kept as they happen: ``GET
/v1/responses/{id}?stream=true&starting_after=N`` replays those after N and follows the rest, so a
client cut off resumes with no gap and no duplicate. ``POST /v1/responses/{id}/cancel`` stops one
that is queued or in progress. Not yet: a background query's in-flight state is held in memory (a
restart forgets one still running outside the outbox).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from edgecloud.edge.openai_api import EFFORTS, MODEL_ROUTES, openai_error
from edgecloud.edge.service import EdgeService, QueryRequest, QueryResult, StreamItem
from edgecloud.edge.triage import Requested
from edgecloud.shared.errors import EdgecloudError, InvalidInputError

__all__ = ["ResponsesBody", "responses_router"]

MAX_BACKGROUND = 1024
"""Background responses held in memory at once (finished ones beyond it are forgotten, oldest first)."""


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[dict[str, Any]]


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="allow")
    effort: Literal["low", "medium", "high"] | None = None


class ResponsesBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use
    model: str = "edgecloud"
    input: str | list[InputMessage]
    stream: bool = False
    background: bool = False
    reasoning: Reasoning | None = None
    instructions: str | None = None
    route: Literal["auto", "edge", "cloud"] | None = None
    max_reasoning_tokens: int | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    """Tool calling is not supported; a request that needs it is refused, not answered without it."""


def _query_text(body: ResponsesBody) -> str:
    if isinstance(body.input, str):
        if not body.input.strip():
            raise InvalidInputError("input is empty")
        return body.input
    for message in reversed(body.input):
        if message.role == "user":
            if isinstance(message.content, str):
                return message.content
            return "".join(p.get("text", "") for p in message.content if p.get("type") in ("input_text", "text"))
    raise InvalidInputError("input contains no user message with text")


def _request(body: ResponsesBody, service: EdgeService) -> QueryRequest:
    route = Requested(body.route) if body.route else MODEL_ROUTES.get(body.model, Requested.AUTO)
    budget = body.max_reasoning_tokens
    if budget is None and body.reasoning is not None and body.reasoning.effort is not None:
        budget = service.config.reasoning_effort_tokens[EFFORTS.index(body.reasoning.effort)]
    return QueryRequest(query=_query_text(body), route=route, max_reasoning_tokens=budget,
                        id=f"resp_{uuid.uuid4().hex}")  # fmt: skip


def _message(response_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{response_id.removeprefix('resp_')}",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _response(
    response_id: str, model: str, created: float, status: str, result: QueryResult | None, *, background: bool
) -> dict[str, Any]:
    """The ``response`` object in ``status``, with the answer and usage once ``result`` is complete."""
    done = result is not None and result.status == "completed"
    body: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": background,
        "model": model,
        "output": [_message(response_id, result.answer or "")] if done else [],
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
    }
    if done:
        assert result is not None
        completion = result.reasoning_tokens + result.output_tokens
        body["completed_at"] = time.time()
        body["usage"] = {
            "input_tokens": result.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": result.reasoning_tokens},
            "total_tokens": result.input_tokens + completion,
        }
        body["edgecloud"] = {"route_taken": result.route_taken, "reason": result.reason, "degraded": result.degraded}
    return body


_STATUS = {"accepted": "queued", "completed": "completed", "failed": "failed"}
CANCELLED = "cancelled by the client"


def _status(result: QueryResult) -> str:
    if result.status == "failed" and result.reason == CANCELLED:
        return "cancelled"
    return _STATUS.get(result.status, result.status)


class _Background:
    """Background responses in flight or recently finished, by id (bounded)."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[asyncio.Task[QueryResult], str, float]] = {}
        self.runs: dict[str, _Run] = {}

    def start_stream(self, response_id: str, model: str, created: float, events: AsyncIterator[dict[str, Any]]) -> _Run:
        run = _Run(model, created)
        run.task = asyncio.create_task(run.produce(events))
        self.runs[response_id] = run
        while len(self.runs) > MAX_BACKGROUND and (oldest := next(iter(self.runs))) and self.runs[oldest].done:
            del self.runs[oldest]
        return run

    def start(self, service: EdgeService, request: QueryRequest, model: str) -> None:
        self.tasks[request.id] = (asyncio.create_task(service.query(request)), model, time.time())
        while len(self.tasks) > MAX_BACKGROUND:
            oldest = next(iter(self.tasks))
            if not self.tasks[oldest][0].done():
                break
            del self.tasks[oldest]

    def state(self, service: EdgeService, response_id: str) -> dict[str, Any] | None:
        if response_id in self.runs:
            return self.runs[response_id].state(response_id)
        if response_id in self.tasks:
            task, model, created = self.tasks[response_id]
            if not task.done():
                return _response(response_id, model, created, "in_progress", None, background=True)
            if task.cancelled():
                return _response(response_id, model, created, "cancelled", None, background=True)
            if task.exception() is not None:
                failed = _response(response_id, model, created, "failed", None, background=True)
                failed["error"] = {"code": "server_error", "message": str(task.exception())}
                return failed
            result = task.result()
            if result.status == "accepted":  # in the outbox: the cloud answers it once it is back
                result = service.lookup(response_id) or result
        else:
            found, model, created = service.lookup(response_id), "edgecloud", time.time()
            if found is None:
                return None
            result = found
        return _response(response_id, model, created, _status(result), result, background=True)

    def cancel(self, service: EdgeService, response_id: str) -> dict[str, Any] | None:
        """Stop a queued or in-progress response: its wait here, or its place in the outbox (once the
        cloud has it, its session there runs on; the answer is not taken). A finished one is as it was."""
        if response_id in self.tasks and not self.tasks[response_id][0].done():
            self.tasks[response_id][0].cancel()
        run = self.runs.get(response_id)
        if run is not None and run.task is not None and not run.task.done():
            run.task.cancel()
        record = service.outbox.get(response_id)
        if record is not None and record.status == "pending":
            service.outbox.mark_failed(response_id, CANCELLED)
        return self.state(service, response_id)


def responses_router(service: EdgeService) -> APIRouter:
    router = APIRouter()
    background = _Background()

    @router.post("/v1/responses")
    async def create(body: ResponsesBody) -> Response:
        request = _request(body, service)
        created = time.time()
        if body.background and not body.stream:
            background.start(service, request, body.model)
            return JSONResponse(_response(request.id, body.model, created, "queued", None, background=True))
        if not body.stream:
            result = await service.query(request)
            status = _status(result)
            return JSONResponse(_response(request.id, body.model, created, status, result, background=False))
        stream = service.stream(request)
        first = await anext(stream)  # an error before the first event is still an HTTP error
        events = _events(service, first, stream, request, body.model, created, background=body.background)
        if body.background:  # runs on whether or not this client stays to read it
            run = background.start_stream(request.id, body.model, created, events)
            return _event_stream(run.follow(-1))
        return _event_stream(_sse(e) async for e in events)

    @router.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str, stream: bool = False, starting_after: int = -1) -> Response:
        if stream:
            run = background.runs.get(response_id)
            if run is None:
                message = f"no background response {response_id!r} created with stream: true to stream again"
                return openai_error(404, message, param="response_id", code="not_found")
            return _event_stream(run.follow(starting_after))
        return _found(response_id, background.state(service, response_id))

    @router.post("/v1/responses/{response_id}/cancel")
    async def cancel(response_id: str) -> Response:
        state = background.cancel(service, response_id)
        await asyncio.sleep(0)  # let a cancelled wait finish cancelling before it is read back
        return _found(response_id, background.state(service, response_id) if state is not None else None)

    return router


def _event_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _found(response_id: str, state: dict[str, Any] | None) -> Response:
    if state is None:
        return openai_error(404, f"no response {response_id!r}", param="response_id", code="not_found")
    return JSONResponse(state)


def _sse(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def _events(
    service: EdgeService,
    first: StreamItem,
    stream: AsyncIterator[StreamItem],
    request: QueryRequest,
    model: str,
    created: float,
    *,
    background: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    """OpenAI's stream events for one response, numbered from 0."""
    sequence = 0

    def event(kind: str, **data: Any) -> dict[str, Any]:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **data}
        sequence += 1
        return payload

    rid, text = request.id, ""
    message = _message(rid, "", status="in_progress")
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    yield event("response.created", response=_response(rid, model, created, "queued", None, background=background))
    in_progress = _response(rid, model, created, "in_progress", None, background=background)
    yield event("response.in_progress", response=in_progress)
    yield event("response.output_item.added", output_index=0, item={**message, "content": []})
    yield event("response.content_part.added", part=part, **where)
    try:
        item: StreamItem | None = first
        while item is not None:
            if item.event == "answer":
                text += item.data["text"]
                yield event("response.output_text.delta", delta=item.data["text"], logprobs=[], **where)
            elif item.event == "done":
                result = service.lookup(request.id)  # recorded by the service before its ``done``
                yield event("response.output_text.done", text=text, logprobs=[], **where)
                yield event("response.content_part.done", part={**part, "text": text}, **where)
                yield event("response.output_item.done", output_index=0, item=_message(rid, text))
                status = _status(result) if result is not None else "completed"
                final = _response(rid, model, created, status, result, background=background)
                yield event("response.completed", response=final)
            item = await anext(stream, None)
    except EdgecloudError as exc:
        failed = _response(rid, model, created, "failed", None, background=background)
        failed["error"] = {"code": exc.code, "message": str(exc)}
        yield event("response.failed", response=failed)


class _Run:
    """A background response created with ``stream``: its events as they happen, kept so that a
    client that was cut off can resume (``starting_after``) with no gap and no duplicate."""

    def __init__(self, model: str, created: float) -> None:
        self.model, self.created = model, created
        self.events: list[dict[str, Any]] = []
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self._signal = asyncio.Event()

    async def produce(self, events: AsyncIterator[dict[str, Any]]) -> None:
        try:
            async for payload in events:
                self.events.append(payload)
                self._signal.set()
                self._signal = asyncio.Event()
        finally:
            self.done = True
            self._signal.set()

    async def follow(self, after: int) -> AsyncIterator[bytes]:
        index = max(after + 1, 0)
        while True:
            signal = self._signal  # taken before looking, so an event added meanwhile is not missed
            while index < len(self.events):
                yield _sse(self.events[index])
                index += 1
            if self.done:
                return
            await signal.wait()

    def state(self, response_id: str) -> dict[str, Any]:
        last = self.events[-1] if self.events else None
        if last is not None and last["type"] in ("response.completed", "response.failed"):
            return last["response"]
        status = "cancelled" if self.done else "in_progress"
        return _response(response_id, self.model, self.created, status, None, background=True)
