"""A cancel that arrives while this replica is launching the job (claimed, not yet running) stops the job once
it runs, rather than finishing it beside a task that then runs on: one end, one writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.backends import ContentClient
from services.gateway.events import Completed, decode_event
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.models import Meditation, MeditationOptions, MeditationState, Message
from tests.conftest import TEST_OWNER
from tests.gateway.held_jobs import jobs_over_held_content
from tests.security.test_stream_limits import HeldContent
from tests.waiting import wait_until


class LaunchPausingStore(JobStore):
    """Pauses the dispatcher between its claim and its launch: the first claim returns the job as it stood
    then, but only once the test says so."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()
        self._has_paused = False

    async def claim(self, name: str, holder: str, lease_seconds: float) -> Meditation | None:
        meditation = await super().claim(name, holder, lease_seconds)
        if meditation is not None and not self._has_paused:
            self._has_paused = True
            self.paused.set()
            await self.resume.wait()
        return meditation


@pytest.fixture
async def jobs_and_store(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, gateway_engine: AsyncEngine
) -> AsyncIterator[tuple[MeditationJobs, LaunchPausingStore, HeldContent]]:
    store = LaunchPausingStore(gateway_engine)
    jobs, content = jobs_over_held_content(store, content_channel, media_channel)
    yield jobs, store, content
    content.release.set()
    store.resume.set()
    await jobs.close()


async def test_a_cancel_during_the_launch_stops_the_job_it_launches(
    jobs_and_store: tuple[MeditationJobs, LaunchPausingStore, HeldContent],
) -> None:
    jobs, store, content = jobs_and_store
    conversation = await ContentClient.create_conversation(
        content, TEST_OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
    )
    name = await jobs.start(TEST_OWNER, conversation.name, "", MeditationOptions())
    await store.paused.wait()  # claimed by this replica, not launched

    cancelling = asyncio.create_task(jobs.cancel(TEST_OWNER, name))
    # The cancel waits for the launch rather than ending the job beside it.
    await asyncio.sleep(0.3)  # a window for a wrong cancel to finish in, not synchronisation
    assert not cancelling.done()
    store.resume.set()
    cancelled = await cancelling

    assert cancelled.state is MeditationState.CANCELLED
    await wait_until(lambda: jobs.dispatcher.recorder_of(name) is None, what="the job's task to end")
    page = await store.list_events(name, 0)
    events = [decode_event(event.sequence, event.event_time, event.payload) for event in page.events]
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    assert [isinstance(event.event, Completed) for event in events].count(True) == 1
    assert isinstance(events[-1].event, Completed)
