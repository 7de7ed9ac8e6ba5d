"""Result caches, in process and in Redis: TTL, hit and miss counts, and single flight across replicas."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest
from redis.asyncio import Redis

from services.cache import (
    STATS_KEY_PREFIX,
    CacheStats,
    CacheUnavailableError,
    InProcessCache,
    RedisCache,
    ResultCache,
    connect_redis,
    redact_redis_url,
)


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


# Shared behaviour, on both backends: the in-process default and Redis (one RedisCache per replica).

REDIS_URL = os.environ.get("STILLPOINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REPO_ROOT = Path(__file__).resolve().parents[1]


async def connect_or_skip() -> Redis:
    """A client of its own for this test's event loop; under CI a missing Redis fails the test."""
    try:
        return await connect_redis(REDIS_URL)
    except CacheUnavailableError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI provides Redis, but: {error}")
        pytest.skip(f"needs a Redis server (set STILLPOINT_TEST_REDIS_URL): {error}")


class RedisNamespace:
    """A unique key prefix and cache name for one test, so runs never collide; removes only its own keys."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.prefix = f"stillpoint:test:{uuid.uuid4().hex}:"
        self.name = f"test-{uuid.uuid4().hex}"
        self._clients = [client]

    async def replica(self, *, ttl_seconds: float = 60, lock_timeout_seconds: float = 5) -> RedisCache:
        """A cache as another replica holds it: its own client, the same Redis keys."""
        client = await connect_or_skip()
        self._clients.append(client)
        return self.cache(client, ttl_seconds=ttl_seconds, lock_timeout_seconds=lock_timeout_seconds)

    def cache(
        self, client: Redis | None = None, *, ttl_seconds: float = 60, lock_timeout_seconds: float = 5
    ) -> RedisCache:
        return RedisCache(
            client or self.client,
            name=self.name,
            ttl_seconds=ttl_seconds,
            lock_timeout_seconds=lock_timeout_seconds,
            key_prefix=self.prefix,
        )

    async def clean_up(self) -> None:
        try:
            keys = [key async for key in self.client.scan_iter(match=f"{self.prefix}*")]
            keys += [f"{STATS_KEY_PREFIX}{self.name}:hits", f"{STATS_KEY_PREFIX}{self.name}:misses"]
            await self.client.delete(*keys)
        finally:
            for client in self._clients:
                await client.aclose()


@pytest.fixture
async def redis_namespace() -> AsyncIterator[RedisNamespace]:
    namespace = RedisNamespace(await connect_or_skip())
    try:
        yield namespace
    finally:
        await namespace.clean_up()


class MakeCache(Protocol):
    def __call__(self, *, ttl_seconds: float = 60) -> ResultCache: ...


@pytest.fixture(params=["in_process", "redis"])
async def make_cache(request: pytest.FixtureRequest) -> AsyncIterator[MakeCache]:
    if request.param == "in_process":

        def make_in_process(*, ttl_seconds: float = 60) -> ResultCache:
            return InProcessCache(ttl_seconds=ttl_seconds, name="test")

        yield make_in_process
        return
    namespace = RedisNamespace(await connect_or_skip())
    caches: list[ResultCache] = []

    def make_redis(*, ttl_seconds: float = 60) -> ResultCache:
        caches.append(namespace.cache(ttl_seconds=ttl_seconds))
        return caches[-1]

    try:
        yield make_redis
    finally:
        for cache in caches:
            await cache.aclose()
        await namespace.clean_up()


class CountingCompute:
    """A computation that counts its calls and, when told to, waits to be released."""

    def __init__(self, value: bytes = b"result", *, is_held: bool = False) -> None:
        self.value = value
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not is_held:
            self.release.set()

    async def __call__(self) -> bytes:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return self.value


async def test_values_expire_after_the_ttl_on_both_backends(make_cache: MakeCache) -> None:
    cache = make_cache(ttl_seconds=0.3)
    compute = CountingCompute()
    assert not (await cache.get_or_compute("k", compute)).is_cached
    assert (await cache.get_or_compute("k", compute)).is_cached
    await asyncio.sleep(0.5)
    assert not (await cache.get_or_compute("k", compute)).is_cached
    assert compute.calls == 2


async def test_hits_and_misses_are_counted(make_cache: MakeCache) -> None:
    cache = make_cache()
    compute = CountingCompute()
    await cache.get_or_compute("a", compute)
    await cache.get_or_compute("a", compute)
    await cache.get_or_compute("a", compute)
    await cache.get_or_compute("b", compute)
    assert (cache.stats.hits, cache.stats.misses) == (2, 2)
    assert await cache.read_stats() == CacheStats(hits=2, misses=2)


async def test_skip_cache_recomputes_and_overwrites(make_cache: MakeCache) -> None:
    cache = make_cache()
    values = iter([b"one", b"two"])

    async def compute() -> bytes:
        return next(values)

    await cache.get_or_compute("k", compute)
    fresh = await cache.get_or_compute("k", compute, skip_cache=True)
    assert (fresh.value, fresh.is_cached) == (b"two", False)
    cached = await cache.get_or_compute("k", compute)
    assert (cached.value, cached.is_cached) == (b"two", True)


async def test_failure_is_shared_by_concurrent_callers_and_not_cached(make_cache: MakeCache) -> None:
    cache = make_cache()
    calls = 0
    release = asyncio.Event()

    async def fail() -> bytes:
        nonlocal calls
        calls += 1
        await release.wait()
        raise RuntimeError("provider down")

    requests = [asyncio.create_task(cache.get_or_compute("k", fail)) for _ in range(3)]
    await asyncio.sleep(0.05)
    release.set()
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    result = await cache.get_or_compute("k", CountingCompute(b"ok"))
    assert (result.value, result.is_cached) == (b"ok", False)


async def test_concurrent_identical_requests_make_one_call_on_both_backends(make_cache: MakeCache) -> None:
    cache = make_cache()
    compute = CountingCompute(is_held=True)
    requests = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(5)]
    await compute.started.wait()
    await asyncio.sleep(0.05)
    compute.release.set()
    results = await asyncio.gather(*requests)
    assert compute.calls == 1
    assert [r.value for r in results] == [b"result"] * 5
    assert sorted(r.is_cached for r in results) == [False, True, True, True, True]
    assert await cache.read_stats() == CacheStats(hits=4, misses=1)


async def test_a_waiter_takes_over_when_the_leader_is_cancelled(make_cache: MakeCache) -> None:
    cache = make_cache()
    slow = CountingCompute(b"never", is_held=True)
    leader = asyncio.create_task(cache.get_or_compute("k", slow))
    await slow.started.wait()
    follower = asyncio.create_task(cache.get_or_compute("k", CountingCompute(b"second try")))
    await asyncio.sleep(0.05)
    leader.cancel()
    result = await follower
    assert (result.value, result.is_cached) == (b"second try", False)
    with pytest.raises(asyncio.CancelledError):
        await leader


# Redis only: single flight across replicas, locks and connecting.


async def test_replicas_share_one_computation(redis_namespace: RedisNamespace) -> None:
    first, second = redis_namespace.cache(), await redis_namespace.replica()
    compute = CountingCompute(is_held=True)
    requests = [asyncio.create_task(first.get_or_compute("k", compute)) for _ in range(3)]
    await compute.started.wait()
    requests += [asyncio.create_task(second.get_or_compute("k", compute)) for _ in range(3)]
    await asyncio.sleep(0.1)
    compute.release.set()
    results = await asyncio.gather(*requests)
    assert compute.calls == 1
    assert [r.value for r in results] == [b"result"] * 6
    assert sorted(r.is_cached for r in results) == [False] + [True] * 5
    assert (first.stats.hits, first.stats.misses) == (2, 1)
    assert (second.stats.hits, second.stats.misses) == (3, 0)
    assert await second.read_stats() == CacheStats(hits=5, misses=1)


async def test_values_are_stored_under_the_prefix_with_the_ttl(redis_namespace: RedisNamespace) -> None:
    cache = redis_namespace.cache(ttl_seconds=30)
    await cache.get_or_compute("k", CountingCompute(b"stored"))
    value_key = f"{redis_namespace.prefix}{redis_namespace.name}:value:k"
    assert await redis_namespace.client.get(value_key) == b"stored"
    assert 0 < await redis_namespace.client.pttl(value_key) <= 30_000
    assert not [
        key async for key in redis_namespace.client.scan_iter(match=f"{redis_namespace.prefix}*lock*")
    ]


async def test_a_replica_takes_over_when_the_leader_fails(redis_namespace: RedisNamespace) -> None:
    first, second = redis_namespace.cache(), await redis_namespace.replica()
    release = asyncio.Event()
    started = asyncio.Event()

    async def fail() -> bytes:
        started.set()
        await release.wait()
        raise RuntimeError("provider down")

    leader = asyncio.create_task(first.get_or_compute("k", fail))
    await started.wait()
    takeover = CountingCompute(b"second try")
    follower = asyncio.create_task(second.get_or_compute("k", takeover))
    await asyncio.sleep(0.1)
    assert takeover.calls == 0
    release.set()
    with pytest.raises(RuntimeError):
        await leader
    result = await follower
    assert (result.value, result.is_cached, takeover.calls) == (b"second try", False, 1)


async def test_a_replica_takes_over_when_the_leader_is_cancelled(redis_namespace: RedisNamespace) -> None:
    first, second = redis_namespace.cache(), await redis_namespace.replica()
    slow = CountingCompute(b"never", is_held=True)
    leader = asyncio.create_task(first.get_or_compute("k", slow))
    await slow.started.wait()
    follower = asyncio.create_task(second.get_or_compute("k", CountingCompute(b"second try")))
    await asyncio.sleep(0.1)
    leader.cancel()
    result = await asyncio.wait_for(follower, timeout=2)
    assert (result.value, result.is_cached) == (b"second try", False)


async def test_a_waiter_takes_over_when_the_lock_of_a_crashed_leader_expires(
    redis_namespace: RedisNamespace,
) -> None:
    cache = redis_namespace.cache()
    lock_key = f"{redis_namespace.prefix}{redis_namespace.name}:lock:k"
    # A replica that crashed mid-compute leaves its lock behind and never publishes anything.
    await redis_namespace.client.set(lock_key, "crashed-replica", px=300)
    compute = CountingCompute(b"after the crash")
    result = await asyncio.wait_for(cache.get_or_compute("k", compute), timeout=3)
    assert (result.value, result.is_cached, compute.calls) == (b"after the crash", False, 1)


async def test_a_request_cancelled_while_a_redis_command_is_sent_stops(
    redis_namespace: RedisNamespace,
) -> None:
    # redis-py sends through asyncio.wait_for, which on Python 3.11 can swallow the cancellation.
    cache = redis_namespace.cache()
    compute = CountingCompute()
    for attempt in range(20):
        request = asyncio.create_task(cache.get_or_compute(f"k{attempt}", compute))
        await asyncio.sleep(0)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    assert compute.calls == 0


async def test_a_slow_leader_keeps_its_lock_past_the_lock_timeout(redis_namespace: RedisNamespace) -> None:
    lock_timeout_seconds = 0.3
    first = redis_namespace.cache(lock_timeout_seconds=lock_timeout_seconds)
    second = await redis_namespace.replica(lock_timeout_seconds=lock_timeout_seconds)
    calls = 0
    started = asyncio.Event()

    async def slow() -> bytes:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(3 * lock_timeout_seconds)
        return b"slow"

    leader = asyncio.create_task(first.get_or_compute("k", slow))
    await started.wait()
    follower = asyncio.create_task(second.get_or_compute("k", slow))
    results = await asyncio.gather(leader, follower)
    assert calls == 1
    assert [(r.value, r.is_cached) for r in results] == [(b"slow", False), (b"slow", True)]


async def run_replica(url: str, prefix: str, name: str) -> None:
    """One replica in a process of its own (see the test below): waits for the other, then asks for "k"."""
    client = await connect_redis(url)
    try:
        cache = RedisCache(client, name=name, ttl_seconds=60, lock_timeout_seconds=5, key_prefix=prefix)
        # A barrier: the second to arrive lets both go, so their requests really are concurrent.
        if await client.incr(f"{prefix}ready") == 2:
            await client.rpush(f"{prefix}go", "go", "go")
        assert await client.blpop([f"{prefix}go"], timeout=4) is not None

        async def compute() -> bytes:
            await client.incr(f"{prefix}calls")
            await asyncio.sleep(0.5)
            return b"from one replica"

        result = await cache.get_or_compute("k", compute)
        print(json.dumps({"value": result.value.decode(), "is_cached": result.is_cached}))
    finally:
        await client.aclose()


async def test_replica_processes_share_one_computation(redis_namespace: RedisNamespace) -> None:
    code = "import asyncio, sys; from tests.test_cache import run_replica; "
    code += "asyncio.run(run_replica(*sys.argv[1:]))"
    args = [REDIS_URL, redis_namespace.prefix, redis_namespace.name]
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, *args, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), timeout=30)
    assert [p.returncode for p in processes] == [0, 0]
    results = [json.loads(stdout) for stdout, _ in outputs]
    assert [r["value"] for r in results] == ["from one replica"] * 2
    assert sorted(r["is_cached"] for r in results) == [False, True]
    assert await redis_namespace.client.get(f"{redis_namespace.prefix}calls") == b"1"


async def test_requests_are_answered_while_redis_is_unreachable() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0")
    try:
        cache = RedisCache(client, name="unreachable", ttl_seconds=60, lock_timeout_seconds=5)
        compute = CountingCompute()
        for _ in range(2):
            result = await asyncio.wait_for(cache.get_or_compute("k", compute), timeout=5)
            assert (result.value, result.is_cached) == (b"result", False)
        assert compute.calls == 2
        with pytest.raises(CacheUnavailableError, match=r"127\.0\.0\.1:1"):
            await cache.read_stats()
    finally:
        await client.aclose()


async def test_connecting_to_a_closed_port_fails_fast_without_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(CacheUnavailableError) as caught:
        await connect_redis("redis://:hunter2@127.0.0.1:1/0")
    assert time.monotonic() - started < 3.5
    assert "127.0.0.1:1" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert caught.value.address == "127.0.0.1:1"


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
