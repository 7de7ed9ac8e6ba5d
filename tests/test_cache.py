"""The in-process cache: TTL, bounded size, hit and miss counts, and single flight."""

from __future__ import annotations

import asyncio

import pytest

from services.cache import InProcessCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_values_expire_after_the_ttl() -> None:
    clock = FakeClock()
    cache = InProcessCache(ttl_seconds=10, clock=clock)
    cache.put("k", b"v")
    clock.now = 9.9
    assert cache.get("k") == b"v"
    clock.now = 10.1
    assert cache.get("k") is None


async def test_least_recently_used_entry_is_evicted_when_full() -> None:
    cache = InProcessCache(ttl_seconds=60, max_entries=2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"
    cache.put("c", b"3")
    assert cache.get("b") is None
    assert cache.get("a") == b"1"


async def test_concurrent_identical_requests_make_one_call() -> None:
    cache = InProcessCache(ttl_seconds=60)
    calls = 0
    release = asyncio.Event()

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        return b"result"

    waiters = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters)
    assert calls == 1
    assert [r.value for r in results] == [b"result"] * 5
    assert sorted(r.is_cached for r in results) == [False, True, True, True, True]
    assert (cache.stats.hits, cache.stats.misses) == (4, 1)


async def test_failure_is_shared_and_not_cached() -> None:
    cache = InProcessCache(ttl_seconds=60)

    async def fail() -> bytes:
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError):
        await cache.get_or_compute("k", fail)

    async def succeed() -> bytes:
        return b"ok"

    assert (await cache.get_or_compute("k", succeed)).value == b"ok"


async def test_waiter_takes_over_when_the_leader_is_cancelled() -> None:
    cache = InProcessCache(ttl_seconds=60)
    started = asyncio.Event()

    async def slow() -> bytes:
        started.set()
        await asyncio.sleep(60)
        return b"never"

    async def fast() -> bytes:
        return b"second try"

    leader = asyncio.create_task(cache.get_or_compute("k", slow))
    await started.wait()
    follower = asyncio.create_task(cache.get_or_compute("k", fast))
    await asyncio.sleep(0)
    leader.cancel()
    result = await follower
    assert result.value == b"second try"
    assert not result.is_cached


async def test_skip_cache_recomputes() -> None:
    cache = InProcessCache(ttl_seconds=60)
    values = iter([b"one", b"two"])

    async def compute() -> bytes:
        return next(values)

    await cache.get_or_compute("k", compute)
    assert (await cache.get_or_compute("k", compute, skip_cache=True)).value == b"two"
    assert cache.get("k") == b"two"
