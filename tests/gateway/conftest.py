"""The gateway's job store on both data planes, for the tests that need its tables alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.database import create_engine
from services.gateway import migrate as gateway_migrate
from services.gateway.jobs.store import JobStore
from tests.data_plane import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    with fresh_database(request.param, tmp_path, "gateway.db") as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated engine: one gateway replica's."""
    made = create_engine(database_url)
    await gateway_migrate.HISTORY.upgrade(made)
    yield made
    await made.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> JobStore:
    """The job store over the migrated engine."""
    return JobStore(engine)
