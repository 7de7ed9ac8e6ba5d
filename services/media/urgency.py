"""First things first: work on the way to someone's first playable media goes ahead of everything else, and
among the rest, the job that arrived first is finished first.

A job's first sentence is what its listener waits for; the rest of its narration, and everyone's later
sentences, can wait a moment. Code on that path marks itself `urgent()`. Past the first sentences, sharing
the process fairly between jobs would finish all of them late together (fifty narrations on two cores all
miss their deadline at once); served in order of arrival, the first jobs finish while the later ones wait,
their listeners already hearing their first sentence. A job takes its place with `arrival()` once, and its
work runs `in_arrival_order(place)`. A `PriorityLimiter` (the speech request slots of a process) lets
waiters in by urgency, then by their job's place, then by when they came. A `CpuLane` runs CPU work
(mastering, encoding) in worker threads: urgent work at the process's priority, the rest, once no urgent
work is left, in threads the operating system runs only when nothing else wants the cores, so it never
delays the services' own threads (every other job's RPCs) nor another process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import ParamSpec, TypeVar

_Parameters = ParamSpec("_Parameters")
_Result = TypeVar("_Result")

_IS_URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("stillpoint_media_urgent", default=False)
_ARRIVAL: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "stillpoint_media_arrival", default=None
)
# Places in the order of arrival, for jobs and for work that belongs to none (which takes its place when it
# starts waiting, so it queues behind the jobs that came before it and ahead of the ones after).
_ARRIVALS = itertools.count()


def arrival() -> int:
    """The next place in the order of arrival."""
    return next(_ARRIVALS)


@contextlib.contextmanager
def in_arrival_order(place: int) -> Iterator[None]:
    """Marks the work done inside (and in tasks it starts) as the work of the job that arrived at `place`."""
    token = _ARRIVAL.set(place)
    try:
        yield
    finally:
        _ARRIVAL.reset(token)


@contextlib.contextmanager
def urgent(is_urgent: bool = True) -> Iterator[None]:
    """Marks the work done inside (and in tasks it starts) as on the way to first playable media, or, with
    False, as not (work that urgent work starts is not urgent itself unless it says so)."""
    token = _IS_URGENT.set(is_urgent)
    try:
        yield
    finally:
        _IS_URGENT.reset(token)


def is_urgent() -> bool:
    """Whether the current work was marked `urgent()`."""
    return _IS_URGENT.get()


class PriorityLimiter:
    """A semaphore of `slots` that lets waiters in urgent first, then by their job's place in the order of
    arrival, then in the order they came; used as `async with limiter:`."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self._free = slots
        # (not urgent, place, when it came, its future): a heap, so the smallest is let in first.
        self._waiting: list[tuple[bool, int, int, asyncio.Future[None]]] = []
        self._came = itertools.count()

    @property
    def has_free_slot(self) -> bool:
        """Whether `async with` would enter at once."""
        return self._free > 0 and not self.waiting

    @property
    def waiting(self) -> int:
        """How many are waiting for a slot."""
        return sum(1 for *_, waiter in self._waiting if not waiter.done())

    async def __aenter__(self) -> None:
        if self.has_free_slot:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        place = _ARRIVAL.get()
        heapq.heappush(
            self._waiting,
            (not is_urgent(), arrival() if place is None else place, next(self._came), waiter),
        )
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            # Otherwise its entry stays in the heap, cancelled, and is skipped when it comes up.
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiting:
            *_, waiter = heapq.heappop(self._waiting)
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to it
                return
        self._free += 1


# The longest background work waits for urgent work to clear before it starts anyway: fifty first sentences
# at once on two cores are mastered and encoded within it.
BACKGROUND_WAIT_LIMIT_SECONDS = 2.0
# How much less a background worker asks of the scheduler: at nice 10 a thread weighs about a tenth of one
# at 0 (Linux's CFS), so it takes the cores only when the services' own threads and urgent work leave them.
BACKGROUND_NICENESS = 10


class CpuLane:
    """CPU work of the process (mastering, encoding), off the event loop, `workers` at a time in each of two
    pools: urgent work (`urgent()`) in threads at the process's own priority, the rest in threads at
    BACKGROUND_NICENESS. Each pool lets its waiters in by their job's place in the order of arrival.

    Background work starts only while no urgent work waits or runs. A low niceness is not enough: between
    their native calls the background threads hold the interpreter's lock, which urgent work and the event
    loop then wait for, the longer the busier the cores (a background thread preempted while holding it
    holds it until it runs again). With fifty jobs at once, every sentence reaching media as it was written,
    first playable media came seconds later than with the background held back.

    On Linux a thread's niceness is its own; elsewhere the background threads run at the process's priority
    (the order of the work still holds)."""

    def __init__(self, workers: int) -> None:
        self._urgent = PriorityLimiter(workers)
        self._background = PriorityLimiter(workers)
        self._urgent_threads = ThreadPoolExecutor(workers, thread_name_prefix="cpu-urgent")
        self._background_threads = ThreadPoolExecutor(
            workers, thread_name_prefix="cpu-background", initializer=_yield_to_everything_else
        )
        # Urgent work waiting or running; background work starts only when there is none.
        self._urgent_pending = 0
        self._no_urgent_work = asyncio.Event()
        self._no_urgent_work.set()
        self._background_held = 0

    @property
    def background_held(self) -> int:
        """Pieces of background work waiting now for urgent work to end (not those waiting for a thread)."""
        return self._background_held

    async def run(
        self,
        function: Callable[_Parameters, _Result],
        /,
        *args: _Parameters.args,
        **kwargs: _Parameters.kwargs,
    ) -> _Result:
        """`function(*args, **kwargs)` in a worker thread of the pool its urgency calls for."""
        if not is_urgent():
            # Bounded: arrivals that never stop must not stop everyone's later sentences (and their
            # previews) for longer than a burst of first sentences takes.
            self._background_held += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BACKGROUND_WAIT_LIMIT_SECONDS):
                        await self._no_urgent_work.wait()
            finally:
                self._background_held -= 1
            async with self._background:
                return await asyncio.get_running_loop().run_in_executor(
                    self._background_threads, functools.partial(function, *args, **kwargs)
                )
        self._urgent_pending += 1
        self._no_urgent_work.clear()
        try:
            async with self._urgent:
                return await asyncio.get_running_loop().run_in_executor(
                    self._urgent_threads, functools.partial(function, *args, **kwargs)
                )
        finally:
            self._urgent_pending -= 1
            if self._urgent_pending == 0:
                self._no_urgent_work.set()

    def shutdown(self) -> None:
        """Lets the worker threads end once their work is done."""
        self._urgent_threads.shutdown(wait=False)
        self._background_threads.shutdown(wait=False)


def _yield_to_everything_else() -> None:
    if sys.platform == "linux":
        # PRIO_PROCESS with a thread's id sets that thread's niceness alone (setpriority(2), Linux notes).
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + BACKGROUND_NICENESS)
