"""OpenTelemetry traces, for users who install it: a Run's span in the API process, its task's span
in whichever worker runs it (a child of the Run's: the trace context travels in the task's work
order, across processes and machines), and the engine's span inside that.

Nothing here needs OpenTelemetry: without ``opentelemetry-api`` every call is free and returns
None. With the SDK and the OTLP exporter installed (``pip install opentelemetry-sdk
opentelemetry-exporter-otlp-proto-http``, the ``otel`` extra), setting
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_TRACES_EXPORTER=otlp``/``console``) makes every fluxhost
process export its spans; an SDK configured otherwise (``opentelemetry-instrument``, a test's
in-memory exporter) is used as it is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the optional dependency is not installed
    propagate = trace = None

log = logging.getLogger(__name__)
TRACER = "fluxhost"


def configure() -> None:
    """Export this process's spans where the standard OTEL_* variables say, if the SDK and the
    exporter are installed and no tracer provider was set up already."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp" if os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") else "none")
    if trace is None or exporter_name == "none":
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        if exporter_name == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
    except ImportError as error:
        log.warning("traces are not exported: %s (pip install opentelemetry-sdk "
                    "opentelemetry-exporter-otlp-proto-http)", error)
        return
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # configured already (opentelemetry-instrument, or the host application)
    service = os.environ.get("OTEL_SERVICE_NAME", "fluxhost")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


@contextmanager
def current_span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span around the block, the current one inside it (None without OpenTelemetry)."""
    if trace is None:
        yield None
        return
    with trace.get_tracer(TRACER).start_as_current_span(name, attributes=attributes) as span:
        yield span


def context_carrier() -> dict[str, str]:
    """The current trace context as text (W3C ``traceparent``), to travel with a task; empty
    without OpenTelemetry or outside any span."""
    carrier: dict[str, str] = {}
    if propagate is not None:
        propagate.inject(carrier)
    return carrier


def start_span(name: str, *, carrier: Mapping[str, str] | None = None, parent: Any = None,
               links: tuple[Any, ...] = (), **attributes: Any) -> Any:
    """A span started under the context a carrier brought, or under ``parent`` (a span), linked
    to ``links`` (spans); None without OpenTelemetry. End it with :func:`end_span`."""
    if trace is None:
        return None
    if parent is not None:
        context = trace.set_span_in_context(parent)
    else:
        context = propagate.extract(dict(carrier or {}))
    return trace.get_tracer(TRACER).start_span(
        name, context=context, attributes=attributes,
        links=[trace.Link(span.get_span_context()) for span in links if span is not None],
    )


def end_span(span: Any, **attributes: Any) -> None:
    if span is not None:
        span.set_attributes(attributes)
        span.end()
