"""The content service's database: conversations, meditation jobs and their event logs."""

from __future__ import annotations

import enum
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.content.errors import ConflictError, ExhaustedError, NotFoundError, PreconditionError


class MeditationState(enum.StrEnum):
    """A meditation job's lifecycle, stored as text."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Whether the job will record no more events."""
        return self is not MeditationState.RUNNING


class Base(DeclarativeBase):
    """Declarative base of the content schema."""


def _now() -> datetime:
    return datetime.now(UTC)


class ConversationRow(Base):
    """A stored conversation."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("request_id", name="uq_conversations_request_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    title: Mapped[str] = mapped_column(String(200), default="", server_default="")
    request_id: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class MessageRow(Base):
    """One message of a conversation; `position` orders them."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "position", name="uq_messages_conversation_id_position"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE", name="fk_messages_conversation_id")
    )
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MeditationRow(Base):
    """A meditation job: state, options, assets and the newest event's sequence."""

    __tablename__ = "meditations"
    __table_args__ = (
        UniqueConstraint("request_id", name="uq_meditations_request_id"),
        Index("ix_meditations_conversation_id", "conversation_id"),
        Index("ix_meditations_state", "state"),
        Index("ix_meditations_state_lease", "state", "lease_expires_time"),
        Index("ix_meditations_client_state", "client", "state"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", name="fk_meditations_conversation_id")
    )
    request_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=MeditationState.RUNNING.value)
    options_json: Mapped[str] = mapped_column(Text, default="{}")
    transcript: Mapped[str] = mapped_column(Text, default="")
    image_uri: Mapped[str] = mapped_column(Text, default="")
    narration_uri: Mapped[str] = mapped_column(Text, default="")
    quick_video_uri: Mapped[str] = mapped_column(Text, default="")
    enhanced_video_uri: Mapped[str] = mapped_column(Text, default="")
    failure_message: Mapped[str] = mapped_column(Text, default="")
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)
    # Which gateway process runs the job, and until when its claim holds without renewal.
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Who asked for the job: a client's running jobs are limited across every gateway.
    client: Mapped[str | None] = mapped_column(String(128))


class MeditationEventRow(Base):
    """One event of a meditation's log; the primary key makes each sequence unique per job."""

    __tablename__ = "meditation_events"
    meditation_id: Mapped[str] = mapped_column(
        ForeignKey("meditations.id", ondelete="CASCADE", name="fk_meditation_events_meditation_id"),
        primary_key=True,
    )
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


@dataclass(frozen=True)
class NewMessage:
    """A message to store."""

    role: str
    text: str
    create_time: datetime | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A stored message."""

    role: str
    text: str
    create_time: datetime


@dataclass(frozen=True)
class Conversation:
    """A stored conversation with its messages in order."""

    id: str
    title: str
    create_time: datetime
    messages: tuple[StoredMessage, ...]


@dataclass(frozen=True)
class Meditation:
    """A meditation job record."""

    id: str
    conversation_id: str
    state: MeditationState
    options_json: str
    transcript: str
    image_uri: str
    narration_uri: str
    quick_video_uri: str
    enhanced_video_uri: str
    failure_message: str
    last_sequence: int
    create_time: datetime


@dataclass(frozen=True)
class MeditationChanges:
    """Job fields an event changes; None leaves a field as it is."""

    state: MeditationState | None = None
    transcript: str | None = None
    image_uri: str | None = None
    narration_uri: str | None = None
    quick_video_uri: str | None = None
    enhanced_video_uri: str | None = None
    failure_message: str | None = None

    def as_columns(self) -> dict[str, Any]:
        """The changed columns and their values."""
        columns = {
            name: value
            for name, value in (
                ("transcript", self.transcript),
                ("image_uri", self.image_uri),
                ("narration_uri", self.narration_uri),
                ("quick_video_uri", self.quick_video_uri),
                ("enhanced_video_uri", self.enhanced_video_uri),
                ("failure_message", self.failure_message),
            )
            if value is not None
        }
        if self.state is not None:
            columns["state"] = self.state.value
        return columns


@dataclass(frozen=True)
class RecordedEvent:
    """One event from a meditation's log."""

    sequence: int
    payload: bytes
    event_time: datetime


@dataclass(frozen=True)
class EventPage:
    """Events after a sequence, and the job's state when they were read."""

    events: tuple[RecordedEvent, ...]
    state: MeditationState


def new_id() -> str:
    """A 64-bit random id in hex: unguessable enough for names, short enough to read."""
    return secrets.token_hex(8)


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes even for timezone-aware columns; every stored time is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PoolSettings:
    """The connection pool: at most `size + max_overflow` connections per process."""

    size: int = 5
    max_overflow: int = 5
    is_pre_ping: bool = True
    recycle_seconds: float = 1800.0

    @property
    def max_connections(self) -> int:
        """The most connections one process holds at once."""
        return self.size + self.max_overflow


# No caller waits longer than this for a connection (the gateway's bookkeeping calls get 10 s), and a
# healthy PostgreSQL answers in milliseconds.
DATABASE_CONNECT_TIMEOUT_SECONDS = 10.0


def create_engine(
    database_url: str, pool: PoolSettings | None = None, *, application_name: str = ""
) -> AsyncEngine:
    """Makes the process's one engine with a bounded pool; SQLite gets WAL and a busy timeout so readers
    never block writers."""
    pool = pool or PoolSettings()
    connect_args: dict[str, Any] = {}
    if database_url.startswith("postgresql+asyncpg"):
        # asyncpg waits 60 s for a server that accepts and never answers: start-up (and the migration)
        # would hang that long instead of saying where the database is not answering.
        connect_args["timeout"] = DATABASE_CONNECT_TIMEOUT_SECONDS
        if application_name:
            # Named connections are what pg_stat_activity shows operators (and the pool test counts).
            connect_args["server_settings"] = {"application_name": application_name}
    engine = create_async_engine(
        database_url,
        pool_size=pool.size,
        max_overflow=pool.max_overflow,
        pool_pre_ping=pool.is_pre_ping,
        pool_recycle=pool.recycle_seconds,
        connect_args=connect_args,
    )
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


class ContentRepository:
    """Reads and writes the content schema, one session per unit of work."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session, session.begin():
            yield session

    async def create_conversation(
        self, *, title: str, messages: Sequence[NewMessage], request_id: str | None
    ) -> Conversation:
        """Stores a conversation; a repeated `request_id` returns the conversation it first created."""
        if request_id:
            existing = await self._conversation_by_request_id(request_id)
            if existing is not None:
                return existing
        conversation_id = new_id()
        try:
            async with self._transaction() as session:
                session.add(ConversationRow(id=conversation_id, title=title, request_id=request_id or None))
                await session.flush()
                _add_messages(session, conversation_id, 0, messages)
        except IntegrityError:
            # Two identical retries raced; the unique request_id let exactly one in.
            if request_id:
                existing = await self._conversation_by_request_id(request_id)
                if existing is not None:
                    return existing
            raise
        return await self.get_conversation(conversation_id)

    async def _conversation_by_request_id(self, request_id: str) -> Conversation | None:
        async with self._sessions() as session:
            found = await session.scalar(
                select(ConversationRow.id).where(ConversationRow.request_id == request_id)
            )
        return None if found is None else await self.get_conversation(found)

    async def append_messages(self, conversation_id: str, messages: Sequence[NewMessage]) -> int:
        """Appends messages in order and returns the conversation's new message count."""
        async with self._transaction() as session:
            exists = await session.scalar(
                select(ConversationRow.id).where(ConversationRow.id == conversation_id).with_for_update()
            )
            if exists is None:
                raise NotFoundError(f"conversations/{conversation_id}")
            count = await session.scalar(
                select(func.count())
                .select_from(MessageRow)
                .where(MessageRow.conversation_id == conversation_id)
            )
            start = int(count or 0)
            _add_messages(session, conversation_id, start, messages)
        return start + len(messages)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        """Returns a conversation with its messages."""
        async with self._sessions() as session:
            row = await session.get(ConversationRow, conversation_id)
            if row is None:
                raise NotFoundError(f"conversations/{conversation_id}")
            messages = (
                await session.scalars(
                    select(MessageRow)
                    .where(MessageRow.conversation_id == conversation_id)
                    .order_by(MessageRow.position)
                )
            ).all()
        return Conversation(
            id=row.id,
            title=row.title,
            create_time=_aware(row.create_time),
            messages=tuple(
                StoredMessage(role=m.role, text=m.text, create_time=_aware(m.create_time)) for m in messages
            ),
        )

    async def create_meditation(
        self,
        *,
        conversation_id: str,
        request_id: str | None,
        options_json: str,
        owner: str | None = None,
        lease_seconds: float = 0.0,
        client: str | None = None,
        max_running_per_client: int = 0,
    ) -> tuple[Meditation, bool]:
        """Records a job for a conversation with messages; a repeated request_id returns the first job.

        With an owner, the owner holds the job for `lease_seconds`; without one, the job is queued: any
        gateway may claim it, but no janitor lists it as abandoned before `lease_seconds` pass. A client
        with `max_running_per_client` running jobs is refused (a repeated request_id never is).
        """
        if request_id:
            existing = await self._meditation_by_request_id(request_id)
            if existing is not None:
                return existing, False
        async with self._sessions() as session:
            if await session.get(ConversationRow, conversation_id) is None:
                raise NotFoundError(f"conversations/{conversation_id}")
            message_count = await session.scalar(
                select(func.count())
                .select_from(MessageRow)
                .where(MessageRow.conversation_id == conversation_id)
            )
            if client and max_running_per_client > 0:
                # Counted, then inserted: two requests racing past the limit can overshoot it by one each.
                # A bound on concurrent work, not an accounting ledger, so that is an acceptable trade for
                # not serialising every client's inserts.
                running = await session.scalar(
                    select(func.count())
                    .select_from(MeditationRow)
                    .where(
                        MeditationRow.client == client,
                        MeditationRow.state == MeditationState.RUNNING.value,
                    )
                )
                if (running or 0) >= max_running_per_client:
                    raise ExhaustedError(
                        f"{running} of your meditations are already running (the limit is "
                        f"{max_running_per_client}): wait for one to finish, or cancel one"
                    )
        if not message_count:
            raise PreconditionError(
                f"conversations/{conversation_id} has no messages: add some with AppendMessages first"
            )
        meditation_id = new_id()
        try:
            async with self._transaction() as session:
                session.add(
                    MeditationRow(
                        id=meditation_id,
                        conversation_id=conversation_id,
                        request_id=request_id or None,
                        options_json=options_json,
                        client=client or None,
                        owner=owner,
                        lease_expires_time=(
                            _now() + timedelta(seconds=lease_seconds) if lease_seconds > 0 else None
                        ),
                    )
                )
        except IntegrityError:
            if request_id:
                existing = await self._meditation_by_request_id(request_id)
                if existing is not None:
                    return existing, False
            raise
        return await self.get_meditation(meditation_id), True

    async def _meditation_by_request_id(self, request_id: str) -> Meditation | None:
        async with self._sessions() as session:
            row = await session.scalar(select(MeditationRow).where(MeditationRow.request_id == request_id))
        return None if row is None else _meditation(row)

    async def get_meditation(self, meditation_id: str) -> Meditation:
        """Returns a job record."""
        async with self._sessions() as session:
            row = await session.get(MeditationRow, meditation_id)
        if row is None:
            raise NotFoundError(f"meditations/{meditation_id}")
        return _meditation(row)

    async def record_event(
        self, meditation_id: str, sequence: int, payload: bytes, changes: MeditationChanges
    ) -> datetime:
        """Appends the event with the next sequence and applies its changes in the same transaction."""
        event_time = _now()
        try:
            async with self._transaction() as session:
                # The guarded update serialises writers on the job row: exactly one writer can move
                # last_sequence from N-1 to N, so the log has no gap and no duplicate.
                result = await session.execute(
                    update(MeditationRow)
                    .where(MeditationRow.id == meditation_id, MeditationRow.last_sequence == sequence - 1)
                    .values(last_sequence=sequence, update_time=event_time, **changes.as_columns())
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    current = await session.scalar(
                        select(MeditationRow.last_sequence).where(MeditationRow.id == meditation_id)
                    )
                    if current is None:
                        raise NotFoundError(f"meditations/{meditation_id}")
                    raise ConflictError(
                        f"meditations/{meditation_id} is at sequence {current}; cannot record {sequence}"
                    )
                session.add(
                    MeditationEventRow(
                        meditation_id=meditation_id, sequence=sequence, payload=payload, event_time=event_time
                    )
                )
        except IntegrityError as error:
            raise ConflictError(f"meditations/{meditation_id} already has event {sequence}") from error
        return event_time

    async def claim(self, meditation_id: str, owner: str, lease_seconds: float) -> bool:
        """Takes (or renews) a running job for `owner` when it is unowned, already `owner`'s, or its lease
        lapsed; one guarded UPDATE, so two claimants can never both win."""
        now = _now()
        async with self._transaction() as session:
            result = await session.execute(
                update(MeditationRow)
                .where(
                    MeditationRow.id == meditation_id,
                    MeditationRow.state == MeditationState.RUNNING.value,
                    or_(
                        MeditationRow.owner.is_(None),
                        MeditationRow.owner == owner,
                        MeditationRow.lease_expires_time < now,
                    ),
                )
                .values(owner=owner, lease_expires_time=now + timedelta(seconds=lease_seconds))
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def requeue(self, meditation_id: str, lease_seconds: float) -> bool:
        """Hands an abandoned running job (no lease, or a lapsed one) to the work queue: unowned, so any
        gateway may claim it, and hidden from `list_claimable` for `lease_seconds`. One guarded UPDATE, so
        of several janitors exactly one requeues it."""
        now = _now()
        async with self._transaction() as session:
            result = await session.execute(
                update(MeditationRow)
                .where(
                    MeditationRow.id == meditation_id,
                    MeditationRow.state == MeditationState.RUNNING.value,
                    _is_abandoned(now),
                )
                .values(owner=None, lease_expires_time=now + timedelta(seconds=lease_seconds))
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, meditation_id: str, owner: str, queue_lease_seconds: float = 0.0) -> None:
        """Gives a job back (at shutdown, or after a failed attempt) so any replica can claim it at once;
        with `queue_lease_seconds`, a work queue delivers it, so janitors leave it alone that long."""
        lease_expires_time = _now() + timedelta(seconds=queue_lease_seconds) if queue_lease_seconds else None
        async with self._transaction() as session:
            await session.execute(
                update(MeditationRow)
                .where(MeditationRow.id == meditation_id, MeditationRow.owner == owner)
                .values(owner=None, lease_expires_time=lease_expires_time)
            )

    async def list_claimable(self, max_jobs: int) -> list[str]:
        """Running jobs nobody holds, oldest first: given back (no lease), or their lease lapsed (their owner
        crashed, or the queue that was to deliver them lost them)."""
        now = _now()
        async with self._sessions() as session:
            ids = await session.scalars(
                select(MeditationRow.id)
                .where(
                    MeditationRow.state == MeditationState.RUNNING.value,
                    _is_abandoned(now),
                )
                .order_by(MeditationRow.create_time)
                .limit(max_jobs)
            )
            return list(ids)

    async def list_events(self, meditation_id: str, after_sequence: int, max_events: int) -> EventPage:
        """Returns up to `max_events` events after `after_sequence`, oldest first, with the job's state."""
        async with self._sessions() as session:
            state = await session.scalar(select(MeditationRow.state).where(MeditationRow.id == meditation_id))
            if state is None:
                raise NotFoundError(f"meditations/{meditation_id}")
            rows = (
                await session.scalars(
                    select(MeditationEventRow)
                    .where(
                        MeditationEventRow.meditation_id == meditation_id,
                        MeditationEventRow.sequence > after_sequence,
                    )
                    .order_by(MeditationEventRow.sequence)
                    .limit(max_events)
                )
            ).all()
        return EventPage(
            events=tuple(
                RecordedEvent(sequence=r.sequence, payload=r.payload, event_time=_aware(r.event_time))
                for r in rows
            ),
            state=MeditationState(state),
        )


def _add_messages(
    session: AsyncSession, conversation_id: str, start: int, messages: Sequence[NewMessage]
) -> None:
    now = _now()
    session.add_all(
        MessageRow(
            conversation_id=conversation_id,
            position=start + offset,
            role=message.role,
            text=message.text,
            create_time=message.create_time or now,
        )
        for offset, message in enumerate(messages)
    )


def _meditation(row: MeditationRow) -> Meditation:
    return Meditation(
        id=row.id,
        conversation_id=row.conversation_id,
        state=MeditationState(row.state),
        options_json=row.options_json,
        transcript=row.transcript,
        image_uri=row.image_uri,
        narration_uri=row.narration_uri,
        quick_video_uri=row.quick_video_uri,
        enhanced_video_uri=row.enhanced_video_uri,
        failure_message=row.failure_message,
        last_sequence=row.last_sequence,
        create_time=_aware(row.create_time),
    )


def _is_abandoned(now: datetime) -> ColumnElement[bool]:
    """A running job nobody holds: given back (no lease), or its holder's lease (or the queue's) lapsed."""
    return or_(MeditationRow.lease_expires_time.is_(None), MeditationRow.lease_expires_time < now)
