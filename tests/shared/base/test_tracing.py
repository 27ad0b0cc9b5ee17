"""shared.base.tracing: off by default; W3C context written for a recording span and read back."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edgecloud.shared.base import tracing


def test_tracing_is_off_until_configured_and_costs_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_provider", None)
    tracing.configure_tracing("edgecloud-test")  # neither endpoint nor exporter: stays off
    assert not tracing.tracing_enabled()
    span = tracing.tracer().start_span("x")
    assert not span.is_recording() and tracing.trace_headers(span) == {}


def test_the_trace_context_goes_through_metadata_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_provider", None)
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("edgecloud-test", exporter=exporter)
    parent = tracing.tracer().start_span("edge.escalation")
    headers = tracing.trace_headers(parent)
    assert set(headers) == {"traceparent"} and headers["traceparent"].startswith("00-")
    metadata = [("authorization", "Bearer x"), *headers.items(), ("x-binary-bin", b"\\x00")]
    child = tracing.tracer().start_span("cloud.session", context=tracing.context_from_metadata(metadata))
    child.end()
    parent.end()
    (recorded_child, recorded_parent) = exporter.get_finished_spans()
    assert recorded_child.context.trace_id == recorded_parent.context.trace_id
    assert recorded_child.parent.span_id == recorded_parent.context.span_id
    # No context, or a forged one, starts a new trace rather than failing.
    for junk in (None, [("traceparent", "garbage")], {}):
        orphan = tracing.tracer().start_span("cloud.session", context=tracing.context_from_metadata(junk))
        assert trace.get_current_span(tracing.context_from_metadata(junk)).get_span_context().is_valid is False
        orphan.end()
