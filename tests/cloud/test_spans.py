"""The cloud's spans of one session, made after the fact from the events it streamed: which spans,
under which parent, when each starts and ends, and what they carry. Tracing exports to
OpenTelemetry's in-memory exporter; the clock the spans read is set by the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from edgecloud.cloud import spans as spans_module
from edgecloud.cloud.spans import SessionSpans
from edgecloud.shared.base import tracing
from edgecloud.shared.reasoner.session import Event, EventKind, Failure, Timings, Usage

MS = 1_000_000
T0 = 1_700_000_000_000 * MS
"""When the session was accepted, in ns."""


class Clock:
    """``time.time_ns`` for the spans module, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def time_ns(self) -> int:
        return self.now

    def at(self, ms: int) -> None:
        self.now = T0 + ms * MS


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(spans_module, "time", clock)
    return clock


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    monkeypatch.setattr(tracing, "_provider", None)
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("edgecloud-cloud-test", exporter=exporter)
    yield exporter
    exporter.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    named = {span.name: span for span in finished}
    assert len(named) == len(finished), "one span of each name"
    return named


def edge_parent() -> tuple[object, object]:
    """The edge's ``edge.escalation`` span and the context the cloud reads from the call's metadata."""
    edge = tracing.tracer().start_span("edge.escalation")
    return edge, tracing.context_from_metadata(tracing.trace_headers(edge))


def completed(seq: int, *, cached: bool = False, queue_ms: float = 0, prefill_ms: float = 0) -> Event:
    return Event(
        seq, "s1", EventKind.COMPLETED, text="5", cached=cached, finish_reason="stop",
        usage=Usage(input_tokens=11, reasoning_tokens=7, output_tokens=2),
        timings=Timings(queue_ms=queue_ms, prefill_ms=prefill_ms),
    )  # fmt: skip


def window(span: ReadableSpan) -> tuple[float, float]:
    """The span's start and end, in ms after the session was accepted."""
    return ((span.start_time - T0) / MS, (span.end_time - T0) / MS)


def test_a_completed_session_is_queue_prefill_thinking_then_answer(
    clock: Clock, exporter: InMemorySpanExporter
) -> None:
    edge, parent = edge_parent()
    session = SessionSpans(parent)
    session.see(Event(1, "s1", EventKind.ACCEPTED))
    clock.at(100)
    session.see(Event(2, "s1", EventKind.REASONING_DELTA, text="2+3"))
    clock.at(150)
    session.see(Event(3, "s1", EventKind.REASONING_DELTA, text=" is 5"))
    clock.at(200)
    session.see(Event(4, "s1", EventKind.ANSWER_DELTA, text="5"))
    clock.at(300)
    session.see(completed(5, queue_ms=30, prefill_ms=50))
    clock.at(400)  # the handler returns after sending the end: the session ended at its terminal event
    session.end()
    edge.end()

    spans = by_name(exporter)
    assert set(spans) == {
        "edge.escalation",
        "cloud.session",
        "cloud.queue_wait",
        "cloud.prefill",
        "cloud.thinking",
        "cloud.answer",
    }
    cloud = spans["cloud.session"]
    assert cloud.parent.span_id == spans["edge.escalation"].context.span_id
    assert cloud.context.trace_id == spans["edge.escalation"].context.trace_id
    for name in ("cloud.queue_wait", "cloud.prefill", "cloud.thinking", "cloud.answer"):
        assert spans[name].parent.span_id == cloud.context.span_id, name
    assert window(cloud) == (0, 300)
    assert window(spans["cloud.queue_wait"]) == (0, 30)  # the session's own queue time
    assert window(spans["cloud.prefill"]) == (30, 80)  # then reading the prompt
    assert window(spans["cloud.thinking"]) == (80, 200)  # until the first answer token
    assert window(spans["cloud.answer"]) == (200, 300)
    assert dict(cloud.attributes) == {
        "edgecloud.session_id": "s1", "edgecloud.input_tokens": 11, "edgecloud.cached": False,
        "edgecloud.reasoning_tokens": 7, "edgecloud.output_tokens": 2,
    }  # fmt: skip
    assert cloud.status.status_code is StatusCode.UNSET


def test_hidden_reasoning_is_thinking_too_and_the_queue_never_passes_the_first_token(
    clock: Clock, exporter: InMemorySpanExporter
) -> None:
    session = SessionSpans(edge_parent()[1])
    session.see(Event(1, "s1", EventKind.ACCEPTED))
    clock.at(40)
    session.see(Event(2, "s1", EventKind.REASONING_PROGRESS, reasoning_tokens=16))
    clock.at(90)
    session.see(completed(3, queue_ms=100, prefill_ms=20))  # timings say more than was seen
    session.end()
    spans = by_name(exporter)
    assert window(spans["cloud.queue_wait"]) == (0, 40)  # capped at the first token
    assert "cloud.prefill" not in spans  # nothing left of it before the first token
    assert window(spans["cloud.thinking"]) == (40, 90)  # no answer: thinking lasts to the end
    assert "cloud.answer" not in spans


def test_a_cached_result_is_a_queue_wait_and_an_answer(clock: Clock, exporter: InMemorySpanExporter) -> None:
    session = SessionSpans(edge_parent()[1])
    session.see(Event(1, "s1", EventKind.ACCEPTED))
    clock.at(5)
    session.see(Event(2, "s1", EventKind.ANSWER_DELTA, text="5"))
    clock.at(6)
    # A cached result's timings are those of the session that made it, not this one's.
    session.see(completed(3, cached=True, queue_ms=999, prefill_ms=999))
    session.end()
    spans = by_name(exporter)
    assert set(spans) == {"cloud.session", "cloud.queue_wait", "cloud.answer"}
    assert window(spans["cloud.queue_wait"]) == (0, 5) and window(spans["cloud.answer"]) == (5, 6)
    assert spans["cloud.session"].attributes["edgecloud.cached"] is True


def test_a_failed_session_is_an_error(clock: Clock, exporter: InMemorySpanExporter) -> None:
    session = SessionSpans(edge_parent()[1])
    session.see(Event(1, "s1", EventKind.ACCEPTED))
    clock.at(20)
    session.see(Event(2, "s1", EventKind.FAILED, failure=Failure("ENGINE_ERROR", "out of memory")))
    clock.at(50)
    session.end()
    spans = by_name(exporter)
    cloud = spans["cloud.session"]
    assert cloud.status.status_code is StatusCode.ERROR
    assert "ENGINE_ERROR" in cloud.status.description and "out of memory" in cloud.status.description
    assert "edgecloud.input_tokens" not in cloud.attributes
    assert window(cloud) == (0, 20)
    assert set(spans) == {"cloud.session", "cloud.queue_wait"}


def test_a_caller_that_left_ends_the_session_when_told(clock: Clock, exporter: InMemorySpanExporter) -> None:
    session = SessionSpans(edge_parent()[1])
    session.see(Event(1, "s1", EventKind.ACCEPTED))
    clock.at(10)
    session.see(Event(2, "s1", EventKind.REASONING_DELTA, text="2+3"))
    clock.at(70)
    session.end()  # no terminal event: the caller went away
    spans = by_name(exporter)
    assert spans["cloud.session"].attributes["edgecloud.caller_left"] is True
    assert window(spans["cloud.session"]) == (0, 70) and window(spans["cloud.thinking"]) == (10, 70)


def test_a_session_that_saw_no_event_is_a_session_and_its_wait(clock: Clock, exporter: InMemorySpanExporter) -> None:
    session = SessionSpans(edge_parent()[1])
    clock.at(25)
    session.end()
    spans = by_name(exporter)
    assert set(spans) == {"cloud.session", "cloud.queue_wait"}
    assert dict(spans["cloud.session"].attributes) == {}
    assert window(spans["cloud.queue_wait"]) == (0, 25)


def test_without_a_parent_the_session_starts_its_own_trace(clock: Clock, exporter: InMemorySpanExporter) -> None:
    session = SessionSpans(tracing.context_from_metadata(None))
    session.see(Event(1, "s1", EventKind.ACCEPTED))
    session.end()
    assert by_name(exporter)["cloud.session"].parent is None


def test_with_tracing_off_nothing_is_recorded(
    clock: Clock, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = SessionSpans(tracing.context_from_metadata(None))  # made while tracing was on
    monkeypatch.setattr(tracing, "_provider", None)  # then turned off
    session.see(Event(1, "s1", EventKind.ACCEPTED))
    session.see(completed(2))
    session.end()
    assert not tracing.tracing_enabled() and exporter.get_finished_spans() == ()
