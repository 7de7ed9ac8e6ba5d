"""The gateway's job tables: each meditation job's owner, state, lease and request id, and its event log.

Only this module reads or writes them. Every method is one short transaction; the guarded UPDATEs are what
keep several gateway replicas honest (one writer per sequence, one holder per lease).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Insert,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    Update,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.database import aware, is_unreachable, now
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.models import (
    ImageAspect,
    JobChanges,
    Meditation,
    MeditationOptions,
    MeditationPage,
    MeditationState,
    PageCursor,
)
from services.gateway.schema import Base

_NAME_PREFIX = "meditations/"


class JobRow(Base):
    """A meditation job: what it was asked to do, how far it got, and who holds it."""

    __tablename__ = "meditation_jobs"
    __table_args__ = (
        # Enforces AIP-155 idempotency in the database, also across gateway replicas; a request id is its
        # owner's, so another owner's equal id is another request.
        UniqueConstraint("owner", "request_id", name="uq_meditation_jobs_owner_request_id"),
        # The janitor's query: running jobs whose lease is missing or lapsed.
        Index("ix_meditation_jobs_state_lease", "state", "lease_expires_time"),
        # Counting an owner's running jobs.
        Index("ix_meditation_jobs_owner_state", "owner", "state"),
        # Listing an owner's jobs newest first, a page at a time (keyset pagination).
        Index("ix_meditation_jobs_owner_create_time_id", "owner", "create_time", "id"),
        # Retention's sweep: finished jobs oldest first, a batch at a time.
        Index("ix_meditation_jobs_update_time_id", "update_time", "id"),
        # The operator's list of dead letters, newest first (`stillpoint jobs dead-letters`).
        Index("ix_meditation_jobs_dead_letter_time", "dead_letter_time"),
        # The janitor's query: finished jobs whose asset deletion is still owed.
        Index("ix_meditation_jobs_asset_deletion_owed_time", "asset_deletion_owed_time"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The content service's name for it (`conversations/<id>`): another service's row, so no foreign key.
    conversation: Mapped[str] = mapped_column(String(64))
    # The authenticated caller who asked for the job: only they see it, and their running jobs are limited
    # across every gateway.
    owner: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(64))
    # The SHA-256 of the request that used `request_id`: a retry must be the same request.
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=MeditationState.RUNNING.value)
    image_aspect: Mapped[str] = mapped_column(String(16))
    skip_cache: Mapped[bool] = mapped_column(Boolean)
    transcript: Mapped[str] = mapped_column(Text, default="")
    # Storage keys, never URIs: those are made for each reader (a stored URI would expire, or outlive access).
    # Rows written before revision 0003 hold the URIs they were given then.
    image_storage_key: Mapped[str] = mapped_column(Text, default="")
    narration_storage_key: Mapped[str] = mapped_column(Text, default="")
    quick_video_storage_key: Mapped[str] = mapped_column(Text, default="")
    enhanced_video_storage_key: Mapped[str] = mapped_column(Text, default="")
    # What its assets take in storage, measured when it succeeded: counted against its owner's limit.
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    failure_message: Mapped[str] = mapped_column(Text, default="")
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)
    # Which gateway process runs the job, and until when its claim holds without renewal. Unheld with a
    # lease: the work queue holds it.
    holder: Mapped[str | None] = mapped_column(String(64))
    lease_expires_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when the job was given up on and dead-lettered (FAILED after its last attempt), with how many
    # attempts it had; a job that failed at once (bad input, a spent deadline) has neither.
    dead_letter_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dead_letter_attempts: Mapped[int | None] = mapped_column(Integer)
    # When a replica that does not run the job was asked to cancel it: the replica running it stops it at its
    # next lease renewal, should the broadcast on the queue (Redis pub/sub) not reach it.
    cancel_requested_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When deleting the job's stored assets became owed (it failed or was cancelled) and is not yet done: set
    # before the deletion, cleared after it, so one cut short by an outage is found and finished by a janitor.
    asset_deletion_owed_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobEventRow(Base):
    """One event of a job's log; the primary key makes each sequence unique per job and is the index that
    replays read."""

    __tablename__ = "meditation_job_events"
    job_id: Mapped[str] = mapped_column(
        ForeignKey("meditation_jobs.id", ondelete="CASCADE", name="fk_meditation_job_events_job_id"),
        primary_key=True,
    )
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


@dataclass(frozen=True)
class StoredEvent:
    """One event as the log keeps it."""

    sequence: int
    event_time: datetime
    payload: bytes


@dataclass(frozen=True)
class StoredEventPage:
    """Events after a sequence, and the job's state when they were read."""

    events: tuple[StoredEvent, ...]
    state: MeditationState


@dataclass(frozen=True)
class Renewal:
    """What renewing a replica's leases found: the jobs it no longer holds (another replica took them, or
    they ended), and those it still holds that someone asked to cancel."""

    lost: frozenset[str]
    cancel_requested: frozenset[str]


@dataclass(frozen=True)
class DeadLetteredJob:
    """A job given up on: whose, when, after how many attempts, and the failure it ended with."""

    name: str
    owner: str
    dead_letter_time: datetime
    attempts: int
    reason: str


@functools.cache
def _event_update(changed_columns: tuple[str, ...]) -> Update:
    """The guarded update that moves a running job's log to the event's sequence and applies its changes to
    these job columns: it moves nothing unless the log is at the sequence before and the job still runs.
    Its values are bound parameters (`_event_parameters`).

    Made once per set of changed columns (a handful: JobChanges has nine fields, and each kind of event
    changes the same ones): building the statement afresh for every event, and SQLAlchemy working out its
    cache key, was three fifths of an event's CPU in the gateway (0.82 against 0.35 ms on PostgreSQL), on
    the one event loop that records every job's events."""
    return (
        update(JobRow)
        .where(
            JobRow.id == bindparam("job_id"),
            JobRow.last_sequence == bindparam("previous_sequence"),
            JobRow.state == MeditationState.RUNNING.value,
        )
        .values(
            last_sequence=bindparam("sequence"),
            update_time=bindparam("event_time"),
            **{column: bindparam(f"changed_{column}") for column in changed_columns},
        )
    )


@functools.cache
def _event_insert(changed_columns: tuple[str, ...]) -> Insert:
    """`_event_update` and the event's insert as one PostgreSQL statement (a data-modifying WITH), with the
    same bound parameters: the insert inserts nothing when the update moved nothing."""
    moved = _event_update(changed_columns).returning(JobRow.id).cte("moved")
    return insert(JobEventRow).from_select(
        ["job_id", "sequence", "payload", "event_time"],
        select(
            moved.c.id,
            bindparam("sequence", type_=Integer),
            bindparam("payload", type_=LargeBinary),
            bindparam("event_time", type_=DateTime(timezone=True)),
        ),
    )


def _event_parameters(
    job_id: str, sequence: int, payload: bytes, changes: dict[str, Any], event_time: datetime
) -> dict[str, Any]:
    """The values `_event_update(tuple(changes))` and `_event_insert(tuple(changes))` bind."""
    return {
        "job_id": job_id,
        "previous_sequence": sequence - 1,
        "sequence": sequence,
        "payload": payload,
        "event_time": event_time,
        **{f"changed_{column}": value for column, value in changes.items()},
    }


def _id_of(name: str) -> str:
    # Names were checked by the servicer; the store's rows are keyed by the bare id.
    return name.removeprefix(_NAME_PREFIX)


@contextmanager
def _unavailable_when_unreachable() -> Iterator[None]:
    """A database that cannot be reached (down, restarting, out of connections) is UNAVAILABLE: the job
    attempt, or the client, tries again. Anything else is a bug and stays loud."""
    try:
        yield
    except Exception as error:
        if not is_unreachable(error):
            raise
        raise GatewayError(
            FailureKind.UNAVAILABLE, "the job database is unavailable; try again shortly"
        ) from error


class JobStore:
    """Reads and writes the job tables, one session per unit of work."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # PostgreSQL records an event in one statement outside any explicit transaction (record_event): the
        # same pool, its connections lent in autocommit. SQLite cannot update inside a WITH.
        self._one_statement_engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else None
        )
        # Reads too: in a transaction each was BEGIN, its statements and ROLLBACK, three round trips for one
        # SELECT, and it bought nothing, since under PostgreSQL's READ COMMITTED every statement takes its
        # own snapshot inside a transaction as outside one.
        self._reading_sessions = async_sessionmaker(
            self._one_statement_engine or engine, expire_on_commit=False
        )

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        with _unavailable_when_unreachable():
            async with self._sessions() as session, session.begin():
                yield session

    @asynccontextmanager
    async def _one_statement(self) -> AsyncIterator[AsyncSession]:
        """A session for a write that is one statement: on PostgreSQL its connection is lent in autocommit,
        so the statement is its own transaction (one round trip, where BEGIN, the statement and COMMIT took
        three); on SQLite, a transaction."""
        if self._one_statement_engine is None:
            async with self._transaction() as session:
                yield session
            return
        with _unavailable_when_unreachable():
            async with self._reading_sessions() as session:
                yield session

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncSession]:
        with _unavailable_when_unreachable():
            async with self._reading_sessions() as session:
                yield session

    async def create(
        self,
        *,
        conversation: str,
        owner: str,
        request_id: str,
        options: MeditationOptions,
        queue_lease_seconds: float,
        request_sha256: str | None = None,
        max_running_per_owner: int = 0,
    ) -> tuple[Meditation, bool]:
        """Records `owner`'s queued job; the second element says whether it was made now.

        A repeated request_id of theirs gets the job it made for the same request, never a refusal (another
        request under that id is ALREADY_EXISTS). Callers usually look a retry up first
        (`find_by_request_id`), so this looks only when the insert or the limit says it must: a retry that
        raced the insert, or one refused by the limit.

        Queued means unheld with the queue's lease: any gateway may claim it when the queue delivers it,
        and no janitor lists it as abandoned before the lease lapses. An owner with
        `max_running_per_owner` running jobs is refused with EXHAUSTED.
        """
        job_id = secrets.token_hex(8)
        values = {
            "id": job_id,
            "conversation": conversation,
            "owner": owner,
            "request_id": request_id or None,
            "request_sha256": request_sha256,
            "image_aspect": options.image_aspect.value,
            "skip_cache": options.skip_cache,
            "lease_expires_time": now() + timedelta(seconds=queue_lease_seconds),
        }
        statement = insert(JobRow)
        if max_running_per_owner > 0:
            # Counted and inserted in one statement (INSERT ... SELECT ... WHERE under the limit): one round
            # trip where a count, an insert in a transaction and a read of the row took five, each queued on
            # the gateway's event loop behind every other new job's when fifty people arrive together. Two
            # requests racing past the limit can still overshoot it by one each (neither sees the other's
            # row): a bound on concurrent work, not an accounting ledger, so that is an acceptable trade for
            # not serialising every owner's inserts.
            running = (
                select(func.count())
                .select_from(JobRow)
                .where(JobRow.owner == owner, JobRow.state == MeditationState.RUNNING.value)
                .scalar_subquery()
            )
            columns = JobRow.__table__.columns
            under_limit = select(
                *(literal(value, columns[name].type) for name, value in values.items())
            ).where(running < max_running_per_owner)
            statement = statement.from_select(list(values), under_limit)
        else:
            statement = statement.values(values)
        refusal: Exception
        try:
            async with self._one_statement() as session:
                row = (await session.scalars(statement.returning(JobRow))).one_or_none()
        except IntegrityError as error:
            # Two identical retries raced; the unique (owner, request_id) let exactly one in.
            refusal = error
        else:
            if row is not None:
                return _meditation(row), True
            # Nothing inserted: the owner is at the limit.
            refusal = GatewayError(
                FailureKind.EXHAUSTED,
                f"your meditations already running are at the limit (the limit is {max_running_per_owner}): "
                "wait for one to finish, or cancel one",
            )
        # Either way, a repeat of a request that made a job is answered with that job, never refused.
        existing = await self.find_by_request_id(owner, request_id, request_sha256) if request_id else None
        if existing is None:
            raise refusal
        return existing, False

    async def find_by_request_id(
        self, owner: str, request_id: str, request_sha256: str | None
    ) -> Meditation | None:
        """The job `owner`'s request_id made, if any; ALREADY_EXISTS when it was made for another request."""
        async with self._reading() as session:
            row = await session.scalar(
                select(JobRow).where(JobRow.owner == owner, JobRow.request_id == request_id)
            )
        if row is None:
            return None
        if row.request_sha256 != request_sha256:
            raise GatewayError(
                FailureKind.ALREADY_EXISTS,
                "request_id: was already used for a different meditation: use a new id for each request",
            )
        return _meditation(row)

    async def get(self, name: str) -> Meditation:
        """Returns a job record; NOT_FOUND when there is none."""
        async with self._reading() as session:
            row = await session.get(JobRow, _id_of(name))
        if row is None:
            raise GatewayError(FailureKind.NOT_FOUND, f"{name} does not exist")
        return _meditation(row)

    async def list_owned(
        self, owner: str, page_size: int, after: PageCursor | None = None, *, conversation: str = ""
    ) -> MeditationPage:
        """Up to `page_size` of `owner`'s jobs (only those of `conversation` when it is set), newest first,
        starting after `after`. Keyset pagination on (create_time, id), never an offset: jobs created
        between two pages are newer than the cursor, so no page repeats or skips one."""
        query = select(JobRow).where(JobRow.owner == owner)
        if conversation:
            query = query.where(JobRow.conversation == conversation)
        if after is not None:
            query = query.where(
                or_(
                    JobRow.create_time < after.create_time,
                    and_(JobRow.create_time == after.create_time, JobRow.id < after.id),
                )
            )
        # One more than asked tells whether another page follows.
        query = query.order_by(JobRow.create_time.desc(), JobRow.id.desc()).limit(page_size + 1)
        async with self._reading() as session:
            rows = (await session.scalars(query)).all()
        page = rows[:page_size]
        next_cursor = (
            PageCursor(create_time=aware(page[-1].create_time), id=page[-1].id)
            if len(rows) > page_size
            else None
        )
        return MeditationPage(meditations=tuple(_meditation(row) for row in page), next_cursor=next_cursor)

    async def record_event(self, name: str, sequence: int, payload: bytes, changes: JobChanges) -> datetime:
        """Appends the event with the next sequence and applies its changes in the same transaction; a job
        that has ended (its `completed` is recorded) takes no more events: FAILED_PRECONDITION.

        Idempotent, so a write can be retried when the database was lost mid-commit: when the log already
        holds this very event at `sequence` (the commit went through, its answer did not), that event's time
        is returned and nothing is written twice."""
        job_id = _id_of(name)
        event_time = now()
        if self._one_statement_engine is not None and await self._recorded_in_one_statement(
            name, sequence, payload, changes, event_time
        ):
            return event_time
        # SQLite, or the one statement moved nothing: the transaction below finds out why (a retried write
        # already recorded, a job that has ended, a gap), or records the event.
        try:
            async with self._transaction() as session:
                # The guarded update serialises writers on the job row: exactly one writer can move
                # last_sequence from N-1 to N, so the log has no gap and no duplicate; and only while the job
                # runs, so nothing can follow `completed` (a stale replica, a bug).
                columns = changes.as_columns()
                result = await session.execute(
                    _event_update(tuple(columns)),
                    _event_parameters(job_id, sequence, payload, columns, event_time),
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    recorded = (
                        await session.execute(
                            select(JobEventRow.payload, JobEventRow.event_time).where(
                                JobEventRow.job_id == job_id, JobEventRow.sequence == sequence
                            )
                        )
                    ).first()
                    if recorded is not None and recorded.payload == payload:
                        return aware(recorded.event_time)
                    found = (
                        await session.execute(
                            select(JobRow.last_sequence, JobRow.state).where(JobRow.id == job_id)
                        )
                    ).first()
                    if found is None:
                        raise GatewayError(FailureKind.NOT_FOUND, f"{name} does not exist")
                    current, state = found
                    if state != MeditationState.RUNNING.value:
                        raise GatewayError(
                            FailureKind.PRECONDITION, f"{name} has ended ({state}): no event can follow it"
                        )
                    raise GatewayError(
                        FailureKind.INTERNAL, f"{name} is at sequence {current}; cannot record {sequence}"
                    )
                session.add(
                    JobEventRow(job_id=job_id, sequence=sequence, payload=payload, event_time=event_time)
                )
        except IntegrityError as error:
            raise GatewayError(FailureKind.INTERNAL, f"{name} already has event {sequence}") from error
        return event_time

    async def _recorded_in_one_statement(
        self, name: str, sequence: int, payload: bytes, changes: JobChanges, event_time: datetime
    ) -> bool:
        """record_event's guarded update and its insert as one PostgreSQL statement (`_event_insert`),
        atomic on its own: one round trip to the database where a transaction took four (BEGIN, the update,
        the insert, COMMIT); with the pool's liveness check (three: its probe in a transaction of its own),
        four instead of seven. Every job records a couple of dozen events, fifty jobs' first ones all in
        their first seconds, each waiting on the gateway's one event loop for every round trip. False when
        the update moved nothing (the insert then inserts nothing)."""
        assert self._one_statement_engine is not None
        columns = changes.as_columns()
        statement = _event_insert(tuple(columns))
        parameters = _event_parameters(_id_of(name), sequence, payload, columns, event_time)
        try:
            with _unavailable_when_unreachable():
                async with self._one_statement_engine.connect() as connection:
                    result = await connection.execute(statement, parameters)
        except IntegrityError as error:
            raise GatewayError(FailureKind.INTERNAL, f"{name} already has event {sequence}") from error
        return bool(result.rowcount == 1)

    async def claim(self, name: str, holder: str, lease_seconds: float) -> Meditation | None:
        """Takes (or renews) a running job for the gateway process `holder` when nobody holds it, `holder`
        already does, or its lease lapsed, and returns it as it stands then; None when it cannot be taken
        (held by another, finished, or gone). One guarded UPDATE, so two claimants can never both win, and
        it returns the row: a claim and a read of the job were four round trips on the way to every job's
        first stage."""
        moment = now()
        async with self._one_statement() as session:
            row = (
                await session.scalars(
                    update(JobRow)
                    .where(
                        JobRow.id == _id_of(name),
                        JobRow.state == MeditationState.RUNNING.value,
                        or_(
                            JobRow.holder.is_(None),
                            JobRow.holder == holder,
                            JobRow.lease_expires_time < moment,
                        ),
                    )
                    .values(holder=holder, lease_expires_time=moment + timedelta(seconds=lease_seconds))
                    .returning(JobRow),
                    execution_options={"synchronize_session": False},
                )
            ).one_or_none()
        return None if row is None else _meditation(row)

    async def renew(self, names: Sequence[str], holder: str, lease_seconds: float) -> Renewal:
        """Renews `holder`'s leases on the running jobs `names` (as `claim` does, in one transaction) and says
        which it lost and which of those it holds have a cancellation requested."""
        if not names:
            return Renewal(lost=frozenset(), cancel_requested=frozenset())
        moment = now()
        ids = [_id_of(name) for name in names]
        async with self._transaction() as session:
            await session.execute(
                update(JobRow)
                .where(
                    JobRow.id.in_(ids),
                    JobRow.state == MeditationState.RUNNING.value,
                    or_(JobRow.holder.is_(None), JobRow.holder == holder, JobRow.lease_expires_time < moment),
                )
                .values(holder=holder, lease_expires_time=moment + timedelta(seconds=lease_seconds))
            )
            held = (
                await session.execute(
                    select(JobRow.id, JobRow.cancel_requested_time).where(
                        JobRow.id.in_(ids),
                        JobRow.state == MeditationState.RUNNING.value,
                        JobRow.holder == holder,
                    )
                )
            ).all()
        held_ids = {job_id for job_id, _ in held}
        return Renewal(
            lost=frozenset(name for name in names if _id_of(name) not in held_ids),
            cancel_requested=frozenset(
                _NAME_PREFIX + job_id for job_id, requested in held if requested is not None
            ),
        )

    async def request_cancel(self, name: str) -> None:
        """Records that the running job was asked to be cancelled (the first time counts); the replica
        running it reads this at its next `renew`. A finished job is left alone."""
        async with self._transaction() as session:
            await session.execute(
                update(JobRow)
                .where(
                    JobRow.id == _id_of(name),
                    JobRow.state == MeditationState.RUNNING.value,
                    JobRow.cancel_requested_time.is_(None),
                )
                .values(cancel_requested_time=now())
            )

    async def requeue(self, name: str, queue_lease_seconds: float) -> bool:
        """Hands an abandoned running job (no lease, or a lapsed one) to the work queue: unowned, so any
        gateway may claim it, and hidden from `list_claimable` for the queue's lease. One guarded UPDATE, so
        of several janitors exactly one requeues it."""
        moment = now()
        async with self._transaction() as session:
            result = await session.execute(
                update(JobRow)
                .where(
                    JobRow.id == _id_of(name),
                    JobRow.state == MeditationState.RUNNING.value,
                    _is_abandoned(moment),
                )
                .values(holder=None, lease_expires_time=moment + timedelta(seconds=queue_lease_seconds))
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, name: str, holder: str, queue_lease_seconds: float = 0.0) -> None:
        """Gives a job back (at shutdown, or after a failed attempt) so any replica can claim it at once;
        with `queue_lease_seconds`, a work queue delivers it, so janitors leave it alone that long."""
        lease_expires_time = now() + timedelta(seconds=queue_lease_seconds) if queue_lease_seconds else None
        async with self._transaction() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.id == _id_of(name), JobRow.holder == holder)
                .values(holder=None, lease_expires_time=lease_expires_time)
            )

    async def list_claimable(self, max_jobs: int) -> list[str]:
        """Running jobs nobody holds, oldest first: given back (no lease), or their lease lapsed (their owner
        crashed, or the queue that was to deliver them lost them)."""
        async with self._reading() as session:
            ids = await session.scalars(
                select(JobRow.id)
                .where(JobRow.state == MeditationState.RUNNING.value, _is_abandoned(now()))
                .order_by(JobRow.create_time)
                .limit(max_jobs)
            )
            return [_NAME_PREFIX + job_id for job_id in ids]

    async def list_queued(self, max_jobs: int) -> list[str]:
        """Up to `max_jobs` running jobs waiting in the work queue, oldest first: nobody holds them and the
        queue's lease on them has not lapsed (what `list_claimable` leaves out until it does)."""
        moment = now()
        async with self._reading() as session:
            ids = await session.scalars(
                select(JobRow.id)
                .where(
                    JobRow.state == MeditationState.RUNNING.value,
                    JobRow.holder.is_(None),
                    JobRow.lease_expires_time >= moment,
                )
                .order_by(JobRow.create_time, JobRow.id)
                .limit(max_jobs)
            )
            return [_NAME_PREFIX + job_id for job_id in ids]

    async def mark_dead_lettered(self, name: str, attempts: int) -> None:
        """Records that a failed job was given up on after `attempts` attempts (a running or succeeded one
        is left alone: only the job's end decides that it failed)."""
        async with self._transaction() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.id == _id_of(name), JobRow.state == MeditationState.FAILED.value)
                .values(dead_letter_time=now(), dead_letter_attempts=attempts)
            )

    async def list_dead_letters(self, max_jobs: int) -> list[DeadLetteredJob]:
        """Up to `max_jobs` dead-lettered jobs, newest first."""
        async with self._reading() as session:
            rows = (
                await session.execute(
                    select(
                        JobRow.id,
                        JobRow.owner,
                        JobRow.dead_letter_time,
                        JobRow.dead_letter_attempts,
                        JobRow.failure_message,
                    )
                    .where(JobRow.dead_letter_time.is_not(None))
                    .order_by(JobRow.dead_letter_time.desc(), JobRow.id.desc())
                    .limit(max_jobs)
                )
            ).all()
        return [
            DeadLetteredJob(
                name=_NAME_PREFIX + job_id,
                owner=owner,
                dead_letter_time=aware(dead_letter_time),
                attempts=attempts or 0,
                reason=reason,
            )
            for job_id, owner, dead_letter_time, attempts, reason in rows
            if dead_letter_time is not None  # as the query asked; told to the type checker
        ]

    async def stored_bytes_of(self, owner: str) -> int:
        """What all of `owner`'s meditations take in storage, as measured when each succeeded."""
        async with self._reading() as session:
            total = await session.scalar(
                select(func.coalesce(func.sum(JobRow.stored_bytes), 0)).where(JobRow.owner == owner)
            )
        return int(total or 0)

    async def names_of_conversation(self, owner: str, conversation: str) -> list[str]:
        """Every one of `owner`'s jobs made from `conversation`, oldest first."""
        async with self._reading() as session:
            ids = (
                await session.scalars(
                    select(JobRow.id)
                    .where(JobRow.owner == owner, JobRow.conversation == conversation)
                    .order_by(JobRow.create_time, JobRow.id)
                )
            ).all()
        return [f"{_NAME_PREFIX}{job_id}" for job_id in ids]

    async def delete(self, name: str) -> bool:
        """Deletes a finished job and its event log; returns whether it was there. A running job is
        FAILED_PRECONDITION: it must be cancelled first, so that nothing records events for it afterwards."""
        job_id = _id_of(name)
        async with self._transaction() as session:
            state = await session.scalar(select(JobRow.state).where(JobRow.id == job_id).with_for_update())
            if state is None:
                return False
            if not MeditationState(state).is_final:
                raise GatewayError(FailureKind.PRECONDITION, f"{name} is still running: cancel it first")
            # The log first: SQLite enforces no foreign keys unless asked, so nothing relies on a cascade.
            await session.execute(delete(JobEventRow).where(JobEventRow.job_id == job_id))
            result = await session.execute(delete(JobRow).where(JobRow.id == job_id))
        # What the DELETE removed, not what the SELECT saw: SQLite ignores FOR UPDATE (and pysqlite reads
        # before it begins the transaction), so two racing deleters can both see the row; one removes it.
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def owe_asset_deletion(self, name: str) -> None:
        """Records that the job's stored assets are to be deleted (the first time counts); a job that no
        longer exists owes nothing. Its update_time stays: it is when the job finished, retention's clock."""
        async with self._transaction() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.id == _id_of(name), JobRow.asset_deletion_owed_time.is_(None))
                .values(asset_deletion_owed_time=now(), update_time=JobRow.update_time)
            )

    async def settle_asset_deletion(self, name: str) -> None:
        """Records that the job's stored assets are deleted."""
        async with self._transaction() as session:
            await session.execute(
                update(JobRow)
                .where(JobRow.id == _id_of(name), JobRow.asset_deletion_owed_time.is_not(None))
                .values(asset_deletion_owed_time=None, update_time=JobRow.update_time)
            )

    async def list_owed_asset_deletions(self, owed_before: datetime, max_jobs: int) -> list[str]:
        """Up to `max_jobs` finished jobs whose asset deletion was owed before `owed_before` and is not yet
        done, longest owed first: what a janitor retries."""
        async with self._reading() as session:
            ids = await session.scalars(
                select(JobRow.id)
                .where(
                    JobRow.asset_deletion_owed_time < owed_before,
                    JobRow.state != MeditationState.RUNNING.value,
                )
                .order_by(JobRow.asset_deletion_owed_time, JobRow.id)
                .limit(max_jobs)
            )
            return [_NAME_PREFIX + job_id for job_id in ids]

    async def list_finished_before(self, moment: datetime, max_jobs: int) -> list[str]:
        """Up to `max_jobs` finished jobs (succeeded, failed or cancelled) whose last update was before
        `moment`, oldest first: what retention erases.

        A finished job's update_time is when its last event (`completed`) was recorded: claims, requeues and
        events touch running jobs only, and any other write could only move it later, never earlier."""
        async with self._reading() as session:
            ids = await session.scalars(
                select(JobRow.id)
                # "Not running" (what is_final means), not an IN list of the final states: an inequality
                # leaves the planners the (update_time, id) index, which SQLite, with no statistics, would
                # otherwise trade for the (state, lease) one and sort every finished job.
                .where(JobRow.state != MeditationState.RUNNING.value, JobRow.update_time < moment)
                .order_by(JobRow.update_time, JobRow.id)
                .limit(max_jobs)
            )
            return [_NAME_PREFIX + job_id for job_id in ids]

    async def list_events(self, name: str, after_sequence: int, max_events: int = 1000) -> StoredEventPage:
        """Returns up to `max_events` events after `after_sequence`, oldest first, with the job's state."""
        job_id = _id_of(name)
        async with self._reading() as session:
            state = await session.scalar(select(JobRow.state).where(JobRow.id == job_id))
            if state is None:
                raise GatewayError(FailureKind.NOT_FOUND, f"{name} does not exist")
            rows = (
                await session.scalars(
                    select(JobEventRow)
                    .where(JobEventRow.job_id == job_id, JobEventRow.sequence > after_sequence)
                    .order_by(JobEventRow.sequence)
                    .limit(max_events)
                )
            ).all()
        return StoredEventPage(
            events=tuple(
                StoredEvent(sequence=row.sequence, event_time=aware(row.event_time), payload=row.payload)
                for row in rows
            ),
            state=MeditationState(state),
        )


def _meditation(row: JobRow) -> Meditation:
    return Meditation(
        name=_NAME_PREFIX + row.id,
        owner=row.owner,
        conversation=row.conversation,
        state=MeditationState(row.state),
        options=MeditationOptions(image_aspect=ImageAspect(row.image_aspect), skip_cache=row.skip_cache),
        transcript=row.transcript,
        image_storage_key=row.image_storage_key,
        narration_storage_key=row.narration_storage_key,
        quick_video_storage_key=row.quick_video_storage_key,
        enhanced_video_storage_key=row.enhanced_video_storage_key,
        failure_message=row.failure_message,
        last_sequence=row.last_sequence,
        create_time=aware(row.create_time),
        stored_bytes=row.stored_bytes,
        is_cancel_requested=row.cancel_requested_time is not None,
    )


def _is_abandoned(moment: datetime) -> ColumnElement[bool]:
    """A running job nobody holds: given back (no lease), or its holder's lease (or the queue's) lapsed."""
    return or_(JobRow.lease_expires_time.is_(None), JobRow.lease_expires_time < moment)
