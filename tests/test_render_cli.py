"""`stillpoint render`: one still-image video outside the services, from WAV or from AAC it copies."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from services.media.video import measure_audio_seconds, probe_media

SECONDS = 12.0


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A picture, a WAV narration and the same narration as ADTS AAC."""
    image = tmp_path / "image.png"
    Image.new("RGB", (1024, 1024), (80, 120, 170)).save(image)
    wav = tmp_path / "narration.wav"
    rate = 22_050
    tone = (np.sin(np.arange(int(rate * SECONDS)) * 2 * np.pi * 180 / rate) * 6000).astype(np.int16)
    with wave.open(str(wav), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(tone.tobytes())
    aac = tmp_path / "narration.aac"
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(wav),
            "-c:a",
            "aac",
            "-f",
            "adts",
            str(aac),
        ],
        check=True,
    )
    return image, wav, aac


def _render(image: Path, audio: Path, profile: str, output: Path) -> str:
    command = [
        sys.executable,
        "-m",
        "services.cli",
        "render",
        "--image",
        str(image),
        "--audio",
        str(audio),
    ]
    command += ["--profile", profile, "-o", str(output), "--encoder", "libx264"]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.mark.parametrize("profile", ["quick", "enhanced"])
def test_render_from_wav_matches_the_narration(
    inputs: tuple[Path, Path, Path], tmp_path: Path, profile: str
) -> None:
    image, wav, _ = inputs
    output = tmp_path / f"{profile}.mp4"
    printed = _render(image, wav, profile, output)
    info = probe_media(output)
    assert (info.video_codec, info.audio_codec, info.pixel_format) == ("h264", "aac", "yuv420p")
    assert info.video_duration_seconds is not None and abs(info.video_duration_seconds - SECONDS) < 0.5
    assert "audio encoded" in printed
    assert info.height_pixels == (720 if profile == "quick" else 1024)


def test_render_from_aac_copies_it_and_keeps_the_true_duration(
    inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    image, _, aac = inputs
    assert abs(measure_audio_seconds(aac) - SECONDS) < 0.1
    output = tmp_path / "copied.mp4"
    printed = _render(image, aac, "quick", output)
    info = probe_media(output)
    assert "audio copied" in printed
    assert info.audio_duration_seconds is not None and abs(info.audio_duration_seconds - SECONDS) < 0.5
    assert info.video_duration_seconds is not None and abs(info.video_duration_seconds - SECONDS) < 0.5


def test_render_names_a_missing_input(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "render",
            "--image",
            str(tmp_path / "none.png"),
            "--audio",
            "x",
            "-o",
            "y",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "none.png does not exist" in result.stderr
