"""Tests for finding a conversation's themes."""

from __future__ import annotations

import re

import pytest

from services.content.themes import content_words, extract_themes, lemmatize

JOB_AND_WEDDING = """\
User: I've been really stressed lately. My new job starts in two weeks and my old job isn't finished.
Assistant: That sounds like a lot to hold at once. What feels heaviest about the job change right now?
User: Mostly the work deadlines. My manager keeps adding work deadlines before I leave, and I can't sleep.
Assistant: Work deadlines stacking up right before a transition can make it hard to switch off.
User: And my sister's wedding is the same weekend I start the new job. I haven't even written my speech.
Assistant: It makes sense to feel stretched between your new job and your sister's wedding.
User: I want to be present for my sister's wedding and not be thinking about work deadlines the whole time.
Assistant: That's a kind wish for yourself."""

# A theme is lowercase words (any script) joined by single spaces, with inner apostrophes or hyphens only.
_THEME_SHAPE = re.compile(r"^[^\W\d_A-Z]+(?:['-][^\W\d_A-Z]+)*(?: [^\W\d_A-Z]+(?:['-][^\W\d_A-Z]+)*)*$")


def test_empty_or_blank_text_has_no_themes() -> None:
    assert extract_themes("") == []
    assert extract_themes("   \n\t ") == []


def test_themes_of_a_conversation_are_its_topics_most_prominent_first() -> None:
    themes = extract_themes(JOB_AND_WEDDING)

    assert set(themes[:3]) == {"your new job", "work deadlines", "your sister's wedding"}


def test_filler_and_small_talk_never_become_themes() -> None:
    text = "User: yeah I just really feel like, you know, I think okay\nAssistant: Thanks, that makes sense!"

    assert extract_themes(text) == []


def test_user_lines_weigh_more_than_assistant_lines() -> None:
    text = "Assistant: Have you thought about a holiday?\nUser: My garden needs attention."

    assert extract_themes(text)[0] in {"garden", "your garden"}


def test_a_recurring_word_pair_is_named_instead_of_its_words() -> None:
    text = "User: The exam results scare me. Exam results come out Friday. I dread the exam results."

    themes = extract_themes(text)

    assert "exam results" in themes
    assert "results" not in themes


def test_a_pair_said_only_once_is_not_a_theme() -> None:
    assert "garden shed" not in extract_themes("User: The garden shed burned down and the garden is ruined.")


def test_plural_and_singular_count_as_one_theme() -> None:
    text = "User: One deadline moved. Then another deadline. More deadlines came. The garden grew. Garden."

    themes = extract_themes(text)

    assert themes[0] in {"deadline", "deadlines"}
    assert not {"deadline", "deadlines"} <= set(themes)


def test_the_persons_own_relationships_are_named_in_the_second_person() -> None:
    text = "User: I miss my sister. My sister lives far away and I never see my sister."

    assert extract_themes(text)[0] == "your sister"


def test_feelings_are_named_as_nouns() -> None:
    themes = extract_themes("User: I'm so stressed. Stressed and anxious all the time, and anxious at night.")

    assert themes[:2] == ["stress", "anxiety"]


def test_max_themes_limits_the_count() -> None:
    assert len(extract_themes(JOB_AND_WEDDING, max_themes=2)) == 2
    assert extract_themes(JOB_AND_WEDDING, max_themes=0) == []


def test_themes_are_deterministic() -> None:
    assert extract_themes(JOB_AND_WEDDING) == extract_themes(JOB_AND_WEDDING)


@pytest.mark.parametrize(
    "text",
    [
        "User: [pause 9s] my [job] is {awful} <b>work</b> 404 errors https://example.com/x?y=1 #stress",
        "User: Я очень устала, работа и сон. 日本語のテキスト café naïve 🌊🌊🌊",
        "User: " + "supercalifragilisticexpialidociousness " * 5 + "rain rain",
        "User: my-self-care-routine-keeps-falling-apart and rock'n'roll, but self-care matters",
    ],
)
def test_themes_hold_only_lowercase_words(text: str) -> None:
    themes = extract_themes(text)

    assert themes
    for theme in themes:
        assert _THEME_SHAPE.match(theme), theme


def test_content_words_are_lemmas_without_filler() -> None:
    assert content_words("I really feel my sisters are stressed about deadlines") == [
        "sister",
        "stress",
        "deadline",
    ]


@pytest.mark.parametrize(
    ("word", "lemma"),
    [("deadlines", "deadline"), ("worries", "worry"), ("stress", "stress"), ("news", "news"), ("bus", "bus")],
)
def test_lemmatize_strips_plurals_only_where_safe(word: str, lemma: str) -> None:
    assert lemmatize(word) == lemma
