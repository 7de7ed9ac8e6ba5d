"""First things first: urgent waiters take the next free slot before anyone who was waiting already, then
work a listener needs soon, soonest first, and urgent and due CPU work runs ahead of the background."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from services.media import urgency
from services.media.urgency import (
    BACKGROUND_NICENESS,
    DUE_HORIZON_SECONDS,
    CpuLane,
    PriorityLimiter,
    arrival,
    due_at,
    due_by,
    in_arrival_order,
    is_urgent,
    urgent,
)
from tests.waiting import wait_until


async def test_urgent_waiters_go_first_and_each_kind_keeps_its_order() -> None:
    limiter, order, release, holder, take = await _held_limiter()
    tasks = [asyncio.create_task(take("later 1")), asyncio.create_task(take("later 2"))]
    await _queued(limiter, 2)
    with urgent():
        tasks += [asyncio.create_task(take("first 1")), asyncio.create_task(take("first 2"))]
    await _queued(limiter, 4)
    release.set()
    await asyncio.gather(holder, *tasks)
    assert order == ["first 1", "first 2", "later 1", "later 2"]
    assert limiter.waiting == 0


async def test_past_the_urgent_the_job_that_arrived_first_goes_first() -> None:
    """Fair sharing would finish every job late together; in order of arrival, the first ones finish."""
    limiter, order, release, holder, take = await _held_limiter()
    earlier, later = arrival(), arrival()
    tasks = []
    # They come to wait in the opposite order to their jobs' arrival; work of no job comes last of all.
    for name, place in (("later job", later), ("earlier job", earlier), ("later job again", later)):
        with in_arrival_order(place):
            tasks.append(asyncio.create_task(take(name)))
        await _queued(limiter, len(tasks))
    tasks.append(asyncio.create_task(take("no job")))
    await _queued(limiter, 4)
    with in_arrival_order(later), urgent():
        tasks.append(asyncio.create_task(take("later job, urgent")))
    await _queued(limiter, 5)
    release.set()
    await asyncio.gather(holder, *tasks)
    assert order == ["later job, urgent", "earlier job", "later job", "later job again", "no job"]


async def test_work_a_listener_needs_soon_goes_ahead_of_earlier_jobs_work_soonest_first() -> None:
    """A listener hearing their first sentence must not wait for everyone who arrived before them to be
    narrated to the end: work due within the horizon goes ahead of the rest, by when it is due; urgent work
    still goes first."""
    now = 1000.0
    limiter, order, release, holder, take = await _held_limiter(clock=lambda: now)
    earlier, later = arrival(), arrival()
    tasks = []
    waiting = (
        ("earlier job, heard in a minute", earlier, now + 60),
        ("earlier job, nobody waits", earlier, None),
        ("later job, heard in 10 s", later, now + 10),
        ("later job, heard in 2 s", later, now + 2),
        ("later job, a listener waiting already", later, now - 1),
    )
    for name, place, moment in waiting:
        with in_arrival_order(place), due_by(moment):
            tasks.append(asyncio.create_task(take(name)))
        await _queued(limiter, len(tasks))
    with in_arrival_order(later), urgent():
        tasks.append(asyncio.create_task(take("later job, first sentence")))
    await _queued(limiter, len(tasks))
    release.set()
    await asyncio.gather(holder, *tasks)
    assert order == [
        "later job, first sentence",
        "later job, a listener waiting already",
        "later job, heard in 2 s",
        "later job, heard in 10 s",
        "earlier job, heard in a minute",
        "earlier job, nobody waits",
    ]


async def test_work_that_waits_until_a_listener_needs_it_goes_ahead_from_then_on() -> None:
    """Being due is judged when a slot frees, not when the waiter came: work beyond the horizon when it
    came to wait, behind an earlier job's, goes first once its moment is near."""
    clock = [1000.0]
    limiter, order, release, holder, take = await _held_limiter(clock=lambda: clock[0])
    earlier, later = arrival(), arrival()
    with in_arrival_order(earlier):
        first = asyncio.create_task(take("earlier job, nobody waits"))
    await _queued(limiter, 1)
    with in_arrival_order(later), due_by(clock[0] + DUE_HORIZON_SECONDS + 5):
        second = asyncio.create_task(take("later job, heard in 25 s"))
    await _queued(limiter, 2)
    clock[0] += 6  # the later job's work is 19 s from its listener now
    release.set()
    await asyncio.gather(holder, first, second)
    assert order == ["later job, heard in 25 s", "earlier job, nobody waits"]


async def test_a_cancelled_waiter_gives_up_its_place_and_never_a_slot() -> None:
    limiter = PriorityLimiter(1)
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter:
            await release.wait()

    holder = asyncio.create_task(hold())
    await wait_until(lambda: not limiter.has_free_slot, what="the holder to take the slot")
    waiter = asyncio.create_task(limiter.__aenter__())
    await _queued(limiter, 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    # Both slots' worth of work can run now: nothing leaked to the cancelled waiter.
    async with limiter:
        assert limiter.waiting == 0


def test_urgency_is_scoped() -> None:
    assert not is_urgent()
    with urgent():
        assert is_urgent()
    assert not is_urgent()
    assert due_at() is None
    with due_by(12.5):
        assert due_at() == 12.5
        with due_by(None):
            assert due_at() is None
    assert due_at() is None
    with pytest.raises(ValueError, match="at least 1"):
        PriorityLimiter(0)


async def _held_limiter(
    clock: Callable[[], float] | None = None,
) -> tuple[
    PriorityLimiter, list[str], asyncio.Event, asyncio.Task[None], Callable[[str], Coroutine[Any, Any, None]]
]:
    """A one-slot limiter (on `clock`, if given) held until `release` is set, the order in which `take(name)`
    got the slot, and the holder's task."""
    limiter = PriorityLimiter(1) if clock is None else PriorityLimiter(1, clock=clock)
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter:
            await release.wait()

    async def take(name: str) -> None:
        async with limiter:
            order.append(name)

    holder = asyncio.create_task(hold())
    await wait_until(lambda: not limiter.has_free_slot, what="the holder to take the slot")
    return limiter, order, release, holder, take


async def _queued(limiter: PriorityLimiter, count: int) -> None:
    """Returns once `count` tasks wait for the limiter: each in its place before the next one comes."""
    await wait_until(lambda: limiter.waiting == count, what=f"{count} waiting for the limiter")


def _own_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="a thread has a niceness of its own only on Linux")
async def test_the_cpu_lane_runs_urgent_work_at_the_process_priority_and_the_rest_in_the_background() -> None:
    lane = CpuLane(1)
    try:
        base = _own_niceness()
        with urgent():
            urgent_niceness, urgent_thread = await lane.run(lambda: (_own_niceness(), threading.get_ident()))
        background_niceness, background_thread = await lane.run(
            lambda: (_own_niceness(), threading.get_ident())
        )
    finally:
        lane.shutdown()
    assert urgent_niceness == base
    assert background_niceness == min(19, base + BACKGROUND_NICENESS)
    # Not the event loop's thread, and not each other's: the event loop's own niceness is untouched.
    assert threading.get_ident() not in (urgent_thread, background_thread)
    assert urgent_thread != background_thread
    assert _own_niceness() == base


async def test_the_cpu_lane_passes_arguments_and_raises_what_the_work_raised() -> None:
    lane = CpuLane(2)
    try:
        assert await lane.run(divmod, 17, 5) == (3, 2)
        assert await lane.run(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]
        with pytest.raises(ZeroDivisionError):
            await lane.run(divmod, 1, 0)
    finally:
        lane.shutdown()


@contextlib.asynccontextmanager
async def _urgent_work_held(
    workers: int,
) -> AsyncIterator[tuple[CpuLane, threading.Event, asyncio.Task[bool]]]:
    """A lane of `workers` running one piece of urgent work until the returned event is set."""
    lane = CpuLane(workers)
    release = threading.Event()
    try:
        with urgent():
            held = asyncio.create_task(lane.run(release.wait))
        yield lane, release, held
    finally:
        release.set()
        lane.shutdown()
    await held


async def test_background_work_waits_while_urgent_work_is_queued_or_running() -> None:
    # Background threads hold the interpreter's lock between native calls, so running beside urgent work
    # they slow it however low their niceness: they start only once no urgent work is left.
    background_started = threading.Event()
    async with _urgent_work_held(2) as (lane, release, urgent_work):
        background_work = asyncio.create_task(lane.run(background_started.set))
        # Without the wait it starts at once in a free background thread; with it, never before the release.
        await wait_until(lambda: lane.background_held == 1, what="the background work to be held")
        assert not background_started.is_set()
        release.set()
        await urgent_work
        await background_work
        assert background_started.is_set()


async def test_background_work_cancelled_while_it_waits_for_urgent_work_never_runs() -> None:
    ran = threading.Event()
    async with _urgent_work_held(1) as (lane, release, urgent_work):
        background_work = asyncio.create_task(lane.run(ran.set))
        await wait_until(lambda: lane.background_held == 1, what="the background work to be held")
        background_work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await background_work
        release.set()
        await urgent_work
        # The lane is free for background work again, and the cancelled work never ran.
        assert lane.background_held == 0
        assert await lane.run(lambda: "after") == "after"
        assert not ran.is_set()


async def test_background_work_starts_anyway_once_urgent_work_has_lasted_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Jobs that keep arriving keep urgent work in the lane: everyone's later sentences must go on.
    monkeypatch.setattr(urgency, "BACKGROUND_WAIT_LIMIT_SECONDS", 0.2)
    async with _urgent_work_held(1) as (lane, _, urgent_work):
        assert await asyncio.wait_for(lane.run(lambda: "later sentence"), timeout=10) == "later sentence"
        assert not urgent_work.done()


@pytest.mark.skipif(sys.platform != "linux", reason="a thread has a niceness of its own only on Linux")
async def test_work_due_soon_runs_at_the_process_priority_and_holds_the_background_back() -> None:
    """A listener's next sentences are encoded as urgently as a first sentence (not in a thread that runs
    only when the cores are idle), and the background waits for them; work due beyond the horizon is
    background work."""
    lane = CpuLane(2)
    release = threading.Event()
    background_started = threading.Event()
    try:
        base = _own_niceness()
        with due_by(time.monotonic() + DUE_HORIZON_SECONDS + 60):
            assert await lane.run(_own_niceness) == min(19, base + BACKGROUND_NICENESS)
        with due_by(time.monotonic() + 3):
            niceness = await lane.run(_own_niceness)
            held = asyncio.create_task(lane.run(release.wait))
        assert niceness == base
        background = asyncio.create_task(lane.run(background_started.set))
        await wait_until(lambda: lane.background_held == 1, what="the background work to be held")
        assert not background_started.is_set()
        release.set()
        await held
        await background
        assert background_started.is_set()
    finally:
        release.set()
        lane.shutdown()
