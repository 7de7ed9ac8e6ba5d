"""Schema migrations (Alembic): `python -m services.content.migrate` upgrades DATABASE_URL to the newest."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.content.config import read_database_url
from services.content.repository import create_engine
from services.environment import ConfigError, Environment

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class DatabaseNotReadyError(Exception):
    """The database cannot be used as it is; the message says what to run."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest schema revision these services expect."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS}")
    return head


def describe(database_url: str) -> str:
    """The database's location for messages, never its password."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite file {url.database}"
    return f"{url.get_backend_name()} database {url.database!r} on {url.host}:{url.port or 5432}"


async def upgrade(engine: AsyncEngine) -> None:
    """Brings the database to the newest schema; safe to run again."""

    def run(connection: Connection) -> None:
        config = _config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The schema revision the database is at, or None when it was never migrated."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def ensure_migrated(engine: AsyncEngine, database_url: str) -> None:
    """Refuses to go on unless the database is reachable and at the newest schema."""
    try:
        revision = await current_revision(engine)
    except (OSError, SQLAlchemyError) as error:
        reason = type(getattr(error, "orig", None) or error).__name__
        raise DatabaseNotReadyError(
            f"cannot reach the {describe(database_url)} ({reason}): is it running?"
        ) from None
    expected = head_revision()
    if revision != expected:
        found = "has no schema" if revision is None else f"is at schema {revision}, not {expected}"
        raise DatabaseNotReadyError(
            f"the {describe(database_url)} {found}: run `make migrate` (python -m services.content.migrate)"
        )


async def _main(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        print(f"migrated the {describe(database_url)} to schema {head_revision()}")
    finally:
        await engine.dispose()


def run() -> None:
    """Upgrades the database named by DATABASE_URL (SQLite under var/ by default)."""
    environment = Environment(os.environ)
    try:
        database_url = read_database_url(
            environment, environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        )
    except ConfigError as error:
        sys.exit(f"migrate: configuration error: {error}")
    try:
        asyncio.run(_main(database_url))
    except (OSError, SQLAlchemyError) as error:
        reason = type(getattr(error, "orig", None) or error).__name__
        sys.exit(f"migrate: cannot migrate the {describe(database_url)} ({reason})")


if __name__ == "__main__":
    run()
