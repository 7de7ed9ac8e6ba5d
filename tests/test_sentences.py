"""Sentence boundaries: a sentence keeps the pause marks after it, however the text arrives."""

from __future__ import annotations

import random

from services.content.script_composer import compose_meditation
from services.sentences import SentenceSplitter, sentence_end_positions, split_sentences
from tests.content.test_themes import example_source_text

SCRIPT = (
    "Take a moment to arrive. [pause 2s] Let your shoulders soften, and your hands grow heavy. "
    "Breathe in slowly, one, two, three, four. [pause 2s] And out, slowly. [pause 3s] "
    "Notice the sound of the sea, far away. Let it carry the day's worries. [pause 2s] "
    "When you are ready, open your eyes."
)
SCRIPT_SENTENCES = [
    "Take a moment to arrive. [pause 2s]",
    "Let your shoulders soften, and your hands grow heavy.",
    "Breathe in slowly, one, two, three, four. [pause 2s]",
    "And out, slowly. [pause 3s]",
    "Notice the sound of the sea, far away.",
    "Let it carry the day's worries. [pause 2s]",
    "When you are ready, open your eyes.",
]


def test_sentences_keep_the_pauses_that_follow_them_whatever_the_piece_boundaries() -> None:
    generator = random.Random(7)
    for _ in range(20):
        splitter = SentenceSplitter()
        sentences: list[str] = []
        position = 0
        while position < len(SCRIPT):
            step = generator.randint(1, 12)
            sentences += splitter.feed(SCRIPT[position : position + step])
            position += step
        sentences += splitter.finish()
        assert sentences == SCRIPT_SENTENCES


def test_a_whole_text_splits_as_it_would_streamed() -> None:
    assert split_sentences(SCRIPT) == SCRIPT_SENTENCES
    assert split_sentences("Breathe in. [pause 2s] [pause 1.5s] Out.") == [
        "Breathe in. [pause 2s] [pause 1.5s]",
        "Out.",
    ]


def test_a_composed_script_splits_without_losing_words_or_leaving_a_pause_alone() -> None:
    script = compose_meditation(example_source_text())

    sentences = split_sentences(script)

    assert len(sentences) > 10
    assert " ".join(" ".join(sentences).split()) == " ".join(script.split())
    assert not any(sentence.startswith("[pause") for sentence in sentences)


def test_text_without_terminal_punctuation_stays_whole() -> None:
    assert split_sentences("  just a fragment  ") == ["just a fragment"]
    assert split_sentences("") == []


def test_a_sentence_ends_after_its_closing_quotes_and_only_before_whitespace() -> None:
    text = 'She said "rest." Then 3.5 breaths… and (quietly.) done'
    ends = sentence_end_positions(text)
    assert [text[:end] for end in ends] == [
        'She said "rest."',
        'She said "rest." Then 3.5 breaths…',
        'She said "rest." Then 3.5 breaths… and (quietly.)',
    ]
