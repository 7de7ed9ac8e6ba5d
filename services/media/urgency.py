"""First things first: work on the way to someone's first playable media goes ahead of everything else.

A job's first sentence is what its listener waits for; the rest of its narration, and everyone's later
sentences, can wait a moment. Code on that path marks itself `urgent()`; a `PriorityLimiter` (the speech
request slots of a process) lets urgent waiters in before the others, in order of arrival within each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
from collections.abc import Iterator
from types import TracebackType

_IS_URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("stillpoint_media_urgent", default=False)


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """Marks the work done inside (and in tasks it starts) as on the way to first playable media."""
    token = _IS_URGENT.set(True)
    try:
        yield
    finally:
        _IS_URGENT.reset(token)


def is_urgent() -> bool:
    """Whether the current work was marked `urgent()`."""
    return _IS_URGENT.get()


class PriorityLimiter:
    """A semaphore of `slots` where urgent waiters go first; used as `async with limiter:`."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self._free = slots
        self._waiting: dict[bool, collections.deque[asyncio.Future[None]]] = {
            True: collections.deque(),
            False: collections.deque(),
        }

    @property
    def waiting(self) -> int:
        """How many are waiting for a slot."""
        return sum(len(queue) for queue in self._waiting.values())

    async def __aenter__(self) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        queue = self._waiting[is_urgent()]
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            else:
                queue.remove(waiter)
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._release()

    def _release(self) -> None:
        for queue in (self._waiting[True], self._waiting[False]):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot passes straight to it
                    return
        self._free += 1
