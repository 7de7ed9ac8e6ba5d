"""A stage's start is recorded beside its work, not before it, and the source stage's end beside the
transcript's: with fifty people arriving together, each was a database round trip between a job's launch and
its first token. Each keeps its place in the log, and one that cannot be recorded still fails a stage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.backends import ContentClient
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import (
    Completed,
    Stage,
    StageChanged,
    StageState,
    TranscriptReady,
    decode_event,
)
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.recorder import JobRecorder
from services.gateway.jobs.store import JobStore
from services.gateway.models import JobChanges, MeditationOptions, MeditationState, Message
from tests.conftest import TEST_OWNER
from tests.gateway.held_jobs import a_running_job, jobs_over
from tests.security.test_stream_limits import TIMEOUTS

SOURCE_STARTED = StageChanged(stage=Stage.SOURCE, state=StageState.STARTED)


def _is_source(sequence: int, payload: bytes, state: StageState) -> bool:
    event = decode_event(sequence, datetime.now(), payload).event
    return isinstance(event, StageChanged) and (event.stage, event.state) == (Stage.SOURCE, state)


class SourceWatchingContent(ContentClient):
    """The content service, noting when a job first asks it for the transcript."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, TIMEOUTS)
        self.asked_for_transcript = asyncio.Event()

    def generate_transcript(self, *arguments: Any, **keywords: Any) -> Any:
        self.asked_for_transcript.set()
        return super().generate_transcript(*arguments, **keywords)


class SourceStartStore(JobStore):
    """The real store, except for the source stage's start (or, `held`, its end): its write waits for
    `wait_for` (content asked for the transcript), or is refused (`refusal`). Says when a transcript, and a
    job's end, are recorded."""

    def __init__(
        self,
        engine: AsyncEngine,
        wait_for: asyncio.Event | None = None,
        refusal: str = "",
        held: StageState = StageState.STARTED,
    ) -> None:
        super().__init__(engine)
        self.wait_for = wait_for
        self.refusal = refusal
        self.held = held
        self.transcript_recorded = asyncio.Event()
        self.job_ended = asyncio.Event()

    async def record_event(self, name: str, sequence: int, payload: bytes, changes: JobChanges) -> datetime:
        if _is_source(sequence, payload, self.held):
            if self.refusal:
                raise GatewayError(FailureKind.PRECONDITION, self.refusal)
            if self.wait_for is not None:
                await self.wait_for.wait()
        recorded = await super().record_event(name, sequence, payload, changes)
        event = decode_event(sequence, recorded, payload).event
        if isinstance(event, TranscriptReady):
            self.transcript_recorded.set()
        if isinstance(event, Completed):
            self.job_ended.set()
        return recorded


@pytest.fixture
async def content(content_channel: grpc.aio.Channel) -> SourceWatchingContent:
    return SourceWatchingContent(content_channel)


@pytest.fixture
async def conversation(content: SourceWatchingContent) -> str:
    made = await ContentClient.create_conversation(
        content, TEST_OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
    )
    return made.name


# Starts a job of the test conversation's on a replica over `store` (closed after the test); returns the
# replica's jobs and the job's name.
StartJob = Callable[[JobStore], Awaitable[tuple[MeditationJobs, str]]]


@pytest.fixture
async def start_job(
    content: SourceWatchingContent, conversation: str, media_channel: grpc.aio.Channel
) -> AsyncIterator[StartJob]:
    made: list[MeditationJobs] = []

    async def start(store: JobStore) -> tuple[MeditationJobs, str]:
        jobs = jobs_over(store, content, media_channel)
        made.append(jobs)
        return jobs, await jobs.start(TEST_OWNER, conversation, "", MeditationOptions())

    yield start
    for jobs in made:
        await jobs.close()


async def test_a_recorders_events_keep_the_order_they_were_emitted_in(job_store: JobStore) -> None:
    """Property: an event started with emit_soon takes its place before one emitted right after it, however
    the two writes are scheduled."""
    meditation = await a_running_job(job_store)
    recorder = JobRecorder(meditation=meditation.name, store=job_store)
    started = recorder.emit_soon(SOURCE_STARTED)
    await recorder.emit(StageChanged(stage=Stage.SOURCE, state=StageState.SUCCEEDED))
    await started
    page = await job_store.list_events(meditation.name, 0)
    events = [decode_event(event.sequence, event.event_time, event.payload).event for event in page.events]
    assert events == [SOURCE_STARTED, StageChanged(stage=Stage.SOURCE, state=StageState.SUCCEEDED)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("held", [StageState.STARTED, StageState.SUCCEEDED])
async def test_the_transcript_is_asked_for_before_the_sources_start_and_end_are_recorded(
    gateway_engine: AsyncEngine, content: SourceWatchingContent, start_job: StartJob, held: StageState
) -> None:
    """The source's start, or its end, is held until content has been asked for the transcript: a pipeline
    that waited for it to be recorded before the source's work, or before the transcript's, would wait for
    ever (the bound below). The log keeps its order."""
    store = SourceStartStore(gateway_engine, wait_for=content.asked_for_transcript, held=held)
    jobs, name = await start_job(store)

    async with asyncio.timeout(60):
        await store.transcript_recorded.wait()
    await jobs.cancel(TEST_OWNER, name)

    page = await store.list_events(name, 0)
    stages = [
        (event.stage, event.state)
        for stored in page.events
        if isinstance(
            event := decode_event(stored.sequence, stored.event_time, stored.payload).event, StageChanged
        )
    ]
    # The image and the transcript start side by side, in either order, once the source is in.
    assert stages[:2] == [(Stage.SOURCE, StageState.STARTED), (Stage.SOURCE, StageState.SUCCEEDED)]
    assert set(stages[2:4]) == {(Stage.IMAGE, StageState.STARTED), (Stage.TRANSCRIPT, StageState.STARTED)}
    assert [event.sequence for event in page.events] == list(range(1, len(page.events) + 1))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("held", "write"), [(StageState.STARTED, "start"), (StageState.SUCCEEDED, "end")])
async def test_a_source_write_that_cannot_be_recorded_fails_the_job(
    gateway_engine: AsyncEngine,
    content: SourceWatchingContent,
    start_job: StartJob,
    held: StageState,
    write: str,
) -> None:
    """The transcript was asked for beside the write, and the job ends with the write's failure, as it did
    when the source's start and end were recorded before the next step."""
    store = SourceStartStore(gateway_engine, refusal=f"the log refused the source stage's {write}", held=held)
    _, name = await start_job(store)

    async with asyncio.timeout(45):
        await store.job_ended.wait()
    failed = await store.get(name)
    assert content.asked_for_transcript.is_set()
    assert failed.state is MeditationState.FAILED
    assert f"refused the source stage's {write}" in failed.failure_message
