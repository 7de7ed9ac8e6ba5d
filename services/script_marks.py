"""The marks a meditation script carries: where the narrator holds silence, and what it never speaks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# `[pause 3s]` or `[pause 1.5s]`: short enough to read in a transcript, unambiguous to parse, and never
# spoken by accident because the narrator strips every bracketed mark.
PAUSE_MARK_PATTERN = re.compile(r"\[pause\s+(\d+(?:\.\d+)?)\s*s\]", re.IGNORECASE)
# Any other bracketed mark (`[soft music]`, `[smile]`) is stage direction a narrator must not read out.
BRACKETED_MARK_PATTERN = re.compile(r"\[[^\]]*\]")
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
    return f"[pause {_clamped(seconds):g}s]"


def split_on_pauses(script: str) -> list[ScriptSegment]:
    """Splits a script into spoken stretches and silences, in order, dropping empty stretches."""
    return list(_iter_segments(script))


def total_pause_seconds(script: str) -> float:
    """The silence the script's pause marks hold, each clamped as a narrator clamps it."""
    return sum(segment.seconds for segment in _iter_segments(script) if isinstance(segment, Silence))


def strip_pause_marks(script: str) -> str:
    """Returns the script's spoken words only, with pause marks removed and spacing tidied."""
    return _tidy(PAUSE_MARK_PATTERN.sub(" ", script))


def speakable_text(text: str) -> str:
    """Returns what a narrator reads aloud: every bracketed mark removed and spacing tidied."""
    return _tidy(BRACKETED_MARK_PATTERN.sub(" ", text))


def count_spoken_words(script: str) -> int:
    """Counts the words a narrator would speak, ignoring pause marks."""
    return len(_WORD_PATTERN.findall(strip_pause_marks(script)))


def _iter_segments(script: str) -> Iterator[ScriptSegment]:
    position = 0
    for match in PAUSE_MARK_PATTERN.finditer(script):
        spoken = script[position : match.start()].strip()
        if spoken:
            yield SpokenText(spoken)
        yield Silence(_clamped(float(match.group(1))))
        position = match.end()
    tail = script[position:].strip()
    if tail:
        yield SpokenText(tail)


def _clamped(seconds: float) -> float:
    return min(max(seconds, MIN_PAUSE_SECONDS), MAX_PAUSE_SECONDS)


def _tidy(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
