"""A watcher that stops reading is dropped once it leaves too many live events unread: its stream ends with
ABORTED naming where to resume, other watchers are unaffected, and resuming loses no event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.backends import ContentClient, MediaClient
from services.gateway.errors import FailureKind, FellBehindError
from services.gateway.events import Completed, SequencedEvent, Stage, StageChanged, StageState
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.recorder import MAX_UNREAD_EVENTS
from services.gateway.jobs.store import JobStore, StoredEventPage
from services.gateway.models import Meditation, MeditationOptions, Message
from services.gateway.pipeline import JobEvents, MeditationPipeline
from services.gateway.servicer import _STATUS
from tests.conftest import TEST_OWNER
from tests.security.test_stream_limits import TIMEOUTS
from tests.waiting import wait_until

# More events than a watcher may leave unread.
EVENT_COUNT = MAX_UNREAD_EVENTS + 40


class ChattyPipeline(MeditationPipeline):
    """A pipeline that records EVENT_COUNT stage events once the test says `go`, then ends when it says
    `finish`."""

    def __init__(self, content: ContentClient, media: MediaClient) -> None:
        super().__init__(content, media, TIMEOUTS)
        self.go = asyncio.Event()
        self.emitted = asyncio.Event()
        self.finish = asyncio.Event()

    async def run(self, job: JobEvents, meditation: Meditation) -> None:
        await self.go.wait()
        for _ in range(EVENT_COUNT):
            await job.emit(StageChanged(Stage.SOURCE, StageState.STARTED))
        self.emitted.set()
        await self.finish.wait()


class ReadCountingStore(JobStore):
    """Counts reads of a job's log that found nothing new: after one, a watcher waits on live events."""

    empty_reads = 0

    async def list_events(self, name: str, after_sequence: int, max_events: int = 1000) -> StoredEventPage:
        page = await super().list_events(name, after_sequence, max_events)
        if not page.events:
            self.empty_reads += 1
        return page


@dataclass
class Fixture:
    jobs: MeditationJobs
    store: ReadCountingStore
    pipeline: ChattyPipeline
    content: ContentClient


@pytest.fixture
async def fixture(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, gateway_engine: AsyncEngine
) -> AsyncIterator[Fixture]:
    store = ReadCountingStore(gateway_engine)
    content = ContentClient(content_channel, TIMEOUTS)
    pipeline = ChattyPipeline(content, MediaClient(media_channel, TIMEOUTS))
    jobs = MeditationJobs(store, content, pipeline, poll_interval_seconds=0.05)
    yield Fixture(jobs, store, pipeline, content)
    pipeline.go.set()
    pipeline.finish.set()
    await jobs.close()


async def _until_completed(events: AsyncIterator[SequencedEvent]) -> list[SequencedEvent]:
    read = []
    async for event in events:
        read.append(event)
        if isinstance(event.event, Completed):
            break
    return read


async def _read_into(events: AsyncIterator[SequencedEvent], read: list[SequencedEvent]) -> None:
    async for event in events:
        read.append(event)


@pytest.mark.timeout(120)
async def test_a_watcher_that_stops_reading_is_dropped_and_resumes_without_a_gap(fixture: Fixture) -> None:
    jobs, store, pipeline = fixture.jobs, fixture.store, fixture.pipeline
    conversation = await fixture.content.create_conversation(
        TEST_OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
    )
    name = await jobs.start(TEST_OWNER, conversation.name, "", MeditationOptions())
    await wait_until(lambda: jobs.dispatcher.recorder_of(name) is not None, what="the job to run")

    # A reader that keeps up: it replays `accepted`, then waits on live events.
    reader = asyncio.create_task(_until_completed(jobs.watch(TEST_OWNER, name, after_sequence=0)))
    await wait_until(lambda: store.empty_reads >= 1, what="the reader to follow live events")
    # A reader that takes one live event and then stops reading.
    stalled = jobs.watch(TEST_OWNER, name, after_sequence=1)
    first = asyncio.ensure_future(anext(stalled))
    await wait_until(lambda: store.empty_reads >= 2, what="the stalled reader to follow live events")
    recorder = jobs.dispatcher.recorder_of(name)
    assert recorder is not None and recorder.watchers == 2

    pipeline.go.set()
    await pipeline.emitted.wait()
    assert recorder.watchers == 1  # the stalled one was dropped; the other is still following

    # The stalled reader gets what it held (the bound), then the end of its stream, naming where to resume.
    stalled_events = [await first]
    with pytest.raises(FellBehindError) as dropped:
        await _read_into(stalled, stalled_events)
    assert dropped.value.kind is FailureKind.ABORTED
    assert _STATUS[dropped.value.kind] is grpc.StatusCode.ABORTED
    last_sequence = stalled_events[-1].sequence
    assert dropped.value.last_sequence == last_sequence
    assert f"after_sequence={last_sequence}" in dropped.value.message
    assert len(stalled_events) == MAX_UNREAD_EVENTS + 1

    pipeline.finish.set()
    resumed = await _until_completed(jobs.watch(TEST_OWNER, name, after_sequence=last_sequence))
    following = await reader

    every_sequence = list(range(1, EVENT_COUNT + 3))  # accepted, the stage events, completed
    assert [event.sequence for event in following] == every_sequence
    assert [1] + [event.sequence for event in stalled_events + resumed] == every_sequence
    assert isinstance(resumed[-1].event, Completed)
