"""The live narration's encoder, inside the media process: each sentence is laid over the bed, encoded to AAC
once, and muxed as it arrives into the live preview's HLS pieces and the narration's AAC file.

No FFmpeg process per job. The preview's picture never changes, so its video is two keyframes encoded once
per process (`_preview_keyframes`) and copied into every piece; the only encoding left per job is the sound,
which the AAC encoder, at a constant quality, does in under half a second of CPU for three minutes of speech
over the bed. A process per job cost 1.4 CPU seconds and 45 MB each, and fifty of them, each with its encoder
threads, left the services' own threads a fiftieth of two cores (the 50-job level of `make bench`). The
methods block: run them in a worker thread (media's CPU lane); one job's encoder is used by one thread at a
time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream
from av.container import OutputContainer

from services.media import room
from services.media.errors import EncodingError
from services.media.loudness import master_speech
from services.media.placeholder import paint_placeholder
from services.media.scratch import is_disk_full
from services.media.speech import Narration
from services.media.still_mux import make_placeholder_ready
from services.media.video import (
    BED_SEEDS,
    ENHANCED_PROFILE,
    LIVE_AAC_QUALITY,
    QUICK_PROFILE,
    RenderProfile,
    bed_noise_filter,
    live_sound_profile,
    placeholder_height,
)

# FFmpeg's HLS muxer cuts a piece at each keyframe (every picture is one) at least this many seconds on.
PIECE_SECONDS = 1
# The first pieces are a second long, so that the preview's first segments (1, 2 and 4 s: live.py's
# FIRST_SEGMENT_SECONDS, doubling) are cut as soon as their sound is written; the rest are LATER_PIECE_SECONDS
# long, which every later segment is a multiple of (8, 16, then 32 s). Each piece is a cut: a fragment, a
# file, and the HLS muxer's playlist written again whole, so a piece a second made the cutting grow with the
# square of the narration's length (a tenth of media's CPU with fifty jobs at once).
EARLY_PIECES = 7
LATER_PIECE_SECONDS = 4
# The placeholder is a soft gradient with no edge anywhere: at 360p it looks as it does at 720p once a player
# scales it up, at a quarter of the preview's bytes.
PREVIEW_SIZE_PIXELS = (640, 360)
# The bed repeats after this long, crossfaded into itself over the last seconds: brown noise low-passed at
# 280 Hz and 36 LU under the voice has nothing a listener could recognise a minute later, and one loop per
# voice rate is a few megabytes, where a bed as long as each narration would be made again for every job.
BED_LOOP_SECONDS = 60
_BED_CROSSFADE_SECONDS = 2
_MILLISECONDS = Fraction(1, 1000)
# FFmpeg's FF_QP2LAMBDA: one step of `-q:a` in the units of the encoder's global_quality.
_QP2LAMBDA = 118
# The bed and the keyframes are made once per process: fifty jobs arriving together wait for the first to
# make them rather than each making its own (functools.cache alone lets every caller in until one is done).
_MADE_ONCE = threading.Lock()
# The rates the voices speak at: OpenAI's PCM at 24 kHz, Piper's voices and espeak-ng at 22.05 kHz.
VOICE_SAMPLE_RATES = (24_000, 22_050)


def make_ready(sample_rates: tuple[int, ...] = VOICE_SAMPLE_RATES) -> None:
    """Makes what every job's sound and pictures share, at start-up rather than in the first job: the bed at
    each voice's rate and the preview's keyframes (about 0.1 CPU s a rate, which the first person after a
    start waited for), in the process that encodes. Blocking: run it in a thread."""
    with _MADE_ONCE:
        for rate in sample_rates:
            _bed_loop(rate)
        _preview_keyframes()


def make_quick_picture_ready() -> None:
    """Encodes the QUICK video's picture now, in the process that makes QUICK videos (see make_ready).
    Blocking: run it in a thread."""
    make_placeholder_ready(placeholder_height(QUICK_PROFILE), QUICK_PROFILE.x264_crf)


@dataclass(frozen=True)
class WaitingSound:
    """A sentence's sound, `samples` long, waiting for its turn in the encoder: in the job's scratch folder
    (`path`), or, for a sentence of pauses alone (no path), silence. Small and plain: it is what an encoder
    in another process is sent (encoder_process), the sound itself staying on disk."""

    sample_rate_hertz: int
    provider: str = ""
    fallback_reason: str = ""
    misread_sentence_count: int = 0
    path: Path | None = None
    samples: int = 0

    @property
    def seconds(self) -> float:
        """How long the sound lasts (mastering keeps its length)."""
        return self.samples / self.sample_rate_hertz

    def take(self) -> Narration:
        """The sound, read back and removed from disk (blocking: run it in a worker thread)."""
        if self.path is None:
            return Narration(bytes(2 * self.samples), self.sample_rate_hertz)
        pcm = self.path.read_bytes()
        self.path.unlink()
        return Narration(pcm, self.sample_rate_hertz, self.misread_sentence_count)


def master_sentence(narration: Narration) -> Narration:
    """One spoken sentence in the room and at the meditation's loudness, as the live encoder takes it."""
    samples = np.frombuffer(narration.pcm_s16le, dtype="<i2").astype(np.int16)
    # In the room first, so the limiter holds the peaks the room raises: the encoder adds only the bed.
    mastered = master_speech(samples, narration.sample_rate_hertz, voice_filter=room.impulse_response)
    # The same narration, louder or softer: what the provider reported about it (misread sentences) stays.
    return dataclasses.replace(narration, pcm_s16le=mastered.astype("<i2").tobytes())


class NarrationEncoder(Protocol):
    """What a live narration asks of its encoder: a LiveEncoder in this process, or one in the encoder
    process (encoder_process.RemoteLiveEncoder). Every method blocks: run it in a worker thread."""

    @property
    def aac_path(self) -> Path:
        """Where the narration's AAC is, once closed."""
        ...

    def write_all(self, sounds: Sequence[WaitingSound], first_index: int, last_index: int) -> list[int]:
        """See LiveEncoder.write_all."""
        ...

    def close(self) -> None:
        """See LiveEncoder.close."""
        ...

    def abandon(self) -> None:
        """See LiveEncoder.abandon."""
        ...


class LiveEncoder:
    """One job's sound and preview: `write` each sentence in order, then `close`; `abandon` on failure.

    The sound is the mastered voice over the bed, whose gain Python shapes (it rises over the first seconds
    and falls away over the last sentence: only the caller learns where the narration ends), as
    video.live_sound_profile describes it: mono, at the voice's rate. Sound written past a piece's start
    (picture_seconds) lets that piece's picture into the preview, so its pieces never run ahead of the sound.
    """

    def __init__(self, work_dir: Path, sample_rate: int, *, aac_quality: float = LIVE_AAC_QUALITY) -> None:
        self.aac_path = work_dir / "narration.aac"
        self.playlist_path = work_dir / "live.m3u8"
        self._sample_rate = sample_rate
        self._lock = threading.Lock()
        self._samples_written = 0
        self._pictures_written = 0
        # Written to no more (closed, or abandoned); and whether both files are closed.
        self._is_done = False
        self._are_files_closed = False
        sound = live_sound_profile(sample_rate, aac_quality)
        with _MADE_ONCE:
            self._bed = _bed_loop(sample_rate)
            keyframes = _preview_keyframes()
        self._preview = av.open(
            str(self.playlist_path),
            "w",
            format="hls",
            container_options={
                "hls_time": str(PIECE_SECONDS),
                "hls_playlist_type": "event",
                "hls_flags": "independent_segments+temp_file",
                # fMP4 segments: browsers' own HLS players load a live fMP4 playlist of still pictures, while
                # MPEG-TS with one picture per segment stalls (tried in Chromium).
                "hls_segment_type": "fmp4",
                "hls_fmp4_init_filename": "init.mp4",
                "hls_segment_filename": str(work_dir / "segment-%05d.m4s"),
            },
        )
        self._aac_file: OutputContainer | None = None
        # Any of FFmpeg's failures here (the header written to a scratch folder that is gone, or to a full
        # disk) is reported as the writes' are, and what was opened is closed.
        try:
            with _encoder_errors():
                with av.open(io.BytesIO(keyframes), "r") as pictures:
                    template = pictures.streams.video[0]
                    self._video = self._preview.add_stream_from_template(template)
                    self._keyframes = [bytes(packet) for packet in pictures.demux(template) if packet.size]
                self._audio: AudioStream = self._preview.add_stream(
                    "aac", rate=sample_rate, layout="mono", options=aac_options(sound)
                )
                self._preview.start_encoding()
                # The same AAC packets, as a plain ADTS file both videos copy; its stream takes the encoder's
                # parameters (AudioSpecificConfig), which exist once the preview's header is written.
                self._aac_file = av.open(str(self.aac_path), "w", format="adts")
                self._aac_stream = self._aac_file.add_stream_from_template(self._audio, opaque=True)
                self._aac_file.start_encoding()
        except BaseException:
            self.abandon()
            raise

    @property
    def seconds_written(self) -> float:
        return self._samples_written / self._sample_rate

    def write_all(self, sounds: Sequence[WaitingSound], first_index: int, last_index: int) -> list[int]:
        """Masters each spoken sentence to the target loudness (master_sentence) and encodes it, in order from
        `first_index` (write); the bed falls away over the one at `last_index`. Returns how many samples each
        added."""
        return [
            self.write(
                sound.take() if sound.path is None else master_sentence(sound.take()),
                is_last=first_index + offset == last_index,
            )
            for offset, sound in enumerate(sounds)
        ]

    def write(self, narration: Narration, *, is_last: bool) -> int:
        """Lays one sentence over the bed and encodes it; returns how many samples (at the encoder's rate)
        it added. `is_last`: the bed falls away over this sentence."""
        with self._lock, _encoder_errors():
            if self._is_done:
                raise EncodingError("the live encoder was already closed")
            voice = _at_rate(narration, self._sample_rate)
            count = voice.size
            gain = bed_envelope(self._samples_written, count, self._sample_rate, is_last=is_last)
            sound = voice.astype(np.float32) / 32768 + self._bed_at(self._samples_written, count) * gain
            frame = av.AudioFrame.from_ndarray(sound.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate = self._sample_rate
            frame.pts = self._samples_written
            frame.time_base = Fraction(1, self._sample_rate)
            self._mux_sound(self._audio.encode(frame))
            self._samples_written += count
            # A picture for each piece start the sound has passed: a piece is cut when the next one comes, so
            # every piece has all of its sound.
            while picture_seconds(self._pictures_written) * self._sample_rate < self._samples_written:
                self._mux_picture()
            return count

    def close(self) -> None:
        """Encodes the last of the sound and finishes both files: the preview's last piece, and its playlist
        ended (#EXT-X-ENDLIST)."""
        with self._lock, _encoder_errors():
            if self._is_done:
                raise EncodingError("the live encoder was already closed")
            self._is_done = True
            self._mux_sound(self._audio.encode(None))
            assert self._aac_file is not None
            self._preview.close()
            self._aac_file.close()
            self._are_files_closed = True

    def abandon(self) -> None:
        """Closes both files however far they got (the job failed or was cancelled): a worker thread's write
        in progress finishes first. Safe to call more than once and after close."""
        with self._lock:
            self._is_done = True
            if self._are_files_closed:
                return
            self._are_files_closed = True
            for container in (self._preview, self._aac_file):
                if container is not None:
                    # A half-written scratch file, or a full disk: the folder is removed with the job.
                    with contextlib.suppress(av.FFmpegError, OSError):
                        container.close()

    def _mux_sound(self, packets: list[av.Packet[Any]]) -> None:
        for packet in packets:
            self._preview.mux_one(packet)
            packet.stream = self._aac_stream
            self._aac_file.mux_one(packet)  # type: ignore[union-attr]

    def _mux_picture(self) -> None:
        index = self._pictures_written
        # Two keyframes taken in turn: consecutive IDR pictures must not share an idr_pic_id (H.264 7.4.3).
        packet = av.Packet(self._keyframes[index % len(self._keyframes)])
        packet.stream = self._video
        packet.time_base = _MILLISECONDS
        packet.pts = packet.dts = picture_seconds(index) * 1000
        packet.duration = (picture_seconds(index + 1) - picture_seconds(index)) * 1000
        packet.is_keyframe = True
        self._preview.mux_one(packet)
        self._pictures_written += 1

    def _bed_at(self, first_sample: int, count: int) -> npt.NDArray[np.float32]:
        """The bed's samples from `first_sample` on, going round its loop: a new array, joined from slices of
        the loop (an index per sample took five times as long)."""
        pieces = []
        position = first_sample % self._bed.size
        while count > 0:
            piece = self._bed[position : position + count]
            pieces.append(piece)
            count -= piece.size
            position = 0
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def aac_options(sound: RenderProfile) -> dict[str, str]:
    """FFmpeg's AAC encoder options for `sound`: its coder, no mid/side search (one channel), and either its
    constant quality (as `-q:a` sets it: the quantiser's lambda, that many quality steps) or its bitrate."""
    options = {"aac_coder": sound.aac_coder, "aac_ms": "0"}
    if sound.aac_quality is None:
        options["b"] = str(sound.audio_bitrate_bits_per_second)
    else:
        options |= {"flags": "+qscale", "global_quality": str(round(sound.aac_quality * _QP2LAMBDA))}
    return options


@contextlib.contextmanager
def _encoder_errors() -> Iterator[None]:
    """FFmpeg's errors as ours: a full scratch disk stays an OSError (scratch.disk_full_reported reports it),
    anything else is an EncodingError carrying FFmpeg's message for operators."""
    try:
        yield
    except av.FFmpegError as error:
        if isinstance(error, OSError) and is_disk_full(error):
            raise
        raise EncodingError("the live encoder failed", detail=str(error)) from error


def picture_seconds(index: int) -> int:
    """When the preview's picture at `index` starts its piece: a second apart for the first EARLY_PIECES
    pieces, then LATER_PIECE_SECONDS apart."""
    if index <= EARLY_PIECES:
        return index * PIECE_SECONDS
    return EARLY_PIECES * PIECE_SECONDS + (index - EARLY_PIECES) * LATER_PIECE_SECONDS


def bed_envelope(
    first_sample: int, count: int, sample_rate: int, *, is_last: bool
) -> npt.NDArray[np.float32]:
    """The ENHANCED bed's gain for `count` samples from `first_sample`: rising from silence over the
    profile's fade at the start and, in the last sentence, falling back to it by its end (over the fade, or
    the whole sentence when it is shorter), along half a cosine, as FFmpeg's `hsin` fades do."""
    fade = max(1, round(ENHANCED_PROFILE.ambient_bed_fade_seconds * sample_rate))
    if first_sample >= fade and not is_last:
        return np.ones(count, dtype=np.float32)  # most sentences: the bed has risen and is not falling yet
    positions = np.arange(first_sample, first_sample + count, dtype=np.float64)
    rising = np.clip(positions / fade, 0.0, 1.0)
    gain = (1 - np.cos(np.pi * rising)) / 2
    if is_last and count:
        falling = min(fade, count)
        remaining = np.clip((first_sample + count - positions) / falling, 0.0, 1.0)
        gain = np.minimum(gain, (1 - np.cos(np.pi * remaining)) / 2)
    return np.asarray(gain, dtype=np.float32)


def _at_rate(narration: Narration, sample_rate: int) -> npt.NDArray[np.int16]:
    """The narration's samples at `sample_rate`: a fallback voice may speak at another rate mid-script."""
    samples = np.frombuffer(narration.pcm_s16le, dtype="<i2")
    if narration.sample_rate_hertz == sample_rate:
        return samples.astype(np.int16)
    count = round(len(samples) * sample_rate / narration.sample_rate_hertz)
    if not count:
        return np.zeros(0, dtype=np.int16)
    positions = np.linspace(0, len(samples) - 1, count, dtype=np.float32)
    resampled = np.interp(positions, np.arange(len(samples), dtype=np.float32), samples.astype(np.float32))
    return np.asarray(np.clip(np.round(resampled), -32768, 32767), dtype=np.int16)


@functools.cache
def _bed_loop(sample_rate: int) -> npt.NDArray[np.float32]:
    """The bed at `sample_rate` as a seamless loop of BED_LOOP_SECONDS, made once per rate and process by
    FFmpeg's own noise and filters (video.bed_noise_filter, as the WAV renders make it): its last seconds
    are crossfaded, at equal power (the two stretches of noise are unrelated), into its first."""
    length = BED_LOOP_SECONDS * sample_rate
    fade = _BED_CROSSFADE_SECONDS * sample_rate
    graph = (
        f"{bed_noise_filter(live_sound_profile(sample_rate), BED_SEEDS[0])},atrim=end_sample={length + fade}"
    )
    with av.open(graph, format="lavfi") as source:
        noise = np.concatenate(
            [frame.to_ndarray().reshape(-1).astype(np.float32) for frame in source.decode(audio=0)]
        )
    if noise.size != length + fade:
        raise EncodingError(f"the bed came out {noise.size} samples long, not {length + fade}")
    loop = noise[:length].copy()
    rising = np.sin(np.linspace(0.0, np.pi / 2, fade, dtype=np.float32))
    # Playing on from the loop's end into its start continues the noise past `length` and fades it out.
    loop[:fade] = noise[:fade] * rising + noise[length:] * np.cos(np.linspace(0.0, np.pi / 2, fade)).astype(
        np.float32
    )
    loop.flags.writeable = False
    return loop


@functools.cache
def _preview_keyframes() -> bytes:
    """The placeholder as two H.264 keyframes in an MP4 (in memory), encoded once per process: all the
    preview's video, whichever job it is for. Encoded with care (it is done once): a slower preset buys a
    smaller picture in every piece."""
    width, height = PREVIEW_SIZE_PIXELS
    rgb = np.asarray(paint_placeholder(width, height).convert("RGB"))
    picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(
            # A constant quantiser, not a rate factor: both pictures then decode the same, and a player
            # taking them in turn shows no shimmer.
            "libx264",
            rate=1,
            options={"preset": "medium", "qp": "23", "x264-params": "keyint=1"},
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(2):
            picture.pts = index
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return buffer.getvalue()
