"""Tests for choosing the calm place a meditation visits, and meeting the feelings the person named."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.content.feelings import WORRY_ABOUT_CHANGE, named_feelings
from services.content.image_prompts import Landscape, landscape_of_place
from services.content.refuge import PlaceFeeling, choose_scene, judge_places
from services.content.script_composer import MAX_SCRIPT_WORDS, MIN_SCRIPT_WORDS, compose_meditation
from services.content.source import collect_source_text
from services.content.spoken_safety import check_sentence
from services.content.themes import extract_themes
from services.script_marks import count_spoken_words
from services.sentences import split_sentences
from tests.content.test_themes import example_source_text

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "conversations").glob("*.json"))
# Words only the narrated scene of each landscape says, so a test can tell which landscape is visualised.
SCENE_WORDS = {
    Landscape.MOUNTAIN_DAWN: "mountainside",
    Landscape.EVENING_LIGHT: "rolling hills",
    Landscape.MOONLIT_WATER: "full moon",
    Landscape.SPRING_MEADOW: "wide meadow",
    Landscape.OCEAN_SHORE: "calm shore",
    Landscape.STILL_LAKE: "still lake",
    Landscape.FOREST_CLEARING: "old forest",
    Landscape.RIVERSIDE: "riverbank",
    Landscape.GARDEN: "quiet garden",
}
# A script's paragraphs: arrival, breath, visualisation (or body scan), reflection, closing.
_VISUALISATION = 2
_REFLECTION = 3


@dataclass(frozen=True)
class _Message:
    role: str
    text: str


@dataclass(frozen=True)
class Example:
    """One stored conversation and what its meditation is expected to do, as written beside it."""

    name: str
    source_text: str
    refuge: str | None
    feelings: tuple[str, ...]
    themes: tuple[str, ...]
    distressing_places: tuple[str, ...]


def _load(path: Path) -> Example:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    expected = document["expected"]
    # Cut exactly as the content service cuts a stored conversation before composing.
    source_text = collect_source_text(
        [_Message(entry["role"], entry["text"]) for entry in document["messages"]]
    )
    return Example(
        name=path.stem,
        source_text=source_text,
        refuge=expected["refuge"],
        feelings=tuple(expected["feelings"]),
        themes=tuple(expected["themes"]),
        distressing_places=tuple(expected["distressing_places"]),
    )


def _examples() -> list[Example]:
    return [_load(path) for path in EXAMPLES]


def test_there_are_at_least_a_dozen_stored_examples() -> None:
    assert len(EXAMPLES) >= 12


@pytest.mark.parametrize("example", _examples(), ids=lambda example: example.name)
def test_the_refuge_is_the_place_the_person_found_calming(example: Example) -> None:
    scene = choose_scene(extract_themes(example.source_text), example.source_text)

    assert scene.refuge == example.refuge
    paragraphs = compose_meditation(example.source_text).split("\n\n")
    if example.refuge is not None:
        refuge_landscape = landscape_of_place(example.refuge)
        assert refuge_landscape is not None
        assert scene.landscape.landscape is refuge_landscape
        # Visited in the visualisation, and named as theirs in the reflection.
        assert SCENE_WORDS[refuge_landscape] in paragraphs[_VISUALISATION]
        reflection = paragraphs[_REFLECTION]
        assert f"{example.refuge}, your place of quiet" in reflection or (
            f"{example.refuge}, where you find quiet" in reflection
        )


@pytest.mark.parametrize("example", _examples(), ids=lambda example: example.name)
def test_no_distressing_place_is_visualised_or_offered_as_quiet(example: Example) -> None:
    script = compose_meditation(example.source_text)
    paragraphs = script.split("\n\n")
    scene = choose_scene(extract_themes(example.source_text), example.source_text)

    for place in example.distressing_places:
        word = place.removeprefix("the ")
        assert word not in paragraphs[_VISUALISATION].lower(), place
        landscape = landscape_of_place(place)
        if landscape is not None:
            assert scene.landscape.landscape is not landscape
            assert SCENE_WORDS[landscape] not in paragraphs[_VISUALISATION]
        assert f"{place}, your place of quiet" not in script
        assert f"remember {place}" not in script
    # Acknowledged gently, once, in the reflection: the most distressing place the narrator may name.
    if example.distressing_places:
        assert any(f"of {place}" in paragraphs[_REFLECTION] for place in example.distressing_places)


@pytest.mark.parametrize("example", _examples(), ids=lambda example: example.name)
def test_each_named_feeling_and_theme_is_reflected(example: Example) -> None:
    assert named_feelings(example.source_text) == list(example.feelings)

    reflection = compose_meditation(example.source_text).split("\n\n")[_REFLECTION]

    for feeling in example.feelings:
        assert feeling in reflection, (feeling, reflection)
    for theme in example.themes:
        assert theme in reflection, (theme, reflection)


@pytest.mark.parametrize("example", _examples(), ids=lambda example: example.name)
def test_every_example_script_keeps_its_length_and_is_safe_to_speak(example: Example) -> None:
    script = compose_meditation(example.source_text)

    assert MIN_SCRIPT_WORDS <= count_spoken_words(script) <= MAX_SCRIPT_WORDS
    assert len(script.split("\n\n")) == 5
    assert all(check_sentence(sentence).is_safe for sentence in split_sentences(script))
    assert compose_meditation(example.source_text) == script


def test_the_showcase_still_visits_the_sea_and_meets_its_fear() -> None:
    text = example_source_text()

    paragraphs = compose_meditation(text).split("\n\n")

    assert choose_scene(extract_themes(text), text).refuge == "the sea"
    assert "exhaustion" in paragraphs[_REFLECTION]
    assert "fear" in paragraphs[_REFLECTION]
    # The ward is where the shifts are; it is not in the reviewed vocabulary, so it is never named.
    assert not re.search(r"\bward\b", " ".join(paragraphs))


def _feeling_of(text: str, word: str) -> PlaceFeeling:
    return next(place.feeling for place in judge_places(text) if word in place.words)


@pytest.mark.parametrize(
    ("text", "word", "feeling"),
    [
        ("User: The sea calms me.", "sea", PlaceFeeling.COMFORT),
        ("User: We drove past the sea.", "sea", PlaceFeeling.NEUTRAL),
        ("User: The sea doesn't calm me anymore.", "sea", PlaceFeeling.DISTRESS),
        ("User: I no longer feel safe at the lake.", "lake", PlaceFeeling.DISTRESS),
        ("User: I'm not scared of the lake now.", "lake", PlaceFeeling.NEUTRAL),
        ("User: What steadies me is the river.", "river", PlaceFeeling.COMFORT),
        ("User: We scattered the ashes at the beach.", "beach", PlaceFeeling.DISTRESS),
        ("User: I miss the mountains.", "mountain", PlaceFeeling.COMFORT),
        ("User: I miss walking by the river with Dad.", "river", PlaceFeeling.DISTRESS),
        ("User: I'm worried about work, but the garden calms me.", "garden", PlaceFeeling.COMFORT),
        ("User: The garden calms me.\nUser: The garden is where we argued.", "garden", PlaceFeeling.DISTRESS),
    ],
)
def test_a_place_is_judged_by_the_cue_words_of_its_sentences(
    text: str, word: str, feeling: PlaceFeeling
) -> None:
    assert _feeling_of(text, word) is feeling


def test_a_place_said_once_in_distress_is_never_the_refuge_however_calm_it_is_elsewhere() -> None:
    text = "User: The lake is so calm. It is my happy place. My brother drowned in the lake."

    assert choose_scene(extract_themes(text), text).refuge is None


def test_an_echo_of_a_place_counts_only_once_the_place_is_named() -> None:
    # "waves" of grief are not the sea until the sea is named.
    assert judge_places("User: The grief comes in waves, calm then not.") == []
    places = judge_places("User: We went to the sea.\nUser: The waves calm me.")
    assert [place.word for place in places] == ["sea"]
    assert places[0].feeling is PlaceFeeling.COMFORT


def test_what_the_assistant_says_never_makes_a_place_a_refuge() -> None:
    text = "User: We live near the lake.\nAssistant: The lake sounds like your happy place, so calm and safe."

    assert choose_scene(extract_themes(text), text).refuge is None


def test_an_answer_to_a_question_about_what_helps_frames_the_place_named() -> None:
    asked = "Assistant: Is there anything that helps?\nUser: The woods near us."
    not_asked = "Assistant: Where do you live?\nUser: The woods near us."

    assert choose_scene(extract_themes(asked), asked).refuge == "the woods"
    assert choose_scene(extract_themes(not_asked), not_asked).refuge is None


def test_two_calming_places_give_the_refuge_to_the_one_spoken_of_most_warmly() -> None:
    text = "User: The beach is nice and calm. But the forest is my safe place, where I can breathe."

    assert choose_scene(extract_themes(text), text).refuge == "the forest"


def test_with_only_distressing_places_the_visualisation_is_a_neutral_landscape_none_of_them() -> None:
    text = (
        "User: The funeral was by the sea. I was scared at the lake. The forest was where the accident was."
    )

    scene = choose_scene(extract_themes(text), text)

    assert scene.refuge is None
    assert scene.landscape.landscape is Landscape.SPRING_MEADOW
    assert not scene.landscape.is_named_place


@pytest.mark.parametrize(
    ("text", "feelings"),
    [
        ("User: I feel so guilty, and the grief is heavy.", ["guilt", "grief"]),
        ("User: I don't feel guilty about it.", []),
        ("User: I can't stop worrying.", ["worry"]),
        ("User: I'm worried about moving house.", [WORRY_ABOUT_CHANGE]),
        ("Assistant: You sound anxious and lonely.\nUser: Maybe.", []),
        ("User: Scared. Angry. Sad. Lonely.", ["fear", "anger", "sadness"]),
    ],
)
def test_feelings_are_the_persons_own_and_not_negated(text: str, feelings: list[str]) -> None:
    assert named_feelings(text) == feelings


def test_a_feeling_already_named_is_not_met_again_as_a_weight() -> None:
    text = "User: Grief, grief and my exams. The exams and the grief. Grief."

    reflection = compose_meditation(text).split("\n\n")[_REFLECTION]

    assert reflection.count("grief") == 1
    assert "your exams" in reflection


def test_a_feeling_the_person_denies_is_never_met_as_a_weight() -> None:
    text = "User: I'm not scared of the sea now. Not scared at all, no fear. I swim there and feel calm."

    reflection = compose_meditation(text).split("\n\n")[_REFLECTION]

    assert named_feelings(text) == []
    assert "fear" not in reflection


def test_calm_said_of_the_refuge_is_not_met_as_a_weight() -> None:
    text = "User: The woods are calm. Calm, calm, calm. I find calm in the woods.\nUser: My sister. Sister."

    reflection = compose_meditation(text).split("\n\n")[_REFLECTION]

    assert "the woods, your place of quiet" in reflection
    assert "the calm" not in reflection
    assert "toward calm" not in reflection


def test_a_singular_noun_ending_in_s_is_spoken_with_an_article() -> None:
    text = "User: The diagnosis came on Friday. The diagnosis changes everything. Diagnosis."

    reflection = compose_meditation(text).split("\n\n")[_REFLECTION]

    assert "the diagnosis" in reflection
