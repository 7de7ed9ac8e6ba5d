"""Single flight: concurrent calls for one key in this process share one computation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from services.cache.base import CacheResult


class SingleFlight:
    """Concurrent calls for one key in this process share one computation.

    A leader's failure is shared with the callers waiting on it; if the leader is cancelled (its client went
    away), a waiter takes over instead of failing.
    """

    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Future[CacheResult]] = {}

    async def share(
        self, key: str, lead: Callable[[], Awaitable[CacheResult]], *, may_join: bool
    ) -> tuple[CacheResult, bool]:
        """Returns the result and whether it was shared by another caller's `lead` rather than our own."""
        while may_join:
            pending = self._in_flight.get(key)
            if pending is None:
                break
            try:
                result = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled() and not _current_task_is_cancelling():
                    continue  # the leader's client went away, not ours: take over the computation
                raise
            return CacheResult(result.value, is_cached=True), True
        future: asyncio.Future[CacheResult] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await lead()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # marks it retrieved, so a failure nobody waited for is not logged as lost
            raise
        finally:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
        future.set_result(result)
        return result, False


def _current_task_is_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
