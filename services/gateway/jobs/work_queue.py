"""Work distribution: which replica runs which job, with at-least-once delivery and a dead-letter at the end.

Two implementations behind one interface, chosen by configuration:

- `RedisStreamWorkQueue` (with `REDIS_URL`): one Redis stream and one consumer group shared by every replica.
  `XREADGROUP` hands each entry to one consumer; the entry stays in the group's pending list until the
  consumer acknowledges it (`XACK`, only after the job's result is committed). A heartbeat keeps a running
  entry's idle time low; an entry idle for longer than the claim timeout (its consumer crashed) is taken over
  with `XAUTOCLAIM`, counting a delivery. A job its dispatcher gives up on (see `retry_policy`) goes to a
  dead-letter stream.
  Redis is a transport; the job records in the database are the source of truth. While Redis is unreachable
  a submitted job waits in this process and is sent once Redis answers; one line is logged when the outage
  starts and one when it ends. A Redis that comes back without the stream or the group (it restarted
  without persistence, failed over, or was flushed) answers NOGROUP: the group is recreated, and `take`
  raises WorkQueueLostError once, so that the dispatcher re-enqueues the jobs the database says are waiting.
- `InProcessWorkQueue` (without Redis): the same semantics in memory, for a single replica. What it holds is
  lost with the process; the job records in the database are the backstop (see `MeditationJobs`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from services.redis_connection import RedisOutage, command_timeout_seconds

logger = logging.getLogger(__name__)

STREAM_KEY = "stillpoint:jobs"
DEAD_LETTER_KEY = "stillpoint:jobs:dead"
# Cancellations are broadcast: the replica running the job stops it, whichever replica the client asked.
CANCEL_CHANNEL = "stillpoint:jobs:cancel"
GROUP = "gateways"
T = TypeVar("T")
_CLOCK_MARGIN_MS = 10
# Dead letters are kept for inspection (`XRANGE stillpoint:jobs:dead - +`), the newest this many.
DEAD_LETTERS_KEPT = 10_000
# A stream entry's fields that carry the job's trace context (W3C traceparent, tracestate), beside "job".
_TRACE_FIELD_PREFIX = "trace."


class WorkQueueUnavailableError(Exception):
    """The queue's backing store did not answer; the message names it, never its credentials."""


class WorkQueueLostError(Exception):
    """The queue's backing store lost its entries (a Redis that restarted empty, failed over or was flushed)
    and the queue has been recreated empty: the jobs waiting in the database must be submitted again."""


@dataclass(frozen=True)
class Delivery:
    """One delivery of a job to this consumer: `delivery_count` is 1 the first time, and grows each time the
    job is taken over after a crash or handed back after a failed attempt."""

    entry_id: str
    job: str
    delivery_count: int
    # The trace context stored when the job was queued (services/tracing.py): its attempts continue or link
    # to it. Empty for a job queued again by a janitor, which starts a trace of its own.
    trace_context: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class DeadLetter:
    """A job given up on, and why."""

    job: str
    reason: str
    delivery_count: int


class WorkQueue(Protocol):
    """Jobs waiting to run, and the ones running, across every replica that shares the queue."""

    @property
    def name(self) -> str:
        """What backs the queue, for logs and status."""
        ...

    @property
    def is_shared(self) -> bool:
        """Whether other replicas (and this one after a restart) see the same entries."""
        ...

    async def submit(self, job: str, trace_context: Mapping[str, str] | None = None) -> None:
        """Adds a job for any consumer to take (while the backing store is down, as soon as it is back), with
        the trace context its deliveries carry."""
        ...

    async def take(self, consumer: str, wait_seconds: float) -> Delivery | None:
        """The next job for `consumer`: one whose holder went silent past the claim timeout first, else a new
        one; None when nothing arrives within `wait_seconds`. Raises WorkQueueLostError once after the
        backing store lost its entries, and WorkQueueUnavailableError while it does not answer."""
        ...

    async def take_up_to(self, consumer: str, count: int, wait_seconds: float) -> list[Delivery]:
        """As `take`, up to `count` jobs in one go (those gone silent first): empty when nothing arrives
        within `wait_seconds`. Fifty people arriving together are then a few takes, not fifty in a row."""
        ...

    async def heartbeat(self, consumer: str, deliveries: Sequence[Delivery]) -> set[str]:
        """Marks `consumer`'s running deliveries alive, so nobody takes them over; returns the entry ids it
        still holds (a missing one was taken over by another consumer)."""
        ...

    async def acknowledge(self, delivery: Delivery) -> None:
        """The job's result is committed: the entry is done and removed."""
        ...

    async def hand_back(
        self, consumer: str, delivery: Delivery, *, delay_seconds: float, counts_as_attempt: bool
    ) -> None:
        """Makes a delivery this consumer cannot finish takeable by any consumer after `delay_seconds`.
        A failed attempt counts towards the dead-letter limit; a shutdown does not."""
        ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Moves a job that kept failing to the dead-letter list, with the reason, and acknowledges it."""
        ...

    async def backlog(self) -> int:
        """Jobs submitted and not yet taken by any consumer."""
        ...

    async def dead_letters(self, max_letters: int) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        ...

    async def publish_cancel(self, job: str) -> None:
        """Tells every replica that `job` is cancelled; the one running it stops it."""
        ...

    def cancel_requests(self) -> AsyncIterator[str]:
        """The jobs cancelled from now on, as they are published, until the iterator is closed."""
        ...

    async def aclose(self) -> None:
        """Releases connections."""
        ...


@dataclass
class _Entry:
    job: str
    trace_context: Mapping[str, str]
    delivery_count: int = 0
    consumer: str | None = None
    # When another consumer may take it over: the claim timeout after its delivery or last heartbeat, or
    # the retry delay after a hand-back.
    claimable_at: float = 0.0


class InProcessWorkQueue:
    """The queue in memory, for one replica: the same contract as the Redis stream, without Redis."""

    def __init__(self, *, claim_timeout_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._claim_timeout_seconds = claim_timeout_seconds
        # When entries were delivered and when they go idle: injectable, so tests need not wait out a claim
        # timeout. Waiting for an arrival in `take` is real time whatever the clock.
        self._clock = clock
        self._entries: dict[str, _Entry] = {}  # insertion order is submission order
        self._ids = itertools.count(1)
        self._arrived = asyncio.Condition()
        self._dead: collections.deque[DeadLetter] = collections.deque(maxlen=DEAD_LETTERS_KEPT)
        self._cancel_listeners: set[asyncio.Queue[str]] = set()

    @property
    def name(self) -> str:
        """What backs the queue."""
        return "in-process"

    @property
    def is_shared(self) -> bool:
        """Only this process sees it, and it dies with the process."""
        return False

    async def submit(self, job: str, trace_context: Mapping[str, str] | None = None) -> None:
        """Adds a job."""
        self._entries[str(next(self._ids))] = _Entry(job, dict(trace_context or {}))
        async with self._arrived:
            self._arrived.notify()

    async def take(self, consumer: str, wait_seconds: float) -> Delivery | None:
        """A job gone idle past the claim timeout, else the oldest new one, else None after the wait."""
        taken = await self.take_up_to(consumer, 1, wait_seconds)
        return taken[0] if taken else None

    async def take_up_to(self, consumer: str, count: int, wait_seconds: float) -> list[Delivery]:
        """Up to `count` jobs, those gone idle first, then the oldest new ones; empty after the wait."""
        deadline = time.monotonic() + wait_seconds
        while True:
            taken: list[Delivery] = []
            while len(taken) < count and (delivery := self._take_now(consumer)) is not None:
                taken.append(delivery)
            if taken or time.monotonic() >= deadline:
                return taken
            async with self._arrived:
                # Woken by a submit or a hand-back; the timeout also catches entries going idle.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), min(0.25, deadline - time.monotonic()))

    def _take_now(self, consumer: str) -> Delivery | None:
        now = self._clock()
        stale = next(
            (
                (entry_id, entry)
                for entry_id, entry in self._entries.items()
                if entry.consumer is not None and now >= entry.claimable_at
            ),
            None,
        )
        fresh = next(
            ((entry_id, entry) for entry_id, entry in self._entries.items() if entry.consumer is None), None
        )
        chosen = stale or fresh
        if chosen is None:
            return None
        entry_id, entry = chosen
        entry.consumer, entry.claimable_at = consumer, now + self._claim_timeout_seconds
        entry.delivery_count += 1
        return Delivery(entry_id, entry.job, entry.delivery_count, entry.trace_context)

    async def heartbeat(self, consumer: str, deliveries: Sequence[Delivery]) -> set[str]:
        """Refreshes the deliveries `consumer` still holds."""
        held = set()
        for delivery in deliveries:
            entry = self._entries.get(delivery.entry_id)
            if entry is not None and entry.consumer == consumer:
                entry.claimable_at = self._clock() + self._claim_timeout_seconds
                held.add(delivery.entry_id)
        return held

    async def acknowledge(self, delivery: Delivery) -> None:
        """Removes the entry."""
        self._entries.pop(delivery.entry_id, None)

    async def hand_back(
        self, consumer: str, delivery: Delivery, *, delay_seconds: float, counts_as_attempt: bool
    ) -> None:
        """Makes the entry claimable by any consumer after `delay_seconds` (at most the claim timeout)."""
        entry = self._entries.get(delivery.entry_id)
        if entry is None or entry.consumer != consumer:
            return
        entry.claimable_at = self._clock() + min(delay_seconds, self._claim_timeout_seconds)
        if not counts_as_attempt:
            entry.delivery_count = max(0, entry.delivery_count - 1)
        async with self._arrived:
            self._arrived.notify()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Keeps the letter and removes the entry."""
        self._dead.appendleft(DeadLetter(delivery.job, reason, delivery.delivery_count))
        self._entries.pop(delivery.entry_id, None)

    async def backlog(self) -> int:
        """Entries nobody has taken yet."""
        return sum(1 for entry in self._entries.values() if entry.consumer is None)

    async def dead_letters(self, max_letters: int) -> list[DeadLetter]:
        """The newest dead letters."""
        return list(itertools.islice(self._dead, max_letters))

    async def publish_cancel(self, job: str) -> None:
        """Hands the name to every listener."""
        for listener in self._cancel_listeners:
            listener.put_nowait(job)

    async def cancel_requests(self) -> AsyncIterator[str]:
        """Cancelled job names as they are published."""
        listener: asyncio.Queue[str] = asyncio.Queue()
        self._cancel_listeners.add(listener)
        try:
            while True:
                yield await listener.get()
        finally:
            self._cancel_listeners.discard(listener)

    async def aclose(self) -> None:
        """Nothing to release."""


# Refreshes (or backdates) deliveries only while `consumer` still holds them: a plain XCLAIM would steal an
# entry back from the consumer that took it over. JUSTID keeps the delivery counter unchanged.
_TOUCH_SCRIPT = """
local held = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    if ARGV[4] == '-1' then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'RETRYCOUNT', ARGV[4], 'JUSTID')
    end
    table.insert(held, id)
  end
end
return held
"""


class RedisStreamWorkQueue:
    """The queue as a Redis stream with one consumer group that every replica joins."""

    def __init__(
        self,
        client: Redis,
        address: str,
        *,
        claim_timeout_seconds: float,
        stream_key: str = STREAM_KEY,
        dead_letter_key: str = DEAD_LETTER_KEY,
        group: str = GROUP,
        cancel_channel: str = CANCEL_CHANNEL,
    ) -> None:
        self._client = client
        self._address = address
        self._claim_timeout_ms = _milliseconds(claim_timeout_seconds)
        self._stream = stream_key
        self._dead_letter_key = dead_letter_key
        self._group = group
        self._cancel_channel = cancel_channel
        self._touch = client.register_script(_TOUCH_SCRIPT)
        self._is_group_ready = False
        # NOGROUP was seen (by any command) and `take` has not yet told its caller.
        self._is_lost = False
        # Jobs submitted while Redis did not answer, in submission order: sent by the next `take`.
        self._unsent: dict[str, Mapping[str, str]] = {}
        self._last_backlog = 0
        self._outage = RedisOutage(
            "job queue",
            address,
            logger=logger,
            consequence="jobs are still accepted (the database keeps them) and queued once it is back",
        )
        # XAUTOCLAIM scans the pending list in pages; the cursor carries the scan across calls.
        self._claim_cursor = "0-0"
        # XREADGROUP BLOCK answers only when its wait ends: a wait as long as the client's command timeout
        # reads as a timeout, an outage that is none (logged, backed off from, the connection dropped).
        # Short of it by a second (the answer's trip and a busy loop's delay), or by half a short one.
        timeout = command_timeout_seconds(client)
        self._longest_wait_seconds = None if timeout is None else timeout - min(1.0, timeout / 2)

    @property
    def name(self) -> str:
        """What backs the queue."""
        return f"redis-streams ({self._address})"

    @property
    def is_shared(self) -> bool:
        """Every replica shares the stream, and it outlives any of them."""
        return True

    async def ensure_group(self) -> None:
        """Creates the stream and its consumer group when missing (every replica may race to do it)."""
        try:
            # "0": entries submitted before the group existed are delivered too.
            await self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        except (RedisError, OSError) as error:
            self._outage.failed(error)
            raise self._unavailable(error) from None
        self._outage.succeeded()
        self._is_group_ready = True

    async def submit(self, job: str, trace_context: Mapping[str, str] | None = None) -> None:
        """XADDs the job with its trace context; while Redis does not answer, keeps both here for the next
        `take` to send. (Should this process stop first, the job's record in the database is the backstop: a
        janitor requeues it.)"""
        if self._unsent or self._outage.is_backing_off:
            # Behind the others, and without waiting on a Redis that is down.
            self._unsent[job] = dict(trace_context or {})
            return
        try:
            await self._call(self._client.xadd(self._stream, _entry_fields(job, trace_context or {})))
        except WorkQueueUnavailableError:
            self._unsent[job] = dict(trace_context or {})

    async def _send_unsent(self) -> None:
        while self._unsent:
            job, trace_context = next(iter(self._unsent.items()))
            await self._call(self._client.xadd(self._stream, _entry_fields(job, trace_context)))
            del self._unsent[job]

    async def take(self, consumer: str, wait_seconds: float) -> Delivery | None:
        """One entry (take_up_to)."""
        taken = await self.take_up_to(consumer, 1, wait_seconds)
        return taken[0] if taken else None

    async def take_up_to(self, consumer: str, count: int, wait_seconds: float) -> list[Delivery]:
        """Sends the jobs submitted while Redis was down, then XAUTOCLAIMs entries idle past the claim
        timeout, and XREADGROUPs new ones for the rest of `count` (waiting only when none was claimed); on
        NOGROUP recreates the group and raises WorkQueueLostError."""
        await self._send_unsent()
        try:
            if not self._is_group_ready:
                await self.ensure_group()
            if self._is_lost:
                raise WorkQueueLostError(self._lost_message())
            taken = await self._take_over(consumer, count)
            if len(taken) == count:
                return taken
            answer: Any = await self._call(
                self._client.xreadgroup(
                    self._group,
                    consumer,
                    {self._stream: ">"},
                    count=count - len(taken),
                    # Whatever was taken over goes to work now, not after a wait for more.
                    block=None if taken else _milliseconds(self._bounded_wait(wait_seconds)),
                )
            )
        except ResponseError as error:
            if not _is_missing_group(error):
                raise
            self._mark_lost()
            # "0" in ensure_group: entries submitted since Redis came back (the stream without the group)
            # are delivered too.
            await self.ensure_group()
            self._is_lost = False
            raise WorkQueueLostError(self._lost_message()) from None
        except WorkQueueLostError:
            self._is_lost = False
            raise
        for _, entries in answer or []:
            for entry_id, fields in entries:
                taken.append(Delivery(_text(entry_id), _text(fields[b"job"]), 1, _trace_context(fields)))
        return taken

    def _bounded_wait(self, wait_seconds: float) -> float:
        """`wait_seconds`, cut short of the client's command timeout."""
        if self._longest_wait_seconds is None:
            return wait_seconds
        return min(wait_seconds, self._longest_wait_seconds)

    async def _take_over(self, consumer: str, count: int) -> list[Delivery]:
        answer: Any = await self._call(
            self._client.xautoclaim(
                self._stream,
                self._group,
                consumer,
                min_idle_time=self._claim_timeout_ms,
                start_id=self._claim_cursor,
                count=count,
            )
        )
        cursor, entries = answer[0], answer[1]
        self._claim_cursor = _text(cursor)
        taken: list[Delivery] = []
        for entry_id, fields in entries:
            if not fields:
                continue
            pending = await self._call(
                self._client.xpending_range(self._stream, self._group, entry_id, entry_id, 1, consumer)
            )
            delivered = int(pending[0]["times_delivered"]) if pending else 1
            taken.append(Delivery(_text(entry_id), _text(fields[b"job"]), delivered, _trace_context(fields)))
        return taken

    async def heartbeat(self, consumer: str, deliveries: Sequence[Delivery]) -> set[str]:
        """Resets the idle time of the deliveries `consumer` still holds."""
        if not deliveries:
            return set()
        try:
            held = await self._call(
                self._touch(
                    keys=[self._stream],
                    args=[self._group, consumer, 0, -1, *(delivery.entry_id for delivery in deliveries)],
                )
            )
        except ResponseError as error:
            if not _is_missing_group(error):
                raise
            self._mark_lost()  # nothing is held any more; the leases in the database still are
            return set()
        return {_text(entry_id) for entry_id in held}

    async def acknowledge(self, delivery: Delivery) -> None:
        """XACK and XDEL in one transaction: the stream keeps only waiting and running entries. Without
        Redis the entry stays: once it goes idle, whoever takes it finds the job final and acknowledges it."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, self._group, delivery.entry_id)
            pipe.xdel(self._stream, delivery.entry_id)
            with contextlib.suppress(WorkQueueUnavailableError):
                await self._call(pipe.execute())

    async def hand_back(
        self, consumer: str, delivery: Delivery, *, delay_seconds: float, counts_as_attempt: bool
    ) -> None:
        """Backdates the entry's idle time so XAUTOCLAIM takes it after `delay_seconds`; a shutdown also
        winds its delivery counter back, as the next claim counts one more."""
        # The margin: inside a script Redis reads its clock once, so an idle time set to exactly the claim
        # timeout can read a millisecond short of it afterwards.
        idle_ms = max(0, self._claim_timeout_ms - _milliseconds(delay_seconds) + _CLOCK_MARGIN_MS)
        retry_count = delivery.delivery_count if counts_as_attempt else max(0, delivery.delivery_count - 1)
        try:
            held = await self._call(
                self._touch(
                    keys=[self._stream], args=[self._group, consumer, idle_ms, retry_count, delivery.entry_id]
                )
            )
        except ResponseError as error:
            if not _is_missing_group(error):
                raise
            self._mark_lost()
            held = []
        except WorkQueueUnavailableError:
            # Should Redis come back empty the entry is gone: queue the job again (a duplicate, should it
            # come back whole, is acknowledged by whoever takes it second).
            self._unsent[delivery.job] = delivery.trace_context
            return
        if not held and not await self._call(
            self._client.xrange(self._stream, delivery.entry_id, delivery.entry_id)
        ):
            # The queue lost the entry while the job ran (not another consumer taking it over): a fresh one
            # carries the job on, its delivery count starting again.
            await self.submit(delivery.job, delivery.trace_context)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """XADDs the letter to the dead-letter stream, then XACKs and XDELs the entry, in one transaction."""
        letter: dict[Any, Any] = {
            "job": delivery.job,
            "reason": reason,
            "delivery_count": str(delivery.delivery_count),
        }
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(self._dead_letter_key, letter, maxlen=DEAD_LETTERS_KEPT, approximate=True)
            pipe.xack(self._stream, self._group, delivery.entry_id)
            pipe.xdel(self._stream, delivery.entry_id)
            try:
                await self._call(pipe.execute())
            except WorkQueueUnavailableError as error:
                # The job is recorded FAILED, with the reason, in the database; only this copy is lost.
                logger.warning("%s: dead letter not kept (%s): %s", delivery.job, error, reason)

    async def backlog(self) -> int:
        """Entries in the stream that no consumer holds (acknowledged entries are deleted), and jobs waiting
        here to be sent. While Redis does not answer: the last count, and those waiting here."""
        if self._outage.is_backing_off:
            return self._last_backlog + len(self._unsent)
        try:
            if not self._is_group_ready:
                await self.ensure_group()
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xlen(self._stream)
                pipe.xpending(self._stream, self._group)
                try:
                    length, pending = await self._call(pipe.execute())
                except ResponseError as error:
                    if not _is_missing_group(error):
                        raise
                    self._mark_lost()
                    return len(self._unsent)
        except WorkQueueUnavailableError:
            return self._last_backlog + len(self._unsent)
        self._last_backlog = max(0, int(length) - int(pending["pending"]))
        return self._last_backlog + len(self._unsent)

    async def dead_letters(self, max_letters: int) -> list[DeadLetter]:
        """XREVRANGE of the dead-letter stream."""
        entries: Any = await self._call(self._client.xrevrange(self._dead_letter_key, count=max_letters))
        return [
            DeadLetter(_text(fields[b"job"]), _text(fields[b"reason"]), int(fields[b"delivery_count"]))
            for _, fields in entries
        ]

    async def publish_cancel(self, job: str) -> None:
        """PUBLISHes the name on the cancel channel."""
        await self._call(self._client.publish(self._cancel_channel, job))

    async def cancel_requests(self) -> AsyncIterator[str]:
        """SUBSCRIBEs to the cancel channel; raises WorkQueueUnavailableError when Redis goes away."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await self._call(pubsub.subscribe(self._cancel_channel))
            while True:
                message: Any = await self._call(pubsub.get_message(timeout=1.0))
                if message is not None and message.get("type") == "message":
                    yield _text(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    async def aclose(self) -> None:
        """Closes the client."""
        await self._client.aclose()

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            result = await awaitable
        except ResponseError:
            self._outage.succeeded()  # it answered, with an error
            raise
        except (RedisError, OSError) as error:
            self._outage.failed(error)
            raise self._unavailable(error) from None
        self._outage.succeeded()
        return result

    def _mark_lost(self) -> None:
        self._is_lost = True
        self._is_group_ready = False
        self._claim_cursor = "0-0"

    def _lost_message(self) -> str:
        return (
            f"the job queue at {self._address} lost its entries (Redis restarted empty, failed over or "
            "was flushed); recreated it"
        )

    def _unavailable(self, error: BaseException) -> WorkQueueUnavailableError:
        return WorkQueueUnavailableError(
            f"the job queue at {self._address} did not answer: {type(error).__name__}"
        )


def _is_missing_group(error: ResponseError) -> bool:
    """NOGROUP: the stream or its consumer group is gone (also when a script's command says so)."""
    return "NOGROUP" in str(error)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_fields(job: str, trace_context: Mapping[str, str]) -> dict[Any, Any]:
    return {"job": job, **{_TRACE_FIELD_PREFIX + key: value for key, value in trace_context.items()}}


def _trace_context(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    prefix = _TRACE_FIELD_PREFIX.encode()
    return {
        _text(key[len(prefix) :]): _text(value) for key, value in fields.items() if key.startswith(prefix)
    }


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))
