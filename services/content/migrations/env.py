"""Alembic's environment of the content tables: migrations run on the connection the history hands over."""

from __future__ import annotations

from services.content.repository import Base
from services.database import run_migration_environment

run_migration_environment(Base.metadata)
