"""The repository on both data planes: SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.content.errors import ConflictError, ExhaustedError, NotFoundError, PreconditionError
from services.content.migrate import DatabaseNotReadyError, ensure_migrated, upgrade
from services.content.repository import (
    Base,
    ContentRepository,
    MeditationChanges,
    MeditationState,
    NewMessage,
    PoolSettings,
    create_engine,
)
from tests.data_plane import POSTGRES_ADMIN_DSN, create_postgres_database, drop_postgres_database

MESSAGES = [
    NewMessage("user", "I keep thinking about the deadline."),
    NewMessage("assistant", "Tell me more."),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'content.db'}"
        return
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated engine."""
    made = create_engine(database_url, application_name="stillpoint-tests")
    await upgrade(made)
    yield made
    await made.dispose()


@pytest.fixture
def repository(engine: AsyncEngine) -> ContentRepository:
    """The repository over the migrated engine."""
    return ContentRepository(engine)


async def test_migrations_build_exactly_the_schema_the_models_describe(engine: AsyncEngine) -> None:
    def differences(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_an_unmigrated_database_is_refused_with_what_to_run(database_url: str) -> None:
    fresh = create_engine(database_url)
    try:
        with pytest.raises(DatabaseNotReadyError, match="make migrate"):
            await ensure_migrated(fresh, database_url)
        await upgrade(fresh)
        await upgrade(fresh)  # running it again changes nothing
        await ensure_migrated(fresh, database_url)
    finally:
        await fresh.dispose()


async def test_an_unreachable_database_names_its_host_not_its_password() -> None:
    url = "postgresql+asyncpg://stillpoint:hunter2@127.0.0.1:1/stillpoint"
    unreachable = create_engine(url)
    try:
        with pytest.raises(DatabaseNotReadyError) as raised:
            await ensure_migrated(unreachable, url)
    finally:
        await unreachable.dispose()
    assert "127.0.0.1:1" in str(raised.value)
    assert "hunter2" not in str(raised.value)


async def test_messages_keep_their_order_across_appends(repository: ContentRepository) -> None:
    conversation = await repository.create_conversation(title="t", messages=MESSAGES, request_id=None)
    count = await repository.append_messages(conversation.id, [NewMessage("user", "And my sister.")])
    stored = await repository.get_conversation(conversation.id)
    assert count == 3
    assert [m.text for m in stored.messages] == [*(m.text for m in MESSAGES), "And my sister."]
    assert stored.create_time.tzinfo is not None


async def test_concurrent_creates_with_one_request_id_make_one_conversation(
    repository: ContentRepository,
) -> None:
    made = await asyncio.gather(
        *(repository.create_conversation(title="t", messages=MESSAGES, request_id="same") for _ in range(10))
    )
    assert len({conversation.id for conversation in made}) == 1


async def test_concurrent_jobs_with_one_request_id_are_one_job(repository: ContentRepository) -> None:
    conversation = await repository.create_conversation(title="t", messages=MESSAGES, request_id=None)
    made = await asyncio.gather(
        *(
            repository.create_meditation(conversation_id=conversation.id, request_id="tap", options_json="{}")
            for _ in range(10)
        )
    )
    assert len({meditation.id for meditation, _ in made}) == 1
    assert sum(created for _, created in made) == 1


async def test_a_job_needs_an_existing_conversation_with_messages(repository: ContentRepository) -> None:
    with pytest.raises(NotFoundError):
        await repository.create_meditation(conversation_id="0" * 16, request_id=None, options_json="{}")
    empty = await repository.create_conversation(title="", messages=[], request_id=None)
    with pytest.raises(PreconditionError):
        await repository.create_meditation(conversation_id=empty.id, request_id=None, options_json="{}")


async def test_racing_writers_of_one_sequence_leave_exactly_one_event(repository: ContentRepository) -> None:
    conversation = await repository.create_conversation(title="t", messages=MESSAGES, request_id=None)
    meditation, _ = await repository.create_meditation(
        conversation_id=conversation.id, request_id=None, options_json="{}"
    )
    results = await asyncio.gather(
        *(repository.record_event(meditation.id, 1, b"writer %d" % n, MeditationChanges()) for n in range(8)),
        return_exceptions=True,
    )
    assert sum(not isinstance(result, BaseException) for result in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    page = await repository.list_events(meditation.id, 0, 100)
    assert [event.sequence for event in page.events] == [1]


async def test_events_page_after_a_sequence_and_final_state_is_kept(repository: ContentRepository) -> None:
    conversation = await repository.create_conversation(title="t", messages=MESSAGES, request_id=None)
    meditation, _ = await repository.create_meditation(
        conversation_id=conversation.id, request_id=None, options_json="{}"
    )
    for sequence in range(1, 26):
        changes = (
            MeditationChanges(state=MeditationState.SUCCEEDED) if sequence == 25 else MeditationChanges()
        )
        await repository.record_event(meditation.id, sequence, b"%d" % sequence, changes)
    page = await repository.list_events(meditation.id, 10, 5)
    assert [event.sequence for event in page.events] == [11, 12, 13, 14, 15]
    assert page.state is MeditationState.SUCCEEDED
    assert (await repository.get_meditation(meditation.id)).last_sequence == 25


async def test_a_queued_job_is_anyones_to_claim_but_no_janitors_until_its_queue_lease_lapses(
    repository: ContentRepository,
) -> None:
    """Property: a job created without an owner (queued) can be claimed by whichever gateway the queue
    hands it to, is not listed as abandoned while the queue holds it, and only one janitor requeues it."""
    conversation = await repository.create_conversation(title="t", messages=MESSAGES, request_id=None)
    meditation, _ = await repository.create_meditation(
        conversation_id=conversation.id, request_id=None, options_json="{}", lease_seconds=60
    )
    assert meditation.id not in await repository.list_claimable(10)
    assert not await repository.requeue(meditation.id, 60)  # held by the queue
    assert await repository.claim(meditation.id, "gateway-b", 60)
    assert not await repository.claim(meditation.id, "gateway-c", 60)
    await repository.release(meditation.id, "gateway-b")
    assert meditation.id in await repository.list_claimable(10)
    requeued = await asyncio.gather(*(repository.requeue(meditation.id, 60) for _ in range(5)))
    assert requeued.count(True) == 1
    assert meditation.id not in await repository.list_claimable(10)
    await repository.release(meditation.id, "nobody", queue_lease_seconds=60)  # not the owner: no change
    assert await repository.claim(meditation.id, "gateway-c", 60)


async def test_a_clients_running_jobs_are_limited_and_a_repeated_request_is_never_refused(
    repository: ContentRepository,
) -> None:
    """Property: past `max_running_per_client` running jobs a client's new job is refused; a repeat of one
    of its requests, and other clients, are not; a finished job frees its place."""
    conversation = await repository.create_conversation(title="t", messages=MESSAGES, request_id=None)

    async def create(client: str, request_id: str) -> str:
        meditation, _ = await repository.create_meditation(
            conversation_id=conversation.id,
            request_id=request_id,
            options_json="{}",
            client=client,
            max_running_per_client=2,
        )
        return meditation.id

    first = await create("alice", "a1")
    await create("alice", "a2")
    with pytest.raises(ExhaustedError, match="limit is 2"):
        await create("alice", "a3")
    assert await create("alice", "a1") == first
    await create("bob", "b1")
    await repository.record_event(first, 1, b"{}", MeditationChanges(state=MeditationState.SUCCEEDED))
    await create("alice", "a3")


async def _connections(application_name: str) -> int:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application_name
        )
    finally:
        await connection.close()
    return int(count)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database."""
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


async def test_100_concurrent_jobs_never_exceed_the_pool_and_release_every_connection(
    postgres_url: str,
) -> None:
    url = postgres_url
    application_name = "stillpoint-pool-test"
    pool = PoolSettings(size=4, max_overflow=2)
    engine = create_engine(url, pool, application_name=application_name)
    try:
        await upgrade(engine)
        await engine.dispose()  # start from no connections at all
        baseline = await _connections(application_name)
        repository = ContentRepository(engine)
        peak = 0
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, await _connections(application_name))
                await asyncio.sleep(0.01)

        async def job(number: int) -> None:
            conversation = await repository.create_conversation(
                title=f"job {number}", messages=MESSAGES, request_id=f"job-{number}"
            )
            meditation, _ = await repository.create_meditation(
                conversation_id=conversation.id, request_id=f"meditation-{number}", options_json="{}"
            )
            for sequence in range(1, 11):
                await repository.record_event(meditation.id, sequence, b"event", MeditationChanges())
            await repository.list_events(meditation.id, 0, 100)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(job(number) for number in range(100)))
        sampling = False
        await sampler
        assert 0 < peak <= pool.max_connections
        await engine.dispose()
        assert await _connections(application_name) == baseline == 0
    finally:
        await engine.dispose()
