"""The media scratch disk: refusing work while it is nearly full, and recognising a full disk mid-encode."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Final, Protocol

from services.media.errors import EncodingError, ScratchSpaceError

logger = logging.getLogger(__name__)

MEBIBYTE: Final = 1 << 20
# How FFmpeg (through strerror) reports ENOSPC on a write: in its log, never as an exception of ours.
_NO_SPACE_TEXT: Final = "No space left on device"


class DiskSpace(Protocol):
    """What `shutil.disk_usage` answers that matters here."""

    @property
    def free(self) -> int: ...


DiskUsage = Callable[[Path], DiskSpace]


class ScratchDisk:
    """Where encodes write their temporary files, and how much room must be left there to start one.

    `min_free_bytes` is the floor below which new encodes are refused and health reports NOT_SERVING; 0
    turns the early check off (a full disk is still recognised when a write fails)."""

    def __init__(
        self, work_root: Path, *, min_free_bytes: int = 0, disk_usage: DiskUsage = shutil.disk_usage
    ) -> None:
        if min_free_bytes < 0:
            raise ValueError("the minimum free space cannot be negative")
        self.work_root = work_root
        self.min_free_bytes = min_free_bytes
        self._disk_usage = disk_usage

    async def free_bytes(self) -> int:
        """Free space on the scratch disk now (statvfs is quick, but still a system call off the loop)."""
        return (await asyncio.to_thread(self._disk_usage, self.work_root)).free

    async def has_room(self) -> bool:
        """Whether an encode may start: at least the minimum is free."""
        return self.min_free_bytes == 0 or await self.free_bytes() >= self.min_free_bytes

    async def ensure_room(self) -> None:
        """Refuses an encode before it writes anything when the disk is under the minimum."""
        if self.min_free_bytes == 0:
            return
        free_bytes = await self.free_bytes()
        if free_bytes < self.min_free_bytes:
            raise ScratchSpaceError(free_bytes=free_bytes, min_free_bytes=self.min_free_bytes)

    async def report_health(
        self, set_serving: Callable[[bool], Awaitable[None]], *, interval_seconds: float = 10.0
    ) -> None:
        """Runs until cancelled: every `interval_seconds`, tells `set_serving` whether the disk has room,
        logging each change, so a replica that cannot encode is taken out of rotation and put back once
        space returns."""
        is_serving = True
        while True:
            try:
                has_room = await self.has_room()
            except OSError as error:
                # The folder vanished or the disk failed: nothing can be encoded there either.
                logger.error("the media scratch disk cannot be checked: %s", error)
                has_room = False
            if has_room != is_serving:
                is_serving = has_room
                if has_room:
                    logger.info("the media scratch disk has room again; serving")
                else:
                    logger.error(
                        "the media scratch disk is under its minimum of %d MiB free; not serving",
                        self.min_free_bytes // MEBIBYTE,
                    )
                await set_serving(has_room)
            await asyncio.sleep(interval_seconds)  # a periodic check, not synchronisation


def is_disk_full(error: OSError) -> bool:
    """Whether an OSError is the disk being full (ENOSPC) or over its quota (EDQUOT)."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_reported() -> Iterator[None]:
    """Turns a write that found the scratch disk full (ENOSPC, EDQUOT) into ScratchSpaceError."""
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise ScratchSpaceError(free_bytes=None, min_free_bytes=None) from error
        raise


def encoding_failure(message: str, ffmpeg_log: str) -> EncodingError | ScratchSpaceError:
    """The error for a failed FFmpeg run: a full scratch disk when its log says so, else an encoding error."""
    if _NO_SPACE_TEXT in ffmpeg_log:
        logger.error("%s: %s", message, ffmpeg_log[-2000:])
        return ScratchSpaceError(free_bytes=None, min_free_bytes=None)
    return EncodingError(message, detail=ffmpeg_log)
