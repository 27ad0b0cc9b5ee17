"""The edge daemon's HTTP API (FastAPI): a thin layer over :class:`EdgeService`.

- ``POST /v1/query``: edgecloud's own API, JSON or Server-Sent Events.
- ``GET /v1/query/{id}``: the state of an accepted (outboxed) or recent request.
- ``POST /v1/chat/completions``: OpenAI-compatible, streaming or not, routed the same way.
- ``/healthz`` (alive), ``/readyz`` (model loaded), ``/metrics`` (Prometheus).

Errors are JSON ``{"error": {"type", "message"}}`` with a 4xx/5xx status;
request bodies over ``max_body_bytes`` are refused before they are read.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from edge.service import EdgeService, QueryRequest, StreamItem
from edge.triage import Requested
from shared.errors import EdgecloudError, InvalidInputError, NotFoundError, ResourceExhaustedError, UnavailableError

__all__ = ["create_app"]


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    route: Literal["auto", "edge", "cloud"] = "auto"
    max_reasoning_tokens: int | None = Field(default=None, ge=0)
    stream: bool = False
    include_reasoning: bool = False


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
    route: Literal["auto", "edge", "cloud"] = "auto"
    max_reasoning_tokens: int | None = Field(default=None, ge=0)
    include_reasoning: bool = False
    """Return the reasoning text as ``reasoning_content`` (it is hidden otherwise)."""


_STATUS = [
    (InvalidInputError, 400),
    (NotFoundError, 404),
    (ResourceExhaustedError, 429),
    (UnavailableError, 503),
]


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def _last_user_text(body: ChatBody) -> str:
    for message in reversed(body.messages):
        if message.role == "user":
            if isinstance(message.content, str):
                return message.content
            if isinstance(message.content, list):
                return "".join(part.get("text", "") for part in message.content if part.get("type") == "text")
    raise InvalidInputError("messages contain no user message with text")


def _sse(item: StreamItem) -> bytes:
    return f"event: {item.event}\ndata: {json.dumps(item.data, separators=(',', ':'))}\n\n".encode()


def create_app(service: EdgeService) -> FastAPI:
    config = service.config

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="edgecloud edge daemon", version="1", lifespan=lifespan)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            return _error(413, "request_too_large", f"request body over {config.max_body_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(EdgecloudError)
    async def on_edgecloud_error(_request: Request, exc: EdgecloudError) -> JSONResponse:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        return _error(status, type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(422, "invalid_request", problems or "invalid request")

    async def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        presented = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(presented.encode(), config.api_key.encode()):
            raise HTTPException(401, detail="missing or invalid API key")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        bundle = service.slot.current
        body = {
            "status": "ready",
            "model": {"name": bundle.name, "version": bundle.version},
            "cloud": "up" if service.cloud_healthy else ("down" if service.client else "not configured"),
            "outbox_depth": service.outbox.depth(),
        }
        return JSONResponse(body)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/query", dependencies=[Depends(authorize)])
    async def query(body: QueryBody) -> Response:
        request = QueryRequest(
            query=body.query,
            route=Requested(body.route),
            max_reasoning_tokens=body.max_reasoning_tokens,
            include_reasoning=body.include_reasoning,
        )
        if body.stream:
            stream = service.stream(request)
            first = await anext(stream)  # errors before the first event still get a proper status

            async def events() -> AsyncIterator[bytes]:
                yield _sse(first)
                try:
                    async for item in stream:
                        yield _sse(item)
                except EdgecloudError as exc:
                    yield _sse(StreamItem("error", {"type": type(exc).__name__, "message": str(exc)}))

            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        result = await service.query(request)
        return JSONResponse(result.to_json(), status_code=202 if result.status == "accepted" else 200)

    @app.get("/v1/query/{request_id}", dependencies=[Depends(authorize)])
    async def get_query(request_id: str) -> JSONResponse:
        result = service.lookup(request_id)
        if result is None:
            raise NotFoundError(f"no request {request_id!r}")
        return JSONResponse(result.to_json())

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat(body: ChatBody) -> Response:
        text = _last_user_text(body)
        request = QueryRequest(
            query=text,
            route=Requested(body.route),
            max_reasoning_tokens=body.max_reasoning_tokens,
            include_reasoning=body.include_reasoning,
        )
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            result = await service.query(request)
            if result.status == "accepted":
                return JSONResponse(result.to_json(), status_code=202)
            message: dict[str, Any] = {"role": "assistant", "content": result.answer}
            if body.include_reasoning:
                message["reasoning_content"] = result.reasoning or ""
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": body.model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                    "usage": _usage(result.to_json()),
                    "system_fingerprint": f"{result.model_name}-v{result.model_version}",
                    "edgecloud": {k: v for k, v in result.to_json().items() if k in ("route_taken", "reason", "confidence", "degraded", "cached", "latency_ms")},
                }
            )

        stream = service.stream(request)
        first = await anext(stream)

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if usage is None else [],
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
                        yield chunk({}, finish="stop")
                        if body.stream_options and body.stream_options.include_usage:
                            yield chunk({}, usage=_usage(item.data))
                    item = await anext(stream, None)
            except EdgecloudError as exc:
                error = {"error": {"type": type(exc).__name__, "message": str(exc)}}
                yield f"data: {json.dumps(error)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _usage(result: dict[str, Any]) -> dict[str, Any]:
    usage = result["usage"]
    completion = usage["reasoning_tokens"] + usage["output_tokens"]
    return {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": completion,
        "total_tokens": usage["input_tokens"] + completion,
        "completion_tokens_details": {"reasoning_tokens": usage["reasoning_tokens"]},
    }
