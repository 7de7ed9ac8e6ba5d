"""Meditation jobs: start them once, record every event before anyone sees it, and stream logs to watchers."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.gateway.deadlines import detached
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import (
    Accepted,
    AttemptFailed,
    Completed,
    Event,
    SequencedEvent,
    Stage,
    decode_event,
    encode_event,
)
from services.gateway.jobs.work_queue import (
    Delivery,
    InProcessWorkQueue,
    WorkQueue,
    WorkQueueUnavailableError,
)
from services.gateway.models import Meditation, MeditationOptions, MeditationState
from services.gateway.pipeline import MeditationPipeline
from services.gateway.ports import ContentPort, JobChanges, MediaPort

logger = logging.getLogger(__name__)


@dataclass
class JobRecorder:
    """Numbers a running job's events, records each in the log, then hands it to live watchers."""

    meditation: str
    content: ContentPort
    started_at: float = field(default_factory=time.monotonic)
    last_sequence: int = 0
    stage_seconds: dict[Stage, float] = field(default_factory=dict)
    transcript_cache_hit: bool = False
    image_cache_hit: bool = False
    is_cancel_requested: bool = False
    is_finished: bool = False
    # Set when another replica took the job over: this one must not write to its log any more.
    is_fenced: bool = False
    _watchers: set[asyncio.Queue[SequencedEvent | None]] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def elapsed_seconds(self) -> float:
        """Time since the job was accepted."""
        return time.monotonic() - self.started_at

    def add_stage_time(self, stage: Stage, seconds: float) -> None:
        """Adds to a stage's total time (the upload stage runs once per video)."""
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    async def emit(self, event: Event, changes: JobChanges | None = None) -> None:
        """Records the event (and the job changes it implies) in the log, then publishes it.

        Shielded: a job cancelled mid-write still finishes that write and counts it, so the event that
        records the cancellation takes the next sequence instead of colliding with the one in flight.
        """
        await asyncio.shield(self._record(event, changes))

    async def _record(self, event: Event, changes: JobChanges | None) -> None:
        async with self._lock:
            if self.is_fenced:
                raise GatewayError(FailureKind.PRECONDITION, f"{self.meditation} is held by another replica")
            sequence = self.last_sequence + 1
            elapsed_seconds = self.elapsed_seconds
            event_time = await self.content.record_event(
                self.meditation, sequence, encode_event(elapsed_seconds, event), changes or JobChanges()
            )
            self.last_sequence = sequence
            recorded = SequencedEvent(sequence, event_time, elapsed_seconds, event)
            for watcher in self._watchers:
                watcher.put_nowait(recorded)

    def watch(self) -> asyncio.Queue[SequencedEvent | None]:
        """Subscribes to events recorded from now on; None says this attempt at the job is over."""
        queue: asyncio.Queue[SequencedEvent | None] = asyncio.Queue()
        self._watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[SequencedEvent | None]) -> None:
        """Ends a subscription."""
        self._watchers.discard(queue)

    def end_attempt(self) -> None:
        """Tells watchers this attempt is over: the job's next events come from another attempt."""
        for watcher in self._watchers:
            watcher.put_nowait(None)

    def summary(self, state: MeditationState, failure: GatewayError | None = None) -> Completed:
        """The job's closing event."""
        return Completed(
            state=state,
            stage_seconds={stage.value: round(seconds, 4) for stage, seconds in self.stage_seconds.items()},
            transcript_cache_hit=self.transcript_cache_hit,
            image_cache_hit=self.image_cache_hit,
            total_seconds=round(self.elapsed_seconds, 4),
            failure_kind=None if failure is None else failure.kind,
            failure_message="" if failure is None else failure.message,
        )


_SHARED_QUEUE_LEASE_FACTOR = 10
# Failures another attempt may not repeat: a crash, a bug, a service that stayed unreachable (including an
# image FFmpeg chokes on: it reports INTERNAL). Bad input, a spent deadline or a cancellation end the job.
_RETRYABLE = frozenset({FailureKind.UNAVAILABLE, FailureKind.INTERNAL})
# A queue entry is taken over only once its lease has surely lapsed too: both are renewed together.
_CLAIM_MARGIN_SECONDS = 1.0


def claim_timeout_seconds(lease_seconds: float) -> float:
    """How long a queue entry must sit idle before another replica takes it over (its holder crashed)."""
    return lease_seconds + _CLAIM_MARGIN_SECONDS


@dataclass(frozen=True)
class JobLimits:
    """How much work a replica takes on, and how often a job is attempted."""

    max_jobs_per_client: int = 4  # running at once, across every replica
    max_running_jobs: int = 8  # on this replica; the rest wait in the queue
    max_queued_jobs: int = 200  # waiting, across every replica; past it, RESOURCE_EXHAUSTED
    max_attempts: int = 3  # after this many failed attempts a job is dead-lettered
    retry_delay_seconds: float = 2.0


@dataclass
class _Running:
    recorder: JobRecorder
    task: asyncio.Task[None]
    delivery: Delivery


class MeditationJobs:
    """Accepts jobs into the work queue, runs the ones this replica takes, and replays their logs.

    A job is created in the database and submitted to the queue; any replica's dispatcher may take it,
    claims its lease, and runs it as a task that outlives the stream that asked for it. Its queue entry is
    acknowledged only once the job's last event is committed. A replica that crashes stops renewing its
    leases and heartbeats: another replica takes the entry over. A job that keeps failing is given a
    number of attempts, then dead-lettered and marked FAILED with the reason.
    """

    def __init__(
        self,
        content: ContentPort,
        pipeline: MeditationPipeline,
        *,
        media: MediaPort | None = None,
        queue: WorkQueue | None = None,
        poll_interval_seconds: float = 0.5,
        lease_seconds: float = 30.0,
        owner: str | None = None,
        limits: JobLimits | None = None,
    ):
        self._content = content
        self._pipeline = pipeline
        self._media = media
        self._queue = queue or InProcessWorkQueue(claim_timeout_seconds=claim_timeout_seconds(lease_seconds))
        self._poll_interval_seconds = poll_interval_seconds
        self._lease_seconds = lease_seconds
        # While the queue holds a job, janitors leave it alone this long. A shared queue loses nothing, so
        # the janitors' requeue is only a backstop there (a Redis that restarted without persistence).
        self._queue_lease_seconds = lease_seconds * (
            _SHARED_QUEUE_LEASE_FACTOR if self._queue.is_shared else 1
        )
        self._limits = limits = limits or JobLimits()
        # One identity per process: its leases and queue deliveries tell other replicas the job is in hand.
        self.owner = owner or f"gateway-{secrets.token_hex(6)}"
        self._running: dict[str, _Running] = {}
        self._slots = asyncio.Semaphore(limits.max_running_jobs)
        self._background: list[asyncio.Task[None]] = []
        self._janitor: asyncio.Task[None] | None = None
        self._is_closing = False

    @property
    def queue(self) -> WorkQueue:
        """Where jobs wait for a replica."""
        return self._queue

    async def start(
        self, conversation: str, request_id: str, options: MeditationOptions, client: str = ""
    ) -> str:
        """Creates the job and queues it, or finds the one a repeated request_id made; returns its name."""
        waiting = await self._backlog()
        if waiting >= self._limits.max_queued_jobs:
            raise GatewayError(
                FailureKind.EXHAUSTED,
                f"{waiting} meditations are waiting to start (the limit is {self._limits.max_queued_jobs}): "
                "try again in a minute",
            )
        # Unowned, with the queue's lease: any replica may claim it when the queue delivers it, and no
        # janitor takes it for abandoned meanwhile.
        meditation, is_created = await self._content.create_meditation(
            conversation,
            request_id,
            options,
            lease_seconds=self._queue_lease_seconds,
            client=client,
            max_running_per_client=self._limits.max_jobs_per_client,
        )
        if is_created:
            accepted = Accepted(meditation=meditation.name, conversation=meditation.conversation)
            await self._content.record_event(meditation.name, 1, encode_event(0.0, accepted), JobChanges())
            self._ensure_dispatching()
            try:
                await self._queue.submit(meditation.name)
            except WorkQueueUnavailableError as error:
                # Recorded, so not lost: a janitor requeues it once the queue's lease lapses.
                logger.warning("%s: not queued (%s); a janitor will requeue it", meditation.name, error)
        return meditation.name

    async def _backlog(self) -> int:
        try:
            return await self._queue.backlog()
        except WorkQueueUnavailableError as error:
            raise GatewayError(
                FailureKind.UNAVAILABLE, "the job queue is unavailable; try again shortly"
            ) from (error)

    def _ensure_dispatching(self) -> None:
        """Starts taking jobs from the queue, and keeping this replica's leases fresh, on first use."""
        if self._background or self._is_closing:
            return
        # Detached: these (and the jobs they start) outlive the request that happened to start them, so
        # they must not inherit its deadline.
        self._background = [
            asyncio.create_task(self._dispatch(), name="job dispatcher", context=detached()),
            asyncio.create_task(self._keep_alive(), name="job heartbeat", context=detached()),
            asyncio.create_task(self._follow_cancellations(), name="job cancellations", context=detached()),
        ]

    async def _dispatch(self) -> None:
        """Takes a job whenever a slot is free: at most `max_running_jobs` run here, the rest wait."""
        while not self._is_closing:
            await self._slots.acquire()
            try:
                delivery = await self._queue.take(self.owner, wait_seconds=1.0)
            except WorkQueueUnavailableError as error:
                self._slots.release()
                logger.warning("job queue: %s", error)
                await asyncio.sleep(1.0)
                continue
            except BaseException:
                self._slots.release()
                raise
            if delivery is None or self._is_closing:
                self._slots.release()
                if delivery is not None:
                    await self._hand_back(delivery, counts_as_attempt=False)
                continue
            try:
                is_launched = await self._take_on(delivery)
            except BaseException:
                self._slots.release()
                raise
            if not is_launched:
                self._slots.release()

    async def _take_on(self, delivery: Delivery) -> bool:
        """Claims the delivered job and launches it; False when there is nothing to run."""
        name = delivery.job
        try:
            if name in self._running:
                await self._queue.acknowledge(delivery)  # a duplicate entry of a job running here
                return False
            if not await self._content.claim_meditation(name, self.owner, self._lease_seconds):
                # Finished, or held by a live replica (which has its own entry): this one is a duplicate.
                await self._queue.acknowledge(delivery)
                return False
            meditation = await self._content.get_meditation(name)
            if meditation.state.is_final:
                await self._queue.acknowledge(delivery)
                return False
            if delivery.delivery_count > self._limits.max_attempts:
                # Its replicas kept dying on it (a crash loop): stop here.
                await self._give_up(delivery, meditation, "the gateway running it stopped every time")
                return False
        except GatewayError as error:
            if error.kind is FailureKind.NOT_FOUND:
                await self._queue.acknowledge(delivery)
                return False
            logger.warning("%s: could not take it on (%s); handing it back", name, error.message)
            await self._hand_back(delivery, counts_as_attempt=False)
            return False
        except WorkQueueUnavailableError as error:
            logger.warning("%s: %s", name, error)
            return False
        if delivery.delivery_count > 1:
            logger.info(
                "%s: attempt %d, after event %d", name, delivery.delivery_count, meditation.last_sequence
            )
        self._launch(meditation, delivery)
        return True

    def _launch(self, meditation: Meditation, delivery: Delivery) -> None:
        # A resumed job continues its log where it stopped: no gap, no duplicate.
        recorder = JobRecorder(
            meditation=meditation.name, content=self._content, last_sequence=meditation.last_sequence
        )
        task = asyncio.create_task(self._run(recorder, meditation), name=meditation.name, context=detached())
        running = _Running(recorder, task, delivery)
        self._running[meditation.name] = running
        # A done callback, not a `finally`: a task cancelled before its first step never runs its body.
        task.add_done_callback(lambda _: self._forget(running))

    def _forget(self, running: _Running) -> None:
        self._retire(running)
        self._slots.release()

    def _retire(self, running: _Running) -> None:
        """The attempt is over: the job is no longer running here, and its watchers read on elsewhere."""
        if self._running.get(running.recorder.meditation) is running:
            del self._running[running.recorder.meditation]
            running.recorder.end_attempt()

    async def _run(self, recorder: JobRecorder, meditation: Meditation) -> None:
        running = self._running[meditation.name]
        try:
            await self._pipeline.run(recorder, meditation)
            if await self._finish(recorder, MeditationState.SUCCEEDED, None):
                await self._queue.acknowledge(running.delivery)
        except asyncio.CancelledError:
            if not recorder.is_cancel_requested:
                # A shutdown (close() hands the job back) or a lost lease (the replica holding it now has
                # this entry or its own): either way, not this task's to end.
                raise
            if await self._finish_stopped(recorder):
                await self._queue.acknowledge(running.delivery)
        except GatewayError as error:
            await self._failed(recorder, running, error)
        except Exception:
            logger.exception("%s failed unexpectedly", meditation.name)
            failure = GatewayError(FailureKind.INTERNAL, "the meditation failed on an internal error")
            await self._failed(recorder, running, failure)

    async def _failed(self, recorder: JobRecorder, running: _Running, error: GatewayError) -> None:
        """Ends the job, or, for a failure another attempt may not repeat, hands it back for one more."""
        attempt = running.delivery.delivery_count
        name = recorder.meditation
        if error.kind not in _RETRYABLE:
            logger.warning("%s failed: %s", name, error.message)
            if await self._finish(recorder, MeditationState.FAILED, error):
                await self._queue.acknowledge(running.delivery)
            return
        if attempt >= self._limits.max_attempts:
            logger.warning("%s failed on its last attempt (%d): %s", name, attempt, error.message)
            reason = f"gave up after {attempt} attempts: {error.message}"
            if await self._finish(recorder, MeditationState.FAILED, GatewayError(error.kind, reason)):
                await self._queue.dead_letter(running.delivery, reason)
            return
        delay_seconds = self._limits.retry_delay_seconds * attempt
        logger.warning(
            "%s: attempt %d failed (%s); retrying in %g s", name, attempt, error.message, delay_seconds
        )
        try:
            await recorder.emit(
                AttemptFailed(attempt, self._limits.max_attempts, error.message, delay_seconds),
                JobChanges(failure_message=error.message),
            )
            if self._media is not None:
                # The next attempt starts afresh: what this one made would be a second set of assets.
                await self._media.delete_meditation_assets(name)
            await self._content.release_meditation(name, self.owner, self._queue_lease_seconds)
        except GatewayError as bookkeeping:
            logger.warning("%s: %s; the queue hands it on anyway", name, bookkeeping.message)
        # Retired before it is handed back, so the next attempt (here, too) finds no attempt in the way.
        self._retire(running)
        await self._hand_back(running.delivery, counts_as_attempt=True, delay_seconds=delay_seconds)

    async def _give_up(self, delivery: Delivery, meditation: Meditation, why: str) -> None:
        """Dead-letters a job and records its end, with the last failure's reason."""
        attempts = delivery.delivery_count - 1
        reason = f"gave up after {attempts} attempts: {meditation.failure_message or why}"
        recorder = JobRecorder(
            meditation=meditation.name, content=self._content, last_sequence=meditation.last_sequence
        )
        logger.warning("%s: %s", meditation.name, reason)
        if await self._finish(recorder, MeditationState.FAILED, GatewayError(FailureKind.INTERNAL, reason)):
            await self._queue.dead_letter(delivery, reason)

    async def _hand_back(
        self, delivery: Delivery, *, counts_as_attempt: bool, delay_seconds: float = 0.0
    ) -> None:
        try:
            await self._queue.hand_back(
                self.owner, delivery, delay_seconds=delay_seconds, counts_as_attempt=counts_as_attempt
            )
        except WorkQueueUnavailableError as error:
            # The entry stays ours and pending: it is taken over once it goes idle past the claim timeout.
            logger.warning("%s: could not hand back (%s)", delivery.job, error)

    async def _keep_alive(self) -> None:
        """Renews this replica's leases and queue heartbeats, together, a third of a lease apart."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                await self.renew_leases()
            except (GatewayError, WorkQueueUnavailableError) as error:
                logger.warning("job heartbeat: %s", error)

    async def renew_leases(self) -> None:
        """Renews every running job's lease and queue entry; a job whose lease was lost is stopped here."""
        running = [job for job in self._running.values() if not job.recorder.is_finished]
        await self._queue.heartbeat(self.owner, [job.delivery for job in running])
        for job in running:
            name = job.recorder.meditation
            if not await self._content.claim_meditation(name, self.owner, self._lease_seconds):
                logger.warning("%s: lease lost to another replica; stopping here", name)
                job.recorder.is_fenced = True
                job.task.cancel()

    async def _follow_cancellations(self) -> None:
        """Stops a job running here when any replica is asked to cancel it."""
        while True:
            try:
                async for name in self._queue.cancel_requests():
                    running = self._running.get(name)
                    if running is not None:
                        await self._cancel_here(running)
            except WorkQueueUnavailableError as error:
                logger.warning("job cancellations: %s", error)
                await asyncio.sleep(1.0)

    def start_janitor(self) -> None:
        """Starts dispatching, and requeues jobs nobody holds (given back at shutdown, lost by the queue)."""
        self._ensure_dispatching()
        if self._janitor is None:
            self._janitor = asyncio.create_task(self._tend(), name="job janitor", context=detached())

    async def stop_janitor(self) -> None:
        """Takes no more jobs (at shutdown: other replicas should take them)."""
        self._is_closing = True
        tasks = [task for task in [self._janitor, *self._background[:1]] if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _tend(self) -> None:
        while True:
            try:
                await self.resume_orphans()
            except GatewayError as error:
                logger.warning("job janitor: %s", error.message)
            await asyncio.sleep(self._lease_seconds / 3)

    async def resume_orphans(self) -> list[str]:
        """Requeues running jobs nobody holds (their gateway stopped or crashed, or the queue lost them)."""
        self._ensure_dispatching()
        requeued = []
        for name in await self._content.list_claimable_meditations(10):
            if name in self._running:
                continue
            if await self._content.requeue_meditation(name, self._queue_lease_seconds):
                try:
                    await self._queue.submit(name)
                except WorkQueueUnavailableError as error:
                    logger.warning("%s: not requeued (%s)", name, error)
                    continue
                logger.info("%s: requeued (its gateway stopped)", name)
                requeued.append(name)
        return requeued

    async def _finish(
        self, recorder: JobRecorder, state: MeditationState, failure: GatewayError | None
    ) -> bool:
        """Records the job's last event; False when it could not (the job then stays with the queue)."""
        completed = recorder.summary(state, failure)
        changes = JobChanges(state=state, failure_message=completed.failure_message or None)
        try:
            await recorder.emit(completed, changes)
        except GatewayError as error:
            # Content unreachable, or another replica took the job over: the job stays running in the
            # database and pending in the queue, and another attempt carries it on.
            logger.error("%s: could not record its end: %s", recorder.meditation, error.message)
            return False
        recorder.is_finished = True
        return True

    async def _finish_stopped(self, recorder: JobRecorder) -> bool:
        failure = GatewayError(FailureKind.CANCELLED, f"{recorder.meditation} was cancelled")
        return await self._finish(recorder, MeditationState.CANCELLED, failure)

    async def watch(self, name: str, after_sequence: int) -> AsyncIterator[SequencedEvent]:
        """Replays the log after `after_sequence`, then follows live events until the job's last event —
        across attempts, and wherever the job runs."""
        last_sequence = after_sequence
        while True:
            running = self._running.get(name)
            # Subscribe before reading the log, so nothing recorded in between is missed.
            live = running.recorder.watch() if running is not None else None
            try:
                page = await self._content.list_events(name, last_sequence)
                for stored in page.events:
                    event = decode_event(stored.sequence, stored.event_time, stored.payload)
                    yield event
                    last_sequence = event.sequence
                    if isinstance(event.event, Completed):
                        return
                if page.events:
                    continue  # a full page may have more behind it
                if live is None:
                    if page.state.is_final:
                        return
                    # The job waits in the queue, or runs on another replica: follow its log.
                    await asyncio.sleep(self._poll_interval_seconds)
                    continue
                while (recorded := await live.get()) is not None:
                    if recorded.sequence <= last_sequence:
                        continue
                    yield recorded
                    last_sequence = recorded.sequence
                    if isinstance(recorded.event, Completed):
                        return
                # This attempt ended without a last event: read on from the log, and the next attempt.
            finally:
                if running is not None and live is not None:
                    running.recorder.unwatch(live)

    async def get(self, name: str) -> Meditation:
        """Returns the job record."""
        return await self._content.get_meditation(name)

    async def cancel(self, name: str) -> Meditation:
        """Stops a job wherever it is — running here, queued, or running on another replica — and waits
        until it has recorded its end; finished jobs are left alone."""
        running = self._running.get(name)
        if running is not None:
            await self._cancel_here(running)
        elif await self._content.claim_meditation(name, self.owner, self._lease_seconds):
            # Queued or abandoned: it is ours now, so end it here; its queue entry finds it final.
            meditation = await self._content.get_meditation(name)
            recorder = JobRecorder(
                meditation=name, content=self._content, last_sequence=meditation.last_sequence
            )
            await self._finish_stopped(recorder)
            await self._delete_assets(name)
        else:
            meditation = await self._content.get_meditation(name)
            if not meditation.state.is_final:
                await self._cancel_elsewhere(name)
        return await self._content.get_meditation(name)

    async def _cancel_here(self, running: _Running) -> None:
        running.recorder.is_cancel_requested = True
        running.task.cancel()
        await asyncio.wait({running.task})
        # Cancelled before its first step ran, the task could not record its own end.
        if not running.recorder.is_finished and await self._finish_stopped(running.recorder):
            await self._queue.acknowledge(running.delivery)
        await self._delete_assets(running.recorder.meditation)

    async def _cancel_elsewhere(self, name: str) -> None:
        """Asks the replica running the job to stop it, and waits (briefly) until it has."""
        try:
            await self._queue.publish_cancel(name)
        except WorkQueueUnavailableError as error:
            raise GatewayError(FailureKind.UNAVAILABLE, "the job queue is unavailable; try again") from error
        deadline = time.monotonic() + _CANCEL_WAIT_SECONDS
        while time.monotonic() < deadline:
            if (await self._content.get_meditation(name)).state.is_final:
                return
            await asyncio.sleep(self._poll_interval_seconds / 2)

    async def _delete_assets(self, name: str) -> None:
        if self._media is not None:
            # Nothing half-made stays behind: the narration, the live preview and any video go.
            await self._media.delete_meditation_assets(name)

    async def close(self) -> None:
        """Stops this replica's jobs and hands them back: another replica, or this one after a restart,
        resumes each from its last recorded event."""
        self._is_closing = True
        background = [task for task in [self._janitor, *self._background] if task is not None]
        for task in background:
            task.cancel()
        running = list(self._running.values())
        for job in running:
            job.task.cancel()
        await asyncio.gather(*background, *(job.task for job in running), return_exceptions=True)
        for job in running:
            if job.recorder.is_finished:
                continue
            try:
                # A shared queue hands the job on; an in-process one dies with us, so janitors must.
                await self._content.release_meditation(
                    job.recorder.meditation,
                    self.owner,
                    self._queue_lease_seconds if self._queue.is_shared else 0.0,
                )
            except GatewayError as error:
                # The lease lapses on its own; the job is only delayed, not lost.
                logger.warning("%s: could not release (%s)", job.recorder.meditation, error.message)
            await self._hand_back(job.delivery, counts_as_attempt=False)
        await self._queue.aclose()


# How long CancelMeditation waits for another replica to record the cancellation before answering.
_CANCEL_WAIT_SECONDS = 10.0
