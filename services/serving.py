"""The one place a gRPC server is built: health, reflection, limits and a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import format_span_id, format_trace_id, get_current_span
from pythonjsonlogger.json import JsonFormatter

from services import rpc_metrics, rpc_tracing, rpc_wakeups, rpc_write_status, tracing
from services.environment import ConfigError
from services.log_context import current_meditation
from services.metrics import MetricsSettings
from services.rpc_handlers import Behaviour, with_behaviour
from services.tls import InternalTls, PublicTls

logger = logging.getLogger(__name__)

# Large enough for a long conversation in one request, small enough that no client can make a server buffer
# video-sized payloads: assets travel as storage keys.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# Both sides of every channel agree on these, so neither end reads the other's pings as abuse.
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
)

# After this long a server asks each client to open a new connection (an HTTP/2 GOAWAY; calls in flight
# finish on the old one, with no limit: no grace period is set). gRPC's DNS resolver looks a name up again
# only when a connection ends, so this is what lets a gateway's `dns:///media-headless` channel take a media
# replica that an autoscaler added, within minutes rather than at the gateway's next restart.
MAX_CONNECTION_AGE_SECONDS = 300.0

# How long the RPCs that the end of a grace period cut get to run their cleanup (`finally`: kill FFmpeg,
# remove scratch files, release a cache lock) before the process releases what they use and exits.
CLEANUP_SECONDS = 5.0

# The register of secrets, for every process: each variable named here is redacted from every log line of
# every process, whether or not that process uses it (a library may log its environment or a child's).
# A new secret variable is added here, and tests/test_serving.py fails until it is.
SECRET_VARIABLES: tuple[str, ...] = (
    "OPENAI_API_KEY",
    "SUPABASE_KEY",
    "SUPABASE_JWT_SECRET",
    "STILLPOINT_API_KEY",
    "STILLPOINT_PAGE_TOKEN_SECRET",
    "STILLPOINT_MEDIA_URL_SECRET",
)
# Variables holding a URL whose password (in its userinfo or a `password=` parameter) is a secret.
CREDENTIAL_URL_VARIABLES: tuple[str, ...] = ("DATABASE_URL", "REDIS_URL")

# Libraries whose DEBUG records carry user data: aiosqlite logs every statement with its parameters (a
# conversation's text), hpack every HTTP/2 header it encodes, websockets every frame it sends or receives (the
# script's sentences, on their way to the Realtime API). They log at INFO at most, at any level.
DATA_BEARING_LOGGERS: tuple[str, ...] = ("aiosqlite", "hpack", "websockets")

ServicerRegistrar = Callable[[grpc.aio.Server], None]
_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")


class InFlightRpcs(grpc.aio.ServerInterceptor):
    """Remembers the task of every RPC in flight. The server cancels the ones still running when the grace
    period ends, but does not wait for them: without this, their cleanup is cut short a second time when the
    event loop closes.

    A stream cut while the server is sending a response (not inside the servicer) leaves its generator
    suspended at a `yield`, its cleanup not run; the event loop would close it later in a task of its own
    that nothing waits for. Such a generator is closed here as soon as the RPC's task ends, in a task that
    is remembered with the others."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_TRequest, _TResponse] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_TRequest, _TResponse] | None:
        # Interceptors run in the RPC's own task, the one the server cancels.
        task = asyncio.current_task()
        if task is not None:
            self._remember(task)
        handler = await continuation(handler_call_details)
        if handler is None or not (handler.unary_stream or handler.stream_stream):
            return handler
        return with_behaviour(handler, self._closed_when_cut)

    def _remember(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _closed_when_cut(self, behaviour: Behaviour) -> Behaviour:
        if not inspect.isasyncgenfunction(behaviour):
            return behaviour  # writes its stream with `context.write`, inside the RPC's task

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            responses = behaviour(request, context)
            task = asyncio.current_task()
            if task is not None:
                task.add_done_callback(lambda _: self._close_if_suspended(responses))
            async for response in responses:
                yield response

        return streaming

    def _close_if_suspended(self, responses: types.AsyncGeneratorType[Any, None]) -> None:
        # Its task has ended, so nothing iterates it any more; a finished generator has no frame.
        if responses.ag_frame is not None:
            self._remember(asyncio.ensure_future(responses.aclose()))

    async def wait_for_cleanup(self, timeout_seconds: float) -> None:
        """Waits until every RPC task has ended (the cut ones have run their `finally`), or the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        # Again until none is left: a task that ends can leave another behind (a cut stream's closing).
        while tasks := self._tasks - {asyncio.current_task()}:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            if pending:
                logger.warning(
                    "%d RPCs still cleaning up after %g s; stopping anyway", len(pending), timeout_seconds
                )
                return


@dataclass
class RunningServer:
    """A started server, the port it bound and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service_names: tuple[str, ...]
    in_flight: InFlightRpcs = field(default_factory=InFlightRpcs)

    async def stop(self, grace_seconds: float) -> None:
        """Reports NOT_SERVING, lets in-flight RPCs finish for up to `grace_seconds`, then lets the ones it
        cut run their cleanup (up to CLEANUP_SECONDS) before returning."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)
        await self.in_flight.wait_for_cleanup(CLEANUP_SECONDS)


def internal_server_credentials(tls: InternalTls | None) -> grpc.ServerCredentials | None:
    """Mutual TLS for an internal service: its own certificate, and only clients with a certificate the
    internal CA signed (a stranger, with no certificate or another CA's, is refused during the handshake).
    Which of those certificates may call is `peer_identity`'s check, installed with these credentials.
    None without certificates: a plaintext port, for loopback-only development."""
    if tls is None:
        return None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.certificate_file.read_bytes())],
        root_certificates=tls.ca_file.read_bytes(),
        require_client_auth=True,
    )


def public_server_credentials(tls: PublicTls | None) -> grpc.ServerCredentials | None:
    """TLS for the gateway's public port (callers authenticate with bearer credentials, not certificates);
    None without a certificate."""
    if tls is None:
        return None
    return grpc.ssl_server_credentials([(tls.key_file.read_bytes(), tls.certificate_file.read_bytes())])


def internal_channel_credentials(tls: InternalTls) -> grpc.ChannelCredentials:
    """What a caller of an internal service presents (its certificate) and trusts (the internal CA only)."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes(),
        private_key=tls.key_file.read_bytes(),
        certificate_chain=tls.certificate_file.read_bytes(),
    )


def channel_options() -> list[tuple[str, int]]:
    """Options every client channel uses: the same message limits and keepalive as the servers."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        *KEEPALIVE_OPTIONS,
    ]


async def start_server(
    *,
    service_names: Sequence[str],
    register: ServicerRegistrar,
    address: str,
    maximum_concurrent_rpcs: int | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    max_connection_age_seconds: float = MAX_CONNECTION_AGE_SECONDS,
) -> RunningServer:
    """Builds, registers and starts a server on `address` (port 0 picks a free one) and marks it SERVING.
    `interceptors` run after the one that tracks RPCs in flight (the gateway's authentication); with
    `credentials` the port speaks TLS (see `internal_server_credentials`, `public_server_credentials`)."""
    in_flight = InFlightRpcs()
    server = grpc.aio.server(
        # Tracing outside the rest, so that a call they refuse is traced with its status too.
        interceptors=[in_flight, rpc_tracing.TracingServerInterceptor(), *interceptors],
        options=[
            *channel_options(),
            ("grpc.max_connection_age_ms", round(max_connection_age_seconds * 1000)),
        ],
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    # Reflection lists only the names it is given: include health and reflection so grpcurl sees them.
    reflection.enable_server_reflection((*service_names, health_name, reflection.SERVICE_NAME), server)
    port = (
        server.add_insecure_port(address)
        if credentials is None
        else server.add_secure_port(address, credentials)
    )
    if port == 0:
        raise OSError(f"could not bind {address}: is another process using the port?")
    await server.start()
    # The server made grpc.aio's completion queue: from now on its completions reach the loop as they come.
    rpc_wakeups.drain_wakeups(asyncio.get_running_loop())
    # Its clients' streaming calls (the gateway's NarrateLive) report the status their server sent.
    rpc_write_status.keep_server_status()
    for name in ("", *service_names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server=server, port=port, health=health, service_names=tuple(service_names), in_flight=in_flight
    )


async def serve_until_signalled(
    running: RunningServer,
    *,
    grace_seconds: float,
    on_stopping: Callable[[], Awaitable[None]] | None = None,
    on_stopped: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then stops gracefully: `on_stopping` first (take no new work),
    NOT_SERVING and a grace period for in-flight RPCs, then `on_stopped` to release resources."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    logger.info("serving %s on port %d", ", ".join(running.service_names), running.port)
    serving = asyncio.create_task(running.server.wait_for_termination())
    stopping = asyncio.create_task(stop_requested.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        logger.info("stopping: NOT_SERVING, %g s grace for in-flight RPCs", grace_seconds)
        if on_stopping is not None:
            await on_stopping()
        await running.stop(grace_seconds)
    finally:
        stopping.cancel()
        serving.cancel()
        if on_stopped is not None:
            await on_stopped()
        logger.info("stopped")


def run_service(
    service: str,
    main: Callable[[], Coroutine[Any, Any, None]],
    *,
    metrics: MetricsSettings,
    environment: Mapping[str, str],
) -> None:
    """Runs a service's `main` to its end, with its `/metrics` endpoint and its traces (as the standard
    OTEL_* variables in `environment` ask) set up first: gRPC measures and traces only the servers and
    channels made after. A configuration error found on the way ends the process naming the service."""
    try:
        traces = tracing.read_tracing_settings(environment)
        with rpc_metrics.serving_metrics(metrics), tracing.serving_traces(traces, service):
            asyncio.run(main())
    except ConfigError as error:
        sys.exit(f"{service}: configuration error: {error}")


def registered_secrets(environment: Mapping[str, str]) -> list[str]:
    """The values of every registered secret set in `environment` (the snapshot `__main__` reads), URL
    passwords both as written and percent-decoded, for `configure_logging`."""
    secrets = [environment.get(name, "").strip() for name in SECRET_VARIABLES]
    for name in CREDENTIAL_URL_VARIABLES:
        secrets += _url_passwords(environment.get(name, "").strip())
    return sorted({secret for secret in secrets if secret}, key=len, reverse=True)


def _url_passwords(url: str) -> list[str]:
    if not url:
        return []
    try:
        parts = urlsplit(url)
        passwords = [parts.password or ""]
    except ValueError:
        # Unparseable: the variable's reader rejects it at start-up, but never log it meanwhile.
        return [url]
    passwords += [value for key, value in parse_qsl(parts.query) if key.lower() == "password"]
    return [form for password in passwords if password for form in (password, unquote(password))]


class SecretRedactor(logging.Filter):
    """Replaces secrets in every log record, whoever logs it (our code, the SDKs, a traceback)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        # Formatters then write the (redacted) text: the JSON formatter would format exc_info afresh.
        record.exc_info = None
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, "***")
            if record.exc_text:
                record.exc_text = record.exc_text.replace(secret, "***")
            if record.stack_info:
                record.stack_info = record.stack_info.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class LogContext(logging.Filter):
    """Adds what a JSON log line carries besides the message: the process's service, the meditation the
    writing task works on, and the trace and span it writes in (each empty where there is none: outside a
    job, or with tracing off), so a collector can join a job's logs to its trace."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self._service
        record.meditation = current_meditation.get() or ""
        span = get_current_span().get_span_context()
        record.trace_id = format_trace_id(span.trace_id) if span.is_valid else ""
        record.span_id = format_span_id(span.span_id) if span.is_valid else ""
        return True


def json_log_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, service, logger, meditation, trace and span ids, message (and
    the traceback)."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(service)s %(name)s %(meditation)s %(trace_id)s %(span_id)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )


def configure_logging(
    level: str, *, secrets: Sequence[str] = (), log_format: str = "text", service: str = ""
) -> None:
    """Sets up one log format for every process: readable text, or with `log_format="json"` one JSON object
    per line for a log collector. `secrets` (pass `registered_secrets(os.environ)`) never reach the output,
    in either format."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(json_log_formatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # On the handler, not a logger: records from every logger pass through it. The redactor rewrites the
    # message and traceback before either formatter reads them.
    handler.addFilter(SecretRedactor(secrets))
    handler.addFilter(LogContext(service))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    for name in DATA_BEARING_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level.upper())))
