"""A TTL result cache in Redis, shared by every replica, with single flight across processes."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services import metrics
from services.cache.base import (
    STATS_KEY_PREFIX,
    VALUE_KEY_PREFIX,
    CacheResult,
    CacheStats,
    CacheUnavailableError,
)
from services.cache.single_flight import SingleFlight
from services.redis_connection import RedisOutage, redis_address

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _RedisKeys:
    value: str
    lock: str
    done_channel: str


# Stores the value, releases the lock if we still hold it and wakes the waiters, in one atomic step: a waiter
# never sees the lock gone before the value is there.
_STORE_AND_RELEASE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[4], 'stored')
return 1
"""

# Compare and delete: a leader whose lock expired must not delete the lock of the one who took over.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisCache:
    """A TTL cache in Redis shared by every replica, with single flight across processes.

    On a miss one caller, in one process, wins a lock (`SET NX PX`) and computes; it keeps extending the lock
    while it computes, so a slow provider call never loses it. Everyone else waits for the value (woken by a
    message on the key's `done` channel, with polling as a backstop). If the lock goes away without a value
    (the winner failed, was cancelled or crashed), one waiter takes over. Within one process, concurrent
    identical requests share one such lookup rather than each polling Redis.

    If Redis fails, requests are still answered: the value is computed without the shared cache, without
    asking Redis again until the outage's back-off is over; one line is logged when an outage starts and one
    when it ends. The client
    is the process's one Redis client, which the cache never closes; made with `connect_redis`, its commands
    keep a caller's cancellation.
    """

    def __init__(
        self,
        client: Redis,
        *,
        name: str,
        ttl_seconds: float,
        lock_timeout_seconds: float,
        wait_poll_seconds: float = 0.05,
        key_prefix: str = VALUE_KEY_PREFIX,
    ) -> None:
        for label, seconds in [
            ("ttl_seconds", ttl_seconds),
            ("lock_timeout_seconds", lock_timeout_seconds),
            ("wait_poll_seconds", wait_poll_seconds),
        ]:
            if seconds <= 0:
                raise ValueError(f"{label} must be positive, not {seconds}")
        self._client = client
        self._name = name
        self._ttl_milliseconds = _milliseconds(ttl_seconds)
        self._lock_timeout_seconds = lock_timeout_seconds
        self._lock_timeout_milliseconds = _milliseconds(lock_timeout_seconds)
        self._wait_poll_seconds = wait_poll_seconds
        self._key_prefix = f"{key_prefix}{name}:"
        self._hits_key = f"{STATS_KEY_PREFIX}{name}:hits"
        self._misses_key = f"{STATS_KEY_PREFIX}{name}:misses"
        self._store_and_release = client.register_script(_STORE_AND_RELEASE)
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)
        self._flights = SingleFlight()
        self._stats = CacheStats()
        self._background: set[asyncio.Task[None]] = set()
        self._outage = RedisOutage(
            f"cache {name}",
            redis_address(client),
            logger=logger,
            consequence="values are computed without the shared cache",
        )

    @property
    def name(self) -> str:
        """What the cache holds; part of its Redis keys and of its shared counters' keys."""
        return self._name

    @property
    def backend(self) -> str:
        """Values are kept in Redis, shared by every replica."""
        return "redis"

    @property
    def stats(self) -> CacheStats:
        """Hits and misses counted by this process only; `read_stats` gives those of every replica."""
        return self._stats

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[bytes]], *, skip_cache: bool = False
    ) -> CacheResult:
        """Returns the cached value, or computes, stores and returns it; concurrent callers share one call,
        in this process and across replicas. `skip_cache` recomputes and overwrites the stored value."""
        result, is_shared = await self._flights.share(
            key, lambda: self._lookup_or_compute(key, compute, skip_cache), may_join=not skip_cache
        )
        if is_shared:
            await self._count(is_hit=True)
        return result

    async def forget(self, key: str) -> bool:
        """Deletes the value under `key` for every replica; raises CacheUnavailableError without Redis, so an
        erasure is never reported done while the value may still be served."""
        try:
            return bool(await self._client.delete(self._keys(key).value))
        except RedisError as error:
            raise CacheUnavailableError(redis_address(self._client), str(error)) from error

    async def read_stats(self) -> CacheStats:
        """Hits and misses counted in Redis by every replica; raises CacheUnavailableError without Redis."""
        try:
            hits, misses = await self._client.mget(self._hits_key, self._misses_key)
        except RedisError as error:
            raise CacheUnavailableError(redis_address(self._client), str(error)) from error
        return CacheStats(hits=int(hits or 0), misses=int(misses or 0))

    async def aclose(self) -> None:
        """Waits for lock releases still under way; the client stays open for its owner to close."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _keys(self, key: str) -> _RedisKeys:
        return _RedisKeys(
            value=f"{self._key_prefix}value:{key}",
            lock=f"{self._key_prefix}lock:{key}",
            done_channel=f"{self._key_prefix}done:{key}",
        )

    async def _lookup_or_compute(
        self, key: str, compute: Callable[[], Awaitable[bytes]], skip_cache: bool
    ) -> CacheResult:
        keys = self._keys(key)
        token = secrets.token_hex(16)
        if self._outage.is_backing_off:
            self._stats.misses += 1
            metrics.record_cache_lookup(self._name, is_hit=False)
            return CacheResult(await compute(), is_cached=False)
        try:
            if not skip_cache:
                cached = _as_bytes(await self._client.get(keys.value))
                if cached is not None:
                    await self._count(is_hit=True)
                    return CacheResult(cached, is_cached=True)
            while True:
                is_lock_holder = await self._try_to_lock(keys, token)
                # skip_cache computes even while another caller holds the lock: it asked for a fresh value.
                if is_lock_holder or skip_cache:
                    break
                cached = await self._wait_for_value(keys)
                if cached is not None:
                    await self._count(is_hit=True)
                    return CacheResult(cached, is_cached=True)
                # The lock went away without a value: the one computing failed; try to take over.
        except RedisError as error:
            self._outage.failed(error)
            self._stats.misses += 1
            metrics.record_cache_lookup(self._name, is_hit=False)
            return CacheResult(await compute(), is_cached=False)
        self._outage.succeeded()
        value = await self._compute_and_store(keys, compute, token if is_lock_holder else None)
        return CacheResult(value, is_cached=False)

    async def _try_to_lock(self, keys: _RedisKeys, token: str) -> bool:
        try:
            return bool(await self._client.set(keys.lock, token, nx=True, px=self._lock_timeout_milliseconds))
        except BaseException:
            # The SET may have reached Redis though its answer never reached us (we were cancelled, or the
            # connection broke): never leave a lock behind that nobody computes under.
            await self._release_shielded(keys, token)
            raise

    async def _wait_for_value(self, keys: _RedisKeys) -> bytes | None:
        """Waits while someone else holds the lock: their value, or None once the lock is gone without one."""
        # Subscribe before looking, so a value stored between the look and the wait still wakes us at once.
        pubsub = await self._subscribe(keys.done_channel)
        try:
            while True:
                value, lock = await self._client.mget(keys.value, keys.lock)
                if value is not None:
                    return _as_bytes(value)
                if lock is None:
                    return None
                pubsub = await self._wait_for_message(pubsub)
        finally:
            if pubsub is not None:
                await _close(pubsub)

    async def _subscribe(self, channel: str) -> PubSub | None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(channel)
        except RedisError as error:
            logger.warning("cache %s: no done messages (%s); polling only", self._name, error)
            await _close(pubsub)
            return None
        except BaseException:
            await _close(pubsub)
            raise
        return pubsub

    async def _wait_for_message(self, pubsub: PubSub | None) -> PubSub | None:
        """Waits for a done message or the next poll; returns the subscription, or None once it failed."""
        if pubsub is None:
            await asyncio.sleep(self._wait_poll_seconds)
            return None
        try:
            await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._wait_poll_seconds)
        except RedisError as error:
            logger.warning("cache %s: done messages lost (%s); polling only", self._name, error)
            await _close(pubsub)
            return None
        return pubsub

    async def _compute_and_store(
        self,
        keys: _RedisKeys,
        compute: Callable[[], Awaitable[bytes]],
        token: str | None,
    ) -> bytes:
        extender = asyncio.create_task(self._keep_lock(keys, token)) if token is not None else None
        is_stored = False
        try:
            await self._count(is_hit=False)
            value = await compute()
            await _stop(extender)
            try:
                await self._store_and_release(
                    keys=[keys.value, keys.lock],
                    args=[value, self._ttl_milliseconds, token or "", keys.done_channel],
                )
                is_stored = True
            except RedisError as error:
                self._outage.failed(error)
            return value
        finally:
            await _stop(extender)
            if token is not None and not is_stored:
                # Hand the lock on at once (waiters take over) rather than after its timeout.
                await self._release_shielded(keys, token)

    async def _keep_lock(self, keys: _RedisKeys, token: str) -> None:
        """Extends the lock every third of its timeout for as long as the computation runs."""
        while True:
            await asyncio.sleep(self._lock_timeout_seconds / 3)
            try:
                is_held = await self._extend(keys=[keys.lock], args=[token, self._lock_timeout_milliseconds])
            except RedisError as error:
                logger.warning("cache %s: could not extend a lock (%s)", self._name, error)
                continue
            if not is_held:
                logger.warning(
                    "cache %s: lost the lock on %s; another caller may compute too", self._name, keys.lock
                )
                return

    async def _release_shielded(self, keys: _RedisKeys, token: str) -> None:
        """Releases the lock if `token` holds it; a second cancellation of the caller cannot stop that."""
        release = asyncio.create_task(self._release_lock(keys, token))
        self._background.add(release)
        release.add_done_callback(self._background.discard)
        await asyncio.shield(release)

    async def _release_lock(self, keys: _RedisKeys, token: str) -> None:
        try:
            await self._release(keys=[keys.lock], args=[token, keys.done_channel])
        except RedisError as error:
            # The lock expires by itself after its timeout; waiters take over then.
            logger.warning("cache %s: could not release a lock (%s)", self._name, error)

    async def _count(self, *, is_hit: bool) -> None:
        if is_hit:
            self._stats.hits += 1
        else:
            self._stats.misses += 1
        metrics.record_cache_lookup(self._name, is_hit=is_hit)
        try:
            await self._client.incr(self._hits_key if is_hit else self._misses_key)
            self._outage.succeeded()  # every lookup, hit or miss, counts: an outage's end is seen here
        except RedisError as error:
            # Counting must never fail a request that has its value.
            self._outage.failed(error)


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        # wait() never raises the task's cancellation, yet still passes on a cancellation of our own caller.
        await asyncio.wait({task})


async def _close(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))
