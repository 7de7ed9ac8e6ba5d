"""Cutting one spoken request back into its sentences: at the pauses a voice leaves between them.

Several sentences are spoken in one request (far fewer round trips than one each), but the narration needs
each sentence's own audio: its timing for the subtitles and the transcript's marks, its own mastering, and
the pause marks that follow it. A voice leaves a breath between sentences; the cut goes through the middle
of the breath nearest to where the sentence should end, judged by its share of the characters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_FRAME_SECONDS = 0.01
# A breath between sentences is at least this long; a stop inside a word (a plosive) is shorter.
_MIN_GAP_SECONDS = 0.12
# Quieter than this under the loudest frame is a gap; never above -60 dBFS, so room noise is not speech.
_GAP_UNDER_LOUDEST_DECIBELS = 35.0
_GAP_FLOOR = 32768 * 10 ** (-60 / 20)


def cut_at_gaps(pcm: npt.NDArray[np.int16], sample_rate_hertz: int, weights: Sequence[int]) -> list[int]:
    """Where to cut `pcm` into len(weights) pieces, as sample offsets (len(weights) - 1 of them, rising).

    `weights` say how long each piece should be relative to the others (their characters): each cut goes to
    the gap nearest to where that share ends, and to that share's end itself when there is no gap left.
    """
    if len(weights) < 2:
        return []
    if any(weight <= 0 for weight in weights):
        raise ValueError("every piece must have a positive weight")
    frame = max(1, round(_FRAME_SECONDS * sample_rate_hertz))
    frames = pcm.size // frame
    total = sum(weights)
    expected = [frames * sum(weights[: index + 1]) / total for index in range(len(weights) - 1)]
    gaps = _gap_centres(pcm[: frames * frame], frame, frames, sample_rate_hertz)
    cuts: list[float] = []
    for index, target in enumerate(expected):
        after = cuts[-1] if cuts else 0.0
        # Leave a gap for every cut still to come after this one, when there are enough.
        still_to_come = len(expected) - index - 1
        usable = [gap for gap in gaps if gap > after]
        usable = usable[: len(usable) - still_to_come] if len(usable) > still_to_come else []
        if usable:
            cuts.append(min(usable, key=lambda gap: abs(gap - target)))
        else:
            cuts.append(max(target, after + 1))
    return [min(pcm.size, round(cut * frame)) for cut in cuts]


def _gap_centres(
    samples: npt.NDArray[np.int16], frame: int, frames: int, sample_rate_hertz: int
) -> list[float]:
    """The middle of every run of quiet frames long enough to be a breath, in frames."""
    if frames == 0:
        return []
    levels = np.sqrt(np.mean(samples.astype(np.float64).reshape(frames, frame) ** 2, axis=1))
    threshold = max(float(levels.max()) * 10 ** (-_GAP_UNDER_LOUDEST_DECIBELS / 20), _GAP_FLOOR)
    quiet = np.concatenate(([False], levels < threshold, [False]))
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    shortest = _MIN_GAP_SECONDS * sample_rate_hertz / frame
    return [(start + end) / 2 for start, end in zip(starts, ends, strict=True) if end - start >= shortest]
