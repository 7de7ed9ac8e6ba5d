"""A still video over sound that is already AAC, made in this process: the QUICK video of a live narration
(the preview's picture, the narration's sound copied), and the ENHANCED video once the image has come.

FFmpeg did it as a process per video: painting or decoding the picture, encoding it, probing the AAC and the
result, about 0.1 CPU s and 0.12 s of wall time for the placeholder, 0.2-0.3 s of both for the 1792x1024
image, all of it on the path from the narration's end (or the image's) to the video. The placeholder is the
same picture for every job, so it is encoded once per process and size (`placeholder_picture`); an image is
encoded once, here (`image_picture`, 0.08 s for 1792x1024); each video is then only a mux: the picture's one
packet held for the narration, the AAC's packets, and the subtitles as MP4 text (mov_text). Blocking: run
it in a worker thread.
"""

from __future__ import annotations

import functools
import io
import struct
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from services.image_sizes import SUPPORTED_SIZES_PIXELS
from services.media.errors import EncodingError
from services.media.placeholder import paint_placeholder, placeholder_width

# The style of the text track, in the ASS header FFmpeg's WebVTT decoder hands its mov_text encoder (its
# default): the encoder needs one to open, and writes from it the track's sample description (3GPP TS 26.245
# 'tx3g': font 1 "Arial" at 16 px, opaque white, centred at the bottom), as FFmpeg's own renders had it.
# Each text sample is then a 16-bit length and the UTF-8 text.
_TEXT_STYLE = (
    b"[Script Info]\r\nScriptType: v4.00+\r\nPlayResX: 384\r\nPlayResY: 288\r\nScaledBorderAndShadow: yes\r\n"
    b"\r\n[V4+ Styles]\r\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
    b"BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, "
    b"Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\r\nStyle: Default,Arial,16,&Hffffff,&Hffffff,"
    b"&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,1\r\n\r\n[Events]\r\nFormat: Layer, Start, End, Style, "
    b"Name, MarginL, MarginR, MarginV, Effect, Text\r\n"
)
# The video's clock: milliseconds, as the subtitles' and the narration's lengths are known to.
_MILLISECONDS = Fraction(1, 1000)
# Encoding the placeholder once per size: fifty jobs ending together wait for the first.
_ENCODING_ONCE = threading.Lock()


def make_placeholder_ready(height_pixels: int, x264_crf: int) -> None:
    """Encodes the placeholder at this size now, before the first video needs it (see `placeholder_picture`).
    Blocking: run it in a thread."""
    placeholder_picture(height_pixels, x264_crf)


def placeholder_picture(height_pixels: int, x264_crf: int) -> bytes:
    """The placeholder at this height in 16:9, one H.264 keyframe in an MP4 (in memory), encoded once per
    process and size: fifty jobs ending together wait for the first."""
    with _ENCODING_ONCE:
        return _placeholder_picture(height_pixels, x264_crf)


def image_picture(image_path: Path, max_height_pixels: int | None, x264_crf: int) -> bytes | None:
    """The image at `image_path` (a PNG this system made) as one H.264 keyframe in an MP4, as FFmpeg's renders
    encoded it; None for an image of any size but those this system makes, or taller than
    `max_height_pixels`, which FFmpeg scales and renders (its scaling is not repeated here). Raises
    EncodingError when the file is no readable image."""
    try:
        with av.open(str(image_path), "r", format="image2pipe") as container:
            if not container.streams.video:
                raise EncodingError("the image has no picture in it")
            context = container.streams.video[0].codec_context
            size = (context.width, context.height)
            if size not in SUPPORTED_SIZES_PIXELS or (
                max_height_pixels is not None and context.height > max_height_pixels
            ):
                return None
            frame = next(container.decode(video=0), None)
    except av.FFmpegError as error:
        raise EncodingError("the image could not be read", detail=str(error)) from error
    if frame is None or (frame.width, frame.height) != size:
        raise EncodingError("the image could not be read", detail="no picture of the size it announced")
    return _encoded_picture(frame, x264_crf)


@dataclass(frozen=True)
class MuxedStill:
    """What mux_still_video wrote: the picture's size and the video's length (its longest track, as a
    player reads it), known from the writing, so the file need not be opened again to learn them."""

    width_pixels: int
    height_pixels: int
    duration_seconds: float


def mux_still_video(
    *,
    picture: bytes,
    aac_path: Path,
    subtitles_path: Path | None,
    duration_seconds: float,
    output_path: Path,
    subtitle_language: str,
) -> MuxedStill:
    """Writes to `output_path` the `picture` (placeholder_picture, image_picture) held for `duration_seconds`
    over the AAC in `aac_path` (an ADTS file), with the WebVTT in `subtitles_path` as a text track. Raises
    EncodingError when FFmpeg's libraries refuse the inputs (an AAC with no sound in it among them); the
    caller removes a half-written file."""
    try:
        with (
            av.open(str(output_path), "w", format="mp4", options={"movflags": "+faststart"}) as video,
            av.open(io.BytesIO(picture), "r") as pictures,
            av.open(str(aac_path), "r") as sound,
        ):
            picture_template = pictures.streams.video[0]
            picture_stream = video.add_stream_from_template(picture_template)
            picture_stream.time_base = _MILLISECONDS
            sound_stream = video.add_stream_from_template(sound.streams.audio[0])
            text_stream = None
            cues: list[tuple[int, int, bytes]] = []
            if subtitles_path is not None:
                cues = _cues(subtitles_path)
                text_stream = video.add_stream("mov_text")
                text_stream.codec_context.subtitle_header = _TEXT_STYLE
                text_stream.time_base = _MILLISECONDS
                text_stream.metadata["language"] = subtitle_language
            still = next(packet for packet in pictures.demux(picture_template) if packet.size)
            still.stream = picture_stream
            still.time_base = _MILLISECONDS
            still.pts = still.dts = 0
            still_milliseconds = round(duration_seconds * 1000)
            still.duration = still_milliseconds
            video.mux(still)
            sound_ticks = 0
            for packet in sound.demux(sound.streams.audio[0]):
                if packet.size:
                    sound_ticks += packet.duration or 0
                    packet.stream = sound_stream
                    video.mux(packet)
            sound_seconds = float(sound_ticks * (sound.streams.audio[0].time_base or 0))
            if text_stream is not None:
                for start, end, text in cues:
                    sample = av.Packet(struct.pack(">H", len(text)) + text)
                    sample.stream = text_stream
                    sample.time_base = _MILLISECONDS
                    sample.pts = sample.dts = start
                    sample.duration = end - start
                    video.mux(sample)
            width, height = picture_template.codec_context.width, picture_template.codec_context.height
    except av.FFmpegError as error:
        raise EncodingError("the still video could not be muxed", detail=str(error)) from error
    return MuxedStill(width, height, max(still_milliseconds / 1000, sound_seconds))


@functools.lru_cache(maxsize=4)
def _placeholder_picture(height_pixels: int, x264_crf: int) -> bytes:
    """The placeholder, painted and encoded (callers hold _ENCODING_ONCE: placeholder_picture)."""
    width_pixels = placeholder_width(height_pixels)
    rgb = np.asarray(paint_placeholder(width_pixels, height_pixels).convert("RGB"))
    return _encoded_picture(av.VideoFrame.from_ndarray(rgb, format="rgb24"), x264_crf)


def _encoded_picture(frame: av.VideoFrame, x264_crf: int) -> bytes:
    """The frame as one H.264 keyframe in an MP4 (in memory), encoded as FFmpeg's renders encode a still:
    converted with Lanczos to 4:2:0, x264 at the profile's rate factor, BT.709 in TV range, tagged so."""
    picture = frame.reformat(
        format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG", interpolation="LANCZOS"
    )
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264",
            rate=1,
            options={"preset": "veryfast", "crf": str(x264_crf), "tune": "stillimage"},
        )
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
        context = stream.codec_context
        # BT.709 primaries, transfer and matrix, in TV range (FFmpeg's enumerations).
        context.colorspace = context.color_primaries = context.color_trc = 1
        context.color_range = 1
        picture.pts = 0
        container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _cues(subtitles_path: Path) -> list[tuple[int, int, bytes]]:
    """Each cue of a WebVTT file: start and end in milliseconds, and its text as UTF-8."""
    cues = []
    with av.open(str(subtitles_path), "r", format="webvtt") as subtitles:
        stream = subtitles.streams.subtitles[0]
        for packet in subtitles.demux(stream):
            if packet.size and packet.pts is not None and packet.duration:
                start = round(packet.pts * packet.time_base * 1000)
                cues.append((start, start + round(packet.duration * packet.time_base * 1000), bytes(packet)))
    return cues
