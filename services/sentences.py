"""Sentence boundaries: where a sentence of a script or message ends, with the pause marks that follow it."""

from __future__ import annotations

import re

from services.script_marks import PAUSE_MARK_PATTERN

# A sentence ends at . ! ? or …, with any closing quotes or brackets after it, where whitespace follows:
# "3.5" and "e.g.," do not end one.
_SENTENCE_END = r"(?<=[.!?…])[\"'”’)\]]*(?=\s)"
_SENTENCE_END_PATTERN = re.compile(_SENTENCE_END)
# Pause marks after a sentence belong to it, so a sentence spoken on its own carries its own silence. The
# boundary is certain only once real text follows: until then more pause marks may still arrive.
_BOUNDARY_PATTERN = re.compile(
    rf"{_SENTENCE_END}\s+(?:(?:{PAUSE_MARK_PATTERN.pattern})\s*)*(?=[^\s\[])", re.IGNORECASE
)


class SentenceSplitter:
    """Cuts a script arriving in pieces into sentences, each with the pause marks that follow it."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        """Adds text and returns the sentences it completed."""
        self._buffer += text
        sentences = []
        start = 0
        for boundary in _BOUNDARY_PATTERN.finditer(self._buffer):
            sentences.append(self._buffer[start : boundary.end()].strip())
            start = boundary.end()
        self._buffer = self._buffer[start:]
        return [sentence for sentence in sentences if sentence]

    def finish(self) -> list[str]:
        """Returns what remains once the script is complete."""
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []


def split_sentences(text: str) -> list[str]:
    """Splits a whole text into sentences, each with the pause marks that follow it, ends stripped."""
    splitter = SentenceSplitter()
    return splitter.feed(text) + splitter.finish()


def sentence_end_positions(text: str) -> list[int]:
    """Where each sentence of `text` ends (after its closing quotes), in order; the last sentence counts
    only if whitespace follows it."""
    return [match.end() for match in _SENTENCE_END_PATTERN.finditer(text)]
