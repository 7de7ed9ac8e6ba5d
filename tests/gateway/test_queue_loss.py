"""A Redis that comes back empty loses the jobs waiting in the queue: the gateway submits them again from
its job store at once, rather than after the queue's lease (ten job leases) when a janitor would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.backends import ContentClient, MediaClient
from services.gateway.events import Accepted, encode_event
from services.gateway.jobs import MeditationJobs, claim_timeout_seconds
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.work_queue import RedisStreamWorkQueue
from services.gateway.models import JobChanges, MeditationOptions, Message
from services.gateway.pipeline import MeditationPipeline
from tests.conftest import TEST_OWNER
from tests.security.test_stream_limits import TIMEOUTS, HeldContent
from tests.test_cache import REDIS_URL, connect_or_skip
from tests.waiting import wait_until

# Long enough that neither a lease nor the queue's lease (ten of them) lapses during the test: only the
# loss can bring the job back.
LEASE_SECONDS = 30.0


@dataclass
class Replica:
    """A gateway replica on a Redis stream of the test's own, with the store and stream behind it."""

    jobs: MeditationJobs
    store: JobStore
    content: HeldContent
    redis: Redis
    stream: str


@pytest.fixture
async def replica(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, gateway_engine: AsyncEngine
) -> AsyncIterator[Replica]:
    prefix = f"stillpoint:test:{uuid.uuid4().hex}"
    queue = RedisStreamWorkQueue(
        await connect_or_skip(),
        REDIS_URL,
        claim_timeout_seconds=claim_timeout_seconds(LEASE_SECONDS),
        stream_key=f"{prefix}:jobs",
        dead_letter_key=f"{prefix}:dead",
        cancel_channel=f"{prefix}:cancel",
    )
    await queue.ensure_group()  # as the gateway does at start-up
    store = JobStore(gateway_engine)
    content = HeldContent(content_channel)
    media = MediaClient(media_channel, TIMEOUTS)
    jobs = MeditationJobs(
        store,
        content,
        MeditationPipeline(content, media, TIMEOUTS),
        media=media,
        queue=queue,
        poll_interval_seconds=0.05,
        lease_seconds=LEASE_SECONDS,
    )
    redis = await connect_or_skip()
    try:
        yield Replica(jobs, store, content, redis, f"{prefix}:jobs")
    finally:
        content.release.set()
        await jobs.close()
        await redis.delete(f"{prefix}:jobs", f"{prefix}:dead")
        await redis.aclose()


async def test_a_job_waiting_in_a_queue_that_redis_lost_is_delivered_at_once(replica: Replica) -> None:
    """Property: a job queued (recorded, submitted, taken by nobody) when Redis restarted empty is submitted
    again as soon as a dispatcher notices the loss, and runs — long before its queue lease lapses."""
    conversation = await ContentClient.create_conversation(
        replica.content, TEST_OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
    )
    # Accepted as `MeditationJobs.start` does, without starting this replica's dispatcher.
    meditation, _ = await replica.store.create(
        conversation=conversation.name,
        owner=TEST_OWNER,
        request_id="",
        options=MeditationOptions(),
        queue_lease_seconds=LEASE_SECONDS * 10,
    )
    name = meditation.name
    accepted = Accepted(meditation=name, conversation=meditation.conversation)
    await replica.store.record_event(name, 1, encode_event(0.0, accepted), JobChanges())
    await replica.jobs.queue.submit(name)
    assert await replica.redis.xlen(replica.stream) == 1

    await replica.redis.delete(replica.stream)  # Redis restarted empty: the stream and its group are gone
    assert name not in await replica.store.list_claimable(10)  # no janitor would look at it for minutes

    replica.jobs.dispatcher.start()
    await wait_until(
        lambda: replica.jobs.dispatcher.recorder_of(name) is not None,
        what="the lost job to be delivered and run",
        timeout_seconds=LEASE_SECONDS / 2,
    )
    assert not (await replica.store.get(name)).state.is_final  # running, held at its first stage
