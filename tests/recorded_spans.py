"""The spans this test process records, kept in memory: one SDK tracer provider per process (OpenTelemetry
lets the global provider be set once), each test reading only the spans it made."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter: InMemorySpanExporter | None = None


def recorded_spans() -> InMemorySpanExporter:
    """The process's in-memory exporter, emptied: set up on first use, as the process's global provider."""
    global _exporter
    if _exporter is None:
        provider = TracerProvider(resource=Resource.create({"service.name": "stillpoint-tests"}))
        trace.set_tracer_provider(provider)
        # Only if ours took: a provider set before (by another module) cannot be replaced.
        installed = trace.get_tracer_provider()
        assert isinstance(installed, TracerProvider), "another tracer provider was set in this process"
        _exporter = InMemorySpanExporter()
        installed.add_span_processor(SimpleSpanProcessor(_exporter))
    _exporter.clear()
    return _exporter
