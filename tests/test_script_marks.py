"""Script marks: pause marks become clamped silences, and no bracketed mark is ever read aloud."""

from __future__ import annotations

from services.script_marks import (
    MAX_PAUSE_SECONDS,
    Silence,
    SpokenText,
    count_spoken_words,
    format_pause,
    speakable_text,
    split_on_pauses,
    total_pause_seconds,
)


def test_a_script_splits_into_spoken_stretches_and_clamped_silences() -> None:
    assert split_on_pauses("Breathe in. [pause 3s] [PAUSE 0.1 s] Out. [pause 40s]") == [
        SpokenText("Breathe in."),
        Silence(3.0),
        Silence(0.5),
        SpokenText("Out."),
        Silence(MAX_PAUSE_SECONDS),
    ]


def test_a_formatted_pause_parses_back_to_its_clamped_length() -> None:
    assert format_pause(3) == "[pause 3s]"
    assert total_pause_seconds(f"Rest. {format_pause(1.5)} {format_pause(99)}") == 1.5 + MAX_PAUSE_SECONDS


def test_only_words_count_and_no_bracketed_mark_is_spoken() -> None:
    assert count_spoken_words("Let it go. [pause 2s] Rest here.") == 5
    assert speakable_text("[soft music]  Let your shoulders\nsoften. [smile]") == "Let your shoulders soften."
