"""The gateway's schema migrations (its job tables): `python -m services.gateway.migrate` upgrades
DATABASE_URL."""

from __future__ import annotations

import os
from pathlib import Path

from services.database import MigrationHistory, migrate_from_environment
from services.environment import Environment

# Its own version table, so that it can share one database (production's PostgreSQL) with the content tables.
HISTORY = MigrationHistory(
    service="gateway",
    scripts=Path(__file__).resolve().parent / "migrations",
    version_table="alembic_version_gateway",
)


def default_sqlite_file(var_root: Path) -> Path:
    """Where the embedded default keeps the gateway's tables."""
    return var_root / "gateway.db"


if __name__ == "__main__":
    migrate_from_environment(HISTORY, Environment(os.environ), default_sqlite_file)
