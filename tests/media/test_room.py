"""The room applied a sentence at a time in Python (live narration, through its impulse response) is the
room FFmpeg applies to a whole narration (ENHANCED renders from a WAV)."""

from __future__ import annotations

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from services.media.room import REFLECTIONS, ffmpeg_filter, impulse_response

RATE = 24_000


def _through_ffmpeg(samples: np.ndarray) -> np.ndarray:
    result = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *("-nostdin", "-hide_banner", "-loglevel", "error"),
            *("-f", "f64le", "-ar", str(RATE), "-ac", "1", "-i", "pipe:0"),
            *("-af", ffmpeg_filter(), "-f", "f64le", "-c:a", "pcm_f64le", "pipe:1"),
        ],
        input=samples.astype("<f8").tobytes(),
        capture_output=True,
        check=True,
    )
    return np.frombuffer(result.stdout, dtype="<f8")[: samples.size]


def in_room(samples: np.ndarray) -> np.ndarray:
    """The samples through the room's impulse response, as long as they were."""
    return np.convolve(samples, impulse_response(RATE))[: samples.size]


def test_the_room_sounds_as_ffmpeg_makes_it() -> None:
    rng = np.random.default_rng(3)
    # A voice-like test signal: noise shaped by a slow envelope, with some rumble under it (quiet enough that
    # FFmpeg, which clips at full scale, does not).
    t = np.arange(2 * RATE) / RATE
    samples = 0.1 * rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    samples += 0.1 * np.sin(2 * np.pi * 30 * t)

    ours = in_room(samples)
    theirs = _through_ffmpeg(samples)

    assert ours.size == samples.size
    assert np.max(np.abs(ours - theirs)) < 1e-4
    # And it is a room: the rumble is gone and the signal has changed.
    assert np.max(np.abs(ours - samples)) > 0.05


def test_a_click_comes_back_as_its_reflections() -> None:
    click = np.zeros(RATE // 5)
    click[100] = 1.0

    heard = in_room(click)

    for delay_milliseconds, gain in REFLECTIONS:
        at = 100 + round(delay_milliseconds * RATE / 1000)
        assert heard[at] == pytest.approx(gain * heard[100], rel=0.05)
