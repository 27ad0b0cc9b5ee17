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
(:attr:`EdgeConfig.reasoning_effort_tokens`); an explicit ``max_reasoning_tokens`` wins.
``max_completion_tokens`` (or ``max_tokens``) bounds reasoning and answer together; an answer it
cuts ends with ``finish_reason: "length"``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from edgecloud.edge.service import EdgeService, QueryRequest, QueryResult, StreamItem
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.errors import EdgecloudError, InvalidInputError
from edgecloud.shared.reasoner.session import Message, Sampling

__all__ = [
    "MODEL_ROUTES",
    "ChatBody",
    "conversation",
    "is_openai_path",
    "message_text",
    "openai_error",
    "openai_error_body",
    "openai_router",
]

_OPENAI_PATHS = ("/v1/chat/", "/v1/models", "/v1/responses")
# OpenAI's error types by HTTP status; its clients pick their exception by the status, show the message
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                 429: "rate_limit_error", 503: "server_error"}  # fmt: skip

MODEL_ROUTES = {"edgecloud": Requested.AUTO, "edgecloud-edge": Requested.EDGE, "edgecloud-cloud": Requested.CLOUD}
"""The model ids ``GET /v1/models`` lists, and the route each one asks for."""
EFFORTS = ("low", "medium", "high")


def is_openai_path(path: str) -> bool:
    """Whether errors on ``path`` take OpenAI's shape (the routes OpenAI clients call)."""
    return path.startswith(_OPENAI_PATHS)


def openai_error_body(status: int, code: str | None, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A response with :func:`openai_error_body`."""
    return JSONResponse(openai_error_body(status, code, message, param), status_code=status, headers=headers)


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


def message_text(content: str | list[dict[str, Any]] | None, where: str, text_types: tuple[str, ...]) -> str:
    """The text of one message's content; a part that is not text is refused, not dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type")
        if kind not in text_types or not isinstance(part.get("text"), str):
            raise InvalidInputError(f"{where}.content[{index}] is of type {kind!r}; only text content is supported")
        texts.append(part["text"])
    return "".join(texts)


def conversation(messages: list[tuple[str, str]], where: str) -> tuple[str, tuple[Message, ...]]:
    """The query (the last message, a user's) and the whole conversation; a single user message
    is a plain query (no conversation)."""
    if not messages or messages[-1][0] != "user":
        raise InvalidInputError(f"the last of the {where} must be a user message (the query)")
    query = messages[-1][1]
    if len(messages) == 1:
        return query, ()
    return query, tuple(Message(role, text) for role, text in messages)


def _chat_conversation(body: ChatBody) -> tuple[str, tuple[Message, ...]]:
    turns = []
    for index, message in enumerate(body.messages):
        if message.role == "tool":
            raise InvalidInputError(f"messages[{index}] is a tool message; tool calling is not supported")
        turns.append((message.role, message_text(message.content, f"messages[{index}]", ("text",))))
    return conversation(turns, "messages")


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
        text, messages = _chat_conversation(body)
        route = Requested(body.route) if body.route else MODEL_ROUTES.get(body.model, Requested.AUTO)
        budget = body.max_reasoning_tokens
        if budget is None and body.reasoning_effort is not None:
            budget = service.config.reasoning_effort_tokens[EFFORTS.index(body.reasoning_effort)]
        request = QueryRequest(
            query=text,
            route=route,
            max_reasoning_tokens=budget,
            include_reasoning=body.include_reasoning,
            max_output_tokens=body.max_completion_tokens or body.max_tokens,
            # A chat completion cannot be fetched later: while the cloud is down a cloud-only one is a
            # 503 with Retry-After (POST /v1/responses queues it in the outbox instead).
            queue_when_cloud_down=False,
            messages=messages,
            sampling=Sampling(temperature=body.temperature, top_p=body.top_p, seed=body.seed),
        )
        service.validate(request)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            result = await service.query(request)
            return JSONResponse(_completion(body, result, completion_id, created))

        stream = service.stream(request)
        first = await anext(stream)

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
                if usage is None
                else [],
            }
            if usage is not None:
                payload["usage"] = usage
            return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

        async def chunks() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            item: StreamItem | None = first
            try:
                while item is not None:
                    if item.event == "answer":
                        yield chunk({"content": item.data["text"]})
                    elif item.event == "reasoning" and body.include_reasoning and "text" in item.data:
                        yield chunk({"reasoning_content": item.data["text"]})
                    elif item.event == "done":
                        yield chunk({}, finish=str(item.data.get("finish_reason", "stop")))
                        if body.stream_options and body.stream_options.include_usage:
                            yield chunk({}, usage=_usage(item.data))
                    item = await anext(stream, None)
            except EdgecloudError as exc:
                error = {"error": {"type": type(exc).__name__, "message": str(exc)}}
                yield f"data: {json.dumps(error)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return router


def _completion(body: ChatBody, result: QueryResult, completion_id: str, created: int) -> dict[str, Any]:
    """The ``chat.completion`` object of a finished query."""
    message: dict[str, Any] = {"role": "assistant", "content": result.answer}
    if body.include_reasoning:
        message["reasoning_content"] = result.reasoning or ""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": _usage(result.to_json()),
        "system_fingerprint": f"{result.model_name}-v{result.model_version}",
        "edgecloud": {
            k: v
            for k, v in result.to_json().items()
            if k in ("route_taken", "reason", "confidence", "degraded", "cached", "latency_ms")
        },
    }


def _usage(result: dict[str, Any]) -> dict[str, Any]:
    usage = result["usage"]
    completion = usage["reasoning_tokens"] + usage["output_tokens"]
    return {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": completion,
        "total_tokens": usage["input_tokens"] + completion,
        "completion_tokens_details": {"reasoning_tokens": usage["reasoning_tokens"]},
    }
