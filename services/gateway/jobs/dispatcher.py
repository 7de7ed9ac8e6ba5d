"""Runs the jobs this replica takes from the work queue: slots, leases and heartbeats, attempts, the janitor,
cancellation wherever a job is, and the hand-back at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from opentelemetry.trace import StatusCode

from services import metrics, tracing
from services.database import now
from services.gateway.deadlines import detached
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import AttemptFailed
from services.gateway.jobs.recorder import JobRecorder
from services.gateway.jobs.retry_policy import Outcome, RetryPolicy
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.work_queue import (
    Delivery,
    WorkQueue,
    WorkQueueLostError,
    WorkQueueUnavailableError,
)
from services.gateway.models import JobChanges, Meditation, MeditationState
from services.gateway.pipeline import MeditationPipeline
from services.gateway.ports import MediaPort
from services.log_context import bound_meditation

logger = logging.getLogger(__name__)

# At most this many jobs taken from the queue in one go, when as many slots are free: fifty people arriving
# together were fifty takes in a row, two Redis round trips each on a busy event loop (the last waited 2.5 s
# before its first stage at make bench's 50-job level); a few at a time still leaves the rest to other
# replicas with free slots.
_JOBS_PER_TAKE = 8
# A queue entry is taken over only once its lease has surely lapsed too: both are renewed together.
_CLAIM_MARGIN_SECONDS = 1.0
# The longest an idle replica waits on the queue before it looks again for entries gone idle past the claim
# timeout (a crashed replica's): a new entry ends the wait at once, so this only spaces out the look for
# lost ones, which a quarter of the claim timeout (at most this) delays by little. Looking once a second,
# an idle gateway took 2.1 ms of CPU a second, 1.6 ms at this (90 s idle each, the stack make bench runs).
# A Redis queue keeps each wait short of its client's command timeout (redis_connection) as well.
_MAX_TAKE_WAIT_SECONDS = 5.0
# How long CancelMeditation waits for another replica to record the cancellation before answering.
_CANCEL_WAIT_SECONDS = 10.0
# How many abandoned jobs one janitor round requeues, and how many owed asset deletions it retries.
_JANITOR_BATCH = 10
# An asset deletion owed for less than one deletion's deadline (the media client's bookkeeping timeout, 10 s)
# may still be in flight where it was asked for: the janitor leaves it (twice would be harmless, only waste).
_OWED_DELETION_GRACE_SECONDS = 10.0
# Failures that mean media or storage is down: the rest of a janitor's batch would fail the same way.
_DEPENDENCY_DOWN = frozenset({FailureKind.UNAVAILABLE, FailureKind.DEADLINE})
# How many jobs still waiting in a queue that lost them are submitted again at once (well above the queued
# limit of a deployment); any beyond it are requeued by a janitor once their queue lease lapses.
_LOST_QUEUED_BATCH = 1000
# Retrying a queue that does not answer: the first wait, doubled each failure up to the last. The queue logs
# the outage itself, once when it starts and once when it ends, so these loops stay quiet.
_FIRST_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 8.0


class _Backoff:
    """Waits between retries of a queue that does not answer: longer each failure, reset by a success."""

    def __init__(self) -> None:
        self._seconds = _FIRST_BACKOFF_SECONDS

    async def wait(self) -> None:
        await asyncio.sleep(self._seconds)  # a back-off while the queue is down, not synchronisation
        self._seconds = min(self._seconds * 2, _MAX_BACKOFF_SECONDS)

    def reset(self) -> None:
        self._seconds = _FIRST_BACKOFF_SECONDS


def claim_timeout_seconds(lease_seconds: float) -> float:
    """How long a queue entry must sit idle before another replica takes it over (its holder crashed)."""
    return lease_seconds + _CLAIM_MARGIN_SECONDS


@dataclass
class _Running:
    recorder: JobRecorder
    task: asyncio.Task[None]
    delivery: Delivery


class JobDispatcher:
    """Takes a job from the queue whenever a slot is free, claims its lease, and runs it as a task that
    outlives the stream that asked for it; acknowledges its queue entry only once the job's last event is
    committed. A replica that crashes stops renewing its leases and heartbeats, and another takes its
    entries over; a failed attempt is finished, retried or dead-lettered as the retry policy says."""

    def __init__(
        self,
        store: JobStore,
        pipeline: MeditationPipeline,
        queue: WorkQueue,
        *,
        media: MediaPort | None,
        holder: str,
        lease_seconds: float,
        queue_lease_seconds: float,
        max_running_jobs: int,
        retry_policy: RetryPolicy,
        poll_interval_seconds: float,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._queue = queue
        self._media = media
        self.holder = holder
        self._lease_seconds = lease_seconds
        self._queue_lease_seconds = queue_lease_seconds
        self._retry_policy = retry_policy
        self._poll_interval_seconds = poll_interval_seconds
        self._running: dict[str, _Running] = {}
        # Jobs this replica is claiming and launching right now, each with an event set once that is over: a
        # cancel waits for it, since its own claim (same holder) would succeed too and both would write.
        self._taking_on: dict[str, asyncio.Event] = {}
        # The tasks claiming and launching those jobs: several at once, so that fifty people who arrive
        # together start together rather than one database round trip after another.
        self._launching: set[asyncio.Task[None]] = set()
        # Set, and replaced, at each launch: watchers of a job still in the queue wait on it
        # (`wait_for_launch`) rather than poll the log until the job runs here.
        self._launched = asyncio.Event()
        self._slots = asyncio.Semaphore(max_running_jobs)
        self._dispatcher: asyncio.Task[None] | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._services: list[asyncio.Task[None]] = []
        self._is_closing = False

    def recorder_of(self, name: str) -> JobRecorder | None:
        """The recorder of a job running here, if it is."""
        running = self._running.get(name)
        return None if running is None else running.recorder

    async def wait_for_launch(self, name: str, timeout_seconds: float) -> None:
        """Returns once the job runs here, or after `timeout_seconds` (it may wait in the queue that long, or
        run on another replica)."""
        deadline = asyncio.get_running_loop().time() + timeout_seconds
        while name not in self._running:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._launched.wait(), remaining)

    # ---- lifecycle --------------------------------------------------------------------------------------

    def start(self, *, with_janitor: bool = False) -> None:
        """Starts taking jobs, keeping this replica's leases fresh and following cancellations; with the
        janitor, also requeues jobs nobody holds. Idempotent."""
        if self._is_closing:
            return
        # Detached: these (and the jobs they start) outlive the request that happened to start them, so
        # they must not inherit its deadline.
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(
                self._dispatch(), name="job dispatcher", context=detached()
            )
            self._services = [
                asyncio.create_task(self._keep_alive(), name="job heartbeat", context=detached()),
                asyncio.create_task(
                    self._follow_cancellations(), name="job cancellations", context=detached()
                ),
            ]
        if with_janitor and self._janitor is None:
            self._janitor = asyncio.create_task(self._tend(), name="job janitor", context=detached())

    async def stop_taking(self) -> None:
        """Takes no more jobs (at shutdown: other replicas should take them); running ones go on."""
        self._is_closing = True
        tasks = [task for task in (self._janitor, self._dispatcher, *self._launching) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stops this replica's jobs and hands them back: another replica, or this one after a restart,
        resumes each from its last recorded event."""
        self._is_closing = True
        background = [
            task
            for task in (self._janitor, self._dispatcher, *self._launching, *self._services)
            if task is not None
        ]
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
                await self._store.release(
                    job.recorder.meditation,
                    self.holder,
                    self._queue_lease_seconds if self._queue.is_shared else 0.0,
                )
            except GatewayError as error:
                # The lease lapses on its own; the job is only delayed, not lost.
                logger.warning("%s: could not release (%s)", job.recorder.meditation, error.message)
            await self._hand_back(job.delivery, counts_as_attempt=False)
        await self._queue.aclose()

    # ---- taking jobs ------------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Takes jobs whenever slots are free: at most `max_running_jobs` run here, the rest wait."""
        backoff = _Backoff()
        wait_seconds = min(_MAX_TAKE_WAIT_SECONDS, claim_timeout_seconds(self._lease_seconds) / 4)
        while not self._is_closing:
            slots = await self._free_slots()
            try:
                deliveries = await self._queue.take_up_to(self.holder, slots, wait_seconds=wait_seconds)
            except WorkQueueLostError as error:
                self._release_slots(slots)
                await self._requeue_lost(error)
                continue
            except WorkQueueUnavailableError as error:
                self._release_slots(slots)
                logger.debug("job queue: %s", error)  # the queue announced the outage
                await backoff.wait()
                continue
            except BaseException:
                self._release_slots(slots)
                raise
            backoff.reset()
            self._release_slots(slots - len(deliveries))
            for delivery in deliveries:
                if self._is_closing:
                    self._slots.release()
                    await self._hand_back(delivery, counts_as_attempt=False)
                    continue
                # Claimed and launched beside the next take: each is a few database round trips.
                launching = asyncio.create_task(
                    self._take_on_in_slot(delivery), name=f"launch {delivery.job}"
                )
                self._launching.add(launching)
                launching.add_done_callback(self._launching.discard)

    async def _free_slots(self) -> int:
        """Waits for a free slot and takes it, with whichever others are free, up to _JOBS_PER_TAKE."""
        await self._slots.acquire()
        taken = 1
        while taken < _JOBS_PER_TAKE and not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            taken += 1
        return taken

    def _release_slots(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    async def _take_on_in_slot(self, delivery: Delivery) -> None:
        """Takes the delivered job on in the slot taken for it, which stays taken only if the job runs."""
        is_launched = False
        try:
            is_launched = await self._take_on(delivery)
        except Exception:
            # Not the queue's nor the store's known failures (those are handled in _take_on): the entry is
            # left unacknowledged, so the queue delivers it again.
            logger.exception("%s: could not take it on", delivery.job)
        finally:
            if not is_launched:
                self._slots.release()

    async def _take_on(self, delivery: Delivery) -> bool:
        """Claims the delivered job and launches it; False when there is nothing to run."""
        if delivery.job in self._taking_on:
            # Another entry of the same job is being taken on this moment (claims by one holder both succeed).
            await self._queue.acknowledge(delivery)
            return False
        taken = self._taking_on[delivery.job] = asyncio.Event()
        try:
            return await self._claim_and_launch(delivery)
        finally:
            if self._taking_on.get(delivery.job) is taken:
                del self._taking_on[delivery.job]
            taken.set()

    async def _claim_and_launch(self, delivery: Delivery) -> bool:
        name = delivery.job
        try:
            if name in self._running:
                await self._queue.acknowledge(delivery)  # a duplicate entry of a job running here
                return False
            meditation = await self._store.claim(name, self.holder, self._lease_seconds)
            if meditation is None:
                # Finished, gone, or held by a live replica (which has its own entry): a duplicate.
                await self._queue.acknowledge(delivery)
                return False
            if meditation.is_cancel_requested:
                # Asked to stop while it waited, or between attempts, where no heartbeat saw it: end it now
                # rather than run it until the first renewal does.
                recorder = JobRecorder(
                    meditation=name, store=self._store, last_sequence=meditation.last_sequence
                )
                await self._finish_cancelled(recorder)
                await self._queue.acknowledge(delivery)
                await self.delete_assets(name)
                return False
            if self._retry_policy.is_crash_loop(delivery.delivery_count):
                # Its replicas kept dying on it: stop here.
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
        else:
            # Clocks of replicas differ a little: a wait can never be negative.
            waited_seconds = (now() - meditation.create_time).total_seconds()
            metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, waited_seconds))
        self._launch(meditation, delivery)
        return True

    def _launch(self, meditation: Meditation, delivery: Delivery) -> None:
        # A resumed job continues its log where it stopped: no gap, no duplicate.
        recorder = JobRecorder(
            meditation=meditation.name,
            store=self._store,
            last_sequence=meditation.last_sequence,
            # The `accepted` event is the first in every log (sequence 1); anything after it is an attempt's.
            is_resumed=meditation.last_sequence > 1,
        )
        task = asyncio.create_task(self._run(recorder, meditation), name=meditation.name, context=detached())
        running = _Running(recorder, task, delivery)
        self._running[meditation.name] = running
        self._launched.set()
        self._launched = asyncio.Event()
        metrics.JOBS_RUNNING.inc()
        # A done callback, not a `finally`: a task cancelled before its first step never runs its body.
        task.add_done_callback(lambda _: self._forget(running))

    def _forget(self, running: _Running) -> None:
        self._retire(running)
        self._slots.release()
        metrics.JOBS_RUNNING.dec()

    def _retire(self, running: _Running) -> None:
        """The attempt is over: the job is no longer running here, and its watchers read on elsewhere."""
        if self._running.get(running.recorder.meditation) is running:
            del self._running[running.recorder.meditation]
            running.recorder.end_attempt()

    # ---- one attempt ------------------------------------------------------------------------------------

    async def _run(self, recorder: JobRecorder, meditation: Meditation) -> None:
        running = self._running[meditation.name]
        try:
            if self._media is not None and meditation.last_sequence > 1:
                # An earlier attempt ran (on this replica or one that stopped): what it stored goes before
                # this one starts afresh. Its own failure path deletes them too, but storage may have been
                # down then; if it still is, this attempt fails here, before making more.
                await self._media.delete_meditation_assets(meditation.name)
            with bound_meditation(meditation.name):
                await self._run_traced(recorder, meditation, running.delivery)
            if await recorder.finish(MeditationState.SUCCEEDED, None):
                await self._queue.acknowledge(running.delivery)
        except asyncio.CancelledError:
            if not recorder.is_cancel_requested:
                # A shutdown (close() hands the job back) or a lost lease (the replica holding it now has
                # this entry or its own): either way, not this task's to end.
                raise
            if await self._finish_cancelled(recorder):
                await self._queue.acknowledge(running.delivery)
        except GatewayError as error:
            await self._failed(recorder, running, error)
        except Exception:
            logger.exception("%s failed unexpectedly", meditation.name)
            failure = GatewayError(FailureKind.INTERNAL, "the meditation failed on an internal error")
            await self._failed(recorder, running, failure)

    async def _run_traced(self, recorder: JobRecorder, meditation: Meditation, delivery: Delivery) -> None:
        """Runs the pipeline inside the attempt's span: `meditation.job`, in the trace that queued the job
        (see tracing.attempt_origin), its stages' spans beneath it."""
        origin = tracing.attempt_origin(
            # As in _run: events after `accepted` mean an earlier attempt ran.
            delivery.trace_context,
            delivery.delivery_count,
            has_run_before=meditation.last_sequence > 1,
        )
        with tracing.TRACER.start_as_current_span(
            "meditation.job",
            context=origin.parent,
            links=origin.links,
            attributes={
                tracing.MEDITATION_ATTRIBUTE: meditation.name,
                tracing.ATTEMPT_ATTRIBUTE: delivery.delivery_count,
            },
            # The status is set here from the failure's kind; its message may quote a provider.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self._pipeline.run(recorder, meditation)
            except GatewayError as error:
                span.set_attribute(tracing.FAILURE_KIND_ATTRIBUTE, error.kind.value)
                span.set_status(StatusCode.ERROR, error.kind.value)
                raise
            except Exception:
                span.set_status(StatusCode.ERROR, FailureKind.INTERNAL.value)
                raise

    async def _failed(self, recorder: JobRecorder, running: _Running, error: GatewayError) -> None:
        """Ends the job, dead-letters it, or hands it back for one more attempt, as the policy says."""
        attempt = running.delivery.delivery_count
        name = recorder.meditation
        decision = self._retry_policy.after_failure(error, attempt)
        if decision.outcome is Outcome.FINISH:
            logger.warning("%s failed: %s", name, error.message)
            if await self._finish_failed(recorder, decision.failure):
                await self._queue.acknowledge(running.delivery)
                await self._delete_failed_assets(name)
            return
        if decision.outcome is Outcome.DEAD_LETTER:
            logger.warning("%s failed on its last attempt (%d): %s", name, attempt, error.message)
            if await self._finish_failed(recorder, decision.failure):
                await self._dead_letter(running.delivery, attempt, decision.failure.message)
                await self._delete_failed_assets(name)
            return
        logger.warning(
            "%s: attempt %d failed (%s); retrying in %g s",
            name,
            attempt,
            error.message,
            decision.delay_seconds,
        )
        try:
            await recorder.emit(
                AttemptFailed(
                    attempt, self._retry_policy.max_attempts, error.message, decision.delay_seconds
                ),
                JobChanges(failure_message=error.message),
            )
            # What this attempt stored is deleted by the next before it starts afresh: storage may be down
            # now, and the hand-back must not wait on it.
            # The queue delivers it again after the delay: janitors leave it alone that long too, or one
            # would requeue it as abandoned (and its attempts would count from one again).
            await self._store.release(name, self.holder, decision.delay_seconds + self._queue_lease_seconds)
        except GatewayError as bookkeeping:
            logger.warning("%s: %s; the queue hands it on anyway", name, bookkeeping.message)
        # Retired before it is handed back, so the next attempt (here, too) finds no attempt in the way.
        self._retire(running)
        metrics.JOB_RETRIES.inc()
        await self._hand_back(running.delivery, counts_as_attempt=True, delay_seconds=decision.delay_seconds)

    async def _give_up(self, delivery: Delivery, meditation: Meditation, why: str) -> None:
        """Dead-letters a job and records its end, with the last failure's reason."""
        failure = self._retry_policy.gave_up(delivery.delivery_count, meditation.failure_message or why)
        recorder = JobRecorder(
            meditation=meditation.name, store=self._store, last_sequence=meditation.last_sequence
        )
        logger.warning("%s: %s", meditation.name, failure.message)
        if await self._finish_failed(recorder, failure):
            await self._dead_letter(delivery, delivery.delivery_count - 1, failure.message)
            await self._delete_failed_assets(meditation.name)

    async def _delete_failed_assets(self, name: str) -> None:
        """A FAILED job's narration, live preview and videos go, as a cancelled job's do: no client gets a
        half-made meditation, and nothing is left orphaned in storage. Its event log stays (it says why it
        failed). Best effort: the job has ended either way, so a deletion that fails is logged, not raised;
        where retention is configured, its eraser removes what is left once the job is past it."""
        try:
            await self.delete_assets(name)
        except GatewayError as error:
            logger.warning("%s: could not delete the failed job's assets (%s)", name, error.message)

    async def _dead_letter(self, delivery: Delivery, attempts: int, reason: str) -> None:
        """Marks the failed job dead-lettered in the job store (what operators list), then in the queue."""
        try:
            await self._store.mark_dead_lettered(delivery.job, attempts)
        except GatewayError as error:
            # The job has ended FAILED either way; only the operator's listing misses it.
            logger.warning("%s: could not mark it dead-lettered (%s)", delivery.job, error.message)
        await self._queue.dead_letter(delivery, reason)
        metrics.JOBS_DEAD_LETTERED.inc()

    async def _hand_back(
        self, delivery: Delivery, *, counts_as_attempt: bool, delay_seconds: float = 0.0
    ) -> None:
        try:
            await self._queue.hand_back(
                self.holder, delivery, delay_seconds=delay_seconds, counts_as_attempt=counts_as_attempt
            )
        except WorkQueueUnavailableError as error:
            # The entry stays ours and pending: it is taken over once it goes idle past the claim timeout.
            logger.warning("%s: could not hand back (%s)", delivery.job, error)

    # ---- leases, heartbeats and the janitor -------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """Renews this replica's leases and queue heartbeats, together, a third of a lease apart."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)  # the heartbeat's period
            try:
                await self.renew_leases()
            except GatewayError as error:
                logger.warning("job heartbeat: %s", error.message)
            await self._count_waiting()

    async def _count_waiting(self) -> None:
        """Samples the queue's depth for stillpoint_queue_depth; an unanswered count leaves the last one."""
        try:
            metrics.QUEUE_DEPTH.set(await self._queue.backlog())
        except WorkQueueUnavailableError as error:
            logger.debug("job queue depth: %s", error)

    async def renew_leases(self) -> None:
        """Renews every running job's lease and queue entry; a job whose lease was lost is stopped here, and
        so is one whose cancellation another replica recorded in the job store (its broadcast may never have
        come: Redis was down). The leases are renewed even while the queue does not answer: the database says
        who runs a job."""
        # A job whose end is being written is renewed too: a write riding out a database outage must not
        # let its lease lapse and the job be run again meanwhile.
        running = [job for job in self._running.values() if not job.recorder.is_finished]
        try:
            await self._queue.heartbeat(self.holder, [job.delivery for job in running])
        except WorkQueueUnavailableError as error:
            logger.debug("job heartbeat: %s", error)  # the queue announced the outage
        renewal = await self._store.renew(
            [job.recorder.meditation for job in running], self.holder, self._lease_seconds
        )
        cancelled = []
        for job in running:
            name = job.recorder.meditation
            if job.recorder.is_ending:
                # Its end is being written, or was while the renewal was under way (then the lease is gone
                # with the RUNNING state): the end's own write fences other replicas, and the task is
                # settling the end's bookkeeping (the queue, the assets), so it is never stopped here.
                continue
            if name in renewal.lost:
                logger.warning("%s: lease lost to another replica; stopping here", name)
                job.recorder.is_fenced = True
                job.task.cancel()
            elif name in renewal.cancel_requested and not job.recorder.is_cancel_requested:
                cancelled.append(job)
        # After every lease is renewed, so that stopping these never delays the others' renewal.
        for job in cancelled:
            logger.info("%s: cancelled on another replica; stopping here", job.recorder.meditation)
            try:
                await self._cancel_here(job)
            except GatewayError as error:
                # Stopped; its end, or its assets, are for the cancel's retry (or the janitor) to settle.
                logger.warning("%s: cancelling: %s", job.recorder.meditation, error.message)

    async def _tend(self) -> None:
        while True:
            try:
                await self.resume_orphans()
                await self.settle_owed_deletions()
            except GatewayError as error:
                logger.warning("job janitor: %s", error.message)
            await asyncio.sleep(self._lease_seconds / 3)  # the janitor's period

    async def settle_owed_deletions(self, grace_seconds: float = _OWED_DELETION_GRACE_SECONDS) -> list[str]:
        """Deletes the assets of finished jobs whose deletion was owed for over `grace_seconds` and never
        done (storage or media was down when the job failed or was cancelled, or its replica stopped
        mid-way). Stops at the first sign that a dependency is still down; the next round tries again."""
        owed_before = now() - timedelta(seconds=grace_seconds)
        settled = []
        for name in await self._store.list_owed_asset_deletions(owed_before, _JANITOR_BATCH):
            try:
                await self.delete_assets(name)
            except GatewayError as error:
                if error.kind in _DEPENDENCY_DOWN:
                    break
                logger.warning("%s: its assets are still not deleted (%s)", name, error.message)
                continue
            logger.info("%s: deleted the assets its end left behind", name)
            settled.append(name)
        return settled

    async def resume_orphans(self) -> list[str]:
        """Requeues running jobs nobody holds (their gateway stopped or crashed, or the queue lost them)."""
        self.start()
        requeued = []
        for name in await self._store.list_claimable(_JANITOR_BATCH):
            if name in self._running:
                continue
            # Read before the requeue changes it: a job with only its Accepted event never started.
            never_started = (await self._store.get(name)).last_sequence <= 1
            if await self._store.requeue(name, self._queue_lease_seconds):
                await self._queue.submit(name)
                logger.info("%s: requeued (%s)", name, self._why_abandoned(never_started=never_started))
                requeued.append(name)
        return requeued

    def _why_abandoned(self, *, never_started: bool) -> str:
        """Why a job nobody held lapsed, as far as the database can tell."""
        if not never_started:
            return "its gateway stopped renewing its lease"
        if self._queue.is_shared:
            return (
                "the queue never delivered it within the queue's lease: Redis lost it, or it waited that long"
            )
        return "it was queued on a gateway that stopped"

    async def _requeue_lost(self, error: WorkQueueLostError) -> None:
        """The queue came back empty: submits again every job the database says is waiting — abandoned
        (given back, or its lease lapsed) and queued (not yet taken) — at once rather than after the queue's
        lease. Jobs running here carry on. Every replica that sees the loss does this; the duplicate entries
        it makes are acknowledged by whoever takes them second."""
        logger.warning("%s; re-enqueuing the jobs the database has waiting", error)
        requeued: list[str] = []
        try:
            while batch := [
                name
                for name in await self._store.list_claimable(_JANITOR_BATCH)
                if name not in self._running and name not in requeued
            ]:
                for name in batch:
                    requeued.append(name)
                    if await self._store.requeue(name, self._queue_lease_seconds):
                        await self._queue.submit(name)
            # Queued before the loss and still unheld: their queue lease is in the future, so no janitor
            # would look at them for that long. Those just requeued above are among them.
            waiting = await self._store.list_queued(_LOST_QUEUED_BATCH)
            for name in waiting:
                if name not in self._running and name not in requeued:
                    requeued.append(name)
                    await self._queue.submit(name)
            if len(waiting) == _LOST_QUEUED_BATCH:
                logger.warning(
                    "job queue: more than %d jobs were waiting; a janitor requeues the rest once their "
                    "queue lease lapses",
                    _LOST_QUEUED_BATCH,
                )
        except GatewayError as failure:
            # The janitor finds the rest once their lease lapses.
            logger.warning("job queue: re-enqueuing stopped (%s)", failure.message)
        logger.info("job queue: re-enqueued %d job(s) the queue had lost", len(requeued))

    # ---- cancellation -----------------------------------------------------------------------------------

    async def _follow_cancellations(self) -> None:
        """Stops a job running here when any replica is asked to cancel it."""
        backoff = _Backoff()
        while True:
            try:
                async for name in self._queue.cancel_requests():
                    backoff.reset()
                    running = self._running.get(name)
                    if running is not None:
                        await self._cancel_here(running)
            except WorkQueueUnavailableError as error:
                logger.debug("job cancellations: %s", error)  # the queue announced the outage
                await backoff.wait()

    async def cancel(self, name: str) -> None:
        """Stops a job wherever it is — running here, queued, or running on another replica — and waits
        until it has recorded its end; finished jobs are left alone."""
        if (taking_on := self._taking_on.get(name)) is not None:
            # Being launched here this moment: let it start, then stop it as a running job.
            await taking_on.wait()
        running = self._running.get(name)
        if running is not None:
            await self._cancel_here(running)
        elif (meditation := await self._store.claim(name, self.holder, self._lease_seconds)) is not None:
            # Queued or abandoned: it is ours now, so end it here; its queue entry finds it final.
            recorder = JobRecorder(meditation=name, store=self._store, last_sequence=meditation.last_sequence)
            await self._finish_cancelled(recorder)
            await self.delete_assets(name)
        elif not (await self._store.get(name)).state.is_final:
            await self._cancel_elsewhere(name)

    async def _cancel_here(self, running: _Running) -> None:
        running.recorder.is_cancel_requested = True
        running.task.cancel()
        await asyncio.wait({running.task})
        # Cancelled before its first step ran, the task could not record its own end.
        if not running.recorder.is_finished and await self._finish_cancelled(running.recorder):
            await self._queue.acknowledge(running.delivery)
        await self.delete_assets(running.recorder.meditation)

    async def _cancel_elsewhere(self, name: str) -> None:
        """Asks the replica running the job to stop it, and waits (briefly) until it has. The request is
        recorded in the job store, which that replica reads at each lease renewal, and broadcast on the queue,
        which reaches it at once while Redis is up."""
        await self._store.request_cancel(name)
        deadline = time.monotonic() + _CANCEL_WAIT_SECONDS
        is_published = False
        while time.monotonic() < deadline:
            if not is_published:
                # Without Redis the request is published again each poll, until it goes out or time is up;
                # the renewal reads the recorded one meanwhile.
                try:
                    await self._queue.publish_cancel(name)
                    is_published = True
                except WorkQueueUnavailableError as error:
                    logger.debug("%s: cancel not yet published (%s)", name, error)
            if (await self._store.get(name)).state.is_final:
                return
            await asyncio.sleep(self._poll_interval_seconds / 2)  # polling the log, with a deadline

    async def _finish_failed(self, recorder: JobRecorder, failure: GatewayError) -> bool:
        """Records the job's FAILED end, and that its assets are owed a deletion (see `delete_assets`)."""
        return await recorder.finish(
            MeditationState.FAILED, failure, owes_asset_deletion=self._media is not None
        )

    async def _finish_cancelled(self, recorder: JobRecorder) -> bool:
        """Records the job's CANCELLED end, and that its assets are owed a deletion."""
        failure = GatewayError(FailureKind.CANCELLED, f"{recorder.meditation} was cancelled")
        return await recorder.finish(
            MeditationState.CANCELLED, failure, owes_asset_deletion=self._media is not None
        )

    async def delete_assets(self, name: str) -> None:
        """Deletes what the job stored through media (idempotent: a second call finds nothing). The deletion
        is recorded as owed first (a failed or cancelled job's end has recorded it already, in the end's own
        write) and settled after, so one that fails (storage or media down) or is cut short (this replica
        stopped, or its task was stopped between the end and here) is finished by a janitor: nothing stays
        orphaned in storage."""
        if self._media is not None:
            await self._store.owe_asset_deletion(name)
            # Nothing half-made stays behind: the narration, the live preview and any video go.
            await self._media.delete_meditation_assets(name)
            await self._store.settle_asset_deletion(name)
