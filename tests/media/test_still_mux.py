"""A still over an AAC narration, muxed in the media process: the placeholder (the QUICK video) and an image
(the ENHANCED video)."""

from __future__ import annotations

from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from services.media.errors import EncodingError
from services.media.live import SpokenSentence
from services.media.live_encoder import LiveEncoder
from services.media.speech import Narration
from services.media.still_mux import image_picture, mux_still_video, placeholder_picture
from services.media.subtitles import webvtt
from services.media.video import (
    ENHANCED_PROFILE,
    QUICK_PROFILE,
    copying_sound,
    probe_media,
    render_still_video,
    run_ffmpeg,
    still_video_arguments,
)

RATE = 24_000


def _narration_aac(work_dir: Path, seconds: float) -> Path:
    """A narration's AAC as the live encoder makes it: a tone, over the bed."""
    times = np.arange(round(seconds * RATE)) / RATE
    tone = (0.2 * np.sin(2 * np.pi * 220 * times) * 32767).astype("<i2")
    encoder = LiveEncoder(work_dir, RATE)
    try:
        encoder.write(Narration(tone.tobytes(), RATE), is_last=True)
        encoder.close()
    finally:
        encoder.abandon()
    return encoder.aac_path


def test_the_placeholder_is_held_over_the_copied_sound_with_the_subtitles(tmp_path: Path) -> None:
    aac = _narration_aac(tmp_path, 6.0)
    subtitles = tmp_path / "subtitles.vtt"
    subtitles.write_text(
        webvtt([SpokenSentence("Breathe in.", 0.0, 2.5), SpokenSentence("And let it go, gently.", 4.0, 6.0)])
    )
    output = tmp_path / "quick.mp4"

    muxed = mux_still_video(
        picture=placeholder_picture(720, 14),
        aac_path=aac,
        subtitles_path=subtitles,
        duration_seconds=6.0,
        output_path=output,
        subtitle_language="eng",
    )

    with av.open(str(aac)) as narration:
        narrated = [bytes(p) for p in narration.demux(narration.streams.audio[0]) if p.size]
    with av.open(str(output)) as video:
        picture, sound, text = video.streams.video[0], video.streams.audio[0], video.streams.subtitles[0]
        assert (picture.codec_context.width, picture.codec_context.height) == (1280, 720)
        assert picture.frames == 1
        assert picture.duration is not None and picture.time_base is not None
        assert float(picture.duration * picture.time_base) == pytest.approx(6.0)
        assert picture.codec_context.colorspace == 1  # BT.709, as the tags FFmpeg's renders wrote
        assert text.codec_context.name == "mov_text"
        assert text.metadata["language"] == "eng"
        # Read while the file is open: a packet outlives its container only as freed memory.
        packets = [(p.stream.type, bytes(p), p.pts, p.time_base) for p in video.demux(sound, text)]
    # The sound is the narration's own packets, copied (an MP4 holds them without their ADTS headers).
    copied = [data for kind, data, _, _ in packets if kind == "audio" and data]
    assert len(copied) == len(narrated)
    assert all(adts.endswith(raw) for adts, raw in zip(narrated, copied, strict=True))
    cues = [
        (round(float((pts or 0) * (time_base or 0)), 3), data[2:].decode())
        for kind, data, pts, time_base in packets
        if kind == "subtitle" and len(data) > 2
    ]
    assert cues == [(0.0, "Breathe in."), (4.0, "And let it go, gently.")]
    # What the mux reports (the render trusts it rather than opening the file again) is what the file holds.
    probed = probe_media(output)
    assert (muxed.width_pixels, muxed.height_pixels) == (probed.width_pixels, probed.height_pixels)
    assert muxed.duration_seconds == pytest.approx(probed.duration_seconds, abs=0.001)


def test_the_video_lasts_as_long_as_its_longest_track(tmp_path: Path) -> None:
    """The still held a second past the narration's sound: the video is the still's length, as a probe
    reads it; and the sound past the still's end: the sound's."""
    aac = _narration_aac(tmp_path, 3.0)

    for duration_seconds in (4.0, 2.0):
        output = tmp_path / f"quick-{duration_seconds}.mp4"
        muxed = mux_still_video(
            picture=placeholder_picture(720, 14),
            aac_path=aac,
            subtitles_path=None,
            duration_seconds=duration_seconds,
            output_path=output,
            subtitle_language="eng",
        )

        probed = probe_media(output)
        assert muxed.duration_seconds == pytest.approx(probed.duration_seconds, abs=0.001)
        assert muxed.duration_seconds == pytest.approx(max(duration_seconds, 3.0), abs=0.1)


@pytest.mark.parametrize("kind", ["not AAC at all", "cut off after its first header"])
def test_a_narration_with_no_sound_in_it_is_an_encoding_error(tmp_path: Path, kind: str) -> None:
    """Bytes that are no AAC, and a narration cut off after its first frame's header (FFmpeg opens it, and
    it holds no packet), are refused: what the probe of the finished video, which the render no longer makes
    after this mux, checked (a video with no sound)."""
    narration = tmp_path / "narration.aac"
    if kind == "not AAC at all":
        narration.write_bytes(b"not a narration at all" * 100)
    else:
        # An ADTS header is 7 bytes.
        narration.write_bytes(_narration_aac(tmp_path, 1.0).read_bytes()[:7])

    with pytest.raises(EncodingError):
        mux_still_video(
            picture=placeholder_picture(720, 14),
            aac_path=narration,
            subtitles_path=None,
            duration_seconds=2.0,
            output_path=tmp_path / "quick.mp4",
            subtitle_language="eng",
        )


def _picture(path: Path, size: tuple[int, int]) -> Path:
    """A PNG with detail at every scale (gradients and noise), as a painting has."""
    width, height = size
    rows, columns = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(7).integers(0, 10, (height, width, 3))
    rgb = np.stack((columns * 200 // width, rows * 200 // height, (rows + columns) % 256), axis=-1) + noise
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    return path


def _middle_picture(path: Path) -> npt.NDArray[np.float32]:
    with av.open(str(path)) as video:
        stream = video.streams.video[0]
        frame = next(video.decode(stream))
        return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.float32)


async def test_an_image_of_a_size_this_system_makes_is_encoded_here_as_ffmpeg_renders_it(
    tmp_path: Path,
) -> None:
    """The ENHANCED video of a live narration needs no FFmpeg process (none exists at the path given), and
    its picture is FFmpeg's own render of the same image, within a rounding of the colour conversion."""
    aac = _narration_aac(tmp_path, 4.0)
    image = _picture(tmp_path / "image.png", (1792, 1024))
    profile = copying_sound(ENHANCED_PROFILE)

    video = await render_still_video(
        ffmpeg_path=str(tmp_path / "no-ffmpeg-here"),
        image_path=image,
        audio_path=aac,
        duration_seconds=4.0,
        output_path=tmp_path / "enhanced.mp4",
        profile=profile,
        is_audio_copied=True,
    )

    assert (video.width_pixels, video.height_pixels) == (1792, 1024)
    info = probe_media(video.path)
    assert (info.video_codec, info.audio_codec, info.pixel_format) == ("h264", "aac", "yuv420p")
    assert info.video_duration_seconds == pytest.approx(4.0, abs=0.05)
    by_ffmpeg = tmp_path / "by-ffmpeg.mp4"
    arguments = still_video_arguments(
        image_path=image,
        audio_path=aac,
        duration_seconds=4.0,
        output_path=by_ffmpeg,
        profile=profile,
        encoder="libx264",
        is_audio_copied=True,
    )
    assert (await run_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe(), arguments, timeout_seconds=60)).return_code == 0
    here, there = _middle_picture(video.path), _middle_picture(by_ffmpeg)
    assert here.shape == there.shape
    assert float(np.abs(here - there).mean()) < 1.0
    with Image.open(image) as source:
        assert float(np.abs(here - np.asarray(source.convert("RGB"), dtype=np.float32)).mean()) < 6


def test_an_image_ffmpeg_must_scale_is_left_to_it(tmp_path: Path) -> None:
    """Only the sizes this system makes, at their own size, are encoded here: FFmpeg scales the rest."""
    odd = _picture(tmp_path / "odd.png", (301, 201))
    landscape = _picture(tmp_path / "landscape.png", (1792, 1024))

    assert image_picture(odd, None, 14) is None
    # The QUICK video is at most 720 pixels tall.
    assert image_picture(landscape, QUICK_PROFILE.max_height_pixels, 14) is None
    assert image_picture(landscape, None, 14) is not None


def test_an_image_whose_pictures_are_damaged_is_an_encoding_error(tmp_path: Path) -> None:
    """Its header says a size this system makes; what follows does not decode."""
    damaged = bytearray(_picture(tmp_path / "image.png", (1024, 1024)).read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 3000] = bytes(value ^ 0x5A for value in damaged[middle : middle + 3000])
    (tmp_path / "image.png").write_bytes(bytes(damaged))

    with pytest.raises(EncodingError):
        image_picture(tmp_path / "image.png", None, 14)
    # A file that is no image at all announces no size: FFmpeg is left to refuse it.
    (tmp_path / "other.png").write_bytes(b"not an image at all" * 100)
    assert image_picture(tmp_path / "other.png", None, 14) is None
