"""The one place a result cache's backend is chosen: Redis when a URL is given, else in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from services.cache.base import ResultCache
from services.cache.in_process import InProcessCache
from services.cache.redis import RedisCache
from services.redis_connection import connect_redis

CacheFactory = Callable[[str], ResultCache]


@contextlib.asynccontextmanager
async def open_result_caches(
    redis_url: str | None, *, ttl_seconds: float, lock_timeout_seconds: float
) -> AsyncIterator[CacheFactory]:
    """Redis when `redis_url` is set (shared by every replica), else in-process; one client per process.

    Yields a factory that makes one cache per name; raises RedisUnavailableError when Redis does not answer.
    """
    if redis_url is None:
        yield lambda name: InProcessCache(ttl_seconds=ttl_seconds, name=name)
        return
    client = await connect_redis(redis_url)
    made: list[RedisCache] = []

    def make(name: str) -> ResultCache:
        cache = RedisCache(
            client, name=name, ttl_seconds=ttl_seconds, lock_timeout_seconds=lock_timeout_seconds
        )
        made.append(cache)
        return cache

    try:
        yield make
    finally:
        # A lock release still in flight at shutdown must finish before the client closes.
        for cache in made:
            await cache.aclose()
        await client.aclose()
