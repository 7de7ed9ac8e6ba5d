"""Traces: the process's tracer provider, exporting over OTLP only when the standard OTEL_* variables ask for
it, and how a trace's context travels with a job through the work queue. No grpc here: the spans of gRPC
calls, and the context in their metadata, are services/rpc_tracing.py's.

Off by default: with none of the variables set the process keeps OpenTelemetry's no-op provider, so a span
costs a context switch and nothing is recorded or sent. Trace context is still propagated then (a caller's
`traceparent` passes through), which is what a sampled caller upstream expects.

Span attributes name this code's things (a stage, a provider, a meditation's resource name), never
conversation text, an owner, a key or a model-chosen string.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

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
