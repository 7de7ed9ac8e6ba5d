"""A watcher of a job still waiting in the queue follows it from the moment it runs on this replica, rather
than a poll of its log later."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator
from typing import cast

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.backends import ContentClient, MediaClient
from services.gateway.events import Accepted, SequencedEvent, Stage, StageChanged, StageState
from services.gateway.jobs import JobLimits, MeditationJobs
from services.gateway.models import Meditation, MeditationOptions, Message
from services.gateway.pipeline import JobEvents, MeditationPipeline
from tests.conftest import TEST_OWNER
from tests.gateway.test_slow_watchers import ReadCountingStore
from tests.security.test_stream_limits import TIMEOUTS
from tests.waiting import wait_until

# Far longer than the test may take: a watcher that waited for the next poll would never see the job run.
POLL_INTERVAL_SECONDS = 600.0


class HeldPipeline(MeditationPipeline):
    """Starts each job's source stage, then holds the job until the test finishes it."""

    def __init__(self, content: ContentClient, media: MediaClient) -> None:
        super().__init__(content, media, TIMEOUTS)
        self.finish: collections.defaultdict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)

    async def run(self, job: JobEvents, meditation: Meditation) -> None:
        await job.emit(StageChanged(Stage.SOURCE, StageState.STARTED))
        await self.finish[meditation.name].wait()


@pytest.mark.timeout(60)
async def test_a_watcher_of_a_queued_job_follows_it_as_soon_as_it_runs_here(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, gateway_engine: AsyncEngine
) -> None:
    store = ReadCountingStore(gateway_engine)
    content = ContentClient(content_channel, TIMEOUTS)
    pipeline = HeldPipeline(content, MediaClient(media_channel, TIMEOUTS))
    # One job at a time on this replica: the second waits in the queue while the first runs.
    jobs = MeditationJobs(
        store,
        content,
        pipeline,
        poll_interval_seconds=POLL_INTERVAL_SECONDS,
        limits=JobLimits(max_running_jobs=1),
    )
    try:
        conversation = await content.create_conversation(
            TEST_OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
        )
        first = await jobs.start(TEST_OWNER, conversation.name, "", MeditationOptions())
        await wait_until(lambda: jobs.dispatcher.recorder_of(first) is not None, what="the first job to run")
        second = await jobs.start(TEST_OWNER, conversation.name, "", MeditationOptions())

        # An async generator: closed at the end rather than left suspended.
        events = cast(AsyncGenerator[SequencedEvent, None], jobs.watch(TEST_OWNER, second, after_sequence=0))
        assert isinstance((await anext(events)).event, Accepted)
        following = asyncio.ensure_future(anext(events))
        await wait_until(lambda: store.empty_reads >= 1, what="the watcher to find the log read to its end")
        assert jobs.dispatcher.recorder_of(second) is None and not following.done()

        pipeline.finish[first].set()  # its slot free, the second job runs here
        stage = await asyncio.wait_for(following, timeout=30)
        assert stage.event == StageChanged(Stage.SOURCE, StageState.STARTED)
        await events.aclose()
    finally:
        for event in pipeline.finish.values():
            event.set()
        await jobs.close()
