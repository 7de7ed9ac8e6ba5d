"""A replica's jobs, over content that holds every transcript until the test releases it (or over content of
the test's own): for tests that pause a job's launch, or its writes, with a store of their own."""

from __future__ import annotations

import grpc

from services.gateway.backends import ContentClient, MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.models import Meditation, MeditationOptions
from services.gateway.pipeline import MeditationPipeline
from tests.conftest import TEST_OWNER
from tests.security.test_stream_limits import TIMEOUTS, HeldContent


def jobs_over_held_content(
    store: JobStore, content_channel: grpc.aio.Channel, media_channel: grpc.aio.Channel
) -> tuple[MeditationJobs, HeldContent]:
    """The jobs and the content they call; set `content.release` and close the jobs when done."""
    content = HeldContent(content_channel)
    return jobs_over(store, content, media_channel), content


def jobs_over(store: JobStore, content: ContentClient, media_channel: grpc.aio.Channel) -> MeditationJobs:
    """A replica's jobs over `store`, calling `content` and the media server; close them when done."""
    media = MediaClient(media_channel, TIMEOUTS)
    return MeditationJobs(
        store, content, MeditationPipeline(content, media, TIMEOUTS), media=media, poll_interval_seconds=0.05
    )


async def a_running_job(store: JobStore, *, queue_lease_seconds: float = 60.0) -> Meditation:
    """A new job of the test owner's, straight in the store (no intake, no queue): for tests of what follows
    its creation."""
    meditation, _ = await store.create(
        conversation="conversations/0123456789abcdef",
        owner=TEST_OWNER,
        request_id="",
        options=MeditationOptions(),
        queue_lease_seconds=queue_lease_seconds,
    )
    return meditation
