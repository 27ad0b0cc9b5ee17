"""The cloud's side of a trace: one session's spans, from the events it streams.

The edge sends its W3C trace context in the call's metadata; the Think handler feeds every event
it streams to :class:`SessionSpans`, which, when the session ends, records ``cloud.session`` under
the edge's ``edge.escalation`` span, with ``cloud.queue_wait`` (accepted until the model takes it),
``cloud.prefill`` (reading the prompt, until the first generated token), ``cloud.thinking`` (the
hidden reasoning) and ``cloud.answer`` beneath it, and the token counts as attributes. The queue's
and the prompt's durations are the session's own (its ``Timings``); the rest are the times the
events were seen: spans are made after the fact, so the engine's threads carry no tracing code.
With tracing off (:func:`edgecloud.shared.base.tracing.tracing_enabled`) nothing
is recorded.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode

from edgecloud.shared.base.tracing import tracer
from edgecloud.shared.reasoner.session import Event, EventKind

__all__ = ["SessionSpans"]


class SessionSpans:
    def __init__(self, parent: Context) -> None:
        self.parent = parent
        self.started = time.time_ns()
        self.first_token: int | None = None
        self.first_reasoning: int | None = None
        self.first_answer: int | None = None
        self.finished: int | None = None
        self.last: Event | None = None

    def see(self, event: Event) -> None:
        now = time.time_ns()
        if event.kind in (EventKind.REASONING_PROGRESS, EventKind.REASONING_DELTA, EventKind.ANSWER_DELTA):
            self.first_token = self.first_token or now
        if event.kind in (EventKind.REASONING_PROGRESS, EventKind.REASONING_DELTA):
            self.first_reasoning = self.first_reasoning or now
        if event.kind is EventKind.ANSWER_DELTA:
            self.first_answer = self.first_answer or now
        if event.kind.terminal:
            self.finished = now
        self.last = event

    def end(self) -> None:
        """Record the spans (once the session ended, or the caller went away). A session ends with
        its terminal event, not when the handler returns after sending it."""
        done = self.finished or time.time_ns()
        last = self.last
        session = tracer().start_span("cloud.session", context=self.parent, start_time=self.started)
        if last is not None:
            session.set_attribute("edgecloud.session_id", last.session_id)
            if last.kind is EventKind.COMPLETED:
                usage = last.usage
                session.set_attributes({"edgecloud.input_tokens": usage.input_tokens, "edgecloud.cached": last.cached,
                                        "edgecloud.reasoning_tokens": usage.reasoning_tokens,
                                        "edgecloud.output_tokens": usage.output_tokens})  # fmt: skip
            elif last.kind is EventKind.FAILED:
                session.set_status(Status(StatusCode.ERROR, str(last.failure)))
            else:
                session.set_attribute("edgecloud.caller_left", True)
        inside = trace.set_span_in_context(session)
        first = self.first_token or done
        queued, read = first, first  # the queue's and the prompt's ends, where the session says them
        if last is not None and last.kind is EventKind.COMPLETED and not last.cached:
            queued = min(self.started + int(last.timings.queue_ms * 1e6), first)
            read = min(queued + int(last.timings.prefill_ms * 1e6), first)
        tracer().start_span("cloud.queue_wait", context=inside, start_time=self.started).end(end_time=queued)
        if read > queued:
            tracer().start_span("cloud.prefill", context=inside, start_time=queued).end(end_time=read)
        if self.first_reasoning is not None:
            thinking = tracer().start_span("cloud.thinking", context=inside, start_time=min(read, self.first_reasoning))
            thinking.end(end_time=self.first_answer or done)
        if self.first_answer is not None:
            tracer().start_span("cloud.answer", context=inside, start_time=self.first_answer).end(end_time=done)
        session.end(end_time=done)
