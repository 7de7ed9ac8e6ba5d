"""A failed job's assets are deleted even when storage is down as it fails: the deletion is owed in the job
store until a janitor round finds storage answering again."""

from __future__ import annotations

from datetime import timedelta
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
from services.gateway.jobs import JobLimits, MeditationJobs
from services.gateway.jobs.store import JobRow, JobStore
from services.gateway.models import JobChanges, MeditationOptions, MeditationState
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.gateway.servicer import AuthenticationInterceptor, GatewayServicer
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tests.conftest import GATEWAY_SERVICE
from tests.gateway.test_failures import run_until_status

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
        # While storage is down a janitor round settles nothing, and the debt stays on record.
        assert await jobs.dispatcher.settle_owed_deletions(grace_seconds=0) == []
        assert await job_store.list_owed_asset_deletions(now() + IN_A_MINUTE, 10) == [meditation]
        media.is_down = False
        assert await jobs.dispatcher.settle_owed_deletions(grace_seconds=0) == [meditation]
        assert _files_of(tmp_path, meditation) == []
        assert await job_store.list_owed_asset_deletions(now() + IN_A_MINUTE, 10) == []
    finally:
        await running.stop(0)
        await jobs.close()
