"""Reads the person's own sentences out of source text, as words grouped in clauses, for cue-word rules."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from services.content.word_lists import read_lines
from services.message_roles import ROLES
from services.sentences import sentence_end_positions

# Source text marks each message with its author ("User: ..."); an unmarked line continues the message above.
ROLE_PREFIX = re.compile(rf"^\s*({'|'.join(ROLES)})\s*:\s*", re.IGNORECASE)
# The person's feelings are read from their own lines only: an assistant's reply (or text made to look like
# one) may say anything. Unmarked text, with no role at all, is the person's.
_PERSON_ROLE = "user"
# A clause ends at punctuation or at "but": a cue word reaches fully only within its own clause ("I'm worried
# about work, but the garden calms me" is calm about the garden).
_CLAUSE_BREAK = re.compile(r"[,;:()\[\]{}\"“”«»—–]+|\s-\s|\bbut\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
# How many words before a cue a negator still reaches: "doesn't really calm me" is negated, and a negator
# further back belongs to another thought.
_NEGATION_REACH_WORDS = 3


@dataclass(frozen=True)
class Word:
    """One word of a sentence: lowercase as written (apostrophes straightened), and the clause it is in."""

    text: str
    clause: int


@dataclass(frozen=True)
class OwnSentence:
    """One sentence the person wrote, as words in order."""

    words: tuple[Word, ...]
    # For the first sentence of a reply to a question ("Is there anything that helps?"), the question's words:
    # what was asked frames the answer ("Walking by the river."). Never spoken; only read for cues.
    question: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Cue:
    """A cue phrase: one or more words, each matched exactly or, written with a trailing `*`, as a prefix."""

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, phrase: str) -> Cue:
        return cls(tuple(phrase.lower().replace("’", "'").split()))

    def matches_at(self, words: Sequence[Word], start: int) -> bool:
        """Whether the phrase starts at `words[start]`."""
        if start + len(self.parts) > len(words):
            return False
        return all(_word_matches(part, words[start + offset].text) for offset, part in enumerate(self.parts))


class CueSet:
    """Cue phrases indexed by their first word, so that a sentence is searched once, each word looked up,
    rather than once per cue: a list has hundreds of cues, and trying each at every word of every sentence
    was most of the time it took to read a conversation (the image prompt, the feelings) and to compose a
    script, with fifty conversations arriving together."""

    def __init__(self, cues: Iterable[Cue]) -> None:
        self._by_first_word: dict[str, list[Cue]] = {}
        # Cues whose first word is a prefix ("calm*"), by that prefix: a word is looked up by each of its
        # own prefixes, up to the longest there is.
        self._by_first_prefix: dict[str, list[Cue]] = {}
        self._longest_prefix = -1
        for cue in cues:
            if not cue.parts:
                raise ValueError("a cue needs at least one word")
            first = cue.parts[0]
            if first.endswith("*"):
                self._by_first_prefix.setdefault(first[:-1], []).append(cue)
                self._longest_prefix = max(self._longest_prefix, len(first) - 1)
            else:
                self._by_first_word.setdefault(first, []).append(cue)

    def starting_with(self, word: str) -> Iterator[Cue]:
        """The cues whose first word matches `word` (their later words are not checked)."""
        yield from self._by_first_word.get(word, ())
        for length in range(min(len(word), self._longest_prefix) + 1):
            yield from self._by_first_prefix.get(word[:length], ())


@dataclass(frozen=True)
class CueMatch:
    """Where a cue was found in a sentence, and whether a negator just before it turns it around."""

    start: int
    clause: int
    is_negated: bool


def own_sentences(source_text: str) -> list[OwnSentence]:
    """Returns the sentences of the person's own (user-role or unmarked) lines, in order."""
    sentences: list[OwnSentence] = []
    is_person = True
    question: tuple[Word, ...] = ()
    last_assistant_line = ""
    for line in source_text.replace("’", "'").splitlines():
        marker = ROLE_PREFIX.match(line)
        if marker is not None:
            role = marker.group(1).lower()
            line = line[marker.end() :]
            if role == _PERSON_ROLE:
                question = _words(last_assistant_line) if "?" in last_assistant_line else ()
                last_assistant_line = ""
            else:
                last_assistant_line = line
            is_person = role == _PERSON_ROLE
        elif not is_person:
            last_assistant_line += " " + line
        if not is_person:
            continue
        for text in _split_sentences(line):
            words = _words(text)
            if words:
                sentences.append(OwnSentence(words, question))
                question = ()
    return sentences


def find_cues(words: Sequence[Word], cues: CueSet) -> list[CueMatch]:
    """Returns every place a cue starts in `words` (each position once), noting whether it is negated."""
    return [
        CueMatch(start, word.clause, _is_negated(words, start))
        for start, word in enumerate(words)
        if any(cue.matches_at(words, start) for cue in cues.starting_with(word.text))
    ]


def _word_matches(part: str, word: str) -> bool:
    if part.endswith("*"):
        return word.startswith(part[:-1])
    return word == part


@functools.cache
def _negation_words() -> tuple[frozenset[str], frozenset[str]]:
    """The negators and the words that undo them (data/negation.txt), loaded once."""
    kinds: dict[str, set[str]] = {"negator": set(), "undoer": set()}
    for line in read_lines("negation.txt"):
        kind, _, word = line.partition(":")
        kinds[kind.strip()].add(word.strip().lower())
    return frozenset(kinds["negator"]), frozenset(kinds["undoer"])


def _is_negated(words: Sequence[Word], start: int) -> bool:
    negators, undoers = _negation_words()
    clause = words[start].clause
    reach = [
        word.text for word in words[max(0, start - _NEGATION_REACH_WORDS) : start] if word.clause == clause
    ]
    negations = [index for index, word in enumerate(reach) if word in negators]
    if not negations:
        return False
    return not undoers & set(reach[negations[-1] + 1 :])


def _split_sentences(line: str) -> list[str]:
    # The one home of sentence boundaries; a line's end always ends its last sentence.
    pieces: list[str] = []
    start = 0
    for end in sentence_end_positions(line):
        pieces.append(line[start:end])
        start = end
    pieces.append(line[start:])
    return [piece for piece in pieces if piece.strip()]


def _words(sentence: str) -> tuple[Word, ...]:
    words: list[Word] = []
    for clause, text in enumerate(_CLAUSE_BREAK.split(sentence.lower())):
        words.extend(Word(word, clause) for word in _WORD.findall(text))
    return tuple(words)
