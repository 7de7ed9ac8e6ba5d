"""Result caches with a TTL, hit and miss counts, and single flight for concurrent identical requests."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Shared hit and miss counters live here, one pair per cache name, counted by every replica.
STATS_KEY_PREFIX = "stillpoint:stats:"


@dataclass
class CacheStats:
    """Hit and miss counts of one cache."""

    hits: int = 0
    misses: int = 0


@dataclass(frozen=True)
class CacheResult:
    """A value and whether it came from the cache."""

    value: bytes
    is_cached: bool


class CacheUnavailableError(Exception):
    """Redis cannot be reached; `address` is its host and port (or socket path), never its credentials."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"Redis at {address} is unavailable: {reason}")
        self.address = address
        self.reason = reason


class ResultCache(Protocol):
    """A named cache of computed bytes, shared by concurrent identical requests."""

    @property
    def name(self) -> str:
        """What the cache holds ("transcripts", "images"): names its shared counters and its keys."""
        ...

    @property
    def stats(self) -> CacheStats:
        """Hits and misses counted by this process."""
        ...

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[bytes]], *, skip_cache: bool = False
    ) -> CacheResult:
        """Returns the cached value, or computes, stores and returns it; concurrent callers share one call."""
        ...

    async def read_stats(self) -> CacheStats:
        """Hits and misses of this cache as a whole: across every replica where the cache is shared."""
        ...

    async def aclose(self) -> None:
        """Releases what the cache itself holds (never a client it was given)."""
        ...


class _SingleFlight:
    """Concurrent calls for one key in this process share one computation.

    A leader's failure is shared with the callers waiting on it; if the leader is cancelled (its client went
    away), a waiter takes over instead of failing.
    """

    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Future[CacheResult]] = {}

    async def share(
        self, key: str, lead: Callable[[], Awaitable[CacheResult]], *, may_join: bool
    ) -> tuple[CacheResult, bool]:
        """Returns the result and whether it was shared by another caller's `lead` rather than our own."""
        while may_join:
            pending = self._in_flight.get(key)
            if pending is None:
                break
            try:
                result = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled() and not _current_task_is_cancelling():
                    continue  # the leader's client went away, not ours: take over the computation
                raise
            return CacheResult(result.value, is_cached=True), True
        future: asyncio.Future[CacheResult] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await lead()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # marks it retrieved, so a failure nobody waited for is not logged as lost
            raise
        finally:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
        future.set_result(result)
        return result, False


class InProcessCache:
    """A bounded, in-memory TTL cache: the embedded default for one process.

    Concurrent misses for one key share a single computation (single flight), so a burst of identical jobs
    makes one provider call.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float,
        max_entries: int = 512,
        clock: Callable[[], float] = time.monotonic,
        name: str = "cache",
    ):
        self.name = name
        self._ttl_seconds = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._flights = _SingleFlight()
        self.stats = CacheStats()

    def get(self, key: str) -> bytes | None:
        """Returns the live value under `key`, or None; does not count a hit or a miss."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        """Stores `value` under `key` for the TTL, evicting the least recently used entry when full."""
        self._entries[key] = (self._clock() + self._ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[bytes]], *, skip_cache: bool = False
    ) -> CacheResult:
        """Returns the cached value, or computes, stores and returns it; concurrent callers share one call."""

        async def lead() -> CacheResult:
            cached = None if skip_cache else self.get(key)
            if cached is not None:
                self.stats.hits += 1
                return CacheResult(cached, is_cached=True)
            self.stats.misses += 1
            value = await compute()
            self.put(key, value)
            return CacheResult(value, is_cached=False)

        result, is_shared = await self._flights.share(key, lead, may_join=not skip_cache)
        if is_shared:
            self.stats.hits += 1
        return result

    async def read_stats(self) -> CacheStats:
        """This process's counts: an in-process cache is not shared."""
        return CacheStats(self.stats.hits, self.stats.misses)

    async def aclose(self) -> None:
        """Drops the stored values."""
        self._entries.clear()


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

    If Redis fails, requests are still answered: the value is computed without the shared cache. The client
    is the process's one Redis client (made with `connect_redis`), which the cache never closes.
    """

    def __init__(
        self,
        client: Redis,
        *,
        name: str,
        ttl_seconds: float,
        lock_timeout_seconds: float,
        wait_poll_seconds: float = 0.05,
        key_prefix: str = "stillpoint:cache:",
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
        self._flights = _SingleFlight()
        self._stats = CacheStats()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        """What the cache holds; part of its Redis keys and of its shared counters' keys."""
        return self._name

    @property
    def stats(self) -> CacheStats:
        """Hits and misses counted by this process only; `read_stats` gives those of every replica."""
        return self._stats

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[bytes]], *, skip_cache: bool = False
    ) -> CacheResult:
        """Returns the cached value, or computes, stores and returns it; concurrent callers share one call,
        in this process and across replicas. `skip_cache` recomputes and overwrites the stored value."""
        guard = _CancellationGuard()
        result, is_shared = await self._flights.share(
            key, lambda: self._lookup_or_compute(key, compute, skip_cache, guard), may_join=not skip_cache
        )
        if is_shared:
            await self._count(guard, is_hit=True)
        return result

    async def read_stats(self) -> CacheStats:
        """Hits and misses counted in Redis by every replica; raises CacheUnavailableError without Redis."""
        try:
            hits, misses = await _CancellationGuard().call(
                self._client.mget(self._hits_key, self._misses_key)
            )
        except RedisError as error:
            raise CacheUnavailableError(_address_of(self._client), str(error)) from error
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
        self, key: str, compute: Callable[[], Awaitable[bytes]], skip_cache: bool, guard: _CancellationGuard
    ) -> CacheResult:
        keys = self._keys(key)
        token = secrets.token_hex(16)
        try:
            if not skip_cache:
                cached = _as_bytes(await guard.call(self._client.get(keys.value)))
                if cached is not None:
                    await self._count(guard, is_hit=True)
                    return CacheResult(cached, is_cached=True)
            while True:
                is_lock_holder = await self._try_to_lock(keys, token, guard)
                # skip_cache computes even while another caller holds the lock: it asked for a fresh value.
                if is_lock_holder or skip_cache:
                    break
                cached = await self._wait_for_value(keys, guard)
                if cached is not None:
                    await self._count(guard, is_hit=True)
                    return CacheResult(cached, is_cached=True)
                # The lock went away without a value: the one computing failed; try to take over.
        except RedisError as error:
            logger.warning(
                "cache %s: Redis failed (%s); computing without the shared cache", self._name, error
            )
            self._stats.misses += 1
            return CacheResult(await compute(), is_cached=False)
        value = await self._compute_and_store(keys, compute, token if is_lock_holder else None, guard)
        return CacheResult(value, is_cached=False)

    async def _try_to_lock(self, keys: _RedisKeys, token: str, guard: _CancellationGuard) -> bool:
        try:
            return bool(
                await guard.call(
                    self._client.set(keys.lock, token, nx=True, px=self._lock_timeout_milliseconds)
                )
            )
        except BaseException:
            # The SET may have reached Redis though its answer never reached us (we were cancelled, or the
            # connection broke): never leave a lock behind that nobody computes under.
            await self._release_shielded(keys, token)
            raise

    async def _wait_for_value(self, keys: _RedisKeys, guard: _CancellationGuard) -> bytes | None:
        """Waits while someone else holds the lock: their value, or None once the lock is gone without one."""
        # Subscribe before looking, so a value stored between the look and the wait still wakes us at once.
        pubsub = await self._subscribe(keys.done_channel, guard)
        try:
            while True:
                value, lock = await guard.call(self._client.mget(keys.value, keys.lock))
                if value is not None:
                    return _as_bytes(value)
                if lock is None:
                    return None
                pubsub = await self._wait_for_message(pubsub, guard)
        finally:
            if pubsub is not None:
                await _close(pubsub)

    async def _subscribe(self, channel: str, guard: _CancellationGuard) -> PubSub | None:
        pubsub = self._client.pubsub()
        try:
            await guard.call(pubsub.subscribe(channel))
        except RedisError as error:
            logger.warning("cache %s: no done messages (%s); polling only", self._name, error)
            await _close(pubsub)
            return None
        except BaseException:
            await _close(pubsub)
            raise
        return pubsub

    async def _wait_for_message(self, pubsub: PubSub | None, guard: _CancellationGuard) -> PubSub | None:
        """Waits for a done message or the next poll; returns the subscription, or None once it failed."""
        if pubsub is None:
            await asyncio.sleep(self._wait_poll_seconds)
            return None
        try:
            await guard.call(
                pubsub.get_message(ignore_subscribe_messages=True, timeout=self._wait_poll_seconds)
            )
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
        guard: _CancellationGuard,
    ) -> bytes:
        extender = asyncio.create_task(self._keep_lock(keys, token)) if token is not None else None
        is_stored = False
        try:
            await self._count(guard, is_hit=False)
            value = await compute()
            await _stop(extender)
            try:
                await guard.call(
                    self._store_and_release(
                        keys=[keys.value, keys.lock],
                        args=[value, self._ttl_milliseconds, token or "", keys.done_channel],
                    )
                )
                is_stored = True
            except RedisError as error:
                logger.warning("cache %s: could not store a value (%s)", self._name, error)
            return value
        finally:
            await _stop(extender)
            if token is not None and not is_stored:
                # Hand the lock on at once (waiters take over) rather than after its timeout.
                await self._release_shielded(keys, token)

    async def _keep_lock(self, keys: _RedisKeys, token: str) -> None:
        """Extends the lock every third of its timeout for as long as the computation runs."""
        guard = _CancellationGuard()
        while True:
            await asyncio.sleep(self._lock_timeout_seconds / 3)
            try:
                is_held = await guard.call(
                    self._extend(keys=[keys.lock], args=[token, self._lock_timeout_milliseconds])
                )
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

    async def _count(self, guard: _CancellationGuard, *, is_hit: bool) -> None:
        if is_hit:
            self._stats.hits += 1
        else:
            self._stats.misses += 1
        try:
            await guard.call(self._client.incr(self._hits_key if is_hit else self._misses_key))
        except RedisError as error:
            # Counting must never fail a request that has its value.
            logger.warning(
                "cache %s: could not count a %s (%s)", self._name, "hit" if is_hit else "miss", error
            )


class _CancellationGuard:
    """Re-raises a cancellation of the current task that a Redis call swallowed.

    With a socket timeout (redis-py's default is 5 s) redis-py sends each command inside `asyncio.wait_for`,
    and on Python 3.11 `wait_for` drops a cancellation that lands as the send completes (fixed in 3.12). A
    cancelled caller would then carry on computing, and `asyncio.timeout` deadlines would silently pass.
    """

    def __init__(self) -> None:
        self._task = asyncio.current_task()
        self._cancel_requests = 0 if self._task is None else self._task.cancelling()

    async def call(self, awaitable: Awaitable[T]) -> T:
        result = await awaitable
        if self._task is not None and self._task.cancelling() > self._cancel_requests:
            raise asyncio.CancelledError
        return result


async def connect_redis(url: str, *, timeout_seconds: float = 3.0) -> Redis:
    """Makes the process's one Redis client (bytes in, bytes out) and checks it answers PING in time.

    Raises CacheUnavailableError naming the host and port, never the password, instead of hanging.
    """
    redacted_url = redact_redis_url(url)
    address = _address_of_url(url)
    try:
        client = Redis.from_url(url, socket_connect_timeout=timeout_seconds, decode_responses=False)
    except ValueError as error:
        raise CacheUnavailableError(address, f"{redacted_url} is not a valid Redis URL: {error}") from None
    try:
        async with asyncio.timeout(timeout_seconds):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as error:
        await client.aclose()
        reason = str(error) or type(error).__name__
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
        raise CacheUnavailableError(
            address, f"no answer to PING from {redacted_url} within {timeout_seconds:g} s: {reason}"
        ) from None
    return client


def redact_redis_url(url: str) -> str:
    """The URL without its credentials: `redis://:secret@host:6379/0` becomes `redis://***@host:6379/0`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a malformed Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{pair.partition('=')[0]}=***" if pair.partition("=")[0].lower() == "password" else pair
        for pair in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _address_of_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        return "<a malformed Redis URL>"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address_of(client: Redis) -> str:
    settings = client.connection_pool.connection_kwargs
    if "path" in settings:
        return str(settings["path"])
    return f"{settings.get('host', 'localhost')}:{settings.get('port', 6379)}"


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


def _current_task_is_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
