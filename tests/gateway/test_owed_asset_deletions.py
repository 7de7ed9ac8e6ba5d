"""A failed job's assets are deleted even when storage is down as it fails, or its task is stopped as it
ends: the deletion is owed in the job store, from the end's own write, until it is done."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services import serving
from services.cli import gateway_channel
from services.database import now
from services.gateway.api_keys import ApiKeyStore
from services.gateway.authentication import Authenticator
from services.gateway.backends import ContentClient, MediaClient
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.events import VideoQuality
from services.gateway.jobs import JobLimits, MeditationJobs
from services.gateway.jobs.store import JobRow, JobStore, Renewal
from services.gateway.models import JobChanges, MeditationOptions, MeditationState, Message
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.ports import EncodedVideo, SpokenNarration, StoredVideo
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.conftest import GATEWAY_SERVICE
from tests.gateway.held_jobs import jobs_over
from tests.gateway.test_failures import run_until_status
from tests.security.test_stream_limits import TIMEOUTS
from tests.waiting import wait_until

OWNER = "tester"
IN_A_MINUTE = timedelta(minutes=1)


async def _job(store: JobStore, state: MeditationState) -> str:
    made, _ = await store.create(
        owner=OWNER,
        conversation="conversations/0123456789abcdef",
        request_id="",
        options=MeditationOptions(),
        queue_lease_seconds=60.0,
    )
    await store.record_event(made.name, 1, b"accepted", JobChanges())
    if state.is_final:
        await store.record_event(made.name, 2, b"completed", JobChanges(state=state))
    return made.name


async def _update_time(engine: AsyncEngine, name: str) -> object:
    async with engine.connect() as connection:
        return await connection.scalar(
            select(JobRow.update_time).where(JobRow.id == name.removeprefix("meditations/"))
        )


async def test_an_owed_deletion_is_listed_until_settled_and_never_for_a_running_job(
    store: JobStore, engine: AsyncEngine
) -> None:
    failed = await _job(store, MeditationState.FAILED)
    running = await _job(store, MeditationState.RUNNING)
    finished_at = await _update_time(engine, failed)
    for name in (failed, running):
        await store.owe_asset_deletion(name)
    await store.owe_asset_deletion("meditations/0123456789abcdef0123456789abcdef")  # gone: owes nothing
    assert await store.list_owed_asset_deletions(now() + IN_A_MINUTE, 10) == [failed]
    # Owed only now: a janitor's grace leaves it to whoever is deleting it this moment.
    assert await store.list_owed_asset_deletions(now() - IN_A_MINUTE, 10) == []
    # Retention counts from when the job finished, not from its bookkeeping.
    assert await _update_time(engine, failed) == finished_at
    await store.settle_asset_deletion(failed)
    assert await store.list_owed_asset_deletions(now() + IN_A_MINUTE, 10) == []
    assert await _update_time(engine, failed) == finished_at


async def test_an_end_that_owes_the_deletion_records_the_debt_in_its_own_write(store: JobStore) -> None:
    running = await _job(store, MeditationState.RUNNING)
    owed_at = now()
    await store.record_event(
        running, 2, b"completed", JobChanges(state=MeditationState.FAILED, asset_deletion_owed_time=owed_at)
    )
    assert (await store.get(running)).state is MeditationState.FAILED
    # Owed from the moment given, not from when a later call noticed.
    assert await store.list_owed_asset_deletions(owed_at + timedelta(milliseconds=1), 10) == [running]
    assert await store.list_owed_asset_deletions(owed_at, 10) == []


class MediaWithStorageDown(MediaClient):
    """The real media client, whose deletions fail as they would while storage is down, until `is_down`
    is cleared."""

    def __init__(self, channel: grpc.aio.Channel, timeouts: StageTimeouts) -> None:
        super().__init__(channel, timeouts)
        self.is_down = True

    async def delete_meditation_assets(self, meditation: str) -> int:
        if self.is_down:
            raise GatewayError(FailureKind.UNAVAILABLE, "media: storage is unavailable")
        return await super().delete_meditation_assets(meditation)


def _files_of(tmp_path: Path, meditation: str) -> list[Path]:
    meditation_id = meditation.rsplit("/", 1)[-1]
    stored = (tmp_path / "storage").rglob("*")
    return [path for path in stored if path.is_file() and meditation_id in str(path)]


async def test_a_failed_jobs_assets_left_by_a_storage_outage_are_deleted_once_it_answers(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    job_store: JobStore,
    api_keys: ApiKeyStore,
    tmp_path: Path,
) -> None:
    """Property: a job that fails (its video stage past its deadline) while storage refuses deletions keeps
    its narration and preview only until the first janitor round after storage answers again."""
    timeouts = StageTimeouts(video_seconds=0.001)
    content = ContentClient(content_channel, timeouts)
    media = MediaWithStorageDown(media_channel, timeouts)
    jobs = MeditationJobs(
        job_store,
        content,
        MeditationPipeline(content, media, timeouts),
        media=media,
        limits=JobLimits(max_attempts=1),
    )
    running = await serving.start_server(
        service_names=[GATEWAY_SERVICE],
        register=lambda server: gateway_grpc.add_GatewayServiceServicer_to_server(
            GatewayServicer(content, jobs), server
        ),
        address="127.0.0.1:0",
        interceptors=[AuthenticationInterceptor(Authenticator(api_keys=api_keys))],
    )
    try:
        key = (await api_keys.create(OWNER)).key
        async with gateway_channel(f"127.0.0.1:{running.port}", key) as channel:
            seen, status = await run_until_status(gateway_grpc.GatewayServiceStub(channel))
        meditation = seen[0].accepted.meditation
        assert status.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert seen[-1].completed.state == gateway_pb.MEDITATION_STATE_FAILED
        assert _files_of(tmp_path, meditation), "the narration was stored before the failure"

        # The deletion is tried once the end is recorded, after the stream has its last event.
        async def is_owed() -> bool:
            return await job_store.list_owed_asset_deletions(now() + IN_A_MINUTE, 10) == [meditation]

        await wait_until(is_owed, what="the failed job's asset deletion is owed")
        # While storage is down a janitor round settles nothing, and the debt stays on record.
        assert await jobs.dispatcher.settle_owed_deletions(grace_seconds=0) == []
        assert await is_owed()
        media.is_down = False
        assert await jobs.dispatcher.settle_owed_deletions(grace_seconds=0) == [meditation]
        assert _files_of(tmp_path, meditation) == []
        assert await job_store.list_owed_asset_deletions(now() + IN_A_MINUTE, 10) == []
    finally:
        await running.stop(0)
        await jobs.close()


class MediaFailingToRender(MediaClient):
    """The real media client, whose video renders wait for the test and then fail as they would while
    storage refuses uploads (a retryable failure: on the job's last attempt, it is dead-lettered)."""

    def __init__(self, channel: grpc.aio.Channel, timeouts: StageTimeouts) -> None:
        super().__init__(channel, timeouts)
        self.rendering = asyncio.Event()
        self.fail = asyncio.Event()

    async def render_video(
        self, meditation: str, image_storage_key: str, narration: SpokenNarration, quality: VideoQuality
    ) -> AsyncGenerator[EncodedVideo | StoredVideo, None]:
        self.rendering.set()
        await self.fail.wait()
        raise GatewayError(FailureKind.UNAVAILABLE, "media: storage is unavailable")
        yield  # a generator, as the method it replaces


class EndRacingStore(JobStore):
    """A job store whose renewals, once `holds_renewals`, are answered only after a failed job's end is
    recorded (they set out while it still ran), and whose dead-lettering, the bookkeeping after a failed
    end, waits until `renewal_done`: the moment a renewal finds the job's lease gone because it ended."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.holds_renewals = False
        self.renewal_sent = asyncio.Event()
        self.renewal_done = asyncio.Event()
        self._end_recorded = asyncio.Event()

    async def record_event(self, name: str, sequence: int, payload: bytes, changes: JobChanges) -> datetime:
        recorded = await super().record_event(name, sequence, payload, changes)
        if changes.state is MeditationState.FAILED:
            self._end_recorded.set()
        return recorded

    async def renew(self, names: Sequence[str], holder: str, lease_seconds: float) -> Renewal:
        if self.holds_renewals and names:
            self.renewal_sent.set()
            await self._end_recorded.wait()
        return await super().renew(names, holder, lease_seconds)

    async def mark_dead_lettered(self, name: str, attempts: int) -> None:
        await self.renewal_done.wait()
        await super().mark_dead_lettered(name, attempts)


async def _failing_job(
    store: JobStore, content_channel: grpc.aio.Channel, media: MediaClient
) -> tuple[MeditationJobs, str]:
    """A replica whose one attempt of a new job fails at its video stage, and the job's name."""
    content = ContentClient(content_channel, TIMEOUTS)
    jobs = MeditationJobs(
        store,
        content,
        MeditationPipeline(content, media, TIMEOUTS),
        media=media,
        limits=JobLimits(max_attempts=1),
        poll_interval_seconds=0.05,
    )
    conversation = await content.create_conversation(
        OWNER, "", [Message(role="user", text="The sea was calm this morning.")], ""
    )
    return jobs, await jobs.start(OWNER, conversation.name, "", MeditationOptions())


async def test_a_renewal_that_finds_a_failed_jobs_lease_gone_as_it_ends_leaves_it_to_delete_its_assets(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    gateway_engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    """The race a slow CI machine found: a lease renewal set out while the job ran, its end was recorded
    meanwhile (so the renewal holds no lease of it), and the replica must not stop the task as one whose
    lease another replica took: it is dead-lettering the job and deleting its assets."""
    store = EndRacingStore(gateway_engine)
    media = MediaFailingToRender(media_channel, TIMEOUTS)
    jobs, meditation = await _failing_job(store, content_channel, media)
    try:
        await media.rendering.wait()
        assert _files_of(tmp_path, meditation), "the narration was stored before the failure"
        store.holds_renewals = True

        async def renew() -> None:
            try:
                await jobs.dispatcher.renew_leases()
            finally:
                store.renewal_done.set()

        renewal = asyncio.create_task(renew())
        await store.renewal_sent.wait()  # the job still runs: its lease is asked for
        media.fail.set()
        await renewal
        await wait_until(
            lambda: jobs.dispatcher.recorder_of(meditation) is None, what="the job's task to end"
        )

        assert (await store.get(meditation)).state is MeditationState.FAILED
        assert [job.name for job in await store.list_dead_letters(10)] == [meditation]
        # Deleted by the job's own end, not a janitor's later round: nothing is owed.
        assert _files_of(tmp_path, meditation) == []
        assert await store.list_owed_asset_deletions(now() + IN_A_MINUTE, 10) == []
    finally:
        media.fail.set()
        store.renewal_done.set()
        await jobs.close()


class EndStallingStore(JobStore):
    """A job store whose dead-lettering, the bookkeeping after a failed end, never answers: the replica is
    stopped there."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.at_dead_letter = asyncio.Event()

    async def mark_dead_lettered(self, name: str, attempts: int) -> None:
        self.at_dead_letter.set()
        await asyncio.Event().wait()


async def test_a_replica_stopped_between_a_failed_jobs_end_and_its_deletion_leaves_the_deletion_owed(
    content_channel: grpc.aio.Channel,
    media_channel: grpc.aio.Channel,
    gateway_engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    """The deletion is owed in the end's own write: whatever stops the task after it (a shutdown here, a lost
    lease, a crash), a janitor on any replica finds the debt and deletes what the job stored."""
    store = EndStallingStore(gateway_engine)
    media = MediaFailingToRender(media_channel, TIMEOUTS)
    jobs, meditation = await _failing_job(store, content_channel, media)
    try:
        await media.rendering.wait()
        media.fail.set()
        await store.at_dead_letter.wait()
    finally:
        await jobs.close()
    assert (await store.get(meditation)).state is MeditationState.FAILED
    assert _files_of(tmp_path, meditation), "stopped before its assets were deleted"

    # Another replica, whose janitor finds the debt in the job store.
    other = jobs_over(JobStore(gateway_engine), ContentClient(content_channel, TIMEOUTS), media_channel)
    try:
        assert await other.dispatcher.settle_owed_deletions(grace_seconds=0) == [meditation]
    finally:
        await other.close()
    assert _files_of(tmp_path, meditation) == []
