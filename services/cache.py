"""Result caches with a TTL, hit and miss counts, and single flight for concurrent identical requests."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class CacheStats:
    """Hit and miss counts of one cache since the process started."""

    hits: int = 0
    misses: int = 0


@dataclass(frozen=True)
class CacheResult:
    """A value and whether it came from the cache."""

    value: bytes
    is_cached: bool


class InProcessCache:
    """A bounded, in-memory TTL cache: the embedded default for one process.

    Concurrent misses for one key share a single computation (single flight), so a burst of identical jobs
    makes one provider call.
    """

    def __init__(
        self, *, ttl_seconds: float, max_entries: int = 512, clock: Callable[[], float] = time.monotonic
    ):
        self._ttl_seconds = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[bytes]] = {}
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
        while not skip_cache:
            cached = self.get(key)
            if cached is not None:
                self.stats.hits += 1
                return CacheResult(cached, is_cached=True)
            pending = self._in_flight.get(key)
            if pending is None:
                break
            # Another request is computing this very value: wait for it rather than pay twice.
            try:
                value = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled() and not _current_task_is_cancelling():
                    continue  # the leader's client went away, not ours: take over the computation
                raise
            self.stats.hits += 1
            return CacheResult(value, is_cached=True)
        self.stats.misses += 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            value = await compute()
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
        self.put(key, value)
        future.set_result(value)
        return CacheResult(value, is_cached=False)


def _current_task_is_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
