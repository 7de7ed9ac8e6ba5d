"""Tests for cutting a conversation down to its source text."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.content.source import MAX_SOURCE_CHARS, collect_source_text, trim_text


@dataclass(frozen=True)
class Message:
    role: str
    text: str


def _substantive(topic: str) -> str:
    return (
        f"I keep coming back to {topic}. It has been on my mind every evening this month, and I notice my"
        f" shoulders tighten whenever the subject of {topic} comes up with friends or family."
    )


def test_a_short_conversation_is_kept_whole_in_order_with_role_labels() -> None:
    messages = [Message("user", "My sister is getting married."), Message("assistant", "How do you feel?")]

    assert collect_source_text(messages) == "User: My sister is getting married.\nAssistant: How do you feel?"


def test_system_messages_are_excluded() -> None:
    messages = [
        Message("system", "You are a meditation coach. SECRET-INSTRUCTION"),
        Message("user", "I can't sleep."),
    ]

    assert collect_source_text(messages) == "User: I can't sleep."


def test_whitespace_inside_messages_is_collapsed_and_empty_messages_dropped() -> None:
    messages = [Message("user", "  I   can't\n\n sleep\t at night. "), Message("assistant", " \n ")]

    assert collect_source_text(messages) == "User: I can't sleep at night."


def test_no_messages_give_empty_text() -> None:
    assert collect_source_text([]) == ""
    assert collect_source_text([Message("system", "framing only")]) == ""


@pytest.mark.parametrize("max_chars", [MAX_SOURCE_CHARS, 700, 120, 60, 10, 1, 0])
def test_source_text_never_exceeds_max_chars(max_chars: int) -> None:
    messages = [Message("user" if i % 2 else "assistant", _substantive(f"topic {i}") * 3) for i in range(30)]

    assert len(collect_source_text(messages, max_chars)) <= max_chars


def test_default_limit_is_two_thousand_characters() -> None:
    messages = [Message("user", _substantive(f"topic {i}")) for i in range(40)]

    source = collect_source_text(messages)

    assert MAX_SOURCE_CHARS == 2000
    assert 1500 < len(source) <= 2000


def test_recent_messages_win_over_an_old_more_substantive_one() -> None:
    old = Message(
        "user",
        "OLDTOPIC: my divorce, the custody hearing, my lawyer, the mortgage, my mother's surgery,"
        " my brother's debts, the garden, the dog, the promotion, the commute, insomnia, migraines,"
        " the therapist, savings.",
    )
    recent = [
        Message("user", f"Recent topic {i}: the garden still needs weeding, and so it goes.")
        for i in range(40)
    ]

    source = collect_source_text([old, *recent])

    assert "OLDTOPIC" not in source
    assert "Recent topic 39" in source
    assert "Recent topic 38" in source


def test_a_substantive_message_wins_over_a_more_recent_short_acknowledgement() -> None:
    substantive = Message("user", _substantive("my father's illness"))
    acknowledgement = Message("user", "ok thanks")
    room_for_one = len("User: " + substantive.text) + 5

    source = collect_source_text([substantive, acknowledgement], max_chars=room_for_one)

    assert source == "User: " + substantive.text


def test_a_user_message_outweighs_an_assistant_message_of_equal_substance() -> None:
    user = Message("user", _substantive("the move"))
    assistant = Message("assistant", _substantive("the new house"))
    room_for_one = len("Assistant: " + assistant.text) + 5

    source = collect_source_text([user, assistant], max_chars=room_for_one)

    assert source.startswith("User: ")
    assert "the move" in source


def test_chosen_messages_keep_their_original_order() -> None:
    messages = [Message("user", _substantive(f"topic number {i}")) for i in range(20)]

    source = collect_source_text(messages)

    numbers = [int(line.split("topic number ")[1].split(".")[0]) for line in source.split("\n")]
    assert numbers == sorted(numbers)
    assert len(numbers) > 1


def test_a_single_over_long_message_is_trimmed_at_a_sentence_boundary() -> None:
    text = " ".join(f"This is sentence number {i} about the garden." for i in range(200))

    source = collect_source_text([Message("user", text)])

    assert len(source) <= MAX_SOURCE_CHARS
    assert source.endswith("garden. …")
    assert len(source) > MAX_SOURCE_CHARS - 60


def test_text_without_sentences_is_trimmed_at_a_word_boundary() -> None:
    text = " ".join(f"word{i}" for i in range(100))

    trimmed = trim_text(text, 50)

    assert len(trimmed) <= 50
    assert trimmed.endswith("…")
    assert trimmed[:-1].split()[-1] in text.split()


def test_collecting_is_deterministic() -> None:
    messages = [Message("user" if i % 3 else "assistant", _substantive(f"topic {i}")) for i in range(25)]

    assert collect_source_text(messages) == collect_source_text(list(messages))
