"""What may be spoken aloud: crisis signals, the check of every script before narration, the grounding script.

A conversation that signals a risk of suicide or self-harm (data/crisis_signals.txt) gets no ordinary
meditation but the grounding script (data/grounding_script.txt) with the configured help text. A script a
model wrote is checked sentence by sentence before it is narrated: a crisis signal in it also ends in the
grounding script; a URL, markup, text aimed at a model, words that urge harm (data/never_spoken.txt) or a
script past the length bound refuse it.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from importlib import resources

from services.content.word_lists import read_pattern_list
from services.script_marks import PAUSE_MARK_PATTERN, count_spoken_words

# Names no country's number: the operator sets their own (STILLPOINT_CRISIS_RESOURCE_TEXT) where they serve.
DEFAULT_CRISIS_RESOURCE_TEXT = (
    "If you are in danger, or you might act on thoughts of harming yourself, please call your local"
    " emergency number now, or a crisis line in your country. If you can, tell someone you trust how you are"
    " feeling, and ask them to stay with you."
)
MAX_RESOURCE_TEXT_CHARS = 600
# A model is asked for 400 to 500 words; well past that it has stopped writing a meditation.
MAX_MODEL_SCRIPT_WORDS = 800
MAX_MODEL_SCRIPT_CHARS = 8000

CRISIS_REASON_CONVERSATION = "the conversation signals a risk of suicide or self-harm"
CRISIS_REASON_SCRIPT = "the written script signals a risk of suicide or self-harm"

_RESOURCE_PLACEHOLDER = "{resource_text}"
_URL = re.compile(
    r"[a-z][a-z0-9+.-]*://|\bwww\.|\b[\w.+-]+@[\w-]+\.[\w.-]+"
    r"|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|net|org|info|biz|io|co|uk|us|de|ly|me|app|xyz|site|online|ai)\b",
    re.IGNORECASE,
)
# After pause marks are removed, none of these belongs in spoken prose: HTML, Markdown, code, templates.
_MARKUP = re.compile(r"[<>\[\]{}*_#`|\\~^]|\(\s*https?:")
# A run of six or more digits reads as a phone or account number, which a model must never invent.
_LONG_NUMBER = re.compile(r"\d(?:[\s().-]?\d){5,}")
_SPACES = re.compile(r"\s+")


class SpokenOutcome(enum.Enum):
    """What kind of script the listener hears."""

    ORDINARY = "ordinary"
    CRISIS_GROUNDING = "crisis_grounding"


class ScriptRefusal(enum.Enum):
    """Why a model's script may not be narrated (its value is safe to show a client)."""

    URL = "it contains a web address or an email address"
    MARKUP = "it contains markup"
    NUMBER = "it contains a long number"
    INSTRUCTION_OR_HARM = "it contains text aimed at a model or words that urge harm"
    TOO_LONG = f"it is longer than {MAX_MODEL_SCRIPT_WORDS} words or {MAX_MODEL_SCRIPT_CHARS} characters"


@dataclass(frozen=True)
class SentenceVerdict:
    """The check of one sentence: fine, a crisis signal, or refused with a reason."""

    is_crisis: bool = False
    refusal: ScriptRefusal | None = None

    @property
    def is_safe(self) -> bool:
        """Whether the sentence may be narrated as part of an ordinary meditation."""
        return not self.is_crisis and self.refusal is None


@functools.cache
def _crisis_signals() -> tuple[re.Pattern[str], ...]:
    return read_pattern_list("crisis_signals.txt")


@functools.cache
def _never_spoken() -> tuple[re.Pattern[str], ...]:
    return read_pattern_list("never_spoken.txt")


def _normalized(text: str) -> str:
    return _SPACES.sub(" ", text.replace("’", "'").replace("‘", "'"))


def signals_crisis(text: str) -> bool:
    """Whether `text` holds any documented signal of a risk of suicide or self-harm."""
    normalized = _normalized(text)
    return any(pattern.search(normalized) for pattern in _crisis_signals())


def check_sentence(sentence: str) -> SentenceVerdict:
    """Checks one sentence of a model's script, with its pause marks, before it may be narrated."""
    if signals_crisis(sentence):
        return SentenceVerdict(is_crisis=True)
    prose = PAUSE_MARK_PATTERN.sub(" ", sentence)
    if _URL.search(prose):
        return SentenceVerdict(refusal=ScriptRefusal.URL)
    if _MARKUP.search(prose):
        return SentenceVerdict(refusal=ScriptRefusal.MARKUP)
    if _LONG_NUMBER.search(prose):
        return SentenceVerdict(refusal=ScriptRefusal.NUMBER)
    # Line by line, so a role label ("User:") at the start of any line is caught.
    lines = [_normalized(line) for line in prose.splitlines()] or [""]
    if any(pattern.search(line) for pattern in _never_spoken() for line in lines):
        return SentenceVerdict(refusal=ScriptRefusal.INSTRUCTION_OR_HARM)
    return SentenceVerdict()


def is_within_length(text: str) -> bool:
    """Whether a script (or the part of it written so far) is within the length bound of a model's script."""
    return len(text) <= MAX_MODEL_SCRIPT_CHARS and count_spoken_words(text) <= MAX_MODEL_SCRIPT_WORDS


@dataclass
class ScriptLength:
    """The length bound of a script checked as it is written: each whole sentence is counted once, when it
    is released, and only the unfinished rest again with every piece. Counting the whole script again for
    every piece (a model streams three words at a time) cost a tenth of content's event loop with fifty
    scripts written at once."""

    characters: int = 0
    released_words: int = 0

    def add_written(self, piece: str) -> None:
        self.characters += len(piece)

    def add_released(self, text: str) -> None:
        """`text` is released whole: it ends a sentence, so no word runs on past it."""
        self.released_words += count_spoken_words(text)

    def is_within(self, unreleased: str) -> bool:
        """Whether the script written so far, of which `unreleased` is the part not yet released, is within
        the bound (is_within_length of the whole)."""
        if self.characters > MAX_MODEL_SCRIPT_CHARS:
            return False
        return self.released_words + count_spoken_words(unreleased) <= MAX_MODEL_SCRIPT_WORDS


def validate_resource_text(text: str) -> str:
    """Returns the help text stripped, or raises ValueError saying what is wrong with it: it is spoken
    inside the grounding script, so it must be plain sentences (a phone number is fine, markup is not)."""
    stripped = " ".join(text.split())
    if not stripped:
        raise ValueError("is empty: say where to find help, such as a crisis line")
    if len(stripped) > MAX_RESOURCE_TEXT_CHARS:
        raise ValueError(f"is {len(stripped)} characters; keep it to at most {MAX_RESOURCE_TEXT_CHARS}")
    if _MARKUP.search(stripped) or PAUSE_MARK_PATTERN.search(stripped):
        raise ValueError("holds brackets or markup; write it as plain sentences to be spoken")
    return stripped


@functools.cache
def _grounding_paragraphs() -> tuple[str, ...]:
    text = resources.files("services.content").joinpath("data", "grounding_script.txt").read_text("utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    paragraphs = "\n".join(lines).strip().split("\n\n")
    return tuple(" ".join(paragraph.split()) for paragraph in paragraphs if paragraph.strip())


def compose_grounding_script(resource_text: str) -> str:
    """Returns the grounding script with the help text in its place, as paragraphs with pause marks."""
    return "\n\n".join(
        paragraph.replace(_RESOURCE_PLACEHOLDER, resource_text) for paragraph in _grounding_paragraphs()
    )
