"""Tracing's configuration from the standard OTEL_* variables, and how a queued job's trace context is
continued by its first attempt and linked by later ones."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from services import tracing
from services.environment import ConfigError
from tests.recorded_spans import recorded_spans


@pytest.mark.parametrize(
    ("environment", "is_exported"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, True),
    ],
)
def test_traces_are_exported_only_when_the_standard_variables_ask(
    environment: dict[str, str], is_exported: bool
) -> None:
    assert tracing.read_tracing_settings(environment).is_exported is is_exported


def test_an_unsupported_exporter_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER=zipkin"):
        tracing.read_tracing_settings({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_tracing_off_installs_no_provider() -> None:
    before = trace.get_tracer_provider()
    with tracing.serving_traces(tracing.TRACING_OFF, "gateway"):
        assert trace.get_tracer_provider() is before


def test_the_first_attempt_continues_the_trace_that_queued_the_job() -> None:
    spans = recorded_spans()
    with tracing.TRACER.start_as_current_span("GenerateMeditation") as request:
        stored = tracing.current_trace_context()
    assert set(stored) >= {"traceparent"}
    origin = tracing.attempt_origin(stored, attempt=1)
    with tracing.TRACER.start_as_current_span("meditation.job", context=origin.parent, links=origin.links):
        pass
    job = next(span for span in spans.get_finished_spans() if span.name == "meditation.job")
    assert job.parent is not None
    assert job.parent.span_id == request.get_span_context().span_id
    assert job.context is not None
    assert job.context.trace_id == request.get_span_context().trace_id
    assert not job.links


def test_a_later_attempt_starts_its_own_trace_linked_to_the_stored_context() -> None:
    spans = recorded_spans()
    with tracing.TRACER.start_as_current_span("GenerateMeditation") as request:
        stored = tracing.current_trace_context()
    origin = tracing.attempt_origin(stored, attempt=2)
    # Whatever is current where the attempt starts is not its parent.
    with (
        tracing.TRACER.start_as_current_span("unrelated"),
        tracing.TRACER.start_as_current_span("meditation.job", context=origin.parent, links=origin.links),
    ):
        pass
    job = next(span for span in spans.get_finished_spans() if span.name == "meditation.job")
    assert job.parent is None
    assert [link.context.span_id for link in job.links] == [request.get_span_context().span_id]
    assert job.links[0].attributes == {tracing.ATTEMPT_ATTRIBUTE: 2}


def test_a_job_queued_without_a_trace_starts_one() -> None:
    origin = tracing.attempt_origin({}, attempt=3)
    assert not trace.get_current_span(origin.parent).get_span_context().is_valid
    assert origin.links == ()
