"""A database that cannot be reached: every RPC that needs it is UNAVAILABLE with a retry hint, never
INTERNAL, UNKNOWN or (for an API key) UNAUTHENTICATED. Real in-process servers whose engines point at a
closed port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ProcessPoolExecutor

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services import serving
from services.cache.in_process import InProcessCache
from services.cli import gateway_channel as gateway_channel_to
from services.content.generation import (
    ImageGenerator,
    OfflineImageProvider,
    OfflineTranscriptProvider,
    TranscriptGenerator,
)
from services.content.repository import ContentRepository
from services.content.servicer import ContentServicer
from services.database import create_engine
from services.gateway.api_keys import API_KEY_PREFIX, ApiKeyStore
from services.gateway.authentication import Authenticator
from services.gateway.backends import ContentClient, MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from services.storage.local import LocalAssetStorage
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.content.v2 import content_service_pb2_grpc as content_grpc
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.conftest import CONTENT_SERVICE, GATEWAY_SERVICE, TEST_OWNER

PASSWORD = "hunter2"


def _closed_port() -> int:
    """A port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def unreachable_engine() -> AsyncIterator[AsyncEngine]:
    """An engine whose PostgreSQL is down."""
    engine = create_engine(
        f"postgresql+asyncpg://stillpoint:{PASSWORD}@127.0.0.1:{_closed_port()}/stillpoint"
    )
    yield engine
    await engine.dispose()


@pytest.fixture
async def content_stub(
    unreachable_engine: AsyncEngine, storage: LocalAssetStorage, painters: ProcessPoolExecutor
) -> AsyncIterator[content_grpc.ContentServiceStub]:
    """A real content server whose conversation database is down."""
    transcript_cache = InProcessCache(ttl_seconds=3600, name="transcripts")
    image_cache = InProcessCache(ttl_seconds=3600, name="images")
    servicer = ContentServicer(
        repository=ContentRepository(unreachable_engine),
        transcripts=TranscriptGenerator(OfflineTranscriptProvider(), transcript_cache),
        images=ImageGenerator(OfflineImageProvider(painters), image_cache, storage),
        caches=[transcript_cache, image_cache],
        pregenerate_prompts=[],
    )
    running = await serving.start_server(
        service_names=[CONTENT_SERVICE],
        register=lambda server: content_grpc.add_ContentServiceServicer_to_server(servicer, server),
        address="127.0.0.1:0",
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield content_grpc.ContentServiceStub(channel)
    await running.stop(0)


def _assert_unavailable_with_a_retry_hint(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert "try again" in (error.details() or "")
    assert PASSWORD not in (error.details() or "")


async def test_conversation_rpcs_are_unavailable_while_the_database_is_down(
    content_stub: content_grpc.ContentServiceStub,
) -> None:
    name = "conversations/0123456789abcdef"
    calls: dict[str, Awaitable[object]] = {
        "CreateConversation": content_stub.CreateConversation(
            content_pb.CreateConversationRequest(owner=TEST_OWNER, title="t")
        ),
        "GetConversation": content_stub.GetConversation(
            content_pb.GetConversationRequest(owner=TEST_OWNER, name=name)
        ),
        "ListConversations": content_stub.ListConversations(
            content_pb.ListConversationsRequest(owner=TEST_OWNER, page_size=10)
        ),
        "AppendMessages": content_stub.AppendMessages(
            content_pb.AppendMessagesRequest(
                owner=TEST_OWNER,
                conversation=name,
                messages=[content_pb.Message(role=content_pb.MESSAGE_ROLE_USER, text="hello")],
            )
        ),
    }
    for call, pending in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await pending
        _assert_unavailable_with_a_retry_hint(raised.value)
        assert "conversation database is unavailable" in (raised.value.details() or ""), call


@pytest.fixture
async def gateway_port(unreachable_engine: AsyncEngine) -> AsyncIterator[int]:
    """A real gateway whose job tables and API keys live in a database that is down; its content and media
    addresses are never reached by these calls."""
    timeouts = StageTimeouts()
    backends = grpc.aio.insecure_channel(f"127.0.0.1:{_closed_port()}")
    content = ContentClient(backends, timeouts)
    media = MediaClient(backends, timeouts)
    jobs = MeditationJobs(JobStore(unreachable_engine), content, MeditationPipeline(content, media, timeouts))
    running = await serving.start_server(
        service_names=[GATEWAY_SERVICE],
        register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(content, jobs), server
        ),
        address="127.0.0.1:0",
        interceptors=[AuthenticationInterceptor(Authenticator(api_keys=ApiKeyStore(unreachable_engine)))],
    )
    yield running.port
    await running.stop(0)
    await jobs.close()
    await backends.close()


async def test_an_api_key_is_not_refused_but_unavailable_while_the_database_is_down(
    gateway_port: int,
) -> None:
    async with gateway_channel_to(f"127.0.0.1:{gateway_port}", API_KEY_PREFIX + "x" * 43) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ListMeditations(gateway_pb.ListMeditationsRequest(page_size=10))
    _assert_unavailable_with_a_retry_hint(raised.value)


async def test_the_job_store_is_unavailable_while_the_database_is_down(
    unreachable_engine: AsyncEngine,
) -> None:
    # Past authentication (a disabled authenticator lets every call in as the local owner).
    timeouts = StageTimeouts()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{_closed_port()}") as backends:
        content = ContentClient(backends, timeouts)
        media = MediaClient(backends, timeouts)
        jobs = MeditationJobs(
            JobStore(unreachable_engine), content, MeditationPipeline(content, media, timeouts)
        )
        running = await serving.start_server(
            service_names=[GATEWAY_SERVICE],
            register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
                GatewayServicer(content, jobs), server
            ),
            address="127.0.0.1:0",
            interceptors=[AuthenticationInterceptor(Authenticator(api_keys=None, is_disabled=True))],
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = gateway_grpc.GatewayServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as listed:
                    await stub.ListMeditations(gateway_pb.ListMeditationsRequest(page_size=10))
                with pytest.raises(grpc.aio.AioRpcError) as got:
                    await stub.GetMeditation(
                        gateway_pb.GetMeditationRequest(name="meditations/0123456789abcdef")
                    )
        finally:
            await running.stop(0)
            await jobs.close()
    _assert_unavailable_with_a_retry_hint(listed.value)
    _assert_unavailable_with_a_retry_hint(got.value)
