"""Mastering spoken sentences as they are narrated: each brought to the spoken-word loudness (ITU-R BS.1770
integrated, K-weighted and gated) and held under a true-peak ceiling by a look-ahead limiter.

Narration is mastered a sentence at a time, before it is encoded, so the live preview and the QUICK video
(which copies the live AAC) are mastered with no second pass. Every sentence is brought to the target
itself, so the whole narration, which is nothing but such sentences and silence, measures the target too.
FFmpeg's `loudnorm` is no use here: it is wrong on clips under about three seconds.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

# The spoken-word convention (podcasts, audiobooks, the big streaming platforms' speech guidance).
TARGET_LOUDNESS_LUFS = -16.0
# Half a decibel under the −1.5 dBTP the videos promise: the AAC encoder's quantisation lifts peaks a little.
TRUE_PEAK_CEILING_DBTP = -2.0
# The most a sentence is raised or lowered: a voice far outside this range is broken, not quiet.
MAX_GAIN_DECIBELS = 30.0
_ABSOLUTE_GATE_LUFS = -70.0
_RELATIVE_GATE_LU = -10.0
_BLOCK_SECONDS = 0.4
_STEP_SECONDS = 0.1
# True peak is estimated at four times the sample rate (BS.1770-4, Annex 2).
_OVERSAMPLING = 4
_INTERPOLATOR_TAPS_PER_PHASE = 16
# The limiter reaches full reduction within its attack before a peak and holds it for the release after,
# then recovers along the same raised-cosine: smooth enough not to distort a voice's low notes.
_LIMITER_ATTACK_SECONDS = 0.005
_LIMITER_HOLD_SECONDS = 0.05
_LIMITER_BLOCK_SECONDS = 0.001
_FULL_SCALE = 32768.0
_MAKE_UP_ROUNDS = 5
_MAKE_UP_TOLERANCE_LU = 0.05


def integrated_loudness(samples: npt.NDArray[np.floating], sample_rate_hertz: int) -> float:
    """Integrated loudness of mono audio in [-1, 1], in LUFS (BS.1770-4 gating); -inf for silence."""
    weighted = _k_weighted(np.asarray(samples, dtype=np.float64), sample_rate_hertz)
    return _gated_loudness(_block_powers(weighted, sample_rate_hertz))


def _gated_loudness(powers: npt.NDArray[np.float64]) -> float:
    """The gated loudness of K-weighted blocks' mean squares, in LUFS; -inf when all are under the gate."""
    powers = powers[_lufs(powers) > _ABSOLUTE_GATE_LUFS]
    if powers.size == 0:
        return -math.inf
    relative_gate = _lufs(np.array([powers.mean()]))[0] + _RELATIVE_GATE_LU
    gated = powers[_lufs(powers) > relative_gate]
    return float(_lufs(np.array([gated.mean()]))[0])


def true_peak_dbtp(samples: npt.NDArray[np.floating], sample_rate_hertz: int) -> float:
    """The highest peak between and at the samples (4× oversampled), in dB relative to full scale."""
    peak = float(_oversampled_peaks(np.asarray(samples, dtype=np.float64)).max(initial=0.0))
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def master_speech(pcm: npt.NDArray[np.int16], sample_rate_hertz: int) -> npt.NDArray[np.int16]:
    """Returns the speech gained to TARGET_LOUDNESS_LUFS with true peaks under TRUE_PEAK_CEILING_DBTP.

    Blocking (a few milliseconds a sentence): run it in a thread from async code.
    """
    samples = pcm.astype(np.float64) / _FULL_SCALE
    # Both the K-weighting and the true peaks are linear in the signal, so each is computed once: a gain
    # scales the peaks, and the limiter's slowly moving gain scales the weighted signal (its effect on the
    # weighting's short response is far under a tenth of a decibel).
    weighted = _k_weighted(samples, sample_rate_hertz)
    loudness = _gated_loudness(_block_powers(weighted, sample_rate_hertz))
    if not math.isfinite(loudness):
        return pcm  # silence (a pause) has no loudness to set
    peaks = _oversampled_peaks(samples)

    def mastered_at(gain_decibels: float) -> tuple[npt.NDArray[np.float64], float]:
        gain = 10 ** (gain_decibels / 20)
        envelope = _limiter_gain(peaks * gain, sample_rate_hertz)
        if envelope is None:
            return samples * gain, loudness + gain_decibels
        powers = _block_powers(weighted * (gain * envelope), sample_rate_hertz)
        return samples * (gain * envelope), _gated_loudness(powers)

    # The limiter takes loudness off the peaks, more the higher the gain: find the gain that lands on the
    # target by the secant method from the unlimited guess (loudness only grows with gain).
    gains = [_clamped_gain(TARGET_LOUDNESS_LUFS - loudness)]
    mastered, result = mastered_at(gains[-1])
    results = [result]
    for _ in range(_MAKE_UP_ROUNDS):
        shortfall = TARGET_LOUDNESS_LUFS - results[-1]
        if abs(shortfall) <= _MAKE_UP_TOLERANCE_LU:
            break
        slope = 1.0
        if len(gains) > 1 and results[-1] != results[-2]:
            slope = (gains[-1] - gains[-2]) / (results[-1] - results[-2])
        gains.append(_clamped_gain(gains[-1] + shortfall * min(max(slope, 1.0), 4.0)))
        mastered, result = mastered_at(gains[-1])
        results.append(result)
    return np.asarray(np.clip(np.round(mastered * _FULL_SCALE), -32768, 32767), dtype=np.int16)


def _clamped_gain(decibels: float) -> float:
    return min(max(decibels, -MAX_GAIN_DECIBELS), MAX_GAIN_DECIBELS)


def _limiter_gain(peaks: npt.NDArray[np.float64], sample_rate_hertz: int) -> npt.NDArray[np.float64] | None:
    """The limiter's gain for each sample, given the signal's true peaks; None when no peak needs it.

    The gain moves over milliseconds, so it is worked out a millisecond block at a time (each block's
    loudest peak) and drawn between the blocks' centres: a fortieth of the work of doing it per sample,
    which is what the mastering spent most of its time on."""
    ceiling = 10 ** (TRUE_PEAK_CEILING_DBTP / 20)
    if peaks.size == 0 or peaks.max() <= ceiling:
        return None
    block = max(1, round(_LIMITER_BLOCK_SECONDS * sample_rate_hertz))
    blocks = -(-peaks.size // block)
    block_peaks = np.pad(peaks, (0, blocks * block - peaks.size)).reshape(blocks, block).max(axis=1)
    needed = np.minimum(1.0, ceiling / np.maximum(block_peaks, 1e-12))
    attack = max(1, round(_LIMITER_ATTACK_SECONDS * sample_rate_hertz / block))
    hold = max(attack, round(_LIMITER_HOLD_SECONDS * sample_rate_hertz / block))
    # The least gain needed from `attack` blocks ahead to `hold` blocks behind, and one block more each way
    # (a sample's gain is drawn from its block's and a neighbour's); a raised-cosine average no wider than
    # the attack can then only lower it, so every peak stays under the ceiling.
    held = _sliding_minimum(np.pad(needed, (hold + 1, attack + 1), constant_values=1.0), attack + hold + 3)
    window = np.hanning(2 * attack + 3)[1:-1]
    reduction = np.convolve(np.pad(1.0 - held, attack, constant_values=0.0), window / window.sum(), "valid")
    centres = (np.arange(blocks) + 0.5) * block - 0.5
    return np.asarray(np.interp(np.arange(peaks.size), centres, 1.0 - reduction[:blocks]), dtype=np.float64)


def _fft_size(length: int) -> int:
    """The smallest length at least `length` whose only prime factors are 2, 3 and 5: an FFT as fast as a
    power of two's, and up to half its size."""
    best = 1 << (length - 1).bit_length()
    fives = 1
    while fives < best:
        threes = fives
        while threes < best:
            candidate = threes << max(0, (length - 1) // threes).bit_length()
            best = min(best, candidate)
            threes *= 3
        fives *= 5
    return best


def _sliding_minimum(values: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    """Minimum over each run of `width` values (the result is width - 1 shorter), by doubling spans."""
    span = 1
    minima = values
    while span * 2 <= width:
        minima = np.minimum(minima[:-span], minima[span:])
        span *= 2
    rest = width - span
    return np.minimum(minima[: minima.size - rest], minima[rest:]) if rest else minima


def _oversampled_peaks(samples: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """For each sample, the largest magnitude of it and the three interpolated points after it."""
    taps = _interpolator()
    half = _INTERPOLATOR_TAPS_PER_PHASE // 2
    # Aligned so that output i is the point i + phase/4: taps reach half - 1 samples back, half ahead.
    padded = np.pad(samples, (half - 1, half))
    peaks = np.abs(samples)
    for phase in range(1, _OVERSAMPLING):
        interpolated = np.convolve(padded, taps[phase], mode="valid")
        np.maximum(peaks, np.abs(interpolated), out=peaks)
    return peaks


@functools.cache
def _interpolator() -> tuple[npt.NDArray[np.float64], ...]:
    """The polyphase components of a Kaiser-windowed sinc: phase p interpolates at p/4 past a sample."""
    half = _INTERPOLATOR_TAPS_PER_PHASE // 2
    phases = []
    for phase in range(_OVERSAMPLING):
        # Distances from the interpolated point to the samples n - half + 1 ... n + half.
        offsets = np.arange(-half + 1, half + 1) - phase / _OVERSAMPLING
        window = np.i0(8.0 * np.sqrt(np.clip(1 - (offsets / half) ** 2, 0, 1))) / np.i0(8.0)
        taps = np.sinc(offsets) * window
        # np.convolve flips the kernel: stored from the latest sample to the earliest, unity gain at DC.
        phases.append((taps / taps.sum())[::-1].copy())
    return tuple(phases)


def _block_powers(weighted: npt.NDArray[np.float64], sample_rate_hertz: int) -> npt.NDArray[np.float64]:
    """Mean square of each 400 ms block, the blocks 100 ms apart; a shorter clip is one block."""
    block = round(_BLOCK_SECONDS * sample_rate_hertz)
    step = round(_STEP_SECONDS * sample_rate_hertz)
    if weighted.size == 0:
        return np.zeros(0)
    if weighted.size < block:
        return np.array([np.mean(weighted**2)])
    cumulative = np.concatenate(([0.0], np.cumsum(weighted**2)))
    starts = np.arange(0, weighted.size - block + 1, step)
    return np.asarray((cumulative[starts + block] - cumulative[starts]) / block, dtype=np.float64)


def _lufs(powers: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    with np.errstate(divide="ignore"):
        return np.asarray(-0.691 + 10 * np.log10(powers), dtype=np.float64)


def _k_weighted(samples: npt.NDArray[np.float64], sample_rate_hertz: int) -> npt.NDArray[np.float64]:
    """The K-weighting of BS.1770 (a high shelf for the head, a high-pass below 38 Hz), applied as its
    impulse response through an FFT convolution: no SciPy, and numpy's FFT is fast on whole sentences."""
    if samples.size == 0:
        return samples
    size = _fft_size(samples.size + sample_rate_hertz // 8 - 1)
    spectrum = np.fft.rfft(samples, size) * _k_weighting_spectrum(sample_rate_hertz, size)
    return np.asarray(np.fft.irfft(spectrum, size)[: samples.size], dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _k_weighting_spectrum(sample_rate_hertz: int, size: int) -> npt.NDArray[np.complex128]:
    """The K-weighting's response transformed for an FFT of `size` (sentences come in a few sizes)."""
    return np.fft.rfft(_k_weighting_response(sample_rate_hertz), size)


@functools.cache
def _k_weighting_response(sample_rate_hertz: int) -> npt.NDArray[np.float64]:
    """The impulse response of the two K-weighting biquads at this rate, cut where it has decayed (the
    38 Hz high-pass rings longest: under 1e-9 of its start after an eighth of a second)."""
    # The filters' analogue prototypes, as libebur128 derives them for any sample rate.
    k = math.tan(math.pi * 1681.974450955533 / sample_rate_hertz)
    quality = 0.7071752369554196
    high_gain = 10 ** (3.999843853973347 / 20)
    band_gain = high_gain**0.4996667741545416
    a0 = 1 + k / quality + k * k
    shelf_b = (
        (high_gain + band_gain * k / quality + k * k) / a0,
        2 * (k * k - high_gain) / a0,
        (high_gain - band_gain * k / quality + k * k) / a0,
    )
    shelf_a = (2 * (k * k - 1) / a0, (1 - k / quality + k * k) / a0)
    k = math.tan(math.pi * 38.13547087602444 / sample_rate_hertz)
    quality = 0.5003270373238773
    a0 = 1 + k / quality + k * k
    pass_b = (1.0, -2.0, 1.0)
    pass_a = (2 * (k * k - 1) / a0, (1 - k / quality + k * k) / a0)
    length = sample_rate_hertz // 8
    impulse = [1.0] + [0.0] * (length - 1)
    return np.array(_biquad(_biquad(impulse, shelf_b, shelf_a), pass_b, pass_a))


def _biquad(signal: list[float], b: tuple[float, float, float], a: tuple[float, float]) -> list[float]:
    output = []
    x1 = x2 = y1 = y2 = 0.0
    for x in signal:
        y = b[0] * x + b[1] * x1 + b[2] * x2 - a[0] * y1 - a[1] * y2
        output.append(y)
        x1, x2, y1, y2 = x, x1, y, y1
    return output
