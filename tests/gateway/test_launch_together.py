"""Jobs that arrive together are claimed and launched together: each launch is a few database round trips,
and one after another they held the fiftieth of fifty people arriving at once in the queue for seconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.backends import ContentClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.models import Meditation, MeditationOptions, Message
from tests.conftest import TEST_OWNER
from tests.gateway.held_jobs import jobs_over_held_content
from tests.security.test_stream_limits import HeldContent
from tests.waiting import wait_until

JOBS = 3  # within one owner's limit of running jobs


class LaunchMeetingStore(JobStore):
    """Holds each launch after its claim until JOBS launches are held at once: a dispatcher that launches one
    job after another never gets there."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.launches_held = 0
        self.all_held = asyncio.Event()

    async def claim(self, name: str, holder: str, lease_seconds: float) -> Meditation | None:
        meditation = await super().claim(name, holder, lease_seconds)
        if meditation is not None and not self.all_held.is_set():
            self.launches_held += 1
            if self.launches_held == JOBS:
                self.all_held.set()
            await self.all_held.wait()
        return meditation


@pytest.fixture
async def jobs_and_store(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, gateway_engine: AsyncEngine
) -> AsyncIterator[tuple[MeditationJobs, LaunchMeetingStore, HeldContent]]:
    store = LaunchMeetingStore(gateway_engine)
    jobs, content = jobs_over_held_content(store, content_channel, media_channel)
    yield jobs, store, content
    content.release.set()
    store.all_held.set()
    await jobs.close()


async def test_jobs_that_arrive_together_are_launched_together(
    jobs_and_store: tuple[MeditationJobs, LaunchMeetingStore, HeldContent],
) -> None:
    jobs, store, content = jobs_and_store
    names = []
    for index in range(JOBS):
        conversation = await ContentClient.create_conversation(
            content, TEST_OWNER, "", [Message(role="user", text=f"The sea was calm on day {index}.")], ""
        )
        names.append(await jobs.start(TEST_OWNER, conversation.name, "", MeditationOptions()))
    async with asyncio.timeout(20):
        await store.all_held.wait()
    assert store.launches_held == JOBS
    await wait_until(
        lambda: all(jobs.dispatcher.recorder_of(name) is not None for name in names),
        what="every job to run",
    )
