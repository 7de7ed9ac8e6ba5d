"""The process's one Redis client: it fails fast without leaking the password, and keeps cancellations."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.redis_connection import RedisUnavailableError, connect_redis, redact_redis_url

REDIS_URL = os.environ.get("STILLPOINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    """A client of its own for this test's event loop; under CI a missing Redis fails the test."""
    try:
        connected = await connect_redis(REDIS_URL)
    except RedisUnavailableError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI provides Redis, but: {error}")
        pytest.skip(f"needs a Redis server (set STILLPOINT_TEST_REDIS_URL): {error}")
    try:
        yield connected
    finally:
        await connected.aclose()


async def test_connecting_to_a_closed_port_fails_fast_without_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(RedisUnavailableError) as caught:
        await connect_redis("redis://:hunter2@127.0.0.1:1/0")
    assert time.monotonic() - started < 3.5
    assert "127.0.0.1:1" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert caught.value.address == "127.0.0.1:1"


async def test_a_unix_socket_url_is_reached_over_the_socket(tmp_path: Path) -> None:
    socket_path = f"{tmp_path}/absent.sock"
    with pytest.raises(RedisUnavailableError) as caught:
        await connect_redis(f"unix://{socket_path}")
    assert caught.value.address == socket_path


async def test_a_malformed_url_is_refused_by_name() -> None:
    with pytest.raises(RedisUnavailableError, match="not a valid Redis URL"):
        await connect_redis("http://:hunter2@127.0.0.1:6379/0")


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://:hunter2@cache.internal:6380/0", "redis://***@cache.internal:6380/0"),
        ("rediss://app:hunter2@cache.internal/1", "rediss://***@cache.internal/1"),
        ("redis://cache.internal:6379/0?password=hunter2", "redis://cache.internal:6379/0?password=***"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redis_urls_are_redacted(url: str, redacted: str) -> None:
    assert redact_redis_url(url) == redacted


async def test_a_command_cancelled_while_it_is_sent_raises_the_cancellation(client: Redis) -> None:
    # redis-py sends through asyncio.wait_for, which on Python 3.11 can swallow a cancellation that lands as
    # the send completes; the work queue's commands (which have no guard of their own) must still stop.
    key = f"stillpoint:test:{uuid.uuid4().hex}"
    try:
        for _ in range(20):
            command = asyncio.ensure_future(client.set(key, "x"))
            # One turn of the loop: the command is being sent, not yet answered, when the cancellation lands.
            await asyncio.sleep(0)
            command.cancel()
            with pytest.raises(asyncio.CancelledError):
                await command
        # The connection whose reply went unread was dropped: the client still answers correctly.
        assert await client.ping()
        assert await client.incr(key + ":after") == 1
    finally:
        await client.delete(key, key + ":after")
