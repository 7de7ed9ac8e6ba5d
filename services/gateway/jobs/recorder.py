"""A running job's events: numbered, written to the job's log, then handed to the watchers following it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from services import metrics
from services.database import now
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import (
    Completed,
    Event,
    PlaylistReady,
    SequencedEvent,
    SpokenOutcome,
    Stage,
    VideoReady,
    encode_event,
    without_uris,
)
from services.gateway.jobs.retry_policy import EventWritePolicy
from services.gateway.jobs.store import JobStore
from services.gateway.models import JobChanges, MeditationState

logger = logging.getLogger(__name__)

# How many recorded events a live watcher may leave unread. A job records a few hundred events at most, so a
# watcher this far behind has stopped reading (a stalled client): it is dropped rather than buffered without
# bound, and resumes from the log with `WatchMeditation(after_sequence)`.
MAX_UNREAD_EVENTS = 256


class LiveWatcher:
    """One follower's buffer of a running job's events, bounded: past `max_unread_events` unread events the
    recorder drops it (`has_fallen_behind`), and it reads what it holds, then its end."""

    def __init__(self, max_unread_events: int) -> None:
        # Unbounded as a queue; `offer` counts, so the end marker always fits.
        self._events: asyncio.Queue[SequencedEvent | None] = asyncio.Queue()
        self._max_unread_events = max_unread_events
        self.has_fallen_behind = False

    async def next(self) -> SequencedEvent | None:
        """The next recorded event; None when this attempt is over or the watcher was dropped."""
        return await self._events.get()

    def offer(self, event: SequencedEvent) -> bool:
        """Buffers the event; False (and the watcher ends) when it already holds its limit unread."""
        if self._events.qsize() >= self._max_unread_events:
            self.has_fallen_behind = True
            self._events.put_nowait(None)
            return False
        self._events.put_nowait(event)
        return True

    def end(self) -> None:
        """No more events will come to this watcher."""
        self._events.put_nowait(None)


@dataclass
class JobRecorder:
    """Numbers a running job's events, records each in the log, then hands it to live watchers."""

    meditation: str
    store: JobStore
    started_at: float = field(default_factory=time.monotonic)
    last_sequence: int = 0
    stage_seconds: dict[Stage, float] = field(default_factory=dict)
    transcript_cache_hit: bool = False
    image_cache_hit: bool = False
    misread_sentence_count: int = 0
    # Whether an earlier attempt ran: its log held more than the `accepted` event when this one began.
    is_resumed: bool = False
    spoken_outcome: SpokenOutcome = SpokenOutcome.UNSPECIFIED
    outcome_reason: str = ""
    is_cancel_requested: bool = False
    # Set as the job's end starts to be written, and never cleared: from then on the end's own write decides
    # whether this attempt or another replica's has the job (the log takes no event after another's), so a
    # renewal that finds the lease gone must not stop the task between its end and the bookkeeping after.
    is_ending: bool = False
    is_finished: bool = False
    # Whether this attempt has made its first playable media (the live preview) yet: measured once.
    is_playable: bool = False
    # Set when another replica took the job over: this one must not write to its log any more.
    is_fenced: bool = False
    # How long an event's write waits out an unreachable database before the attempt fails.
    write_policy: EventWritePolicy = field(default_factory=EventWritePolicy)
    max_unread_events: int = MAX_UNREAD_EVENTS
    _watchers: set[LiveWatcher] = field(default_factory=set)
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
        records the cancellation takes the next sequence instead of colliding with the one in flight. A
        write the database did not answer is tried again (`EventWritePolicy`), except for a job being
        stopped: a shutdown or a cancel must not wait a database outage out.
        """
        record, is_abandoned = self._start_recording(event, changes)
        try:
            await asyncio.shield(record)
        except asyncio.CancelledError:
            is_abandoned.set()
            raise

    def emit_soon(self, event: Event, changes: JobChanges | None = None) -> asyncio.Future[None]:
        """Starts recording the event and returns its write without waiting for it: the event keeps its
        place before every event emitted after this call, and awaiting the write raises what `emit` would.
        For an event the caller's next step need not wait for (a stage's start: its work begins beside
        the write; the source stage's end: the transcript's and the image's calls begin beside it)."""
        record, _ = self._start_recording(event, changes)
        return record

    def _start_recording(
        self, event: Event, changes: JobChanges | None
    ) -> tuple[asyncio.Future[None], asyncio.Event]:
        """The event's write, started now: tasks take their first step in the order they were made, and
        the first step queues for the log's lock, so events are numbered in the order they were emitted."""
        # Set when the caller is being stopped: the write is then tried once more at most, not waited out.
        is_abandoned = asyncio.Event()
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            is_abandoned.set()
        return asyncio.ensure_future(self._record(event, changes, is_abandoned)), is_abandoned

    async def _record(self, event: Event, changes: JobChanges | None, is_abandoned: asyncio.Event) -> None:
        async with self._lock:
            if self.is_fenced:
                raise GatewayError(FailureKind.PRECONDITION, f"{self.meditation} is held by another replica")
            sequence = self.last_sequence + 1
            elapsed_seconds = self.elapsed_seconds
            event_time = await self._write(
                sequence, encode_event(elapsed_seconds, without_uris(event)), changes, is_abandoned
            )
            self.last_sequence = sequence
            self._publish(SequencedEvent(sequence, event_time, elapsed_seconds, event))
            self._measure(event, elapsed_seconds)

    def _measure(self, event: Event, elapsed_seconds: float) -> None:
        """Records the moments a listener waits for: the first playable media, each video."""
        if isinstance(event, PlaylistReady) and not self.is_playable:
            self.is_playable = True
            metrics.TIME_TO_FIRST_PLAYABLE_SECONDS.observe(elapsed_seconds)
        elif isinstance(event, VideoReady):
            metrics.TIME_TO_VIDEO_SECONDS.labels(quality=event.quality.value).observe(elapsed_seconds)

    async def _write(
        self, sequence: int, payload: bytes, changes: JobChanges | None, is_abandoned: asyncio.Event
    ) -> datetime:
        """Writes one event, trying again while the database is unreachable, within the policy's bound.
        The same payload every time: a try whose commit went through unanswered is found, not repeated."""
        deadline = time.monotonic() + self.write_policy.max_wait_seconds
        failures = 0
        while True:
            try:
                return await self.store.record_event(
                    self.meditation, sequence, payload, changes or JobChanges()
                )
            except GatewayError as error:
                if error.kind is not FailureKind.UNAVAILABLE or is_abandoned.is_set() or self.is_fenced:
                    raise
                failures += 1
                delay = self.write_policy.delay_after(failures)
                if time.monotonic() + delay > deadline:
                    raise
                if failures == 1:
                    logger.warning(
                        "%s: event %d not recorded (%s); trying again for up to %g s",
                        self.meditation,
                        sequence,
                        error.message,
                        self.write_policy.max_wait_seconds,
                    )
            await asyncio.sleep(delay)  # a back-off while the database is down, not synchronisation

    def _publish(self, recorded: SequencedEvent) -> None:
        """Hands the event to every watcher; one that has fallen too far behind is dropped, so a stalled
        client never makes the gateway hold a job's events for it."""
        for watcher in [watcher for watcher in self._watchers if not watcher.offer(recorded)]:
            self._watchers.discard(watcher)
            logger.warning(
                "%s: a watcher left %d events unread and was dropped at event %d",
                self.meditation,
                self.max_unread_events,
                recorded.sequence,
            )

    @property
    def watchers(self) -> int:
        """How many follow the job live."""
        return len(self._watchers)

    def watch(self) -> LiveWatcher:
        """Subscribes to events recorded from now on."""
        watcher = LiveWatcher(self.max_unread_events)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: LiveWatcher) -> None:
        """Ends a subscription."""
        self._watchers.discard(watcher)

    def end_attempt(self) -> None:
        """Tells watchers this attempt is over: the job's next events come from another attempt."""
        for watcher in self._watchers:
            watcher.end()

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
            spoken_outcome=self.spoken_outcome,
            outcome_reason=self.outcome_reason,
            misread_sentence_count=self.misread_sentence_count,
        )

    async def finish(
        self, state: MeditationState, failure: GatewayError | None, *, owes_asset_deletion: bool = False
    ) -> bool:
        """Records the job's last event, and with it, where `owes_asset_deletion`, that its stored assets
        are to be deleted; False when it could not (the job then stays with the queue, and another attempt
        carries it on)."""
        self.is_ending = True
        completed = self.summary(state, failure)
        changes = JobChanges(
            state=state,
            failure_message=completed.failure_message or None,
            asset_deletion_owed_time=now() if owes_asset_deletion else None,
        )
        try:
            await self.emit(completed, changes)
        except GatewayError as error:
            # The database unreachable, or another replica took the job over: the job stays running in the
            # database and pending in the queue.
            logger.error("%s: could not record its end: %s", self.meditation, error.message)
            return False
        self.is_finished = True
        metrics.JOBS_FINISHED.labels(state=state.value).inc()
        return True
