"""A cancel asked on one replica for a job running on another stops it even when the broadcast never arrives
(Redis pub/sub down): the request is recorded in the job store, and the running replica reads it when it
renews its leases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.backends import ContentClient, MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.work_queue import InProcessWorkQueue
from services.gateway.models import MeditationOptions, MeditationState, Message
from services.gateway.pipeline import MeditationPipeline
from tests.conftest import TEST_OWNER
from tests.gateway.held_jobs import a_running_job
from tests.security.test_stream_limits import TIMEOUTS, HeldContent
from tests.waiting import wait_until

# A heartbeat every second; long enough that the running replica's lease never lapses under a loaded test
# machine (which would let the cancelling replica claim the job and end it itself).
LEASE_SECONDS = 3.0


@dataclass
class Replicas:
    """Two gateway replicas on one job store, each with its own in-process queue: a cancellation one of
    them broadcasts never reaches the other."""

    running: MeditationJobs
    cancelling: MeditationJobs
    content: HeldContent


@pytest.fixture
async def replicas(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, gateway_engine: AsyncEngine
) -> AsyncIterator[Replicas]:
    content = HeldContent(content_channel)
    media = MediaClient(media_channel, TIMEOUTS)

    def replica() -> MeditationJobs:
        return MeditationJobs(
            JobStore(gateway_engine),
            content,
            MeditationPipeline(content, media, TIMEOUTS),
            media=media,
            poll_interval_seconds=0.05,
            lease_seconds=LEASE_SECONDS,
        )

    made = Replicas(running=replica(), cancelling=replica(), content=content)
    try:
        yield made
    finally:
        content.release.set()
        await made.running.close()
        await made.cancelling.close()


async def test_a_cancel_the_running_replica_never_hears_stops_the_job_at_its_next_renewal(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.gateway.jobs.dispatcher")
    conversation = await ContentClient.create_conversation(
        replicas.content, TEST_OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
    )
    name = await replicas.running.start(TEST_OWNER, conversation.name, "", MeditationOptions())
    await wait_until(lambda: replicas.running.dispatcher.recorder_of(name) is not None, what="the job to run")

    # Waits (up to its cancel wait) until the running replica has recorded the end.
    cancelled = await replicas.cancelling.cancel(TEST_OWNER, name)

    assert cancelled.state is MeditationState.CANCELLED
    await wait_until(
        lambda: replicas.running.dispatcher.recorder_of(name) is None, what="the job's task to end"
    )
    assert any("cancelled on another replica" in record.getMessage() for record in caplog.records)


class CountingPipeline:
    """A pipeline that counts the attempts it is given and holds each one."""

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, job: object, meditation: object) -> None:
        self.runs += 1
        await asyncio.Event().wait()


async def test_a_job_whose_cancel_was_recorded_while_it_waited_is_ended_not_run(
    content_channel: grpc.aio.Channel, gateway_engine: AsyncEngine
) -> None:
    """Property: a job taken from the queue with a cancel request on record (asked while it waited, where no
    heartbeat could see it) ends CANCELLED without its pipeline ever running."""
    store = JobStore(gateway_engine)
    queue = InProcessWorkQueue(claim_timeout_seconds=30)
    pipeline = CountingPipeline()
    content = ContentClient(content_channel, TIMEOUTS)
    jobs = MeditationJobs(store, content, pipeline, queue=queue, poll_interval_seconds=0.05)  # type: ignore[arg-type]
    try:
        meditation = await a_running_job(store, queue_lease_seconds=300)
        await store.request_cancel(meditation.name)
        await queue.submit(meditation.name)

        jobs.dispatcher.start()

        async def has_ended() -> bool:
            return (await store.get(meditation.name)).state.is_final

        await wait_until(has_ended, what="the job to end")
        assert (await store.get(meditation.name)).state is MeditationState.CANCELLED
        assert pipeline.runs == 0
    finally:
        await jobs.close()
