"""Alembic's environment: migrations run on the connection `services.content.migrate` hands over."""

from __future__ import annotations

from alembic import context

from services.content.repository import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `python -m services.content.migrate` (or `make migrate`)")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place: batch mode rebuilds tables so one script serves both.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
