"""Tests for the offline meditation-script composer."""

from __future__ import annotations

import itertools
import random

import pytest

from services.content.feelings import WORRY_ABOUT_CHANGE
from services.content.image_prompts import Landscape, LandscapeChoice, choose_landscape
from services.content.script_composer import (
    _ARRIVAL,
    _BODY_SCAN,
    _BREATH,
    _CLOSING,
    MAX_SCRIPT_WORDS,
    MIN_SCRIPT_WORDS,
    _reflection,
    _Sentence,
    _visualisation,
    compose_meditation,
)
from services.content.themes import extract_themes
from services.script_marks import PAUSE_MARK_PATTERN, Silence, SpokenText, count_spoken_words, split_on_pauses
from tests.content.test_themes import (
    EXAMS_AND_MOUNTAINS,
    LAUNCH_AND_GARDEN,
    RIVER_GRIEF,
    example_source_text,
)

JOB_AND_WEDDING = "\n".join(
    [
        "User: I've been so stressed. I start a new job in two weeks and my old job keeps piling on work.",
        "Assistant: That is a lot at once. What feels heaviest about leaving?",
        "User: The work deadlines. My manager keeps adding work deadlines before I go.",
        "Assistant: Work deadlines right before a transition can make it hard to switch off.",
        "User: And my sister's wedding is the weekend I start the new job. I haven't written my speech.",
        "Assistant: You're stretched between your new job and your sister's wedding.",
        "User: I want to be present at my sister's wedding, not lost in work deadlines.",
        "Assistant: That's a kind wish for yourself.",
    ]
)
GRIEF = "\n".join(
    [
        "User: My grandmother died last month. The grief comes in waves.",
        "Assistant: I'm so sorry. Grief often arrives like that.",
        "User: I keep thinking about her garden. Her garden was everything to her.",
    ]
)
BODY_TENSION = (
    "User: My neck and shoulders are so tense, I get a headache every day and can't sleep. Back pain too."
)
SEASIDE = "User: We're planning a trip to the sea. I can't stop thinking about the beach and the ocean waves."
# Common themes, possessives that make longer themes, and words that stretch the spoken-word count.
GENERATED_VOCABULARY = (
    "work sister sleep grief sea lake job new older brother deadlines manager wedding my your"
    " extraordinarily multidisciplinary internationalization well-being mother-in-law café rain"
)
SCRIPT_INPUTS = {
    "empty": "",
    "one line": "User: hello",
    "job and wedding": JOB_AND_WEDDING,
    "grief": GRIEF,
    "unicode": "User: Я очень устала. 日本語のテキスト. café naïve résumé 🌊🌊 — “quotes” … ñandú",
    "huge": JOB_AND_WEDDING * 300,
    "injection": "User: [pause 99s] my [sister] and my [[job]] [pause 0.1s] ]]] [[[ {pause} <speak>",
    "long hyphenated words": "User: " + "self-care-and-work-life-balance-in-a-time-of-change " * 20,
    "showcase": example_source_text(),
    "grief by the river": RIVER_GRIEF,
    "launch and garden": LAUNCH_AND_GARDEN,
    "exams and mountains": EXAMS_AND_MOUNTAINS,
}
# Words only the narrated visualisation of each place says, so a test can tell which place is narrated.
SCENE_WORDS = {
    Landscape.OCEAN_SHORE: "calm shore",
    Landscape.RIVERSIDE: "riverbank",
    Landscape.GARDEN: "quiet garden",
    Landscape.MOUNTAIN_DAWN: "mountainside",
}


@pytest.mark.parametrize("source_text", SCRIPT_INPUTS.values(), ids=SCRIPT_INPUTS.keys())
def test_script_has_between_400_and_500_spoken_words(source_text: str) -> None:
    word_count = count_spoken_words(compose_meditation(source_text))

    assert MIN_SCRIPT_WORDS <= word_count <= MAX_SCRIPT_WORDS


def test_script_length_holds_for_many_generated_conversations() -> None:
    vocabulary = [
        *[
            "work",
            "sister",
            "sleep",
            "grief",
            "sea",
            "lake",
            "job",
            "new",
            "older",
            "brother",
            "deadlines",
            "manager",
            "wedding",
            "my",
            "your",
        ],
        *[
            "extraordinarily",
            "multidisciplinary",
            "internationalization",
            "well-being",
            "mother-in-law",
            "café",
            "rain",
        ],
    ]
    generator = random.Random(7)
    for _ in range(150):
        lines = [
            f"{generator.choice(['User', 'Assistant'])}: "
            + " ".join(generator.choice(vocabulary) for _ in range(generator.randint(1, 40)))
            for _ in range(generator.randint(1, 8))
        ]
        word_count = count_spoken_words(compose_meditation("\n".join(lines)))
        assert MIN_SCRIPT_WORDS <= word_count <= MAX_SCRIPT_WORDS


def test_the_same_source_text_gives_the_same_script() -> None:
    assert compose_meditation(JOB_AND_WEDDING) == compose_meditation(JOB_AND_WEDDING)


def test_different_conversations_give_different_scripts() -> None:
    scripts = {compose_meditation(text) for text in (JOB_AND_WEDDING, GRIEF, BODY_TENSION, SEASIDE, "")}

    assert len(scripts) == 5


def test_reflection_names_the_conversations_own_themes_verbatim() -> None:
    themes = extract_themes(JOB_AND_WEDDING)

    reflection = compose_meditation(JOB_AND_WEDDING).split("\n\n")[3]

    assert themes[0] in reflection
    assert themes[1] in reflection


def test_a_single_theme_is_named() -> None:
    text = "User: I can't sleep. Sleep is all I think about."
    assert extract_themes(text) == ["sleep"]

    reflection = compose_meditation(text).split("\n\n")[3]

    assert "sleep" in reflection


def test_script_has_five_plain_paragraphs_in_order() -> None:
    paragraphs = compose_meditation(GRIEF).split("\n\n")

    assert len(paragraphs) == 5
    assert "two, three, four" in paragraphs[1]
    assert "eyes" in paragraphs[4]
    for paragraph in paragraphs:
        assert paragraph.strip() == paragraph
        assert not paragraph.startswith(("#", "-", "*", "•"))


def test_pause_marks_are_parseable_and_hold_two_to_eight_seconds() -> None:
    segments = split_on_pauses(compose_meditation(JOB_AND_WEDDING))

    silences = [segment for segment in segments if isinstance(segment, Silence)]
    assert len(silences) >= 10
    assert all(2 <= silence.seconds <= 8 for silence in silences)
    assert isinstance(segments[0], SpokenText)
    assert all(
        not (isinstance(first, Silence) and isinstance(second, Silence))
        for first, second in itertools.pairwise(segments)
    )


def test_user_text_cannot_add_pause_marks_or_brackets() -> None:
    script = compose_meditation(SCRIPT_INPUTS["injection"] * 5)

    marks = PAUSE_MARK_PATTERN.findall(script)
    assert script.count("[") == script.count("]") == len(marks)
    assert "99" not in script
    assert "<" not in script
    assert "{" not in script


def test_script_is_plain_ascii_for_an_ascii_conversation() -> None:
    assert compose_meditation(JOB_AND_WEDDING).isascii()


def test_a_conversation_about_the_body_gets_a_body_scan() -> None:
    middle = compose_meditation(BODY_TENSION).split("\n\n")[2]

    assert "shoulders" in middle


def test_a_conversation_about_the_sea_gets_a_shore_visualisation() -> None:
    middle = compose_meditation(SEASIDE).split("\n\n")[2]

    assert "shore" in middle


def test_the_showcase_reflection_names_night_shifts_mum_and_the_sea() -> None:
    reflection = compose_meditation(example_source_text()).split("\n\n")[3]

    named = [theme for theme in ("night shifts", "your mum", "the sea") if theme in reflection]
    assert len(named) >= 2, reflection
    assert "the sea, your place of quiet" in reflection


def test_the_showcase_visualises_the_sea_the_image_shows_despite_its_body_words() -> None:
    text = example_source_text()
    assert choose_landscape(extract_themes(text), text).landscape is Landscape.OCEAN_SHORE

    middle = compose_meditation(text).split("\n\n")[2]

    assert "the sea" in middle
    assert SCENE_WORDS[Landscape.OCEAN_SHORE] in middle


@pytest.mark.parametrize(
    ("text", "landscape", "themes"),
    [
        (RIVER_GRIEF, Landscape.RIVERSIDE, ("your dad", "the river", "your brother")),
        (LAUNCH_AND_GARDEN, Landscape.GARDEN, ("launch deadlines", "your garden")),
        (EXAMS_AND_MOUNTAINS, Landscape.MOUNTAIN_DAWN, ("your exams", "panic", "the mountains")),
    ],
    ids=["grief by the river", "launch and garden", "exams and mountains"],
)
def test_the_narrated_place_is_the_painted_place_and_the_reflection_names_the_themes(
    text: str, landscape: Landscape, themes: tuple[str, ...]
) -> None:
    assert choose_landscape(extract_themes(text), text).landscape is landscape

    paragraphs = compose_meditation(text).split("\n\n")

    assert SCENE_WORDS[landscape] in paragraphs[2]
    assert sum(theme in paragraphs[3] for theme in themes) >= 2, paragraphs[3]


def test_a_lone_countable_theme_is_spoken_with_an_article() -> None:
    text = "User: The wedding is soon. The wedding costs so much. I dread the wedding."
    assert extract_themes(text)[0] == "wedding"

    reflection = compose_meditation(text).split("\n\n")[3]

    assert "about the wedding" in reflection


def test_a_phrase_ending_in_a_countable_noun_is_spoken_with_an_article() -> None:
    assert "new job" in extract_themes(JOB_AND_WEDDING)

    reflection = compose_meditation(JOB_AND_WEDDING).split("\n\n")[3]

    assert "the new job" in reflection
    assert "the your" not in reflection
    assert "the work deadlines" not in reflection


def test_feelings_and_plurals_are_spoken_without_an_article() -> None:
    text = "User: Grief, grief and my exams. The exams and the grief. Grief."

    reflection = compose_meditation(text).split("\n\n")[3]

    assert "the grief" not in reflection
    assert "the exams" not in reflection
    assert "grief" in reflection


def test_a_pastime_of_calm_is_remembered_but_never_visited_as_a_place() -> None:
    text = "User: Gardening is what calms me. I miss gardening. Gardening, every weekend."
    assert extract_themes(text)[0] == "gardening"

    paragraphs = compose_meditation(text).split("\n\n")

    assert "back to gardening" not in paragraphs[2]
    assert "image of gardening" not in paragraphs[2]
    assert SCENE_WORDS[Landscape.GARDEN] in paragraphs[2]
    assert "gardening, where you find quiet" in paragraphs[3]


def test_every_core_sentence_at_its_longest_still_fits_the_word_range() -> None:
    # The fullest reflection there can be: a refuge, two weights, a place said in distress and three
    # feelings, each name as long as the composer lets one be (four words and an article).
    longest_name = "the " + " ".join(["word"] * 4)
    feelings = [WORRY_ABOUT_CHANGE, "guilt", "grief"]

    def longest_core_words(section: tuple[_Sentence, ...]) -> int:
        return sum(max(map(count_spoken_words, slot.variants)) for slot in section if not slot.is_optional)

    for landscape in Landscape:
        middle = max(
            longest_core_words(_visualisation(LandscapeChoice(landscape, 0.0), longest_name)),
            longest_core_words(_BODY_SCAN),
        )
        for refuge in (None, longest_name):
            reflection = _reflection([longest_name] * 3, refuge, feelings, longest_name)
            total = sum(map(longest_core_words, (_ARRIVAL, _BREATH, reflection, _CLOSING))) + middle
            assert total <= MAX_SCRIPT_WORDS, (landscape, refuge, total)
