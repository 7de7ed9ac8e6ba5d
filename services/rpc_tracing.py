"""Traces of gRPC calls: a SERVER span per call an internal or public server answers (continuing the
caller's trace from its metadata) and a CLIENT span per call a channel makes (sending its context on).
Transport only: the spans of jobs, stages and provider calls are services/tracing.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import StatusCode

from services.rpc_handlers import with_behaviour
from services.tracing import TRACER

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
        return with_behaviour(handler, lambda behaviour: _traced_behaviour(method, behaviour))


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
