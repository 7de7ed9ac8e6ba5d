"""A bounded, in-memory TTL cache for one process: the embedded default without Redis."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from services import metrics
from services.cache.base import CacheResult, CacheStats
from services.cache.single_flight import SingleFlight


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
        self._flights = SingleFlight()
        self.stats = CacheStats()

    @property
    def backend(self) -> str:
        """Values are kept in this process's memory."""
        return "in-process"

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
                metrics.record_cache_lookup(self.name, is_hit=True)
                return CacheResult(cached, is_cached=True)
            self.stats.misses += 1
            metrics.record_cache_lookup(self.name, is_hit=False)
            value = await compute()
            self.put(key, value)
            return CacheResult(value, is_cached=False)

        result, is_shared = await self._flights.share(key, lead, may_join=not skip_cache)
        if is_shared:
            self.stats.hits += 1
            metrics.record_cache_lookup(self.name, is_hit=True)
        return result

    async def forget(self, key: str) -> bool:
        """Drops the value under `key`, live or expired."""
        return self._entries.pop(key, None) is not None

    async def read_stats(self) -> CacheStats:
        """This process's counts: an in-process cache is not shared."""
        return CacheStats(self.stats.hits, self.stats.misses)

    async def aclose(self) -> None:
        """Drops the stored values."""
        self._entries.clear()
