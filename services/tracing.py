"""Traces: the process's tracer provider, exporting over OTLP only when the standard OTEL_* variables ask for
it, and how a trace's context travels: with a job through the work queue, and in gRPC calls' metadata.

Off by default: with none of the variables set the process keeps OpenTelemetry's no-op provider, so a span
costs a context switch and nothing is recorded or sent. Trace context is still propagated then (a caller's
`traceparent` passes through), which is what a sampled caller upstream expects.

Span attributes name this code's things (a stage, a provider, a meditation's resource name), never
conversation text, an owner, a key or a model-chosen string.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import StatusCode

from services.environment import ConfigError
from services.openai_api import ProviderCallError

logger = logging.getLogger(__name__)

# One tracer for the whole project: a proxy until a provider is set, so modules may take it at import.
TRACER = trace.get_tracer("stillpoint")

# The attribute that names the job a span belongs to (its resource name, `meditations/...`).
MEDITATION_ATTRIBUTE = "stillpoint.meditation"
# Which attempt at a job a span belongs to: 1 the first time, more after a failure or a takeover.
ATTEMPT_ATTRIBUTE = "stillpoint.attempt"
# Why a stage or a job failed: a FailureKind value (bounded, client-facing), never the message.
FAILURE_KIND_ATTRIBUTE = "stillpoint.failure_kind"

_EXPORTERS = ("otlp", "none")


@dataclass(frozen=True)
class TracingSettings:
    """Whether the process records spans and exports them over OTLP/HTTP."""

    is_exported: bool


TRACING_OFF = TracingSettings(is_exported=False)


def read_tracing_settings(environment: Mapping[str, str]) -> TracingSettings:
    """The standard variables, read once: OTEL_SDK_DISABLED=true turns everything off; OTEL_TRACES_EXPORTER
    (otlp or none) decides when set; otherwise an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) turns export on. The exporter reads the rest itself (headers,
    timeout, protocol details)."""
    if environment.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TRACING_OFF
    exporter = environment.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        if exporter not in _EXPORTERS:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={exporter}: Stillpoint exports traces over OTLP only; use otlp or none"
            )
        return TracingSettings(is_exported=exporter == "otlp")
    is_endpoint_set = any(
        environment.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    return TracingSettings(is_exported=is_endpoint_set)


@contextlib.contextmanager
def serving_traces(settings: TracingSettings, service: str) -> Iterator[None]:
    """Installs the process's tracer provider (service.name `stillpoint-<service>`) for the life of the
    block and flushes its last spans on the way out; does nothing when tracing is off. Enter it before the
    process makes any gRPC server or channel, as with metrics."""
    if not settings.is_exported:
        yield
        return
    # Imported here: a process that does not export never loads the exporter and its HTTP stack.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": f"stillpoint-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    logger.info("traces: exported over OTLP/HTTP as stillpoint-%s", service)
    try:
        yield
    finally:
        provider.shutdown()


@contextlib.contextmanager
def provider_call(provider: str, capability: str) -> Iterator[None]:
    """A span over one call of a provider (`provider.<capability>`: transcript, image, speech), naming the
    provider; ERROR with the failure's kind when it raises ProviderCallError (its message may quote the
    provider, so it stays out). Other exceptions (a cancellation, a bug) are not the provider's outcome."""
    with TRACER.start_as_current_span(
        f"provider.{capability}",
        kind=trace.SpanKind.CLIENT,
        attributes={"stillpoint.provider": provider},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except ProviderCallError as error:
            kind = "rate_limited" if error.is_rate_limited else error.kind.value
            span.set_attribute(FAILURE_KIND_ATTRIBUTE, kind)
            span.set_status(StatusCode.ERROR, kind)
            raise


def current_trace_context() -> dict[str, str]:
    """The current span's context as W3C headers (traceparent, tracestate), to store with a queued job;
    empty when there is no valid span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@dataclass(frozen=True)
class AttemptOrigin:
    """Where a job attempt's span starts: under the span in `parent` (an empty context: a new trace),
    linked to `links`."""

    parent: otel_context.Context
    links: tuple[trace.Link, ...]


def attempt_origin(stored: Mapping[str, str], attempt: int, *, has_run_before: bool = False) -> AttemptOrigin:
    """The first attempt continues the trace that queued the job (the GenerateMeditation call): the caller
    is still waiting on it and it is the work that call asked for. A later attempt (after a failure, or taken
    over from a replica that stopped; `has_run_before` also catches a job handed back at a shutdown, whose
    delivery count is wound back to 1) starts its own trace linked to that context: the call's span ended
    long ago, and a child hours after its parent's end would stretch that trace and land after a sampler
    already decided it. The link keeps the way back to the request; the meditation attribute finds every
    attempt of one job."""
    stored_context = propagate.extract(dict(stored))
    stored_span = trace.get_current_span(stored_context).get_span_context()
    if not stored_span.is_valid:
        return AttemptOrigin(parent=otel_context.Context(), links=())
    if attempt <= 1 and not has_run_before:
        return AttemptOrigin(parent=stored_context, links=())
    return AttemptOrigin(
        parent=otel_context.Context(), links=(trace.Link(stored_span, {ATTEMPT_ATTRIBUTE: attempt}),)
    )


# ---- across gRPC calls ----------------------------------------------------------------------------------
# Our own two small interceptors rather than opentelemetry-instrumentation-grpc: its aio server interceptor
# (0.66b2) records a handler's unhandled exception as OK, and it would be a dependency for ~100 lines. Ours
# read the status a handler ends with (an abort, an exception, or the code it set) and work for both handler
# forms (coroutines and async generators), as services/peer_identity.py does.


def _split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _rpc_attributes(method: str) -> dict[str, str]:
    service, name = _split_method(method)
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _end_with_status(span: trace.Span, code: grpc.StatusCode | None) -> None:
    """Records the call's gRPC status on `span` (ERROR for anything but OK) and ends it."""
    status = code or grpc.StatusCode.OK
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    if status is not grpc.StatusCode.OK:
        span.set_status(StatusCode.ERROR, status.name)
    span.end()


class TracingServerInterceptor(grpc.aio.ServerInterceptor):
    """A SERVER span per call (named `<package.Service>/<Method>`), continuing the caller's trace from the
    call's metadata, current while the handler runs; ERROR unless the call ends OK."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith("/grpc."):
            # Health checks and reflection: probes every few seconds, not part of any job.
            return handler
        method = handler_call_details.method
        shapes = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }
        for shape, make in shapes.items():
            behaviour = getattr(handler, shape)
            if behaviour is not None:
                traced: grpc.RpcMethodHandler[Any, Any] = make(
                    _traced_behaviour(method, behaviour),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
                return traced
        return handler


def _start_server_span(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> trace.Span:
    carrier = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
    return TRACER.start_span(
        method.lstrip("/"),
        context=propagate.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes=_rpc_attributes(method),
    )


def _ended_code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> grpc.StatusCode:
    """The status the call ends with: the one an abort or the handler set, else UNKNOWN for an unhandled
    exception (what gRPC sends), CANCELLED for a cancelled call, OK otherwise."""
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def _traced_behaviour(method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            span = _start_server_span(method, context)
            error: BaseException | None = None
            try:
                with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                    # Closed with this generator, so a cut stream's cleanup runs inside the span, now.
                    async with contextlib.aclosing(behaviour(request, context)) as responses:
                        async for response in responses:
                            yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                _end_with_status(span, _ended_code(context, error))

        return streaming

    async def answering(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        span = _start_server_span(method, context)
        error: BaseException | None = None
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                return await behaviour(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            _end_with_status(span, _ended_code(context, error))

    return answering


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """What a channel needs for its calls to be traced: a CLIENT span per call from the current context, its
    own context sent in the call's metadata (W3C traceparent) for the server to continue; the span ends when
    the call does, ERROR unless the call ends OK. Two objects, one per call shape: a channel files each
    interceptor under the first shape it implements only. The gateway's calls to content and media are
    unary, server-streaming, or (live narration) bidirectional."""
    return [
        _TracingUnaryUnaryInterceptor(),
        _TracingUnaryStreamInterceptor(),
        _TracingStreamStreamInterceptor(),
    ]


class _TracingUnaryUnaryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        span, details = _start_client_span(client_call_details)
        return _finish_when_done(span, await continuation(details, request))


class _TracingUnaryStreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        span, details = _start_client_span(client_call_details)
        return _finish_when_done(span, await continuation(details, request))


class _TracingStreamStreamInterceptor(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        span, details = _start_client_span(client_call_details)
        return _finish_when_done(span, await continuation(details, request_iterator))


def _start_client_span(details: grpc.aio.ClientCallDetails) -> tuple[trace.Span, grpc.aio.ClientCallDetails]:
    method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
    span = TRACER.start_span(
        method.lstrip("/"), kind=trace.SpanKind.CLIENT, attributes=_rpc_attributes(method)
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *carrier.items())
    return span, grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def _finish_when_done(span: trace.Span, call: Any) -> Any:
    if not span.is_recording():
        # Tracing is off (the no-op provider): nothing to end later, so no task per call.
        return call

    async def finish(done: Any) -> None:
        try:
            code = await done.code()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
        _end_with_status(span, code)

    def on_done(done: Any) -> None:
        # aio reads a finished call's status with a coroutine; it is ready, so this task ends at once.
        task = asyncio.get_running_loop().create_task(finish(done))
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)

    call.add_done_callback(on_done)
    return call


# Strong references to the tasks that end client spans, so that none is collected before it runs.
_finishing: set[asyncio.Task[None]] = set()
