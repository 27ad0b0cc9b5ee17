"""edgecloud's own HTTP API on the edge: ``POST /v1/query`` and ``GET /v1/query/{id}``.

A query is answered as JSON, or as Server-Sent Events (``stream: true``) with
one event per step (``route``, ``reasoning``, ``answer``, ``done``; ``error``
if it fails after the first event, with the body a JSON error carries). A query the cloud must
answer while it is down is accepted into the outbox (HTTP 202) and its result fetched later by id.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from edgecloud.edge.api import sse
from edgecloud.edge.api.errors import error_body
from edgecloud.edge.service import EdgeService, QueryRequest, StreamItem
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.errors import EdgecloudError, NotFoundError

__all__ = ["QueryBody", "query_router"]


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    route: Literal["auto", "edge", "cloud"] = "auto"
    max_reasoning_tokens: int | None = Field(default=None, ge=0)
    stream: bool = False
    include_reasoning: bool = False


def _event(item: StreamItem) -> list[bytes]:
    return [sse.frame(item.to_json(), item.event)]


def _error(exc: EdgecloudError) -> bytes:
    return sse.frame(error_body(exc, openai=False), "error")


def query_router(service: EdgeService) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/query")
    async def query(body: QueryBody) -> Response:
        request = QueryRequest(
            query=body.query,
            route=Requested(body.route),
            max_reasoning_tokens=body.max_reasoning_tokens,
            include_reasoning=body.include_reasoning,
        )
        if body.stream:
            items = await sse.begin(service.stream(request))
            return sse.response(sse.encode(items, _event, _error))
        result = await service.query(request)
        return JSONResponse(result.to_json(), status_code=202 if result.status == "accepted" else 200)

    @router.get("/v1/query/{request_id}")
    async def get_query(request_id: str) -> JSONResponse:
        result = service.lookup(request_id)
        if result is None:
            raise NotFoundError(f"no request {request_id!r}")
        return JSONResponse(result.to_json())

    return router
