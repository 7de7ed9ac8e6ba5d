"""The placeholder over an AAC narration, muxed in the media process (the QUICK video)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from services.media.errors import EncodingError
from services.media.live import SpokenSentence
from services.media.live_encoder import LiveEncoder
from services.media.speech import Narration
from services.media.still_mux import mux_placeholder_video
from services.media.subtitles import webvtt

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

    mux_placeholder_video(
        aac_path=aac,
        subtitles_path=subtitles,
        duration_seconds=6.0,
        output_path=output,
        height_pixels=720,
        x264_crf=14,
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


def test_sound_that_is_not_aac_is_an_encoding_error(tmp_path: Path) -> None:
    not_sound = tmp_path / "narration.aac"
    not_sound.write_bytes(b"not a narration at all" * 100)

    with pytest.raises(EncodingError):
        mux_placeholder_video(
            aac_path=not_sound,
            subtitles_path=None,
            duration_seconds=2.0,
            output_path=tmp_path / "quick.mp4",
            height_pixels=720,
            x264_crf=14,
            subtitle_language="eng",
        )
