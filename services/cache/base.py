"""What every result cache offers: the ResultCache protocol, its results and counts, its keys and errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from services.redis_connection import RedisUnavailableError

# Shared hit and miss counters live here, one pair per cache name, counted by every replica.
STATS_KEY_PREFIX = "stillpoint:stats:"
# Values, locks and done channels of shared caches live under this prefix and the cache's name.
VALUE_KEY_PREFIX = "stillpoint:cache:"


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


class CacheUnavailableError(RedisUnavailableError):
    """The Redis behind a shared cache cannot be reached; names its address, never its credentials."""


class ResultCache(Protocol):
    """A named cache of computed bytes, shared by concurrent identical requests."""

    @property
    def name(self) -> str:
        """What the cache holds ("transcripts", "images"): names its shared counters and its keys."""
        ...

    @property
    def backend(self) -> str:
        """Where values are kept ("redis" or "in-process"), as GetCacheStats reports it."""
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

    async def forget(self, key: str) -> bool:
        """Removes the value under `key` wherever the cache keeps it (every replica, where shared); returns
        whether one was there. Erasure: nothing made from a deleted conversation may be served again."""
        ...

    async def read_stats(self) -> CacheStats:
        """Hits and misses of this cache as a whole: across every replica where the cache is shared."""
        ...

    async def aclose(self) -> None:
        """Releases what the cache itself holds (never a client it was given)."""
        ...
