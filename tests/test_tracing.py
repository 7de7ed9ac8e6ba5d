"""Tracing's configuration from the standard OTEL_* variables, how a queued job's trace context is continued
by its first attempt and linked by later ones, and the status a traced gRPC call's spans end with."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services import rpc_tracing, serving, tracing
from services.environment import ConfigError
from services.openai_api import ProviderCallError, ProviderFailureKind
from tests.recorded_spans import recorded_spans
from tests.waiting import wait_until


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


def test_a_failed_provider_call_is_an_error_span_naming_the_failure_kind_only() -> None:
    spans = recorded_spans()
    with (
        pytest.raises(ProviderCallError),
        tracing.provider_call("openai", "image"),
    ):
        raise ProviderCallError(ProviderFailureKind.UNAVAILABLE, "the server said: secret detail")
    [span] = [span for span in spans.get_finished_spans() if span.name == "provider.image"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == ProviderFailureKind.UNAVAILABLE.value
    assert dict(span.attributes or {}) == {
        "stillpoint.provider": "openai",
        tracing.FAILURE_KIND_ATTRIBUTE: ProviderFailureKind.UNAVAILABLE.value,
    }


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


def test_a_job_handed_back_at_a_shutdown_is_linked_though_its_count_was_wound_back() -> None:
    recorded_spans()  # a recording provider, so that the request's context is a valid one
    with tracing.TRACER.start_as_current_span("GenerateMeditation") as request:
        stored = tracing.current_trace_context()
    origin = tracing.attempt_origin(stored, attempt=1, has_run_before=True)
    assert not trace.get_current_span(origin.parent).get_span_context().is_valid
    assert [link.context.span_id for link in origin.links] == [request.get_span_context().span_id]


def test_a_job_queued_without_a_trace_starts_one() -> None:
    origin = tracing.attempt_origin({}, attempt=3)
    assert not trace.get_current_span(origin.parent).get_span_context().is_valid
    assert origin.links == ()


# ---- the server interceptor, through a real server ------------------------------------------------------
_ECHO = "stillpoint.test.Echo"


async def _answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    if request == b"abort":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused")
    if request == b"raise":
        raise RuntimeError("a bug")
    return request


async def _stream(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
    yield b"first"
    if request == b"raise":
        raise RuntimeError("a bug mid-stream")
    yield b"last"


def _register_echo(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                _ECHO,
                {
                    "Answer": grpc.unary_unary_rpc_method_handler(_answer),
                    "Stream": grpc.unary_stream_rpc_method_handler(_stream),
                },
            ),
        )
    )


@pytest.fixture
async def echo_channel() -> AsyncIterator[grpc.aio.Channel]:
    running = await serving.start_server(
        service_names=[_ECHO], register=_register_echo, address="127.0.0.1:0"
    )
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{running.port}", interceptors=rpc_tracing.client_interceptors()
    ) as channel:
        yield channel
    await running.stop(0)


def _both_ended(spans: InMemorySpanExporter, name: str) -> bool:
    return all(_spans_named(spans, name, kind) for kind in (SpanKind.CLIENT, SpanKind.SERVER))


def _spans_named(spans: InMemorySpanExporter, name: str, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name and span.kind is kind]


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"fine", grpc.StatusCode.OK),
        (b"abort", grpc.StatusCode.FAILED_PRECONDITION),
        (b"raise", grpc.StatusCode.UNKNOWN),
    ],
)
async def test_a_server_span_ends_with_the_status_the_call_ends_with(
    echo_channel: grpc.aio.Channel, request_bytes: bytes, expected: grpc.StatusCode
) -> None:
    spans = recorded_spans()
    answer: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = echo_channel.unary_unary(f"/{_ECHO}/Answer")
    with tracing.TRACER.start_as_current_span("caller") as caller:
        try:
            await answer(request_bytes)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
    assert code is expected
    name = f"{_ECHO}/Answer"
    # The client may hear the status before the server's handler has finished unwinding.
    await wait_until(lambda: _both_ended(spans, name), what="the client and server spans")
    [served] = _spans_named(spans, name, SpanKind.SERVER)
    [client] = _spans_named(spans, name, SpanKind.CLIENT)
    for span in (served, client):
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == expected.value[0]
        is_error = span.status.status_code is StatusCode.ERROR
        assert is_error is (expected is not grpc.StatusCode.OK)
    assert served.parent is not None and client.context is not None
    assert served.parent.span_id == client.context.span_id
    assert client.parent is not None
    assert client.parent.span_id == caller.get_span_context().span_id


async def test_a_stream_that_fails_midway_ends_its_server_span_in_error(
    echo_channel: grpc.aio.Channel,
) -> None:
    spans = recorded_spans()
    stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = echo_channel.unary_stream(f"/{_ECHO}/Stream")
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in stream(b"raise"):
            pass
    name = f"{_ECHO}/Stream"
    # The client may hear the status before the server's handler has finished unwinding.
    await wait_until(lambda: _both_ended(spans, name), what="the client and server spans")
    [served] = _spans_named(spans, name, SpanKind.SERVER)
    assert served.status.status_code is StatusCode.ERROR
    assert served.attributes is not None
    assert served.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]


def test_export_on_installs_a_provider_named_for_the_service() -> None:
    """In a process of its own: the global provider can be set once per process, and this one exports."""
    program = (
        "from opentelemetry import trace\n"
        "from services import tracing\n"
        "with tracing.serving_traces(tracing.TracingSettings(is_exported=True), 'media'):\n"
        "    print(trace.get_tracer_provider().resource.attributes['service.name'])\n"
    )
    # An endpoint nobody listens on: no span is made, so nothing is sent and shutdown is immediate.
    environment = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    finished = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=True,
    )
    assert finished.stdout.strip() == "stillpoint-media"
