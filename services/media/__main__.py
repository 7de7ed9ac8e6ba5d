"""Starts the media service: `python -m services.media`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import imageio_ffmpeg
from grpc_health.v1 import health_pb2

from services import metrics, serving
from services.environment import ConfigError, Environment
from services.media.config import MediaConfig, MediaEndpointSettings, SpeechApi
from services.media.encoder_process import EncoderProcess
from services.media.encoders import EncoderSelection, select_h264_encoder
from services.media.media_http import ROUTE_PREFIX, MediaHttpServer, build_media_app, listening_socket
from services.media.media_links import MediaLinkSigner, load_or_create_secret
from services.media.piper_speech import OfflineVoice, PiperDelivery, PiperVoiceFiles, start_offline_voice
from services.media.scratch import MEBIBYTE, ScratchDisk
from services.media.servicer import MediaServicer
from services.media.speech import EspeakNarrator
from services.media.studio import MediaStudio, Narrator
from services.openai_api import check_models, make_client
from services.peer_identity import PeerIdentityInterceptor
from services.provider_status import ProviderReport
from services.storage.base import AssetStorage
from services.storage.factory import open_asset_storage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc

SERVICE_NAME = media_pb.DESCRIPTOR.services_by_name["MediaService"].full_name
logger = logging.getLogger("services.media")


async def main(config: MediaConfig) -> None:
    """Opens asset storage for the process's lifetime and serves."""
    async with open_asset_storage(config.storage) as storage:
        await serve(config, storage)


async def serve(config: MediaConfig, storage: AssetStorage) -> None:
    """Probes encoders and starts the narrator once, serves, and releases them on the way out."""
    ffmpeg_path = imageio_ffmpeg.get_ffmpeg_exe()
    if config.hardware_encoding:
        encoders = await select_h264_encoder(ffmpeg_path)
    else:
        encoders = EncoderSelection(
            selected="libx264", probes=("hardware encoding disabled by configuration",)
        )
    logger.info("H.264 encoder: %s (%s)", encoders.selected, "; ".join(encoders.probes))
    espeak = EspeakNarrator(voice=config.espeak_voice, words_per_minute=config.espeak_words_per_minute)
    offline = await _start_offline_voice(config, espeak)
    client = make_client(config.openai) if config.openai is not None else None
    narrator: Narrator = offline.narrator
    realtime: RealtimeSpeechNarrator | None = None
    report = offline.report()
    # Leave a fifth of the stage's budget for the offline voice should the provider fail.
    speech_timeout_seconds = 0.8 * config.narration_timeout_seconds
    # The OpenAI narrators (and the SDK under them) are imported only when configured: see openai_api.
    if client is not None and config.speech_api is SpeechApi.REALTIME:
        from services.media.openai_realtime import RealtimeSpeechNarrator

        narrator = realtime = RealtimeSpeechNarrator(
            client,
            config.speech_model,
            voice=config.speech_voice,
            instructions=config.speech_instructions,
            timeout_seconds=speech_timeout_seconds,
            # One WebSocket per sentence in flight, kept open and reused by the sentences that follow.
            max_sessions=config.speech_requests_in_flight,
        )
    elif client is not None:
        from services.media.openai_speech import OpenAISpeechNarrator

        narrator = OpenAISpeechNarrator(
            client,
            config.speech_model,
            voice=config.speech_voice,
            instructions=config.speech_instructions,
            audio_format=config.speech_format,
            ffmpeg_path=ffmpeg_path,
            work_root=config.work_root,
            timeout_seconds=speech_timeout_seconds,
            max_concurrent_requests=config.speech_requests_in_flight,
        )
    if client is not None:
        # Warn at start-up, in the log and through GetProviderStatus, about a model missing or retiring soon.
        report = ProviderReport(
            "speech",
            "openai",
            config.speech_model.name,
            config.fallback_to_offline,
            await check_models(client, [config.speech_model]),
        )
    if client is not None and offline.fallback_reason:
        report.warnings.append(offline.fallback_warning)
    scratch = ScratchDisk(config.work_root, min_free_bytes=config.min_free_megabytes * MEBIBYTE)
    endpoint: MediaHttpServer | None = None
    links: MediaLinkSigner | None = None
    if config.media_endpoint is not None:
        # Bound before anything mints a link: with port 0, the port bound is what the default URL names.
        endpoint, links = _media_endpoint(config, config.media_endpoint)
        await endpoint.start()
    # Live narrations are encoded in a process of their own: the encoding never holds this one's event loop.
    encoder_process = EncoderProcess(
        os.cpu_count() or 1, on_unexpected_end=metrics.record_encoder_process_end
    )
    studio = MediaStudio(
        encoder_process=encoder_process,
        narrator=narrator,
        narrator_name="openai" if client is not None else offline.name,
        fallback_narrator=offline.narrator if client is not None and config.fallback_to_offline else None,
        fallback_narrator_name=offline.name,
        providers=[report],
        sentences_in_flight_per_job=config.sentences_in_flight_per_job,
        deferrable_renders_at_once=config.enhanced_renders_at_once,
        storage=storage,
        ffmpeg_path=ffmpeg_path,
        encoders=encoders,
        work_root=config.work_root,
        video_timeout_seconds=config.video_timeout_seconds,
        scratch=scratch,
        links=links,
    )
    # Before serving: the first person after a start would otherwise wait for what the encoder process makes
    # as it starts (the bed, the preview's keyframes and the QUICK video's picture).
    await asyncio.to_thread(encoder_process.start)
    health_task: asyncio.Task[None] | None = None

    async def release() -> None:
        if health_task is not None:
            health_task.cancel()
        await asyncio.to_thread(encoder_process.stop)
        if endpoint is not None:
            await endpoint.stop()
        offline.narrator.close()
        espeak.close()
        if realtime is not None:
            await realtime.close()
        if client is not None:
            await client.close()

    running = await serving.start_server(
        service_names=[SERVICE_NAME],
        register=lambda server: media_grpc.add_MediaServiceServicer_to_server(MediaServicer(studio), server),
        address=f"{config.bind_host}:{config.port}",
        credentials=serving.internal_server_credentials(config.internal_tls),
        # Past the handshake (any certificate the internal CA signed), only the allowed callers' certificates
        # reach a handler. Without TLS the port is plaintext on loopback, with no certificate to check.
        interceptors=[PeerIdentityInterceptor(config.internal_callers)] if config.internal_tls else [],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )

    async def set_serving(has_room: bool) -> None:
        # Ignored once SIGTERM has set NOT_SERVING for good (the health servicer's graceful shutdown).
        status = (
            health_pb2.HealthCheckResponse.SERVING if has_room else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await running.health.set(SERVICE_NAME, status)

    health_task = asyncio.create_task(scratch.report_health(set_serving))
    await serving.serve_until_signalled(running, grace_seconds=config.grace_seconds, on_stopped=release)


def _media_endpoint(
    config: MediaConfig, settings: MediaEndpointSettings
) -> tuple[MediaHttpServer, MediaLinkSigner]:
    """The endpoint serving local storage to clients, and the signer of its links."""
    listener = listening_socket(config.bind_host, settings.port)
    port = listener.getsockname()[1]
    secret = settings.secret or load_or_create_secret(settings.secret_file)
    public_url = settings.public_url or f"http://127.0.0.1:{port}{ROUTE_PREFIX}"
    links = MediaLinkSigner(secret, public_url, settings.link_seconds)
    logger.info("media links point at %s", public_url)
    return MediaHttpServer(build_media_app(links, config.storage.local_root), listener), links


async def _start_offline_voice(config: MediaConfig, espeak: EspeakNarrator) -> OfflineVoice:
    """The offline narrator: Piper (loaded now, once for the process), or espeak-ng when it is asked for,
    when the remote provider needs no fallback, or when the neural voice cannot load."""
    is_piper_wanted = config.speech_provider in ("offline", "piper") or (
        config.speech_provider == "openai" and config.fallback_to_offline
    )
    if not is_piper_wanted:
        return OfflineVoice(espeak, "espeak-ng", "")
    path = config.piper_model_path
    files = None if path is None else PiperVoiceFiles(path, path.with_name(path.name + ".json"), path.stem)
    delivery = PiperDelivery(
        length_scale=config.piper_length_scale,
        sentence_silence_seconds=config.piper_sentence_silence_seconds,
    )
    return await start_offline_voice(
        files, delivery, espeak, concurrent_syntheses=config.piper_concurrent_syntheses
    )


def run() -> None:
    """Reads the configuration once and runs the service."""
    environment = Environment(os.environ)
    try:
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        config = MediaConfig.from_environment(environment, var_root=var_root)
    except ConfigError as error:
        sys.exit(f"media: configuration error: {error}")
    # Every registered secret, used here or not: see serving.SECRET_VARIABLES.
    serving.configure_logging(
        config.log_level,
        secrets=serving.registered_secrets(os.environ),
        log_format=config.log_format,
        service="media",
    )
    # OTEL_* are the SDK's own variables, read with the rest; nothing is traced unless they ask.
    serving.run_service("media", lambda: main(config), metrics=config.metrics, environment=os.environ)


if __name__ == "__main__":
    run()
