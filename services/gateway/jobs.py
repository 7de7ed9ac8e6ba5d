"""Meditation jobs: start them once, record every event before anyone sees it, and stream logs to watchers."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import Completed, Event, SequencedEvent, Stage, decode_event, encode_event
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
    client: str = ""
    request_id: str = ""
    is_finished: bool = False
    _watchers: set[asyncio.Queue[SequencedEvent]] = field(default_factory=set)
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
            sequence = self.last_sequence + 1
            elapsed_seconds = self.elapsed_seconds
            event_time = await self.content.record_event(
                self.meditation, sequence, encode_event(elapsed_seconds, event), changes or JobChanges()
            )
            self.last_sequence = sequence
            recorded = SequencedEvent(sequence, event_time, elapsed_seconds, event)
            for watcher in self._watchers:
                watcher.put_nowait(recorded)

    def watch(self) -> asyncio.Queue[SequencedEvent]:
        """Subscribes to events recorded from now on."""
        queue: asyncio.Queue[SequencedEvent] = asyncio.Queue()
        self._watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[SequencedEvent]) -> None:
        """Ends a subscription."""
        self._watchers.discard(queue)

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


class MeditationJobs:
    """Starts jobs, runs each as a task that outlives the stream that asked for it, and replays their logs."""

    def __init__(
        self,
        content: ContentPort,
        pipeline: MeditationPipeline,
        *,
        media: MediaPort | None = None,
        poll_interval_seconds: float = 0.5,
        lease_seconds: float = 30.0,
        owner: str | None = None,
        max_jobs_per_client: int = 4,
    ):
        self._content = content
        self._pipeline = pipeline
        self._media = media
        self._poll_interval_seconds = poll_interval_seconds
        self._lease_seconds = lease_seconds
        self._max_jobs_per_client = max_jobs_per_client
        # One identity per process: its leases tell other replicas the job is in good hands.
        self.owner = owner or f"gateway-{secrets.token_hex(6)}"
        self._running: dict[str, tuple[JobRecorder, asyncio.Task[None]]] = {}
        self._janitor: asyncio.Task[None] | None = None

    async def start(
        self, conversation: str, request_id: str, options: MeditationOptions, client: str = ""
    ) -> str:
        """Creates the job, or finds the one a repeated request_id made, and returns its name."""
        self._check_quota(client, request_id)
        meditation, is_created = await self._content.create_meditation(
            conversation, request_id, options, self.owner, self._lease_seconds
        )
        if is_created:
            self._launch(meditation, client=client, request_id=request_id)
        return meditation.name

    def _check_quota(self, client: str, request_id: str) -> None:
        """Refuses a client's job past its limit of concurrent jobs (on this gateway); a retry of one of its
        running jobs (same request_id) is never refused."""
        mine = [recorder for recorder, _ in self._running.values() if recorder.client == client]
        if request_id and any(recorder.request_id == request_id for recorder in mine):
            return
        if len(mine) >= self._max_jobs_per_client:
            raise GatewayError(
                FailureKind.EXHAUSTED,
                f"{len(mine)} of your meditations are already running (the limit is "
                f"{self._max_jobs_per_client}): wait for one to finish, or cancel one",
            )

    def _launch(self, meditation: Meditation, *, client: str = "", request_id: str = "") -> None:
        # A resumed job continues its log where it stopped: no gap, no duplicate.
        recorder = JobRecorder(
            meditation=meditation.name,
            content=self._content,
            last_sequence=meditation.last_sequence,
            client=client,
            request_id=request_id,
        )
        task = asyncio.create_task(self._run(recorder, meditation), name=meditation.name)
        self._running[meditation.name] = (recorder, task)

    def start_janitor(self) -> None:
        """Keeps this process's leases fresh and takes over jobs whose owner stopped or died."""
        if self._janitor is None:
            self._janitor = asyncio.create_task(self._tend(), name="job janitor")

    async def stop_janitor(self) -> None:
        """Takes no more orphaned jobs (at shutdown: another replica should take them)."""
        if self._janitor is not None:
            self._janitor.cancel()
            await asyncio.gather(self._janitor, return_exceptions=True)

    async def _tend(self) -> None:
        while True:
            try:
                await self.renew_leases()
                await self.resume_orphans()
            except GatewayError as error:
                logger.warning("job janitor: %s", error.message)
            await asyncio.sleep(self._lease_seconds / 3)

    async def renew_leases(self) -> None:
        """Renews every running job's lease; a job whose lease was lost is another replica's now."""
        for name, (recorder, task) in list(self._running.items()):
            if recorder.is_finished:
                continue
            if not await self._content.claim_meditation(name, self.owner, self._lease_seconds):
                logger.warning("%s: lease lost to another replica; stopping here", name)
                task.cancel()

    async def resume_orphans(self) -> list[str]:
        """Claims running jobs nobody holds (their gateway stopped or crashed) and carries them on."""
        resumed = []
        for name in await self._content.list_claimable_meditations(10):
            if name in self._running:
                continue
            if await self._content.claim_meditation(name, self.owner, self._lease_seconds):
                meditation = await self._content.get_meditation(name)
                if meditation.state.is_final:
                    continue
                logger.info("%s: resuming after event %d", name, meditation.last_sequence)
                self._launch(meditation)
                resumed.append(name)
        return resumed

    async def _run(self, recorder: JobRecorder, meditation: Meditation) -> None:
        try:
            await self._pipeline.run(recorder, meditation)
            await self._finish(recorder, MeditationState.SUCCEEDED, None)
        except asyncio.CancelledError:
            if not recorder.is_cancel_requested:
                raise  # shutdown or a lost lease: the job stays running for whoever holds it next
            await self._finish_stopped(recorder)
        except GatewayError as error:
            logger.warning("%s failed: %s", meditation.name, error.message)
            await self._finish(recorder, MeditationState.FAILED, error)
        except Exception:
            logger.exception("%s failed unexpectedly", meditation.name)
            failure = GatewayError(
                FailureKind.INTERNAL, "the meditation failed on an internal error; try again"
            )
            await self._finish(recorder, MeditationState.FAILED, failure)
        finally:
            self._running.pop(meditation.name, None)

    async def _finish(
        self, recorder: JobRecorder, state: MeditationState, failure: GatewayError | None
    ) -> None:
        completed = recorder.summary(state, failure)
        changes = JobChanges(state=state, failure_message=completed.failure_message or None)
        try:
            await recorder.emit(completed, changes)
        except GatewayError as error:
            # The log could not take its last event (content unreachable, or another replica took the job
            # over): the job stays running in the database, and a janitor will carry it on.
            logger.error("%s: could not record its end: %s", recorder.meditation, error.message)
            return
        recorder.is_finished = True

    async def _finish_stopped(self, recorder: JobRecorder) -> None:
        failure = GatewayError(FailureKind.CANCELLED, f"{recorder.meditation} was cancelled")
        await self._finish(recorder, MeditationState.CANCELLED, failure)

    async def _stop(self, recorder: JobRecorder, task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.wait({task})
        if not recorder.is_finished and recorder.is_cancel_requested:
            # Cancelled before its first step ran, so the task could not record its own end.
            self._running.pop(recorder.meditation, None)
            await self._finish_stopped(recorder)

    async def watch(self, name: str, after_sequence: int) -> AsyncIterator[SequencedEvent]:
        """Replays the log after `after_sequence`, then follows live events until the job's last event."""
        running = self._running.get(name)
        # Subscribe before reading the log, so nothing recorded in between is missed.
        live = running[0].watch() if running is not None else None
        last_sequence = after_sequence
        try:
            while True:
                page = await self._content.list_events(name, last_sequence)
                for stored in page.events:
                    event = decode_event(stored.sequence, stored.event_time, stored.payload)
                    yield event
                    last_sequence = event.sequence
                    if isinstance(event.event, Completed):
                        return
                if page.events:
                    continue  # a full page may have more behind it
                if live is not None:
                    break
                if page.state.is_final:
                    return
                # The job runs in another process: follow its log.
                await asyncio.sleep(self._poll_interval_seconds)
            while True:
                event = await live.get()
                if event.sequence <= last_sequence:
                    continue
                yield event
                last_sequence = event.sequence
                if isinstance(event.event, Completed):
                    return
        finally:
            if running is not None and live is not None:
                running[0].unwatch(live)

    async def get(self, name: str) -> Meditation:
        """Returns the job record."""
        return await self._content.get_meditation(name)

    async def cancel(self, name: str) -> Meditation:
        """Stops a running job and waits until it has recorded its end; finished jobs are left alone."""
        running = self._running.get(name)
        if running is not None:
            recorder, task = running
            recorder.is_cancel_requested = True
            await self._stop(recorder, task)
            if self._media is not None:
                # Nothing half-made stays behind: the narration, the live preview and any video go.
                await self._media.delete_meditation_assets(name)
        return await self._content.get_meditation(name)

    async def close(self) -> None:
        """Stops this process's jobs and gives them back: another replica, or this one after a restart,
        resumes each from its last recorded event."""
        if self._janitor is not None:
            self._janitor.cancel()
        running = list(self._running.values())
        for _, task in running:
            task.cancel()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        for recorder, _ in running:
            if not recorder.is_finished:
                try:
                    await self._content.release_meditation(recorder.meditation, self.owner)
                except GatewayError as error:
                    # The lease lapses on its own; the job is only delayed, not lost.
                    logger.warning("%s: could not release (%s)", recorder.meditation, error.message)
