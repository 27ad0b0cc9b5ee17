"""The edge daemon's HTTP API (FastAPI): a thin layer over :class:`EdgeService`.

This module assembles the app: the body limit, authentication, the error
mapping and the operational routes; the two query APIs are routers of their own:

- edgecloud's own (:mod:`edgecloud.edge.query_api`): ``POST /v1/query`` (JSON or Server-Sent
  Events) and ``GET /v1/query/{id}`` (an accepted, outboxed or recent request).
- OpenAI's (:mod:`edgecloud.edge.openai_api`): ``POST /v1/chat/completions``, routed the same way.
- ``/healthz`` (alive), ``/readyz`` (model loaded), ``/metrics`` (Prometheus), no key needed.

Errors are JSON ``{"error": {"type", "message"}}`` with a 4xx/5xx status;
request bodies over ``max_body_bytes`` are refused before they are read.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecloud.edge.openai_api import openai_router
from edgecloud.edge.query_api import query_router
from edgecloud.edge.service import EdgeService
from edgecloud.shared.asgi import error_response, response_for
from edgecloud.shared.errors import (
    AuthenticationError,
    EdgecloudError,
)

__all__ = ["create_app"]


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
            return error_response(413, "request_too_large", f"request body over {config.max_body_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(EdgecloudError)
    async def on_edgecloud_error(_request: Request, exc: EdgecloudError) -> JSONResponse:
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(422, "invalid_request", problems or "invalid request")

    async def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        presented = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(presented.encode(), config.api_key.encode()):
            raise AuthenticationError("missing or invalid API key")

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

    app.include_router(query_router(service), dependencies=[Depends(authorize)])
    app.include_router(openai_router(service), dependencies=[Depends(authorize)])

    return app
