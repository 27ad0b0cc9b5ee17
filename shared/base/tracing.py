"""One trace across edge and cloud, with OpenTelemetry: off unless configured.

:func:`configure_tracing` installs an SDK tracer provider that exports over OTLP/HTTP (a collector's
``/v1/traces``), or to the exporter it is given (tests pass an in-memory one). Until then
:func:`tracer` is OpenTelemetry's no-op tracer, which costs nothing. The provider is this module's,
not OpenTelemetry's global one, so configuring edgecloud's tracing never fights an application's.

The W3C trace context travels in gRPC metadata (``traceparent``, ``tracestate``):
:func:`trace_headers` writes it for a span, :func:`context_from_metadata` reads it back.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context

__all__ = ["configure_tracing", "context_from_metadata", "trace_headers", "tracer", "tracing_enabled"]

_provider: trace.TracerProvider | None = None
_OFF = trace.NoOpTracer()


def configure_tracing(service_name: str, *, endpoint: str | None = None, exporter: object | None = None) -> None:
    """Export this process's spans as ``service_name``: over OTLP/HTTP to ``endpoint`` (e.g.
    ``http://collector:4318/v1/traces``), or to ``exporter`` (a SpanExporter), batched unless it is
    given. With neither, tracing stays off."""
    global _provider
    if endpoint is None and exporter is None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        atexit.register(provider.shutdown)  # the last batch goes out when the process ends
    _provider = provider


def tracing_enabled() -> bool:
    return _provider is not None


def tracer() -> trace.Tracer:
    return _provider.get_tracer("edgecloud") if _provider is not None else _OFF


def trace_headers(span: trace.Span) -> dict[str, str]:
    """The W3C trace context of ``span``, as metadata for the call it makes ({} when not recording)."""
    if not span.is_recording():
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def context_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str] | None) -> Context:
    """The parent context a caller sent in gRPC metadata (an empty one when it sent none)."""
    if metadata is None:
        return Context()
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
    carrier = {k: v for k, v in pairs if isinstance(v, str) and k in ("traceparent", "tracestate")}
    return propagate.extract(carrier, context=Context())
