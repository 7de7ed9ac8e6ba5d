"""Alembic's environment of the gateway's job tables: migrations run on the connection handed over."""

from __future__ import annotations

from services.database import run_migration_environment
from services.gateway.jobs.store import Base

run_migration_environment(Base.metadata)
