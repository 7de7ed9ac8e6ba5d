"""Subtitles: the narration's sentences as WebVTT cues, each shown exactly while its sentence is heard."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from services.script_marks import speakable_text

# The usual ceiling for one subtitle line (broadcast and streaming guidelines say 37 to 42): longer sentences
# are wrapped into two balanced lines rather than cut into cues of guessed timing.
MAX_LINE_CHARACTERS = 42
WEBVTT_CONTENT_TYPE = "text/vtt"
# FFmpeg names an MP4 subtitle track's language with ISO 639-2 codes; the narration is English.
SUBTITLE_LANGUAGE = "eng"


class TimedText(Protocol):
    """A sentence and when it is heard, from the start of the narration."""

    @property
    def text(self) -> str: ...

    @property
    def start_seconds(self) -> float: ...

    @property
    def end_seconds(self) -> float: ...


def webvtt(sentences: Iterable[TimedText]) -> str:
    """The WebVTT file for a narration: one cue per spoken sentence, from its start to its end (the pause
    after it included, so the words stay up while the listener follows them). Pause marks and any other
    bracketed stage direction are never shown, as the narrator never speaks them; a sentence of pause marks
    alone has no cue."""
    blocks = ["WEBVTT"]
    for sentence in sentences:
        text = speakable_text(sentence.text)
        start_ms = round(sentence.start_seconds * 1000)
        end_ms = round(sentence.end_seconds * 1000)
        if not text or end_ms <= start_ms:
            continue
        lines = [_escaped(line) for line in _wrapped(text)]
        # Numbered identifiers let a player or a person refer to a cue; a number never holds "-->".
        blocks.append(
            "\n".join([str(len(blocks)), f"{_timestamp(start_ms)} --> {_timestamp(end_ms)}", *lines])
        )
    return "\n\n".join(blocks) + "\n"


def _wrapped(text: str) -> list[str]:
    """One line, or two as even as the words allow: a short second line under a long first reads badly."""
    if len(text) <= MAX_LINE_CHARACTERS or " " not in text:
        return [text]
    spaces = [index for index, character in enumerate(text) if character == " "]
    split = min(spaces, key=lambda index: max(index, len(text) - index - 1))
    return [text[:split], text[split + 1 :]]


def _escaped(line: str) -> str:
    """Cue text with WebVTT's three special characters escaped: `<` would open a tag, `&` a character
    reference, and with `>` escaped no line can hold the `-->` that separates a cue's timings."""
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _timestamp(milliseconds: int) -> str:
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, milliseconds = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{milliseconds:03d}"
