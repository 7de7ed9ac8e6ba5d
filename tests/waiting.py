"""Waiting for a condition to hold, polled until a deadline, in place of sleeping a guessed time."""

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    what: str,
    timeout_seconds: float = 10.0,
    interval_seconds: float = 0.02,
) -> None:
    """Returns as soon as `condition()` is true; raises AssertionError naming `what` at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"waited {timeout_seconds} s for {what}")
        # Polling, not synchronising: the condition decides, this only spaces the checks.
        await asyncio.sleep(interval_seconds)
