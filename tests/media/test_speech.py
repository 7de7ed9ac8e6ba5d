"""Offline narration with libespeak-ng: pause marks, timing, errors, and a free event loop."""

from __future__ import annotations

import asyncio
import io
import threading
import wave
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from services.media import speech
from services.media.errors import SpeechError
from services.media.speech import EspeakNarrator, Narration, encode_wav

CALM_SENTENCES = (
    "Settle into a comfortable position and let your eyes close. "
    "Notice the weight of your body resting where it is. "
    "Breathe in slowly through your nose, and let the breath fill your chest. "
)


@pytest.fixture
def narrator() -> Iterator[EspeakNarrator]:
    narrator = EspeakNarrator()
    yield narrator
    narrator.close()


def samples_of(narration: Narration) -> npt.NDArray[np.int16]:
    return np.frombuffer(narration.pcm_s16le, dtype="<i2")


def longest_zero_run_seconds(narration: Narration) -> float:
    is_zero = np.concatenate(([0], (samples_of(narration) == 0).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(is_zero))
    runs = edges[1::2] - edges[::2]
    return float(runs.max(initial=0)) / narration.sample_rate_hertz


async def test_pause_mark_adds_its_length_as_exact_digital_silence(narrator: EspeakNarrator) -> None:
    plain = await narrator.narrate("Breathe in slowly and let it go.")
    paused = await narrator.narrate("Breathe in slowly [pause 3s] and let it go.")

    assert paused.duration_seconds - plain.duration_seconds == pytest.approx(3.0, abs=0.25)
    assert longest_zero_run_seconds(paused) >= 3.0
    # Apart from the breath that closes the sentence, espeak leaves no long silence of its own.
    spoken = samples_of(plain)[: -round(speech.SENTENCE_SILENCE_SECONDS * plain.sample_rate_hertz)]
    assert longest_zero_run_seconds(Narration(spoken.tobytes(), plain.sample_rate_hertz)) < 0.5


async def test_a_sentence_ends_with_a_breath_unless_a_pause_mark_ends_it(narrator: EspeakNarrator) -> None:
    # A live narration speaks one sentence per call: this silence is what separates two sentences.
    plain = samples_of(await narrator.narrate("Breathe in."))
    paused = samples_of(await narrator.narrate("Breathe in. [pause 2s]"))
    breath = round(speech.SENTENCE_SILENCE_SECONDS * 22_050)

    assert not plain[-breath:].any() and plain[-breath - 1] == 0 and plain[: -breath - 1].any()
    # (espeak's own output for the same words may differ by a few samples from call to call)
    assert abs(paused.size - (plain.size - breath + 2 * 22_050)) <= 0.01 * 22_050
    assert not paused[-2 * 22_050 :].any()


async def test_pause_after_a_sentence_sets_the_whole_gap(narrator: EspeakNarrator) -> None:
    # The mark is the silence a listener hears; it replaces espeak's own ~0.5 s full-stop pause.
    plain = await narrator.narrate("Breathe in. Breathe out.")
    paused = await narrator.narrate("Breathe in. [pause 3s] Breathe out.")

    assert 2.9 <= longest_zero_run_seconds(paused) <= 3.1
    assert 2.3 <= paused.duration_seconds - plain.duration_seconds <= 3.0


async def test_duration_grows_with_the_text(narrator: EspeakNarrator) -> None:
    short = await narrator.narrate(CALM_SENTENCES)
    long = await narrator.narrate(CALM_SENTENCES * 3)

    assert 5.0 < short.duration_seconds < 20.0
    assert long.duration_seconds == pytest.approx(3 * short.duration_seconds, rel=0.1)


async def test_speech_has_energy_and_does_not_clip(narrator: EspeakNarrator) -> None:
    narration = await narrator.narrate(CALM_SENTENCES)
    samples = samples_of(narration).astype(np.float64)

    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(samples**2)) / 32768)
    assert -30 < rms_dbfs < -12
    assert np.abs(samples).max() < 32767
    # Every second of the narration carries some voice: no dropouts inside speech.
    per_second = samples[: len(samples) // narration.sample_rate_hertz * narration.sample_rate_hertz]
    assert (np.abs(per_second.reshape(-1, narration.sample_rate_hertz)).max(axis=1) > 1000).all()


async def test_stray_bracketed_marks_are_never_spoken(narrator: EspeakNarrator) -> None:
    plain = await narrator.narrate("Let your shoulders soften.")
    marked = await narrator.narrate("[soft music] Let your shoulders soften. [smile]")

    assert marked.duration_seconds == pytest.approx(plain.duration_seconds, abs=0.05)


@pytest.mark.parametrize("script", ["", "   \n\t", "[pause 2s]", "[music] [pause 1s]"])
async def test_script_without_words_is_refused(narrator: EspeakNarrator, script: str) -> None:
    with pytest.raises(SpeechError, match="no words"):
        await narrator.narrate(script)


async def test_unknown_voice_is_reported_as_speech_error() -> None:
    narrator = EspeakNarrator(voice="no-such-voice")
    try:
        with pytest.raises(SpeechError, match="no-such-voice"):
            await narrator.narrate("Hello.")
    finally:
        narrator.close()


async def test_closed_narrator_refuses_new_work() -> None:
    narrator = EspeakNarrator()
    narrator.close()

    with pytest.raises(SpeechError, match="closed"):
        await narrator.narrate("Hello.")


async def test_event_loop_keeps_running_during_narration(narrator: EspeakNarrator) -> None:
    """Ordering, not timing: other coroutines run while a long narration is in progress, which could not
    happen if synthesis blocked the event loop."""
    await narrator.narrate("Warm up.")
    narration = asyncio.create_task(narrator.narrate(CALM_SENTENCES * 12))
    turns_while_narrating = 0
    while not narration.done():
        turns_while_narrating += 1
        # Yields the loop between counts; the count, not the time, is what the test looks at.
        await asyncio.sleep(0.001)
    await narration
    assert turns_while_narrating >= 3


async def test_wav_decodes_with_the_wave_module(narrator: EspeakNarrator) -> None:
    narration = await narrator.narrate("Breathe out.")

    with wave.open(io.BytesIO(encode_wav(narration)), "rb") as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == narration.sample_rate_hertz == 22_050
        assert wav.readframes(wav.getnframes()) == narration.pcm_s16le


async def test_cancelled_narration_leaves_the_narrator_usable(
    narrator: EspeakNarrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancels while libespeak-ng is speaking, which is what could leave it wedged: wait for that moment.
    synthesis_started = threading.Event()
    synthesize = speech._ENGINE.synthesize

    def synthesize_and_signal(text: str, abort: threading.Event) -> npt.NDArray[np.int16]:
        synthesis_started.set()
        return synthesize(text, abort)

    monkeypatch.setattr(speech._ENGINE, "synthesize", synthesize_and_signal)
    long_narration = asyncio.create_task(narrator.narrate(CALM_SENTENCES * 40))
    assert await asyncio.to_thread(synthesis_started.wait, 10), "synthesis never started"
    long_narration.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long_narration

    narration = await narrator.narrate("Breathe out.")

    assert 0.5 < narration.duration_seconds < 3
