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
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from edgecloud.edge.api import sse
from edgecloud.edge.api.errors import openai_error
from edgecloud.edge.api.resolve import message_text, openai_request
from edgecloud.edge.api.response_keeper import ResponseKeeper
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.service import EdgeService, QueryRequest
from edgecloud.shared.base.asgi import presented_key
from edgecloud.shared.reasoner.session import Sampling

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


def _request(body: ResponsesBody, config: EdgeConfig) -> QueryRequest:
    """``instructions`` (a system message first) and every input message, in order, routed and
    budgeted as chat completions are."""
    turns = [("system", body.instructions)] if body.instructions else []
    if isinstance(body.input, str):
        turns.append(("user", body.input))
    else:
        for index, message in enumerate(body.input):
            text = message_text(message.content, f"input[{index}]", ("input_text", "output_text", "text"))
            turns.append((message.role, text))
    return openai_request(
        config,
        model=body.model,
        route=body.route,
        max_reasoning_tokens=body.max_reasoning_tokens,
        effort=body.reasoning.effort if body.reasoning is not None else None,
        turns=turns,
        where="input messages",
        sampling=Sampling(temperature=body.temperature, top_p=body.top_p),
        max_output_tokens=body.max_output_tokens,
        id=f"resp_{uuid.uuid4().hex}",
    )


def responses_router(service: EdgeService, keeper: ResponseKeeper) -> APIRouter:
    router = APIRouter()

    def owner(request: Request) -> str:
        """Who the response belongs to: a digest of the API key presented (auth has checked it)."""
        if not service.config.api_keys:
            return ""
        return hashlib.sha256(presented_key(request.headers).encode()).hexdigest()[:32]

    @router.post("/v1/responses")
    async def create(body: ResponsesBody, http: Request) -> Response:
        request, who = _request(body, service.config), owner(http)
        # Checked here, once: a bad request is a 400 now, not a failed background response later.
        items = service.stream(request, buffered=not body.stream)
        if not body.stream:
            if body.background:
                return JSONResponse(keeper.start(request, items, owner=who, model=body.model))
            return JSONResponse(await keeper.answer(request, items, owner=who, model=body.model, store=body.store))
        items = await sse.begin(items)
        if body.background:  # runs on whether or not this client stays to read it
            return sse.response(keeper.start_stream(request, items, owner=who, model=body.model))
        return sse.response(keeper.stream_once(request, items, owner=who, model=body.model, store=body.store))

    @router.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str, http: Request, stream: bool = False, starting_after: int = -1) -> Response:
        if stream:
            events = keeper.follow(response_id, owner(http), starting_after)
            if events is None:
                message = f"no background response {response_id!r} created with stream: true to stream again"
                return openai_error(404, message, param="response_id", code="not_found")
            return sse.response(events)
        return _found(response_id, keeper.state(response_id, owner(http)))

    @router.post("/v1/responses/{response_id}/cancel")
    async def cancel(response_id: str, http: Request) -> Response:
        return _found(response_id, keeper.cancel(response_id, owner(http)))

    return router


def _found(response_id: str, state: dict[str, Any] | None) -> Response:
    if state is None:
        return openai_error(404, f"no response {response_id!r}", param="response_id", code="not_found")
    return JSONResponse(state)
