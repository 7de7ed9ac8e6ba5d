"""The pause-mark notation a meditation script uses to tell the narrator where to hold silence."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# `[pause 3s]` or `[pause 1.5s]`: short enough to read in a transcript, unambiguous to parse, and never
# spoken by accident because the narrator strips every bracketed mark.
PAUSE_MARK_PATTERN = re.compile(r"\[pause\s+(\d+(?:\.\d+)?)\s*s\]", re.IGNORECASE)
# Longer holds make a listener think the audio stalled; shorter ones are just a comma.
MIN_PAUSE_SECONDS = 0.5
MAX_PAUSE_SECONDS = 12.0
_WORD_PATTERN = re.compile(r"[A-Za-z0-9’']+")


@dataclass(frozen=True)
class SpokenText:
    """A stretch of script to be spoken."""

    text: str


@dataclass(frozen=True)
class Silence:
    """A held silence between spoken stretches."""

    seconds: float


ScriptSegment = SpokenText | Silence


def format_pause(seconds: float) -> str:
    """Returns the pause mark for a silence of `seconds`, clamped to the supported range."""
    clamped = min(max(seconds, MIN_PAUSE_SECONDS), MAX_PAUSE_SECONDS)
    return f"[pause {clamped:g}s]"


def split_on_pauses(script: str) -> list[ScriptSegment]:
    """Splits a script into spoken stretches and silences, in order, dropping empty stretches."""
    return list(_iter_segments(script))


def _iter_segments(script: str) -> Iterator[ScriptSegment]:
    position = 0
    for match in PAUSE_MARK_PATTERN.finditer(script):
        spoken = script[position : match.start()].strip()
        if spoken:
            yield SpokenText(spoken)
        seconds = float(match.group(1))
        yield Silence(min(max(seconds, MIN_PAUSE_SECONDS), MAX_PAUSE_SECONDS))
        position = match.end()
    tail = script[position:].strip()
    if tail:
        yield SpokenText(tail)


def strip_pause_marks(script: str) -> str:
    """Returns the script's spoken words only, with pause marks removed and spacing tidied."""
    return re.sub(r"\s+", " ", PAUSE_MARK_PATTERN.sub(" ", script)).strip()


def count_spoken_words(script: str) -> int:
    """Counts the words a narrator would speak, ignoring pause marks."""
    return len(_WORD_PATTERN.findall(strip_pause_marks(script)))
