"""A replica's jobs, over content that holds every transcript until the test releases it (or over content of
the test's own): for tests that pause a job's launch, or its writes, with a store of their own."""

from __future__ import annotations

import grpc

from services.gateway.backends import ContentClient, MediaClient
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.store import JobStore
from services.gateway.pipeline import MeditationPipeline
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
