"""Still-image video rendering with the real FFmpeg binary, checked by decoding the result with PyAV."""

from __future__ import annotations

import asyncio
import sys
import time
import wave
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw

from services.media.errors import EncodingError, InvalidInputError, StageTimeoutError
from services.media.speech import EspeakNarrator, encode_wav
from services.media.video import (
    ENHANCED_PROFILE,
    QUICK_PROFILE,
    RenderProfile,
    probe_media,
    render_still_video,
    still_video_arguments,
)
from tests.waiting import wait_until

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
IMAGE_SIZE = (1344, 896)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """A detailed test picture and an espeak narration with a pause, shared by the module."""
    directory = tmp_path_factory.mktemp("assets")
    image_path = directory / "scene.png"
    width, height = IMAGE_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack(
        [100 + 80 * np.sin(x / 70), 90 + 70 * np.cos((x + y) / 110), 140 + 60 * np.sin(y / 55)], axis=-1
    )
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for index in range(12):
        left, top = 90 * index + 20, 60 * index + 30
        draw.ellipse((left, top, left + 160, top + 120), outline=(250, 240, 220), width=6)
    image.save(image_path)

    async def narrate() -> bytes:
        narrator = EspeakNarrator()
        try:
            script = "Let your breath slow down. [pause 2s] Rest here, soft and still."
            return encode_wav(await narrator.narrate(script))
        finally:
            narrator.close()

    audio_path = directory / "narration.wav"
    audio_path.write_bytes(asyncio.run(narrate()))
    with wave.open(str(audio_path), "rb") as wav:
        duration_seconds = wav.getnframes() / wav.getframerate()
    return image_path, audio_path, duration_seconds


@pytest.fixture(scope="module")
def long_silence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten minutes of quiet audio: enough to keep FFmpeg busy while a test interrupts it."""
    path = tmp_path_factory.mktemp("long") / "long.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(22_050)
        wav.writeframes(np.full(22_050 * 600, 3, dtype="<i2").tobytes())
    return path


def middle_frame(path: Path) -> npt.NDArray[np.uint8]:
    """Seeks to the middle of the video, as a player's scrubber would, and decodes the picture there."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.duration is not None
        container.seek(stream.duration // 2, stream=stream)
        frame = next(container.decode(stream))
        return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


def mean_difference_from(image_path: Path, frame: npt.NDArray[np.uint8]) -> float:
    height, width = frame.shape[:2]
    with Image.open(image_path) as image:
        reference = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
    return float(np.abs(reference.astype(np.float32) - frame.astype(np.float32)).mean())


def assert_playable_still(path: Path, duration_seconds: float) -> None:
    info = probe_media(path)
    assert info.video_codec == "h264"
    assert info.audio_codec == "aac"
    assert info.pixel_format == "yuv420p"
    assert info.video_duration_seconds == pytest.approx(duration_seconds, abs=0.5)
    assert info.audio_duration_seconds == pytest.approx(duration_seconds, abs=0.5)
    assert info.width_pixels % 2 == 0
    assert info.height_pixels % 2 == 0


def leftovers(directory: Path, expected: set[str]) -> set[str]:
    return {path.name for path in directory.iterdir()} - expected


def is_running(pid: int) -> bool:
    # The renderer reaps FFmpeg, so a killed process leaves no /proc entry (not even a zombie).
    return Path(f"/proc/{pid}").exists()


async def test_quick_profile_is_720p_with_durations_matching_the_narration(
    assets: tuple[Path, Path, float], tmp_path: Path
) -> None:
    image_path, audio_path, duration_seconds = assets
    output_path = tmp_path / "quick.mp4"

    video = await render_still_video(
        ffmpeg_path=FFMPEG,
        image_path=image_path,
        audio_path=audio_path,
        duration_seconds=duration_seconds,
        output_path=output_path,
        profile=QUICK_PROFILE,
    )

    assert_playable_still(output_path, duration_seconds)
    assert (video.width_pixels, video.height_pixels) == (1080, 720)
    assert video.duration_seconds == pytest.approx(duration_seconds, abs=0.5)
    assert video.size_bytes == output_path.stat().st_size
    assert video.encoder == "libx264"
    assert mean_difference_from(image_path, middle_frame(output_path)) < 6
    with av.open(str(output_path)) as container:
        audio = container.streams.audio[0].codec_context
        assert (audio.sample_rate, audio.channels) == (22_050, 1)
        # The still is one frame; the speed of this whole design rests on that.
        assert sum(1 for packet in container.demux(video=0) if packet.size) == 1
    assert leftovers(tmp_path, {"quick.mp4"}) == set()


async def test_enhanced_profile_keeps_full_resolution_and_lays_a_quiet_bed_under_the_voice(
    assets: tuple[Path, Path, float], tmp_path: Path
) -> None:
    image_path, audio_path, duration_seconds = assets
    output_path = tmp_path / "enhanced.mp4"

    video = await render_still_video(
        ffmpeg_path=FFMPEG,
        image_path=image_path,
        audio_path=audio_path,
        duration_seconds=duration_seconds,
        output_path=output_path,
        profile=ENHANCED_PROFILE,
    )

    assert_playable_still(output_path, duration_seconds)
    assert (video.width_pixels, video.height_pixels) == IMAGE_SIZE
    assert mean_difference_from(image_path, middle_frame(output_path)) < 6
    with av.open(str(output_path)) as container:
        audio = container.streams.audio[0]
        assert (audio.codec_context.sample_rate, audio.codec_context.channels) == (48_000, 2)
        sound = np.concatenate([frame.to_ndarray() for frame in container.decode(audio)], axis=1)
    with wave.open(str(audio_path), "rb") as wav:
        voice = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768
    # In the narration's 2 s pause the video holds only the bed: quiet, but not dead silence.
    silent = np.flatnonzero(voice == 0)
    pause_middle = round(float(np.median(silent)) / 22_050 * 48_000)
    bed = sound[:, pause_middle - 24_000 : pause_middle + 24_000]
    speech = np.concatenate([sound[:, : pause_middle - 72_000], sound[:, pause_middle + 72_000 :]], axis=1)
    bed_dbfs = 10 * np.log10(np.mean(bed**2))
    speech_dbfs = 10 * np.log10(np.mean(speech**2))
    assert -70 < bed_dbfs < speech_dbfs - 25
    assert not np.allclose(bed[0], bed[1]), "the bed should differ between the two channels"


async def test_small_odd_sized_image_is_kept_at_its_size_rounded_to_even(tmp_path: Path) -> None:
    image_path = tmp_path / "small.png"
    Image.new("RGB", (301, 201), (40, 90, 120)).save(image_path)
    audio_path = tmp_path / "tone.wav"
    with wave.open(str(audio_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(22_050)
        tone = 3000 * np.sin(np.arange(22_050 * 3) * 2 * np.pi * 220 / 22_050)
        wav.writeframes(tone.astype("<i2").tobytes())

    video = await render_still_video(
        ffmpeg_path=FFMPEG,
        image_path=image_path,
        audio_path=audio_path,
        duration_seconds=3.0,
        output_path=tmp_path / "small.mp4",
        profile=QUICK_PROFILE,
    )

    assert (video.width_pixels, video.height_pixels) == (300, 200)
    assert_playable_still(video.path, 3.0)


async def test_without_an_image_a_calm_placeholder_fills_the_profile_size(
    assets: tuple[Path, Path, float], tmp_path: Path
) -> None:
    _, audio_path, duration_seconds = assets

    video = await render_still_video(
        ffmpeg_path=FFMPEG,
        image_path=None,
        audio_path=audio_path,
        duration_seconds=duration_seconds,
        output_path=tmp_path / "placeholder.mp4",
        profile=QUICK_PROFILE,
    )

    assert (video.width_pixels, video.height_pixels) == (1280, 720)
    assert_playable_still(video.path, duration_seconds)
    frame = middle_frame(video.path).astype(np.float32)
    assert 30 < frame.mean() < 200
    # A gradient: the top is darker than the bottom, and no row is a hard edge.
    rows = frame.mean(axis=(1, 2))
    assert rows[:50].mean() < rows[-50:].mean()
    assert np.abs(np.diff(rows)).max() < 3
    assert leftovers(tmp_path, {"placeholder.mp4"}) == set()


async def test_corrupt_image_is_an_encoding_error_and_leaves_no_file(
    assets: tuple[Path, Path, float], tmp_path: Path
) -> None:
    _, audio_path, duration_seconds = assets
    image_path = tmp_path / "broken.png"
    image_path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)

    with pytest.raises(EncodingError) as raised:
        await render_still_video(
            ffmpeg_path=FFMPEG,
            image_path=image_path,
            audio_path=audio_path,
            duration_seconds=duration_seconds,
            output_path=tmp_path / "out.mp4",
            profile=QUICK_PROFILE,
        )

    assert "quick video" in str(raised.value)
    assert "png" in raised.value.detail
    assert raised.value.detail not in str(raised.value)
    assert leftovers(tmp_path, {"broken.png"}) == set()


async def test_cancellation_kills_ffmpeg_and_removes_the_partial_file(
    assets: tuple[Path, Path, float], long_silence: Path, tmp_path: Path
) -> None:
    image_path, _, _ = assets
    # Records FFmpeg's process id, then becomes FFmpeg (exec keeps the id).
    pid_path = tmp_path / "ffmpeg.pid"
    wrapper = tmp_path / "ffmpeg"
    wrapper.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"open({str(pid_path)!r}, 'w').write(str(os.getpid()))\n"
        f"os.execv({FFMPEG!r}, [{FFMPEG!r}, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    output_dir = tmp_path / "out"
    output_dir.mkdir()

    render = asyncio.create_task(
        render_still_video(
            ffmpeg_path=str(wrapper),
            image_path=image_path,
            audio_path=long_silence,
            duration_seconds=600.0,
            output_path=output_dir / "video.mp4",
            profile=ENHANCED_PROFILE,
        )
    )
    await wait_until(lambda: bool(leftovers(output_dir, set())), what="FFmpeg to start writing")
    ffmpeg_pid = int(pid_path.read_text())
    assert is_running(ffmpeg_pid)
    render.cancel()

    with pytest.raises(asyncio.CancelledError):
        await render

    assert not is_running(ffmpeg_pid)
    assert leftovers(output_dir, set()) == set()


async def test_timeout_kills_ffmpeg_and_raises_stage_timeout(
    assets: tuple[Path, Path, float], long_silence: Path, tmp_path: Path
) -> None:
    image_path, _, _ = assets

    started = time.perf_counter()
    with pytest.raises(StageTimeoutError) as raised:
        await render_still_video(
            ffmpeg_path=FFMPEG,
            image_path=image_path,
            audio_path=long_silence,
            duration_seconds=600.0,
            output_path=tmp_path / "video.mp4",
            profile=ENHANCED_PROFILE,
            timeout_seconds=0.3,
        )

    assert time.perf_counter() - started < 2
    assert raised.value.timeout_seconds == 0.3
    assert leftovers(tmp_path, set()) == set()


async def test_unsupported_encoder_is_refused(assets: tuple[Path, Path, float], tmp_path: Path) -> None:
    image_path, audio_path, duration_seconds = assets

    with pytest.raises(InvalidInputError, match="encoder"):
        await render_still_video(
            ffmpeg_path=FFMPEG,
            image_path=image_path,
            audio_path=audio_path,
            duration_seconds=duration_seconds,
            output_path=tmp_path / "video.mp4",
            profile=QUICK_PROFILE,
            encoder="mpeg2video",
        )
    assert leftovers(tmp_path, set()) == set()


@pytest.mark.parametrize("profile", [QUICK_PROFILE, ENHANCED_PROFILE], ids=lambda profile: profile.name)
@pytest.mark.parametrize("encoder", ["libx264", "h264_nvenc", "h264_qsv", "h264_vaapi"])
def test_command_holds_one_frame_for_the_duration_and_reads_only_local_files(
    profile: RenderProfile, encoder: str
) -> None:
    arguments = still_video_arguments(
        image_path=Path("in.png"),
        audio_path=Path("in.wav"),
        duration_seconds=205.645,
        output_path=Path("out.mp4"),
        profile=profile,
        encoder=encoder,
    )

    assert "-loop" not in arguments
    assert "-shortest" not in arguments
    assert arguments[arguments.index("-framerate") + 1] == "200/41129"  # one frame lasting 205.645 s
    assert arguments[arguments.index("-t") + 1] == "205.645"
    inputs = [index for index, argument in enumerate(arguments) if argument == "-i"]
    assert len(inputs) == 2
    for index in inputs:
        assert "file,pipe" in arguments[index - 6 : index]
    assert arguments[-1] == "out.mp4"
    assert "+faststart" in arguments


def test_probing_something_that_is_not_media_is_an_encoding_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")

    with pytest.raises(EncodingError, match=r"notes\.mp4"):
        probe_media(path)


@pytest.mark.parametrize("duration_seconds", [0.0, -1.0, float("nan"), float("inf")])
async def test_duration_must_be_a_positive_finite_number(
    assets: tuple[Path, Path, float], tmp_path: Path, duration_seconds: float
) -> None:
    image_path, audio_path, _ = assets

    with pytest.raises(InvalidInputError, match="duration_seconds"):
        await render_still_video(
            ffmpeg_path=FFMPEG,
            image_path=image_path,
            audio_path=audio_path,
            duration_seconds=duration_seconds,
            output_path=tmp_path / "video.mp4",
            profile=QUICK_PROFILE,
        )
