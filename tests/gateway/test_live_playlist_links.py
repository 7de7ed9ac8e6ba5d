"""The live playlist's URI comes with it from media, made for the owner as it is published: its readers get
it with no signing call of the gateway's, and the log keeps the storage key alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import httpx
import pytest

from services import serving
from services.cli import gateway_channel
from services.gateway.api_keys import ApiKeyStore
from services.gateway.authentication import Authenticator
from services.gateway.backends import ContentClient, MediaClient
from services.gateway.events import PlaylistReady, decode_event
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.conftest import GATEWAY_SERVICE, TEST_OWNER
from tests.gateway.test_servicer import collect, create_conversation


class _SigningRecorded(MediaClient):
    """The real media client, remembering every key the gateway asks media to sign."""

    def __init__(self, channel: grpc.aio.Channel, timeouts: StageTimeouts) -> None:
        super().__init__(channel, timeouts)
        self.signed: list[str] = []

    async def asset_uris(self, storage_keys: Sequence[str], owner: str) -> list[str]:
        self.signed.extend(storage_keys)
        return await super().asset_uris(storage_keys, owner)


@pytest.fixture
async def signing_recorded(media_channel: grpc.aio.Channel) -> _SigningRecorded:
    return _SigningRecorded(media_channel, StageTimeouts())


@pytest.fixture
async def gateway(
    content_channel: grpc.aio.Channel,
    signing_recorded: _SigningRecorded,
    job_store: JobStore,
    api_keys: ApiKeyStore,
) -> AsyncIterator[gateway_grpc.GatewayServiceStub]:
    timeouts = StageTimeouts()
    content = ContentClient(content_channel, timeouts)
    jobs = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, signing_recorded, timeouts),
        media=signing_recorded,
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
    try:
        async with gateway_channel(
            f"127.0.0.1:{running.port}", (await api_keys.create(TEST_OWNER)).key
        ) as channel:
            yield gateway_grpc.GatewayServiceStub(channel)
    finally:
        await running.stop(0)
        await jobs.close()


async def test_the_live_playlist_reaches_its_reader_with_the_uri_media_made(
    gateway: gateway_grpc.GatewayServiceStub, signing_recorded: _SigningRecorded, job_store: JobStore
) -> None:
    name = await create_conversation(gateway)
    responses = await collect(
        gateway.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=name))
    )
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    meditation = responses[0].accepted.meditation
    [live] = [r.playlist_ready for r in responses if r.HasField("playlist_ready")]
    # Media made it for the owner: a link that serves the playlist, and the gateway signed it for no one.
    async with httpx.AsyncClient(timeout=10) as client:
        fetched = await client.get(live.uri)
    assert fetched.status_code == 200 and fetched.text.startswith("#EXTM3U")
    assert signing_recorded.signed, "the other assets are signed as they are read"
    [(record, logged)] = [
        (stored, event)
        for stored in (await job_store.list_events(meditation, 0)).events
        if isinstance(
            event := decode_event(stored.sequence, stored.event_time, stored.payload).event, PlaylistReady
        )
    ]
    assert logged.uri == "" and b"http" not in record.payload, "a URI is never stored"
    playlist_key = logged.storage_key
    assert playlist_key not in signing_recorded.signed

    # Read again from the log, the event's URI is made for its reader then, as every asset's is.
    replayed = await collect(gateway.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation)))
    [again] = [r.playlist_ready for r in replayed if r.HasField("playlist_ready")]
    assert again.uri.startswith("http")
    assert signing_recorded.signed.count(playlist_key) == 1
