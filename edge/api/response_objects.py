"""OpenAI's Responses API objects, made from edgecloud's results: the ``response`` object, its
message item, and the stream's events (each with its ``sequence_number``).

A stream sends ``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, then ``response.completed`` (or
``response.incomplete`` when ``max_output_tokens`` cut the answer, ``response.failed`` on an
error). The hidden reasoning is counted in ``usage.output_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from edgecloud.edge.service import QueryRequest, QueryResult, StreamItem
from edgecloud.shared.base.errors import EdgecloudError

__all__ = [
    "CANCELLED",
    "FINAL_EVENTS",
    "failed_response",
    "response_events",
    "response_object",
    "response_status",
]

CANCELLED = "cancelled by the client"
"""The reason a cancelled query's result (and its outbox record) carries."""
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_STATUS = {"accepted": "queued", "completed": "completed", "failed": "failed"}


def response_status(result: QueryResult) -> str:
    """The Responses API's status of ``result``: ``queued`` while it waits in the outbox."""
    if result.status == "failed" and result.reason == CANCELLED:
        return "cancelled"
    if result.status == "completed" and result.finish_reason == "length":
        return "incomplete"
    return _STATUS.get(result.status, result.status)


def _message(response_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{response_id.removeprefix('resp_')}",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def response_object(
    response_id: str, model: str, created: float, status: str, result: QueryResult | None, *, background: bool
) -> dict[str, Any]:
    """The ``response`` object in ``status``, with the answer and usage once ``result`` is complete."""
    done = result is not None and result.status == "completed"
    cut = done and result is not None and result.finish_reason == "length"
    body: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": background,
        "model": model,
        "output": [_message(response_id, result.answer or "", "incomplete" if cut else "completed")]
        if done and result is not None
        else [],
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "usage": None,
    }
    if done:
        assert result is not None
        completion = result.reasoning_tokens + result.output_tokens
        body["completed_at"] = time.time()
        body["usage"] = {
            "input_tokens": result.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": result.reasoning_tokens},
            "total_tokens": result.input_tokens + completion,
        }
        body["edgecloud"] = {"route_taken": result.route_taken, "reason": result.reason, "degraded": result.degraded}
    return body


def failed_response(
    response_id: str, model: str, created: float, code: str, message: str, *, background: bool
) -> dict[str, Any]:
    failed = response_object(response_id, model, created, "failed", None, background=background)
    failed["error"] = {"code": code, "message": message}
    return failed


async def response_events(
    items: AsyncIterator[StreamItem],
    request: QueryRequest,
    model: str,
    created: float,
    *,
    background: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    """OpenAI's stream events for one response, numbered from 0."""
    sequence = 0

    def event(kind: str, **data: Any) -> dict[str, Any]:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **data}
        sequence += 1
        return payload

    rid, text = request.id, ""
    message = _message(rid, "", status="in_progress")
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    queued = response_object(rid, model, created, "queued", None, background=background)
    yield event("response.created", response=queued)
    yield event("response.in_progress", response={**queued, "status": "in_progress"})
    yield event("response.output_item.added", output_index=0, item={**message, "content": []})
    yield event("response.content_part.added", part=part, **where)
    try:
        async for item in items:
            if item.event == "answer":
                text += item.text or ""
                yield event("response.output_text.delta", delta=item.text or "", logprobs=[], **where)
            elif item.result is not None:
                result = item.result
                status = response_status(result)
                yield event("response.output_text.done", text=text, logprobs=[], **where)
                yield event("response.content_part.done", part={**part, "text": text}, **where)
                item_status = "incomplete" if status == "incomplete" else "completed"
                yield event("response.output_item.done", output_index=0, item=_message(rid, text, item_status))
                final = response_object(rid, model, created, status, result, background=background)
                yield event("response.incomplete" if status == "incomplete" else "response.completed", response=final)
    except EdgecloudError as exc:
        yield event("response.failed", response=failed_response(rid, model, created, exc.code, str(exc),
                                                                 background=background))  # fmt: skip
