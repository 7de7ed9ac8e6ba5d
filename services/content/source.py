"""Cuts a conversation down to the few thousand characters a meditation is written from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.content.themes import content_words
from services.sentences import sentence_end_positions

MAX_SOURCE_CHARS = 2000

_LINE_PREFIXES = {"user": "User: ", "assistant": "Assistant: "}
# The person's own words say more about what is on their mind than the assistant's replies to them.
_ROLE_WEIGHTS = {"user": 1.0, "assistant": 0.5}
# A message's weight halves for every this many messages that came after it.
_RECENCY_HALF_LIFE_MESSAGES = 4.0
# Substance grows with meaningful words but levels off: a long message is not worth ten short ones.
_FULL_SUBSTANCE_CONTENT_WORDS = 24
# "ok thanks" still says a little (the person is present), so it never weighs exactly nothing.
_MIN_SUBSTANCE = 0.05
# A message too long to fit whole is cut to at most this share of the budget, so several voices remain.
_MAX_SHARE_OF_TRIMMED = 0.6
# A message cut shorter than this is a fragment that says more about the cut than the conversation.
_MIN_TRIMMED_TEXT_CHARS = 40
_ELLIPSIS = "…"


class SourceMessage(Protocol):
    """One turn of a conversation, as the source text needs it."""

    # Read-only properties, so frozen dataclasses and protobuf-backed wrappers both satisfy the protocol.
    @property
    def role(self) -> str:
        """Who wrote it: "user", "assistant" or "system"."""
        ...

    @property
    def text(self) -> str:
        """What they wrote."""
        ...


@dataclass(frozen=True)
class _Candidate:
    index: int
    prefix: str
    text: str
    score: float

    @property
    def line_chars(self) -> int:
        return len(self.prefix) + len(self.text)


def collect_source_text(messages: Sequence[SourceMessage], max_chars: int = MAX_SOURCE_CHARS) -> str:
    """Returns the messages that matter most, in order, as "User: ..." lines of at most `max_chars` in all."""
    candidates = _candidates(messages)
    if max_chars <= 0 or not candidates:
        return ""
    if sum(candidate.line_chars for candidate in candidates) + len(candidates) - 1 <= max_chars:
        return "\n".join(candidate.prefix + candidate.text for candidate in candidates)

    max_trimmed_line_chars = max_chars if len(candidates) == 1 else int(max_chars * _MAX_SHARE_OF_TRIMMED)
    chosen_lines: dict[int, str] = {}
    remaining_chars = max_chars
    # Most weighty first; among equals the more recent wins.
    for candidate in sorted(candidates, key=lambda c: (-c.score, -c.index)):
        separator_chars = 1 if chosen_lines else 0
        room_chars = remaining_chars - separator_chars
        if candidate.line_chars <= room_chars:
            line = candidate.prefix + candidate.text
        else:
            room_chars = min(room_chars, max_trimmed_line_chars)
            if room_chars - len(candidate.prefix) < _MIN_TRIMMED_TEXT_CHARS:
                continue
            line = candidate.prefix + trim_text(candidate.text, room_chars - len(candidate.prefix))
        chosen_lines[candidate.index] = line
        remaining_chars -= separator_chars + len(line)
    return "\n".join(chosen_lines[index] for index in sorted(chosen_lines))


def trim_text(text: str, max_chars: int) -> str:
    """Returns `text` cut to at most `max_chars` characters at a sentence or word boundary, marked "…"."""
    if len(text) <= max_chars:
        return text
    if max_chars <= len(_ELLIPSIS):
        return _ELLIPSIS[:max_chars]
    # Leave room for " …" after a whole sentence.
    sentence_ends = sentence_end_positions(text[: max_chars - 1])
    if sentence_ends and sentence_ends[-1] >= max_chars // 2:
        return text[: sentence_ends[-1]] + " " + _ELLIPSIS
    window = text[: max_chars - len(_ELLIPSIS)]
    word_break = window.rfind(" ")
    if word_break > 0:
        window = window[:word_break].rstrip(" ,;:-")
    return window + _ELLIPSIS


def _candidates(messages: Sequence[SourceMessage]) -> list[_Candidate]:
    eligible: list[tuple[int, str, str]] = []
    for index, message in enumerate(messages):
        role = message.role.strip().lower()
        text = " ".join(message.text.split())
        # System messages frame the assistant; they are not what the person talked about.
        if role in _LINE_PREFIXES and text:
            eligible.append((index, role, text))
    candidates: list[_Candidate] = []
    for position, (index, role, text) in enumerate(eligible):
        messages_after = len(eligible) - 1 - position
        recency = 0.5 ** (messages_after / _RECENCY_HALF_LIFE_MESSAGES)
        score = _ROLE_WEIGHTS[role] * _substance(text) * recency
        candidates.append(_Candidate(index, _LINE_PREFIXES[role], text, score))
    return candidates


def _substance(text: str) -> float:
    meaningful_words = len(content_words(text))
    saturation = math.log1p(meaningful_words) / math.log1p(_FULL_SUBSTANCE_CONTENT_WORDS)
    return max(_MIN_SUBSTANCE, min(1.0, saturation))
