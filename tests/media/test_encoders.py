"""Hardware encoder probing: a candidate counts only when FFmpeg really opens it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import imageio_ffmpeg
import pytest

from services.media.encoders import select_h264_encoder
from services.media.errors import EncodingError

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
HAS_GPU_DEVICE = Path("/dev/dri").exists() or Path("/dev/nvidiactl").exists()


async def test_machine_without_gpu_falls_back_to_libx264_with_one_line_per_probe() -> None:
    selection = await select_h264_encoder(FFMPEG)

    assert [line.split(":")[0] for line in selection.probes] == ["h264_nvenc", "h264_qsv", "h264_vaapi"]
    if HAS_GPU_DEVICE:
        assert f"{selection.selected}: available" in selection.probes or selection.selected == "libx264"
    else:
        assert selection.selected == "libx264"
        assert all(": unavailable (" in line and line.endswith(")") for line in selection.probes)
        assert "h264_nvenc: unavailable (Cannot load libcuda.so.1)" in selection.probes


async def test_unknown_encoder_is_unavailable_with_ffmpegs_reason() -> None:
    selection = await select_h264_encoder(FFMPEG, candidates=("h264_nonexistent",))

    assert selection == type(selection)(
        selected="libx264", probes=("h264_nonexistent: unavailable (Unknown encoder 'h264_nonexistent')",)
    )


async def test_first_working_candidate_in_the_given_order_wins() -> None:
    selection = await select_h264_encoder(FFMPEG, candidates=("h264_nonexistent", "libopenh264", "libx264"))

    assert selection.selected == "libopenh264"
    assert selection.probes[1:] == ("libopenh264: available", "libx264: available")


async def test_probe_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    # A fake FFmpeg that never answers: its sleep is the hang under test, not synchronisation.
    hanging = tmp_path / "ffmpeg"
    hanging.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    hanging.chmod(0o755)

    started = time.perf_counter()
    selection = await select_h264_encoder(
        str(hanging), candidates=("h264_nvenc", "h264_qsv"), timeout_seconds=0.3
    )

    assert time.perf_counter() - started < 3
    assert selection.selected == "libx264"
    assert selection.probes == (
        "h264_nvenc: unavailable (no answer within 0.3 s)",
        "h264_qsv: unavailable (no answer within 0.3 s)",
    )


async def test_missing_ffmpeg_is_an_encoding_error(tmp_path: Path) -> None:
    with pytest.raises(EncodingError, match="could not be started"):
        await select_h264_encoder(str(tmp_path / "no-ffmpeg"))
