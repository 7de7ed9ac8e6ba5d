"""Starts the content service: `python -m services.content`."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from services import serving
from services.cache import InProcessCache
from services.content.config import ContentConfig
from services.content.generation import (
    ImageGenerator,
    OfflineImageProvider,
    OfflineTranscriptProvider,
    TranscriptGenerator,
)
from services.content.repository import ContentRepository, create_engine, create_schema
from services.content.servicer import ContentServicer
from services.environment import ConfigError, Environment
from services.storage import LocalAssetStorage
from stillpoint.content.v1 import content_service_pb2 as content_pb
from stillpoint.content.v1 import content_service_pb2_grpc as content_grpc

SERVICE_NAME = content_pb.DESCRIPTOR.services_by_name["ContentService"].full_name


async def main(config: ContentConfig) -> None:
    """Makes the process's engine, caches and worker pool once, serves, and releases them on the way out."""
    engine = create_engine(config.database_url)
    await create_schema(engine)
    # Painting is CPU-bound Python: a spawned worker keeps it off the event loop, and spawn (never fork)
    # keeps gRPC's threads out of the child.
    painters = ProcessPoolExecutor(config.painter_workers, mp_context=multiprocessing.get_context("spawn"))
    storage = LocalAssetStorage(config.storage_root)
    servicer = ContentServicer(
        repository=ContentRepository(engine),
        transcripts=TranscriptGenerator(
            OfflineTranscriptProvider(), InProcessCache(ttl_seconds=config.cache_ttl_seconds)
        ),
        images=ImageGenerator(
            OfflineImageProvider(painters), InProcessCache(ttl_seconds=config.cache_ttl_seconds), storage
        ),
    )

    async def release() -> None:
        painters.shutdown(wait=False, cancel_futures=True)
        await engine.dispose()

    running = await serving.start_server(
        service_names=[SERVICE_NAME],
        register=lambda server: content_grpc.add_ContentServiceServicer_to_server(servicer, server),
        address=f"0.0.0.0:{config.port}",
    )
    await serving.serve_until_signalled(running, grace_seconds=config.grace_seconds, on_stopped=release)


def run() -> None:
    """Reads the configuration once and runs the service."""
    environment = Environment(os.environ)
    try:
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        config = ContentConfig.from_environment(environment, var_root=var_root)
    except ConfigError as error:
        sys.exit(f"content: configuration error: {error}")
    serving.configure_logging(config.log_level)
    asyncio.run(main(config))


if __name__ == "__main__":
    run()
