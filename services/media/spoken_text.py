"""Script text made ready for a neural voice: marks, markup and emoji removed, abbreviations and symbols
written out, and long sentences cut into pieces a voice model can say in one breath."""

from __future__ import annotations

import re
import unicodedata

from services.script_marks import speakable_text
from services.sentences import split_sentences

# One inference per piece: the model's memory and time grow with the input (600 words without a full stop
# took 35 s and 3 GB), and a clause of this length is still one natural breath.
MAX_WORDS_PER_PIECE = 28

# Abbreviations whose full stop would end a sentence early in Piper's phonemizer ("Dr." was read as
# "doctor." then a new sentence). Written out, they are also what a narrator says.
_ABBREVIATIONS = {
    "dr.": "doctor",
    "mr.": "mister",
    "mrs.": "missus",
    "ms.": "miz",
    "prof.": "professor",
    "mt.": "mount",
    "e.g.": "for example",
    "i.e.": "that is",
    "etc.": "et cetera",
    "vs.": "versus",
    "approx.": "approximately",
}
_ABBREVIATION_PATTERN = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(key) for key in _ABBREVIATIONS) + r")(?=\s|$)", re.IGNORECASE
)
# "St. Paul" is a saint; "Main St." (no name after it) is a street.
_SAINT_PATTERN = re.compile(r"\bSt\.(?=\s+[A-Z])")
_STREET_PATTERN = re.compile(r"\bSt\.(?=\s|$)")
_SYMBOLS = {
    "&": " and ",
    "%": " percent ",
    "+": " plus ",
    "=": " equals ",
    "@": " at ",
    "°": " degrees ",
    "×": " times ",
}
# HTML or SSML-like tags, Markdown emphasis and headings, code ticks, and the remains of `[[ ]]` blocks
# (Piper would read their content as raw phonemes).
_TAG_PATTERN = re.compile(r"<[^<>]{0,200}>")
_MARKUP_PATTERN = re.compile(r"[*_#`~|\\^{}\[\]]+")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+(?=[.,;:!?])")
_CLAUSE_BREAK = re.compile(r"(?<=[,;:—–])\s+|\s+-\s+")


def normalize_for_speech(text: str) -> str:
    """What the voice is given to read: only words, numbers and ordinary punctuation remain."""
    text = speakable_text(text)
    text = _TAG_PATTERN.sub(" ", unicodedata.normalize("NFC", text))
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    text = "".join(_spoken_character(character) for character in text)
    text = _MARKUP_PATTERN.sub(" ", text)
    text = _STREET_PATTERN.sub("Street", _SAINT_PATTERN.sub("Saint", text))
    text = _ABBREVIATION_PATTERN.sub(lambda match: _ABBREVIATIONS[match.group(1).lower()], text)
    # Digits grouped with commas ("1,000") are one number, not a list.
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return _SPACE_BEFORE_PUNCTUATION.sub("", _SPACES.sub(" ", text)).strip()


def split_for_voice(text: str, max_words: int = MAX_WORDS_PER_PIECE) -> list[list[str]]:
    """Splits normalised text into sentences, each a list of pieces: the sentence itself, or when it is
    longer than `max_words`, its clauses (cut at commas, semicolons, colons and dashes) joined up to that
    length, and a clause still too long cut into runs of words."""
    sentences: list[list[str]] = []
    for sentence in split_sentences(text):
        pieces: list[str] = []
        current: list[str] = []
        for clause in _CLAUSE_BREAK.split(sentence) if len(sentence.split()) > max_words else [sentence]:
            words = clause.split()
            if current and len(current) + len(words) > max_words:
                pieces.append(" ".join(current))
                current = []
            while len(words) > max_words:
                pieces.append(" ".join(words[:max_words]))
                words = words[max_words:]
            current += words
        if current:
            pieces.append(" ".join(current))
        pieces = [piece for piece in pieces if any(character.isalnum() for character in piece)]
        if pieces:
            sentences.append(pieces)
    return sentences


def _spoken_character(character: str) -> str:
    """Drops emoji, pictographs, joiners and variation selectors; keeps letters, digits, punctuation."""
    category = unicodedata.category(character)
    if category in ("So", "Sk", "Cs", "Co", "Cn") or category == "Cf":
        return " " if category == "So" else ""
    if 0xFE00 <= ord(character) <= 0xFE0F or 0x1F3FB <= ord(character) <= 0x1F3FF:
        return ""
    return character
