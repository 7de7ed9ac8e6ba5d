"""Clean-up that runs to its end even when the task waiting for it is cancelled, once or again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def finish_despite_cancellation(work: Awaitable[None]) -> None:
    """Runs `work` (kill FFmpeg, remove scratch files) to its end, then re-raises any cancellation that
    landed meanwhile.

    `asyncio.shield` alone keeps the work running but lets the caller's task end at once: a stream cut at the
    end of a grace period would then count as finished, the server would stop waiting for it, and the
    process would exit with the files still there. Waiting here keeps the RPC's task alive until the files
    are gone (the server waits for cut RPCs, up to serving's CLEANUP_SECONDS).
    """
    task = asyncio.ensure_future(work)
    is_cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            is_cancelled = True
    if is_cancelled:
        raise asyncio.CancelledError
    task.result()
