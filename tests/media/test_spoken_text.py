"""Script text made ready for a neural voice: what is stripped, what is written out, where it is cut."""

from __future__ import annotations

import pytest

from services.media.spoken_text import MAX_WORDS_PER_PIECE, normalize_for_speech, split_for_voice


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("Breathe in 😊 and out 👍🏽.", "Breathe in and out."),
        ("Rest <break time='1s'/> **here**, `now`.", "Rest here, now."),
        ("Say [[ h ə l oʊ ]] nothing [soft music] else.", "Say nothing else."),
        (
            "Dr. Lee, e.g. on Main St. near St. Paul's.",
            "doctor Lee, for example on Main Street near Saint Paul's.",
        ),
        ("Salt & pepper, 50% off, 20°.", "Salt and pepper, 50 percent off, 20 degrees."),
        ("Take 1,000 breaths, one, two.", "Take 1000 breaths, one, two."),
        ("A family 👨‍👩‍👧 at rest.", "A family at rest."),
    ],
)
def test_only_words_numbers_and_plain_punctuation_reach_the_voice(written: str, spoken: str) -> None:
    assert normalize_for_speech(written) == spoken


def test_a_script_is_split_into_sentences_of_one_piece_each() -> None:
    assert split_for_voice("Breathe in. Breathe out! Rest?") == [["Breathe in."], ["Breathe out!"], ["Rest?"]]


def test_a_long_sentence_is_cut_at_its_clauses_first() -> None:
    clause = "let the breath move gently through the whole of your body"  # 11 words
    sentence = f"{clause}, {clause}; {clause}, {clause}."

    (pieces,) = split_for_voice(sentence)

    assert len(pieces) == 2
    assert all(len(piece.split()) <= MAX_WORDS_PER_PIECE for piece in pieces)
    assert " ".join(pieces).split() == sentence.split()


def test_a_long_sentence_without_punctuation_is_cut_into_runs_of_words() -> None:
    sentence = " ".join(["and"] * 100) + " rest."

    (pieces,) = split_for_voice(sentence)

    assert [len(piece.split()) for piece in pieces] == [28, 28, 28, 17]
    assert " ".join(pieces) == sentence
