"""The small warm room the ENHANCED voice is heard in: rumble out below RUMBLE_CUTOFF_HERTZ, and two faint
early reflections. FFmpeg applies it to a whole narration (video.ENHANCED_PROFILE's filter); the live
narration's mastering applies it (impulse_response) a sentence at a time, in the FFT that weighs the
sentence's loudness, so that the true-peak limiter sees the voice as it will be heard: both filters raise a
voice's peaks (by up to 2 dB, measured), which, applied after mastering, took the live sound over its
ceiling."""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from services.media.loudness import biquad

RUMBLE_CUTOFF_HERTZ = 70
# Each reflection's delay in milliseconds and its gain.
REFLECTIONS = ((45, 0.12), (83, 0.07))


def ffmpeg_filter() -> str:
    """The room as an FFmpeg audio filter chain (a two-pole Butterworth high-pass, as FFmpeg's default)."""
    delays = "|".join(str(delay) for delay, _ in REFLECTIONS)
    gains = "|".join(str(gain) for _, gain in REFLECTIONS)
    return f"highpass=f={RUMBLE_CUTOFF_HERTZ},aecho=in_gain=1:out_gain=1:delays={delays}:decays={gains}"


@functools.cache
def impulse_response(sample_rate_hertz: int) -> npt.NDArray[np.float64]:
    """The room as one linear filter, a voice filter for loudness.master_speech: the high-pass's response,
    and the same again at each reflection's delay and gain (a tenth of a second and 83 ms long)."""
    high_pass = _high_pass_response(sample_rate_hertz)
    delays = [round(delay * sample_rate_hertz / 1000) for delay, _ in REFLECTIONS]
    response = np.zeros(high_pass.size + max(delays))
    response[: high_pass.size] = high_pass
    for delay, (_, gain) in zip(delays, REFLECTIONS, strict=True):
        response[delay : delay + high_pass.size] += gain * high_pass
    response.flags.writeable = False  # shared by every caller
    return response


@functools.cache
def _high_pass_response(sample_rate_hertz: int) -> npt.NDArray[np.float64]:
    """The high-pass's impulse response, cut after a tenth of a second (it has decayed below 1e-9 by then),
    from the same bilinear-transformed biquad as FFmpeg's `highpass` (Audio EQ Cookbook, Q = 1/sqrt 2)."""
    omega = 2 * math.pi * RUMBLE_CUTOFF_HERTZ / sample_rate_hertz
    alpha = math.sin(omega) / (2 * (1 / math.sqrt(2)))
    a0 = 1 + alpha
    b = ((1 + math.cos(omega)) / 2 / a0, -(1 + math.cos(omega)) / a0, (1 + math.cos(omega)) / 2 / a0)
    a = (-2 * math.cos(omega) / a0, (1 - alpha) / a0)
    impulse = [1.0] + [0.0] * (sample_rate_hertz // 10 - 1)
    return np.array(biquad(impulse, b, a))
