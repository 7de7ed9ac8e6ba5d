"""Cutting one request's audio back into sentences at the breaths between them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from services.media.speech_gaps import cut_at_gaps

RATE = 24_000


def _speech(seconds: float, seed: int) -> npt.NDArray[np.int16]:
    """Voice-like sound: a tone under a syllable-rate envelope, never quiet for long."""
    t = np.arange(round(seconds * RATE)) / RATE
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t + seed)
    return (np.sin(2 * np.pi * (150 + 20 * seed) * t) * envelope * 12_000).astype(np.int16)


def _silence(seconds: float) -> npt.NDArray[np.int16]:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def test_cuts_go_through_the_breaths_nearest_each_sentences_share() -> None:
    # Three sentences of 2 s, 1 s and 3 s with half-second breaths; weights roughly their lengths.
    audio = np.concatenate(
        [_speech(2.0, 0), _silence(0.5), _speech(1.0, 1), _silence(0.5), _speech(3.0, 2), _silence(0.3)]
    )
    cuts = cut_at_gaps(audio, RATE, [40, 20, 60])
    assert len(cuts) == 2
    assert cuts[0] == pytest.approx(2.25 * RATE, abs=0.02 * RATE)
    assert cuts[1] == pytest.approx(3.75 * RATE, abs=0.02 * RATE)


def test_a_short_stop_inside_a_sentence_is_not_taken_for_a_breath() -> None:
    # A 60 ms stop sits exactly where the first share ends; the real breath is a second later.
    audio = np.concatenate([_speech(1.5, 0), _silence(0.06), _speech(1.0, 1), _silence(0.5), _speech(2.5, 2)])
    (cut,) = cut_at_gaps(audio, RATE, [1, 1])
    assert cut == pytest.approx(2.81 * RATE, abs=0.02 * RATE)


def test_every_cut_gets_its_own_breath_even_when_the_shares_mislead() -> None:
    # The characters say the first sentence is short, but it is long: both cuts still land in breaths.
    audio = np.concatenate([_speech(3.0, 0), _silence(0.4), _speech(1.0, 1), _silence(0.4), _speech(1.0, 2)])
    cuts = cut_at_gaps(audio, RATE, [10, 45, 45])
    assert cuts[0] == pytest.approx(3.2 * RATE, abs=0.02 * RATE)
    assert cuts[1] == pytest.approx(4.6 * RATE, abs=0.02 * RATE)


def test_without_breaths_the_cuts_follow_the_shares_and_still_rise() -> None:
    audio = _speech(4.0, 0)
    cuts = cut_at_gaps(audio, RATE, [1, 1, 2])
    assert cuts == sorted(cuts) and len(set(cuts)) == 3 - 1
    assert cuts[0] == pytest.approx(1.0 * RATE, abs=0.02 * RATE)
    assert cuts[1] == pytest.approx(2.0 * RATE, abs=0.02 * RATE)


def test_one_piece_needs_no_cut_and_weights_must_be_positive() -> None:
    assert cut_at_gaps(_speech(1.0, 0), RATE, [5]) == []
    with pytest.raises(ValueError, match="positive"):
        cut_at_gaps(_speech(1.0, 0), RATE, [5, 0])
