"""Still-image meditation videos: one H.264 frame held for the whole narration, encoded by an FFmpeg process.

A still image needs no more than one frame. The image is read at a frame rate of 1/duration, so its single
frame lasts exactly as long as the narration: x264 encodes one picture instead of thousands of identical ones
(under a second for a 200 s narration instead of ~50 s with `-loop 1`), the MP4's video track still spans the
narration, and players show the picture throughout and seek anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import io
import math
import os
import uuid
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from services.media import room
from services.media.errors import EncodingError, InvalidInputError, StageTimeoutError
from services.media.placeholder import paint_placeholder, placeholder_width
from services.media.scratch import encoding_failure
from services.media.still_mux import MuxedStill, image_picture, mux_still_video, placeholder_picture
from services.media.subtitles import SUBTITLE_LANGUAGE

_STDERR_TAIL_CHARACTERS = 4000
# The frame rate 1/duration is written as a ratio of integers; millisecond precision is plenty.
_DURATION_DENOMINATOR = 1000
_MIN_DURATION_SECONDS = 0.1
_PLACEHOLDER_HEIGHT_PIXELS = 1080
_VAAPI_DEVICE = "/dev/dri/renderD128"


@dataclass(frozen=True)
class RenderProfile:
    """How a still video is rendered: picture size and quality, and how the narration is mastered."""

    name: str
    # None keeps the image's own resolution (rounded down to even numbers, as 4:2:0 chroma requires).
    max_height_pixels: int | None
    # A lone frame needs a low CRF: x264 only raises quality on frames that other frames refer to.
    x264_crf: int
    audio_sample_rate_hertz: int
    audio_bitrate_bits_per_second: int
    audio_channels: int
    # "fast" encodes AAC about 2.5x faster than FFmpeg's default "twoloop" at no audible cost for speech.
    aac_coder: str
    # FFmpeg's automatic mid/side search doubles AAC encoding time; a centred voice gains nothing from it.
    is_aac_mid_side_search_enabled: bool
    # An FFmpeg audio filter chain applied to the narration alone, or None to leave it untouched.
    narration_filter: str | None
    # Level of a soft brown-noise bed under the voice in dB, or None for no bed.
    ambient_bed_decibels: float | None
    # How long the bed takes to rise at the start and to fall away at the end.
    ambient_bed_fade_seconds: float = 0.0
    # Rendered in its own lane and, by FFmpeg, at low CPU priority: someone already has a video to watch (the
    # QUICK one), so live narrations and first videos go first. A mux in a Python process (muxed_here) runs
    # at that process's priority: a lowered thread would hold the interpreter's lock between its packets
    # while the process's other threads waited for it (urgency.CpuLane), and the mux takes a third of
    # FFmpeg's CPU.
    is_deferrable: bool = False
    # FFmpeg's AAC encoder at a constant quality (its `-q:a`; the bitrate above is then only what it comes
    # to), or None for the average bitrate. At an average bitrate the encoder searches each frame again
    # and again for a quantiser that spends the bits it is given, and the quiet, low bed (which cannot use
    # them) made it search the longest: a narration's sound took two fifths less CPU at a constant
    # quality, with more signal to noise at the same size (`make bench`'s narration: 0.64 against 1.1 CPU
    # s, 41 against 36 dB, 95 against 94 kbit/s).
    aac_quality: float | None = None


QUICK_PROFILE = RenderProfile(
    name="quick",
    max_height_pixels=720,
    x264_crf=14,
    # Piper's voices and espeak-ng speak at 22.05 kHz, so the quick profile never resamples them.
    audio_sample_rate_hertz=22_050,
    audio_bitrate_bits_per_second=96_000,
    audio_channels=1,
    aac_coder="fast",
    is_aac_mid_side_search_enabled=False,
    narration_filter=None,
    ambient_bed_decibels=None,
)

ENHANCED_PROFILE = RenderProfile(
    name="enhanced",
    max_height_pixels=None,
    x264_crf=14,
    audio_sample_rate_hertz=48_000,
    audio_bitrate_bits_per_second=160_000,
    audio_channels=2,
    aac_coder="fast",
    is_aac_mid_side_search_enabled=False,
    # The small warm room (services/media/room.py): rumble out, two faint reflections. Nothing changes the
    # level: the narration arrives mastered (services/media/loudness.py, −16 LUFS, true peak −2 dBTP), the
    # reflections add about 0.1 LU, and the mono voice is spread to both channels at −3 dB each, which
    # keeps its loudness and lowers its peaks (measured: −16.3 LUFS and −3.6 dBTP for a −16.3 LUFS voice).
    narration_filter=room.ffmpeg_filter(),
    # Brown noise low-passed to a distant hush, 30 dB under full scale: it measures about −52 LUFS, some
    # 36 LU under the voice, felt more than heard, and it keeps the pauses from sounding dead. Its blocks
    # fall under the loudness gate, so the video's loudness is the voice's.
    ambient_bed_decibels=-30.0,
    ambient_bed_fade_seconds=4.0,
    is_deferrable=True,
)


@dataclass(frozen=True)
class RenderedVideo:
    """A finished MP4 and what it holds."""

    path: Path
    duration_seconds: float
    width_pixels: int
    height_pixels: int
    size_bytes: int
    encoder: str


@dataclass(frozen=True)
class VideoEncoded:
    """The encode finished; the upload is next."""

    encode_seconds: float
    encoder: str


@dataclass(frozen=True)
class VideoStored:
    """The video is in asset storage."""

    storage_key: str
    duration_seconds: float
    size_bytes: int
    width_pixels: int
    height_pixels: int
    encoder: str
    upload_seconds: float


@dataclass(frozen=True)
class MediaInfo:
    """What PyAV reads from a media file's streams."""

    duration_seconds: float
    video_codec: str | None
    audio_codec: str | None
    width_pixels: int
    height_pixels: int
    pixel_format: str | None
    video_duration_seconds: float | None
    audio_duration_seconds: float | None


@dataclass(frozen=True)
class FfmpegResult:
    """How an FFmpeg process ended."""

    return_code: int
    # With `-loglevel error` this is a few lines, so it is kept whole.
    stderr: str


# How much lower than the service a deferrable encode runs (nice(1)'s scale, 19 the lowest).
DEFERRED_NICENESS = 10


async def run_ffmpeg(
    ffmpeg_path: str, arguments: Sequence[str], *, timeout_seconds: float, niceness: int = 0
) -> FfmpegResult:
    """Runs FFmpeg without a shell; kills it on timeout (raising TimeoutError) and on cancellation. With
    `niceness`, it runs at that much lower CPU priority, so it takes only what other work leaves."""
    try:
        process = await asyncio.create_subprocess_exec(
            ffmpeg_path,
            *arguments,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        raise EncodingError("FFmpeg could not be started", detail=f"{ffmpeg_path}: {error}") from error
    if niceness:
        # Set from outside rather than in the child before exec: preexec_fn is unsafe with threads. The
        # first milliseconds run at normal priority, which is harmless.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, process.pid, niceness)
    try:
        async with asyncio.timeout(timeout_seconds):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            # SIGKILL cannot be ignored, so this wait is short even inside a cancelled task.
            await process.wait()
    text = stderr.decode("utf-8", errors="replace").strip()
    return FfmpegResult(return_code=process.returncode or 0, stderr=text)


async def render_still_video(
    *,
    ffmpeg_path: str,
    image_path: Path | None,
    audio_path: Path,
    duration_seconds: float,
    output_path: Path,
    profile: RenderProfile,
    encoder: str = "libx264",
    timeout_seconds: float = 120.0,
    is_audio_copied: bool = False,
    subtitles_path: Path | None = None,
    still_muxer: StillMuxer | None = None,
) -> RenderedVideo:
    """Renders `image_path` (or a calm placeholder when None) held for the narration in `audio_path`.

    With `is_audio_copied`, `audio_path` is already AAC as the profile wants it and is copied, not
    encoded: the render is then one still frame and a remux, a fraction of a second, by `still_muxer`
    (muxed_here in a worker thread of this process when None; media passes its encoder process's).

    With `subtitles_path` (WebVTT), the MP4 carries them as a soft subtitle track, which costs nothing
    noticeable: a few hundred bytes of text.

    The MP4 appears at `output_path` only when complete: FFmpeg writes a hidden temporary file beside it,
    which is renamed on success and removed on failure, timeout or cancellation.
    """
    if not (math.isfinite(duration_seconds) and duration_seconds >= _MIN_DURATION_SECONDS):
        raise InvalidInputError("duration_seconds", f"must be at least {_MIN_DURATION_SECONDS} s")
    _video_encoder_arguments(encoder, profile)  # refuses an unknown encoder before any work
    hidden_prefix = f".{output_path.stem}.{uuid.uuid4().hex}"
    partial_path = output_path.with_name(f"{hidden_prefix}.partial.mp4")
    placeholder_path = output_path.with_name(f"{hidden_prefix}.placeholder.png")
    try:
        muxed: MuxedStill | None = None
        if is_audio_copied and encoder == "libx264":
            muxed = await asyncio.to_thread(
                muxed_here if still_muxer is None else still_muxer,
                image_path=image_path,
                audio_path=audio_path,
                subtitles_path=subtitles_path,
                duration_seconds=duration_seconds,
                output_path=partial_path,
                profile=profile,
            )
        if muxed is None:
            await _render_with_ffmpeg(
                ffmpeg_path=ffmpeg_path,
                image_path=image_path,
                placeholder_path=placeholder_path,
                audio_path=audio_path,
                duration_seconds=duration_seconds,
                partial_path=partial_path,
                profile=profile,
                encoder=encoder,
                timeout_seconds=timeout_seconds,
                is_audio_copied=is_audio_copied,
                subtitles_path=subtitles_path,
            )
            info, size_bytes = await asyncio.to_thread(_publish, partial_path, output_path, profile)
            seconds, width, height = info.duration_seconds, info.width_pixels, info.height_pixels
        else:
            # Written here, both streams known from the writing: opening the file again to learn what it
            # holds cost as much CPU as a third of the mux (0.013 s a video for a 265 s narration).
            size_bytes = await asyncio.to_thread(_renamed_into_place, partial_path, output_path)
            seconds, width, height = muxed.duration_seconds, muxed.width_pixels, muxed.height_pixels
    finally:
        # Runs on success too, where the partial file is already renamed and these are no-ops.
        partial_path.unlink(missing_ok=True)
        placeholder_path.unlink(missing_ok=True)
    return RenderedVideo(
        path=output_path,
        duration_seconds=seconds,
        width_pixels=width,
        height_pixels=height,
        size_bytes=size_bytes,
        encoder=encoder,
    )


class StillMuxer(Protocol):
    """What muxes a still over sound already made (muxed_here, here or in another process). Blocking."""

    def __call__(
        self,
        *,
        image_path: Path | None,
        audio_path: Path,
        subtitles_path: Path | None,
        duration_seconds: float,
        output_path: Path,
        profile: RenderProfile,
    ) -> MuxedStill | None: ...


def muxed_here(
    *,
    image_path: Path | None,
    audio_path: Path,
    subtitles_path: Path | None,
    duration_seconds: float,
    output_path: Path,
    profile: RenderProfile,
) -> MuxedStill | None:
    """A still over sound already made, muxed in this process (still_mux) where FFmpeg was a process per
    video: the placeholder's picture encoded once per process, an image's here. None, with nothing written,
    for an image FFmpeg must scale first."""
    picture = (
        placeholder_picture(placeholder_height(profile), profile.x264_crf)
        if image_path is None
        else image_picture(image_path, profile.max_height_pixels, profile.x264_crf)
    )
    if picture is None:
        return None
    return mux_still_video(
        picture=picture,
        aac_path=audio_path,
        subtitles_path=subtitles_path,
        duration_seconds=duration_seconds,
        output_path=output_path,
        subtitle_language=SUBTITLE_LANGUAGE,
    )


async def _render_with_ffmpeg(
    *,
    ffmpeg_path: str,
    image_path: Path | None,
    placeholder_path: Path,
    audio_path: Path,
    duration_seconds: float,
    partial_path: Path,
    profile: RenderProfile,
    encoder: str,
    timeout_seconds: float,
    is_audio_copied: bool,
    subtitles_path: Path | None,
) -> None:
    """FFmpeg renders the video to `partial_path` (with the placeholder, written to `placeholder_path`,
    when there is no image)."""
    if image_path is None:
        await asyncio.to_thread(_write_placeholder, placeholder_path, profile)
    arguments = still_video_arguments(
        image_path=placeholder_path if image_path is None else image_path,
        audio_path=audio_path,
        duration_seconds=duration_seconds,
        output_path=partial_path,
        profile=profile,
        encoder=encoder,
        is_audio_copied=is_audio_copied,
        subtitles_path=subtitles_path,
    )
    try:
        result = await run_ffmpeg(
            ffmpeg_path,
            arguments,
            timeout_seconds=timeout_seconds,
            niceness=DEFERRED_NICENESS if profile.is_deferrable else 0,
        )
    except TimeoutError:
        raise StageTimeoutError("video rendering", timeout_seconds) from None
    if result.return_code != 0:
        raise encoding_failure(
            f"FFmpeg could not render the {profile.name} video (exit status {result.return_code})",
            result.stderr[-_STDERR_TAIL_CHARACTERS:],
        )


def _publish(partial_path: Path, output_path: Path, profile: RenderProfile) -> tuple[MediaInfo, int]:
    """Checks the file FFmpeg finished and renames it into place (atomic within one directory)."""
    info = probe_media(partial_path)
    if info.video_codec is None or info.audio_codec is None:
        raise EncodingError(f"the {profile.name} video is missing its picture or its sound")
    return info, _renamed_into_place(partial_path, output_path)


def _renamed_into_place(partial_path: Path, output_path: Path) -> int:
    """Renames the finished file into place (atomic within one directory); returns its size."""
    os.replace(partial_path, output_path)
    return output_path.stat().st_size


def still_video_arguments(
    *,
    image_path: Path,
    audio_path: Path,
    duration_seconds: float,
    output_path: Path,
    profile: RenderProfile,
    encoder: str,
    is_audio_copied: bool = False,
    subtitles_path: Path | None = None,
) -> list[str]:
    """Builds FFmpeg's argument list (without the program) for one still-image video."""
    # One input frame whose duration is the narration's: frame rate = 1 / duration.
    duration = Fraction(round(duration_seconds * _DURATION_DENOMINATOR), _DURATION_DENOMINATOR)
    frame_rate = 1 / duration
    video_filter = _video_filter(profile, encoder)
    audio_filter = _audio_filter(profile, float(duration))
    if is_audio_copied and audio_filter is not None:
        raise InvalidInputError(
            "profile", f"the {profile.name} profile masters its audio, so it cannot copy it"
        )
    arguments = ["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if encoder == "h264_vaapi":
        arguments += ["-vaapi_device", _VAAPI_DEVICE]
    arguments += [
        # image2pipe picks the decoder from the file's content and never expands `%d` patterns in the name.
        *("-protocol_whitelist", "file,pipe", "-f", "image2pipe"),
        *("-framerate", f"{frame_rate.numerator}/{frame_rate.denominator}", "-i", str(image_path)),
        *("-protocol_whitelist", "file,pipe", "-i", str(audio_path)),
    ]
    subtitle_arguments: list[str] = []
    if subtitles_path is not None:
        # Numbered after however many inputs come before it.
        subtitles_input = arguments.count("-i")
        arguments += ["-protocol_whitelist", "file,pipe", "-f", "webvtt", "-i", str(subtitles_path)]
        # mov_text is the subtitle format MP4 players and editors read (Chromium shows none from an MP4:
        # the web page loads the WebVTT through <track>); the language tag lets a player offer it by name.
        subtitle_arguments = [
            *("-map", f"{subtitles_input}:s:0", "-c:s", "mov_text"),
            *("-metadata:s:s:0", f"language={SUBTITLE_LANGUAGE}"),
        ]
    if audio_filter is None:
        arguments += [
            "-filter_complex",
            f"[0:v]{video_filter}[picture]",
            "-map",
            "[picture]",
            "-map",
            "1:a:0",
        ]
    else:
        arguments += [
            *("-filter_complex", f"[0:v]{video_filter}[picture];{audio_filter}"),
            *("-map", "[picture]", "-map", "[sound]"),
        ]
    arguments += subtitle_arguments
    # `-t`, never `-shortest`: it also ends the ambient bed exactly where the narration ends.
    arguments += ["-t", f"{float(duration):.3f}"]
    arguments += _video_encoder_arguments(encoder, profile)
    arguments += ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"]
    if is_audio_copied:
        arguments += ["-c:a", "copy"]
    else:
        arguments += [
            *("-c:a", "aac"),
            *(
                ("-b:a", str(profile.audio_bitrate_bits_per_second))
                if profile.aac_quality is None
                else ("-q:a", str(profile.aac_quality))
            ),
            *("-ar", str(profile.audio_sample_rate_hertz), "-ac", str(profile.audio_channels)),
            *("-aac_coder", profile.aac_coder),
        ]
        if not profile.is_aac_mid_side_search_enabled:
            arguments += ["-aac_ms", "0"]
    arguments += ["-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4", str(output_path)]
    return arguments


def _video_filter(profile: RenderProfile, encoder: str) -> str:
    height = "trunc(ih/2)*2"
    if profile.max_height_pixels is not None:
        height = f"min({profile.max_height_pixels},{height})"
    # Width -2 keeps the aspect ratio at an even width; BT.709 matches the tags written on the stream.
    scale = f"scale=w=-2:h='{height}':flags=lanczos:out_color_matrix=bt709:out_range=tv,setsar=1"
    if encoder == "h264_vaapi":
        return f"{scale},format=nv12,hwupload"
    if encoder == "h264_qsv":
        return f"{scale},format=nv12"
    return f"{scale},format=yuv420p"


def _audio_filter(profile: RenderProfile, duration_seconds: float) -> str | None:
    if profile.narration_filter is None and profile.ambient_bed_decibels is None:
        return None
    output_format = (
        f"aformat=sample_fmts=fltp:sample_rates={profile.audio_sample_rate_hertz}"
        f":channel_layouts={'stereo' if profile.audio_channels == 2 else 'mono'}"
    )
    voice = "[1:a]" + ",".join(part for part in (profile.narration_filter, output_format) if part)
    if profile.ambient_bed_decibels is None:
        return f"{voice}[sound]"
    bed = _ambient_bed(profile, duration_seconds)
    # normalize=0 keeps the voice at its level instead of halving both inputs; duration=first ends the
    # endless noise with the narration.
    return f"{voice}[voice];{bed}[bed];[voice][bed]amix=inputs=2:duration=first:normalize=0[sound]"


def _ambient_bed(profile: RenderProfile, duration_seconds: float) -> str:
    """Brown noise, low-passed to a distant hush; independent noise per channel gives a wide, soft bed. It
    rises from silence and falls back to it, so neither end of the video starts or stops with a hiss."""
    fade = min(profile.ambient_bed_fade_seconds, duration_seconds / 2)
    fades = (
        f",afade=t=in:st=0:d={fade:.3f}:curve=hsin,afade=t=out:st={duration_seconds - fade:.3f}:d={fade:.3f}"
        ":curve=hsin"
        if fade > 0
        else ""
    )
    channels = [f"{bed_noise_filter(profile, seed)}{fades}" for seed in BED_SEEDS[: profile.audio_channels]]
    if len(channels) == 1:
        return channels[0]
    return f"{channels[0]}[bedleft];{channels[1]}[bedright];[bedleft][bedright]amerge=inputs=2"


def copying_sound(profile: RenderProfile) -> RenderProfile:
    """The profile for a render whose sound was already made as the profile wants it (live.py made the
    ENHANCED sound while the narration was spoken): the same picture, and the sound copied."""
    return dataclasses.replace(profile, narration_filter=None, ambient_bed_decibels=None)


# The live sound's AAC quality (FFmpeg's `-q:a` scale for its own encoder): about the QUICK bitrate for a
# spoken narration over the bed, at which its sound measured as clean as at that average bitrate or cleaner.
LIVE_AAC_QUALITY = 2.0


def live_sound_profile(sample_rate_hertz: int, aac_quality: float = LIVE_AAC_QUALITY) -> RenderProfile:
    """The meditation's sound as the live narration makes it, once, for the preview and both videos: the
    ENHANCED room (applied to each sentence before it is mastered) and bed, at the voice's own rate, in mono,
    at a constant quality near the QUICK bitrate.

    One sound rather than a plain voice for the preview and QUICK and a second for ENHANCED: a player that
    moves from one to the next hears no change, and the ENHANCED render is a copy. The voice's rate, since
    nothing in it, the room or the bed (low-passed at 280 Hz) reaches above half of it; mono, since the voice
    is mono and a second channel only widened a bed 36 LU under it, at half again the AAC encoder's time.
    Another `aac_quality` is for hearing the trade between the sound and its bytes (bench.sound_samples)."""
    return dataclasses.replace(
        ENHANCED_PROFILE,
        name="live",
        # The room is applied as each sentence is mastered (room.impulse_response), so the limiter holds its
        # peaks too.
        narration_filter=None,
        audio_sample_rate_hertz=sample_rate_hertz,
        audio_channels=1,
        audio_bitrate_bits_per_second=QUICK_PROFILE.audio_bitrate_bits_per_second,
        aac_quality=aac_quality,
    )


# Independent noise per channel gives a wide, soft bed.
BED_SEEDS = (7, 11)


def bed_noise_filter(profile: RenderProfile, seed: int) -> str:
    """One channel of the bed: brown noise, low-passed to a distant hush, at the profile's level."""
    return (
        f"anoisesrc=color=brown:sample_rate={profile.audio_sample_rate_hertz}:amplitude=0.5:seed={seed},"
        f"lowpass=f=280,volume={profile.ambient_bed_decibels}dB"
    )


def _video_encoder_arguments(encoder: str, profile: RenderProfile) -> list[str]:
    if encoder == "libx264":
        return [
            *("-c:v", "libx264", "-preset", "veryfast", "-crf", str(profile.x264_crf)),
            *("-tune", "stillimage", "-pix_fmt", "yuv420p"),
        ]
    if encoder == "h264_nvenc":
        return [
            *("-c:v", "h264_nvenc", "-preset", "p5", "-tune", "hq"),
            *("-rc", "vbr", "-cq", "19", "-b:v", "0", "-pix_fmt", "yuv420p"),
        ]
    if encoder == "h264_qsv":
        return ["-c:v", "h264_qsv", "-preset", "slower", "-global_quality", "18"]
    if encoder == "h264_vaapi":
        return ["-c:v", "h264_vaapi", "-qp", "18"]
    raise InvalidInputError("encoder", f"{encoder!r} is not a supported H.264 encoder")


def probe_media(path: Path) -> MediaInfo:
    """Reads a media file's streams with PyAV. Blocking: run it in a thread from async code."""
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            return MediaInfo(
                duration_seconds=container.duration / av.time_base if container.duration else 0.0,
                video_codec=video.codec_context.name if video else None,
                audio_codec=audio.codec_context.name if audio else None,
                width_pixels=video.codec_context.width if video else 0,
                height_pixels=video.codec_context.height if video else 0,
                pixel_format=video.codec_context.pix_fmt if video else None,
                video_duration_seconds=_stream_seconds(video),
                audio_duration_seconds=_stream_seconds(audio),
            )
    except av.FFmpegError as error:
        raise EncodingError(f"{path.name} is not a readable media file", detail=str(error)) from error


def _stream_seconds(stream: VideoStream | AudioStream | None) -> float | None:
    if stream is None or stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def placeholder_height(profile: RenderProfile) -> int:
    """The placeholder's height in a video of this profile: the profile's own, or full HD."""
    return profile.max_height_pixels or _PLACEHOLDER_HEIGHT_PIXELS


def _write_placeholder(path: Path, profile: RenderProfile) -> None:
    """Writes the placeholder at the profile's height in 16:9, the shape of a landscape image's video."""
    height = placeholder_height(profile)
    path.write_bytes(_placeholder_png(placeholder_width(height), height))


@functools.lru_cache(maxsize=4)
def _placeholder_png(width: int, height: int) -> bytes:
    """The placeholder at one size as PNG, painted once per process: every job without an image yet shows
    the same picture, and painting it again was a few per cent of media's CPU per job."""
    encoded = io.BytesIO()
    paint_placeholder(width, height).save(encoded, format="PNG", compress_level=1)
    return encoded.getvalue()


def measure_audio_seconds(path: Path) -> float:
    """The first audio stream's exact length, from its packets: a raw ADTS (AAC) file has no duration in
    any header, and the estimate containers give from its bit rate can be wrong by a third."""
    with av.open(str(path)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None or stream.time_base is None:
            raise InvalidInputError("audio", "has no audio stream")
        ticks = sum(packet.duration or 0 for packet in container.demux(stream))
        return float(ticks * stream.time_base)


def narration_seconds(path: Path) -> float:
    """A narration's exact length: from a WAV's header, or from an AAC's packets (a live narration stores
    AAC alone). Raises InvalidInputError for a file that is neither."""
    try:
        with wave.open(str(path), "rb") as reader:
            return reader.getnframes() / reader.getframerate()
    except (wave.Error, EOFError):
        pass
    try:
        return measure_audio_seconds(path)
    except (av.FFmpegError, InvalidInputError) as error:
        raise InvalidInputError("narration", f"is not a readable narration, WAV or AAC ({error})") from None
