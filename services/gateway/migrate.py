"""The gateway's schema migrations (its job tables): `python -m services.gateway.migrate` upgrades
DATABASE_URL."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from services.database import MigrationHistory, migrate_main, read_database_url
from services.environment import ConfigError, Environment

# Its own version table, so that it can share one database (production's PostgreSQL) with the content tables.
HISTORY = MigrationHistory(
    service="gateway",
    scripts=Path(__file__).resolve().parent / "migrations",
    version_table="alembic_version_gateway",
)


def default_sqlite_file(var_root: Path) -> Path:
    """Where the embedded default keeps the gateway's tables."""
    return var_root / "gateway.db"


async def upgrade(engine: AsyncEngine) -> None:
    """Brings the gateway's tables to the newest schema; safe to run again."""
    await HISTORY.upgrade(engine)


async def ensure_migrated(engine: AsyncEngine, database_url: str) -> None:
    """Refuses to go on unless the database is reachable and the gateway's tables are at the newest schema."""
    await HISTORY.ensure_migrated(engine, database_url)


def run() -> None:
    """Upgrades the database named by DATABASE_URL (SQLite under var/ by default)."""
    environment = Environment(os.environ)
    try:
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        database_url = read_database_url(environment, default_sqlite_file(var_root))
    except ConfigError as error:
        sys.exit(f"migrate: configuration error: {error}")
    migrate_main(HISTORY, database_url)


if __name__ == "__main__":
    run()
