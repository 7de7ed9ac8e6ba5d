"""The content service's schema migrations: `python -m services.content.migrate` upgrades DATABASE_URL."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from services.database import MigrationHistory, migrate_main, read_database_url
from services.environment import ConfigError, Environment

# The content tables' history keeps Alembic's default version table: databases migrated before the
# gateway had tables of its own are already at a place in it.
HISTORY = MigrationHistory(
    service="content", scripts=Path(__file__).resolve().parent / "migrations", version_table="alembic_version"
)


async def upgrade(engine: AsyncEngine) -> None:
    """Brings the content tables to the newest schema; safe to run again."""
    await HISTORY.upgrade(engine)


async def ensure_migrated(engine: AsyncEngine, database_url: str) -> None:
    """Refuses to go on unless the database is reachable and the content tables are at the newest schema."""
    await HISTORY.ensure_migrated(engine, database_url)


def run() -> None:
    """Upgrades the database named by DATABASE_URL (SQLite under var/ by default)."""
    environment = Environment(os.environ)
    try:
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        database_url = read_database_url(environment, var_root / "stillpoint.db")
    except ConfigError as error:
        sys.exit(f"migrate: configuration error: {error}")
    migrate_main(HISTORY, database_url)


if __name__ == "__main__":
    run()
