"""The real data services on this machine (PostgreSQL, Redis) for tests: required under CI, else optional."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

POSTGRES_ADMIN_DSN = os.environ.get(
    "STILLPOINT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def is_ci() -> bool:
    """CI runs with CI=true and must test the real data plane, never skip it."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, error: BaseException) -> None:
    """Fails under CI, skips elsewhere, naming what was missing."""
    message = f"{what} is not reachable ({type(error).__name__}: {error}); `.ci/run` starts it"
    if is_ci():
        pytest.fail(message)
    pytest.skip(message)


def create_postgres_database() -> str:
    """Creates a fresh, empty database and returns its SQLAlchemy async URL."""
    name = f"stillpoint_test_{secrets.token_hex(6)}"

    async def create() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    try:
        asyncio.run(create())
    except (OSError, asyncpg.PostgresError) as error:
        unavailable("PostgreSQL at 127.0.0.1:5432", error)
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


def drop_postgres_database(url: str) -> None:
    """Drops a database made by create_postgres_database, closing what still uses it."""
    name = url.rsplit("/", 1)[1]

    async def drop() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(drop())


@contextmanager
def fresh_database(kind: str, tmp_path: Path, sqlite_file_name: str) -> Iterator[str]:
    """A fresh, empty database of one kind, "sqlite" (a file under tmp_path) or "postgresql" (dropped
    afterwards), as an async SQLAlchemy URL."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / sqlite_file_name}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def plain_commands_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, every command asyncpg sends as plain SQL, in order: BEGIN, COMMIT and ROLLBACK go that
    way (a prepared statement does not). For counting the round trips a unit of work spends on them."""
    sent: list[str] = []
    execute = asyncpg.Connection.execute

    async def recorded(
        connection: asyncpg.Connection, query: str, *arguments: object, **options: object
    ) -> object:
        sent.append(query)
        return await execute(connection, query, *arguments, **options)

    monkeypatch.setattr(asyncpg.Connection, "execute", recorded)
    return sent
