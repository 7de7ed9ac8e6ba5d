"""Clean-up finishes, and holds its caller until it has, however often the caller is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from services.media.cleanup import finish_despite_cancellation


async def test_a_caller_cancelled_twice_ends_only_after_the_clean_up_and_stays_cancelled() -> None:
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def clean_up() -> None:
        started.set()
        await release.wait()
        finished.set()

    caller = asyncio.create_task(finish_despite_cancellation(clean_up()))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)  # let the first cancellation land
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done()  # still waiting for the clean-up: a shielded await alone would have ended
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished.is_set()


async def test_a_clean_up_failure_reaches_the_caller() -> None:
    async def failing() -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        await finish_despite_cancellation(failing())
