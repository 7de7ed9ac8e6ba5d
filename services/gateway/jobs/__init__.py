"""Meditation jobs: start one, watch its events, read it, list them, cancel it.

The parts, each in its own module: `store` (the job tables, owned by the gateway), `recorder` (numbering,
persistence and fan-out of a running job's events), `dispatcher` (queue, slots, leases and heartbeats, the
janitor, cancellation, shutdown), `retry_policy` (what follows a failed attempt) and `work_queue` (where jobs
wait for a replica). This facade is what the servicer calls.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from services import metrics, tracing
from services.gateway.asset_links import AssetLinks
from services.gateway.errors import FailureKind, FellBehindError, GatewayError
from services.gateway.events import Accepted, Completed, SequencedEvent, decode_event, encode_event
from services.gateway.jobs.dispatcher import JobDispatcher, claim_timeout_seconds
from services.gateway.jobs.retry_policy import RetryPolicy
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.work_queue import InProcessWorkQueue, WorkQueue, WorkQueueUnavailableError
from services.gateway.models import JobChanges, Meditation, MeditationOptions, MeditationPage, PageCursor
from services.gateway.pipeline import MeditationPipeline
from services.gateway.ports import ContentPort, MediaPort

__all__ = ["JobLimits", "MeditationJobs", "claim_timeout_seconds"]

# With a shared queue (Redis), the queue loses nothing, so the janitors' requeue is only a backstop (a Redis
# that restarted without persistence): they leave a queued job alone this many leases.
_SHARED_QUEUE_LEASE_FACTOR = 10


@dataclass(frozen=True)
class JobLimits:
    """How much work a replica takes on, and how often a job is attempted."""

    max_jobs_per_owner: int = 4  # running at once, across every replica
    max_running_jobs: int = 64  # on this replica; the rest wait in the queue
    max_queued_jobs: int = 200  # waiting, across every replica; past it, RESOURCE_EXHAUSTED
    max_attempts: int = 3  # after this many failed attempts a job is dead-lettered
    # What one owner's meditations may take in storage (as measured when each succeeded); 0: no limit.
    max_stored_bytes_per_owner: int = 5 * 1024**3
    retry_delay_seconds: float = 2.0  # before attempt n + 1: this × n

    @property
    def retry_policy(self) -> RetryPolicy:
        """The policy that decides what follows a failed attempt."""
        return RetryPolicy(max_attempts=self.max_attempts, retry_delay_seconds=self.retry_delay_seconds)


def _request_sha256(conversation: str, options: MeditationOptions) -> str:
    """What a GenerateMeditation request asked for, as a hash: a retry with its request_id must match it."""
    request = {
        "conversation": conversation,
        "image_aspect": options.image_aspect.value,
        "skip_cache": options.skip_cache,
    }
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def _megabytes(size_bytes: int) -> str:
    return f"{size_bytes / 1024**2:.1f}"


class MeditationJobs:
    """Accepts jobs into the work queue, replays and follows their logs, and cancels them.

    A job is recorded in the gateway's job store and submitted to the queue; any replica's dispatcher may
    take it and run it. Every event is committed to the job's log before anyone sees it, so a watcher
    replays the log and then follows the live events, across attempts and replicas.
    """

    def __init__(
        self,
        store: JobStore,
        content: ContentPort,
        pipeline: MeditationPipeline,
        *,
        media: MediaPort | None = None,
        queue: WorkQueue | None = None,
        poll_interval_seconds: float = 0.5,
        lease_seconds: float = 30.0,
        holder: str | None = None,
        limits: JobLimits | None = None,
    ) -> None:
        self._store = store
        self._content = content
        # Asset URIs are made for each reader as it reads, never stored.
        self._links = AssetLinks(media)
        self._queue = queue or InProcessWorkQueue(claim_timeout_seconds=claim_timeout_seconds(lease_seconds))
        self._poll_interval_seconds = poll_interval_seconds
        self._limits = limits = limits or JobLimits()
        # While the queue holds a job, janitors leave it alone this long.
        self._queue_lease_seconds = lease_seconds * (
            _SHARED_QUEUE_LEASE_FACTOR if self._queue.is_shared else 1
        )
        self.dispatcher = JobDispatcher(
            store,
            pipeline,
            self._queue,
            media=media,
            # One identity per process: its leases and queue deliveries tell other replicas it holds a job.
            holder=holder or f"gateway-{secrets.token_hex(6)}",
            lease_seconds=lease_seconds,
            queue_lease_seconds=self._queue_lease_seconds,
            max_running_jobs=limits.max_running_jobs,
            retry_policy=limits.retry_policy,
            poll_interval_seconds=poll_interval_seconds,
        )

    @property
    def holder(self) -> str:
        """This replica's identity in leases and queue deliveries."""
        return self.dispatcher.holder

    @property
    def queue(self) -> WorkQueue:
        """Where jobs wait for a replica."""
        return self._queue

    async def start(self, owner: str, conversation: str, request_id: str, options: MeditationOptions) -> str:
        """Creates `owner`'s job from their conversation and queues it, or finds the one a repeated
        request_id of theirs made for the same request; returns its name."""
        request_sha256 = _request_sha256(conversation, options)
        # The reads behind the checks go to different places (the job store, the queue, the content service)
        # and none needs another's answer: asked together, a new job waits for the slowest of them, not for
        # their sum (with fifty people arriving together, each read queued behind everyone else's).
        existing, waiting, found, stored = await asyncio.gather(
            self._find_retry(owner, request_id, request_sha256),
            self._backlog(),
            self._content.get_conversation(owner, conversation),
            self._stored_bytes_of(owner),
            return_exceptions=True,
        )
        # Judged in this order whatever answered first. A retry first: the job it made is the answer, however
        # full the queue is or whatever limit the owner has reached since (AIP-155). Only a new job is held
        # to the limits below.
        existing = _answer(existing)
        if existing is not None:
            return existing.name
        waiting = _answer(waiting)
        if waiting >= self._limits.max_queued_jobs:
            raise GatewayError(
                FailureKind.EXHAUSTED,
                f"{waiting} meditations are waiting to start (the limit is {self._limits.max_queued_jobs}): "
                "try again in a minute",
            )
        # A job needs a conversation of its owner's (anything else is NOT_FOUND) with messages.
        if not _answer(found).messages:
            raise GatewayError(
                FailureKind.PRECONDITION,
                f"{conversation} has no messages: add some with AppendMessages first",
            )
        self._check_stored_bytes(_answer(stored))
        meditation, is_created = await self._store.create(
            owner=owner,
            conversation=conversation,
            request_id=request_id,
            request_sha256=request_sha256,
            options=options,
            queue_lease_seconds=self._queue_lease_seconds,
            max_running_per_owner=self._limits.max_jobs_per_owner,
        )
        if is_created:
            await self._accept(meditation)
        return meditation.name

    async def _find_retry(self, owner: str, request_id: str, request_sha256: str) -> Meditation | None:
        """The job an earlier call with this request_id made, if any."""
        if not request_id:
            return None
        return await self._store.find_by_request_id(owner, request_id, request_sha256)

    async def _stored_bytes_of(self, owner: str) -> int:
        """What the owner's meditations take in storage, read only when there is a limit to hold them to."""
        return await self._store.stored_bytes_of(owner) if self._limits.max_stored_bytes_per_owner else 0

    def _check_stored_bytes(self, stored: int) -> None:
        """A new job needs room under the owner's storage limit (running jobs count once they succeed)."""
        limit = self._limits.max_stored_bytes_per_owner
        if limit and stored >= limit:
            raise GatewayError(
                FailureKind.EXHAUSTED,
                f"your meditations take {_megabytes(stored)} MB of storage (the limit is {_megabytes(limit)} "
                "MB): delete conversations you no longer need (DeleteConversation) to make room",
            )

    async def _accept(self, meditation: Meditation) -> None:
        accepted = Accepted(meditation=meditation.name, conversation=meditation.conversation)
        await self._store.record_event(meditation.name, 1, encode_event(0.0, accepted), JobChanges())
        self.dispatcher.start()
        # Never refused: while the queue does not answer, it keeps the job to send once it does (and should
        # this process stop first, the record is the backstop: a janitor requeues it).
        # With the GenerateMeditation call's trace context: the job's attempts continue it (or link to it).
        await self._queue.submit(meditation.name, tracing.current_trace_context())

    async def _backlog(self) -> int:
        try:
            waiting = await self._queue.backlog()
        except WorkQueueUnavailableError as error:
            raise GatewayError(
                FailureKind.UNAVAILABLE, "the job queue is unavailable; try again shortly"
            ) from (error)
        metrics.QUEUE_DEPTH.set(waiting)
        return waiting

    async def watch(self, owner: str, name: str, after_sequence: int) -> AsyncIterator[SequencedEvent]:
        """Replays `owner`'s job's log after `after_sequence`, then follows live events until the job's last
        event — across attempts, and wherever the job runs. Each asset's URI is made as its event is read."""
        await self._owned(owner, name)
        last_sequence = after_sequence
        while True:
            recorder = self.dispatcher.recorder_of(name)
            # Subscribe before reading the log, so nothing recorded in between is missed.
            live = recorder.watch() if recorder is not None else None
            try:
                page = await self._store.list_events(name, last_sequence)
                # One signing request for the page's assets, not one per event.
                replayed = await self._links.for_events(
                    [
                        decode_event(stored.sequence, stored.event_time, stored.payload)
                        for stored in page.events
                    ],
                    owner,
                )
                for event in replayed:
                    yield event
                    last_sequence = event.sequence
                    if isinstance(event.event, Completed):
                        return
                if page.events:
                    continue  # a full page may have more behind it
                if live is None:
                    if page.state.is_final:
                        return
                    # The job waits in the queue, or runs on another replica: follow its log, and from the
                    # moment it runs here, its live events (a poll's wait before each job's first stage was
                    # half a second of every job's events held back).
                    await self.dispatcher.wait_for_launch(name, self._poll_interval_seconds)
                    continue
                while (recorded := await live.next()) is not None:
                    if recorded.sequence <= last_sequence:
                        continue
                    yield await self._links.for_event(recorded, owner)
                    last_sequence = recorded.sequence
                    if isinstance(recorded.event, Completed):
                        return
                if live.has_fallen_behind:
                    # Ended rather than read on from the log: a client this slow is told where it stands.
                    raise FellBehindError(name, last_sequence)
                # This attempt ended without a last event: read on from the log, and the next attempt.
            finally:
                if recorder is not None and live is not None:
                    recorder.unwatch(live)

    async def get(self, owner: str, name: str) -> Meditation:
        """Returns `owner`'s job with URIs made now for its assets; anyone else's answers exactly as a missing
        one does."""
        [meditation] = await self._links.for_meditations([await self._owned(owner, name)], owner)
        return meditation

    async def _owned(self, owner: str, name: str) -> Meditation:
        meditation = await self._store.get(name)
        if meditation.owner != owner:
            raise GatewayError(FailureKind.NOT_FOUND, f"{name} does not exist")
        return meditation

    async def list(
        self, owner: str, page_size: int, after: PageCursor | None = None, *, conversation: str = ""
    ) -> MeditationPage:
        """One page of `owner`'s jobs, newest first (only those of `conversation` when it is set); nobody
        else's is ever listed. Their assets' URIs are made now, in one request for the page."""
        page = await self._store.list_owned(owner, page_size, after, conversation=conversation)
        return dataclasses.replace(
            page, meditations=tuple(await self._links.for_meditations(page.meditations, owner))
        )

    async def cancel(self, owner: str, name: str) -> Meditation:
        """Stops `owner`'s job wherever it is and waits until it has recorded its end; finished jobs are
        left alone. Returns the job as it stands then."""
        await self._owned(owner, name)
        await self.dispatcher.cancel(name)
        return await self.get(owner, name)

    async def delete_of_conversation(self, owner: str, conversation: str) -> int:
        """Erases every one of `owner`'s jobs made from `conversation`: each is cancelled wherever it runs,
        its stored assets are deleted, then its record and event log. Returns how many were erased. A job
        that has not stopped by the end of the cancel wait is UNAVAILABLE: nothing of it is deleted, and a
        retry finishes the work."""
        names = await self._store.names_of_conversation(owner, conversation)
        for name in names:
            await self.dispatcher.cancel(name)
            if not (await self._store.get(name)).state.is_final:
                raise GatewayError(
                    FailureKind.UNAVAILABLE,
                    f"{name} is still stopping: delete again in a few seconds",
                )
            # Assets before the record: if this fails, the record is still there for a retry to find.
            await self.dispatcher.delete_assets(name)
            await self._store.delete(name)
        return len(names)

    def start_janitor(self) -> None:
        """Starts dispatching, and requeues jobs nobody holds (given back at shutdown, lost by the queue)."""
        self.dispatcher.start(with_janitor=True)

    async def stop_janitor(self) -> None:
        """Takes no more jobs (at shutdown: other replicas should take them)."""
        await self.dispatcher.stop_taking()

    async def renew_leases(self) -> None:
        """Renews every running job's lease and queue entry now (the heartbeat does it on its own)."""
        await self.dispatcher.renew_leases()

    async def resume_orphans(self) -> builtins.list[str]:  # `list` here is the method above
        """Requeues running jobs nobody holds now (the janitor does it on its own)."""
        return await self.dispatcher.resume_orphans()

    async def close(self) -> None:
        """Stops this replica's jobs and hands them back to the queue."""
        await self.dispatcher.close()


_T = TypeVar("_T")


def _answer(result: _T | BaseException) -> _T:
    """A result of asyncio.gather(return_exceptions=True), or the exception that took its place, raised."""
    if isinstance(result, BaseException):
        raise result
    return result
