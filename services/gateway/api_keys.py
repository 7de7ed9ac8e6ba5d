"""API keys for servers, scripts, the CLI and grpcurl: made once, shown once, stored only as a hash.

Only this module reads or writes the `api_keys` table. A key is a recognisable prefix and 256 random bits;
the table keeps its SHA-256 (a key is random, not a password: a fast hash is the right one) and its owner.
Verification is cached for a few seconds per key, so a revocation takes effect within that time on every
gateway replica without a database read on every call.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Index, String, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.database import aware, is_unreachable, now
from services.gateway.errors import FailureKind, GatewayError
from services.gateway.schema import Base

# Recognisable in a config file or a leaked log, and by secret scanners.
API_KEY_PREFIX = "stillpoint_key_"
# How long a verified (or refused) key is trusted without asking the database again: the bound on how long
# a revoked key keeps working on a replica that verified it just before.
VERIFICATION_CACHE_SECONDS = 2.0
_CACHED_KEYS = 10_000
MAX_OWNER_CHARS = 128


class ApiKeyRow(Base):
    """One API key: its hash, its owner, and whether it was revoked."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_owner", "owner"),)
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    # hex SHA-256 of the whole key; the key itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(MAX_OWNER_CHARS))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    revoke_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class ApiKey:
    """A key's record, without the key."""

    id: str
    owner: str
    create_time: datetime
    is_revoked: bool


@dataclass(frozen=True)
class NewApiKey:
    """A key just made: `key` is shown once and never again."""

    id: str
    owner: str
    key: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    """Makes, lists, revokes and verifies API keys."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._clock = clock
        # key hash -> (owner or None when refused, when the answer was read)
        self._verified: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    async def create(self, owner: str) -> NewApiKey:
        """Makes a key for `owner`."""
        if not owner or len(owner) > MAX_OWNER_CHARS or not owner.isprintable():
            raise GatewayError(
                FailureKind.INVALID_INPUT,
                f"owner: give a printable name of 1 to {MAX_OWNER_CHARS} characters",
            )
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(id=secrets.token_hex(8), key_hash=_hash(key), owner=owner)
        async with self._sessions() as session, session.begin():
            session.add(row)
        return NewApiKey(id=row.id, owner=owner, key=key)

    async def list(self, owner: str | None = None) -> list[ApiKey]:
        """Every key (or one owner's), newest first."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.create_time.desc())
        if owner is not None:
            query = query.where(ApiKeyRow.owner == owner)
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return [
            ApiKey(
                id=row.id,
                owner=row.owner,
                create_time=aware(row.create_time),
                is_revoked=row.revoke_time is not None,
            )
            for row in rows
        ]

    async def revoke(self, key_id: str) -> bool:
        """Revokes a key by its id; False when there is no such unrevoked key."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoke_time.is_(None))
                .values(revoke_time=now())
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def owner_of(self, key: str) -> str | None:
        """The owner of a valid, unrevoked key; None for any other string."""
        if not key.startswith(API_KEY_PREFIX):
            return None
        key_hash = _hash(key)
        cached = self._verified.get(key_hash)
        moment = self._clock()
        if cached is not None and moment - cached[1] < VERIFICATION_CACHE_SECONDS:
            return cached[0]
        try:
            async with self._sessions() as session:
                owner = await session.scalar(
                    select(ApiKeyRow.owner).where(
                        ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoke_time.is_(None)
                    )
                )
        except Exception as error:
            # Never "refused": a database outage must not lock every API key's owner out.
            if not is_unreachable(error):
                raise
            raise GatewayError(
                FailureKind.UNAVAILABLE, "cannot check credentials now; try again shortly"
            ) from error
        self._verified[key_hash] = (owner, moment)
        self._verified.move_to_end(key_hash)
        while len(self._verified) > _CACHED_KEYS:
            self._verified.popitem(last=False)
        return owner
