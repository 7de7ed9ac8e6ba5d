"""A full queue refuses new meditations, never the retry of one it has already accepted (AIP-155)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from services.gateway.backends import MediaClient
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.jobs import JobLimits, MeditationJobs, claim_timeout_seconds
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.work_queue import InProcessWorkQueue
from services.gateway.models import Conversation, MeditationOptions, Message
from services.gateway.pipeline import MeditationPipeline
from tests.conftest import TEST_OWNER
from tests.security.test_stream_limits import TIMEOUTS, HeldContent


class FillableQueue(InProcessWorkQueue):
    """The in-process queue, which reports itself full of other owners' jobs once the test says so."""

    def __init__(self) -> None:
        super().__init__(claim_timeout_seconds=claim_timeout_seconds(30.0))
        self.is_full = False

    async def backlog(self) -> int:
        return 1_000 if self.is_full else await super().backlog()


@pytest.fixture
async def jobs_and_queue(
    content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel, job_store: JobStore
) -> AsyncIterator[tuple[MeditationJobs, FillableQueue, HeldContent]]:
    content = HeldContent(content_channel)
    media = MediaClient(media_channel, TIMEOUTS)
    queue = FillableQueue()
    jobs = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, media, TIMEOUTS),
        media=media,
        queue=queue,
        limits=JobLimits(max_queued_jobs=1),
    )
    yield jobs, queue, content
    content.release.set()
    await jobs.close()


async def test_a_full_queue_answers_a_retry_with_the_meditation_it_accepted(
    jobs_and_queue: tuple[MeditationJobs, FillableQueue, HeldContent],
) -> None:
    jobs, queue, content = jobs_and_queue
    conversation = await content.create_conversation(
        TEST_OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
    )
    request_id = str(uuid.uuid4())
    accepted = await jobs.start(TEST_OWNER, conversation.name, request_id, MeditationOptions())
    queue.is_full = True

    # The client never heard the answer and retries: it gets its meditation, not RESOURCE_EXHAUSTED.
    assert await jobs.start(TEST_OWNER, conversation.name, request_id, MeditationOptions()) == accepted
    # A new request is held to the limit.
    with pytest.raises(GatewayError) as refused:
        await jobs.start(TEST_OWNER, conversation.name, str(uuid.uuid4()), MeditationOptions())
    assert refused.value.kind is FailureKind.EXHAUSTED
    assert "waiting to start" in refused.value.message
    # The same id for another request is still ALREADY_EXISTS, full queue or not.
    with pytest.raises(GatewayError) as reused:
        await jobs.start(TEST_OWNER, conversation.name, request_id, MeditationOptions(skip_cache=True))
    assert reused.value.kind is FailureKind.ALREADY_EXISTS


async def test_a_new_job_asks_for_what_it_is_judged_on_at_once_and_judges_it_in_order(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    job_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Property: the conversation, the queue's backlog and the owner's stored bytes are asked for together
    (the conversation's answer here waits until the other two have been asked: one after another, it would
    never come); whichever answers first, a full queue is still refused before a conversation that is not
    the caller's, as before."""
    asked: set[str] = set()
    everything_asked = asyncio.Event()

    def ask(what: str) -> None:
        asked.add(what)
        if asked >= {"conversation", "backlog", "stored bytes"}:
            everything_asked.set()

    class AnswersLast(HeldContent):
        async def get_conversation(self, owner: str, conversation: str) -> Conversation:
            ask("conversation")
            async with asyncio.timeout(5):
                await everything_asked.wait()
            return await super().get_conversation(owner, conversation)

    class CountedQueue(FillableQueue):
        async def backlog(self) -> int:
            ask("backlog")
            return await super().backlog()

    stored_bytes_of = job_store.stored_bytes_of

    async def counted_stored_bytes_of(owner: str) -> int:
        ask("stored bytes")
        return await stored_bytes_of(owner)

    monkeypatch.setattr(job_store, "stored_bytes_of", counted_stored_bytes_of)
    content = AnswersLast(content_channel)
    media = MediaClient(media_channel, TIMEOUTS)
    queue = CountedQueue()
    jobs = MeditationJobs(
        job_store, content, MeditationPipeline(content, media, TIMEOUTS), media=media, queue=queue
    )
    try:
        mine = await content.create_conversation(
            TEST_OWNER, "", [Message(role="user", text="The tide came in slowly.")], ""
        )
        theirs = await content.create_conversation(
            "someone-else", "", [Message(role="user", text="A quiet road home.")], ""
        )
        assert (await jobs.start(TEST_OWNER, mine.name, "", MeditationOptions())).startswith("meditations/")
        queue.is_full = True
        with pytest.raises(GatewayError) as refused:
            await jobs.start(TEST_OWNER, theirs.name, "", MeditationOptions())
        assert refused.value.kind is FailureKind.EXHAUSTED
        queue.is_full = False
        with pytest.raises(GatewayError) as hidden:
            await jobs.start(TEST_OWNER, theirs.name, "", MeditationOptions())
        assert hidden.value.kind is FailureKind.NOT_FOUND
    finally:
        content.release.set()
        await jobs.close()
