"""The edge daemon's OpenAI-compatible API: ``POST /v1/chat/completions`` (streaming or not),
``GET /v1/models`` and ``GET /v1/models/{id}``.

The whole conversation (system and developer messages, earlier turns) goes to the cloud model; a
student that reads single queries leaves a conversation to the cloud (``reason: conversation``).
``temperature``, ``top_p`` and ``seed`` set the cloud's sampling.

Routed like edgecloud's own ``/v1/query`` (the same :class:`EdgeService` call),
with edgecloud's extras accepted as extra body fields (``route``,
``max_reasoning_tokens``, ``include_reasoning``) and reported under
``edgecloud`` in the response. Reasoning tokens count as completion tokens, as
OpenAI counts them (``completion_tokens_details.reasoning_tokens``).

Three model ids choose the route, for clients that can only pick a model: ``edgecloud`` (triage
decides), ``edgecloud-edge`` and ``edgecloud-cloud``; any other id is triaged like ``edgecloud``.
``reasoning_effort`` (low, medium, high) sets the cloud's thinking budget
(:attr:`EdgeConfig.reasoning_effort_tokens`); an explicit ``max_reasoning_tokens`` wins. Both are
resolved as the Responses API resolves them (:mod:`edgecloud.edge.api.resolve`); a stream is
written by :mod:`edgecloud.edge.api.sse`, an error mid-stream with the body a JSON error carries.
``max_completion_tokens`` (or ``max_tokens``) bounds reasoning and answer together; an answer it
cuts ends with ``finish_reason: "length"``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from edgecloud.edge.api import sse
from edgecloud.edge.api.errors import error_body, openai_error
from edgecloud.edge.api.resolve import MODEL_ROUTES, message_text, openai_request
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.service import EdgeService, QueryRequest, QueryResult, StreamItem
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.session import Sampling

__all__ = ["ChatBody", "openai_router"]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use
    model: str = "edgecloud"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    route: Literal["auto", "edge", "cloud"] | None = None
    """edgecloud's own route field; without it, the model id chooses (:data:`MODEL_ROUTES`)."""
    max_reasoning_tokens: int | None = Field(default=None, ge=0)
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    """The most tokens generated, reasoning included (OpenAI's meaning); a cut answer ends ``length``."""
    max_tokens: int | None = Field(default=None, ge=1)
    """OpenAI's older name for ``max_completion_tokens`` (which wins when both are sent)."""
    n: int = Field(default=1, ge=1, le=1)
    """One choice per request: the edge and the cloud each answer once."""
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    """Tool calling is not supported; a request that needs it is refused, not answered without it."""
    include_reasoning: bool = False
    """Return the reasoning text as ``reasoning_content`` (it is hidden otherwise)."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    """The cloud model's sampling temperature (0: greedy); unset: the model's own default."""
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=(1 << 63) - 1)
    """The same seed samples the same answer."""


def _chat_request(body: ChatBody, config: EdgeConfig) -> QueryRequest:
    turns = []
    for index, message in enumerate(body.messages):
        if message.role == "tool":
            raise InvalidInputError(f"messages[{index}] is a tool message; tool calling is not supported")
        turns.append((message.role, message_text(message.content, f"messages[{index}]", ("text",))))
    return openai_request(
        config,
        model=body.model,
        route=body.route,
        max_reasoning_tokens=body.max_reasoning_tokens,
        effort=body.reasoning_effort,
        turns=turns,
        where="messages",
        include_reasoning=body.include_reasoning,
        max_output_tokens=body.max_completion_tokens or body.max_tokens,
        # A chat completion cannot be fetched later: while the cloud is down a cloud-only one is a
        # 503 with Retry-After (POST /v1/responses queues it in the outbox instead).
        queue_when_cloud_down=False,
        sampling=Sampling(temperature=body.temperature, top_p=body.top_p, seed=body.seed),
    )


def _model(model_id: str, service: EdgeService, created: int) -> dict[str, Any]:
    bundle = service.slot.current
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "edgecloud",
        "edgecloud": {
            "route": MODEL_ROUTES[model_id].value,
            "edge_model": {"name": bundle.name, "version": bundle.version},
        },
    }


def _not_found(model_id: str) -> JSONResponse:
    message = f"The model {model_id!r} does not exist; the models are {', '.join(MODEL_ROUTES)}"
    return openai_error(404, message, param="model", code="model_not_found")


def openai_router(service: EdgeService) -> APIRouter:
    router = APIRouter()
    started = int(time.time())

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model(m, service, started) for m in MODEL_ROUTES]}

    @router.get("/v1/models/{model_id}")
    async def model(model_id: str) -> Response:
        if model_id not in MODEL_ROUTES:
            return _not_found(model_id)
        return JSONResponse(_model(model_id, service, started))

    @router.post("/v1/chat/completions")
    async def chat(body: ChatBody) -> Response:
        request = _chat_request(body, service.config)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.stream:
            result = await service.query(request)
            return JSONResponse(_completion(body, result, completion_id, created))
        items = await sse.begin(service.stream(request))
        return sse.response(_chunks(body, items, completion_id, created))

    return router


async def _chunks(
    body: ChatBody, items: AsyncIterator[StreamItem], completion_id: str, created: int
) -> AsyncIterator[bytes]:
    """The ``chat.completion.chunk`` stream of a query, ending with ``data: [DONE]``."""

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                   "model": body.model, "choices": []}  # fmt: skip
        if usage is None:
            payload["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        else:
            payload["usage"] = usage
        return sse.frame(payload)

    def render(item: StreamItem) -> list[bytes]:
        if item.event == "answer":
            return [chunk({"content": item.text})]
        if item.event == "reasoning" and body.include_reasoning and item.text is not None:
            return [chunk({"reasoning_content": item.text})]
        if item.result is not None:
            done = [chunk({}, finish=item.result.finish_reason)]
            if body.stream_options and body.stream_options.include_usage:
                done.append(chunk({}, usage=_usage(item.result)))
            return done
        return []

    yield chunk({"role": "assistant", "content": ""})
    async for data in sse.encode(items, render, lambda exc: sse.frame(error_body(exc, openai=True))):
        yield data
    yield b"data: [DONE]\n\n"


def _completion(body: ChatBody, result: QueryResult, completion_id: str, created: int) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished query."""
    message: dict[str, Any] = {"role": "assistant", "content": result.answer}
    if body.include_reasoning:
        message["reasoning_content"] = result.reasoning or ""
    answer = result.to_json()
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": _usage(result),
        "system_fingerprint": f"{result.model_name}-v{result.model_version}",
        "edgecloud": {
            k: answer[k] for k in ("route_taken", "reason", "confidence", "degraded", "cached", "latency_ms")
        },
    }


def _usage(result: QueryResult) -> dict[str, Any]:
    completion = result.reasoning_tokens + result.output_tokens
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": completion,
        "total_tokens": result.input_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": result.reasoning_tokens},
    }
