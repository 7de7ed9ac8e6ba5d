"""The repository on both data planes: SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.content.errors import NotFoundError, QuotaExceededError
from services.content.migrate import HISTORY
from services.content.repository import (
    MESSAGE_ENVELOPE_BYTES,
    Artifact,
    ArtifactRow,
    Base,
    ContentRepository,
    ConversationLimits,
    ConversationRow,
    DeletedConversation,
    NewMessage,
    size_bytes,
)
from services.database import DatabaseNotReadyError, PoolSettings, create_engine
from tests.data_plane import (
    POSTGRES_ADMIN_DSN,
    create_postgres_database,
    drop_postgres_database,
    fresh_database,
    plain_commands_sent,
)

OWNER = "tester"
MESSAGES = [
    NewMessage("user", "I keep thinking about the deadline."),
    NewMessage("assistant", "Tell me more."),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    with fresh_database(request.param, tmp_path, "content.db") as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated engine."""
    made = create_engine(database_url, application_name="stillpoint-tests")
    await HISTORY.upgrade(made)
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
            await HISTORY.ensure_migrated(fresh, database_url)
        await HISTORY.upgrade(fresh)
        await HISTORY.upgrade(fresh)  # running it again changes nothing
        await HISTORY.ensure_migrated(fresh, database_url)
    finally:
        await fresh.dispose()


async def test_an_unreachable_database_names_its_host_not_its_password() -> None:
    url = "postgresql+asyncpg://stillpoint:hunter2@127.0.0.1:1/stillpoint"
    unreachable = create_engine(url)
    try:
        with pytest.raises(DatabaseNotReadyError) as raised:
            await HISTORY.ensure_migrated(unreachable, url)
    finally:
        await unreachable.dispose()
    assert "127.0.0.1:1" in str(raised.value)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_reads_a_conversation_without_a_transaction_around_it(
    engine: AsyncEngine, repository: ContentRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BEGIN and ROLLBACK were two of a read's three round trips, and bought nothing under READ COMMITTED."""
    created = await repository.create_conversation(owner=OWNER, title="t", messages=MESSAGES, request_id=None)
    sent = plain_commands_sent(monkeypatch)
    read = await repository.get_conversation(OWNER, created.id)
    await repository.check_owner(OWNER, created.id)

    assert sent == []
    assert [message.text for message in read.messages] == [message.text for message in MESSAGES]


async def test_messages_keep_their_order_across_appends(repository: ContentRepository) -> None:
    conversation = await repository.create_conversation(
        owner=OWNER, title="t", messages=MESSAGES, request_id=None
    )
    count = await repository.append_messages(OWNER, conversation.id, [NewMessage("user", "And my sister.")])
    stored = await repository.get_conversation(OWNER, conversation.id)
    assert count == 3
    assert [m.text for m in stored.messages] == [*(m.text for m in MESSAGES), "And my sister."]
    assert stored.create_time.tzinfo is not None


async def test_concurrent_creates_with_one_request_id_make_one_conversation(
    repository: ContentRepository,
) -> None:
    made = await asyncio.gather(
        *(
            repository.create_conversation(owner=OWNER, title="t", messages=MESSAGES, request_id="same")
            for _ in range(10)
        )
    )
    assert len({conversation.id for conversation in made}) == 1


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


async def test_100_concurrent_writers_never_exceed_the_pool_and_release_every_connection(
    postgres_url: str,
) -> None:
    url = postgres_url
    application_name = "stillpoint-pool-test"
    pool = PoolSettings(size=4, max_overflow=2)
    engine = create_engine(url, pool, application_name=application_name)
    try:
        await HISTORY.upgrade(engine)
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
                owner=OWNER, title=f"job {number}", messages=MESSAGES, request_id=f"job-{number}"
            )
            for turn in range(10):
                await repository.append_messages(OWNER, conversation.id, [NewMessage("user", f"turn {turn}")])
            await repository.get_conversation(OWNER, conversation.id)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(job(number) for number in range(100)))
        sampling = False
        await sampler
        assert 0 < peak <= pool.max_connections
        await engine.dispose()
        assert await _connections(application_name) == baseline == 0
    finally:
        await engine.dispose()


async def _list_all(repository: ContentRepository, owner: str, page_size: int) -> list[str]:
    """The ids of every conversation `owner` lists, page after page."""
    ids: list[str] = []
    page = await repository.list_conversations(owner, page_size)
    ids += [conversation.id for conversation in page.conversations]
    while page.next_cursor is not None:
        page = await repository.list_conversations(owner, page_size, page.next_cursor)
        ids += [conversation.id for conversation in page.conversations]
    return ids


async def _create(repository: ContentRepository, owner: str = OWNER) -> str:
    created = await repository.create_conversation(owner=owner, title="", messages=MESSAGES, request_id=None)
    return created.id


async def test_an_owners_conversations_are_listed_newest_first_without_messages(
    repository: ContentRepository,
) -> None:
    mine = [await _create(repository) for _ in range(5)]
    theirs = [await _create(repository, owner="someone-else") for _ in range(2)]
    assert await _list_all(repository, OWNER, 2) == mine[::-1]
    assert await _list_all(repository, "someone-else", 5) == theirs[::-1]
    page = await repository.list_conversations(OWNER, 10)
    assert page.next_cursor is None
    assert all(conversation.messages == () for conversation in page.conversations)


async def test_pages_neither_repeat_nor_skip_a_conversation_created_between_them(
    repository: ContentRepository,
) -> None:
    mine = [await _create(repository) for _ in range(4)]
    first = await repository.list_conversations(OWNER, 2)
    newer = await _create(repository)
    assert first.next_cursor is not None
    second = await repository.list_conversations(OWNER, 2, first.next_cursor)
    assert [c.id for c in (*first.conversations, *second.conversations)] == mine[::-1]
    assert second.next_cursor is None
    assert (await repository.list_conversations(OWNER, 1)).conversations[0].id == newer


async def test_conversations_created_at_the_same_instant_are_paged_by_id(
    engine: AsyncEngine, repository: ContentRepository
) -> None:
    ids = [await _create(repository) for _ in range(5)]
    async with engine.begin() as connection:
        await connection.execute(update(ConversationRow).values(create_time=datetime(2026, 1, 1, tzinfo=UTC)))
    assert await _list_all(repository, OWNER, 2) == sorted(ids, reverse=True)


async def test_an_owner_keeps_at_most_their_limit_of_conversations(engine: AsyncEngine) -> None:
    repository = ContentRepository(engine, ConversationLimits(max_conversations_per_owner=2))
    first = await repository.create_conversation(owner=OWNER, title="", messages=MESSAGES, request_id="r1")
    await _create(repository)
    with pytest.raises(QuotaExceededError, match=r"you have 2 conversations \(the limit is 2\)"):
        await _create(repository)
    # A retry of a request that was let in still answers with its conversation.
    again = await repository.create_conversation(owner=OWNER, title="", messages=MESSAGES, request_id="r1")
    assert again.id == first.id
    await _create(repository, owner="someone-else")
    assert len(await _list_all(repository, OWNER, 10)) == 2


async def test_concurrent_creates_never_take_an_owner_past_their_limit(engine: AsyncEngine) -> None:
    """Property: however many creates of one owner race, exactly the limit's worth are let in (the count and
    the insert happen under one lock per owner: advisory on PostgreSQL, the write lock on SQLite)."""
    limit = 3
    repository = ContentRepository(engine, ConversationLimits(max_conversations_per_owner=limit))
    # Connections opened first, so the creates race each other rather than the pool's connects.
    await asyncio.gather(*(repository.list_conversations(OWNER, 1) for _ in range(10)))
    outcomes = await asyncio.gather(*(_create(repository) for _ in range(12)), return_exceptions=True)
    made = [outcome for outcome in outcomes if isinstance(outcome, str)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, QuotaExceededError)]
    assert (len(made), len(refused)) == (limit, 12 - limit), outcomes
    assert sorted(await _list_all(repository, OWNER, 20)) == sorted(made)


async def test_a_conversation_holds_at_most_its_limit_in_utf8_bytes(engine: AsyncEngine) -> None:
    wave = NewMessage("user", "🌊" * 10)  # 10 characters, 40 bytes
    assert size_bytes([wave]) == 40 + MESSAGE_ENVELOPE_BYTES
    limit = 3 * size_bytes([wave])
    repository = ContentRepository(engine, ConversationLimits(max_conversation_bytes=limit))
    created = await repository.create_conversation(
        owner=OWNER, title="", messages=[wave, wave], request_id=None
    )
    assert await repository.append_messages(OWNER, created.id, [wave]) == 3  # exactly at the limit
    with pytest.raises(QuotaExceededError, match=rf"would hold {limit + 1 + MESSAGE_ENVELOPE_BYTES} bytes"):
        await repository.append_messages(OWNER, created.id, [NewMessage("user", "a")])
    with pytest.raises(QuotaExceededError, match=rf"the limit is {limit}"):
        await repository.create_conversation(owner=OWNER, title="", messages=[wave] * 4, request_id=None)
    assert len((await repository.get_conversation(OWNER, created.id)).messages) == 3


async def test_concurrent_appends_never_take_a_conversation_past_its_size(engine: AsyncEngine) -> None:
    """Property: appends to one conversation that race see each other's messages (a row lock on PostgreSQL,
    the write lock on SQLite): exactly as many fit as the limit allows, every other one is refused for its
    size, and the stored positions have no gap and no duplicate."""
    message = NewMessage("user", "x" * 100)
    fitting = 4
    repository = ContentRepository(
        engine, ConversationLimits(max_conversation_bytes=fitting * size_bytes([message]))
    )
    created = await repository.create_conversation(owner=OWNER, title="", messages=[], request_id=None)
    await asyncio.gather(*(repository.list_conversations(OWNER, 1) for _ in range(10)))  # the pool, warm
    outcomes = await asyncio.gather(
        *(repository.append_messages(OWNER, created.id, [message]) for _ in range(10)), return_exceptions=True
    )
    counts = sorted(outcome for outcome in outcomes if isinstance(outcome, int))
    refused = [outcome for outcome in outcomes if isinstance(outcome, QuotaExceededError)]
    assert (counts, len(refused)) == (list(range(1, fitting + 1)), 10 - fitting), outcomes
    assert len((await repository.get_conversation(OWNER, created.id)).messages) == fitting


async def test_an_artifact_racing_its_conversations_deletion_is_either_erased_with_it_or_refused(
    repository: ContentRepository, engine: AsyncEngine
) -> None:
    """Property: whichever commits first, nothing made from a conversation outlives its deletion unseen: the
    deletion returns the artifact to erase, or recording it fails with NotFoundError (its maker erases it),
    and no artifact row is left either way."""
    for round_number in range(10):
        conversation = await repository.create_conversation(
            owner=OWNER, title="", messages=MESSAGES, request_id=None
        )
        artifact = Artifact("transcript", f"transcript:offline:v1:{round_number:064x}")
        recorded, deleted = await asyncio.gather(
            repository.record_artifact(OWNER, conversation.id, artifact),
            repository.delete_conversation(OWNER, conversation.id),
            return_exceptions=True,
        )
        assert isinstance(deleted, DeletedConversation), deleted
        if isinstance(recorded, BaseException):
            assert isinstance(recorded, NotFoundError), recorded
            assert deleted.artifacts == ()
        else:
            assert deleted.artifacts == (artifact,)
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(ArtifactRow)) == 0
