"""The work queue's contract, on both backends: in-process, and a Redis stream shared by replicas."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.gateway.jobs.work_queue import (
    InProcessWorkQueue,
    RedisStreamWorkQueue,
    WorkQueue,
    WorkQueueLostError,
    WorkQueueUnavailableError,
)
from services.redis_connection import RedisOutage, command_timeout_seconds, connect_redis
from tests.test_cache import REDIS_URL, connect_or_skip

CLAIM_TIMEOUT_SECONDS = 0.4


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Replicas:
    """Makes queues as replicas hold them, and lets time pass for their claim timeouts."""

    make: Callable[[], WorkQueue]
    clock: FakeClock | None = None

    async def pass_time(self, seconds: float) -> None:
        """Moves the in-process queue's clock on; Redis keeps its own clock (an entry's idle time is the
        server's), so for it the time really passes."""
        if self.clock is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)


@pytest.fixture(params=["in_process", "redis"])
async def replicas(request: pytest.FixtureRequest) -> AsyncIterator[Replicas]:
    """Queues of either backend: for Redis, each with its own client on the same stream."""
    if request.param == "in_process":
        clock = FakeClock()
        shared = InProcessWorkQueue(claim_timeout_seconds=CLAIM_TIMEOUT_SECONDS, clock=clock)
        yield Replicas(lambda: shared, clock)
        return
    prefix = f"stillpoint:test:{uuid.uuid4().hex}"
    clients: list[Redis] = [await connect_or_skip()]
    queues: list[RedisStreamWorkQueue] = []

    def make() -> WorkQueue:
        queue = RedisStreamWorkQueue(
            clients[0],
            REDIS_URL,
            claim_timeout_seconds=CLAIM_TIMEOUT_SECONDS,
            stream_key=f"{prefix}:jobs",
            dead_letter_key=f"{prefix}:dead",
            cancel_channel=f"{prefix}:cancel",
        )
        queues.append(queue)
        return queue

    try:
        yield Replicas(make)
    finally:
        await clients[0].delete(f"{prefix}:jobs", f"{prefix}:dead")
        await clients[0].aclose()


async def test_a_job_goes_to_one_consumer_and_an_acknowledged_one_never_comes_back(
    replicas: Replicas,
) -> None:
    """Property: each submitted job is delivered to exactly one consumer, once, until acknowledged."""
    first, second = replicas.make(), replicas.make()
    await first.submit("meditations/a")
    delivery = await first.take("gateway-1", wait_seconds=1)
    assert delivery is not None
    assert (delivery.job, delivery.delivery_count) == ("meditations/a", 1)
    assert await second.take("gateway-2", wait_seconds=0.1) is None
    await first.acknowledge(delivery)
    await replicas.pass_time(CLAIM_TIMEOUT_SECONDS + 0.1)
    assert await second.take("gateway-2", wait_seconds=0.1) is None


async def test_several_jobs_are_taken_in_one_go_the_stale_first_each_once(replicas: Replicas) -> None:
    """take_up_to: as many jobs as asked for and waiting, one abandoned by a silent replica before new
    ones, in the order submitted; none delivered twice."""
    first, second = replicas.make(), replicas.make()
    await first.submit("meditations/abandoned")
    abandoned = await first.take("gateway-1", wait_seconds=1)
    assert abandoned is not None
    for name in ("meditations/b", "meditations/c", "meditations/d"):
        await first.submit(name)
    await replicas.pass_time(CLAIM_TIMEOUT_SECONDS + 0.1)  # gateway-1 went silent

    taken = await second.take_up_to("gateway-2", 3, wait_seconds=1)
    rest = await second.take_up_to("gateway-2", 3, wait_seconds=0.1)

    assert [(d.job, d.delivery_count) for d in taken] == [
        ("meditations/abandoned", 2),
        ("meditations/b", 1),
        ("meditations/c", 1),
    ]
    assert [(d.job, d.delivery_count) for d in rest] == [("meditations/d", 1)]
    assert await second.take_up_to("gateway-2", 3, wait_seconds=0.1) == []


async def test_the_trace_context_stored_with_a_job_reaches_the_replica_that_takes_it_over(
    replicas: Replicas,
) -> None:
    """The context goes with the entry: whoever runs the job, on any attempt, continues or links its trace."""
    first, second = replicas.make(), replicas.make()
    stored = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "a=1"}
    await first.submit("meditations/traced", stored)
    delivery = await first.take("gateway-1", wait_seconds=1)
    assert delivery is not None
    assert dict(delivery.trace_context) == stored
    await replicas.pass_time(CLAIM_TIMEOUT_SECONDS + 0.1)
    taken_over = await second.take("gateway-2", wait_seconds=1)
    assert taken_over is not None
    assert (taken_over.job, taken_over.delivery_count) == ("meditations/traced", 2)
    assert dict(taken_over.trace_context) == stored


async def test_a_silent_consumers_job_is_taken_over_after_the_claim_timeout_and_counted(
    replicas: Replicas,
) -> None:
    """Property: a job whose consumer died (no ack, no heartbeat) goes to another consumer, counted as a
    second delivery; before the claim timeout it does not."""
    first, second = replicas.make(), replicas.make()
    await first.submit("meditations/b")
    assert await first.take("gateway-1", wait_seconds=1) is not None
    assert await second.take("gateway-2", wait_seconds=0.05) is None
    await replicas.pass_time(CLAIM_TIMEOUT_SECONDS + 0.1)
    taken_over = await second.take("gateway-2", wait_seconds=0.1)
    assert taken_over is not None
    assert (taken_over.job, taken_over.delivery_count) == ("meditations/b", 2)


async def test_a_heartbeat_keeps_a_long_job_from_being_taken_over_and_never_steals_one_back(
    replicas: Replicas,
) -> None:
    """Property: a job running longer than the claim timeout stays with its consumer while it heartbeats;
    a consumer that lost a job cannot take it back by heartbeating."""
    first, second = replicas.make(), replicas.make()
    await first.submit("meditations/c")
    delivery = await first.take("gateway-1", wait_seconds=1)
    assert delivery is not None
    for _ in range(4):  # 4 × 0.2 s = twice the claim timeout
        await replicas.pass_time(CLAIM_TIMEOUT_SECONDS / 2)
        assert await first.heartbeat("gateway-1", [delivery]) == {delivery.entry_id}
        assert await second.take("gateway-2", wait_seconds=0.01) is None
    await replicas.pass_time(CLAIM_TIMEOUT_SECONDS + 0.1)
    taken_over = await second.take("gateway-2", wait_seconds=0.1)
    assert taken_over is not None
    assert await first.heartbeat("gateway-1", [delivery]) == set()
    await replicas.pass_time(CLAIM_TIMEOUT_SECONDS + 0.1)
    assert await second.heartbeat("gateway-2", [taken_over]) == {taken_over.entry_id}


async def test_a_job_handed_back_at_shutdown_is_taken_at_once_without_counting_an_attempt(
    replicas: Replicas,
) -> None:
    """Property: a graceful hand-back makes the job takeable at once and does not bring it closer to the
    dead-letter limit; a failed attempt's hand-back waits its delay and counts."""
    first, second = replicas.make(), replicas.make()
    await first.submit("meditations/d")
    delivery = await first.take("gateway-1", wait_seconds=1)
    assert delivery is not None
    await first.hand_back("gateway-1", delivery, delay_seconds=0, counts_as_attempt=False)
    again = await second.take("gateway-2", wait_seconds=0.5)
    assert again is not None
    assert again.delivery_count == 1
    await second.hand_back("gateway-2", again, delay_seconds=0.3, counts_as_attempt=True)
    assert await first.take("gateway-1", wait_seconds=0.05) is None
    await replicas.pass_time(0.35)
    retried = await first.take("gateway-1", wait_seconds=0.5)
    assert retried is not None
    assert retried.delivery_count == 2


async def test_a_dead_letter_keeps_the_reason_and_is_never_delivered_again(replicas: Replicas) -> None:
    """Property: a dead-lettered job leaves the queue for the dead-letter list, with its reason."""
    queue = replicas.make()
    await queue.submit("meditations/e")
    delivery = await queue.take("gateway-1", wait_seconds=1)
    assert delivery is not None
    await queue.dead_letter(delivery, "gave up after 3 attempts: ffmpeg could not decode the image")
    await replicas.pass_time(CLAIM_TIMEOUT_SECONDS + 0.1)
    assert await queue.take("gateway-1", wait_seconds=0.1) is None
    letters = await queue.dead_letters(10)
    assert [(letter.job, letter.delivery_count) for letter in letters] == [("meditations/e", 1)]
    assert "could not decode" in letters[0].reason


async def test_the_backlog_counts_only_jobs_nobody_has_taken(replicas: Replicas) -> None:
    """Property: the admission limit sees waiting jobs, not running ones."""
    queue = replicas.make()
    assert await queue.backlog() == 0
    for name in ("meditations/f", "meditations/g", "meditations/h"):
        await queue.submit(name)
    assert await queue.backlog() == 3
    delivery = await queue.take("gateway-1", wait_seconds=1)
    assert delivery is not None
    assert await queue.backlog() == 2
    await queue.acknowledge(delivery)
    assert await queue.backlog() == 2


async def test_a_cancellation_reaches_every_replica(replicas: Replicas) -> None:
    """Property: a cancel published through one replica's queue reaches listeners on the others."""
    first, second = replicas.make(), replicas.make()
    heard: list[str] = []

    async def listen() -> None:
        async for name in second.cancel_requests():
            heard.append(name)
            return

    listener = asyncio.create_task(listen())
    # Published until heard (the listener subscribes in the background), within a deadline.
    deadline = asyncio.get_running_loop().time() + 5
    while not listener.done() and asyncio.get_running_loop().time() < deadline:
        await first.publish_cancel("meditations/i")
        await asyncio.wait({listener}, timeout=0.05)
    assert listener.done()
    assert heard == ["meditations/i"]


@pytest.fixture
async def redis_queue() -> AsyncIterator[tuple[RedisStreamWorkQueue, Redis, str]]:
    """A Redis stream queue on its own keys, with the client that backs it and the stream's key."""
    client = await connect_or_skip()
    prefix = f"stillpoint:test:{uuid.uuid4().hex}"
    queue = RedisStreamWorkQueue(
        client,
        REDIS_URL,
        claim_timeout_seconds=CLAIM_TIMEOUT_SECONDS,
        stream_key=f"{prefix}:jobs",
        dead_letter_key=f"{prefix}:dead",
        cancel_channel=f"{prefix}:cancel",
    )
    await queue.ensure_group()
    try:
        yield queue, client, f"{prefix}:jobs"
    finally:
        await client.delete(f"{prefix}:jobs", f"{prefix}:dead")
        await client.aclose()


async def test_a_queue_that_lost_its_stream_says_so_once_recreates_it_and_delivers_what_came_after(
    redis_queue: tuple[RedisStreamWorkQueue, Redis, str],
) -> None:
    """Property: after Redis lost the stream and its group (a restart without persistence, a flush), `take`
    raises WorkQueueLostError once, so the caller re-enqueues from the database; a job submitted after the
    loss (which made the stream again, without the group) is delivered; a running job's heartbeat holds
    nothing, and its hand-back queues it again."""
    queue, client, stream = redis_queue
    await queue.submit("meditations/running")
    running = await queue.take("gateway-1", wait_seconds=1)
    assert running is not None
    await client.delete(stream)  # Redis restarted empty
    assert await queue.heartbeat("gateway-1", [running]) == set()
    await queue.submit("meditations/after")
    with pytest.raises(WorkQueueLostError):
        await queue.take("gateway-1", wait_seconds=0.1)
    after = await queue.take("gateway-1", wait_seconds=1)
    assert after is not None
    assert after.job == "meditations/after"
    # Done with, so that however slow this runs it cannot go idle past the claim timeout and come back first.
    await queue.acknowledge(after)
    await queue.hand_back("gateway-1", running, delay_seconds=0, counts_as_attempt=True)
    again = await queue.take("gateway-1", wait_seconds=1)
    assert again is not None
    assert (again.job, again.delivery_count) == ("meditations/running", 1)
    assert await queue.take("gateway-1", wait_seconds=0.1) is None


async def test_a_lost_group_on_a_stream_that_remains_is_recreated(
    redis_queue: tuple[RedisStreamWorkQueue, Redis, str],
) -> None:
    """Property: NOGROUP with the stream still there (its group destroyed) is the same loss."""
    queue, client, stream = redis_queue
    await client.xgroup_destroy(stream, "gateways")
    await queue.submit("meditations/kept")
    with pytest.raises(WorkQueueLostError):
        await queue.take("gateway-1", wait_seconds=0.1)
    kept = await queue.take("gateway-1", wait_seconds=1)
    assert kept is not None
    assert kept.job == "meditations/kept"


async def test_a_wait_longer_than_the_clients_command_timeout_ends_empty_not_as_an_outage(
    redis_queue: tuple[RedisStreamWorkQueue, Redis, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Property: an idle consumer asked to wait longer than its client waits for an answer (a gateway's
    5 s wait on redis-py's 5 s socket timeout) gets nothing back, as with a shorter wait: XREADGROUP's
    block ends before the client gives up, so no outage is reported and the next job is still taken."""
    _, _, stream = redis_queue
    # The command timeout from the URL, as an operator may set it; 0.4 s keeps the test short.
    client = await connect_redis(f"{REDIS_URL.split('?')[0]}?socket_timeout=0.4")
    queue = RedisStreamWorkQueue(
        client, REDIS_URL, claim_timeout_seconds=CLAIM_TIMEOUT_SECONDS, stream_key=stream
    )
    caplog.set_level(logging.INFO, logger="services.gateway.jobs.work_queue")
    try:
        assert command_timeout_seconds(client) == 0.4
        assert await queue.take("gateway-1", wait_seconds=1.0) is None
        await queue.submit("meditations/next")
        taken = await queue.take("gateway-1", wait_seconds=1.0)
        assert taken is not None and taken.job == "meditations/next"
    finally:
        await client.aclose()
    assert not [record.getMessage() for record in caplog.records if "unreachable" in record.getMessage()]


async def test_an_unreachable_redis_is_logged_once_jobs_wait_here_and_go_out_when_it_answers(
    redis_queue: tuple[RedisStreamWorkQueue, Redis, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Property: while Redis does not answer, submit still accepts jobs (they wait in the process), the
    backlog still answers, take raises WorkQueueUnavailableError; one line says the outage started and one
    that it ended, however many calls failed; the jobs are then delivered in order."""
    _, client, stream = redis_queue
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    # No retries inside redis-py: each call fails at once, as many calls over a long outage would.
    unreachable = Redis(host="127.0.0.1", port=closed_port, retry=Retry(NoBackoff(), 0))
    queue = RedisStreamWorkQueue(
        unreachable,
        f"127.0.0.1:{closed_port}",
        claim_timeout_seconds=CLAIM_TIMEOUT_SECONDS,
        stream_key=stream,
    )
    caplog.set_level(logging.INFO, logger="services.gateway.jobs.work_queue")
    try:
        for job in ("meditations/one", "meditations/two"):
            await queue.submit(job)
        for _ in range(3):
            with pytest.raises(WorkQueueUnavailableError):
                await queue.take("gateway-1", wait_seconds=0.1)
            assert await queue.backlog() == 2
        # Redis answers again (the same queue, now reaching the one that runs).
        queue._client = client  # the test's stand-in for a restarted server
        taken = [await queue.take("gateway-1", wait_seconds=1) for _ in range(2)]
        assert [delivery.job for delivery in taken if delivery is not None] == [
            "meditations/one",
            "meditations/two",
        ]
    finally:
        await unreachable.aclose()
    lines = [record.getMessage() for record in caplog.records]
    assert len([line for line in lines if "is unreachable" in line]) == 1, lines
    assert len([line for line in lines if "answers again" in line]) == 1, lines


def test_an_outage_is_announced_once_with_its_end_and_a_relapse_while_reconnecting_is_part_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Property: many failures make one "unreachable" line and one "answers again" line; stale pooled
    connections failing just after the end (within the settle time) are the same outage; a failure later
    is a new one. The back-off doubles up to its maximum."""
    clock = FakeClock()
    outage = RedisOutage(
        "job queue",
        "127.0.0.1:1",
        logger=logging.getLogger("test.outage"),
        consequence="jobs wait",
        first_backoff_seconds=0.5,
        max_backoff_seconds=2.0,
        settle_seconds=5.0,
        clock=clock,
    )
    caplog.set_level(logging.INFO, logger="test.outage")
    delays = [outage.failed(ConnectionError()) for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert outage.is_down
    clock.now += 10
    outage.succeeded()
    clock.now += 1
    outage.failed(ConnectionError())  # a stale pooled connection
    outage.succeeded()
    clock.now += 60
    outage.failed(ConnectionError())
    outage.succeeded()
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(": ", 1)[1].split(" (", 1)[0] for line in lines] == [
        "Redis at 127.0.0.1:1 is unreachable",
        "Redis at 127.0.0.1:1 answers again, after 10.0 s",
        "Redis at 127.0.0.1:1 is unreachable",
        "Redis at 127.0.0.1:1 answers again, after 0.0 s",
    ]
