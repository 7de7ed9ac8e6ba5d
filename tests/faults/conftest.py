"""Fixtures the fault tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stack import free_port
from tests.faults.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port, killed afterwards."""
    (tmp_path / "logs").mkdir(parents=True, exist_ok=True)
    server = RedisServer(free_port(), tmp_path / "logs")
    server.start()
    try:
        yield server
    finally:
        server.kill()
