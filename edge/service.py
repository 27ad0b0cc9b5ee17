"""What the edge daemon does with a query, independent of HTTP.

Every query is answered locally first (milliseconds): that gives the answer,
its calibrated confidence and the query's features. Triage
(:mod:`edgecloud.edge.triage`) then keeps it on the edge or escalates it to the cloud
with the compressed features and a hint. When the cloud cannot be reached,
an ``auto`` query gets the local answer marked ``degraded``; a query that
insisted on the cloud is accepted into the durable outbox and delivered when
the cloud is back.

The steps and the values they pass on are :mod:`edgecloud.edge.pipeline`: a request is checked
once (:meth:`EdgeService.stream`), judged once (one :class:`~edgecloud.edge.pipeline.verdict.LocalVerdict`
for triage and the cloud's hint), and its typed result travels on the stream's ``done`` item. An
escalation has one deadline, the cloud client's (:attr:`EdgeConfig.cloud_timeout_s` in the daemon).

What the model does in the field is counted per bundle version (:mod:`edgecloud.edge.field`), and a
share of the answers it keeps is checked by the cloud after they have been returned (shadow checks).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.field.quality import FieldCounter
from edgecloud.edge.field.shadow import ShadowChecker
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.outbox import OutboxDeliverer, OutboxRecord, OutboxStorage
from edgecloud.edge.pipeline.request import QueryRequest, check
from edgecloud.edge.pipeline.result import (
    QueryResult,
    StreamItem,
    accepted_result,
    cloud_result,
    edge_result,
    final_result,
    outbox_result,
)
from edgecloud.edge.pipeline.verdict import LocalVerdict, judge, think_params, unread
from edgecloud.edge.runtime import EdgeBundle, ModelSlot
from edgecloud.edge.seams import CloudReasoner
from edgecloud.edge.stats import RequestStats
from edgecloud.edge.triage import Requested, Route, TriagePolicy
from edgecloud.shared.base.errors import InvalidInputError, ResourceExhaustedError, UnavailableError
from edgecloud.shared.base.tracing import trace_headers, tracer
from edgecloud.shared.reasoner.session import EventKind, ThinkParams

__all__ = ["EdgeService", "QueryRequest", "QueryResult", "StreamItem"]

log = logging.getLogger(__name__)


class EdgeService:
    def __init__(
        self,
        config: EdgeConfig,
        slot: ModelSlot,
        *,
        client: CloudReasoner | None,
        outbox: OutboxStorage,
        metrics: EdgeMetrics | None = None,
    ) -> None:
        self.config = config
        self.slot = slot
        self.client = client
        self.outbox = outbox
        self.metrics = metrics or EdgeMetrics()
        self.cloud_healthy = False
        self._cloud_checked = False
        self.stats = RequestStats()
        self.deliverer = OutboxDeliverer(outbox, client, on_delivered=self._delivered) if client else None
        self.quality = FieldCounter(self.metrics)
        self.shadow = (
            ShadowChecker(client, self.quality, config.shadow, device_id=config.device_id)
            if client is not None and config.shadow_share > 0
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._recent: collections.OrderedDict[str, QueryResult] = collections.OrderedDict()
        self._policy_cache: tuple[int, TriagePolicy] | None = None
        self._note_model(slot.current)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.client is not None:
            await self.check_cloud()
            self._tasks.append(asyncio.create_task(self._watch_cloud()))
            assert self.deliverer is not None
            await self.deliverer.start()
        self.metrics.outbox_depth.set(self.outbox.depth())

    async def stop(self) -> None:
        if self.shadow is not None:
            await self.shadow.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.deliverer is not None:
            await self.deliverer.stop()
        if self.client is not None:
            await self.client.close()

    async def check_cloud(self) -> bool:
        healthy = self.client is not None and await self.client.healthy()
        if healthy != self.cloud_healthy or not self._cloud_checked:
            level = logging.INFO if healthy else logging.WARNING
            log.log(
                level, "cloud %s is %s", self.config.cloud, "reachable" if healthy else "unreachable: answering locally"
            )
        self._cloud_checked = True
        self.cloud_healthy = healthy
        self.metrics.cloud_up.set(1 if healthy else 0)
        return healthy

    async def _watch_cloud(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            with contextlib.suppress(Exception):
                if await self.check_cloud() and self.deliverer is not None and self.outbox.depth():
                    await self.deliverer.deliver_once()
            self.metrics.outbox_depth.set(self.outbox.depth())

    def swap(self, bundle: EdgeBundle) -> EdgeBundle:
        """Serve ``bundle`` from now on; in-flight requests finish on the old one."""
        old = self.slot.swap(bundle)
        self._note_model(bundle)
        return old

    def _note_model(self, bundle: EdgeBundle) -> None:
        self.metrics.model_version.clear()
        self.metrics.model_version.labels(bundle.name).set(bundle.version)

    def policy(self, bundle: EdgeBundle) -> TriagePolicy:
        if self._policy_cache is None or self._policy_cache[0] != id(bundle):
            policy = TriagePolicy.from_calibration(
                bundle.model.calibration, threshold=self.config.threshold, max_difficulty=self.config.max_difficulty
            )
            self._policy_cache = (id(bundle), policy)
        return self._policy_cache[1]

    # -- queries -----------------------------------------------------------------------

    def reads_conversations(self) -> bool:
        """Whether the serving bundle's student reads whole conversations (``io.conversations``)."""
        return self.slot.current.manifest.io.get("conversations") is True

    def stream(self, request: QueryRequest, *, buffered: bool = False) -> AsyncIterator[StreamItem]:
        """The query as events; the last one is ``done`` with the full result.

        ``request`` is checked here, once, before anything runs: InvalidInputError is raised by this
        call, not by the stream. ``buffered``: the caller shows nothing before ``done`` (a plain JSON
        response), so a cloud stream that breaks after its answer began can still fall back to the
        local answer; a live stream has shown part of the cloud's answer and fails instead."""
        check(request, self.config, reads_conversations=self.reads_conversations())
        return self._run(request, buffered)

    async def query(self, request: QueryRequest) -> QueryResult:
        return await final_result(self.stream(request, buffered=True))

    def lookup(self, request_id: str) -> QueryResult | None:
        """A recent result, or an accepted request's state in the outbox."""
        record = self.outbox.get(request_id)
        if record is not None:
            return outbox_result(record, self.slot.current)
        return self._recent.get(request_id)

    async def _run(self, request: QueryRequest, buffered: bool) -> AsyncIterator[StreamItem]:
        started = time.perf_counter()
        span = tracer().start_span("edge.query", attributes={"edgecloud.requested_route": request.route.value})
        try:
            async for item in self._steps(request, started, buffered, span):
                if item.result is not None:
                    self._record(item.result)
                yield item
                if item.result is not None:
                    self._observe(item.result)
        except InvalidInputError as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            self.stats.record("error", (time.perf_counter() - started) * 1e3, ok=False)
            self.metrics.errors.labels(type(exc).__name__).inc()
            raise
        finally:
            span.end()

    async def _steps(
        self, request: QueryRequest, started: float, buffered: bool, span: trace.Span
    ) -> AsyncIterator[StreamItem]:
        verdict = await self._judge(request, span)
        self.quality.observe(verdict, request.route)
        decision = verdict.decision
        span.set_attributes({"edgecloud.route": decision.route.value, "edgecloud.reason": decision.reason,
                             "edgecloud.confidence": _rounded(verdict.confidence)})  # fmt: skip
        yield StreamItem.routed(verdict)
        if decision.route is Route.EDGE:
            result = self._edge(request, verdict, started, degraded=decision.degraded)
            if self.shadow is not None and self.cloud_healthy:
                self.shadow.offer(request, verdict)  # a task that runs after this answer: nobody waits for it
            yield StreamItem(event="answer", text=result.answer or "")
            yield StreamItem.done(result)
            return
        params = think_params(request, verdict, device_id=self.config.device_id)
        if self.client is None:
            raise UnavailableError("this daemon has no cloud configured (--cloud HOST:PORT)")
        # Only a query the edge cannot answer gets here with the cloud down (it insisted on the cloud,
        # or the edge abstained or cannot read it): a caller that cannot fetch a result later waits
        # for the cloud a while; the others' queries wait in the outbox.
        if not self.cloud_healthy and not await self._wait_for_cloud(request):
            self._unqueued(request)
            yield StreamItem.done(self._accept(request, params, verdict, started))
            return
        async for item in self._escalate(self.client, request, params, verdict, started, buffered, span):
            yield item

    async def _judge(self, request: QueryRequest, parent: trace.Span) -> LocalVerdict:
        """The local verdict: the edge's answer (none for a conversation its student does not read),
        the query's difficulty and triage's decision."""
        if request.multi_turn and not self.reads_conversations():
            # The student would answer the last message out of its context: leave the edge out.
            bundle = self.slot.current
            return unread(bundle, self.policy(bundle), requested=request.route, cloud_healthy=self.cloud_healthy)
        with tracer().start_as_current_span("edge.local_inference", context=trace.set_span_in_context(parent)) as span:
            with self.slot.acquire() as bundle:
                answer = await asyncio.to_thread(bundle.model.answer, request.query)
            span.set_attributes({"edgecloud.model.version": bundle.version, "edgecloud.output_tokens": answer.output_tokens,
                                 "edgecloud.reasoning_tokens": answer.reasoning_tokens})  # fmt: skip
        return judge(bundle, answer, self.policy(bundle), requested=request.route, cloud_healthy=self.cloud_healthy)

    async def _escalate(
        self,
        client: CloudReasoner,
        request: QueryRequest,
        params: ThinkParams,
        verdict: LocalVerdict,
        started: float,
        buffered: bool,
        span: trace.Span,
    ) -> AsyncIterator[StreamItem]:
        """The cloud's answer as it streams; on a failure, the fallback :meth:`_fell_back` picks.
        The deadline is the client's (one timer: the service sets none of its own)."""
        self.metrics.escalations.inc()
        self.metrics.bytes_sent.labels("features").inc(params.features.nbytes() if params.features else 0)
        self.metrics.bytes_sent.labels("query").inc(len(params.query.encode()))
        answered = False
        reasoning: list[str] = []
        escalation = tracer().start_span("edge.escalation", context=trace.set_span_in_context(span))
        try:
            async for event in client.think(params, trace_headers=trace_headers(escalation)):
                if event.kind is EventKind.REASONING_PROGRESS:
                    yield StreamItem(event="reasoning", reasoning_tokens=event.reasoning_tokens)
                elif event.kind is EventKind.REASONING_DELTA:
                    reasoning.append(event.text)
                    yield StreamItem(event="reasoning", text=event.text)
                elif event.kind is EventKind.ANSWER_DELTA:
                    answered = True
                    yield StreamItem(event="answer", text=event.text)
                elif event.kind is EventKind.COMPLETED:
                    text = "".join(reasoning) if request.include_reasoning else None
                    escalation.set_attributes({"edgecloud.reasoning_tokens": event.usage.reasoning_tokens})
                    yield StreamItem.done(cloud_result(request, verdict, event, started, text))
                    return
                elif event.kind is EventKind.FAILED:
                    raise UnavailableError(f"the cloud session failed: {event.failure}")
        except (UnavailableError, ResourceExhaustedError) as exc:
            for item in self._fell_back(request, params, verdict, started, exc, shown=answered and not buffered):
                yield item
        finally:
            escalation.end()

    def _fell_back(
        self,
        request: QueryRequest,
        params: ThinkParams,
        verdict: LocalVerdict,
        started: float,
        exc: UnavailableError | ResourceExhaustedError,
        *,
        shown: bool,
    ) -> list[StreamItem]:
        """What a failed escalation ends with: the outbox for a query only the cloud can answer, the
        local answer (degraded) for the others; an error when part of the cloud's answer was ``shown``."""
        cloud_only = (
            request.route is Requested.CLOUD or verdict.decision.route is Route.CLOUD and not verdict.answer.text
        )
        log.warning("escalation %s failed (%s); %s", request.id, exc, "outbox" if cloud_only else "answering locally")
        asyncio.get_running_loop().create_task(self.check_cloud())
        if request.route is not Requested.CLOUD and shown:
            raise UnavailableError(f"the cloud stream broke after the answer began: {exc}") from exc
        if cloud_only:  # the edge has no answer to fall back on
            self._unqueued(request, exc)
            return [StreamItem.done(self._accept(request, params, verdict, started))]
        result = self._edge(request, verdict, started, degraded=True, reason="cloud_unavailable")
        return [StreamItem(event="answer", text=result.answer or ""), StreamItem.done(result)]

    async def _wait_for_cloud(self, request: QueryRequest) -> bool:
        """Whether the cloud came back within :attr:`EdgeConfig.cloud_wait_s` (only for a caller that
        cannot fetch a result later: the others' queries go to the outbox at once)."""
        if request.queue_when_cloud_down or self.client is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.cloud_wait_s
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(0.25, left))
            if await self.check_cloud():
                return True
        return False

    @staticmethod
    def _unqueued(request: QueryRequest, cause: BaseException | None = None) -> None:
        if request.queue_when_cloud_down:
            return
        if isinstance(cause, ResourceExhaustedError):  # reachable, but full: a 429 to retry, not a 503
            raise ResourceExhaustedError(
                f"the cloud is at capacity and this query must be answered there: {cause}"
            ) from cause
        raise UnavailableError("the cloud is unreachable and this query must be answered there") from cause

    def _edge(
        self, request: QueryRequest, verdict: LocalVerdict, started: float, *, degraded: bool, reason: str | None = None
    ) -> QueryResult:
        if degraded:
            self.metrics.degraded.inc()
        return edge_result(request, verdict, started, degraded=degraded, reason=reason)

    def _accept(self, request: QueryRequest, params: ThinkParams, verdict: LocalVerdict, started: float) -> QueryResult:
        self.outbox.add(params)
        self.metrics.accepted.inc()
        self.metrics.outbox_depth.set(self.outbox.depth())
        return accepted_result(request, verdict, started)

    def _delivered(self, record: OutboxRecord) -> None:
        self.metrics.outbox_depth.set(self.outbox.depth())
        log.info("outbox: delivered %s", record.request_id)

    def _record(self, result: QueryResult) -> None:
        self._recent[result.id] = result
        while len(self._recent) > 10_000:
            self._recent.popitem(last=False)

    def _observe(self, result: QueryResult) -> None:
        self.stats.record(result.route_taken, result.latency_ms, degraded=result.degraded)
        self.metrics.requests.labels(result.route_taken, result.reason).inc()
        self.metrics.latency.labels(result.route_taken).observe(result.latency_ms / 1e3)


def _rounded(value: float) -> float:
    return 0.0 if math.isnan(value) else round(value, 6)  # a span attribute cannot be NaN
