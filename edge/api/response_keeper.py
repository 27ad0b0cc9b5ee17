"""Running and keeping the Responses API's responses: the background ones in tasks of their own,
each stored (:mod:`edgecloud.edge.api.response_store`) when created and when it ends.

A background response runs whether or not its client stays. One created with ``stream`` keeps its
events as they happen, so a client that was cut off resumes (``starting_after``) with no gap and
no duplicate; once it ends its events are stored with it, and a replay after a restart is the same
stream. A cloud-only query while the cloud is down waits in the outbox (``queued``) and completes
when the cloud answers it. When the daemon stops, the background responses still running are left
``queued`` in the store, and :meth:`ResponseKeeper.resume` runs them again, under the same id, at
the next start: the cloud's sessions are idempotent by request id, so one the cloud had begun is
re-attached to, not asked twice.

Every response belongs to the API key that created it (its *owner*): to any other key it does not
exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from edgecloud.edge.api import sse
from edgecloud.edge.api.response_objects import (
    CANCELLED,
    FINAL_EVENTS,
    failed_response,
    response_events,
    response_object,
    response_status,
)
from edgecloud.edge.api.response_store import TERMINAL, ResponseStore, StoredResponse
from edgecloud.edge.outbox import PENDING
from edgecloud.edge.pipeline.result import final_result
from edgecloud.edge.service import EdgeService, QueryRequest, QueryResult, StreamItem
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.errors import EdgecloudError
from edgecloud.shared.reasoner.session import Message, Sampling

__all__ = ["ResponseKeeper"]

log = logging.getLogger(__name__)


def _request_json(request: QueryRequest) -> dict[str, Any]:
    return {
        "query": request.query,
        "route": request.route.value,
        "max_reasoning_tokens": request.max_reasoning_tokens,
        "max_output_tokens": request.max_output_tokens,
        "messages": [m.to_dict() for m in request.messages],
        "sampling": {"temperature": request.sampling.temperature, "top_p": request.sampling.top_p,
                     "seed": request.sampling.seed},
    }  # fmt: skip


def _query_request(record: StoredResponse) -> QueryRequest:
    asked = record.request
    return QueryRequest(
        query=asked["query"],
        route=Requested(asked["route"]),
        max_reasoning_tokens=asked["max_reasoning_tokens"],
        max_output_tokens=asked["max_output_tokens"],
        id=record.id,
        # Responses stored before conversations and sampling reached the model have neither.
        messages=tuple(Message(m["role"], m["content"]) for m in asked.get("messages", ())),
        sampling=Sampling(**asked.get("sampling", {})),
    )


class ResponseKeeper:
    def __init__(self, service: EdgeService, store: ResponseStore) -> None:
        self.service, self.store = service, store
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, _Run] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def resume(self) -> None:
        """Run again the background responses a stop left unfinished (not those in the outbox)."""
        for record in self.store.unfinished():
            if self.service.outbox.get(record.id) is not None:
                continue  # the outbox delivers it; its state is read from there
            log.info("response %s: running it again (the daemon stopped before it ended)", record.id)
            self._launch(record, _query_request(record))

    async def stop(self) -> None:
        """Stop the running ones, leaving them unfinished in the store for :meth:`resume`."""
        running = [*self._tasks.values(), *(r.task for r in self._runs.values() if r.task is not None)]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # -- creating ----------------------------------------------------------------------

    async def answer(
        self, request: QueryRequest, items: AsyncIterator[StreamItem], *, owner: str, model: str, store: bool
    ) -> dict[str, Any]:
        """Answer now (not in the background) from ``items``, the query's buffered stream; stored
        when ``store``, for ``retrieve`` later."""
        created = time.time()
        result = await final_result(items)
        status = response_status(result)
        body = response_object(request.id, model, created, status, result, background=False)
        if store:
            self.store.add(self._record(request, owner, model, created, background=False, stream=False,
                                        status=status, response=body))  # fmt: skip
        return body

    async def stream_once(
        self, request: QueryRequest, items: AsyncIterator[StreamItem], *, owner: str, model: str, store: bool
    ) -> AsyncIterator[bytes]:
        """A live stream (not in the background); its final response stored when ``store``."""
        created, last = time.time(), None
        async for payload in response_events(items, request, model, created):
            last = payload
            yield _frame(payload)
        if store and last is not None and last["type"] in FINAL_EVENTS:
            response = last["response"]
            self.store.add(self._record(request, owner, model, created, background=False, stream=False,
                                        status=response["status"], response=response))  # fmt: skip

    def start(
        self, request: QueryRequest, items: AsyncIterator[StreamItem], *, owner: str, model: str
    ) -> dict[str, Any]:
        """Stored, then ``items`` (the query's buffered stream) run in the background; the ``queued``
        response object at once."""
        record = self._record(request, owner, model, time.time(), background=True, stream=False)
        self.store.add(record)
        self._launch(record, request, items)
        return _object(record, "queued")

    def start_stream(
        self, request: QueryRequest, items: AsyncIterator[StreamItem], *, owner: str, model: str
    ) -> AsyncIterator[bytes]:
        """Stored, then ``items`` (the query's live stream) run in the background; its events as they
        happen (:meth:`follow`)."""
        record = self._record(request, owner, model, time.time(), background=True, stream=True)
        self.store.add(record)
        return self._launch(record, request, items).follow(-1)

    # -- reading -----------------------------------------------------------------------

    def state(self, response_id: str, owner: str) -> dict[str, Any] | None:
        """The response object now, or None when ``owner`` has no such response."""
        run = self._runs.get(response_id)  # before the store: a run removes itself once stored
        record = self.store.get(response_id)
        if record is None or record.owner != owner:
            return None
        if record.finished:
            return record.response
        if run is not None and run.final is not None:
            return run.final
        if run is not None or response_id in self._tasks:
            return _object(record, "in_progress")
        result = self.service.lookup(response_id)  # in the outbox, or just answered
        if result is None:
            return _object(record, "queued")
        return self._from_result(record, result)

    def follow(self, response_id: str, owner: str, after: int) -> AsyncIterator[bytes] | None:
        """The events after ``after`` of a response created with ``stream`` and ``background``,
        following those still to come; None when ``owner`` has none to stream."""
        run = self._runs.get(response_id)
        record = self.store.get(response_id)
        if record is None or record.owner != owner or not record.stream:
            return None
        if run is not None:
            return run.follow(after)
        if record.events is not None:
            return _replay(record.events, after)
        return None

    def cancel(self, response_id: str, owner: str) -> dict[str, Any] | None:
        """Stop a queued or in-progress response: its run here, or its place in the outbox (once the
        cloud has it, its session there runs on; the answer is not taken). A finished one is as it was."""
        record = self.store.get(response_id)
        if record is None or record.owner != owner:
            return None
        if record.finished:
            return record.response
        if (task := self._tasks.get(response_id)) is not None:
            task.cancel()
        run = self._runs.get(response_id)
        if run is not None and run.task is not None:
            run.task.cancel()
        outboxed = self.service.outbox.get(response_id)
        if outboxed is not None and outboxed.status == PENDING:
            self.service.outbox.mark_failed(response_id, CANCELLED)
        self.store.finish(response_id, "cancelled", _object(record, "cancelled"), run.events if run else None)
        return self.state(response_id, owner)

    # -- running -----------------------------------------------------------------------

    @staticmethod
    def _record(request: QueryRequest, owner: str, model: str, created: float, **fields: Any) -> StoredResponse:
        return StoredResponse(id=request.id, owner=owner, model=model, created_at=created,
                              request=_request_json(request), **fields)  # fmt: skip

    def _launch(
        self, record: StoredResponse, request: QueryRequest, items: AsyncIterator[StreamItem] | None = None
    ) -> _Run:
        """Run ``items`` in a task of its own; None: the query from the start (again, after a restart)."""
        run = _Run()
        if record.stream:
            self._runs[record.id] = run
            run.task = asyncio.create_task(self._produce(record, request, run, items))
        else:
            self._tasks[record.id] = asyncio.create_task(self._answer(record, request, items))
        return run

    async def _answer(
        self, record: StoredResponse, request: QueryRequest, items: AsyncIterator[StreamItem] | None
    ) -> None:
        try:
            if items is None:  # run again after a restart
                items = self.service.stream(request, buffered=True)
            self._from_result(record, await final_result(items))
        # Cancelled (a BaseException) passes through: by cancel(), stored as cancelled already, or by
        # stop(), left unfinished to resume. Anything else ends the response failed, with its reason.
        except Exception as exc:  # noqa: BLE001
            self._failed(record, exc)
        finally:
            self._tasks.pop(record.id, None)

    async def _produce(
        self, record: StoredResponse, request: QueryRequest, run: _Run, items: AsyncIterator[StreamItem] | None
    ) -> None:
        try:
            if items is None:  # run again after a restart
                items = self.service.stream(request)
            async for payload in response_events(items, request, record.model, record.created_at, background=True):
                run.add(payload)
            if run.final is not None and run.final["status"] in TERMINAL:
                self.store.finish(record.id, run.final["status"], run.final, run.events)
        except Exception as exc:  # noqa: BLE001 (as in _answer)
            self._failed(record, exc, run.events)
        finally:
            self._runs.pop(record.id, None)
            run.close()

    def _failed(self, record: StoredResponse, exc: Exception, events: list[dict[str, Any]] | None = None) -> None:
        if isinstance(exc, EdgecloudError):
            code, message = exc.code, str(exc)
        else:
            log.exception("response %s failed", record.id, exc_info=exc)
            code, message = "server_error", f"internal error ({type(exc).__name__}); see the edge daemon's log"
        failed = failed_response(record.id, record.model, record.created_at, code, message,
                                 background=record.background)  # fmt: skip
        self.store.finish(record.id, "failed", failed, events)

    def _from_result(self, record: StoredResponse, result: QueryResult) -> dict[str, Any]:
        """The response object of ``result``, stored once it is final (one still queued in the
        outbox is read from there until the cloud answers it)."""
        status = response_status(result)
        response = _object(record, status, result)
        if status in TERMINAL:
            self.store.finish(record.id, status, response)
        return response


class _Run:
    """A streamed background response's events so far, for its followers."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        """The final ``response`` object, once its last event is in."""
        self.task: asyncio.Task[None] | None = None
        self._done = False
        self._signal = asyncio.Event()

    def add(self, payload: dict[str, Any]) -> None:
        self.events.append(payload)
        if payload["type"] in FINAL_EVENTS:
            self.final = payload["response"]
        self._signal.set()
        self._signal = asyncio.Event()

    def close(self) -> None:
        self._done = True
        self._signal.set()

    async def follow(self, after: int) -> AsyncIterator[bytes]:
        index = max(after + 1, 0)
        while True:
            signal = self._signal  # taken before looking, so an event added meanwhile is not missed
            while index < len(self.events):
                yield _frame(self.events[index])
                index += 1
            if self._done:
                return
            await signal.wait()


def _object(record: StoredResponse, status: str, result: QueryResult | None = None) -> dict[str, Any]:
    return response_object(record.id, record.model, record.created_at, status, result, background=record.background)


async def _replay(events: list[dict[str, Any]], after: int) -> AsyncIterator[bytes]:
    for payload in events[max(after + 1, 0) :]:
        yield _frame(payload)


def _frame(payload: dict[str, Any]) -> bytes:
    """One event of OpenAI's Responses stream, named by its ``type``."""
    return sse.frame(payload, payload["type"])
