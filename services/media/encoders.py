"""Chooses an H.264 encoder by actually opening each hardware candidate, falling back to libx264."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.media.video import run_ffmpeg

SOFTWARE_ENCODER = "libx264"
DEFAULT_CANDIDATES = ("h264_nvenc", "h264_qsv", "h264_vaapi")
_VAAPI_DEVICE = "/dev/dri/renderD128"
_REASON_CHARACTERS = 160
# FFmpeg prefixes log lines with the component that wrote them: "[h264_nvenc @ 0x55d2...] ".
_LOG_PREFIX = re.compile(r"^(?:\[[^\]]*\]\s*)+")


@dataclass(frozen=True)
class EncoderSelection:
    """The encoder chosen, and one human-readable line per probe explaining the choice."""

    selected: str
    probes: tuple[str, ...]


async def select_h264_encoder(
    ffmpeg_path: str,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    timeout_seconds: float = 10.0,
) -> EncoderSelection:
    """Probes every candidate at once and selects the first, in the given order, that encodes frames.

    Being compiled into FFmpeg proves nothing (h264_nvenc is in every wheel): only opening the encoder on
    this machine's driver and device shows it works, so each probe encodes two small frames.
    """
    reasons = await asyncio.gather(
        *(_probe(ffmpeg_path, candidate, timeout_seconds) for candidate in candidates)
    )
    selected = next(
        (candidate for candidate, reason in zip(candidates, reasons, strict=True) if reason is None),
        SOFTWARE_ENCODER,
    )
    probes = tuple(
        f"{candidate}: available" if reason is None else f"{candidate}: unavailable ({reason})"
        for candidate, reason in zip(candidates, reasons, strict=True)
    )
    return EncoderSelection(selected=selected, probes=probes)


async def _probe(ffmpeg_path: str, encoder: str, timeout_seconds: float) -> str | None:
    """Returns None when `encoder` opens and encodes, else a short reason."""
    try:
        result = await run_ffmpeg(ffmpeg_path, _probe_arguments(encoder), timeout_seconds=timeout_seconds)
    except TimeoutError:
        return f"no answer within {timeout_seconds:g} s"
    if result.return_code == 0:
        return None
    return _reason(result.stderr) or f"FFmpeg exit status {result.return_code}"


def _probe_arguments(encoder: str) -> list[str]:
    arguments = ["-nostdin", "-hide_banner", "-loglevel", "error"]
    if encoder == "h264_vaapi":
        arguments += ["-vaapi_device", _VAAPI_DEVICE]
    arguments += ["-f", "lavfi", "-i", "color=c=black:s=256x256:r=1", "-frames:v", "2"]
    if encoder == "h264_vaapi":
        arguments += ["-vf", "format=nv12,hwupload"]
    elif encoder == "h264_qsv":
        arguments += ["-vf", "format=nv12"]
    return [*arguments, "-c:v", encoder, "-f", "null", "-"]


def _reason(stderr: str) -> str:
    """FFmpeg states the cause first ("Cannot load libcuda.so.1") and then the consequences."""
    for line in stderr.splitlines():
        reason = _LOG_PREFIX.sub("", line).strip()
        if reason:
            return reason[:_REASON_CHARACTERS]
    return ""
