"""OpenTelemetry for the services: one tracer provider per process, and the W3C
`traceparent` that StreamRequest carries from the gateway to the scheduler.

The exporter follows the standard `OTEL_TRACES_EXPORTER` variable: `none` (the default: the
API's no-op tracer, nothing recorded), `console` (spans printed as JSON on stdout), or `otlp`
(needs the `opentelemetry-exporter-otlp` package; its own `OTEL_EXPORTER_OTLP_*` variables
say where to). `OTEL_SERVICE_NAME` overrides the service name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "orca"
EXPORTERS = ("none", "console", "otlp")
_PROPAGATOR = TraceContextTextMapPropagator()


def configure_tracing(service_name: str, environ: Mapping[str, str] = os.environ) -> str:
    """Install this process's tracer provider as `OTEL_TRACES_EXPORTER` asks; returns the
    exporter's name. ValueError for an unknown exporter or a missing OTLP package."""
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower() or "none"
    if exporter_name not in EXPORTERS:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported; use one of {EXPORTERS}"
        )
    if exporter_name == "none":
        return exporter_name
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ValueError(
                "OTEL_TRACES_EXPORTER=otlp needs the opentelemetry-exporter-otlp package"
            ) from exc
        exporter = OTLPSpanExporter()
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter_name


def tracer() -> trace.Tracer:
    """Orca's tracer from the current provider (a no-op one until configure_tracing)."""
    return trace.get_tracer(TRACER_NAME)


def context_from_traceparent(traceparent: str) -> otel_context.Context | None:
    """The parent context a `traceparent` header names; None when it is empty or invalid
    (the span then starts a new trace)."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def traceparent_of(span: trace.Span) -> str:
    """The `traceparent` header that makes `span` the parent ("" for a no-op span)."""
    if not span.get_span_context().is_valid:
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")
