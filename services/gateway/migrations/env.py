"""Alembic's environment of the gateway's job tables: migrations run on the connection handed over."""

from __future__ import annotations

from services.database import run_migration_environment
from services.gateway import api_keys  # noqa: F401 (its table is part of the schema)
from services.gateway.schema import Base

run_migration_environment(Base.metadata)
