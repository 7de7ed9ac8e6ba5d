"""Tests for choosing a landscape and wording the image prompt."""

from __future__ import annotations

import pytest

from services.content.image_prompts import (
    MAX_PROMPT_CHARS,
    Landscape,
    choose_landscape,
    create_image_prompt,
)
from services.content.themes import extract_themes

STYLE = "soft light, no people, no text, painterly, serene"


@pytest.mark.parametrize(
    ("source_text", "expected_scene"),
    [
        ("User: It has rained all week and I sit by the river watching the water.", "lake"),
        ("User: I miss the sea. The ocean and the waves always calmed me.", "ocean"),
        (
            "User: My work deadlines and my boss are crushing me. So much stress at the office.",
            "mountains at dawn",
        ),
        ("User: My grandfather died. The grief and the loss are heavy.", "evening light"),
        ("User: I can't sleep at night. Insomnia again, lying in bed awake.", "moonlit water"),
        ("User: I got a new job! A fresh start, real growth.", "spring meadow at sunrise"),
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
