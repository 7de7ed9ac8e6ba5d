"""What one owner may store is bounded: how many conversations they keep and how large one grows. Past either,
the public client gets RESOURCE_EXHAUSTED with content's message, and nobody else is affected."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import ClassVar

import grpc
import pytest

from services import serving
from services.cli import gateway_channel
from services.content.repository import ConversationLimits
from services.gateway.api_keys import ApiKeyStore
from services.gateway.authentication import Authenticator
from services.gateway.backends import ContentClient, MediaClient
from services.gateway.jobs import JobLimits, MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from services.storage.local import LocalAssetStorage
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.conftest import GATEWAY_SERVICE, TEST_OWNER

MAX_CONVERSATIONS = 3
MAX_BYTES = 100_000
USER = gateway_pb.MESSAGE_ROLE_USER
# 20,000 characters (the most one message may have) of two UTF-8 bytes each: 40,000 bytes, plus 32 counted
# for the message itself.
LONG_MESSAGE = gateway_pb.Message(role=USER, text="é" * 20_000)


@pytest.fixture
def conversation_limits() -> ConversationLimits:
    """Small limits, so a test reaches them in a few calls."""
    return ConversationLimits(max_conversations_per_owner=MAX_CONVERSATIONS, max_conversation_bytes=MAX_BYTES)


def _create(request_id: str = "") -> gateway_pb.CreateConversationRequest:
    return gateway_pb.CreateConversationRequest(
        messages=[gateway_pb.Message(role=USER, text="The tide going out.")], request_id=request_id
    )


async def test_past_their_conversation_limit_an_owner_is_resource_exhausted_and_others_are_not(
    gateway_server: serving.RunningServer, api_keys: ApiKeyStore
) -> None:
    """Property: an owner keeping MAX_CONVERSATIONS gets RESOURCE_EXHAUSTED (saying how many and what to
    do) for the next, a retry of one they made still answers with it, and another owner is unaffected."""
    address = f"127.0.0.1:{gateway_server.port}"
    alice, bob = (await api_keys.create("alice")).key, (await api_keys.create("bob")).key
    async with gateway_channel(address, alice) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        request_id = str(uuid.uuid4())
        made = [(await stub.CreateConversation(_create(request_id))).conversation.name]
        for _ in range(MAX_CONVERSATIONS - 1):
            made.append((await stub.CreateConversation(_create())).conversation.name)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateConversation(_create())
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = refused.value.details() or ""
        assert f"you have {MAX_CONVERSATIONS} conversations (the limit is {MAX_CONVERSATIONS})" in details
        assert "DeleteConversation" in details
        assert (await stub.CreateConversation(_create(request_id))).conversation.name == made[0]
        listed = await stub.ListConversations(gateway_pb.ListConversationsRequest())
        assert sorted(c.name for c in listed.conversations) == sorted(made)
        # Deleting one makes room for another.
        await stub.DeleteConversation(gateway_pb.DeleteConversationRequest(name=made.pop()))
        made.append((await stub.CreateConversation(_create())).conversation.name)
    async with gateway_channel(address, bob) as channel:
        assert (
            await gateway_grpc.GatewayServiceStub(channel).CreateConversation(_create())
        ).conversation.name


async def test_a_conversation_grown_past_its_size_is_resource_exhausted_and_keeps_what_it_had(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    """Property: an append that would take a conversation past MAX_BYTES (UTF-8 bytes, not characters) is
    RESOURCE_EXHAUSTED with the size it would reach, and stores none of its messages."""
    created = await gateway_stub.CreateConversation(
        gateway_pb.CreateConversationRequest(messages=[LONG_MESSAGE])
    )
    name = created.conversation.name
    appended = await gateway_stub.AppendMessages(
        gateway_pb.AppendMessagesRequest(conversation=name, messages=[LONG_MESSAGE])
    )
    assert appended.message_count == 2
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway_stub.AppendMessages(
            gateway_pb.AppendMessagesRequest(
                conversation=name, messages=[gateway_pb.Message(role=USER, text="Short."), LONG_MESSAGE]
            )
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.value.details() or ""
    assert f"{name} would hold {3 * 40_032 + len('Short.') + 32} bytes" in details
    assert f"the limit is {MAX_BYTES}" in details
    assert "start a new conversation" in details
    kept = await gateway_stub.GetConversation(gateway_pb.GetConversationRequest(name=name))
    assert [m.text for m in kept.conversation.messages] == [LONG_MESSAGE.text] * 2


async def test_a_new_conversation_larger_than_one_may_be_is_resource_exhausted(
    gateway_stub: gateway_grpc.GatewayServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway_stub.CreateConversation(
            gateway_pb.CreateConversationRequest(messages=[LONG_MESSAGE] * 3)
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"the limit is {MAX_BYTES}" in (refused.value.details() or "")
    assert (
        list((await gateway_stub.ListConversations(gateway_pb.ListConversationsRequest())).conversations)
        == []
    )


class _MeasuringCounted(MediaClient):
    """The media client, counting the listings of a meditation's folders it asks for."""

    measured: ClassVar[list[str]] = []

    async def measure_meditation_assets(self, meditation: str) -> int:
        self.measured.append(meditation)
        return await super().measure_meditation_assets(meditation)


@pytest.fixture
async def stored_bytes_gateway(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    job_store: JobStore,
    api_keys: ApiKeyStore,
    api_key: str,
) -> AsyncIterator[gateway_grpc.GatewayServiceStub]:
    """A gateway whose owners may keep 1 byte of meditations: one finished meditation fills it."""
    timeouts = StageTimeouts()
    content, media = ContentClient(content_channel, timeouts), _MeasuringCounted(media_channel, timeouts)
    _MeasuringCounted.measured = []
    jobs = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, media, timeouts),
        media=media,
        poll_interval_seconds=0.05,
        limits=JobLimits(max_stored_bytes_per_owner=1),
    )
    running = await serving.start_server(
        service_names=[GATEWAY_SERVICE],
        register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(content, jobs), server
        ),
        address="127.0.0.1:0",
        interceptors=[AuthenticationInterceptor(Authenticator(api_keys=api_keys))],
    )
    async with gateway_channel(f"127.0.0.1:{running.port}", api_key) as channel:
        yield gateway_grpc.GatewayServiceStub(channel)
    await running.stop(0)
    await jobs.close()


async def test_an_owner_whose_meditations_fill_their_storage_is_refused_new_ones_until_they_delete(
    stored_bytes_gateway: gateway_grpc.GatewayServiceStub, storage: LocalAssetStorage, job_store: JobStore
) -> None:
    """Property: a succeeded meditation records what its narration, preview and videos take in storage;
    past the owner's limit GenerateMeditation is RESOURCE_EXHAUSTED, saying how much and what to do, and
    starts nothing; deleting the conversation frees the room."""
    stub = stored_bytes_gateway
    conversation = (await stub.CreateConversation(_create())).conversation.name
    first = [
        r
        async for r in stub.GenerateMeditation(
            gateway_pb.GenerateMeditationRequest(conversation=conversation)
        )
    ]
    assert first[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    meditation_id = first[0].accepted.meditation.split("/")[1]
    on_disk = sum(
        path.stat().st_size
        for kind in ("narrations", "live", "videos")
        for path in (storage.root / kind / meditation_id).glob("*")
    )
    assert on_disk > 0
    assert await job_store.stored_bytes_of(TEST_OWNER) == on_disk
    # Added up from what the job stored: no listing of its folders (three storage requests) on its way.
    assert _MeasuringCounted.measured == []

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.GenerateMeditation(
            gateway_pb.GenerateMeditationRequest(conversation=conversation)
        ):
            pass
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.value.details() or ""
    assert "MB of storage (the limit is 0.0 MB)" in details and "DeleteConversation" in details
    listed = await stub.ListMeditations(gateway_pb.ListMeditationsRequest())
    assert len(listed.meditations) == 1

    await stub.DeleteConversation(gateway_pb.DeleteConversationRequest(name=conversation))

    assert await job_store.stored_bytes_of(TEST_OWNER) == 0
    again = (await stub.CreateConversation(_create())).conversation.name
    stream = stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=again))
    accepted = await stream.read()
    assert isinstance(accepted, gateway_pb.GenerateMeditationResponse) and accepted.HasField("accepted")
    stream.cancel()
