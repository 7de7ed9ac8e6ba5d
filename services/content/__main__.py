"""Starts the content service: `python -m services.content`."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from services import metrics, serving
from services.cache.base import ResultCache
from services.cache.factory import CacheFactory, open_result_caches
from services.content.config import ContentConfig
from services.content.generation import (
    ImageGenerator,
    OfflineImageProvider,
    OfflineTranscriptProvider,
    TranscriptGenerator,
)
from services.content.image_decoding import enforce_decoding_limits
from services.content.migrate import HISTORY
from services.content.pregeneration import pregenerate_off_peak, read_prompt_list
from services.content.repository import ContentRepository
from services.content.servicer import ContentServicer
from services.database import DatabaseNotReadyError, create_engine
from services.environment import ConfigError, Environment
from services.image_sizes import LANDSCAPE_SIZE_PIXELS
from services.openai_api import check_models, make_client
from services.peer_identity import PeerIdentityInterceptor
from services.provider_status import ProviderReport
from services.redis_connection import RedisUnavailableError
from services.storage.base import AssetStorage
from services.storage.factory import open_asset_storage
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.content.v2 import content_service_pb2_grpc as content_grpc

if TYPE_CHECKING:
    import openai

SERVICE_NAME = content_pb.DESCRIPTOR.services_by_name["ContentService"].full_name
# How much lower than the service the painter processes run (nice(2) increments; 19 is the lowest).
_PAINTER_NICENESS = 10
logger = logging.getLogger("services.content")
# How long terminated painters get to exit before they are killed.
_PAINTER_TERMINATE_SECONDS = 2.0


def build_generators(
    config: ContentConfig,
    client: openai.AsyncOpenAI | None,
    painters: Executor,
    storage: AssetStorage,
    transcript_cache: ResultCache,
    image_cache: ResultCache,
) -> tuple[TranscriptGenerator, ImageGenerator, list[ProviderReport]]:
    """Wires the configured providers, each behind its cache, with the offline ones as fallbacks."""
    offline_transcripts = TranscriptGenerator(
        OfflineTranscriptProvider(), transcript_cache, crisis_resource_text=config.crisis_resource_text
    )
    offline_images = ImageGenerator(OfflineImageProvider(painters), image_cache, storage)
    transcripts, images = offline_transcripts, offline_images
    reports = [ProviderReport("transcript", "offline"), ProviderReport("image", "offline")]
    fallback = config.fallback_to_offline
    # Providers get four fifths of their stage's budget, retries included, leaving time for the fallback.
    budget = 0.8
    # One cache per capability serves both providers: their keys differ by provider and model.
    # The OpenAI providers (and the SDK under them) are imported only when configured: see openai_api.
    if config.transcript_provider == "openai" and client is not None:
        from services.content.openai_providers import OpenAITranscriptProvider

        transcripts = TranscriptGenerator(
            OpenAITranscriptProvider(
                client,
                config.transcript_model,
                budget * config.transcript_timeout_seconds,
                max_output_tokens=config.transcript_max_output_tokens,
            ),
            transcript_cache,
            fallback=offline_transcripts if fallback else None,
            crisis_resource_text=config.crisis_resource_text,
        )
        reports[0] = ProviderReport("transcript", "openai", config.transcript_model.name, fallback)
    if config.image_provider == "openai" and client is not None:
        from services.content.openai_providers import OpenAIImageProvider

        provider = OpenAIImageProvider(
            client,
            config.image_model,
            landscape_size=config.image_size_landscape,
            square_size=config.image_size_square,
            timeout_seconds=budget * config.image_timeout_seconds,
            download_policy=config.image_download,
        )
        images = ImageGenerator(provider, image_cache, storage, fallback=offline_images if fallback else None)
        reports[1] = ProviderReport("image", "openai", config.image_model.name, fallback)
    return transcripts, images, reports


async def main(config: ContentConfig) -> None:
    """Makes the process's engine, client, store, caches and worker pool once, serves, and releases them."""
    engine = create_engine(config.database_url, config.database_pool, application_name="stillpoint-content")
    metrics.watch_database_pool(engine)
    try:
        await HISTORY.ensure_migrated(engine, config.database_url)
        caches = open_result_caches(
            config.redis_url,
            ttl_seconds=config.cache_ttl_seconds,
            lock_timeout_seconds=config.cache_lock_timeout_seconds,
        )
        async with open_asset_storage(config.storage) as storage, caches as make_cache:
            repository = ContentRepository(engine, config.conversation_limits)
            await serve(config, repository, storage, make_cache)
    except (DatabaseNotReadyError, RedisUnavailableError) as error:
        sys.exit(f"content: {error}")
    finally:
        await engine.dispose()


async def serve(
    config: ContentConfig, repository: ContentRepository, storage: AssetStorage, make_cache: CacheFactory
) -> None:
    """Builds the generators and serves until SIGTERM."""
    client = make_client(config.openai) if config.openai is not None else None
    painters = start_painters(config.painter_workers)
    caches = [make_cache("transcripts"), make_cache("images")]
    transcripts, images, reports = build_generators(config, client, painters, storage, *caches)
    if client is not None:
        # Warn at start-up, in the log and through GetProviderStatus, about models missing or retiring soon.
        models = {"transcript": config.transcript_model, "image": config.image_model}
        for report in reports:
            if report.provider == "openai":
                report.warnings = await check_models(client, [models[report.capability]])
    prompts = read_prompt_list(config.pregenerate_prompts_file)
    servicer = ContentServicer(
        repository, transcripts, images, reports, caches=caches, pregenerate_prompts=prompts
    )
    nightly: asyncio.Task[None] | None = None
    if config.pregenerate_hour_utc is not None:
        nightly = asyncio.create_task(
            pregenerate_off_peak(
                images, prompts, hour_utc=config.pregenerate_hour_utc, sizes=[LANDSCAPE_SIZE_PIXELS]
            )
        )

    async def release() -> None:
        if nightly is not None:
            nightly.cancel()
        await asyncio.to_thread(stop_painters, painters)
        if client is not None:
            await client.close()

    running = await serving.start_server(
        service_names=[SERVICE_NAME],
        register=lambda server: content_grpc.add_ContentServiceServicer_to_server(servicer, server),
        address=f"{config.bind_host}:{config.port}",
        credentials=serving.internal_server_credentials(config.internal_tls),
        # Past the handshake (any certificate the internal CA signed), only the allowed callers' certificates
        # reach a handler. Without TLS the port is plaintext on loopback, with no certificate to check.
        interceptors=[PeerIdentityInterceptor(config.internal_callers)] if config.internal_tls else [],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    await serving.serve_until_signalled(running, grace_seconds=config.grace_seconds, on_stopped=release)


def start_painters(workers: int) -> ProcessPoolExecutor:
    """The pool that paints offline images."""
    # Painting is CPU-bound Python: a spawned worker keeps it off the event loop, and spawn (never fork)
    # keeps gRPC's threads out of the child. It is background work next to what makes a job's first
    # playable media (its first sentence, spoken and encoded): at a lower priority it takes the cores
    # those leave idle, not the ones they need.
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=os.nice,
        initargs=(_PAINTER_NICENESS,),
    )


def stop_painters(painters: ProcessPoolExecutor) -> None:
    """Stops the painter processes now. Past the grace period no caller waits for a painting, and a
    niced painter under load can take longer than the grace period: without this, the interpreter's exit
    would wait for it (the pool joins its workers at exit) and outlast the orchestrator's patience."""
    # Python 3.14 has ProcessPoolExecutor.terminate_workers(); until then, the pool's own process table.
    workers = dict(getattr(painters, "_processes", None) or {})
    painters.shutdown(wait=False, cancel_futures=True)
    for process in workers.values():
        if process.is_alive():
            process.terminate()
    # SIGTERM can be ignored (a disposition inherited from whoever started the service is kept across exec);
    # SIGKILL cannot, so a painter that outlives a short wait goes that way.
    deadline = time.monotonic() + _PAINTER_TERMINATE_SECONDS
    for process in workers.values():
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()


def run() -> None:
    """Reads the configuration once and runs the service."""
    environment = Environment(os.environ)
    try:
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        config = ContentConfig.from_environment(environment, var_root=var_root)
    except ConfigError as error:
        sys.exit(f"content: configuration error: {error}")
    # Every registered secret, used here or not: see serving.SECRET_VARIABLES.
    serving.configure_logging(
        config.log_level,
        secrets=serving.registered_secrets(os.environ),
        log_format=config.log_format,
        service="content",
    )
    # Before any thread starts: every image decoded in this process is held to the pixel budget.
    enforce_decoding_limits()
    logger.info(
        "providers: transcript=%s image=%s; storage=%s; cache=%s",
        config.transcript_provider,
        config.image_provider,
        config.storage.kind,
        "redis" if config.redis_url else "in-process",
    )
    # OTEL_* are the SDK's own variables, read with the rest; nothing is traced unless they ask.
    serving.run_service("content", lambda: main(config), metrics=config.metrics, environment=os.environ)


if __name__ == "__main__":
    run()
