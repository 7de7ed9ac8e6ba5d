"""Result caches, in process and in Redis: TTL, hit and miss counts, and single flight across replicas."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import pytest
from redis.asyncio import Redis

from services.cache.base import STATS_KEY_PREFIX, CacheStats, CacheUnavailableError, ResultCache
from services.cache.in_process import InProcessCache
from services.cache.redis import RedisCache
from services.redis_connection import RedisUnavailableError, connect_redis


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
    compute = CountingCompute(is_held=True)
    waiters = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(5)]
    # Started before us, the other four have joined the leader's flight by the time it computes.
    await compute.started.wait()
    compute.release.set()
    results = await asyncio.gather(*waiters)
    assert compute.calls == 1
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
    slow = CountingCompute(b"never", is_held=True)
    fast = CountingCompute(b"second try")
    leader = asyncio.create_task(cache.get_or_compute("k", slow))
    follower = asyncio.create_task(cache.get_or_compute("k", fast))
    # Started before us, the follower has joined the leader's flight by the time the leader computes.
    await slow.started.wait()
    assert fast.calls == 0
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
    except RedisUnavailableError as error:
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


class CacheBackend(Protocol):
    """Makes caches of one backend, and lets their stored values' time to live run out."""

    def __call__(self, *, ttl_seconds: float = 60) -> ResultCache: ...

    async def let_ttl_pass(self) -> None: ...


class InProcessBackend:
    """In-process caches on a fake clock: the TTL passes the moment the test says so."""

    def __init__(self) -> None:
        self._clock = FakeClock()
        self._longest_ttl_seconds = 0.0

    def __call__(self, *, ttl_seconds: float = 60) -> ResultCache:
        self._longest_ttl_seconds = max(self._longest_ttl_seconds, ttl_seconds)
        return InProcessCache(ttl_seconds=ttl_seconds, name="test", clock=self._clock)

    async def let_ttl_pass(self) -> None:
        self._clock.now += self._longest_ttl_seconds


class RedisBackend:
    """Redis caches in one test's namespace: Redis itself expires values, so the test polls until it has."""

    def __init__(self, namespace: RedisNamespace) -> None:
        self.namespace = namespace
        self.caches: list[ResultCache] = []

    def __call__(self, *, ttl_seconds: float = 60) -> ResultCache:
        self.caches.append(self.namespace.cache(ttl_seconds=ttl_seconds))
        return self.caches[-1]

    async def let_ttl_pass(self) -> None:
        pattern = f"{self.namespace.prefix}{self.namespace.name}:value:*"
        client = self.namespace.client
        await poll_until(lambda: _has_no_keys(client, pattern), "stored values to expire")


async def _has_no_keys(client: Redis, pattern: str) -> bool:
    return not [key async for key in client.scan_iter(match=pattern)]


async def poll_until(condition: Callable[[], Awaitable[bool]], what: str, timeout_seconds: float = 5) -> None:
    """Polls `condition` until it holds; fails the test, naming `what`, when the deadline passes."""
    deadline = time.monotonic() + timeout_seconds
    while not await condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout_seconds:g} s")
        await asyncio.sleep(0.01)  # the polling interval, not a wait for anything in particular


async def wait_for_waiters(namespace: RedisNamespace, key: str, count: int = 1) -> None:
    """Returns once `count` callers wait for `key`'s value: each subscribes to its done channel first."""
    channel = f"{namespace.prefix}{namespace.name}:done:{key}"

    async def are_waiting() -> bool:
        [(_, subscribers)] = await namespace.client.pubsub_numsub(channel)
        return int(subscribers) >= count

    await poll_until(are_waiting, f"{count} caller(s) to wait for {key!r}")


@pytest.fixture(params=["in_process", "redis"])
async def make_cache(request: pytest.FixtureRequest) -> AsyncIterator[CacheBackend]:
    if request.param == "in_process":
        yield InProcessBackend()
        return
    backend = RedisBackend(RedisNamespace(await connect_or_skip()))
    try:
        yield backend
    finally:
        for cache in backend.caches:
            await cache.aclose()
        await backend.namespace.clean_up()


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


async def test_values_expire_after_the_ttl_on_both_backends(make_cache: CacheBackend) -> None:
    cache = make_cache(ttl_seconds=0.3)
    compute = CountingCompute()
    assert not (await cache.get_or_compute("k", compute)).is_cached
    assert (await cache.get_or_compute("k", compute)).is_cached
    await make_cache.let_ttl_pass()
    assert not (await cache.get_or_compute("k", compute)).is_cached
    assert compute.calls == 2


async def test_a_forgotten_value_is_computed_afresh_on_both_backends(make_cache: CacheBackend) -> None:
    cache, other = make_cache(), make_cache()
    compute = CountingCompute()
    await cache.get_or_compute("erased", compute)
    await cache.get_or_compute("kept", compute)

    assert await cache.forget("erased")

    assert not await cache.forget("erased")
    assert not (await cache.get_or_compute("erased", compute)).is_cached
    assert (await cache.get_or_compute("kept", compute)).is_cached
    # Shared across replicas in Redis: another process's cache of the same name no longer has it either.
    if cache.backend == "redis":
        assert await other.forget("erased")
        assert not (await cache.get_or_compute("erased", compute)).is_cached


async def test_hits_and_misses_are_counted(make_cache: CacheBackend) -> None:
    cache = make_cache()
    compute = CountingCompute()
    await cache.get_or_compute("a", compute)
    await cache.get_or_compute("a", compute)
    await cache.get_or_compute("a", compute)
    await cache.get_or_compute("b", compute)
    assert (cache.stats.hits, cache.stats.misses) == (2, 2)
    assert await cache.read_stats() == CacheStats(hits=2, misses=2)


async def test_skip_cache_recomputes_and_overwrites(make_cache: CacheBackend) -> None:
    cache = make_cache()
    values = iter([b"one", b"two"])

    async def compute() -> bytes:
        return next(values)

    await cache.get_or_compute("k", compute)
    fresh = await cache.get_or_compute("k", compute, skip_cache=True)
    assert (fresh.value, fresh.is_cached) == (b"two", False)
    cached = await cache.get_or_compute("k", compute)
    assert (cached.value, cached.is_cached) == (b"two", True)


async def test_failure_is_shared_by_concurrent_callers_and_not_cached(make_cache: CacheBackend) -> None:
    cache = make_cache()
    calls = 0
    started = asyncio.Event()
    release = asyncio.Event()

    async def fail() -> bytes:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        raise RuntimeError("provider down")

    requests = [asyncio.create_task(cache.get_or_compute("k", fail)) for _ in range(3)]
    # Started before us, the other two have joined the leader's flight by the time it computes.
    await started.wait()
    release.set()
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    result = await cache.get_or_compute("k", CountingCompute(b"ok"))
    assert (result.value, result.is_cached) == (b"ok", False)


async def test_concurrent_identical_requests_make_one_call_on_both_backends(make_cache: CacheBackend) -> None:
    cache = make_cache()
    compute = CountingCompute(is_held=True)
    requests = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(5)]
    # Started before us, the other four have joined the leader's flight by the time it computes.
    await compute.started.wait()
    compute.release.set()
    results = await asyncio.gather(*requests)
    assert compute.calls == 1
    assert [r.value for r in results] == [b"result"] * 5
    assert sorted(r.is_cached for r in results) == [False, True, True, True, True]
    assert await cache.read_stats() == CacheStats(hits=4, misses=1)


async def test_a_waiter_takes_over_when_the_leader_is_cancelled(make_cache: CacheBackend) -> None:
    cache = make_cache()
    slow = CountingCompute(b"never", is_held=True)
    leader = asyncio.create_task(cache.get_or_compute("k", slow))
    follower = asyncio.create_task(cache.get_or_compute("k", CountingCompute(b"second try")))
    # Started before us, the follower has joined the leader's flight by the time the leader computes.
    await slow.started.wait()
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
    # The second replica's three share one lookup, which waits on Redis for the first replica's value.
    await wait_for_waiters(redis_namespace, "k")
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
    await wait_for_waiters(redis_namespace, "k")
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
    await wait_for_waiters(redis_namespace, "k")
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
        # One turn of the loop: the request is sending its first command when the cancellation lands.
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
        # Simulates a provider slower than the lock timeout: the lock must be extended, not lost.
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
            # Simulates a provider call long enough for the other replica to arrive while it runs.
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
