"""An owner holds at most so many meditation streams open at once; nobody else's streams count against them,
and a stream's slot is given back however it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from services import serving
from services.cli import gateway_channel
from services.gateway.api_keys import ApiKeyStore
from services.gateway.authentication import Authenticator
from services.gateway.backends import ContentClient, MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.open_streams import OpenStreams
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.ports import SourceContent
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.conftest import GATEWAY_SERVICE
from tests.gateway.test_servicer import SAMPLE_MESSAGES
from tests.waiting import wait_until

LIMIT = 2
MISSING_MEDITATION = "meditations/00000000000000aa"
# A held job waits for the test, not for the source stage's deadline.
TIMEOUTS = StageTimeouts(source_seconds=600.0)


class HeldContent(ContentClient):
    """The content service, except that every job waits at its first stage until `release` is set: its
    streams stay open for as long as the test needs them."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, TIMEOUTS)
        self.release = asyncio.Event()

    async def collect_source_content(self, owner: str, conversation: str) -> SourceContent:
        await self.release.wait()
        return await super().collect_source_content(owner, conversation)


@dataclass
class Gateway:
    """A gateway whose owners may each hold LIMIT streams, and what the test needs to see inside it."""

    address: str
    api_keys: ApiKeyStore
    open_streams: OpenStreams
    content: HeldContent

    @asynccontextmanager
    async def stub_of(self, owner: str) -> AsyncIterator[gateway_grpc.GatewayServiceStub]:
        """A client of `owner`'s, authenticated with a key of theirs."""
        async with gateway_channel(self.address, (await self.api_keys.create(owner)).key) as channel:
            yield gateway_grpc.GatewayServiceStub(channel)


@pytest.fixture
async def gateway(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    job_store: JobStore,
    api_keys: ApiKeyStore,
) -> AsyncIterator[Gateway]:
    content = HeldContent(content_channel)
    media = MediaClient(media_channel, TIMEOUTS)
    jobs = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, media, TIMEOUTS),
        media=media,
        poll_interval_seconds=0.05,
    )
    open_streams = OpenStreams(LIMIT)
    running = await serving.start_server(
        service_names=[GATEWAY_SERVICE],
        register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(content, jobs, open_streams=open_streams), server
        ),
        address="127.0.0.1:0",
        interceptors=[AuthenticationInterceptor(Authenticator(api_keys=api_keys))],
    )
    yield Gateway(f"127.0.0.1:{running.port}", api_keys, open_streams, content)
    content.release.set()
    await running.stop(0)
    await jobs.close()


async def _conversation(stub: gateway_grpc.GatewayServiceStub) -> str:
    created = await stub.CreateConversation(gateway_pb.CreateConversationRequest(messages=SAMPLE_MESSAGES))
    return created.conversation.name


async def _opened(stream: Any) -> Any:
    """The stream, once its first event has arrived (the server counts it open from then at the latest)."""
    first = await stream.read()
    assert first is not grpc.aio.EOF
    return stream


async def _refusal(stream: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stream:
            pass
    return raised.value


async def test_past_the_limit_a_stream_is_resource_exhausted_and_says_how_many_are_open(
    gateway: Gateway,
) -> None:
    """Property: with LIMIT streams open, the owner's next GenerateMeditation or WatchMeditation is
    RESOURCE_EXHAUSTED, saying how many are open and what to do, and a refused GenerateMeditation starts no
    meditation."""
    async with gateway.stub_of("alice") as alice:
        conversation = await _conversation(alice)
        generate = alice.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
        first = await generate.read()
        assert isinstance(first, gateway_pb.GenerateMeditationResponse)
        meditation = first.accepted.meditation
        await _opened(alice.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation)))
        assert gateway.open_streams.count("alice") == LIMIT

        refusals = [
            await _refusal(alice.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation))),
            await _refusal(
                alice.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
            ),
        ]
        for refused in refusals:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = refused.details() or ""
            assert f"you have {LIMIT} meditation streams open" in details
            assert f"the limit is {LIMIT}" in details
            assert "close one" in details
        listed = await alice.ListMeditations(gateway_pb.ListMeditationsRequest())
        assert [m.name for m in listed.meditations] == [meditation]


async def test_one_owners_open_streams_never_exhaust_another_owner(gateway: Gateway) -> None:
    """Property: the limit is per authenticated owner: alice at her limit leaves bob all of his."""
    async with gateway.stub_of("alice") as alice:
        conversation = await _conversation(alice)
        for _ in range(LIMIT):
            await _opened(
                alice.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
            )
        assert gateway.open_streams.count("alice") == LIMIT
        async with gateway.stub_of("bob") as bob:
            his = await _conversation(bob)
            for _ in range(LIMIT):
                await _opened(bob.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=his)))
            assert gateway.open_streams.count("bob") == LIMIT
            refused = await _refusal(
                bob.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=his))
            )
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert gateway.open_streams.count("alice") == LIMIT


async def test_a_slot_is_given_back_when_a_stream_is_cancelled_fails_or_completes(gateway: Gateway) -> None:
    """Property: open LIMIT streams, cancel one, and another opens; a stream that fails (NOT_FOUND, or its
    job cancelled) or completes holds nothing afterwards."""
    async with gateway.stub_of("alice") as alice:
        conversation = await _conversation(alice)
        generate = alice.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
        first = await generate.read()
        assert isinstance(first, gateway_pb.GenerateMeditationResponse)
        meditation = first.accepted.meditation
        watch = await _opened(alice.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation)))
        assert gateway.open_streams.count("alice") == LIMIT

        # Cancelled by the client: the server hears of it on its own loop, so wait for the slot to free.
        watch.cancel()
        await wait_until(
            lambda: gateway.open_streams.count("alice") < LIMIT, what="the cancelled stream's slot to free"
        )
        again = await _opened(alice.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation)))
        assert gateway.open_streams.count("alice") == LIMIT

        # Failed: more failing streams than the limit, each refused for what it is, not for the limit.
        again.cancel()
        await wait_until(lambda: gateway.open_streams.count("alice") == 1, what="a slot to free")
        for _ in range(LIMIT + 1):
            missing = await _refusal(
                alice.WatchMeditation(gateway_pb.WatchMeditationRequest(name=MISSING_MEDITATION))
            )
            assert missing.code() == grpc.StatusCode.NOT_FOUND
        assert gateway.open_streams.count("alice") == 1

        # Completed: the stream's last event and status arrive after its slot is given back.
        gateway.content.release.set()
        events = [response async for response in generate]
        assert events[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
        assert gateway.open_streams.count("alice") == 0

        # Failed at the end: a stream whose job is cancelled ends CANCELLED and gives its slot back too.
        gateway.content.release.clear()  # held again, so the cancel finds it running
        generate = alice.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=conversation))
        accepted = await generate.read()
        assert isinstance(accepted, gateway_pb.GenerateMeditationResponse)
        started = await generate.read()  # the job is running (held at its first stage), not queued
        assert isinstance(started, gateway_pb.GenerateMeditationResponse) and started.HasField("stage")
        await alice.CancelMeditation(gateway_pb.CancelMeditationRequest(name=accepted.accepted.meditation))
        cancelled = await _refusal(generate)
        assert cancelled.code() == grpc.StatusCode.CANCELLED
        assert gateway.open_streams.count("alice") == 0
