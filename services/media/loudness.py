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
from collections.abc import Callable, Sequence

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
# What a voice goes through before it is heard (room.impulse_response): a linear filter, given by its
# impulse response at a sample rate, so that mastering applies it in the FFT that also weighs the loudness.
VoiceFilter = Callable[[int], npt.NDArray[np.float64]]
# A stretch of samples: the first, and the one after the last.
Span = tuple[int, int]
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


def master_speech(
    pcm: npt.NDArray[np.int16], sample_rate_hertz: int, *, voice_filter: VoiceFilter | None = None
) -> npt.NDArray[np.int16]:
    """Returns the speech gained to TARGET_LOUDNESS_LUFS with true peaks under TRUE_PEAK_CEILING_DBTP; with
    `voice_filter`, the speech through it (as long as it was), mastered as it will be heard.

    Blocking (a few milliseconds a sentence): run it in a thread from async code.
    """
    samples = pcm.astype(np.float64) / _FULL_SCALE
    heard, weighted, sounding = _heard_and_weighted(samples, sample_rate_hertz, voice_filter)
    sentence = _Sentence(heard, sample_rate_hertz, 10 ** (TRUE_PEAK_CEILING_DBTP / 20), weighted, sounding)
    if not math.isfinite(sentence.loudness):
        return pcm  # silence (a pause) has no loudness to set
    # The limiter takes loudness off the peaks, more the higher the gain: find the gain that lands on the
    # target by the secant method from the unlimited guess (loudness only grows with gain).
    gains = [_clamped_gain(TARGET_LOUDNESS_LUFS - sentence.loudness)]
    results = [sentence.loudness_at(gains[-1])]
    for _ in range(_MAKE_UP_ROUNDS):
        shortfall = TARGET_LOUDNESS_LUFS - results[-1]
        if abs(shortfall) <= _MAKE_UP_TOLERANCE_LU:
            break
        slope = 1.0
        if len(gains) > 1 and results[-1] != results[-2]:
            slope = (gains[-1] - gains[-2]) / (results[-1] - results[-2])
        gains.append(_clamped_gain(gains[-1] + shortfall * min(max(slope, 1.0), 4.0)))
        results.append(sentence.loudness_at(gains[-1]))
    # In place: a fresh array the length of the sentence costs more than the arithmetic on it.
    mastered = sentence.mastered_at(gains[-1])
    mastered *= _FULL_SCALE
    return np.clip(np.round(mastered, out=mastered), -32768, 32767, out=mastered).astype(np.int16)


class _Sentence:
    """A sentence measured once, so that each make-up round works a millisecond limiter block at a time.

    Both the K-weighting and the true peaks are linear in the signal, so each is computed once: a gain
    scales the peaks, and the limiter's slowly moving gain scales the weighted signal (its effect on the
    weighting's short response is far under a tenth of a decibel). A round then needs only each block's
    loudest peak and weighted energy, one value for a millisecond's samples (22 at 22.05 kHz): drawing the
    limiter's gain for every sample in every round, and measuring the result, was most of the mastering's
    time. The gain is drawn for every sample once, at the gain the rounds settle on: what is heard, and
    held under the ceiling, is that drawing, never the estimate.
    """

    def __init__(
        self,
        samples: npt.NDArray[np.float64],
        sample_rate_hertz: int,
        ceiling: float,
        weighted: npt.NDArray[np.float64] | None = None,
        sounding: Sequence[Span] | None = None,
    ) -> None:
        """`weighted`: the samples K-weighted, when the caller has them (_heard_and_weighted), taken over and
        squared in place; weighted here otherwise. `sounding`: the spans outside which the samples are
        silence, far enough apart that the true-peak interpolator reaches no span from another; all of
        them when not given."""
        self._samples = samples
        self._sounding = [(0, samples.size)] if sounding is None else sounding
        self._ceiling = ceiling
        self._sample_rate_hertz = sample_rate_hertz
        self._block = _limiter_block(sample_rate_hertz)
        self._block_starts = np.arange(0, samples.size, self._block)
        if weighted is None:
            weighted = _k_weighted(samples, sample_rate_hertz)
        energies = np.square(weighted, out=weighted)
        self._block_energies = np.add.reduceat(energies, self._block_starts)
        # The loudness blocks' edges fall inside limiter blocks: each edge keeps the energy from the start
        # of its limiter block up to it, so that every loudness block is measured to the sample.
        starts, ends = _block_spans(samples.size, sample_rate_hertz)
        edges = np.stack((starts, ends))
        self._edge_blocks = np.minimum(edges // self._block, max(0, self._block_starts.size - 1))
        head_samples = self._edge_blocks[..., np.newaxis] * self._block + np.arange(self._block)
        head_energies = energies[np.minimum(head_samples, max(0, samples.size - 1))]
        self._edge_heads = np.where(head_samples < edges[..., np.newaxis], head_energies, 0.0).sum(axis=-1)
        self._span_lengths = ends - starts
        # The loudness with no gain and no limiter (-inf for silence).
        self.loudness = self._gated_loudness(np.ones(self._block_starts.size))

    @functools.cached_property
    def _block_peaks(self) -> npt.NDArray[np.float64]:
        """The loudest true peak in each limiter block (not needed, and not measured, for silence), measured
        only where the sentence sounds: every interpolated point of silence is silence."""
        reach = _INTERPOLATOR_TAPS_PER_PHASE // 2
        peaks = np.zeros(self._samples.size)
        for start, end in self._sounding:
            first, last = max(0, start - reach), min(self._samples.size, end + reach)
            peaks[first:last] = _oversampled_peaks(self._samples[first:last])
        return np.asarray(np.maximum.reduceat(peaks, self._block_starts), dtype=np.float64)

    def loudness_at(self, gain_decibels: float) -> float:
        """The sentence's loudness with this gain and the limiter it calls for, the limiter's gain taken as
        level over each of its blocks: within a thousandth of a LU of the gain drawn for every sample over a
        sentence, a hundredth over a fragment under half a second."""
        gain = 10 ** (gain_decibels / 20)
        limiter = _limiter_block_gain(self._block_peaks * gain, self._sample_rate_hertz, self._ceiling)
        if limiter is None:
            return self.loudness + gain_decibels
        return self._gated_loudness((gain * limiter) ** 2)

    def mastered_at(self, gain_decibels: float) -> npt.NDArray[np.float64]:
        """The sentence with this gain and the limiter's gain drawn for every sample."""
        gain = 10 ** (gain_decibels / 20)
        limiter = _limiter_block_gain(self._block_peaks * gain, self._sample_rate_hertz, self._ceiling)
        if limiter is None:
            return self._samples * gain
        drawn = _drawn_gain(gain * limiter, self._samples.size, self._block)
        drawn *= self._samples
        return drawn

    def _gated_loudness(self, block_power_gains: npt.NDArray[np.float64]) -> float:
        """The gated loudness with each limiter block's weighted energy scaled by its power gain."""
        limited = np.concatenate(([0.0], np.cumsum(self._block_energies * block_power_gains)))
        before_edges = limited[self._edge_blocks] + block_power_gains[self._edge_blocks] * self._edge_heads
        return _gated_loudness((before_edges[1] - before_edges[0]) / self._span_lengths)


def _clamped_gain(decibels: float) -> float:
    return min(max(decibels, -MAX_GAIN_DECIBELS), MAX_GAIN_DECIBELS)


def _limiter_block(sample_rate_hertz: int) -> int:
    """The samples in one of the limiter's blocks: the gain moves over milliseconds, so it is worked out a
    millisecond block at a time (each block's loudest peak) and drawn between the blocks' centres."""
    return max(1, round(_LIMITER_BLOCK_SECONDS * sample_rate_hertz))


def _limiter_block_gain(
    block_peaks: npt.NDArray[np.float64], sample_rate_hertz: int, ceiling: float
) -> npt.NDArray[np.float64] | None:
    """The limiter's gain at the centre of each block, given each block's loudest true peak and the
    ceiling (linear); None when no peak needs it."""
    if block_peaks.size == 0 or block_peaks.max() <= ceiling:
        return None
    block = _limiter_block(sample_rate_hertz)
    needed = np.minimum(1.0, ceiling / np.maximum(block_peaks, 1e-12))
    attack = max(1, round(_LIMITER_ATTACK_SECONDS * sample_rate_hertz / block))
    hold = max(attack, round(_LIMITER_HOLD_SECONDS * sample_rate_hertz / block))
    # The least gain needed from `attack` blocks ahead to `hold` blocks behind, and one block more each way
    # (a sample's gain is drawn from its block's and a neighbour's); a raised-cosine average no wider than
    # the attack can then only lower it, so every peak stays under the ceiling.
    # Held for `attack` blocks past each end too, where the average reaches: a peak at an end needs it.
    unlimited = np.ones(hold + attack + 1)
    padded = np.concatenate((unlimited, needed, unlimited[: 2 * attack + 1]))
    held = _sliding_minimum(padded, attack + hold + 3)
    window = np.hanning(2 * attack + 3)[1:-1]
    reduction = np.convolve(1.0 - held, window / window.sum(), "valid")
    return np.asarray(1.0 - reduction, dtype=np.float64)


def _drawn_gain(block_gain: npt.NDArray[np.float64], size: int, block: int) -> npt.NDArray[np.float64]:
    """The gain for each of `size` samples, drawn straight between the blocks' centres (where each block's
    gain is) and level before the first centre and after the last.

    The centres are a block apart, so the samples from one centre to the next are a row of a matrix
    filled by broadcasting: a fifth of the time of np.interp over every sample."""
    first = block // 2  # the first sample at or after the first centre, (block - 1) / 2
    drawn = np.empty(first + block_gain.size * block)
    drawn[:first] = block_gain[0]
    drawn[first + (block_gain.size - 1) * block :] = block_gain[-1]
    between = drawn[first : first + (block_gain.size - 1) * block].reshape(-1, block)
    fractions = (np.arange(block) + first - (block - 1) / 2) / block
    np.multiply(np.diff(block_gain)[:, np.newaxis], fractions, out=between)
    between += block_gain[:-1, np.newaxis]
    return drawn[:size]


def fft_size(length: int) -> int:
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
    peaks = np.abs(samples)
    for phase in range(1, _OVERSAMPLING):
        # Output half + i of the full convolution is the point i + phase/4 (taps reach half - 1 samples
        # back, half ahead), the samples beyond the ends taken as silence with no padded copy made.
        interpolated = np.convolve(samples, taps[phase], mode="full")[half : half + samples.size]
        np.maximum(peaks, np.abs(interpolated, out=interpolated), out=peaks)
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
    starts, ends = _block_spans(weighted.size, sample_rate_hertz)
    cumulative = np.concatenate(([0.0], np.cumsum(weighted**2)))
    return np.asarray((cumulative[ends] - cumulative[starts]) / (ends - starts), dtype=np.float64)


def _block_spans(size: int, sample_rate_hertz: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The first sample of each gating block and the sample after its last."""
    block = round(_BLOCK_SECONDS * sample_rate_hertz)
    step = round(_STEP_SECONDS * sample_rate_hertz)
    if size < block:
        starts = np.zeros(1 if size else 0, dtype=np.intp)  # a shorter clip is one block, silence none
        return starts, starts + size
    starts = np.arange(0, size - block + 1, step)
    return starts, starts + block


def _lufs(powers: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    with np.errstate(divide="ignore"):
        return np.asarray(-0.691 + 10 * np.log10(powers), dtype=np.float64)


def _heard_and_weighted(
    samples: npt.NDArray[np.float64], sample_rate_hertz: int, voice_filter: VoiceFilter | None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[Span]]:
    """The samples through `voice_filter` (as long as they were; the samples themselves without one), those
    K-weighted as a new array, and the spans of the heard sound outside which both are silence.

    Both filters are linear and causal, so the heard sound's spectrum is weighted where it is, rather than
    transformed back and forward again: one forward FFT and two inverse ones instead of two of each (the
    K-weighting and the room took half of mastering's time). And both filters of silence are silence: a
    spoken sentence is two-fifths silence (make bench's script, the pauses between its phrases), so each
    span that sounds is transformed on its own, with the filters' ringing after it, and laid where it
    belongs: the same sums over three-fifths of the samples (a quarter less of mastering's time). Each FFT
    holds the whole of both convolutions of its span, so nothing wraps round."""
    if voice_filter is None or samples.size == 0:
        return samples, _k_weighted(samples, sample_rate_hertz), [(0, samples.size)]
    response = voice_filter(sample_rate_hertz)
    ringing = response.size + _k_weighting_response(sample_rate_hertz).size - 2
    heard = np.zeros(samples.size)
    weighted = np.zeros(samples.size)
    heard_spans: list[Span] = []
    # Spans closer than the ringing share a transform (a silence that short costs less than a second one),
    # and the true-peak interpolator's width more keeps them apart for _Sentence._block_peaks.
    for start, end in sounding_spans(samples, ringing + _INTERPOLATOR_TAPS_PER_PHASE):
        size = span_fft_size(end - start + ringing)
        spectrum = np.fft.rfft(samples[start:end], size)
        spectrum *= _response_spectrum(voice_filter, sample_rate_hertz, size)
        # The heard sound rings for the voice filter's length, the weighted one for both filters'.
        heard_end = min(samples.size, end + response.size - 1)
        heard[start:heard_end] = np.fft.irfft(spectrum, size)[: heard_end - start]
        spectrum *= _k_weighting_spectrum(sample_rate_hertz, size)
        weighted_end = min(samples.size, end + ringing)
        weighted[start:weighted_end] = np.fft.irfft(spectrum, size)[: weighted_end - start]
        heard_spans.append((start, heard_end))
    return heard, weighted, heard_spans


def sounding_spans(samples: npt.NDArray[np.floating], least_silence: int) -> list[Span]:
    """The spans (first sample, the sample after the last) outside which `samples` are exactly zero, with
    no run of fewer than `least_silence` zeros between two of them."""
    sounding = np.flatnonzero(samples)
    if sounding.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sounding) > least_silence)
    starts = np.concatenate((sounding[:1], sounding[breaks + 1]))
    ends = np.concatenate((sounding[breaks] + 1, sounding[-1:] + 1))
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


# FFT sizes for spans: 2^k times one of these (all 2, 3 and 5 only, so as fast as a power of two), at most a
# fifth apart. Few sizes, so that the filters' spectra are transformed once per size and kept.
_SPAN_FFT_FACTORS = (16, 18, 20, 24, 25, 27, 30)


def span_fft_size(length: int) -> int:
    """The smallest FFT size of the span ladder (_SPAN_FFT_FACTORS) that is at least `length`."""
    scale = 1
    while _SPAN_FFT_FACTORS[-1] * scale < length:
        scale *= 2
    return next(factor * scale for factor in _SPAN_FFT_FACTORS if factor * scale >= length)


@functools.lru_cache(maxsize=64)
def _response_spectrum(
    voice_filter: VoiceFilter, sample_rate_hertz: int, size: int
) -> npt.NDArray[np.complex128]:
    """A voice filter's response transformed for an FFT of `size` (one of the span ladder's)."""
    return np.fft.rfft(voice_filter(sample_rate_hertz), size)


def _k_weighted(samples: npt.NDArray[np.float64], sample_rate_hertz: int) -> npt.NDArray[np.float64]:
    """The K-weighting of BS.1770 (a high shelf for the head, a high-pass below 38 Hz), applied as its
    impulse response through an FFT convolution: no SciPy, and numpy's FFT is fast on whole sentences."""
    if samples.size == 0:
        return samples
    size = fft_size(samples.size + sample_rate_hertz // 8 - 1)
    spectrum = np.fft.rfft(samples, size) * _k_weighting_spectrum(sample_rate_hertz, size)
    return np.asarray(np.fft.irfft(spectrum, size)[: samples.size], dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _k_weighting_spectrum(sample_rate_hertz: int, size: int) -> npt.NDArray[np.complex128]:
    """The K-weighting's response transformed for an FFT of `size` (one of the span ladder's, or a whole
    clip's for integrated_loudness)."""
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
    return np.array(biquad(biquad(impulse, shelf_b, shelf_a), pass_b, pass_a))


def biquad(signal: list[float], b: tuple[float, float, float], a: tuple[float, float]) -> list[float]:
    """`signal` through one biquad (a0 normalised to 1): for impulse responses, a few thousand samples."""
    output = []
    x1 = x2 = y1 = y2 = 0.0
    for x in signal:
        y = b[0] * x + b[1] * x1 + b[2] * x2 - a[0] * y1 - a[1] * y2
        output.append(y)
        x1, x2, y1, y2 = x, x1, y, y1
    return output
