"""Media hears that the script is complete as soon as the transcript is written, before the gateway records
it: until then media holds the last sentences for a fuller speech request, and the QUICK video waits for
them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.backends import ContentClient, MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.models import JobChanges, MeditationOptions, MeditationState, Message
from services.gateway.pipeline import MeditationPipeline
from services.gateway.ports import LivePlaylist, SpokenNarration
from tests.conftest import TEST_OWNER
from tests.security.test_stream_limits import TIMEOUTS
from tests.waiting import wait_until


class TranscriptHeldStore(JobStore):
    """The job store, except that recording the written transcript waits until `transcript_release` is set."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.transcript_release = asyncio.Event()
        self.transcript_recorded = False

    async def record_event(self, name: str, sequence: int, payload: bytes, changes: JobChanges) -> datetime:
        if changes.transcript is not None:
            await self.transcript_release.wait()
            self.transcript_recorded = True
        return await super().record_event(name, sequence, payload, changes)


class EndNotingMedia(MediaClient):
    """The media service, noting when the script it is sent ends (the gateway's `end` of NarrateLive)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, TIMEOUTS)
        self.script_ended = asyncio.Event()

    async def narrate_live(
        self, meditation: str, owner: str, script: AsyncIterator[str]
    ) -> AsyncGenerator[LivePlaylist | SpokenNarration, None]:
        async def noted() -> AsyncIterator[str]:
            async for text in script:
                yield text
            self.script_ended.set()

        async for event in super().narrate_live(meditation, owner, noted()):
            yield event


@pytest.mark.timeout(90)
async def test_media_hears_the_script_end_before_the_transcript_is_recorded(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, gateway_engine: AsyncEngine
) -> None:
    content = ContentClient(content_channel, TIMEOUTS)
    media = EndNotingMedia(media_channel)
    store = TranscriptHeldStore(gateway_engine)
    jobs = MeditationJobs(
        store, content, MeditationPipeline(content, media, TIMEOUTS), media=media, poll_interval_seconds=0.05
    )
    try:
        conversation = await content.create_conversation(
            TEST_OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
        )
        name = await jobs.start(TEST_OWNER, conversation.name, "", MeditationOptions())

        await asyncio.wait_for(media.script_ended.wait(), timeout=60)
        assert not store.transcript_recorded  # still held: media did not wait for the record
        store.transcript_release.set()
        await wait_until(
            lambda: jobs.dispatcher.recorder_of(name) is None, what="the job to finish", timeout_seconds=60
        )
        assert store.transcript_recorded
        assert (await jobs.get(TEST_OWNER, name)).state is MeditationState.SUCCEEDED
    finally:
        store.transcript_release.set()
        await jobs.close()
