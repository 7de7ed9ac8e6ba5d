"""Loudness as FFmpeg's `ebur128` filter measures it (BS.1770, true peak oversampled): the tests' meter."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

_SUMMARY = re.compile(
    r"Integrated loudness:\s+I:\s+(-?[\d.]+|-inf) LUFS.*True peak:\s+Peak:\s+(-?[\d.]+|-inf) dBFS", re.S
)


@dataclass(frozen=True)
class Loudness:
    """A file's integrated loudness and true peak."""

    integrated_lufs: float
    true_peak_dbtp: float


def measure(path: Path, *, start_seconds: float = 0.0, seconds: float | None = None) -> Loudness:
    """Measures the first audio stream of `path` (a WAV, an AAC, an MP4 or an HLS playlist)."""
    arguments = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats"]
    if path.suffix == ".m3u8":
        # The playlist names its fMP4 segments by file name, beside it.
        arguments += ["-allowed_extensions", "ALL", "-extension_picky", "0"]
    arguments += ["-i", str(path), "-ss", f"{start_seconds:.3f}"]
    if seconds is not None:
        arguments += ["-t", f"{seconds:.3f}"]
    arguments += ["-map", "0:a:0", "-af", "ebur128=peak=true", "-f", "null", "-"]
    result = subprocess.run(arguments, capture_output=True, text=True, timeout=120, check=True)
    summary = _SUMMARY.search(result.stderr[result.stderr.rfind("Summary:") :])
    assert summary is not None, result.stderr[-2000:]
    return Loudness(float(summary.group(1)), float(summary.group(2)))
