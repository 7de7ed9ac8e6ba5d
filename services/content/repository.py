"""The content service's tables: conversations and their messages."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    func,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.content.errors import AlreadyExistsError, NotFoundError
from services.database import aware, now


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


def new_id() -> str:
    """A 64-bit random id in hex: unguessable enough for names, short enough to read."""
    return secrets.token_hex(8)


class ContentRepository:
    """Reads and writes the content schema, one session per unit of work."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session, session.begin():
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
        it first created when the request is the same (`request_sha256`), else raises AlreadyExistsError."""
        if request_id:
            existing = await self._conversation_by_request_id(owner, request_id, request_sha256)
            if existing is not None:
                return existing
        conversation_id = new_id()
        try:
            async with self._transaction() as session:
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
        except IntegrityError:
            # Two identical retries raced; the unique (owner, request_id) let exactly one in.
            if request_id:
                existing = await self._conversation_by_request_id(owner, request_id, request_sha256)
                if existing is not None:
                    return existing
            raise
        return await self.get_conversation(owner, conversation_id)

    async def _conversation_by_request_id(
        self, owner: str, request_id: str, request_sha256: str | None
    ) -> Conversation | None:
        async with self._sessions() as session:
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
        """Appends messages in order to `owner`'s conversation and returns its new message count."""
        async with self._transaction() as session:
            exists = await session.scalar(
                select(ConversationRow.id)
                .where(ConversationRow.id == conversation_id, ConversationRow.owner == owner)
                .with_for_update()
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

    async def get_conversation(self, owner: str, conversation_id: str) -> Conversation:
        """Returns `owner`'s conversation with its messages; anyone else's is NotFoundError, exactly as a
        missing one is."""
        async with self._sessions() as session:
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
        async with self._sessions() as session:
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
