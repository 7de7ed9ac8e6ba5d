"""A still video of the placeholder over sound that is already AAC, made in this process: the QUICK video of a
live narration (the preview's picture, the narration's sound copied).

FFmpeg did it as a process per job: painting and writing the placeholder, encoding it, probing the AAC and
the result, about 0.1 CPU s and 0.12 s of wall time per video, on the path from the narration's end to the
QUICK video. The placeholder is the same picture for every job, so it is encoded once per process and size
(`_placeholder_picture`), and each video is only a mux: the picture's one packet held for the narration, the
AAC's packets, and the subtitles as MP4 text (mov_text). Blocking: run it in a worker thread.
"""

from __future__ import annotations

import functools
import io
import struct
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

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
    """Encodes the placeholder at this size now, before the first video needs it (see `_placeholder_picture`).
    Blocking: run it in a thread."""
    with _ENCODING_ONCE:
        _placeholder_picture(height_pixels, x264_crf)


def mux_placeholder_video(
    *,
    aac_path: Path,
    subtitles_path: Path | None,
    duration_seconds: float,
    output_path: Path,
    height_pixels: int,
    x264_crf: int,
    subtitle_language: str,
) -> None:
    """Writes to `output_path` the placeholder (16:9 at `height_pixels`) held for `duration_seconds` over the
    AAC in `aac_path` (an ADTS file), with the WebVTT in `subtitles_path` as a text track. Raises
    EncodingError when FFmpeg's libraries refuse the inputs; the caller removes a half-written file."""
    with _ENCODING_ONCE:
        picture = _placeholder_picture(height_pixels, x264_crf)
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
            still.duration = round(duration_seconds * 1000)
            video.mux(still)
            for packet in sound.demux(sound.streams.audio[0]):
                if packet.size:
                    packet.stream = sound_stream
                    video.mux(packet)
            if text_stream is not None:
                for start, end, text in cues:
                    sample = av.Packet(struct.pack(">H", len(text)) + text)
                    sample.stream = text_stream
                    sample.time_base = _MILLISECONDS
                    sample.pts = sample.dts = start
                    sample.duration = end - start
                    video.mux(sample)
    except av.FFmpegError as error:
        raise EncodingError("the placeholder video could not be muxed", detail=str(error)) from error


@functools.lru_cache(maxsize=4)
def _placeholder_picture(height_pixels: int, x264_crf: int) -> bytes:
    """The placeholder at this height in 16:9, one H.264 keyframe in an MP4 (in memory), encoded as FFmpeg
    encoded a still: x264 at the profile's rate factor, BT.709 in TV range, tagged so."""
    width_pixels = placeholder_width(height_pixels)
    rgb = np.asarray(paint_placeholder(width_pixels, height_pixels).convert("RGB"))
    picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG", interpolation="LANCZOS"
    )
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264",
            rate=1,
            options={"preset": "veryfast", "crf": str(x264_crf), "tune": "stillimage"},
        )
        stream.width, stream.height, stream.pix_fmt = width_pixels, height_pixels, "yuv420p"
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
