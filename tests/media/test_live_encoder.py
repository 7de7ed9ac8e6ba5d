"""The in-process live encoder: pieces never ahead of the sound, one AAC for the preview and the videos, the
bed a seamless loop."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from services.media.errors import EncodingError
from services.media.live import _group_pieces, _Published, _read_playlist
from services.media.live_encoder import (
    BED_LOOP_SECONDS,
    VOICE_SAMPLE_RATES,
    LiveEncoder,
    _bed_loop,
    _preview_keyframes,
    bed_envelope,
    make_quick_picture_ready,
    make_ready,
)
from services.media.speech import Narration
from services.media.still_mux import _placeholder_picture
from services.media.video import QUICK_PROFILE

RATE = 24_000
# FFmpeg's AAC encoder starts every stream with a frame of priming samples.
_AAC_PRIMING_SAMPLES = 1024


def _sentence(seconds: float, frequency: float = 220.0) -> Narration:
    times = np.arange(round(seconds * RATE)) / RATE
    samples = 0.3 * np.sin(2 * np.pi * frequency * times) * 32767
    return Narration(samples.astype("<i2").tobytes(), RATE)


def test_every_piece_listed_has_all_of_its_sound_and_the_aac_holds_every_sample(tmp_path: Path) -> None:
    encoder = LiveEncoder(tmp_path, RATE)
    try:
        for seconds in (1.3, 2.7, 0.4, 3.05):
            encoder.write(_sentence(seconds), is_last=False)
            listed = _read_playlist(encoder.playlist_path)
            # A piece is cut only once the sound has passed its end.
            assert listed, "the first pieces are cut as soon as the sound passes them"
            assert sum(duration for _, duration in listed) <= encoder.seconds_written + 1e-6
        encoder.write(_sentence(1.0), is_last=True)
        encoder.close()
    finally:
        encoder.abandon()
    written = encoder.seconds_written
    assert written == pytest.approx(1.3 + 2.7 + 0.4 + 3.05 + 1.0)
    assert encoder.playlist_path.read_text().rstrip().endswith("#EXT-X-ENDLIST")
    listed = _read_playlist(encoder.playlist_path)
    assert sum(duration for _, duration in listed) == pytest.approx(written, abs=1.0)
    with av.open(str(encoder.playlist_path)) as preview:
        assert preview.streams.video[0].codec_context.name == "h264"
        pictures = [packet for packet in preview.demux(video=0) if packet.size]
        assert len(pictures) == len(listed)
        assert all(packet.is_keyframe for packet in pictures)
    with av.open(str(encoder.aac_path)) as narration:
        samples = sum(frame.samples for frame in narration.decode(audio=0))
    # The encoder's priming and the last frame's padding add under two frames of 1024 samples.
    assert 0 <= samples - written * RATE < 2 * 1024


def test_a_closed_encoder_refuses_more_sound_and_abandoning_twice_is_harmless(tmp_path: Path) -> None:
    encoder = LiveEncoder(tmp_path, RATE)
    encoder.write(_sentence(0.5), is_last=True)
    encoder.close()
    with pytest.raises(EncodingError):
        encoder.write(_sentence(0.5), is_last=True)
    encoder.abandon()
    encoder.abandon()


def test_the_bed_loops_without_a_seam_at_the_level_ffmpeg_makes_it() -> None:
    loop = _bed_loop(RATE)
    assert loop.size == BED_LOOP_SECONDS * RATE
    steps = np.abs(np.diff(loop))
    # Going round, from the last sample to the first, is a step like any other in the noise.
    assert abs(float(loop[0] - loop[-1])) <= np.percentile(steps, 99.9)
    # Brown noise low-passed and 30 dB down: far under the voice, but there.
    level = 20 * np.log10(np.sqrt(np.mean(loop.astype(np.float64) ** 2)))
    assert -60 < level < -35


def test_the_preview_is_two_different_keyframes_of_the_same_picture() -> None:
    with av.open(io.BytesIO(_preview_keyframes()), "r") as pictures:
        packets = [packet for packet in pictures.demux(video=0) if packet.size]
        assert [packet.is_keyframe for packet in packets] == [True, True]
        # Consecutive IDR pictures differ at least in their idr_pic_id.
        assert bytes(packets[0]) != bytes(packets[1])
        frames = [frame.to_ndarray() for packet in packets for frame in packet.decode()]
    assert np.array_equal(frames[0], frames[1])


def test_a_write_after_abandoning_is_an_encoding_error(tmp_path: Path) -> None:
    encoder = LiveEncoder(tmp_path, RATE)
    encoder.abandon()
    with pytest.raises(EncodingError):
        encoder.write(_sentence(0.5), is_last=False)


def test_a_scratch_folder_that_is_gone_is_an_encoding_error_not_ffmpegs(tmp_path: Path) -> None:
    # The header (the playlist's first piece and init.mp4) is written as the encoder starts.
    with pytest.raises(EncodingError):
        LiveEncoder(tmp_path / "gone", RATE)


def _spoken_phrase(seconds: float, seed: int) -> Narration:
    """Something like a spoken phrase: a voiced buzz whose pitch drifts, in syllables, then a pause."""
    generator = np.random.default_rng(seed)
    times = np.arange(round(seconds * RATE)) / RATE
    pitch = 110 + 30 * np.sin(2 * np.pi * 0.7 * times + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voiced = sum(np.sin(harmonic * phase) / harmonic for harmonic in range(1, 30))
    syllables = np.clip(np.sin(2 * np.pi * 4 * times), 0, None) ** 2
    syllables[times > seconds * 0.75] = 0  # the pause after the phrase
    breath = generator.normal(0, 0.02, times.size)
    samples = (0.25 * voiced + breath) * syllables * 32767 / 3
    return Narration(np.clip(samples, -32768, 32767).astype("<i2").tobytes(), RATE)


def test_what_every_job_shares_is_made_before_the_first_job(tmp_path: Path) -> None:
    for made in (_bed_loop, _preview_keyframes, _placeholder_picture):
        made.cache_clear()

    # The encoder's share (in the encoder process) and the QUICK video's picture (in the media process).
    make_ready()
    make_quick_picture_ready()

    assert _bed_loop.cache_info().currsize == len(VOICE_SAMPLE_RATES)
    assert _preview_keyframes.cache_info().currsize == 1
    assert _placeholder_picture.cache_info().currsize == 1
    # A job at either voice's rate then makes none of it again.
    made_before = [made.cache_info().misses for made in (_bed_loop, _preview_keyframes, _placeholder_picture)]
    for rate in VOICE_SAMPLE_RATES:
        work_dir = tmp_path / str(rate)
        work_dir.mkdir()
        LiveEncoder(work_dir, rate).abandon()
    made_after = [made.cache_info().misses for made in (_bed_loop, _preview_keyframes, _placeholder_picture)]
    assert made_after == made_before


@pytest.mark.parametrize(
    ("first_sample", "count"),
    [
        (0, 0),
        (0, 1000),
        (5, BED_LOOP_SECONDS * RATE),
        (BED_LOOP_SECONDS * RATE - 10, 25),
        (7, 3 * BED_LOOP_SECONDS * RATE),
    ],
)
def test_the_bed_goes_round_its_loop_sample_by_sample(tmp_path: Path, first_sample: int, count: int) -> None:
    loop = _bed_loop(RATE)
    encoder = LiveEncoder(tmp_path, RATE)
    try:
        bed = encoder._bed_at(first_sample, count)
    finally:
        encoder.abandon()
    assert np.array_equal(bed, loop[np.arange(first_sample, first_sample + count) % loop.size])


def test_the_sound_is_encoded_at_a_constant_quality_cleaner_than_at_a_bitrate(
    tmp_path: Path,
) -> None:
    # At an average bitrate the encoder kept searching for a quantiser that would spend all its bits, and
    # what it made was noisier: 29.8 dB of signal to noise on these phrases (69 kbit/s), against 32.1 at a
    # constant quality (66 kbit/s); 36 against 41 dB on make bench's narration.
    phrases = [_spoken_phrase(seconds, seed) for seed, seconds in enumerate((4.0, 6.5, 3.2, 5.1, 4.4))]
    encoder = LiveEncoder(tmp_path, RATE)
    try:
        for number, phrase in enumerate(phrases):
            encoder.write(phrase, is_last=number == len(phrases) - 1)
        encoder.close()
    finally:
        encoder.abandon()
    voice = np.concatenate([np.frombuffer(phrase.pcm_s16le, "<i2") for phrase in phrases]) / 32768
    bed = _bed_loop(RATE)[np.arange(voice.size) % _bed_loop(RATE).size]
    gains = []
    written = 0
    for number, phrase in enumerate(phrases):
        count = len(phrase.pcm_s16le) // 2
        gains.append(bed_envelope(written, count, RATE, is_last=number == len(phrases) - 1))
        written += count
    written_sound = voice + bed * np.concatenate(gains)
    with av.open(str(encoder.aac_path)) as narration:
        decoded = np.concatenate([frame.to_ndarray().reshape(-1) for frame in narration.decode(audio=0)])
    heard = decoded[_AAC_PRIMING_SAMPLES : _AAC_PRIMING_SAMPLES + voice.size]
    noise = heard - written_sound
    signal_to_noise = 10 * np.log10(np.sum(written_sound**2) / np.sum(noise**2))
    assert signal_to_noise >= 31.0
    bits_per_second = encoder.aac_path.stat().st_size * 8 / (voice.size / RATE)
    assert bits_per_second <= 1.25 * QUICK_PROFILE.audio_bitrate_bits_per_second


def test_pieces_are_a_second_long_for_the_first_segments_then_as_long_as_later_segments_divide(
    tmp_path: Path,
) -> None:
    encoder = LiveEncoder(tmp_path, RATE)
    try:
        for _ in range(8):
            encoder.write(_sentence(2.5), is_last=False)
        listed = _read_playlist(encoder.playlist_path)
    finally:
        encoder.abandon()
    # 20 s written: seven pieces of a second, then pieces of four (the one under way is not cut yet).
    assert [duration for _, duration in listed] == pytest.approx([1.0] * 7 + [4.0] * 3, abs=0.01)
    # The publisher makes its first segments (1, 2, 4 and 8 s) of whole pieces.
    published = _Published(pending=list(listed))
    segments = _group_pieces(published, publish_all=False)
    assert [sum(duration for _, duration in segment) for segment in segments] == pytest.approx(
        [1.0, 2.0, 4.0, 8.0], abs=0.05
    )
