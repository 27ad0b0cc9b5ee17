"""What a query gives back, typed until an HTTP router serialises it.

A query runs as a stream of :class:`StreamItem` (``route``, ``reasoning``, ``answer``, then ``done``
carrying the :class:`QueryResult`); a plain call takes the result off the last item
(:func:`final_result`). The constructors below make the result of each ending: the edge's answer,
the cloud's, a request accepted into the outbox, and one read back from the outbox.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edgecloud.edge.outbox import OutboxRecord
from edgecloud.edge.pipeline.request import QueryRequest
from edgecloud.edge.pipeline.verdict import LocalVerdict
from edgecloud.edge.runtime import EdgeBundle
from edgecloud.edge.triage import Decision, Route
from edgecloud.shared.reasoner.session import Event

__all__ = ["QueryResult", "StreamItem", "accepted_result", "cloud_result", "edge_result", "final_result",
           "outbox_result"]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class QueryResult:
    id: str
    status: str
    """``completed``, or ``accepted`` (in the outbox, not answered yet)."""
    answer: str | None
    route_taken: str
    reason: str
    confidence: float
    model_version: int
    model_name: str
    input_tokens: int = 0
    reasoning_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    degraded: bool = False
    cached: bool = False
    reasoning: str | None = None
    edge_answer: str | None = None
    """What the edge model said when the cloud answered instead: for shadow evaluation of the
    edge model and for collecting distillation data."""
    finish_reason: str = "stop"
    """``stop``, or ``length`` when :attr:`QueryRequest.max_output_tokens` cut the answer."""

    def to_json(self) -> dict[str, object]:
        """edgecloud's own answer object (``POST /v1/query``)."""
        return {
            "id": self.id,
            "status": self.status,
            "answer": self.answer,
            "route_taken": self.route_taken,
            "reason": self.reason,
            "confidence": _num(self.confidence),
            "model_version": self.model_version,
            "model_name": self.model_name,
            "usage": {
                "input_tokens": self.input_tokens,
                "reasoning_tokens": self.reasoning_tokens,
                "output_tokens": self.output_tokens,
            },
            "latency_ms": round(self.latency_ms, 3),
            "degraded": self.degraded,
            "cached": self.cached,
            "finish_reason": self.finish_reason,
            **({"reasoning": self.reasoning} if self.reasoning is not None else {}),
            **({"edge_answer": self.edge_answer} if self.edge_answer is not None else {}),
        }


@dataclass(frozen=True, kw_only=True)
class StreamItem:
    """One step of a query, in order: ``route`` (triage's decision), ``reasoning`` (the cloud's
    progress count, or its text when asked for), ``answer`` (a piece of it), last ``done``."""

    event: str
    text: str | None = None
    """``answer`` and shown ``reasoning``: the piece of text."""
    reasoning_tokens: int | None = None
    """``reasoning`` progress: the cloud's thinking tokens so far."""
    decision: Decision | None = None
    """``route``: triage's decision, with the edge's ``confidence`` in it."""
    confidence: float = math.nan
    result: QueryResult | None = None
    """``done``: the query's result."""

    @classmethod
    def routed(cls, verdict: LocalVerdict) -> StreamItem:
        return cls(event="route", decision=verdict.decision, confidence=verdict.confidence)

    @classmethod
    def done(cls, result: QueryResult) -> StreamItem:
        return cls(event="done", result=result)

    def to_json(self) -> dict[str, object]:
        """The event's data in edgecloud's own stream (``POST /v1/query``)."""
        if self.result is not None:
            return self.result.to_json()
        if self.decision is not None:
            return {
                "route": self.decision.route.value,
                "reason": self.decision.reason,
                "confidence": _num(self.confidence),
            }
        if self.reasoning_tokens is not None:
            return {"reasoning_tokens": self.reasoning_tokens}
        return {"text": self.text or ""}


async def final_result(stream: AsyncIterator[StreamItem]) -> QueryResult:
    """The result on ``stream``'s ``done`` item, once the stream has ended."""
    result = None
    async for item in stream:
        result = item.result or result
    if result is None:
        raise RuntimeError("the query's stream ended without its result")
    return result


def edge_result(
    request: QueryRequest, verdict: LocalVerdict, started: float, *, degraded: bool, reason: str | None = None
) -> QueryResult:
    """The edge's own answer. The edge generates its whole (short) answer to triage it; one longer
    than the caller's limit is withheld, as OpenAI's models stop at the limit with the answer unfinished."""
    answer = verdict.answer
    cut = request.max_output_tokens is not None and answer.output_tokens > request.max_output_tokens
    return QueryResult(
        id=request.id,
        status="completed",
        answer="" if cut else answer.text,
        route_taken=Route.EDGE.value,
        reason=reason or verdict.decision.reason,
        confidence=answer.confidence,
        model_version=verdict.bundle.version,
        model_name=verdict.bundle.name,
        input_tokens=answer.input_tokens,
        reasoning_tokens=answer.reasoning_tokens,  # a pair's reasoner writes a scratchpad first
        output_tokens=answer.output_tokens,
        latency_ms=_since(started),
        degraded=degraded,
        finish_reason="length" if cut else "stop",
    )


def cloud_result(
    request: QueryRequest, verdict: LocalVerdict, completed: Event, started: float, reasoning: str | None
) -> QueryResult:
    """The cloud's answer, from its session's COMPLETED event."""
    return QueryResult(
        id=request.id,
        status="completed",
        answer=completed.text,
        route_taken=Route.CLOUD.value,
        reason=verdict.decision.reason,
        confidence=verdict.confidence,
        model_version=verdict.bundle.version,
        model_name=verdict.bundle.name,
        input_tokens=completed.usage.input_tokens,
        reasoning_tokens=completed.usage.reasoning_tokens,
        output_tokens=completed.usage.output_tokens,
        latency_ms=_since(started),
        cached=completed.cached,
        reasoning=reasoning,
        edge_answer=verdict.answer.text,
        finish_reason="length" if completed.finish_reason == "length" else "stop",
    )


def accepted_result(request: QueryRequest, verdict: LocalVerdict, started: float) -> QueryResult:
    """A request accepted into the outbox: the cloud answers it later."""
    return QueryResult(
        id=request.id,
        status="accepted",
        answer=None,
        route_taken=Route.CLOUD.value,
        reason="accepted_for_later_delivery",
        confidence=verdict.confidence,
        model_version=verdict.bundle.version,
        model_name=verdict.bundle.name,
        input_tokens=verdict.answer.input_tokens,
        latency_ms=_since(started),
        degraded=True,
    )


def outbox_result(record: OutboxRecord, bundle: EdgeBundle) -> QueryResult:
    """An accepted request's state in the outbox (``bundle``: the one serving now)."""
    usage = record.usage
    return QueryResult(
        id=record.request_id,
        status={"pending": "accepted", "delivered": "completed"}.get(record.status, record.status),
        answer=record.answer if record.status == "delivered" else None,
        route_taken=Route.CLOUD.value,
        reason=record.failure or record.last_error or "outbox",
        confidence=record.params.hint.confidence if record.params.hint else math.nan,
        model_version=bundle.version,
        model_name=bundle.name,
        input_tokens=usage.input_tokens if usage else 0,
        reasoning_tokens=usage.reasoning_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        degraded=record.status != "delivered",
    )


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1e3


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)
