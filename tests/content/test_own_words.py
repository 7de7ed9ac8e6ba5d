"""Cue phrases found in the person's own sentences: the index finds exactly what trying every cue would."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.content.own_words import Cue, CueMatch, CueSet, Word, find_cues, own_sentences
from services.content.word_lists import read_lines


def _cue_set(*phrases: str) -> CueSet:
    return CueSet(Cue.parse(phrase) for phrase in phrases)


def _words(sentence: str) -> tuple[Word, ...]:
    (own,) = own_sentences(sentence)
    return own.words


def _a_word_for(part: str) -> str:
    """A word a cue's part matches: itself, or for a prefix, the prefix with an ending."""
    return part[:-1] + "ing" if part.endswith("*") else part


def _every_cue_tried(words: Sequence[Word], cues: Sequence[Cue]) -> list[int]:
    """Where a cue starts, found the slow way: every cue tried at every word."""
    return [start for start in range(len(words)) if any(cue.matches_at(words, start) for cue in cues)]


def test_exact_prefixed_and_several_word_cues_are_found_once_each_in_order() -> None:
    words = _words("I feel calmer by the sea, and calm; the sea air calms me")
    cues = _cue_set("calm*", "the sea", "sea air", "calm")

    found = find_cues(words, cues)

    texts = [words[match.start].text for match in found]
    assert texts == ["calmer", "the", "calm", "the", "sea", "calms"]
    assert [match.start for match in found] == sorted({match.start for match in found})


def test_a_negator_just_before_a_cue_turns_it_around() -> None:
    words = _words("It doesn't really calm me, but the garden calms me")

    found = find_cues(words, _cue_set("calm*"))

    assert [(words[match.start].text, match.is_negated) for match in found] == [
        ("calm", True),
        ("calms", False),
    ]
    assert found[0].clause != found[1].clause


def test_a_prefix_cue_matches_only_words_that_start_with_it() -> None:
    words = _words("Peaceful peace appeased")

    found = find_cues(words, _cue_set("peace*"))

    assert found == [CueMatch(0, 0, False), CueMatch(1, 0, False)]


@pytest.mark.parametrize("data_file", ["feelings.txt", "place_cues.txt"])
def test_the_index_finds_what_trying_every_cue_finds(data_file: str) -> None:
    phrases = [line.partition(":")[2].strip() for line in read_lines(data_file)]
    cues = [Cue.parse(phrase) for phrase in phrases if phrase]
    indexed = CueSet(cues)
    # Every cue's own words (so each is found somewhere), and sentences around them.
    sentences = [" ".join(_a_word_for(part) for part in cue.parts) for cue in cues]
    sentences += [
        "I'm not calm at all and I miss my mum so much, the sea used to calm me but not anymore",
        "I used to go to the lake but I can't relax at the lake; walking by the river helps",
        "Nothing helps, I feel guilty and ashamed and so worried about the move next week",
    ]

    for sentence in sentences:
        for own in own_sentences(sentence):
            expected = _every_cue_tried(own.words, cues)
            assert [match.start for match in find_cues(own.words, indexed)] == expected, sentence


def test_a_cue_with_no_words_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one word"):
        CueSet([Cue(())])
