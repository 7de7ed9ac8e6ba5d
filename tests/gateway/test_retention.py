"""Retention erases finished meditations past their time, on both data planes, and nothing else."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.database import create_engine
from services.environment import ConfigError, Environment
from services.gateway.__main__ import make_retention
from services.gateway.backends import ContentClient, MediaClient
from services.gateway.config import GatewayConfig
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.jobs import MeditationJobs
from services.gateway.jobs.retention import MeditationRetention, SweepReport
from services.gateway.jobs.store import JobEventRow, JobRow, JobStore
from services.gateway.models import JobChanges, MeditationOptions, MeditationState
from services.gateway.pipeline import MeditationPipeline, StageTimeouts
from services.storage.local import LocalAssetStorage

OWNER = "tester"
CONVERSATION = "conversations/0123456789abcdef"
# What a meditation's script could say; it must never reach the log.
PRIVATE_TEXT = "I keep thinking about the argument with my sister"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=30)
LONG_AGO = NOW - RETENTION - timedelta(days=1)
RECENTLY = NOW - RETENTION + timedelta(hours=1)
RETENTION_LOGGER = "services.gateway.jobs.retention"


def fixed_clock() -> datetime:
    """The fake clock: it is always NOW."""
    return NOW


class RecordingAssets:
    """Stands in for the dispatcher's asset deletion: records each request, and fails when told to."""

    def __init__(self, failures: dict[str, GatewayError] | None = None) -> None:
        self.deleted: list[str] = []
        self.failures = failures or {}
        self.called = asyncio.Event()
        self.before_first: asyncio.Barrier | None = None

    async def delete_assets(self, name: str) -> None:
        """Records the request (idempotent, as media's is), or raises the failure set for `name`."""
        if self.before_first is not None:
            barrier, self.before_first = self.before_first, None
            await barrier.wait()
        self.called.set()
        if name in self.failures:
            raise self.failures[name]
        self.deleted.append(name)


def retention_of(store: JobStore, assets: RecordingAssets, batch_size: int = 100) -> MeditationRetention:
    """A sweep that reads the fake clock."""
    return MeditationRetention(store, assets, RETENTION, clock=fixed_clock, batch_size=batch_size)


async def meditation(
    store: JobStore,
    engine: AsyncEngine,
    last_update: datetime,
    state: MeditationState = MeditationState.SUCCEEDED,
) -> str:
    """A job with a script and an event log, in `state`, last updated at `last_update`."""
    made, _ = await store.create(
        owner=OWNER,
        conversation=CONVERSATION,
        request_id="",
        options=MeditationOptions(),
        queue_lease_seconds=60.0,
    )
    await store.record_event(made.name, 1, b"accepted", JobChanges(transcript=PRIVATE_TEXT))
    if state.is_final:
        await store.record_event(made.name, 2, b"completed", JobChanges(state=state))
    async with engine.begin() as connection:
        await connection.execute(
            update(JobRow)
            .where(JobRow.id == made.name.removeprefix("meditations/"))
            .values(update_time=last_update)
        )
    return made.name


async def is_kept(store: JobStore, name: str) -> bool:
    """Whether the job's record is still there."""
    try:
        await store.get(name)
    except GatewayError as error:
        if error.kind is not FailureKind.NOT_FOUND:
            raise
        return False
    return True


async def event_count(engine: AsyncEngine, name: str) -> int:
    """How many events the job's log still holds."""
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count())
            .select_from(JobEventRow)
            .where(JobEventRow.job_id == name.removeprefix("meditations/"))
        )
    return count or 0


async def test_an_old_finished_meditation_is_erased_with_its_log_and_its_files(
    store: JobStore, engine: AsyncEngine
) -> None:
    finished = [
        await meditation(store, engine, LONG_AGO, state)
        for state in (MeditationState.SUCCEEDED, MeditationState.FAILED, MeditationState.CANCELLED)
    ]
    assets = RecordingAssets()
    report = await retention_of(store, assets).sweep()
    assert (report.erased, report.failed, report.has_more) == (3, 0, False)
    assert sorted(assets.deleted) == sorted(finished)  # of one age: in id order
    for name in finished:
        assert not await is_kept(store, name)
        assert await event_count(engine, name) == 0


async def test_a_recent_finished_meditation_and_an_old_running_one_are_kept(
    store: JobStore, engine: AsyncEngine
) -> None:
    recent = await meditation(store, engine, RECENTLY)
    running = await meditation(store, engine, LONG_AGO, MeditationState.RUNNING)
    just_due = await meditation(store, engine, NOW - RETENTION - timedelta(seconds=1))
    assets = RecordingAssets()
    report = await retention_of(store, assets).sweep()
    assert report.erased == 1
    assert assets.deleted == [just_due]
    for name in (recent, running):
        assert await is_kept(store, name)
        assert await event_count(engine, name) > 0


async def test_passes_erase_a_bounded_batch_oldest_first(store: JobStore, engine: AsyncEngine) -> None:
    oldest_first = [await meditation(store, engine, LONG_AGO - timedelta(days=day)) for day in range(5)][::-1]
    assets = RecordingAssets()
    retention = retention_of(store, assets, batch_size=2)
    reports = [await retention.sweep() for _ in range(3)]
    assert [(report.erased, report.has_more) for report in reports] == [(2, True), (2, True), (1, False)]
    assert assets.deleted == oldest_first


async def test_two_replicas_sweeping_at_once_erase_each_meditation_exactly_once(
    database_url: str, store: JobStore, engine: AsyncEngine
) -> None:
    """Property: replicas sweep without coordinating; both find the same batch, both ask media to delete
    (idempotent), and each record is removed by exactly one of them, with no error on either."""
    names = [await meditation(store, engine, LONG_AGO - timedelta(minutes=i)) for i in range(12)]
    other_engine = create_engine(database_url)
    try:
        # Neither deletes anything before both have listed their batch: they race over the same rows.
        both_listed = asyncio.Barrier(2)
        first, second = RecordingAssets(), RecordingAssets()
        first.before_first = second.before_first = both_listed
        reports = await asyncio.gather(
            retention_of(store, first).sweep(), retention_of(JobStore(other_engine), second).sweep()
        )
    finally:
        await other_engine.dispose()
    assert sum(report.erased for report in reports) == len(names)
    assert all(report.failed == 0 for report in reports)
    assert set(first.deleted) | set(second.deleted) == set(names)
    for name in names:
        assert not await is_kept(store, name)
    assert await retention_of(store, RecordingAssets()).sweep() == SweepReport(0, 0, has_more=False)


async def test_a_media_failure_leaves_the_meditation_for_the_next_pass(
    store: JobStore, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    names = [await meditation(store, engine, LONG_AGO - timedelta(minutes=i)) for i in range(3)]
    down = GatewayError(FailureKind.UNAVAILABLE, "media: the service is unavailable")
    assets = RecordingAssets(failures=dict.fromkeys(names, down))
    retention = retention_of(store, assets)
    with caplog.at_level(logging.INFO, logger=RETENTION_LOGGER):
        report = await retention.sweep()
    # Media is down: the pass stops at the first failure rather than waiting on it for every meditation.
    assert (report.erased, report.failed, report.has_more) == (0, 1, False)
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "retrying next pass" in warnings[0].getMessage()
    assert PRIVATE_TEXT not in caplog.text
    assert CONVERSATION not in caplog.text
    for name in names:
        assert await is_kept(store, name)
        assert await event_count(engine, name) == 2

    assets.failures.clear()
    assert (await retention.sweep()).erased == 3
    assert set(assets.deleted) == set(names)


async def test_a_meditation_that_cannot_be_erased_does_not_hold_up_the_others(
    store: JobStore, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    oldest = await meditation(store, engine, LONG_AGO - timedelta(days=1))
    others = [await meditation(store, engine, LONG_AGO) for _ in range(2)]
    assets = RecordingAssets(
        {oldest: GatewayError(FailureKind.INTERNAL, "media: storage refused the delete")}
    )
    with caplog.at_level(logging.WARNING, logger=RETENTION_LOGGER):
        report = await retention_of(store, assets).sweep()
    assert (report.erased, report.failed) == (2, 1)
    assert await is_kept(store, oldest)
    for name in others:
        assert not await is_kept(store, name)
    assert len(caplog.records) == 1
    assert oldest in caplog.records[0].getMessage()


async def test_an_unreachable_database_is_logged_once_and_retried_next_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_engine("postgresql+asyncpg://stillpoint:hunter2@127.0.0.1:1/stillpoint")
    try:
        with caplog.at_level(logging.WARNING, logger=RETENTION_LOGGER):
            report = await retention_of(JobStore(engine), RecordingAssets()).sweep()
    finally:
        await engine.dispose()
    assert (report.erased, report.has_more) == (0, False)
    assert len(caplog.records) == 1
    assert "unavailable" in caplog.records[0].getMessage()
    assert "hunter2" not in caplog.text


async def test_the_sweep_runs_in_the_background_until_stopped(store: JobStore, engine: AsyncEngine) -> None:
    name = await meditation(store, engine, LONG_AGO)
    assets = RecordingAssets()
    retention = retention_of(store, assets)
    retention.start()
    retention.start()  # idempotent: still one sweep
    try:
        await asyncio.wait_for(assets.called.wait(), timeout=10)
    finally:
        await retention.stop()
    await retention.stop()  # stopping twice is harmless
    assert assets.deleted == [name]


def test_no_retention_is_configured_unless_asked_for() -> None:
    assert GatewayConfig.from_environment(Environment({})).meditation_retention is None
    zero = Environment({"STILLPOINT_MEDITATION_RETENTION_DAYS": "0"})
    assert GatewayConfig.from_environment(zero).meditation_retention is None
    thirty = Environment({"STILLPOINT_MEDITATION_RETENTION_DAYS": "30"})
    assert GatewayConfig.from_environment(thirty).meditation_retention == timedelta(days=30)


@pytest.mark.parametrize("value", ["-1", "thirty", "1.5", "2592000"])
def test_a_bad_retention_fails_fast_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="STILLPOINT_MEDITATION_RETENTION_DAYS"):
        GatewayConfig.from_environment(Environment({"STILLPOINT_MEDITATION_RETENTION_DAYS": value}))


async def test_a_retention_of_nothing_is_refused(job_store: JobStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        MeditationRetention(job_store, RecordingAssets(), timedelta(0))


async def test_the_gateways_retention_deletes_the_files_through_the_media_service(
    job_store: JobStore,
    gateway_engine: AsyncEngine,
    media_channel: grpc.aio.Channel,
    storage: LocalAssetStorage,
) -> None:
    """The wiring of `python -m services.gateway`: the configured retention, the real clock, the job
    dispatcher and a real media server deleting the meditation's stored files."""
    name = await meditation(job_store, gateway_engine, datetime(2020, 1, 1, tzinfo=UTC))
    job_id = name.removeprefix("meditations/")
    keys = [f"narrations/{job_id}/narration.wav", f"live/{job_id}/index.m3u8", f"videos/{job_id}/quick.mp4"]
    for key in keys:
        await storage.put_bytes(key, b"made for the meditation", "application/octet-stream")
    timeouts = StageTimeouts()
    media = MediaClient(media_channel, timeouts)
    # Retention never asks content anything: a channel to nowhere is enough.
    async with grpc.aio.insecure_channel("127.0.0.1:1") as nowhere:
        content = ContentClient(nowhere, timeouts)
        jobs = MeditationJobs(job_store, content, MeditationPipeline(content, media, timeouts), media=media)
        config = GatewayConfig.from_environment(Environment({"STILLPOINT_MEDITATION_RETENTION_DAYS": "30"}))
        retention = make_retention(config, job_store, jobs)
        assert retention is not None
        try:
            assert (await retention.sweep()).erased == 1
        finally:
            await jobs.close()
    assert not await is_kept(job_store, name)
    assert not [key for key in keys if await storage.exists(key)]
    no_retention = GatewayConfig.from_environment(Environment({}))
    assert make_retention(no_retention, job_store, jobs) is None
