"""Media's narration stream is opened with the job, beside its source stage: under load a new call waits
to be taken, and the first sentence should not wait for it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.backends import MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.models import MeditationOptions, MeditationState, Message
from services.gateway.pipeline import MeditationPipeline
from services.gateway.ports import LivePlaylist, SpokenNarration
from tests.conftest import TEST_OWNER
from tests.security.test_stream_limits import TIMEOUTS, HeldContent
from tests.waiting import wait_until


class OpeningMedia(MediaClient):
    """The media service, noting when a narration's stream is opened."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, TIMEOUTS)
        self.narrations_opened = 0

    async def narrate_live(
        self, meditation: str, owner: str, script: AsyncIterator[str]
    ) -> AsyncGenerator[LivePlaylist | SpokenNarration, None]:
        self.narrations_opened += 1
        async for event in super().narrate_live(meditation, owner, script):
            yield event


@pytest.mark.timeout(90)
async def test_the_narration_is_opened_while_the_source_stage_still_runs(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, gateway_engine: AsyncEngine
) -> None:
    content = HeldContent(content_channel)  # every job waits in its source stage until released
    media = OpeningMedia(media_channel)
    jobs = MeditationJobs(
        JobStore(gateway_engine),
        content,
        MeditationPipeline(content, media, TIMEOUTS),
        media=media,
        poll_interval_seconds=0.05,
    )
    try:
        conversation = await content.create_conversation(
            TEST_OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
        )
        name = await jobs.start(TEST_OWNER, conversation.name, "", MeditationOptions())

        await wait_until(lambda: media.narrations_opened == 1, what="the narration's stream to open")
        assert not content.release.is_set()  # still in the source stage
        content.release.set()
        await wait_until(
            lambda: jobs.dispatcher.recorder_of(name) is None, what="the job to finish", timeout_seconds=60
        )
        assert (await jobs.get(TEST_OWNER, name)).state is MeditationState.SUCCEEDED
        assert media.narrations_opened == 1  # the one opened early is the one the narration used
    finally:
        content.release.set()
        await jobs.close()
