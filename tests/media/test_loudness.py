"""Mastered sound: each sentence at −16 LUFS under a true-peak ceiling, and the live preview, the QUICK and
the ENHANCED video measuring −16 ± 1 LUFS and at most −1.5 dBTP with FFmpeg's ebur128, whichever voice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from services.media import room
from services.media.loudness import (
    TARGET_LOUDNESS_LUFS,
    TRUE_PEAK_CEILING_DBTP,
    _heard_and_weighted,
    _k_weighting_response,
    _Sentence,
    integrated_loudness,
    master_speech,
    span_fft_size,
    true_peak_dbtp,
)
from services.media.piper_speech import PiperDelivery, PiperNarrator, packaged_voice
from services.media.speech import EspeakNarrator, Narration, encode_wav
from services.media.studio import Narrator
from services.proto_time import seconds_of
from services.storage.base import new_key
from services.storage.local import LocalAssetStorage
from stillpoint.media.v2 import media_service_pb2 as media_pb
from stillpoint.media.v2 import media_service_pb2_grpc as media_grpc
from tests.media.loudness_meter import measure

MEDITATION = "meditations/0123456789abcdef"
# Starts with a held silence, so the ENHANCED video opens on the ambient bed alone.
SCRIPT = (
    "[pause 4s] Take a moment to arrive. [pause 2s] Let your shoulders soften, and your hands grow heavy. "
    "Breathe in slowly, one, two, three, four. [pause 2s] And out, slowly. [pause 3s] "
    "Notice the sound of the sea, far away. Let it carry the day's worries. [pause 2s] "
    "When you are ready, open your eyes."
)
# What the issue promises for every video and the live preview.
PROMISED_LUFS = -16.0
PROMISED_TOLERANCE_LU = 1.0
PROMISED_TRUE_PEAK_DBTP = -1.5
RATE = 22_050


def write_wav(path: Path, samples: npt.NDArray[np.int16]) -> Path:
    path.write_bytes(encode_wav(Narration(samples.astype("<i2").tobytes(), RATE)))
    return path


@pytest.fixture(scope="module")
def spoken() -> npt.NDArray[np.int16]:
    """A few sentences of the neural voice as it comes from the model, unmastered: the same on every run (the
    voice's noise off), so the bounds below are checked against one voice, not a new draw each time (a draw
    now and then came out past the bound)."""
    narrator = PiperNarrator(packaged_voice(), PiperDelivery(noise_scale=0.0, noise_width_scale=0.0))
    try:
        narration = asyncio.run(narrator.narrate("Let your shoulders soften. Breathe in slowly, and out."))
    finally:
        narrator.close()
    return np.frombuffer(narration.pcm_s16le, dtype="<i2").astype(np.int16)


def test_the_meter_agrees_with_ffmpeg(spoken: npt.NDArray[np.int16], tmp_path: Path) -> None:
    reference = measure(write_wav(tmp_path / "voice.wav", spoken))
    samples = spoken / 32768

    assert integrated_loudness(samples, RATE) == pytest.approx(reference.integrated_lufs, abs=0.1)
    assert true_peak_dbtp(samples, RATE) == pytest.approx(reference.true_peak_dbtp, abs=0.2)


@pytest.mark.parametrize("level_decibels", [-10.0, 0.0, 12.0])
def test_speech_at_any_level_is_mastered_to_the_target_under_the_ceiling(
    spoken: npt.NDArray[np.int16], level_decibels: float, tmp_path: Path
) -> None:
    scaled = np.clip(spoken * 10 ** (level_decibels / 20), -32768, 32767).astype(np.int16)

    mastered = master_speech(scaled, RATE)
    result = measure(write_wav(tmp_path / "mastered.wav", mastered))

    assert mastered.size == scaled.size
    assert result.integrated_lufs == pytest.approx(TARGET_LOUDNESS_LUFS, abs=0.3)
    # Two true-peak meters interpolate differently and can disagree by a tenth of a decibel on harsh
    # (here clipped) input; the ceiling is half a decibel under the promise for that and for AAC.
    assert result.true_peak_dbtp <= TRUE_PEAK_CEILING_DBTP + 0.15


def test_the_limiter_only_ever_lowers_the_gain_and_only_near_peaks(spoken: npt.NDArray[np.int16]) -> None:
    mastered = master_speech(spoken, RATE).astype(np.float64)
    original = spoken.astype(np.float64)
    audible = np.abs(original) > 300
    ratios = mastered[audible] / original[audible]
    gain = np.percentile(ratios, 99.5)  # the sentence's one gain, where the limiter is at rest

    assert ratios.max() <= gain * 1.01
    # A good part of the voice is away from any peak and keeps exactly that gain.
    assert np.mean(ratios > 0.99 * gain) > 0.25


def test_a_voice_filter_is_mastered_as_the_voice_will_be_heard(spoken: npt.NDArray[np.int16]) -> None:
    # Mastering applies the room in the FFT that weighs the loudness: it must come to what mastering the
    # voice already in the room comes to (that voice rounded to 16 bits first, hence a few steps apart).
    in_the_room = np.convolve(spoken / 32768, room.impulse_response(RATE))[: spoken.size]
    heard_first = np.round(in_the_room * 32768).astype(np.int16)

    mastered = master_speech(spoken, RATE, voice_filter=room.impulse_response).astype(np.int64)

    assert mastered.size == spoken.size
    assert np.max(np.abs(mastered - master_speech(heard_first, RATE))) <= 4
    # And the room was applied: mastered without it, the voice differs far more than that.
    assert np.max(np.abs(mastered - master_speech(spoken, RATE))) > 500


def test_a_voice_is_heard_and_weighed_span_by_span_as_it_would_be_whole(
    spoken: npt.NDArray[np.int16],
) -> None:
    # Mastering transforms only the spans that sound, each with the filters' ringing after it. Silences
    # shorter and longer than the ringing, a lone sample, and a voice cut off by the end: every sample of
    # the heard and the weighted sound must be what filtering the whole comes to.
    response = room.impulse_response(RATE)
    ringing = response.size + _k_weighting_response(RATE).size
    voice = spoken[: RATE // 2] / 32768
    lone = np.zeros(1)
    lone[0] = 0.5
    pieces = [np.zeros(RATE // 3), voice, np.zeros(ringing // 3), voice, np.zeros(3 * ringing), lone]
    pieces += [np.zeros(2 * ringing), voice, np.zeros(ringing // 10), voice[: RATE // 5]]
    samples = np.concatenate(pieces)

    heard, weighted, sounding = _heard_and_weighted(samples, RATE, room.impulse_response)

    whole = np.convolve(samples, response)
    assert np.allclose(heard, whole[: samples.size], rtol=0, atol=1e-12)
    assert np.allclose(
        weighted, np.convolve(whole, _k_weighting_response(RATE))[: samples.size], rtol=0, atol=1e-12
    )
    # The short silences were joined to the spans around them; nothing sounds outside the spans.
    assert len(sounding) == 3
    outside = np.ones(samples.size, dtype=bool)
    for start, end in sounding:
        outside[start:end] = False
    assert not np.any(heard[outside])
    # The true peaks measured span by span are those of the whole (to the last bits of a double: numpy's
    # convolution may sum in another order where its input starts elsewhere in memory).
    ceiling = 10 ** (TRUE_PEAK_CEILING_DBTP / 20)
    by_span = _Sentence(heard, RATE, ceiling, weighted.copy(), sounding)
    whole_sentence = _Sentence(heard, RATE, ceiling, weighted.copy())
    assert np.allclose(by_span._block_peaks, whole_sentence._block_peaks, rtol=1e-12, atol=0)


@pytest.mark.parametrize("length", [1, 15, 16, 17, 1000, 5401, 24_001, 123_457, 300_000])
def test_span_transforms_are_fast_sizes_at_most_a_fifth_longer(length: int) -> None:
    size = span_fft_size(length)
    assert length <= size <= max(16, 1.2 * length)
    rest = size
    for prime in (2, 3, 5):
        while rest % prime == 0:
            rest //= prime
    assert rest == 1


def test_silence_is_left_silent() -> None:
    silence = np.zeros(RATE, dtype=np.int16)
    assert np.array_equal(master_speech(silence, RATE), silence)


@pytest.fixture(params=["piper", "espeak-ng"])
def narrator(request: pytest.FixtureRequest) -> Iterator[Narrator]:
    """Every offline voice: the media server of this module narrates with each in turn."""
    speaker: PiperNarrator | EspeakNarrator = (
        PiperNarrator(packaged_voice()) if request.param == "piper" else EspeakNarrator()
    )
    yield speaker
    speaker.close()


async def _requests(script: str) -> AsyncIterator[media_pb.NarrateLiveRequest]:
    yield media_pb.NarrateLiveRequest(start=media_pb.NarrateLiveStart(meditation=MEDITATION))
    for start in range(0, len(script), 40):
        yield media_pb.NarrateLiveRequest(text=media_pb.NarrateLiveText(text=script[start : start + 40]))
    yield media_pb.NarrateLiveRequest(end=media_pb.NarrateLiveEnd())


async def _render(
    media_stub: media_grpc.MediaServiceStub,
    storage: LocalAssetStorage,
    completed: media_pb.LiveNarrationCompleted,
    profile: media_pb.VideoProfile.ValueType,
) -> Path:
    return await _rendered(
        media_stub,
        storage,
        media_pb.RenderVideoRequest(
            meditation=MEDITATION,
            narration_storage_key=completed.storage_key,
            narration_aac_storage_key=completed.aac_storage_key,
            profile=profile,
        ),
    )


async def _rendered(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage, request: media_pb.RenderVideoRequest
) -> Path:
    responses = [response async for response in media_stub.RenderVideo(request)]
    return await storage.local_path(responses[-1].uploaded.storage_key)


def _sound_packets(path: Path) -> list[bytes]:
    """The AAC frames of the first audio stream, without the 7-byte ADTS header an .aac file's carry."""
    with av.open(str(path)) as container:
        packets = [bytes(packet) for packet in container.demux(audio=0) if packet.size]
    return [packet[7:] if packet[:2] == b"\xff\xf1" else packet for packet in packets]


@pytest.mark.timeout(120)
async def test_the_live_preview_and_both_videos_are_mastered_for_speech(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage, narrator: Narrator
) -> None:
    responses = [response async for response in media_stub.NarrateLive(_requests(SCRIPT))]
    completed = responses[-1].completed
    quick = await _render(media_stub, storage, completed, media_pb.VIDEO_PROFILE_QUICK)
    enhanced = await _render(media_stub, storage, completed, media_pb.VIDEO_PROFILE_ENHANCED)
    # A narration that is a WAV (no NarrateLive sound to copy): the ENHANCED profile masters it itself.
    voice = await narrator.narrate(
        "Take a moment to arrive. Let your shoulders soften, and your hands grow heavy. Breathe in slowly."
    )
    spoken = np.frombuffer(voice.pcm_s16le, dtype="<i2")
    mastered = Narration(master_speech(spoken, voice.sample_rate_hertz).tobytes(), voice.sample_rate_hertz)
    wav = await storage.put_bytes(
        new_key(f"narrations/{MEDITATION}", "wav"), encode_wav(mastered), "audio/wav"
    )
    enhanced_from_wav = await _rendered(
        media_stub,
        storage,
        media_pb.RenderVideoRequest(
            meditation=MEDITATION, narration_storage_key=wav.key, profile=media_pb.VIDEO_PROFILE_ENHANCED
        ),
    )

    narration = await storage.local_path(completed.aac_storage_key)
    # One sound, made once as the narration was spoken: both videos copy it.
    assert _sound_packets(quick) == _sound_packets(narration)
    assert _sound_packets(enhanced) == _sound_packets(narration)
    heard = {
        "live preview": measure(await storage.local_path(responses[0].playlist_ready.storage_key)),
        "narration AAC": measure(narration),
        "QUICK video": measure(quick),
        "ENHANCED video": measure(enhanced),
        "ENHANCED video from a WAV": measure(enhanced_from_wav),
    }
    for name, loudness in heard.items():
        assert loudness.integrated_lufs == pytest.approx(PROMISED_LUFS, abs=PROMISED_TOLERANCE_LU), name
        assert loudness.true_peak_dbtp <= PROMISED_TRUE_PEAK_DBTP, name
    assert seconds_of(completed.duration) > 15


@pytest.mark.timeout(120)
async def test_the_enhanced_bed_sits_far_under_the_voice_fades_in_and_falls_away_at_the_end(
    media_stub: media_grpc.MediaServiceStub, storage: LocalAssetStorage
) -> None:
    # Ends with three seconds of held silence: the bed alone again, falling away with the last sentence.
    script = f"{SCRIPT} [pause 3s]"
    completed = [response async for response in media_stub.NarrateLive(_requests(script))][-1].completed
    enhanced = await _render(media_stub, storage, completed, media_pb.VIDEO_PROFILE_ENHANCED)

    # The script opens with four seconds of held silence: the bed alone, rising from nothing.
    opening = measure(enhanced, start_seconds=0.0, seconds=1.0)
    settled = measure(enhanced, start_seconds=2.9, seconds=1.0)
    whole = measure(enhanced)
    assert settled.integrated_lufs < whole.integrated_lufs - 25
    assert settled.integrated_lufs > -70, "the bed should be heard in the pauses, not dead silence"
    assert opening.integrated_lufs < settled.integrated_lufs - 6
    # The last half second: the bed alone, and by then nearly gone (its level against the settled bed's).
    level = _levels_decibels(enhanced, window_seconds=0.5)
    assert level[-1] < level[round(2.9 / 0.5)] - 10, level


def _levels_decibels(path: Path, *, window_seconds: float) -> list[float]:
    """The RMS level of the first audio stream in consecutive windows, in dBFS."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray().mean(axis=0) for frame in container.decode(audio=0)]
        rate = container.streams.audio[0].sample_rate
    samples = np.concatenate(frames)
    window = round(window_seconds * rate)
    return [
        float(20 * np.log10(np.sqrt(np.mean(samples[start : start + window] ** 2)) + 1e-12))
        for start in range(0, samples.size - window + 1, window)
    ]


@pytest.mark.parametrize("over_the_target_decibels", [0.0, 6.0])
def test_the_make_up_rounds_estimate_the_limited_loudness_as_the_meter_measures_it(
    spoken: npt.NDArray[np.int16], over_the_target_decibels: float
) -> None:
    # The rounds weigh the limiter a millisecond block at a time; the result has its gain drawn per sample.
    sentence = _Sentence(spoken / 32768, RATE, 10 ** (TRUE_PEAK_CEILING_DBTP / 20))
    gain_decibels = TARGET_LOUDNESS_LUFS - sentence.loudness + over_the_target_decibels

    estimate = sentence.loudness_at(gain_decibels)
    limited = sentence.mastered_at(gain_decibels)

    assert estimate < sentence.loudness + gain_decibels - 1.0, "the limiter should take loudness off here"
    assert estimate == pytest.approx(integrated_loudness(limited, RATE), abs=0.02)
    assert true_peak_dbtp(limited, RATE) <= TRUE_PEAK_CEILING_DBTP + 1e-3
