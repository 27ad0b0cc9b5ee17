"""OpenAI's Responses API on the edge daemon: ``POST /v1/responses`` (streaming or not, in the
background or not), ``GET /v1/responses/{id}`` (``?stream=true&starting_after=N`` to resume a
background stream) and ``POST /v1/responses/{id}/cancel``.

Routed like ``/v1/chat/completions`` (the model id or edgecloud's ``route`` field; ``reasoning.effort``
sets the cloud's thinking budget, ``max_output_tokens`` bounds reasoning and answer together). The
objects and events are :mod:`edgecloud.edge.api.response_objects`; running, storing and resuming them
is :class:`~edgecloud.edge.api.response_keeper.ResponseKeeper`. ``background: true`` answers at once
(``queued``); the response then runs whether or not the client stays, survives a daemon restart and
waits out a cloud outage in the outbox. A response is stored unless ``store: false`` and belongs to
the API key that created it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from edgecloud.edge.api.chat import EFFORTS, MODEL_ROUTES, conversation, message_text, openai_error
from edgecloud.edge.api.response_keeper import ResponseKeeper
from edgecloud.edge.service import EdgeService, QueryRequest
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.asgi import presented_key
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.session import Message, Sampling

__all__ = ["ResponsesBody", "responses_router"]


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
    store: bool = True
    """Keep the response for ``GET /v1/responses/{id}`` (a background one is always kept)."""
    reasoning: Reasoning | None = None
    instructions: str | None = None
    route: Literal["auto", "edge", "cloud"] | None = None
    max_reasoning_tokens: int | None = Field(default=None, ge=0)
    max_output_tokens: int | None = Field(default=None, ge=1)
    """The most tokens generated, reasoning included; a response it cuts is ``incomplete``."""
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    """Tool calling is not supported; a request that needs it is refused, not answered without it."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)


def _conversation(body: ResponsesBody) -> tuple[str, tuple[Message, ...]]:
    """``instructions`` (a system message first) and every input message, in order."""
    turns = [("system", body.instructions)] if body.instructions else []
    if isinstance(body.input, str):
        if not body.input.strip():
            raise InvalidInputError("input is empty")
        turns.append(("user", body.input))
    else:
        for index, message in enumerate(body.input):
            text = message_text(message.content, f"input[{index}]", ("input_text", "output_text", "text"))
            turns.append((message.role, text))
    return conversation(turns, "input messages")


def _request(body: ResponsesBody, service: EdgeService) -> QueryRequest:
    route = Requested(body.route) if body.route else MODEL_ROUTES.get(body.model, Requested.AUTO)
    budget = body.max_reasoning_tokens
    if budget is None and body.reasoning is not None and body.reasoning.effort is not None:
        budget = service.config.reasoning_effort_tokens[EFFORTS.index(body.reasoning.effort)]
    query, messages = _conversation(body)
    request = QueryRequest(query=query, route=route, max_reasoning_tokens=budget, messages=messages,
                           sampling=Sampling(temperature=body.temperature, top_p=body.top_p),
                           max_output_tokens=body.max_output_tokens, id=f"resp_{uuid.uuid4().hex}")  # fmt: skip
    service.validate(request)  # a bad request is a 400 now, not a failed background response later
    return request


def responses_router(service: EdgeService, keeper: ResponseKeeper) -> APIRouter:
    router = APIRouter()

    def owner(request: Request) -> str:
        """Who the response belongs to: a digest of the API key presented (auth has checked it)."""
        if not service.config.api_keys:
            return ""
        return hashlib.sha256(presented_key(request.headers).encode()).hexdigest()[:32]

    @router.post("/v1/responses")
    async def create(body: ResponsesBody, http: Request) -> Response:
        request, who = _request(body, service), owner(http)
        if not body.stream:
            if body.background:
                return JSONResponse(keeper.start(request, owner=who, model=body.model))
            return JSONResponse(await keeper.answer(request, owner=who, model=body.model, store=body.store))
        stream = service.stream(request)
        first = await anext(stream)  # an error before the first event is still an HTTP error
        if body.background:  # runs on whether or not this client stays to read it
            return _event_stream(keeper.start_stream(request, first, stream, owner=who, model=body.model))
        return _event_stream(keeper.stream_once(request, first, stream, owner=who, model=body.model, store=body.store))

    @router.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str, http: Request, stream: bool = False, starting_after: int = -1) -> Response:
        if stream:
            events = keeper.follow(response_id, owner(http), starting_after)
            if events is None:
                message = f"no background response {response_id!r} created with stream: true to stream again"
                return openai_error(404, message, param="response_id", code="not_found")
            return _event_stream(events)
        return _found(response_id, keeper.state(response_id, owner(http)))

    @router.post("/v1/responses/{response_id}/cancel")
    async def cancel(response_id: str, http: Request) -> Response:
        return _found(response_id, keeper.cancel(response_id, owner(http)))

    return router


def _event_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _found(response_id: str, state: dict[str, Any] | None) -> Response:
    if state is None:
        return openai_error(404, f"no response {response_id!r}", param="response_id", code="not_found")
    return JSONResponse(state)
