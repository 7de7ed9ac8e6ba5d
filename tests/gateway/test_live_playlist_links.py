"""The live playlist's URI comes with it from media, made for the owner as it is published: its readers get
it with no signing call of the gateway's, and the log keeps the storage key alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from services.gateway.backends import MediaClient
from services.gateway.events import PlaylistReady, decode_event
from services.gateway.jobs.recorder import JobRecorder, LiveWatcher
from services.gateway.jobs.store import JobStore
from services.media.live import LiveNarration
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.gateway.test_servicer import collect, create_conversation


@pytest.fixture
def signed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key the gateway asks media to sign, through the real client."""
    keys: list[str] = []
    sign = MediaClient.asset_uris

    async def recorded(client: MediaClient, storage_keys: Sequence[str], owner: str) -> list[str]:
        keys.extend(storage_keys)
        return await sign(client, storage_keys, owner)

    monkeypatch.setattr(MediaClient, "asset_uris", recorded)
    return keys


@pytest.fixture
def read_before_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """Media publishes the playlist only once the reader's stream follows the job live, as it nearly always
    does by then: it has subscribed to the job's live events and then read the log to its end
    (MeditationJobs.watch), and the event reaches it live. On a loaded machine the playlist came first now
    and then, and the reader had the event from the log, signed by the gateway as every replayed event is.
    A reader's first read of the log can come before the job runs on its replica, with nothing yet to
    subscribe to: only an empty page read after a subscription lets the playlist through."""
    read = asyncio.Event()
    subscribed = False
    list_events = JobStore.list_events
    watch = JobRecorder.watch
    write_playlist = LiveNarration._write_playlist

    def watched(recorder: JobRecorder) -> LiveWatcher:
        nonlocal subscribed
        subscribed = True
        return watch(recorder)

    async def listed(store: JobStore, *args: Any, **kwargs: Any) -> Any:
        page = await list_events(store, *args, **kwargs)
        if subscribed and not page.events:  # read to the end, subscribed: it follows the job live from here
            read.set()
        return page

    async def written(narration: LiveNarration, *args: Any, **kwargs: Any) -> None:
        await read.wait()
        await write_playlist(narration, *args, **kwargs)

    monkeypatch.setattr(JobRecorder, "watch", watched)
    monkeypatch.setattr(JobStore, "list_events", listed)
    monkeypatch.setattr(LiveNarration, "_write_playlist", written)


@pytest.mark.usefixtures("read_before_published")
async def test_the_live_playlist_reaches_its_reader_with_the_uri_media_made(
    gateway_stub: gateway_grpc.GatewayServiceStub, signed: list[str], job_store: JobStore
) -> None:
    name = await create_conversation(gateway_stub)
    responses = await collect(
        gateway_stub.GenerateMeditation(gateway_pb.GenerateMeditationRequest(conversation=name))
    )
    assert responses[-1].completed.state == gateway_pb.MEDITATION_STATE_SUCCEEDED
    meditation = responses[0].accepted.meditation
    [live] = [r.playlist_ready for r in responses if r.HasField("playlist_ready")]
    # Media made it for the owner: a link that serves the playlist, and the gateway signed it for no one.
    async with httpx.AsyncClient(timeout=10) as client:
        fetched = await client.get(live.uri)
    assert fetched.status_code == 200 and fetched.text.startswith("#EXTM3U")
    assert signed, "the other assets are signed as they are read"
    [(record, logged)] = [
        (stored, event)
        for stored in (await job_store.list_events(meditation, 0)).events
        if isinstance(
            event := decode_event(stored.sequence, stored.event_time, stored.payload).event, PlaylistReady
        )
    ]
    assert logged.uri == "" and b"http" not in record.payload, "a URI is never stored"
    playlist_key = logged.storage_key
    assert playlist_key not in signed

    # Read again from the log, the event's URI is made for its reader then, as every asset's is.
    replayed = await collect(gateway_stub.WatchMeditation(gateway_pb.WatchMeditationRequest(name=meditation)))
    [again] = [r.playlist_ready for r in replayed if r.HasField("playlist_ready")]
    assert again.uri.startswith("http")
    assert signed.count(playlist_key) == 1
