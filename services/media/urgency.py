"""First things first: work on the way to someone's first playable media goes ahead of everything else, then
work a listener will need soon, and among the rest, the job that arrived first is finished first.

A job's first sentence is what its listener waits for; the rest of its narration, and everyone's later
sentences, can wait a moment. Code on that path marks itself `urgent()`. Past the first sentences, sharing
the process fairly between jobs would finish all of them late together (fifty narrations on two cores all
miss their deadline at once); served in order of arrival, the first jobs finish while the later ones wait,
their listeners already hearing their first sentence. But a listener hearing their first sentence must go
on hearing: work their player will reach within DUE_HORIZON_SECONDS says when it is needed with
`due_by(moment)`, and goes ahead of the rest, soonest needed first (with fifty jobs at once and the rest
served in arrival order alone, the last listeners heard their first second and then waited up to a
minute for the next). A job takes its place with `arrival()` once, and its work runs
`in_arrival_order(place)`. A `PriorityLimiter` (the speech request slots of a process) lets waiters in
urgent first, then work due within the horizon by when it is due, then by their job's place, then by
when they came; being due is judged when a slot frees, so work that waits long enough becomes due. A
`CpuLane` runs CPU work (mastering, encoding) in worker threads: urgent and due work at the process's
priority, the rest, once none of that is left, in threads the operating system runs only when nothing else
wants the cores, so it never
delays the services' own threads (every other job's RPCs) nor another process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import itertools
import os
import sys
import threading
import time
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
_DUE_AT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "stillpoint_media_due_at", default=None
)

# How far ahead of a listener work counts as due: past the live publisher's look-ahead
# (PUBLISHED_AHEAD_SECONDS, 15 s) by about a long segment (LONGEST_SEGMENT_SECONDS, 32 s), so the next
# sentences are spoken, mastered and encoded before it wants to publish them, and enough of them that it
# publishes long segments rather than whatever is cut so far. At 20 s, fifty jobs at once made 39.0 storage
# requests a job against 36.7, and QUICK came later (p50 62 against 55 s), first playable and the
# listeners' waits the same within the spread.
DUE_HORIZON_SECONDS = 40.0
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


@contextlib.contextmanager
def due_by(moment: float | None) -> Iterator[None]:
    """Marks the work done inside (and in tasks it starts) as needed by a listener at `moment` (on
    time.monotonic's clock), or, with None, by nobody in particular."""
    token = _DUE_AT.set(moment)
    try:
        yield
    finally:
        _DUE_AT.reset(token)


def due_at() -> float | None:
    """When a listener needs the current work (`due_by`), or None."""
    return _DUE_AT.get()


def _is_due(moment: float | None, now: float) -> bool:
    return moment is not None and moment - now <= DUE_HORIZON_SECONDS


@dataclasses.dataclass(eq=False)
class _Waiter:
    is_urgent: bool
    place: int
    due_at: float | None
    came: int
    future: asyncio.Future[None]

    def rank(self, now: float) -> tuple[int, float, int]:
        """Smallest first: urgent work by place, then due work by when it is due, then the rest by place."""
        if self.is_urgent:
            return (0, self.place, self.came)
        if _is_due(self.due_at, now):
            assert self.due_at is not None
            return (1, self.due_at, self.came)
        return (2, self.place, self.came)


class PriorityLimiter:
    """A semaphore of `slots` that lets waiters in urgent first, then those due within DUE_HORIZON_SECONDS by
    when they are due, then the rest by their job's place in the order of arrival, each in the order they
    came; used as `async with limiter:`. Whether a waiter is due is judged when a slot frees, on `clock`."""

    def __init__(self, slots: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self._free = slots
        self._clock = clock
        # Searched whenever a slot frees (a few hundred at most: fifty jobs' speech requests), since a waiter
        # becomes due as time passes: a heap's order is fixed when its entries go in.
        self._waiting: list[_Waiter] = []
        self._came = itertools.count()

    @property
    def has_free_slot(self) -> bool:
        """Whether `async with` would enter at once."""
        return self._free > 0 and not self.waiting

    @property
    def waiting(self) -> int:
        """How many are waiting for a slot."""
        return sum(1 for waiter in self._waiting if not waiter.future.done())

    async def __aenter__(self) -> None:
        if self.has_free_slot:
            self._free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        place = _ARRIVAL.get()
        self._waiting.append(
            _Waiter(
                is_urgent=is_urgent(),
                place=arrival() if place is None else place,
                due_at=due_at(),
                came=next(self._came),
                future=future,
            )
        )
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            # Otherwise its entry stays in the list, cancelled, and is dropped when a slot frees.
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._release()

    def _release(self) -> None:
        self._waiting = [waiter for waiter in self._waiting if not waiter.future.done()]
        if not self._waiting:
            self._free += 1
            return
        now = self._clock()
        first = min(self._waiting, key=lambda waiter: waiter.rank(now))
        self._waiting.remove(first)
        first.future.set_result(None)  # the slot passes straight to it


# The longest background work waits for urgent and due work to clear before it starts anyway. Nobody is
# about to hear background work (due work is what they are), so it can wait through a burst of arrivals:
# fifty first sentences at once and everyone's next sentences take about that long on two cores, and
# background threads let in sooner held the interpreter's lock the due work needed (fifty jobs at once: the
# median listener ran dry for 9 s with a 2 s limit, 4 s with 30 s, in make bench's traces).
BACKGROUND_WAIT_LIMIT_SECONDS = 10.0
# How much less a background worker asks of the scheduler: at nice 10 a thread weighs about a tenth of one
# at 0 (Linux's CFS), so it takes the cores only when the services' own threads and urgent work leave them.
BACKGROUND_NICENESS = 10


class CpuLane:
    """CPU work of the process (mastering, encoding), off the event loop, `workers` at a time in each of two
    pools: urgent work (`urgent()`) and work due within DUE_HORIZON_SECONDS (`due_by`) in threads at the
    process's own priority, the rest, the background, in threads at BACKGROUND_NICENESS. Each pool lets its
    waiters in as a PriorityLimiter does.

    Background work starts only while no urgent or due work waits or runs. A low niceness is not enough:
    between their native calls the background threads hold the interpreter's lock, which urgent work and
    the event loop then wait for, the longer the busier the cores (a background thread preempted while
    holding it holds it until it runs again). With fifty jobs at once, every sentence reaching media as it
    was written, first playable media came seconds later than with the background held back.

    On Linux a thread's niceness is its own; elsewhere the background threads run at the process's priority
    (the order of the work still holds)."""

    def __init__(self, workers: int) -> None:
        self._urgent = PriorityLimiter(workers)
        self._background = PriorityLimiter(workers)
        self._urgent_threads = ThreadPoolExecutor(workers, thread_name_prefix="cpu-urgent")
        self._background_threads = ThreadPoolExecutor(
            workers, thread_name_prefix="cpu-background", initializer=_yield_to_everything_else
        )
        # Urgent or due work waiting or running; background work starts only when there is none.
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
        if not (is_urgent() or _is_due(due_at(), time.monotonic())):
            # Bounded: arrivals that never stop must not stop everyone's later sentences for longer than a
            # burst of first sentences takes.
            self._background_held += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BACKGROUND_WAIT_LIMIT_SECONDS):
                        await self._no_urgent_work.wait()
            finally:
                self._background_held -= 1
            # Held long enough to have come due: a listener needs it now, at the process's priority.
            if not _is_due(due_at(), time.monotonic()):
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


# Whether the current thread is one of a CpuLane's background workers (set by their initializer).
_WORKER = threading.local()


def runs_in_background() -> bool:
    """Whether this thread is a CpuLane's background worker: work it hands to another process (the encoder
    process) runs there in the background too."""
    return bool(getattr(_WORKER, "is_background", False))


def _yield_to_everything_else() -> None:
    _WORKER.is_background = True
    yield_this_thread()


def yield_this_thread() -> None:
    """Lowers this thread's priority by BACKGROUND_NICENESS (Linux; elsewhere it keeps the process's)."""
    if sys.platform == "linux":
        # PRIO_PROCESS with a thread's id sets that thread's niceness alone (setpriority(2), Linux notes).
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + BACKGROUND_NICENESS)
