"""Starts the gateway: `python -m services.gateway`."""

from __future__ import annotations

import logging
import os
import sys

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from services import metrics, serving
from services.database import DatabaseNotReadyError, create_engine
from services.environment import ConfigError, Environment
from services.gateway.api_keys import ApiKeyStore
from services.gateway.authentication import LOCAL_OWNER, Authenticator, JwksKeys, SupabaseTokens
from services.gateway.backends import ContentClient, MediaClient, open_backend_channel
from services.gateway.config import AuthenticationConfig, GatewayConfig
from services.gateway.jobs import MeditationJobs, claim_timeout_seconds
from services.gateway.jobs.retention import MeditationRetention
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.work_queue import (
    InProcessWorkQueue,
    RedisStreamWorkQueue,
    WorkQueue,
    WorkQueueUnavailableError,
)
from services.gateway.migrate import HISTORY
from services.gateway.open_streams import OpenStreams
from services.gateway.pagination import PageTokens
from services.gateway.pipeline import MeditationPipeline
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from services.redis_connection import RedisUnavailableError, connect_redis, redact_redis_url
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc

logger = logging.getLogger(__name__)
SERVICE_NAME = gateway_pb.DESCRIPTOR.services_by_name["GatewayService"].full_name


async def main(config: GatewayConfig) -> None:
    """Opens the job database, serves, and closes it on the way out."""
    engine = create_engine(config.database_url, config.database_pool, application_name="stillpoint-gateway")
    metrics.watch_database_pool(engine)
    try:
        await HISTORY.ensure_migrated(engine, config.database_url)
        await serve(config, engine)
    except DatabaseNotReadyError as error:
        sys.exit(f"gateway: {error}")
    finally:
        await engine.dispose()


async def serve(config: GatewayConfig, engine: AsyncEngine) -> None:
    """Opens one channel per peer, the work queue and the JWKS client, serves, and closes them on the way
    out."""
    store = JobStore(engine)
    authenticator, jwks_client = make_authenticator(config.authentication, ApiKeyStore(engine))
    content_channel = open_backend_channel(config.content_address, "content", config.internal_tls)
    media_channel = open_backend_channel(config.media_address, "media", config.internal_tls)
    content = ContentClient(content_channel, config.timeouts)
    media = MediaClient(media_channel, config.timeouts)
    queue = await open_work_queue(config)
    logger.info("job queue: %s", queue.name)
    jobs = MeditationJobs(
        store,
        content,
        MeditationPipeline(content, media, config.timeouts),
        media=media,
        queue=queue,
        lease_seconds=config.job_lease_seconds,
        limits=config.job_limits,
    )

    if config.page_token_secret is None:
        logger.warning(
            "STILLPOINT_PAGE_TOKEN_SECRET is not set: page tokens are signed with a key of this process's "
            "own and work only on this replica until it restarts. Set the same secret on every replica."
        )
    page_tokens = PageTokens(config.page_token_secret)
    retention = make_retention(config, store, jobs)

    async def release() -> None:
        if retention is not None:
            await retention.stop()  # already stopped unless serving ended without on_stopping
        await jobs.close()
        await content_channel.close()
        await media_channel.close()
        if jwks_client is not None:
            await jwks_client.aclose()

    running = await serving.start_server(
        service_names=[SERVICE_NAME],
        register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(content, jobs, page_tokens, OpenStreams(config.max_streams_per_owner)), server
        ),
        address=f"0.0.0.0:{config.port}",
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        interceptors=[AuthenticationInterceptor(authenticator)],
        credentials=serving.public_server_credentials(config.public_tls),
    )

    async def stop_background_work() -> None:
        # Retention first: it deletes assets through the dispatcher, which stays open until release().
        if retention is not None:
            await retention.stop()
        await jobs.stop_janitor()

    # Carries on jobs a stopped or crashed gateway left behind, and keeps this one's leases fresh.
    jobs.start_janitor()
    if retention is not None:
        retention.start()
    await serving.serve_until_signalled(
        running, grace_seconds=config.grace_seconds, on_stopping=stop_background_work, on_stopped=release
    )


def make_retention(
    config: GatewayConfig, store: JobStore, jobs: MeditationJobs
) -> MeditationRetention | None:
    """The sweep that erases finished meditations past STILLPOINT_MEDITATION_RETENTION_DAYS; None (and
    said so) when they are kept forever."""
    if config.meditation_retention is None:
        logger.info("meditation retention: off (finished meditations are kept until deleted)")
        return None
    logger.info(
        "meditation retention: finished meditations are erased %d days after they finish",
        config.meditation_retention.days,
    )
    # Through the dispatcher: it is the one place that knows what a meditation stored.
    return MeditationRetention(store, jobs.dispatcher, config.meditation_retention)


def make_authenticator(
    config: AuthenticationConfig, api_keys: ApiKeyStore
) -> tuple[Authenticator, httpx.AsyncClient | None]:
    """API keys always; Supabase access tokens when SUPABASE_URL is set (with the HTTP client that fetches
    the project's JWKS, closed at shutdown)."""
    if config.is_disabled:
        logger.warning(
            "AUTHENTICATION IS DISABLED (STILLPOINT_AUTH=disabled): every caller is the owner %r and sees "
            "every conversation. Use this for local experiments only, never where anyone else can reach it.",
            LOCAL_OWNER,
        )
        return Authenticator(api_keys=None, is_disabled=True), None
    if config.supabase is None:
        return Authenticator(api_keys=api_keys), None
    jwks_client = httpx.AsyncClient() if config.supabase.is_jwks_used else None
    jwks = (
        JwksKeys(
            config.supabase.jwks_url,
            jwks_client,
            refetch_cooldown_seconds=config.supabase.jwks_refetch_cooldown_seconds,
        )
        if jwks_client is not None
        else None
    )
    return Authenticator(api_keys=api_keys, supabase=SupabaseTokens(config.supabase, jwks)), jwks_client


async def open_work_queue(config: GatewayConfig) -> WorkQueue:
    """The Redis stream every replica shares when REDIS_URL is set, else an in-process queue.

    Exits with a clear message, naming the host and never the password, when Redis does not answer.
    """
    claim_timeout = claim_timeout_seconds(config.job_lease_seconds)
    if config.redis_url is None:
        return InProcessWorkQueue(claim_timeout_seconds=claim_timeout)
    try:
        client = await connect_redis(config.redis_url)
        queue = RedisStreamWorkQueue(
            client, redact_redis_url(config.redis_url), claim_timeout_seconds=claim_timeout
        )
        await queue.ensure_group()
    except (RedisUnavailableError, WorkQueueUnavailableError) as error:
        sys.exit(f"gateway: the job queue is unavailable: {error}")
    return queue


def run() -> None:
    """Reads the configuration once and runs the service."""
    try:
        config = GatewayConfig.from_environment(Environment(os.environ))
    except ConfigError as error:
        sys.exit(f"gateway: configuration error: {error}")
    # Every registered secret, the legacy JWT secret (it signs every user's token) among them.
    serving.configure_logging(
        config.log_level,
        secrets=serving.registered_secrets(os.environ),
        log_format=config.log_format,
        service="gateway",
    )
    # OTEL_* are the SDK's own variables, read with the rest; nothing is traced unless they ask.
    serving.run_service("gateway", lambda: main(config), metrics=config.metrics, environment=os.environ)


if __name__ == "__main__":
    run()
