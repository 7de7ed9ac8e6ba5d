"""Finds the hard feelings the person names about themselves (grief, guilt, worry about a change ahead)."""

from __future__ import annotations

import functools

from services.content.own_words import Cue, CueSet, find_cues, own_sentences
from services.content.word_lists import read_lines

# Worry said beside a change ("I'm so worried about the move") is about what is coming, and is named so.
_WORRIES = frozenset({"worry", "anxiety"})
WORRY_ABOUT_CHANGE = "worry about the change ahead"
_CHANGE = "change"


@functools.cache
def _cues() -> dict[str, CueSet]:
    kinds: dict[str, list[Cue]] = {}
    for line in read_lines("feelings.txt"):
        feeling, _, phrase = line.partition(":")
        kinds.setdefault(feeling.strip().lower(), []).append(Cue.parse(phrase.strip()))
    return {feeling: CueSet(cues) for feeling, cues in kinds.items()}


def is_feeling(theme: str) -> bool:
    """Whether a theme is one of the feelings this module names ("grief", "worry"), said or negated."""
    return theme in _cues() and theme != _CHANGE


def named_feelings(source_text: str, max_feelings: int = 3) -> list[str]:
    """Returns the feelings the person names in their own lines, not negated, in the order first named, at
    most `max_feelings` of them, each as the narrator says it ("grief", "worry about the change ahead")."""
    cues = _cues()
    change_cues = cues[_CHANGE]
    found: list[str] = []
    for sentence in own_sentences(source_text):
        mentions_change = bool(find_cues(sentence.words, change_cues))
        named = [
            (match.start, feeling)
            for feeling, feeling_cues in cues.items()
            if feeling != _CHANGE
            for match in find_cues(sentence.words, feeling_cues)
            if not match.is_negated
        ]
        for _, feeling in sorted(named):
            name = WORRY_ABOUT_CHANGE if feeling in _WORRIES and mentions_change else feeling
            if name not in found:
                found.append(name)
    return found[:max_feelings]
