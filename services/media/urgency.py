"""First things first: work on the way to someone's first playable media goes ahead of everything else, and
among the rest, the job that arrived first is finished first.

A job's first sentence is what its listener waits for; the rest of its narration, and everyone's later
sentences, can wait a moment. Code on that path marks itself `urgent()`. Past the first sentences, sharing
the process fairly between jobs would finish all of them late together (fifty narrations on two cores all
miss their deadline at once); served in order of arrival, the first jobs finish while the later ones wait,
their listeners already hearing their first sentence. A job takes its place with `arrival()` once, and its
work runs `in_arrival_order(place)`. A `PriorityLimiter` (the speech request slots of a process, its
mastering workers) lets waiters in by urgency, then by their job's place, then by when they came.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
from collections.abc import Iterator
from types import TracebackType

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
    def waiting(self) -> int:
        """How many are waiting for a slot."""
        return sum(1 for *_, waiter in self._waiting if not waiter.done())

    async def __aenter__(self) -> None:
        if self._free > 0 and not self.waiting:
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
