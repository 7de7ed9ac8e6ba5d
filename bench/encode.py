"""The reference encode against Stillpoint's renderer on one image and one narration: time and SSIM."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import resource
import statistics
import subprocess
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.reference_pipeline import reference_encode_command, run_reference_encode
from services.content.painter import paint_landscape
from services.content.script_composer import compose_meditation
from services.image_sizes import LANDSCAPE_SIZE_PIXELS
from services.media.live_encoder import LiveEncoder, master_sentence
from services.media.speech import EspeakNarrator, Narration, encode_wav
from services.media.video import (
    ENHANCED_PROFILE,
    QUICK_PROFILE,
    copying_sound,
    probe_media,
    render_still_video,
)

IMAGE_PROMPT = "a calm sea at dusk under a soft sky, mountains and a still lake, stars coming out"
# Issue 16's comparison: an ENHANCED render of a 3-minute narration over a 1792×1024 image (the landscape
# size Stillpoint asks image providers for) against the reference FFmpeg command.
IMAGE_SIZE_PIXELS = LANDSCAPE_SIZE_PIXELS
NARRATION_SECONDS = 180.0
QUICK_NARRATION_SECONDS = 6.0
# How long the pieces are that the live sound is made of, as sentences are.
_SENTENCE_SECONDS = 4
_SSIM = re.compile(r"SSIM Y:([0-9.]+).*All:([0-9.]+)")
EXAMPLE_CONVERSATION = Path(__file__).resolve().parent.parent / "examples" / "conversation.json"


@dataclass(frozen=True)
class EncodeInputs:
    """The shared inputs: a detailed PNG, the narration as WAV and as the AAC a live narration leaves."""

    image_path: Path
    wav_path: Path
    aac_path: Path
    # The sound as the live encoder leaves it (the voice in the room, over the bed, AAC): both videos copy it.
    enhanced_audio_path: Path
    duration_seconds: float
    width_pixels: int
    height_pixels: int


def is_audio_copy_supported() -> bool:
    """Whether Stillpoint's renderer can copy an already-AAC narration instead of encoding it."""
    return "is_audio_copied" in inspect.signature(render_still_video).parameters


async def prepare_inputs(ffmpeg_path: str, work_dir: Path, narration_seconds: float) -> EncodeInputs:
    """Paints the image, speaks the example conversation's meditation with espeak-ng and cuts it to length."""
    image_path = await asyncio.to_thread(_write_image, work_dir)
    narrator = EspeakNarrator()
    try:
        narration = await narrator.narrate(compose_meditation(_example_source_text()))
    finally:
        narrator.close()
    samples = round(narration_seconds * narration.sample_rate_hertz)
    # Spoken again from the start where the script is shorter than asked for: the length is the comparison's.
    repeats = -(-samples * 2 // max(2, len(narration.pcm_s16le)))
    narration = Narration((narration.pcm_s16le * repeats)[: samples * 2], narration.sample_rate_hertz)
    wav_path, aac_path = await asyncio.to_thread(_write_narration, ffmpeg_path, work_dir, narration)
    enhanced_audio_path = await asyncio.to_thread(_write_enhanced_audio, work_dir, narration)
    width, height = IMAGE_SIZE_PIXELS
    return EncodeInputs(
        image_path, wav_path, aac_path, enhanced_audio_path, narration.duration_seconds, width, height
    )


def _write_enhanced_audio(work_dir: Path, narration: Narration) -> Path:
    """The sound a live narration leaves (video.live_sound_profile), which both videos copy, made by the live
    encoder itself: the narration in sentence-long pieces, each in the room and mastered as live.py does,
    over the bed, rising at the start and falling away over the last piece."""
    folder = work_dir / "live"
    folder.mkdir(parents=True, exist_ok=True)
    rate = narration.sample_rate_hertz
    piece_bytes = 2 * _SENTENCE_SECONDS * rate
    pcm = narration.pcm_s16le
    encoder = LiveEncoder(folder, rate)
    try:
        for start in range(0, len(pcm), piece_bytes):
            sentence = Narration(pcm[start : start + piece_bytes], rate)
            encoder.write(master_sentence(sentence), is_last=start + piece_bytes >= len(pcm))
        encoder.close()
    finally:
        encoder.abandon()
    return encoder.aac_path


def wav_sample_rate(path: Path) -> int:
    """A WAV file's sample rate."""
    with wave.open(str(path), "rb") as reader:
        return reader.getframerate()


def _write_image(work_dir: Path) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    image_path = work_dir / "source.png"
    image_path.write_bytes(paint_landscape(IMAGE_PROMPT, *IMAGE_SIZE_PIXELS))
    return image_path


def _example_source_text() -> str:
    conversation = json.loads(EXAMPLE_CONVERSATION.read_text(encoding="utf-8"))
    return "\n".join(f"User: {message['text']}" for message in conversation["messages"])


def _write_narration(ffmpeg_path: str, work_dir: Path, narration: Narration) -> tuple[Path, Path]:
    """The narration as WAV, and as the ADTS AAC a live narration leaves behind for the QUICK profile."""
    wav_path = work_dir / "narration.wav"
    wav_path.write_bytes(encode_wav(narration))
    aac_path = work_dir / "narration.aac"
    subprocess.run(
        [
            ffmpeg_path,
            *("-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(wav_path)),
            *("-c:a", "aac", "-b:a", str(QUICK_PROFILE.audio_bitrate_bits_per_second)),
            *("-ar", str(QUICK_PROFILE.audio_sample_rate_hertz), "-ac", str(QUICK_PROFILE.audio_channels)),
            *("-aac_coder", "fast", "-aac_ms", "0", "-f", "adts", str(aac_path)),
        ],
        check=True,
        capture_output=True,
    )
    return wav_path, aac_path


@dataclass(frozen=True)
class SsimScores:
    """SSIM of a frame against the source: of luma (the usual figure), and of all three planes at 4:4:4,
    where colour counts for two thirds and 4:2:0 video pays heavily for its halved chroma."""

    luma: float
    all_planes_444: float


def ssim_of_middle_frame(
    ffmpeg_path: str, video_path: Path, source_path: Path, duration_seconds: float
) -> SsimScores:
    """SSIM (FFmpeg's `ssim` filter) of the frame shown mid-video against the source image, the frame scaled
    to the source's size first so a smaller video pays for the detail it lost."""
    frame_path = video_path.with_suffix(".middle.png")
    subprocess.run(
        [
            ffmpeg_path,
            *("-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
            # A still video's frames are all one picture; the nearest earlier keyframe is read, not re-timed.
            *("-noaccurate_seek", "-ss", f"{duration_seconds / 2:.3f}", "-i", str(video_path)),
            *("-frames:v", "1", str(frame_path)),
        ],
        check=True,
        capture_output=True,
    )
    with_source = subprocess.run(
        [
            ffmpeg_path,
            *("-nostdin", "-hide_banner", "-i", str(frame_path), "-i", str(source_path)),
            "-lavfi",
            "[0:v][1:v]scale2ref=flags=bicubic[frame][source];"
            "[frame]format=yuv444p[a];[source]format=yuv444p[b];[a][b]ssim",
            *("-f", "null", "-"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    found = _SSIM.findall(with_source.stderr)
    if not found:
        raise RuntimeError(f"FFmpeg printed no SSIM: {with_source.stderr[-500:]}")
    luma, all_planes = found[-1]
    return SsimScores(float(luma), float(all_planes))


@dataclass
class _Runs:
    wall_seconds: list[float]
    cpu_seconds: list[float]
    output: Path


async def _measure(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Wall time and CPU time (this process and the children it waited for) of one piece of work."""
    before_self = resource.getrusage(resource.RUSAGE_SELF)
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    await work()
    wall = time.perf_counter() - started
    after_self = resource.getrusage(resource.RUSAGE_SELF)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(
        getattr(after, field) - getattr(before, field)
        for before, after in ((before_self, after_self), (before_children, after_children))
        for field in ("ru_utime", "ru_stime")
    )
    return wall, cpu


async def compare_encodes(
    ffmpeg_path: str,
    work_dir: Path,
    *,
    narration_seconds: float,
    repetitions: int,
    reference_repetitions: int = 1,
) -> dict[str, object]:
    """Runs Stillpoint's renders `repetitions` times and the reference encode `reference_repetitions` times,
    interleaved, and reports medians, SSIM and speed-ups."""
    inputs = await prepare_inputs(ffmpeg_path, work_dir, narration_seconds)
    copy_supported = is_audio_copy_supported()

    def render(profile_name: str, audio: Path, output: Path, copied: bool) -> Callable[[], Awaitable[object]]:
        profile = QUICK_PROFILE if profile_name == "quick" else ENHANCED_PROFILE
        if copied and profile is ENHANCED_PROFILE:
            profile = copying_sound(profile)  # as media renders it with the sound made live
        # Keyword arguments an older renderer may not take (its other parameters have other types).
        extra: dict[str, Any] = {"is_audio_copied": True} if copied else {}
        return lambda: render_still_video(
            ffmpeg_path=ffmpeg_path,
            image_path=inputs.image_path,
            audio_path=audio,
            duration_seconds=inputs.duration_seconds,
            output_path=output,
            profile=profile,
            encoder="libx264",
            timeout_seconds=600.0,
            **extra,
        )

    reference_output = work_dir / "reference.mp4"
    commands: dict[str, Callable[[], Awaitable[object]]] = {
        "reference": lambda: run_reference_encode(
            reference_encode_command(ffmpeg_path, inputs.image_path, inputs.wav_path, reference_output)
        ),
        "stillpoint_quick_from_wav": render("quick", inputs.wav_path, work_dir / "quick-wav.mp4", False),
        "stillpoint_enhanced_from_wav": render(
            "enhanced", inputs.wav_path, work_dir / "enhanced-wav.mp4", False
        ),
    }
    outputs = {
        "reference": reference_output,
        "stillpoint_quick_from_wav": work_dir / "quick-wav.mp4",
        "stillpoint_enhanced_from_wav": work_dir / "enhanced-wav.mp4",
    }
    if copy_supported:
        commands["stillpoint_quick_from_aac"] = render(
            "quick", inputs.aac_path, work_dir / "quick-aac.mp4", True
        )
        outputs["stillpoint_quick_from_aac"] = work_dir / "quick-aac.mp4"
        commands["stillpoint_enhanced_from_live_audio"] = render(
            "enhanced", inputs.enhanced_audio_path, work_dir / "enhanced-live.mp4", True
        )
        outputs["stillpoint_enhanced_from_live_audio"] = work_dir / "enhanced-live.mp4"
    runs = {name: _Runs([], [], outputs[name]) for name in commands}
    planned = {name: reference_repetitions if name == "reference" else repetitions for name in commands}
    for round_number in range(max(planned.values())):
        for name, work in commands.items():
            if round_number >= planned[name]:
                continue
            wall, cpu = await _measure(work)
            runs[name].wall_seconds.append(wall)
            runs[name].cpu_seconds.append(cpu)

    results: dict[str, object] = {}
    for name, measured in runs.items():
        info = await asyncio.to_thread(probe_media, measured.output)
        ssim = await asyncio.to_thread(
            ssim_of_middle_frame, ffmpeg_path, measured.output, inputs.image_path, inputs.duration_seconds
        )
        results[name] = {
            "wall_seconds": statistics.median(measured.wall_seconds),
            "wall_seconds_runs": [round(value, 4) for value in measured.wall_seconds],
            "cpu_seconds": statistics.median(measured.cpu_seconds),
            "ssim": ssim.luma,
            "ssim_all_planes_444": ssim.all_planes_444,
            "size_bytes": measured.output.stat().st_size,
            "width_pixels": info.width_pixels,
            "height_pixels": info.height_pixels,
            "pixel_format": info.pixel_format,
            "video_duration_seconds": info.video_duration_seconds,
            "audio_duration_seconds": info.audio_duration_seconds,
        }
    if not copy_supported:
        results["stillpoint_quick_from_aac"] = {
            "supported": False,
            "note": "render_still_video cannot copy an AAC narration in this tree: measured from WAV only",
        }
    reference_wall = _wall(results, "reference")
    speedups: dict[str, float | None] = {}
    for name in (
        "stillpoint_quick_from_wav",
        "stillpoint_enhanced_from_wav",
        "stillpoint_quick_from_aac",
        "stillpoint_enhanced_from_live_audio",
    ):
        render_wall = _wall(results, name)
        speedups[name] = (
            None if render_wall is None or reference_wall is None else reference_wall / render_wall
        )
    return {
        "inputs": {
            "image": f"{inputs.width_pixels}×{inputs.height_pixels} PNG from paint_landscape",
            "image_bytes": inputs.image_path.stat().st_size,
            "narration_seconds": round(inputs.duration_seconds, 3),
            "narration": "espeak-ng WAV (22.05 kHz mono) of the example conversation's meditation",
            "aac_bytes": inputs.aac_path.stat().st_size,
        },
        "repetitions": repetitions,
        "reference_repetitions": reference_repetitions,
        "audio_copy_supported": copy_supported,
        "commands": results,
        "speedup_over_reference": speedups,
    }


def _wall(results: dict[str, object], name: str) -> float | None:
    entry = results.get(name)
    if isinstance(entry, dict) and isinstance(entry.get("wall_seconds"), float):
        return float(entry["wall_seconds"])
    return None
