"""OpenTelemetry traces: a Run's span in the API, its task's span in the worker as the Run's
child (the context travels in the stored work order, not in the thread), the engine's inside."""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fluxhost import tracing
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, LiveServer, ProtocolClient


@pytest.fixture(scope="module")
def spans():
    """Spans recorded in memory (a process sets its tracer provider once: this module's)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()  # nothing recorded for the modules after this one


def test_a_tasks_spans_form_one_trace_from_run_to_engine(make_settings, spans):
    with LiveServer(make_settings(engine="bench", steps=3)) as live:
        client = ProtocolClient(live.base_url, live.service.keys.create(KeyMode.SIGNATURE))
        taskid = int(client.run(seed="5")["taskid"])
        assert client.wait(str(taskid))["pexit"] == "0"
        stored = live.service.tasks.get(taskid).order.trace
    assert stored["traceparent"].startswith("00-")

    finished = {span.name: span for span in spans.get_finished_spans()
                if span.attributes.get("fluxhost.task_id") == taskid or span.name == "fluxhost.engine"}
    run, task, engine = finished["fluxhost.run"], finished["fluxhost.task"], finished["fluxhost.engine"]
    assert run.attributes["fluxhost.model"] == SLUG
    assert task.context.trace_id == run.context.trace_id == engine.context.trace_id
    assert task.parent.span_id == run.context.span_id
    assert engine.parent.span_id == task.context.span_id
    assert engine.attributes["fluxhost.batch_size"] == 1
    assert run.start_time <= task.start_time <= engine.start_time <= engine.end_time <= task.end_time


def test_no_context_travels_outside_a_span_and_nothing_is_exported_unless_asked(monkeypatch):
    assert tracing.context_carrier() == {}
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    before = trace.get_tracer_provider()
    tracing.configure()
    assert trace.get_tracer_provider() is before
