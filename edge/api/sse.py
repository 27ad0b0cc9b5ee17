"""Server-Sent Events, the one writer of every streaming route of the edge API.

:func:`begin` takes a stream's first item before the response starts, so an error before it is
still an HTTP error with its status; :func:`encode` turns the items into events, and an error after
the first one into a last event with the error body that a JSON response would carry
(:mod:`edgecloud.edge.api.errors`); :func:`response` sends them. :func:`frame` is the wire form of
one event: ``event: <name>`` (none in OpenAI's chat stream) and one line of compact JSON.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

from fastapi.responses import StreamingResponse

from edgecloud.shared.base.errors import EdgecloudError

__all__ = ["begin", "encode", "frame", "response"]

_T = TypeVar("_T")


def frame(data: object, event: str | None = None) -> bytes:
    """One event: ``event: <event>`` (when named) and ``data: <data as compact JSON>``."""
    named = f"event: {event}\n" if event is not None else ""
    return f"{named}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def begin(stream: AsyncIterator[_T]) -> AsyncIterator[_T]:
    """``stream`` with its first item taken now: an error before it raises here, while the route
    can still answer with an HTTP status."""
    first = await anext(stream)

    async def rest() -> AsyncIterator[_T]:
        yield first
        async for item in stream:
            yield item

    return rest()


async def encode(
    items: AsyncIterator[_T],
    render: Callable[[_T], Iterable[bytes]],
    error: Callable[[EdgecloudError], bytes],
) -> AsyncIterator[bytes]:
    """The events of ``items`` (``render`` gives an item's); a deliberate error on the way ends the
    stream with ``error``'s event."""
    try:
        async for item in items:
            for chunk in render(item):
                yield chunk
    except EdgecloudError as exc:
        yield error(exc)


def response(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    """The streaming response of ``chunks``, never cached."""
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
