"""The content service's schema migrations: `python -m services.content.migrate` upgrades DATABASE_URL."""

from __future__ import annotations

import os
from pathlib import Path

from services.database import MigrationHistory, migrate_from_environment
from services.environment import Environment

# The content tables' history keeps Alembic's default version table: databases migrated before the
# gateway had tables of its own are already at a place in it.
HISTORY = MigrationHistory(
    service="content", scripts=Path(__file__).resolve().parent / "migrations", version_table="alembic_version"
)


def default_sqlite_file(var_root: Path) -> Path:
    """Where the embedded default keeps the content tables."""
    return var_root / "stillpoint.db"


if __name__ == "__main__":
    migrate_from_environment(HISTORY, Environment(os.environ), default_sqlite_file)
