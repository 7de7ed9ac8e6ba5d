"""The content service's tables: conversations, their messages, and what was made from them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime

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
    and_,
    cast,
    delete,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.content.errors import (
    AlreadyExistsError,
    DatabaseUnavailableError,
    NotFoundError,
    QuotaExceededError,
)
from services.database import aware, is_unreachable, now


class Base(DeclarativeBase):
    """Declarative base of the content schema."""


class ConversationRow(Base):
    """A stored conversation."""

    __tablename__ = "conversations"
    __table_args__ = (
        # A request id is its owner's: another owner's equal id is another request.
        UniqueConstraint("owner", "request_id", name="uq_conversations_owner_request_id"),
        Index("ix_conversations_owner", "owner"),
        # Listing an owner's conversations newest first, a page at a time (keyset pagination).
        Index("ix_conversations_owner_create_time_id", "owner", "create_time", "id"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The authenticated caller who created it; only they ever see it.
    owner: Mapped[str] = mapped_column(String(128), default="", server_default="")
    title: Mapped[str] = mapped_column(String(200), default="", server_default="")
    request_id: Mapped[str | None] = mapped_column(String(64))
    # The SHA-256 of the request that used `request_id`: a retry must be the same request.
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


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


class ArtifactRow(Base):
    """Something made from a conversation and kept outside its rows: a cached transcript or image (and the
    image's stored file). Recorded when made, so that deleting the conversation erases it too."""

    __tablename__ = "conversation_artifacts"
    __table_args__ = (
        UniqueConstraint("conversation_id", "cache_key", name="uq_conversation_artifacts_conversation_key"),
        # Is an image's file still used by another conversation? Asked at every erasure.
        Index("ix_conversation_artifacts_storage_key", "storage_key"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE", name="fk_conversation_artifacts_conversation_id")
    )
    # "transcript" or "image": which cache holds `cache_key`.
    kind: Mapped[str] = mapped_column(String(16))
    cache_key: Mapped[str] = mapped_column(String(300))
    # The stored file an image's cache entry points at; None for transcripts.
    storage_key: Mapped[str | None] = mapped_column(String(300))


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
class ConversationCursor:
    """A conversation's place in the newest-first order; the next page starts after it."""

    create_time: datetime
    id: str


@dataclass(frozen=True)
class ConversationPage:
    """One page of an owner's conversations, newest first, each without its messages."""

    conversations: tuple[Conversation, ...]
    # The last conversation's cursor when more follow; None on the last page.
    next_cursor: ConversationCursor | None


@dataclass(frozen=True)
class Artifact:
    """Something made from a conversation: a cache entry, and for an image its stored file."""

    kind: str
    cache_key: str
    storage_key: str | None = None


@dataclass(frozen=True)
class DeletedConversation:
    """What a deletion removed from the tables, and what it leaves for the caller to erase elsewhere."""

    message_count: int
    artifacts: tuple[Artifact, ...]
    # Stored files among `artifacts` that another conversation's artifacts still point at: they stay.
    shared_storage_keys: frozenset[str]


# What a message weighs in a conversation's size besides its text's UTF-8 bytes: its role, its time and its
# framing in a response (about 25 bytes in GetConversation's). Counting it means the size bounds the response
# however short the messages: a megabyte of one-character messages is not a megabyte on the wire.
MESSAGE_ENVELOPE_BYTES = 32


@dataclass(frozen=True)
class ConversationLimits:
    """How much one owner may store."""

    max_conversations_per_owner: int = 1000
    # The most a conversation may hold: the UTF-8 bytes of its messages' text plus MESSAGE_ENVELOPE_BYTES a
    # message. 1 MiB keeps GetConversation's response far below the 4 MiB a gRPC client accepts by default.
    max_conversation_bytes: int = 1024 * 1024


def size_bytes(messages: Sequence[NewMessage]) -> int:
    """What `messages` add to a conversation's size."""
    return sum(len(message.text.encode()) + MESSAGE_ENVELOPE_BYTES for message in messages)


def new_id() -> str:
    """A 64-bit random id in hex: unguessable enough for names, short enough to read."""
    return secrets.token_hex(8)


@contextmanager
def _unavailable_when_unreachable() -> Iterator[None]:
    """A database that cannot be reached (down, restarting, out of connections) is DatabaseUnavailableError:
    the caller tries again shortly. Anything else is a bug and stays loud."""
    try:
        yield
    except Exception as error:
        if not is_unreachable(error):
            raise
        raise DatabaseUnavailableError(
            "the conversation database is unavailable; try again shortly"
        ) from error


class ContentRepository:
    """Reads and writes the content schema, one session per unit of work."""

    def __init__(self, engine: AsyncEngine, limits: ConversationLimits | None = None) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Reads outside a transaction on PostgreSQL (the same pool, lent in autocommit): BEGIN and ROLLBACK
        # were two of a read's three round trips, and under READ COMMITTED each statement takes its own
        # snapshot inside a transaction as outside one.
        self._reading_sessions = (
            async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
            if engine.dialect.name == "postgresql"
            else self._sessions
        )
        self._limits = limits or ConversationLimits()
        self._is_sqlite = engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        with _unavailable_when_unreachable():
            async with self._sessions() as session, session.begin():
                yield session

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncSession]:
        with _unavailable_when_unreachable():
            async with self._reading_sessions() as session:
                yield session

    async def create_conversation(
        self,
        *,
        owner: str,
        title: str,
        messages: Sequence[NewMessage],
        request_id: str | None,
        request_sha256: str | None = None,
    ) -> Conversation:
        """Stores `owner`'s conversation. A repeated `request_id` of the same owner returns the conversation
        it first created when the request is the same (`request_sha256`), else raises AlreadyExistsError.
        Raises QuotaExceededError when the owner keeps as many conversations as they may, or when the
        messages are more than one conversation may hold."""
        if request_id:
            existing = await self._conversation_by_request_id(owner, request_id, request_sha256)
            if existing is not None:
                return existing
        self._check_size(f"these {len(messages)} messages", 0, messages)
        conversation_id = new_id()
        try:
            async with self._transaction() as session:
                # Counted and inserted under one lock per owner: two creates at once cannot both pass.
                await self._lock_owner(session, owner)
                kept = await session.scalar(
                    select(func.count()).select_from(ConversationRow).where(ConversationRow.owner == owner)
                )
                if int(kept or 0) >= self._limits.max_conversations_per_owner:
                    raise QuotaExceededError(
                        f"you have {kept} conversations (the limit is "
                        f"{self._limits.max_conversations_per_owner}): delete one you no longer need "
                        "(DeleteConversation), or add to one with AppendMessages"
                    )
                session.add(
                    ConversationRow(
                        id=conversation_id,
                        owner=owner,
                        title=title,
                        request_id=request_id or None,
                        request_sha256=request_sha256,
                    )
                )
                await session.flush()
                _add_messages(session, conversation_id, 0, messages)
        except (IntegrityError, QuotaExceededError):
            # Two identical retries raced; the unique (owner, request_id) let exactly one in (and that one may
            # have been the owner's last conversation: the retry still gets it).
            if request_id:
                existing = await self._conversation_by_request_id(owner, request_id, request_sha256)
                if existing is not None:
                    return existing
            raise
        return await self.get_conversation(owner, conversation_id)

    async def _conversation_by_request_id(
        self, owner: str, request_id: str, request_sha256: str | None
    ) -> Conversation | None:
        async with self._reading() as session:
            found = (
                await session.execute(
                    select(ConversationRow.id, ConversationRow.request_sha256).where(
                        ConversationRow.owner == owner, ConversationRow.request_id == request_id
                    )
                )
            ).first()
        if found is None:
            return None
        if found.request_sha256 != request_sha256:
            raise AlreadyExistsError(
                "request_id", "was already used for a different conversation: use a new id for each request"
            )
        return await self.get_conversation(owner, found.id)

    async def append_messages(self, owner: str, conversation_id: str, messages: Sequence[NewMessage]) -> int:
        """Appends messages in order to `owner`'s conversation and returns its new message count. Raises
        QuotaExceededError when the conversation would grow past what one may hold."""
        async with self._transaction() as session:
            await self._begin_writing(session)
            # The row lock (PostgreSQL) makes concurrent appends take turns: each sees the size the last left.
            exists = await session.scalar(
                select(ConversationRow.id)
                .where(ConversationRow.id == conversation_id, ConversationRow.owner == owner)
                .with_for_update()
            )
            if exists is None:
                raise NotFoundError(f"conversations/{conversation_id}")
            count, text_bytes = (
                await session.execute(
                    select(func.count(), func.coalesce(func.sum(self._text_bytes()), 0))
                    .select_from(MessageRow)
                    .where(MessageRow.conversation_id == conversation_id)
                )
            ).one()
            start = int(count or 0)
            held = int(text_bytes or 0) + start * MESSAGE_ENVELOPE_BYTES
            self._check_size(f"conversations/{conversation_id}", held, messages)
            _add_messages(session, conversation_id, start, messages)
        return start + len(messages)

    def _check_size(self, what: str, held: int, messages: Sequence[NewMessage]) -> None:
        limit = self._limits.max_conversation_bytes
        total = held + size_bytes(messages)
        if total > limit:
            raise QuotaExceededError(
                f"{what} would hold {total} bytes of messages (each counts its UTF-8 text plus "
                f"{MESSAGE_ENVELOPE_BYTES}); the limit is {limit}: start a new conversation for what follows"
            )

    async def _begin_writing(self, session: AsyncSession) -> None:
        """On SQLite, takes the database's one write lock now rather than at the first insert, so what the
        transaction reads before it writes still holds when it writes (pysqlite begins a transaction only
        at the first INSERT, and runs the reads before it outside any). PostgreSQL needs nothing here."""
        if self._is_sqlite:
            await session.execute(text("BEGIN IMMEDIATE"))

    async def _lock_owner(self, session: AsyncSession, owner: str) -> None:
        """Makes the owner's creates take turns until the transaction ends: on PostgreSQL a transaction
        advisory lock on the owner (no row to lock exists yet), on SQLite the write lock."""
        if self._is_sqlite:
            await self._begin_writing(session)
            return
        await session.execute(select(func.pg_advisory_xact_lock(_OWNER_LOCK_NAMESPACE, func.hashtext(owner))))

    def _text_bytes(self) -> ColumnElement[int]:
        """A message's text size in UTF-8 bytes: SQLite before 3.43 has no octet_length, and counts the
        bytes of the text as a blob."""
        if self._is_sqlite:
            return func.length(cast(MessageRow.text, LargeBinary))
        return func.octet_length(MessageRow.text)

    async def get_conversation(self, owner: str, conversation_id: str) -> Conversation:
        """Returns `owner`'s conversation with its messages; anyone else's is NotFoundError, exactly as a
        missing one is."""
        async with self._reading() as session:
            row = await session.get(ConversationRow, conversation_id)
            if row is None or row.owner != owner:
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
            create_time=aware(row.create_time),
            messages=tuple(
                StoredMessage(role=m.role, text=m.text, create_time=aware(m.create_time)) for m in messages
            ),
        )

    async def list_conversations(
        self, owner: str, page_size: int, after: ConversationCursor | None = None
    ) -> ConversationPage:
        """Up to `page_size` of `owner`'s conversations, newest first, after `after`, without their messages.
        Keyset pagination on (create_time, id), never an offset: conversations created between two pages are
        newer than the cursor, so no page repeats or skips one."""
        query = select(ConversationRow).where(ConversationRow.owner == owner)
        if after is not None:
            query = query.where(
                or_(
                    ConversationRow.create_time < after.create_time,
                    and_(ConversationRow.create_time == after.create_time, ConversationRow.id < after.id),
                )
            )
        # One more than asked tells whether another page follows.
        query = query.order_by(ConversationRow.create_time.desc(), ConversationRow.id.desc()).limit(
            page_size + 1
        )
        async with self._reading() as session:
            rows = (await session.scalars(query)).all()
        page = rows[:page_size]
        return ConversationPage(
            conversations=tuple(
                Conversation(id=row.id, title=row.title, create_time=aware(row.create_time), messages=())
                for row in page
            ),
            next_cursor=(
                ConversationCursor(create_time=aware(page[-1].create_time), id=page[-1].id)
                if len(rows) > page_size
                else None
            ),
        )

    async def check_owner(self, owner: str, conversation_id: str) -> None:
        """Raises NotFoundError unless `owner`'s conversation exists."""
        async with self._reading() as session:
            found = await session.scalar(
                select(ConversationRow.id).where(
                    ConversationRow.id == conversation_id, ConversationRow.owner == owner
                )
            )
        if found is None:
            raise NotFoundError(f"conversations/{conversation_id}")

    async def record_artifact(self, owner: str, conversation_id: str, artifact: Artifact) -> None:
        """Records `artifact` as made from `owner`'s conversation; NotFoundError when it is gone (deleted
        while the artifact was being made: the caller must then erase the artifact itself)."""
        async with self._transaction() as session:
            # The row lock (SQLite's write lock) orders this against a deletion: either the deletion sees this
            # artifact, or this sees the conversation gone.
            await self._begin_writing(session)
            found = await session.scalar(
                select(ConversationRow.id)
                .where(ConversationRow.id == conversation_id, ConversationRow.owner == owner)
                .with_for_update()
            )
            if found is None:
                raise NotFoundError(f"conversations/{conversation_id}")
            is_recorded = await session.scalar(
                select(ArtifactRow.id).where(
                    ArtifactRow.conversation_id == conversation_id,
                    ArtifactRow.cache_key == artifact.cache_key,
                )
            )
            if is_recorded is None:
                session.add(
                    ArtifactRow(
                        conversation_id=conversation_id,
                        kind=artifact.kind,
                        cache_key=artifact.cache_key,
                        storage_key=artifact.storage_key,
                    )
                )

    async def list_artifacts(self, owner: str, conversation_id: str) -> tuple[Artifact, ...]:
        """What was recorded as made from `owner`'s conversation; NotFoundError when it is not theirs."""
        await self.check_owner(owner, conversation_id)
        async with self._reading() as session:
            rows = (
                await session.scalars(
                    select(ArtifactRow).where(ArtifactRow.conversation_id == conversation_id)
                )
            ).all()
        return tuple(_artifact(row) for row in rows)

    async def delete_conversation(self, owner: str, conversation_id: str) -> DeletedConversation:
        """Deletes `owner`'s conversation, its messages and its artifacts' records in one transaction, and
        returns the artifacts, to be erased from the caches and storage. Anyone else's conversation is
        NotFoundError, exactly as a missing one is."""
        async with self._transaction() as session:
            await self._begin_writing(session)
            found = await session.scalar(
                select(ConversationRow.id)
                .where(ConversationRow.id == conversation_id, ConversationRow.owner == owner)
                .with_for_update()
            )
            if found is None:
                raise NotFoundError(f"conversations/{conversation_id}")
            rows = (
                await session.scalars(
                    select(ArtifactRow).where(ArtifactRow.conversation_id == conversation_id)
                )
            ).all()
            artifacts = tuple(_artifact(row) for row in rows)
            shared = await _shared_storage_keys(session, artifacts, conversation_id)
            message_count = int(
                await session.scalar(
                    select(func.count())
                    .select_from(MessageRow)
                    .where(MessageRow.conversation_id == conversation_id)
                )
                or 0
            )
            # Children first: SQLite enforces no foreign keys unless asked, so nothing may rely on a cascade.
            await session.execute(delete(ArtifactRow).where(ArtifactRow.conversation_id == conversation_id))
            await session.execute(delete(MessageRow).where(MessageRow.conversation_id == conversation_id))
            await session.execute(delete(ConversationRow).where(ConversationRow.id == conversation_id))
        return DeletedConversation(
            message_count=message_count,
            artifacts=artifacts,
            shared_storage_keys=shared,
        )

    async def shared_storage_keys(
        self, artifacts: tuple[Artifact, ...], excluding_conversation: str = ""
    ) -> frozenset[str]:
        """The stored files among `artifacts` that a conversation other than `excluding_conversation` uses."""
        async with self._reading() as session:
            return await _shared_storage_keys(session, artifacts, excluding_conversation)


async def _shared_storage_keys(
    session: AsyncSession, artifacts: tuple[Artifact, ...], excluding_conversation: str
) -> frozenset[str]:
    storage_keys = {artifact.storage_key for artifact in artifacts if artifact.storage_key}
    if not storage_keys:
        return frozenset()
    found = await session.scalars(
        select(ArtifactRow.storage_key).where(
            ArtifactRow.storage_key.in_(storage_keys), ArtifactRow.conversation_id != excluding_conversation
        )
    )
    return frozenset(key for key in found.all() if key)


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(kind=row.kind, cache_key=row.cache_key, storage_key=row.storage_key)


# The first key of the content service's advisory locks, so that they never collide with another program's
# in a shared database (the number spells "SPCO": Stillpoint content).
_OWNER_LOCK_NAMESPACE = 0x5350434F


def _add_messages(
    session: AsyncSession, conversation_id: str, start: int, messages: Sequence[NewMessage]
) -> None:
    created = now()
    session.add_all(
        MessageRow(
            conversation_id=conversation_id,
            position=start + offset,
            role=message.role,
            text=message.text,
            create_time=message.create_time or created,
        )
        for offset, message in enumerate(messages)
    )
