"""The process's `/metrics` endpoint and gRPC's own per-method metrics (grpcio-observability, the gRPC team's
OpenTelemetry plugin, exported into prometheus-client's registry next to the domain metrics of
services/metrics.py, so one scrape shows both). Transport only: domain code records through
services/metrics.py, which imports no grpc.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import grpc_observability
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import start_http_server

from services.environment import ConfigError
from services.metrics import DURATION_BUCKETS_SECONDS, MetricsSettings

logger = logging.getLogger(__name__)


_grpc_plugin: grpc_observability.OpenTelemetryPlugin | None = None


def _grpc_metrics_plugin() -> grpc_observability.OpenTelemetryPlugin:
    """gRPC's OpenTelemetry plugin, made once per process: its reader registers itself with
    prometheus-client's default registry (the one the endpoint serves), which takes it only once."""
    global _grpc_plugin
    if _grpc_plugin is None:
        durations = ExplicitBucketHistogramAggregation(boundaries=DURATION_BUCKETS_SECONDS)
        provider = MeterProvider(
            metric_readers=[PrometheusMetricReader()],
            # grpc.server.call.duration, grpc.client.attempt.duration, grpc.client.call.duration: seconds.
            views=[View(instrument_name="grpc.*.duration", aggregation=durations)],
        )
        _grpc_plugin = grpc_observability.OpenTelemetryPlugin(meter_provider=provider)
    return _grpc_plugin


@contextlib.contextmanager
def instrumented_grpc() -> Iterator[None]:
    """Every gRPC server and channel created in the block records per-method metrics (earlier ones stay
    unmeasured). Deregistered on the way out: a registered plugin keeps the interpreter from exiting."""
    plugin = _grpc_metrics_plugin()
    plugin.register_global()
    try:
        yield
    finally:
        plugin.deregister_global()


@contextlib.contextmanager
def serving_metrics(settings: MetricsSettings) -> Iterator[int | None]:
    """Serves `/metrics` (and instruments gRPC) for the life of the block; yields the port bound, or None
    when metrics are off. Enter it before the process makes any gRPC server or channel."""
    if not settings.is_enabled:
        yield None
        return
    try:
        server, thread = start_http_server(settings.port, addr=settings.bind_host)
    except OSError as error:
        raise ConfigError(
            f"STILLPOINT_METRICS_PORT={settings.port}: cannot listen on {settings.bind_host}:{settings.port} "
            f"({error.strerror})"
        ) from None
    port = int(server.server_address[1])
    logger.info("metrics: http://%s:%d/metrics", settings.bind_host, port)
    try:
        with instrumented_grpc():
            yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
