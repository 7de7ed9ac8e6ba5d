"""A full media scratch disk fails the encode cleanly with a clear status, and health reports it."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import grpc
import imageio_ffmpeg
import pytest

from services import serving
from services.media.encoders import EncoderSelection
from services.media.errors import EncodingError, ScratchSpaceError
from services.media.scratch import MEBIBYTE, DiskSpace, ScratchDisk, disk_full_reported, encoding_failure
from services.media.servicer import MediaServicer
from services.media.speech import EspeakNarrator
from services.media.studio import MediaStudio
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.media.test_servicer import MEDITATION, narrate


class FakeDisk:
    """A disk whose free space the test sets."""

    def __init__(self, free_bytes: int) -> None:
        self.free_bytes = free_bytes

    def __call__(self, _: Path) -> DiskSpace:
        return SimpleNamespace(free=self.free_bytes)


async def test_an_encode_is_refused_while_free_space_is_under_the_minimum(tmp_path: Path) -> None:
    scratch = ScratchDisk(tmp_path, min_free_bytes=100 * MEBIBYTE, disk_usage=FakeDisk(40 * MEBIBYTE))

    with pytest.raises(ScratchSpaceError) as raised:
        await scratch.ensure_room()

    assert str(raised.value).startswith("the media scratch disk is full (40 MiB free, at least 100 MiB")


async def test_without_a_minimum_the_disk_is_not_even_asked(tmp_path: Path) -> None:
    def unusable(_: Path) -> DiskSpace:
        raise AssertionError("disk_usage was called")

    scratch = ScratchDisk(tmp_path, disk_usage=unusable)

    await scratch.ensure_room()
    assert await scratch.has_room()


def test_ffmpeg_reporting_no_space_is_a_full_disk_and_other_failures_stay_encoding_errors() -> None:
    full = encoding_failure("FFmpeg failed", "[out#0/mp4] Error writing trailer: No space left on device")
    other = encoding_failure("FFmpeg failed", "Invalid data found when processing input")

    assert isinstance(full, ScratchSpaceError)
    assert "scratch disk is full" in str(full)
    assert isinstance(other, EncodingError)


def test_a_write_failing_with_enospc_is_a_full_disk_and_other_os_errors_pass() -> None:
    with pytest.raises(ScratchSpaceError), disk_full_reported():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(PermissionError), disk_full_reported():
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


async def test_health_goes_not_serving_under_the_minimum_and_serving_when_space_returns(
    tmp_path: Path,
) -> None:
    disk = FakeDisk(10 * MEBIBYTE)
    scratch = ScratchDisk(tmp_path, min_free_bytes=100 * MEBIBYTE, disk_usage=disk)
    reported: list[bool] = []
    changed = asyncio.Event()

    async def set_serving(is_serving: bool) -> None:
        reported.append(is_serving)
        changed.set()

    watching = asyncio.create_task(scratch.report_health(set_serving, interval_seconds=0.01))
    try:
        async with asyncio.timeout(10):
            await changed.wait()
            changed.clear()
            disk.free_bytes = 500 * MEBIBYTE
            await changed.wait()
    finally:
        watching.cancel()
    assert reported == [False, True]


# Through a real in-process media server ---------------------------------------------------------------------


@asynccontextmanager
async def media_server(
    tmp_path: Path,
    storage: LocalAssetStorage,
    narrator: EspeakNarrator,
    *,
    ffmpeg_path: str,
    min_free_bytes: int,
) -> AsyncIterator[media_grpc.MediaServiceStub]:
    work_root = tmp_path / "scratch"
    work_root.mkdir()
    studio = MediaStudio(
        narrator=narrator,
        storage=storage,
        ffmpeg_path=ffmpeg_path,
        encoders=EncoderSelection(selected="libx264", probes=("probing skipped in tests",)),
        work_root=work_root,
        video_timeout_seconds=60,
        scratch=ScratchDisk(work_root, min_free_bytes=min_free_bytes),
    )
    running = await serving.start_server(
        service_names=["stillpoint.media.v2.MediaService"],
        register=lambda server: media_grpc.add_MediaServiceServicer_to_server(MediaServicer(studio), server),
        address="127.0.0.1:0",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield media_grpc.MediaServiceStub(channel)
    finally:
        await running.stop(0)


async def render_until_status(stub: media_grpc.MediaServiceStub, narration_key: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stub.RenderVideo(
            media_pb.RenderVideoRequest(
                meditation=MEDITATION,
                narration_storage_key=narration_key,
                profile=media_pb.VIDEO_PROFILE_QUICK,
            )
        ):
            pass
    return raised.value


async def test_a_render_with_too_little_free_space_is_refused_clearly_and_writes_nothing(
    tmp_path: Path, storage: LocalAssetStorage, narrator: EspeakNarrator
) -> None:
    narration = await narrate(narrator, storage)
    async with media_server(
        tmp_path,
        storage,
        narrator,
        ffmpeg_path=imageio_ffmpeg.get_ffmpeg_exe(),
        min_free_bytes=1 << 60,  # more than any disk has
    ) as stub:
        status = await render_until_status(stub, narration.key)

    assert status.code() == grpc.StatusCode.UNAVAILABLE
    assert (status.details() or "").startswith("the media scratch disk is full (")
    assert list((tmp_path / "scratch").iterdir()) == []


async def test_a_disk_filling_up_mid_encode_fails_the_render_clearly_and_removes_its_files(
    tmp_path: Path, storage: LocalAssetStorage, narrator: EspeakNarrator
) -> None:
    narration = await narrate(narrator, storage)
    # An FFmpeg that writes part of its output, then fails as the real one does on a full disk.
    fake_ffmpeg = tmp_path / "ffmpeg"
    fake_ffmpeg.write_text(
        '#!/bin/sh\nfor last; do :; done\nhead -c 4096 /dev/zero > "$last"\n'
        'echo "[out#0/mp4] Error writing trailer: No space left on device" >&2\nexit 1\n'
    )
    fake_ffmpeg.chmod(fake_ffmpeg.stat().st_mode | stat.S_IXUSR)
    async with media_server(
        tmp_path, storage, narrator, ffmpeg_path=str(fake_ffmpeg), min_free_bytes=0
    ) as stub:
        status = await render_until_status(stub, narration.key)
        # The server answers again at once: one full encode does not take the service down.
        encoder = await stub.GetEncoderInfo(media_pb.GetEncoderInfoRequest())

    assert status.code() == grpc.StatusCode.UNAVAILABLE
    assert status.details() == "the media scratch disk is full; try again shortly"
    assert list((tmp_path / "scratch").iterdir()) == []
    assert encoder.selected_encoder == "libx264"
