"""What the edge daemon does with a query, independent of HTTP.

Every query is answered locally first (milliseconds): that gives the answer,
its calibrated confidence and the query's features. Triage
(:mod:`edgecloud.edge.triage`) then keeps it on the edge or escalates it to the cloud
with the compressed features and a hint. When the cloud cannot be reached,
an ``auto`` query gets the local answer marked ``degraded``; a query that
insisted on the cloud is accepted into the durable outbox and delivered when
the cloud is back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.metrics import EdgeMetrics
from edgecloud.edge.outbox import OutboxDeliverer, OutboxRecord, OutboxStorage
from edgecloud.edge.runtime import EdgeAnswer, EdgeBundle, ModelSlot
from edgecloud.edge.seams import CloudReasoner
from edgecloud.edge.stats import RequestStats
from edgecloud.edge.triage import Decision, Requested, Route, TriageInput, TriagePolicy, decide, estimate_difficulty
from edgecloud.shared.base.errors import InvalidInputError, ResourceExhaustedError, UnavailableError
from edgecloud.shared.base.tracing import trace_headers, tracer
from edgecloud.shared.reasoner.features import encode_features
from edgecloud.shared.reasoner.session import (
    MAX_HINT_ANSWER_CHARS,
    MAX_MESSAGES,
    EdgeHint,
    Event,
    EventKind,
    Message,
    Sampling,
    ThinkParams,
)
from edgecloud.shared.reasoner.thinking import THINK_TAG_TOKENS

__all__ = ["EdgeService", "QueryRequest", "QueryResult", "StreamItem"]

log = logging.getLogger(__name__)

MAX_OUTPUT_TOKENS = 65_536
"""The largest ``max_output_tokens`` a request may ask for (the cloud caps the answer at its own limit)."""


@dataclass(frozen=True, kw_only=True)
class QueryRequest:
    query: str
    route: Requested = Requested.AUTO
    max_reasoning_tokens: int | None = None
    include_reasoning: bool = False
    id: str = field(default_factory=lambda: f"q-{uuid.uuid4().hex}")
    max_output_tokens: int | None = None
    """The most tokens generated, reasoning and answer together (OpenAI's ``max_completion_tokens``
    and ``max_output_tokens``); None: the models' own limits. A cut answer has ``finish_reason``
    ``length``."""
    queue_when_cloud_down: bool = True
    """A query only the cloud can answer, while the cloud is down, goes to the outbox (answered later,
    by id); False: it waits up to :attr:`EdgeConfig.cloud_wait_s` for the cloud to come back, then
    fails with UnavailableError (for callers that cannot fetch a result later)."""
    messages: tuple[Message, ...] = ()
    """The whole conversation, ending with the user message that is ``query``; empty: the query alone."""
    sampling: Sampling = field(default_factory=Sampling)
    """The cloud's sampling (the edge student decodes greedily: its confidence is calibrated so)."""

    @property
    def multi_turn(self) -> bool:
        """More than the query: a system message or earlier turns."""
        return len(self.messages) > 1


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
        return {
            "id": self.id,
            "status": self.status,
            "answer": self.answer,
            "route_taken": self.route_taken,
            "reason": self.reason,
            "confidence": None if self.confidence != self.confidence else round(self.confidence, 6),
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


@dataclass(frozen=True)
class StreamItem:
    """One server-sent event: ``route``, ``reasoning`` (progress or text), ``answer`` (delta) or ``done``."""

    event: str
    data: dict[str, object]


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

    def validate(self, request: QueryRequest) -> None:
        """Raise InvalidInputError when ``request`` breaks a limit (checked again when it runs)."""
        if not request.query.strip():
            raise InvalidInputError("query is empty")
        if len(request.query) > self.config.max_query_chars:
            raise InvalidInputError(
                f"query has {len(request.query)} characters; the limit is {self.config.max_query_chars}"
            )
        if request.messages:
            total = sum(len(m.content) for m in request.messages)
            if total > self.config.max_conversation_chars or len(request.messages) > MAX_MESSAGES:
                raise InvalidInputError(
                    f"the conversation has {len(request.messages)} messages and {total} characters; the limits are "
                    f"{MAX_MESSAGES} and {self.config.max_conversation_chars} (nothing is cut: send fewer or "
                    "shorter messages)"
                )
            if request.messages[-1] != Message("user", request.query):
                raise InvalidInputError("the conversation must end with the user message that is the query")
        if request.multi_turn and request.route is Requested.EDGE and not self.reads_conversations():
            raise InvalidInputError(
                "the edge model reads single queries, not conversations (a system message or earlier turns); "
                "send this one with route auto or cloud"
            )
        if (
            request.max_reasoning_tokens is not None
            and not 0 <= request.max_reasoning_tokens <= self.config.max_reasoning_tokens
        ):
            raise InvalidInputError(f"max_reasoning_tokens must be in [0, {self.config.max_reasoning_tokens}]")
        if request.max_output_tokens is not None and not 1 <= request.max_output_tokens <= MAX_OUTPUT_TOKENS:
            raise InvalidInputError(f"max_output_tokens must be in [1, {MAX_OUTPUT_TOKENS}]")

    def reads_conversations(self) -> bool:
        """Whether the serving bundle's student reads whole conversations (``io.conversations``)."""
        return self.slot.current.manifest.io.get("conversations") is True

    async def _local(self, request: QueryRequest, parent: trace.Span) -> tuple[EdgeBundle, EdgeAnswer, Decision]:
        self.validate(request)
        if request.multi_turn and not self.reads_conversations():
            # The student would answer the last message out of its context: leave the edge out.
            bundle = self.slot.current
            answer = EdgeAnswer("", (), float("nan"), _NO_FEATURES, 0, 0, 0.0)
            inp = TriageInput(confidence=float("nan"), difficulty=float("nan"), requested=request.route,
                              cloud_healthy=self.cloud_healthy, edge_reads_request=False)  # fmt: skip
            return bundle, answer, decide(self.policy(bundle), inp)
        with tracer().start_as_current_span("edge.local_inference", context=trace.set_span_in_context(parent)) as span:
            with self.slot.acquire() as bundle:
                answer = await asyncio.to_thread(bundle.model.answer, request.query)
            span.set_attributes({"edgecloud.model.version": bundle.version, "edgecloud.output_tokens": answer.output_tokens,
                                 "edgecloud.reasoning_tokens": answer.reasoning_tokens})  # fmt: skip
        difficulty = estimate_difficulty(answer.token_logprobs, answer.input_tokens, abstained=answer.abstained)
        decision = decide(
            self.policy(bundle),
            TriageInput(
                confidence=answer.confidence,
                difficulty=difficulty,
                requested=request.route,
                cloud_healthy=self.cloud_healthy,
                abstained=answer.abstained,
            ),
        )
        return bundle, answer, decision

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

    def _cloud_result(
        self,
        request: QueryRequest,
        event: Event,
        decision: Decision,
        answer: EdgeAnswer,
        bundle: EdgeBundle,
        started: float,
        reasoning: str | None,
    ) -> QueryResult:
        return QueryResult(
            id=request.id,
            status="completed",
            answer=event.text,
            route_taken=Route.CLOUD.value,
            reason=decision.reason,
            confidence=answer.confidence,
            model_version=bundle.version,
            model_name=bundle.name,
            input_tokens=event.usage.input_tokens,
            reasoning_tokens=event.usage.reasoning_tokens,
            output_tokens=event.usage.output_tokens,
            latency_ms=(time.perf_counter() - started) * 1e3,
            cached=event.cached,
            reasoning=reasoning,
            edge_answer=answer.text,
            finish_reason="length" if event.finish_reason == "length" else "stop",
        )

    def _edge_result(
        self,
        request: QueryRequest,
        bundle: EdgeBundle,
        answer: EdgeAnswer,
        decision: Decision,
        started: float,
        *,
        degraded: bool,
        reason: str | None = None,
    ) -> QueryResult:
        # The edge generates its whole (short) answer to triage it; one longer than the caller's
        # limit is withheld, as OpenAI's models stop at the limit with the answer unfinished.
        cut = request.max_output_tokens is not None and answer.output_tokens > request.max_output_tokens
        result = QueryResult(
            id=request.id,
            status="completed",
            answer="" if cut else answer.text,
            route_taken=Route.EDGE.value,
            reason=reason or decision.reason,
            confidence=answer.confidence,
            model_version=bundle.version,
            model_name=bundle.name,
            input_tokens=answer.input_tokens,
            reasoning_tokens=answer.reasoning_tokens,  # a pair's reasoner writes a scratchpad first
            output_tokens=answer.output_tokens,
            latency_ms=(time.perf_counter() - started) * 1e3,
            degraded=degraded,
            finish_reason="length" if cut else "stop",
        )
        if degraded:
            self.metrics.degraded.inc()
        return self._record(result)

    def _think_params(self, request: QueryRequest, bundle: EdgeBundle, answer: EdgeAnswer) -> ThinkParams:
        common = {
            "request_id": request.id,
            "device_id": self.config.device_id,
            "query": request.query,
            "stream_reasoning": request.include_reasoning,
            "messages": request.messages,
            "sampling": request.sampling,
            "requested_route": request.route.value,
        }
        reasoning_budget, answer_tokens = _token_budgets(request)
        if not answer.features.size:  # the edge did not read this request: it has no view of it
            return ThinkParams(**common, max_reasoning_tokens=reasoning_budget, max_output_tokens=answer_tokens)
        features = encode_features(
            answer.features, model_name=bundle.name, model_version=bundle.version, model_sha256=bundle.sha256
        )
        confidence = answer.confidence if answer.confidence == answer.confidence else 0.0
        difficulty = estimate_difficulty(
            answer.token_logprobs, answer.input_tokens, abstained=answer.abstained, confidence=confidence
        )
        return ThinkParams(
            **common,
            features=features,
            hint=EdgeHint(
                confidence=min(max(confidence, 0.0), 1.0),
                estimated_difficulty=min(max(difficulty, 0.0), 1.0),
                answer=answer.text[:MAX_HINT_ANSWER_CHARS],
            ),
            max_reasoning_tokens=reasoning_budget,
            max_output_tokens=answer_tokens,
        )

    def _accept(
        self, request: QueryRequest, params: ThinkParams, bundle: EdgeBundle, answer: EdgeAnswer, started: float
    ) -> QueryResult:
        self.outbox.add(params)
        self.metrics.accepted.inc()
        self.metrics.outbox_depth.set(self.outbox.depth())
        return self._record(
            QueryResult(
                id=request.id,
                status="accepted",
                answer=None,
                route_taken=Route.CLOUD.value,
                reason="accepted_for_later_delivery",
                confidence=answer.confidence,
                model_version=bundle.version,
                model_name=bundle.name,
                input_tokens=answer.input_tokens,
                latency_ms=(time.perf_counter() - started) * 1e3,
                degraded=True,
            )
        )

    async def stream(self, request: QueryRequest, *, buffered: bool = False) -> AsyncIterator[StreamItem]:
        """The query as events; the last one is ``done`` with the full result.

        ``buffered``: the caller shows nothing before ``done`` (a plain JSON response), so a
        cloud stream that breaks after its answer began can still fall back to the local
        answer; a live stream has shown part of the cloud's answer and fails instead."""
        started = time.perf_counter()
        span = tracer().start_span("edge.query", attributes={"edgecloud.requested_route": request.route.value})
        try:
            async for item in self._stream(request, started, buffered, span):
                yield item
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

    async def _stream(
        self, request: QueryRequest, started: float, buffered: bool, span: trace.Span
    ) -> AsyncIterator[StreamItem]:
        bundle, answer, decision = await self._local(request, span)
        span.set_attributes({"edgecloud.route": decision.route.value, "edgecloud.reason": decision.reason,
                             "edgecloud.confidence": _num(answer.confidence) or 0.0})  # fmt: skip
        yield StreamItem(
            "route", {"route": decision.route.value, "reason": decision.reason, "confidence": _num(answer.confidence)}
        )
        if decision.route is Route.EDGE:
            result = self._edge_result(request, bundle, answer, decision, started, degraded=decision.degraded)
            yield StreamItem("answer", {"text": result.answer or ""})
            yield StreamItem("done", result.to_json())
            self._observe(result)
            return
        params = self._think_params(request, bundle, answer)
        if self.client is None:
            raise UnavailableError("this daemon has no cloud configured (--cloud HOST:PORT)")
        # Only a query the edge cannot answer gets here with the cloud down (it insisted on the cloud,
        # or the edge abstained or cannot read it): a caller that cannot fetch a result later waits
        # for the cloud a while; the others' queries wait in the outbox.
        if not self.cloud_healthy and not await self._wait_for_cloud(request):
            self._unqueued(request)
            result = self._accept(request, params, bundle, answer, started)
            yield StreamItem("done", result.to_json())
            self._observe(result)
            return
        self.metrics.escalations.inc()
        self.metrics.bytes_sent.labels("features").inc(params.features.nbytes() if params.features else 0)
        self.metrics.bytes_sent.labels("query").inc(len(params.query.encode()))
        answered = False
        reasoning: list[str] = []
        escalation = tracer().start_span("edge.escalation", context=trace.set_span_in_context(span))
        try:
            async with asyncio.timeout(self.config.cloud_timeout_s):
                async for event in self.client.think(params, trace_headers=trace_headers(escalation)):
                    if event.kind is EventKind.REASONING_PROGRESS:
                        yield StreamItem("reasoning", {"reasoning_tokens": event.reasoning_tokens})
                    elif event.kind is EventKind.REASONING_DELTA:
                        reasoning.append(event.text)
                        yield StreamItem("reasoning", {"text": event.text})
                    elif event.kind is EventKind.ANSWER_DELTA:
                        answered = True
                        yield StreamItem("answer", {"text": event.text})
                    elif event.kind is EventKind.COMPLETED:
                        text = "".join(reasoning) if request.include_reasoning else None
                        result = self._record(
                            self._cloud_result(request, event, decision, answer, bundle, started, text)
                        )
                        escalation.set_attributes({"edgecloud.reasoning_tokens": event.usage.reasoning_tokens})
                        yield StreamItem("done", result.to_json())
                        self._observe(result)
                        return
                    elif event.kind is EventKind.FAILED:
                        raise UnavailableError(f"the cloud session failed: {event.failure}")
        except (UnavailableError, ResourceExhaustedError, TimeoutError) as exc:
            cloud_only = request.route is Requested.CLOUD or decision.route is Route.CLOUD and not answer.text
            log.warning(
                "escalation %s failed (%s); %s", request.id, exc, "outbox" if cloud_only else "answering locally"
            )
            asyncio.get_running_loop().create_task(self.check_cloud())
            if request.route is Requested.CLOUD:
                self._unqueued(request, exc)
                result = self._accept(request, params, bundle, answer, started)
            elif answered and not buffered:
                raise UnavailableError(f"the cloud stream broke after the answer began: {exc}") from exc
            elif cloud_only:  # the edge has no answer to fall back on
                self._unqueued(request, exc)
                result = self._accept(request, params, bundle, answer, started)
            else:
                result = self._edge_result(
                    request, bundle, answer, decision, started, degraded=True, reason="cloud_unavailable"
                )
                yield StreamItem("answer", {"text": result.answer or ""})
            yield StreamItem("done", result.to_json())
            self._observe(result)
        finally:
            escalation.end()

    async def query(self, request: QueryRequest) -> QueryResult:
        done: dict[str, object] | None = None
        async for item in self.stream(request, buffered=True):
            if item.event == "done":
                done = item.data
        assert done is not None
        return self._recent[request.id]

    def lookup(self, request_id: str) -> QueryResult | None:
        """A recent result, or an accepted request's state in the outbox."""
        record = self.outbox.get(request_id)
        if record is not None:
            return self._from_outbox(record)
        return self._recent.get(request_id)

    def _from_outbox(self, record: OutboxRecord) -> QueryResult:
        bundle = self.slot.current
        usage = record.usage
        return QueryResult(
            id=record.request_id,
            status={"pending": "accepted", "delivered": "completed"}.get(record.status, record.status),
            answer=record.answer if record.status == "delivered" else None,
            route_taken=Route.CLOUD.value,
            reason=record.failure or record.last_error or "outbox",
            confidence=record.params.hint.confidence if record.params.hint else float("nan"),
            model_version=bundle.version,
            model_name=bundle.name,
            input_tokens=usage.input_tokens if usage else 0,
            reasoning_tokens=usage.reasoning_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            degraded=record.status != "delivered",
        )

    def _delivered(self, record: OutboxRecord) -> None:
        self.metrics.outbox_depth.set(self.outbox.depth())
        log.info("outbox: delivered %s", record.request_id)

    def _record(self, result: QueryResult) -> QueryResult:
        self._recent[result.id] = result
        while len(self._recent) > 10_000:
            self._recent.popitem(last=False)
        return result

    def _observe(self, result: QueryResult) -> None:
        self.stats.record(result.route_taken, result.latency_ms, degraded=result.degraded)
        self.metrics.requests.labels(result.route_taken, result.reason).inc()
        self.metrics.latency.labels(result.route_taken).observe(result.latency_ms / 1e3)


def _token_budgets(request: QueryRequest) -> tuple[int | None, int]:
    """The cloud's thinking budget (None: its default) and answer length (0: its default) for
    ``request``. Under ``max_output_tokens`` (reasoning and answer together, as OpenAI counts) a
    quarter of it at least is kept for the answer, and room for the think block's two tags (output
    tokens too): the limit holds from 3 tokens up, the cloud's shortest reply."""
    limit = request.max_output_tokens
    if limit is None:
        return request.max_reasoning_tokens, 0
    room = max(limit - THINK_TAG_TOKENS - -(-limit // 4), 0)
    reasoning = room if request.max_reasoning_tokens is None else min(request.max_reasoning_tokens, room)
    return reasoning, max(limit - reasoning - THINK_TAG_TOKENS, 1)


_NO_FEATURES = np.zeros(0, dtype=np.float32)


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)
