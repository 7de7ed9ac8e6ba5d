"""The pool's PostgreSQL connections (services/database.py): one the server has closed is replaced before it
is used, and none costs a round trip to check. Against the PostgreSQL on this machine."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from services.database import PoolSettings, create_engine
from tests.data_plane import POSTGRES_ADMIN_DSN, unavailable
from tests.waiting import wait_until

POSTGRES_URL = POSTGRES_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _terminate(backend_pid: int) -> None:
    """Closes one connection from the server's side, as an administrator or a restart would."""
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        unavailable("PostgreSQL at 127.0.0.1:5432", error)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend_pid)
    finally:
        await admin.close()


async def test_a_connection_the_server_closed_is_replaced_before_use_and_none_is_pinged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = create_engine(POSTGRES_URL, PoolSettings(size=1, max_overflow=0))
    pings: list[Any] = []

    def counted_ping(_dialect: Any, connection: Any) -> bool:
        # SQLAlchemy's pre-ping: three round trips before every unit of work, which the pool must not
        # make. Counted, and answering "alive" unasked, so only the pool's own check can find the closure.
        pings.append(connection)
        return True

    monkeypatch.setattr(type(engine.dialect), "do_ping", counted_ping)
    try:
        try:
            async with engine.connect() as connection:
                first_backend = await connection.scalar(text("SELECT pg_backend_pid()"))
                driver_connection = (await connection.get_raw_connection()).driver_connection
        except OSError as error:
            unavailable("PostgreSQL at 127.0.0.1:5432", error)
        assert driver_connection is not None

        await _terminate(first_backend)
        await wait_until(driver_connection.is_closed, what="asyncpg to see the server close the connection")

        # The pool's one connection is the closed one: used as it is, this unit of work would fail.
        async with engine.connect() as connection:
            second_backend = await connection.scalar(text("SELECT pg_backend_pid()"))
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT pg_backend_pid()")) == second_backend
    finally:
        await engine.dispose()

    assert second_backend != first_backend
    assert pings == []
