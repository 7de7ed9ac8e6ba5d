"""Real in-process gRPC servers on 127.0.0.1:0 for every service, wired together as in production."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import grpc
import imageio_ffmpeg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services import rpc_tracing, serving
from services.cache.in_process import InProcessCache
from services.cli import gateway_channel as gateway_channel_to
from services.content import migrate as content_migrate
from services.content.generation import (
    ImageGenerator,
    OfflineImageProvider,
    OfflineTranscriptProvider,
    TranscriptGenerator,
)
from services.content.repository import ContentRepository, ConversationLimits
from services.content.servicer import ContentServicer
from services.database import create_engine
from services.gateway import migrate as gateway_migrate
from services.gateway.api_keys import ApiKeyStore
from services.gateway.authentication import Authenticator
from services.gateway.backends import ContentClient, MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from services.media.encoder_process import EncoderProcess
from services.media.encoders import EncoderSelection
from services.media.media_http import ROUTE_PREFIX, MediaHttpServer, build_media_app, listening_socket
from services.media.media_links import MediaLinkSigner
from services.media.servicer import MediaServicer
from services.media.speech import EspeakNarrator
from services.media.studio import MediaStudio
from services.storage.local import LocalAssetStorage
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.content.v2 import content_service_pb2_grpc as content_grpc
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc


def pytest_configure(config: pytest.Config) -> None:
    """Services started as processes speak with espeak-ng unless a test says otherwise: a narration takes it
    about 4 s where the default Piper voice takes about 25 s on two cores, and dozens of real-process jobs
    must fit `make test`'s budget. Piper runs in its own tests (tests/media/test_piper_speech.py, the
    loudness tests) and in tests/test_end_to_end.py's stack, which asks for the default voice.

    espeak-ng speaks three times its default rate (375 words a minute, of the 450 allowed): a script lasts
    about 100 s instead of 280 s, and every encode of it (the live preview, QUICK, ENHANCED) costs that much
    less, while each real-process test still runs the whole pipeline."""
    os.environ.setdefault("STILLPOINT_SPEECH_PROVIDER", "espeak")
    os.environ.setdefault("STILLPOINT_ESPEAK_WORDS_PER_MINUTE", "375")


# Two prompts keep the pre-generation tests quick; the service's real default is every prompt it can make.
PREGENERATED_PROMPTS = ["A calm landscape: a still lake at dusk", "A calm landscape: a quiet forest at dawn"]
CONTENT_SERVICE = content_pb.DESCRIPTOR.services_by_name["ContentService"].full_name
MEDIA_SERVICE = media_pb.DESCRIPTOR.services_by_name["MediaService"].full_name
GATEWAY_SERVICE = gateway_pb.DESCRIPTOR.services_by_name["GatewayService"].full_name
# Whose conversations the tests' in-process gateway serves, and the owner content calls name.
TEST_OWNER = "tester"
# The in-process media endpoint's link secret (a test value, never a deployment's).
TEST_MEDIA_LINK_SECRET = b"stillpoint-tests-media-link-secret-0123456789"


@pytest.fixture(scope="session")
def painters() -> Iterator[ProcessPoolExecutor]:
    """One spawned painter process for the whole run: starting one costs about a second."""
    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    yield executor
    executor.shutdown(cancel_futures=True)


@pytest.fixture
def storage(tmp_path: Path) -> LocalAssetStorage:
    """A fresh local asset store."""
    return LocalAssetStorage(tmp_path / "storage")


async def start_content_server(
    tmp_path: Path,
    storage: LocalAssetStorage,
    painters: ProcessPoolExecutor,
    limits: ConversationLimits | None = None,
    *,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[serving.RunningServer, AsyncEngine]:
    """A real content server with offline providers and a fresh SQLite file (plaintext unless given
    `credentials`), and its engine to dispose of after it stops."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'content.db'}")
    await content_migrate.HISTORY.upgrade(engine)
    transcript_cache = InProcessCache(ttl_seconds=3600, name="transcripts")
    image_cache = InProcessCache(ttl_seconds=3600, name="images")
    servicer = ContentServicer(
        repository=ContentRepository(engine, limits),
        transcripts=TranscriptGenerator(OfflineTranscriptProvider(), transcript_cache),
        images=ImageGenerator(OfflineImageProvider(painters), image_cache, storage),
        caches=[transcript_cache, image_cache],
        pregenerate_prompts=PREGENERATED_PROMPTS,
    )
    running = await serving.start_server(
        service_names=[CONTENT_SERVICE],
        register=lambda server: content_grpc.add_ContentServiceServicer_to_server(servicer, server),
        address="127.0.0.1:0",
        credentials=credentials,
        interceptors=interceptors,
    )
    return running, engine


@pytest.fixture
def conversation_limits() -> ConversationLimits | None:
    """What the content server lets an owner store: its defaults, unless a test module overrides this."""
    return None


@pytest.fixture
async def content_channel(
    tmp_path: Path,
    storage: LocalAssetStorage,
    painters: ProcessPoolExecutor,
    conversation_limits: ConversationLimits | None,
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a real content server backed by a fresh SQLite file."""
    running, engine = await start_content_server(tmp_path, storage, painters, conversation_limits)
    # Traced as the gateway's backend channels are (services/gateway/backends.py).
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{running.port}", interceptors=rpc_tracing.client_interceptors()
    ) as channel:
        yield channel
    await running.stop(0)
    await engine.dispose()


@pytest.fixture
def narrator() -> Iterator[EspeakNarrator]:
    """The offline narrator."""
    speaker = EspeakNarrator()
    yield speaker
    speaker.close()


@pytest.fixture(scope="session")
def encoder_process() -> Iterator[EncoderProcess]:
    """One encoder process for the session's media servers, as the media service has one for its lifetime."""
    process = EncoderProcess(2)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def media_channel(
    tmp_path: Path, storage: LocalAssetStorage, narrator: EspeakNarrator, encoder_process: EncoderProcess
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a real media server, its assets reachable through its real media endpoint (signed links
    on a free port), its live narrations encoded in the encoder process; encoder probing is skipped (tested on
    its own)."""
    listener = listening_socket("127.0.0.1", 0)
    links = MediaLinkSigner(
        TEST_MEDIA_LINK_SECRET, f"http://127.0.0.1:{listener.getsockname()[1]}{ROUTE_PREFIX}", 600
    )
    endpoint = MediaHttpServer(build_media_app(links, storage.root), listener)
    await endpoint.start()
    studio = MediaStudio(
        encoder_process=encoder_process,
        links=links,
        narrator=narrator,
        storage=storage,
        ffmpeg_path=imageio_ffmpeg.get_ffmpeg_exe(),
        encoders=EncoderSelection(selected="libx264", probes=("probing skipped in tests",)),
        work_root=tmp_path / "work",
        video_timeout_seconds=120,
    )
    (tmp_path / "work").mkdir(exist_ok=True)
    running = await serving.start_server(
        service_names=[MEDIA_SERVICE],
        register=lambda server: media_grpc.add_MediaServiceServicer_to_server(MediaServicer(studio), server),
        address="127.0.0.1:0",
    )
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{running.port}", interceptors=rpc_tracing.client_interceptors()
    ) as channel:
        yield channel
    await running.stop(0)
    await endpoint.stop()


@pytest.fixture
async def gateway_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The gateway's tables in a fresh, migrated SQLite file."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    await gateway_migrate.HISTORY.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def job_store(gateway_engine: AsyncEngine) -> JobStore:
    """The gateway's job tables."""
    return JobStore(gateway_engine)


@pytest.fixture
def api_keys(gateway_engine: AsyncEngine) -> ApiKeyStore:
    """The gateway's API keys."""
    return ApiKeyStore(gateway_engine)


@pytest.fixture
async def api_key(api_keys: ApiKeyStore) -> str:
    """A key of the owner TEST_OWNER."""
    return (await api_keys.create(TEST_OWNER)).key


@pytest.fixture
async def gateway_server(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    job_store: JobStore,
    api_keys: ApiKeyStore,
) -> AsyncIterator[serving.RunningServer]:
    """A real gateway wired to real content and media servers, authenticating callers by API key."""
    timeouts = StageTimeouts()
    content = ContentClient(content_channel, timeouts)
    media = MediaClient(media_channel, timeouts)
    jobs = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, media, timeouts),
        media=media,
        poll_interval_seconds=0.05,
    )
    running = await serving.start_server(
        service_names=[GATEWAY_SERVICE],
        register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(content, jobs), server
        ),
        address="127.0.0.1:0",
        interceptors=[AuthenticationInterceptor(Authenticator(api_keys=api_keys))],
    )
    yield running
    await running.stop(0)
    await jobs.close()


@pytest.fixture
async def gateway_channel(
    gateway_server: serving.RunningServer, api_key: str
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the gateway whose every call carries TEST_OWNER's API key."""
    async with gateway_channel_to(f"127.0.0.1:{gateway_server.port}", api_key) as channel:
        yield channel


@pytest.fixture
def content_stub(content_channel: grpc.aio.Channel) -> content_grpc.ContentServiceStub:
    """The content service's client stub."""
    return content_grpc.ContentServiceStub(content_channel)


@pytest.fixture
def media_stub(media_channel: grpc.aio.Channel) -> media_grpc.MediaServiceStub:
    """The media service's client stub."""
    return media_grpc.MediaServiceStub(media_channel)


@pytest.fixture
def gateway_stub(gateway_channel: grpc.aio.Channel) -> gateway_grpc.GatewayServiceStub:
    """The gateway's client stub."""
    return gateway_grpc.GatewayServiceStub(gateway_channel)
