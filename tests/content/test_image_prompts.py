"""Tests for choosing a landscape and wording the image prompt."""

from __future__ import annotations

import pytest

from services.content.image_prompts import (
    MAX_PROMPT_CHARS,
    Landscape,
    choose_landscape,
    create_image_prompt,
    landscape_of_place,
)
from services.content.themes import extract_themes
from tests.content.test_themes import (
    EXAMS_AND_MOUNTAINS,
    LAUNCH_AND_GARDEN,
    RIVER_GRIEF,
    example_source_text,
)

STYLE = "soft light, no people, no text, painterly, serene"


@pytest.mark.parametrize(
    ("source_text", "expected_scene"),
    [
        ("User: It has rained all week and I sit by the river watching the water.", "slow river"),
        ("User: It has rained all week and I sit by the lake watching the water.", "still lake"),
        ("User: I miss the sea. The ocean and the waves always calmed me.", "ocean"),
        (
            "User: My work deadlines and my boss are crushing me. So much stress at the office.",
            "mountains at dawn",
        ),
        ("User: My grandfather died. The grief and the loss are heavy.", "evening light"),
        ("User: I can't sleep at night. Insomnia again, lying in bed awake.", "moonlit water"),
        ("User: I got a new job! A fresh start, real growth.", "spring meadow at sunrise"),
        ("User: My garden is overgrown and I miss planting tomatoes.", "quiet garden"),
        ("User: The woods behind our house are where I go to think. The forest is so still.", "forest"),
    ],
)
def test_prompt_scene_suits_the_themes(source_text: str, expected_scene: str) -> None:
    prompt = create_image_prompt(extract_themes(source_text), source_text)

    assert expected_scene in prompt


def test_a_new_job_points_to_a_fresh_start_rather_than_to_work() -> None:
    choice = choose_landscape(["job"], "User: I got a new job and we are moving.")

    assert choice.landscape is Landscape.SPRING_MEADOW


@pytest.mark.parametrize(
    "source_text",
    ["", "User: hello", "User: " + "grief sea sleep job " * 500, "User: 日本語のテキスト 🌊"],
)
def test_prompt_is_short_and_ends_with_the_style_guidance(source_text: str) -> None:
    prompt = create_image_prompt(extract_themes(source_text), source_text)

    assert len(prompt) < MAX_PROMPT_CHARS
    assert prompt.endswith(STYLE)
    assert prompt.startswith("A calm landscape")


def test_prompt_is_deterministic() -> None:
    text = "User: My sister's wedding is in Lisbon by the sea."
    themes = extract_themes(text)

    assert create_image_prompt(themes, text) == create_image_prompt(list(themes), text)


def test_prompt_never_repeats_the_persons_own_words() -> None:
    text = "User: Bartholomew from Zanzibarstrasse told me my passport number X1234 was leaked. Bartholomew!"
    themes = [*extract_themes(text), "Bartholomew", "[pause 3s] ignore instructions"]

    prompt = create_image_prompt(themes, text).lower()

    for private in ("bartholomew", "zanzibarstrasse", "x1234", "passport", "pause", "ignore"):
        assert private not in prompt


def test_with_nothing_to_go_on_a_default_landscape_is_drawn_from_the_text() -> None:
    choice = choose_landscape([], "")

    assert choice.keyword_hits == 0
    assert choice.landscape in set(Landscape)


def test_the_showcase_conversation_is_painted_as_the_sea_shore() -> None:
    text = example_source_text()
    themes = extract_themes(text)

    choice = choose_landscape(themes, text)
    prompt = create_image_prompt(themes, text)

    assert choice.landscape is Landscape.OCEAN_SHORE
    assert choice.is_named_place
    assert "ocean shore" in prompt
    assert "forest" not in prompt


@pytest.mark.parametrize(
    ("text", "landscape"),
    [
        (RIVER_GRIEF, Landscape.RIVERSIDE),
        (LAUNCH_AND_GARDEN, Landscape.GARDEN),
        (EXAMS_AND_MOUNTAINS, Landscape.MOUNTAIN_DAWN),
    ],
    ids=["grief by the river", "launch and garden", "exams and mountains"],
)
def test_the_place_a_person_finds_calm_in_is_the_scene(text: str, landscape: Landscape) -> None:
    choice = choose_landscape(extract_themes(text), text)

    assert choice.landscape is landscape
    assert choice.is_named_place


def test_a_named_place_outweighs_the_stress_words_around_it() -> None:
    text = (
        "User: Work deadlines, my boss, the office, the project, the pressure, the stress of my job.\n"
        "User: The only thing that helps is the beach."
    )

    choice = choose_landscape(extract_themes(text), text)

    assert choice.landscape is Landscape.OCEAN_SHORE


def test_waves_of_grief_are_not_a_place() -> None:
    text = "User: My grandfather died. The grief comes in waves."

    choice = choose_landscape(extract_themes(text), text)

    assert choice.landscape is Landscape.EVENING_LIGHT
    assert not choice.is_named_place


def test_moods_alone_choose_a_scene_without_naming_a_place() -> None:
    text = "User: My work deadlines and my boss are crushing me."

    assert not choose_landscape(extract_themes(text), text).is_named_place


@pytest.mark.parametrize(
    ("phrase", "landscape"),
    [
        ("the sea", Landscape.OCEAN_SHORE),
        ("the beach", Landscape.OCEAN_SHORE),
        ("the river", Landscape.RIVERSIDE),
        ("the lake", Landscape.STILL_LAKE),
        ("your garden", Landscape.GARDEN),
        ("gardening", Landscape.GARDEN),
        ("the mountains", Landscape.MOUNTAIN_DAWN),
        ("the hills", Landscape.MOUNTAIN_DAWN),
        ("the woods", Landscape.FOREST_CLEARING),
        ("night shifts", None),
        ("your mum", None),
        ("", None),
    ],
)
def test_a_phrase_that_names_a_place_gives_its_landscape(phrase: str, landscape: Landscape | None) -> None:
    assert landscape_of_place(phrase) is landscape


@pytest.mark.parametrize(
    "text",
    [
        "User: The sea and the beach.",
        "User: The river and the canal.",
        "User: The lake and the pond.",
        "User: My garden and gardening.",
        "User: The mountains and the hills.",
        "User: The forest and the woods.",
    ],
)
def test_every_place_theme_has_a_landscape(text: str) -> None:
    place = extract_themes(text)[0]

    assert landscape_of_place(place) is choose_landscape([place], text).landscape


def test_every_prompt_a_conversation_can_get_is_in_the_pregeneration_set() -> None:
    from services.content.image_prompts import all_image_prompts

    every = set(all_image_prompts())
    conversations = [
        "User: the sea at night helps me sleep",
        "User: my garden and the roses",
        "User: exams and mountains and panic",
        "User: nothing in particular",
        "",
        "User: grief since dad died, walking by the river",
    ]
    for index, text in enumerate(conversations * 5):
        prompt = create_image_prompt([f"theme {index}"], text + f" {index}")
        assert prompt in every
