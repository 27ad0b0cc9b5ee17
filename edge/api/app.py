"""The edge daemon's HTTP API (FastAPI): a thin layer over :class:`EdgeService`.

This module assembles the app: the body limit, authentication, the error
mapping and the operational routes; the two query APIs are routers of their own:

- edgecloud's own (:mod:`edgecloud.edge.api.query`): ``POST /v1/query`` (JSON or Server-Sent
  Events) and ``GET /v1/query/{id}`` (an accepted, outboxed or recent request).
- OpenAI's (:mod:`edgecloud.edge.api.chat`): ``POST /v1/chat/completions`` and ``GET
  /v1/models``, routed the same way, and its Responses API (:mod:`edgecloud.edge.api.responses`).
- ``/healthz`` (alive), ``/readyz`` (model loaded), ``/metrics`` (Prometheus), no key needed.

Errors are JSON ``{"error": {"type", "message"}}`` with a 4xx/5xx status, OpenAI's shape on its
routes, and the same body in a stream's error event (:mod:`edgecloud.edge.api.errors`). Every
request passes :class:`~edgecloud.shared.base.asgi.InboundGuard` first: ``/v1`` needs the API key
(when one is set) and a POST ``Content-Type: application/json``, both checked before the body is
read, and no body is read past ``max_body_bytes``, chunked or not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgecloud.edge.api.chat import openai_router
from edgecloud.edge.api.errors import add_error_handlers, is_openai_path, openai_error_body
from edgecloud.edge.api.query import query_router
from edgecloud.edge.api.response_keeper import ResponseKeeper
from edgecloud.edge.api.response_store import ResponseStore
from edgecloud.edge.api.responses import responses_router
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.service import EdgeService
from edgecloud.shared.base.asgi import Inbound, InboundGuard

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

    app.add_middleware(InboundGuard, policy=_inbound(config))  # outermost: before FastAPI reads a byte
    add_error_handlers(app)

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


def _inbound(config: EdgeConfig) -> Callable[[str, str], Inbound]:
    """What each request must bring (:class:`~edgecloud.shared.base.asgi.InboundGuard`), by path."""
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

    return inbound
