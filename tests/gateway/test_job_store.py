"""The gateway's job tables on both data planes: SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.content import migrate as content_migrate
from services.database import DatabaseNotReadyError, create_engine
from services.gateway import api_keys  # noqa: F401 (its table is part of the schema)
from services.gateway import migrate as gateway_migrate
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.jobs.store import JobRow, JobStore
from services.gateway.models import ImageAspect, JobChanges, MeditationOptions, MeditationState
from services.gateway.schema import Base
from tests.data_plane import plain_commands_sent

CONVERSATION = "conversations/0123456789abcdef"
QUEUE_LEASE_SECONDS = 60.0
OWNER = "tester"
REQUEST_SHA256 = "a" * 64


async def _create(store: JobStore, request_id: str = "", owner: str = OWNER, limit: int = 0) -> str:
    meditation, _ = await store.create(
        owner=owner,
        conversation=CONVERSATION,
        request_id=request_id,
        request_sha256=REQUEST_SHA256,
        options=MeditationOptions(),
        queue_lease_seconds=QUEUE_LEASE_SECONDS,
        max_running_per_owner=limit,
    )
    return meditation.name


async def test_migrations_build_exactly_the_schema_the_models_describe(engine: AsyncEngine) -> None:
    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"version_table": "alembic_version_gateway"})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_the_gateway_and_content_histories_share_one_database_each_at_its_own_head(
    database_url: str,
) -> None:
    """Property: production runs both services on one PostgreSQL; each history keeps its own version table,
    so migrating one never moves or confuses the other, and each service finds its own tables current."""
    shared = create_engine(database_url)
    try:
        with pytest.raises(DatabaseNotReadyError, match=r"services\.gateway\.migrate"):
            await gateway_migrate.HISTORY.ensure_migrated(shared, database_url)
        await content_migrate.HISTORY.upgrade(shared)
        with pytest.raises(DatabaseNotReadyError, match="has no schema for the gateway service"):
            await gateway_migrate.HISTORY.ensure_migrated(shared, database_url)
        await gateway_migrate.HISTORY.upgrade(shared)
        await gateway_migrate.HISTORY.upgrade(shared)  # running it again changes nothing
        await content_migrate.HISTORY.ensure_migrated(shared, database_url)
        await gateway_migrate.HISTORY.ensure_migrated(shared, database_url)

        def tables(connection: Connection) -> set[str]:
            return set(inspect(connection).get_table_names())

        async with shared.connect() as connection:
            found = await connection.run_sync(tables)
        # The job tables are the gateway's alone: the content history dropped its old copies.
        assert {"meditation_jobs", "meditation_job_events", "conversations", "messages"} <= found
        assert not {"meditations", "meditation_events"} & found
    finally:
        await shared.dispose()


async def test_concurrent_jobs_with_one_request_id_are_one_job(store: JobStore) -> None:
    made = await asyncio.gather(
        *(
            store.create(
                owner=OWNER,
                conversation=CONVERSATION,
                request_id="tap",
                request_sha256=REQUEST_SHA256,
                options=MeditationOptions(image_aspect=ImageAspect.SQUARE, skip_cache=True),
                queue_lease_seconds=QUEUE_LEASE_SECONDS,
            )
            for _ in range(10)
        )
    )
    assert len({meditation.name for meditation, _ in made}) == 1
    assert sum(created for _, created in made) == 1
    stored = await store.get(made[0][0].name)
    assert stored.options == MeditationOptions(image_aspect=ImageAspect.SQUARE, skip_cache=True)
    assert stored.conversation == CONVERSATION
    assert stored.owner == OWNER
    assert (await store.find_by_request_id(OWNER, "tap", REQUEST_SHA256)) == stored
    assert (await store.find_by_request_id("someone-else", "tap", REQUEST_SHA256)) is None
    with pytest.raises(GatewayError) as reused:
        await store.find_by_request_id(OWNER, "tap", "b" * 64)
    assert reused.value.kind is FailureKind.ALREADY_EXISTS


async def test_an_unknown_job_is_not_found(store: JobStore) -> None:
    for read in (
        store.get("meditations/0000000000000000"),
        store.list_events("meditations/0000000000000000", 0),
    ):
        with pytest.raises(GatewayError) as raised:
            await read
        assert raised.value.kind is FailureKind.NOT_FOUND
        assert raised.value.message == "meditations/0000000000000000 does not exist"


async def test_racing_writers_of_one_sequence_leave_exactly_one_event(store: JobStore) -> None:
    name = await _create(store)
    results = await asyncio.gather(
        *(store.record_event(name, 1, b"writer %d" % n, JobChanges()) for n in range(8)),
        return_exceptions=True,
    )
    assert sum(not isinstance(result, BaseException) for result in results) == 1
    assert all(isinstance(r, GatewayError) for r in results if isinstance(r, BaseException))
    with pytest.raises(GatewayError, match="is at sequence 1; cannot record 3"):
        await store.record_event(name, 3, b"a gap", JobChanges())
    page = await store.list_events(name, 0, 100)
    assert [event.sequence for event in page.events] == [1]


async def test_postgresql_records_an_event_and_its_changes_in_one_statement(
    engine: AsyncEngine, store: JobStore
) -> None:
    """Every round trip of an event's write waits its turn on the gateway's event loop: PostgreSQL takes the
    guarded update and the insert as one statement, SQLite (which cannot update inside a WITH) as two in a
    transaction. Either way the event and its changes are both there."""
    name = await _create(store)
    statements: list[str] = []

    def sent(*arguments: object) -> None:
        statements.append(str(arguments[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", sent)
    try:
        await store.record_event(name, 1, b"accepted", JobChanges(transcript="Breathe."))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", sent)

    assert len(statements) == (1 if engine.dialect.name == "postgresql" else 2), statements
    assert (await store.get(name)).transcript == "Breathe."
    page = await store.list_events(name, 0, 10)
    assert [(recorded.sequence, recorded.payload) for recorded in page.events] == [(1, b"accepted")]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_reads_a_job_without_a_transaction_around_it(
    engine: AsyncEngine, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read in a transaction was BEGIN, the SELECT and ROLLBACK, each a round trip waiting its turn on the
    gateway's event loop; under READ COMMITTED the transaction bought nothing. The reads send no BEGIN."""
    name = await _create(store)
    await store.record_event(name, 1, b"accepted", JobChanges())
    sent = plain_commands_sent(monkeypatch)
    meditation = await store.get(name)
    page = await store.list_events(name, 0, 10)
    assert await store.stored_bytes_of(OWNER) == 0

    assert sent == []
    assert meditation.name == name and [recorded.sequence for recorded in page.events] == [1]


async def test_events_page_after_a_sequence_and_an_events_changes_are_kept(store: JobStore) -> None:
    name = await _create(store)
    for sequence in range(1, 26):
        changes = (
            JobChanges(
                state=MeditationState.SUCCEEDED, quick_video_storage_key="videos/0123456789abcdef/q.mp4"
            )
            if sequence == 25
            else JobChanges()
        )
        await store.record_event(name, sequence, b"%d" % sequence, changes)
    page = await store.list_events(name, 10, 5)
    assert [(event.sequence, event.payload) for event in page.events] == [
        (n, b"%d" % n) for n in range(11, 16)
    ]
    assert page.events[0].event_time.tzinfo is not None
    assert page.state is MeditationState.SUCCEEDED
    finished = await store.get(name)
    assert (finished.last_sequence, finished.quick_video_storage_key) == (25, "videos/0123456789abcdef/q.mp4")
    # Nothing follows `completed`, not even a writer that knows the next sequence.
    with pytest.raises(GatewayError, match="has ended") as refused:
        await store.record_event(
            name, 26, b"late", JobChanges(quick_video_storage_key="videos/elsewhere/x.mp4")
        )
    assert refused.value.kind is FailureKind.PRECONDITION
    assert (await store.get(name)).quick_video_storage_key == "videos/0123456789abcdef/q.mp4"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_creates_and_claims_a_job_in_one_statement_each(
    engine: AsyncEngine, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new job was a count of its owner's running jobs, BEGIN, the insert, COMMIT and a read of the row,
    and its launch BEGIN, the claim, COMMIT and a read: nine round trips on the way to every job's first
    stage, each queued on the gateway's event loop. Creating under the owner's limit and claiming are one
    statement each, sent without a transaction around it, and each answers with the job it wrote."""
    statements: list[str] = []

    def executed(*arguments: object) -> None:
        statements.append(str(arguments[2]))

    sent = plain_commands_sent(monkeypatch)
    event.listen(engine.sync_engine, "before_cursor_execute", executed)
    try:
        created, is_created = await store.create(
            owner=OWNER,
            conversation=CONVERSATION,
            request_id="first",
            request_sha256=REQUEST_SHA256,
            options=MeditationOptions(image_aspect=ImageAspect.SQUARE),
            queue_lease_seconds=QUEUE_LEASE_SECONDS,
            max_running_per_owner=2,
        )
        claimed = await store.claim(created.name, "gateway-a", 60)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", executed)

    assert sent == []
    assert len(statements) == 2, statements
    assert is_created and claimed is not None
    assert claimed == created == await store.get(created.name)
    assert (claimed.owner, claimed.conversation, claimed.state) == (
        OWNER,
        CONVERSATION,
        MeditationState.RUNNING,
    )
    assert claimed.options == MeditationOptions(image_aspect=ImageAspect.SQUARE)


async def test_a_claim_answers_with_the_job_as_it_stands_and_nothing_for_one_it_cannot_take(
    store: JobStore,
) -> None:
    """Property: a claim returns the job it took, as a read would (its log's progress included); a job held
    by another, finished or missing is None."""
    name = await _create(store)
    await store.record_event(name, 1, b"accepted", JobChanges(transcript="Breathe."))
    claimed = await store.claim(name, "gateway-a", 60)
    assert claimed == await store.get(name)
    assert claimed is not None and (claimed.last_sequence, claimed.transcript) == (1, "Breathe.")
    assert await store.claim(name, "gateway-b", 60) is None
    assert await store.claim("meditations/0123456789abcdef", "gateway-a", 60) is None
    await store.record_event(name, 2, b"{}", JobChanges(state=MeditationState.SUCCEEDED))
    assert await store.claim(name, "gateway-a", 60) is None


async def test_a_queued_job_is_anyones_to_claim_but_no_janitors_until_its_queue_lease_lapses(
    store: JobStore,
) -> None:
    """Property: a queued job can be claimed by whichever gateway the queue hands it to, is not listed as
    abandoned while the queue holds it, and only one janitor requeues it."""
    name = await _create(store)
    assert name not in await store.list_claimable(10)
    assert not await store.requeue(name, 60)  # held by the queue
    assert await store.claim(name, "gateway-b", 60)
    assert not await store.claim(name, "gateway-c", 60)
    await store.release(name, "gateway-b")
    assert name in await store.list_claimable(10)
    requeued = await asyncio.gather(*(store.requeue(name, 60) for _ in range(5)))
    assert requeued.count(True) == 1
    assert name not in await store.list_claimable(10)
    await store.release(name, "nobody", queue_lease_seconds=60)  # not the owner: no change
    assert await store.claim(name, "gateway-c", 60)
    await store.record_event(name, 1, b"{}", JobChanges(state=MeditationState.CANCELLED))
    assert not await store.claim(name, "gateway-c", 60)  # a finished job is nobody's


async def test_queued_jobs_are_listed_oldest_first_until_someone_holds_them_or_their_lease_lapses(
    store: JobStore,
) -> None:
    """Property: `list_queued` lists the running jobs the queue holds (unheld, queue lease in the future),
    oldest first and at most as many as asked; a claimed, abandoned or finished job is not among them."""
    first, second, third = [await _create(store) for _ in range(3)]
    assert await store.list_queued(10) == [first, second, third]
    assert await store.list_queued(2) == [first, second]
    assert await store.claim(second, "gateway-b", 60)
    await store.record_event(third, 1, b"{}", JobChanges(state=MeditationState.CANCELLED))
    assert await store.list_queued(10) == [first]
    await store.release(second, "gateway-b")  # given back without a lease: the janitor's, not the queue's
    assert await store.list_queued(10) == [first]
    assert second in await store.list_claimable(10)
    assert await store.requeue(second, 60)
    assert await store.list_queued(10) == [first, second]


async def test_a_renewal_says_which_leases_were_lost_and_which_held_jobs_were_asked_to_cancel(
    store: JobStore, engine: AsyncEngine
) -> None:
    """Property: `renew` renews the holder's leases as `claim` does, names the jobs it no longer holds, and
    names those it holds with a recorded cancel request; a finished job takes no request."""
    mine, cancelled, theirs = [await _create(store) for _ in range(3)]
    for name in (mine, cancelled):
        assert await store.claim(name, "gateway-a", 60)
    assert await store.claim(theirs, "gateway-b", 60)
    renewal = await store.renew([mine, cancelled, theirs], "gateway-a", 60)
    assert (renewal.lost, renewal.cancel_requested) == (frozenset({theirs}), frozenset())
    await store.request_cancel(cancelled)
    await store.request_cancel(theirs)
    renewal = await store.renew([mine, cancelled, theirs], "gateway-a", 60)
    assert (renewal.lost, renewal.cancel_requested) == (frozenset({theirs}), frozenset({cancelled}))
    assert (await store.renew([theirs], "gateway-b", 60)).cancel_requested == {theirs}
    await store.record_event(mine, 1, b"{}", JobChanges(state=MeditationState.SUCCEEDED))
    await store.request_cancel(mine)
    assert (await store.renew([mine], "gateway-a", 60)).lost == {mine}
    async with engine.connect() as connection:
        requested = await connection.scalar(
            select(JobRow.cancel_requested_time).where(JobRow.id == mine.removeprefix("meditations/"))
        )
    assert requested is None
    assert (await store.renew([], "gateway-a", 60)).lost == set()


async def test_an_owners_running_jobs_are_limited_and_a_repeated_request_is_never_refused(
    store: JobStore,
) -> None:
    """Property: past `max_running_per_owner` running jobs an owner's new job is refused; a repeat of one
    of their requests, and other owners, are not; a finished job frees its place."""
    first = await _create(store, "a1", "alice", 2)
    await _create(store, "a2", "alice", 2)
    with pytest.raises(GatewayError, match="limit is 2") as refused:
        await _create(store, "a3", "alice", 2)
    assert refused.value.kind is FailureKind.EXHAUSTED
    assert await _create(store, "a1", "alice", 2) == first
    await _create(store, "b1", "bob", 2)
    await store.record_event(first, 1, b"{}", JobChanges(state=MeditationState.SUCCEEDED))
    await _create(store, "a3", "alice", 2)


async def test_an_unreachable_database_is_unavailable_not_a_crash() -> None:
    engine = create_engine("postgresql+asyncpg://stillpoint:hunter2@127.0.0.1:1/stillpoint")
    try:
        with pytest.raises(GatewayError) as raised:
            await JobStore(engine).get("meditations/0123456789abcdef")
    finally:
        await engine.dispose()
    assert raised.value.kind is FailureKind.UNAVAILABLE
    assert "hunter2" not in raised.value.message


async def _list_all(store: JobStore, owner: str, page_size: int, conversation: str = "") -> list[str]:
    """Every job `owner` lists, page after page."""
    names: list[str] = []
    page = await store.list_owned(owner, page_size, conversation=conversation)
    names += [meditation.name for meditation in page.meditations]
    while page.next_cursor is not None:
        page = await store.list_owned(owner, page_size, page.next_cursor, conversation=conversation)
        names += [meditation.name for meditation in page.meditations]
    return names


async def test_an_owners_jobs_are_listed_newest_first_and_nobody_elses(store: JobStore) -> None:
    mine = [await _create(store) for _ in range(5)]
    theirs = [await _create(store, owner="someone-else") for _ in range(2)]
    assert await _list_all(store, OWNER, page_size=2) == mine[::-1]
    assert await _list_all(store, "someone-else", page_size=10) == theirs[::-1]
    assert await _list_all(store, "nobody", page_size=10) == []


async def test_pages_neither_repeat_nor_skip_a_job_created_between_them(store: JobStore) -> None:
    mine = [await _create(store) for _ in range(6)]
    first = await store.list_owned(OWNER, 3)
    newer = await _create(store)  # created while the client reads the first page
    assert first.next_cursor is not None
    second = await store.list_owned(OWNER, 3, first.next_cursor)
    listed = [m.name for m in first.meditations] + [m.name for m in second.meditations]
    assert listed == mine[::-1]
    assert second.next_cursor is None
    assert (await store.list_owned(OWNER, 1)).meditations[0].name == newer


async def test_jobs_created_at_the_same_instant_are_paged_by_id(engine: AsyncEngine, store: JobStore) -> None:
    names = [await _create(store) for _ in range(5)]
    async with engine.begin() as connection:
        await connection.execute(
            update(JobRow).where(JobRow.owner == OWNER).values(create_time=datetime(2026, 1, 1, tzinfo=UTC))
        )
    listed = await _list_all(store, OWNER, page_size=2)
    assert listed == sorted(names, reverse=True)


async def test_listing_by_conversation_lists_only_that_conversations_jobs(store: JobStore) -> None:
    other = "conversations/fedcba9876543210"
    about_it, _ = await store.create(
        owner=OWNER,
        conversation=other,
        request_id="",
        options=MeditationOptions(),
        queue_lease_seconds=QUEUE_LEASE_SECONDS,
    )
    mine = [await _create(store) for _ in range(3)]
    assert await _list_all(store, OWNER, 2, conversation=CONVERSATION) == mine[::-1]
    assert await _list_all(store, OWNER, 2, conversation=other) == [about_it.name]
    assert await _list_all(store, "someone-else", 2, conversation=other) == []


async def test_an_event_written_again_after_a_lost_answer_is_found_not_written_twice(store: JobStore) -> None:
    """A retried write whose first commit went through (its answer lost with the connection) succeeds with
    the first write's time; a different event at that sequence is still refused."""
    name = await _create(store)
    first = await store.record_event(name, 1, b"the event", JobChanges())
    again = await store.record_event(name, 1, b"the event", JobChanges())
    assert again == first
    with pytest.raises(GatewayError, match="is at sequence 1; cannot record 1"):
        await store.record_event(name, 1, b"another event", JobChanges())
    finished = await store.record_event(name, 2, b"completed", JobChanges(state=MeditationState.SUCCEEDED))
    assert await store.record_event(name, 2, b"completed", JobChanges()) == finished
    page = await store.list_events(name, 0, 100)
    assert [(event.sequence, event.payload) for event in page.events] == [
        (1, b"the event"),
        (2, b"completed"),
    ]
