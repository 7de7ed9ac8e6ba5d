"""Starts the media service: `python -m services.media`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import imageio_ffmpeg

from services import serving
from services.environment import ConfigError, Environment
from services.media.config import MediaConfig
from services.media.encoders import EncoderSelection, select_h264_encoder
from services.media.servicer import MediaServicer
from services.media.speech import EspeakNarrator
from services.media.studio import MediaStudio
from services.storage import LocalAssetStorage
from stillpoint.media.v1 import media_service_pb2 as media_pb
from stillpoint.media.v1 import media_service_pb2_grpc as media_grpc

SERVICE_NAME = media_pb.DESCRIPTOR.services_by_name["MediaService"].full_name
logger = logging.getLogger("services.media")


async def main(config: MediaConfig) -> None:
    """Probes encoders and starts the narrator once, serves, and releases them on the way out."""
    ffmpeg_path = imageio_ffmpeg.get_ffmpeg_exe()
    if config.hardware_encoding:
        encoders = await select_h264_encoder(ffmpeg_path)
    else:
        encoders = EncoderSelection(
            selected="libx264", probes=("hardware encoding disabled by configuration",)
        )
    logger.info("H.264 encoder: %s (%s)", encoders.selected, "; ".join(encoders.probes))
    narrator = EspeakNarrator(voice=config.espeak_voice, words_per_minute=config.espeak_words_per_minute)
    studio = MediaStudio(
        narrator=narrator,
        storage=LocalAssetStorage(config.storage_root),
        ffmpeg_path=ffmpeg_path,
        encoders=encoders,
        work_root=config.work_root,
        narration_timeout_seconds=config.narration_timeout_seconds,
        video_timeout_seconds=config.video_timeout_seconds,
    )

    async def release() -> None:
        narrator.close()

    running = await serving.start_server(
        service_names=[SERVICE_NAME],
        register=lambda server: media_grpc.add_MediaServiceServicer_to_server(MediaServicer(studio), server),
        address=f"0.0.0.0:{config.port}",
    )
    await serving.serve_until_signalled(running, grace_seconds=config.grace_seconds, on_stopped=release)


def run() -> None:
    """Reads the configuration once and runs the service."""
    environment = Environment(os.environ)
    try:
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        config = MediaConfig.from_environment(environment, var_root=var_root)
    except ConfigError as error:
        sys.exit(f"media: configuration error: {error}")
    serving.configure_logging(config.log_level)
    asyncio.run(main(config))


if __name__ == "__main__":
    run()
