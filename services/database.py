"""The SQL database every service with tables uses: one async engine per process, and its schema migrations.

Each service owns its tables and its own Alembic history (`services/<service>/migrations/`); this module is
what they share: how an engine is made, how DATABASE_URL is read, and how a history is applied and checked.
Two histories can live in one database (production shares one PostgreSQL) because each keeps its own
version table.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.environment import ConfigError, Environment


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


def read_database_url(environment: Environment, default_sqlite_file: Path) -> str:
    """DATABASE_URL, or a SQLite file; only async drivers can serve an async engine."""
    url = environment.text("DATABASE_URL", f"sqlite+aiosqlite:///{default_sqlite_file}")
    if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            "DATABASE_URL must start with postgresql+asyncpg:// or sqlite+aiosqlite:// (an async driver)"
        )
    return url


def read_pool_settings(environment: Environment) -> PoolSettings:
    """The STILLPOINT_DATABASE_POOL_* variables."""
    return PoolSettings(
        size=environment.integer("STILLPOINT_DATABASE_POOL_SIZE", 5, minimum=1, maximum=100),
        max_overflow=environment.integer("STILLPOINT_DATABASE_MAX_OVERFLOW", 5, minimum=0, maximum=100),
        is_pre_ping=environment.flag("STILLPOINT_DATABASE_POOL_PRE_PING", True),
        recycle_seconds=environment.seconds("STILLPOINT_DATABASE_POOL_RECYCLE_SECONDS", 1800.0),
    )


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
    is_postgresql = database_url.startswith("postgresql+asyncpg")
    engine = create_async_engine(
        database_url,
        pool_size=pool.size,
        max_overflow=pool.max_overflow,
        # PostgreSQL's connections are checked without a round trip (below).
        pool_pre_ping=pool.is_pre_ping and not is_postgresql,
        pool_recycle=pool.recycle_seconds,
        connect_args=connect_args,
    )
    if is_postgresql and pool.is_pre_ping:
        event.listen(engine.sync_engine, "checkout", _refuse_closed_connection)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def _refuse_closed_connection(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """A pooled PostgreSQL connection the server has closed (a restart, an administrator, an idle timeout)
    is replaced before use, as SQLAlchemy's pre-ping would, but from what asyncpg already knows: the event
    loop reads every connection's socket, idle ones too, so a closed one is marked the moment the server's
    goodbye arrives. The pre-ping asked the server each time instead, three round trips (asyncpg's probe in
    a transaction of its own, for pgbouncer) before every unit of work: half of the gateway's statements
    when fifty jobs start together. A connection lost without a word (a network gone silent) deceives both
    alike until the statement's own timeout."""
    driver_connection = record.driver_connection
    if driver_connection is not None and driver_connection.is_closed():
        # The pool discards it and checks out another (a fresh one, if need be).
        raise DisconnectionError("the database closed this pooled connection")


# SQLSTATE classes of a database that is not there to serve: connection exceptions (08), too many connections
# (53), and an operator's intervention (57: shutting down, "the database system is starting up").
_UNREACHABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})


def is_unreachable(error: BaseException) -> bool:
    """Whether a database call failed because the database could not be reached (down, restarting, out of
    connections, a connection severed): worth trying again shortly. A constraint, a syntax error or a bug is
    not, and must stay loud.

    asyncpg reports a server's refusal (57P01 admin shutdown, 57P03 starting up) as a plain DBAPIError,
    so the SQLSTATE decides; a severed connection is an InterfaceError or an invalidated connection."""
    if isinstance(error, OSError | TimeoutError | PoolTimeoutError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error, OperationalError | InterfaceError):
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _UNREACHABLE_SQLSTATE_CLASSES


def now() -> datetime:
    """The time every stored timestamp is taken from: aware, in UTC."""
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite returns naive ones even for timezone-aware columns)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def describe(database_url: str) -> str:
    """The database's location for messages, never its password."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite file {url.database}"
    return f"{url.get_backend_name()} database {url.database!r} on {url.host}:{url.port or 5432}"


class DatabaseNotReadyError(Exception):
    """The database cannot be used as it is; the message says what to run."""


@dataclass(frozen=True)
class MigrationHistory:
    """One service's Alembic history: its scripts folder and the version table it keeps its place in."""

    service: str
    scripts: Path
    version_table: str

    def _config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.scripts))
        config.attributes["version_table"] = self.version_table
        return config

    def head_revision(self) -> str:
        """The newest schema revision the service expects."""
        head = ScriptDirectory.from_config(self._config()).get_current_head()
        if head is None:
            raise RuntimeError(f"no migrations found in {self.scripts}")
        return head

    async def upgrade(self, engine: AsyncEngine) -> None:
        """Brings the service's tables to the newest schema; safe to run again."""

        def run(connection: Connection) -> None:
            config = self._config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        async with engine.begin() as connection:
            await connection.run_sync(run)

    async def current_revision(self, engine: AsyncEngine) -> str | None:
        """The revision the service's tables are at, or None when they were never migrated."""

        def read(connection: Connection) -> str | None:
            context = MigrationContext.configure(connection, opts={"version_table": self.version_table})
            return context.get_current_revision()

        async with engine.connect() as connection:
            return await connection.run_sync(read)

    async def ensure_migrated(self, engine: AsyncEngine, database_url: str) -> None:
        """Refuses to go on unless the database is reachable and the service's tables are at the newest
        schema."""
        try:
            revision = await self.current_revision(engine)
        except (OSError, SQLAlchemyError) as error:
            reason = type(getattr(error, "orig", None) or error).__name__
            raise DatabaseNotReadyError(
                f"cannot reach the {describe(database_url)} ({reason}): is it running?"
            ) from None
        expected = self.head_revision()
        if revision != expected:
            found = "has no schema" if revision is None else f"is at schema {revision}, not {expected}"
            raise DatabaseNotReadyError(
                f"the {describe(database_url)} {found} for the {self.service} service: run `make migrate` "
                f"(python -m services.{self.service}.migrate)"
            )


def run_migration_environment(target_metadata: Any) -> None:
    """The body of a service's migrations/env.py: runs on the connection `MigrationHistory.upgrade` hands
    over, recording its place in the history's own version table."""
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `make migrate` (python -m services.<service>.migrate)")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=config.attributes["version_table"],
        # SQLite cannot ALTER most things in place: batch mode rebuilds tables so one script serves both.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate(history: MigrationHistory, database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await history.upgrade(engine)
        revision = history.head_revision()
        print(f"migrated the {history.service} tables of the {describe(database_url)} to {revision}")
    finally:
        await engine.dispose()


def migrate_from_environment(
    history: MigrationHistory, environment: Environment, default_sqlite_file: Callable[[Path], Path]
) -> None:
    """The `python -m services.<service>.migrate` command: upgrades the database DATABASE_URL names (the
    service's SQLite file under STILLPOINT_VAR_DIR by default), or exits saying why it could not."""
    try:
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        database_url = read_database_url(environment, default_sqlite_file(var_root))
    except ConfigError as error:
        sys.exit(f"migrate: configuration error: {error}")
    try:
        asyncio.run(_migrate(history, database_url))
    except (OSError, SQLAlchemyError) as error:
        reason = type(getattr(error, "orig", None) or error).__name__
        sys.exit(f"migrate: cannot migrate the {describe(database_url)} ({reason})")
