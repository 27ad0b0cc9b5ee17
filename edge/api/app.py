"""The edge daemon's HTTP API (FastAPI): a thin layer over :class:`EdgeService`.

This module assembles the app: the body limit, authentication, the error
mapping and the operational routes; the two query APIs are routers of their own:

- edgecloud's own (:mod:`edgecloud.edge.api.query`): ``POST /v1/query`` (JSON or Server-Sent
  Events) and ``GET /v1/query/{id}`` (an accepted, outboxed or recent request).
- OpenAI's (:mod:`edgecloud.edge.api.chat`): ``POST /v1/chat/completions`` and ``GET
  /v1/models``, routed the same way, and its Responses API (:mod:`edgecloud.edge.api.responses`).
- ``/healthz`` (alive), ``/readyz`` (model loaded), ``/metrics`` (Prometheus), no key needed.

Errors are JSON ``{"error": {"type", "message"}}`` with a 4xx/5xx status. Every request passes
:class:`~edgecloud.shared.base.asgi.InboundGuard` first: ``/v1`` needs the API key (when one is set) and
a POST ``Content-Type: application/json``, both checked before the body is read, and no body is read
past ``max_body_bytes``, chunked or not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecloud.edge.api.chat import is_openai_path, openai_error, openai_error_body, openai_router
from edgecloud.edge.api.query import query_router
from edgecloud.edge.api.response_keeper import ResponseKeeper
from edgecloud.edge.api.response_store import ResponseStore
from edgecloud.edge.api.responses import responses_router
from edgecloud.edge.service import EdgeService
from edgecloud.shared.base.asgi import Inbound, InboundGuard, error_response, response_for
from edgecloud.shared.base.errors import EdgecloudError

__all__ = ["create_app"]


def create_app(service: EdgeService, responses: ResponseStore) -> FastAPI:
    """The app over ``service``; ``responses`` keeps the Responses API's responses."""
    config = service.config
    keeper = ResponseKeeper(service, responses)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        await keeper.resume()
        try:
            yield
        finally:
            await keeper.stop()
            await service.stop()

    app = FastAPI(title="edgecloud edge daemon", version="1", lifespan=lifespan)

    json_only = frozenset({"application/json"})
    probes = Inbound(max_body_bytes=config.max_body_bytes)
    api_reads = Inbound(max_body_bytes=config.max_body_bytes, keys=config.api_keys)
    api_writes = Inbound(max_body_bytes=config.max_body_bytes, keys=config.api_keys, media_types=json_only)
    openai_reads, openai_writes = (replace(rule, error_body=openai_error_body) for rule in (api_reads, api_writes))

    def inbound(method: str, path: str) -> Inbound:
        if not path.startswith("/v1/"):
            return probes  # /healthz, /readyz, /metrics: no key
        reads = method in ("GET", "HEAD")
        if is_openai_path(path):  # refusals in OpenAI's shape, so its clients read them
            return openai_reads if reads else openai_writes
        return api_reads if reads else api_writes

    app.add_middleware(InboundGuard, policy=inbound)  # outermost: before FastAPI reads a byte

    @app.exception_handler(EdgecloudError)
    async def on_edgecloud_error(request: Request, exc: EdgecloudError) -> JSONResponse:
        if is_openai_path(request.url.path):
            retry = {"Retry-After": "5"} if exc.http_status in (429, 503) else None
            return openai_error(exc.http_status, str(exc), code=exc.code, headers=retry)
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        if is_openai_path(request.url.path):  # OpenAI clients expect 400, naming the parameter
            first = exc.errors()[0]["loc"] if exc.errors() else ()
            param = ".".join(str(p) for p in first[1:]) if first[:1] == ("body",) else None
            return openai_error(400, problems or "invalid request", param=param or None, code="invalid_value")
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail))

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

    app.include_router(query_router(service))
    app.include_router(openai_router(service))
    app.include_router(responses_router(service, keeper))

    return app
