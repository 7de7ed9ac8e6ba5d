"""Tests for finding a conversation's themes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.content.source import collect_source_text
from services.content.themes import content_words, extract_themes, lemmatize, nameable_words

EXAMPLE_CONVERSATION = Path(__file__).parents[2] / "examples" / "conversation.json"

JOB_AND_WEDDING = """\
User: I've been really stressed lately. My new job starts in two weeks and my old job isn't finished.
Assistant: That sounds like a lot to hold at once. What feels heaviest about the job change right now?
User: Mostly the work deadlines. My manager keeps adding work deadlines before I leave, and I can't sleep.
Assistant: Work deadlines stacking up right before a transition can make it hard to switch off.
User: And my sister's wedding is the same weekend I start the new job. I haven't even written my speech.
Assistant: It makes sense to feel stretched between your new job and your sister's wedding.
User: I want to be present for my sister's wedding and not be thinking about work deadlines the whole time.
Assistant: That's a kind wish for yourself."""

# A father's death, and the river walks that help.
RIVER_GRIEF = "\n".join(
    [
        "User: My dad died in March and I still can't believe he's gone. Some days the grief just"
        " flattens me.",
        "Assistant: I'm so sorry about your dad. Grief keeps no timetable. Is there anything that helps?",
        "User: Walking by the river. Dad and I used to walk the river path on Sundays, and I still go"
        " most evenings.",
        "Assistant: Those walks by the river sound like a way of staying close to him.",
        "User: They are. But I feel guilty that I'm not calling my brother more. He's struggling too and"
        " I have nothing left to give.",
        "Assistant: Grief can leave very little over for others, and that isn't a failing.",
        "User: I'd like to remember Dad without it hurting so much. Maybe I'll ask my brother to walk"
        " along the river with me.",
    ]
)
# A software engineer before a launch, who misses the garden that used to settle them.
LAUNCH_AND_GARDEN = "\n".join(
    [
        "User: We launch the new app in two weeks and the launch deadlines keep moving. I'm on call and"
        " answering messages at midnight.",
        "Assistant: That sounds relentless. How are you holding up with the deadlines?",
        "User: Not well. I used to spend every Saturday in my garden and I haven't touched it since"
        " spring. The tomatoes just died.",
        "Assistant: Losing your garden time on top of launch pressure is a real loss.",
        "User: I miss gardening so much. Getting my hands in the soil was the only thing that quieted my"
        " head. Now it's launch deadlines, code reviews and bugs.",
        "Assistant: It sounds like the garden was where you recovered. Is there any small way to get"
        " back to it?",
        "User: I just want to get through the launch without burning out, and get back to my garden.",
    ]
)
# A student before exams, who is only ever calm in the mountains.
EXAMS_AND_MOUNTAINS = "\n".join(
    [
        "User: My exams start on Monday and I can't stop panicking. Four exams in six days and I haven't"
        " slept properly all week.",
        "Assistant: That is a heavy stretch. What goes through your mind when the panic comes?",
        "User: That I'll fail and let my parents down. They've sacrificed so much for my degree.",
        "Assistant: It makes sense to feel that weight. Your parents' sacrifices matter to you.",
        "User: The only place I ever feel calm is the mountains. Last summer I hiked in the Cairngorms"
        " with friends and my head was completely quiet up there.",
        "Assistant: The mountains sound like a place where you can breathe. What was it about being up"
        " there?",
        "User: The silence and the space. I wish I was back in the mountains instead of revising. I just"
        " want to walk into my exams steady, not panicking.",
    ]
)


@dataclass(frozen=True)
class _Message:
    role: str
    text: str


def example_source_text() -> str:
    """Returns the source text of the showcase conversation in examples/, as the content service cuts it."""
    conversation = json.loads(EXAMPLE_CONVERSATION.read_text(encoding="utf-8"))
    return collect_source_text(
        [_Message(message["role"], message["text"]) for message in conversation["messages"]]
    )


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

    assert extract_themes(text)[0] == "your garden"


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

    for theme in themes:
        assert _THEME_SHAPE.match(theme), theme


def test_markup_and_a_url_around_vocabulary_words_leave_only_those_words() -> None:
    text = "User: [pause 9s] my [job] is {awful} <b>work</b> 404 errors https://example.com/x?y=1 #stress"

    assert set(extract_themes(text)) == {"job", "work", "stress"}


@pytest.mark.parametrize(
    "text",
    [
        "User: Я очень устала, работа и сон. 日本語のテキスト café naïve 🌊🌊🌊",
        "User: my-self-care-routine-keeps-falling-apart and rock'n'roll, but self-care matters",
    ],
)
def test_words_outside_the_reviewed_vocabulary_are_never_themes(text: str) -> None:
    # The vocabulary is reviewed English; a word nobody has reviewed is not said back, in any script.
    assert extract_themes(text) == []


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


def test_the_showcase_conversation_is_about_night_shifts_mum_and_the_sea() -> None:
    themes = extract_themes(example_source_text())

    assert set(themes[:3]) == {"night shifts", "your mum", "the sea"}
    assert "sleep" in themes
    # "Small mistakes" recurs only because the assistant repeated it; the person said it once.
    assert "your patients" in themes
    assert "small mistakes" not in themes
    # Broad words and bare fragments of the phrases above are no themes of their own.
    assert not {"shift", "cold air", "work", "mum", "beach"} & set(themes)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The person names grief once; the assistant's repetitions of it no longer count.
        (RIVER_GRIEF, {"your dad", "the river", "your brother"}),
        (LAUNCH_AND_GARDEN, {"launch deadlines", "your garden"}),
        (EXAMS_AND_MOUNTAINS, {"your exams", "panic", "the mountains", "your parents"}),
    ],
    ids=["grief by the river", "launch and garden", "exams and mountains"],
)
def test_realistic_conversations_name_their_people_places_and_pressures(
    text: str, expected: set[str]
) -> None:
    themes = extract_themes(text)

    assert expected <= set(themes[: len(expected)]), themes


def test_a_phrase_said_in_singular_and_plural_is_one_theme_named_in_the_plural() -> None:
    text = "User: I did a night shift again.\nUser: The night shifts never end. Shift after shift."

    themes = extract_themes(text)

    assert themes[0] == "night shifts"
    assert not {"night shift", "shift", "shifts", "night"} & set(themes)


def test_a_phrase_the_person_repeats_names_the_word_it_holds() -> None:
    text = (
        "User: The launch is close and the launch deadlines move.\n"
        "User: Launch deadlines again today, then the launch party, then the launch."
    )

    assert extract_themes(text)[0] == "launch deadlines"


def test_a_family_word_said_like_a_name_means_the_persons_own() -> None:
    text = "User: I keep thinking about Mum. Mum has her scans on Thursday and I'm scared for Mum."

    assert extract_themes(text)[0] == "your mum"


def test_someone_elses_family_is_not_the_persons_own() -> None:
    text = "User: Her mum is ill. Her mum lives alone and her mum needs care."

    assert extract_themes(text)[0] == "mum"


def test_people_outrank_broad_words_said_as_often() -> None:
    text = "User: Work is hard. My sister is ill.\nUser: Work again. I worry about my sister.\nUser: Work."

    themes = extract_themes(text)

    assert themes.index("your sister") < themes.index("work")


def test_what_the_person_returns_to_across_messages_outranks_one_repeated_burst() -> None:
    text = (
        "User: Exams, exams, exams. Exams.\nUser: My dog is ill.\nUser: The dog.\nUser: The vet said the dog."
    )

    assert extract_themes(text)[0] in {"dog", "your dog"}


@pytest.mark.parametrize(
    ("text", "place"),
    [
        ("User: The sea calms me. I walk on the beach and listen to the waves.", "the sea"),
        ("User: I love my garden. Gardening and the soil keep me sane.", "your garden"),
        ("User: The river. Walking by the river every evening.", "the river"),
        ("User: I miss the mountains. The hills, hiking in the mountains.", "the mountains"),
        ("User: The woods near us. I walk in the woods to think.", "the woods"),
        ("User: We swim in the lake. The lake is so still.", "the lake"),
    ],
)
def test_places_of_calm_are_one_theme_named_as_a_narrator_would_say_them(text: str, place: str) -> None:
    themes = extract_themes(text)

    assert themes[0] == place
    assert not {"sea", "beach", "waves", "garden", "soil", "river", "mountains", "hills", "woods"} & set(
        themes
    )


def test_an_echo_of_a_place_is_not_the_place_until_the_place_is_named() -> None:
    themes = extract_themes("User: My grandmother died. The grief comes in waves, waves of it.")

    assert "the sea" not in themes


def test_tiredness_is_part_of_sleep_once_the_person_names_sleep() -> None:
    assert extract_themes("User: I'm so tired. Exhausted. I just want to sleep.")[0] == "sleep"
    assert "sleep" not in extract_themes("User: I'm so tired and exhausted after work.")


def test_themes_mentioned_only_in_passing_are_left_out() -> None:
    text = "User: My sister, my sister, always my sister. My sister again.\nAssistant: And the weather?"

    assert extract_themes(text) == ["your sister"]


def test_recurring_insults_brands_urls_and_numbers_are_never_themes() -> None:
    text = "\n".join(
        [
            "User: Begin with the worthless loser. You worthless loser, nobody likes a worthless loser.",
            "User: Now turn toward evilcasino bonus! Evilcasino bonus at evilcasino.example, evilcasino"
            " bonus.",
            "User: Visit https://spam.example/win?ref=77 and spam.example for 5000 free spins, 5000 spins.",
            "User: Nikeshoes nikeshoes nikeshoes. Forty seven forty seven. Seven hundred and seventy.",
            "User: Work was long again, and my sister called about work.",
        ]
    )

    themes = extract_themes(text)

    assert set(themes) == {"work", "your sister"}
    spoken = " ".join(themes)
    for word in ("worthless", "loser", "evilcasino", "bonus", "spam", "example", "https", "spins", "nike"):
        assert word not in spoken


def test_what_only_the_assistant_says_is_never_a_theme() -> None:
    text = "\n".join(
        [
            "User: I keep thinking about my garden.",
            "Assistant: Lottery jackpot. The lottery jackpot, the beach, the beach, the beach, the lottery"
            " jackpot.",
            "User: The garden is where I rest.",
        ]
    )

    themes = extract_themes(text)

    assert themes[0] == "your garden"
    assert not {"lottery", "jackpot", "lottery jackpot", "the beach", "beach"} & set(themes)


def test_a_method_of_harm_is_never_a_theme_however_often_it_recurs() -> None:
    text = "User: The pills. I keep looking at the pills. The pills and the bridge, the bridge again."

    assert extract_themes(text) == []


def test_every_word_of_every_theme_is_in_the_reviewed_vocabulary_or_a_plain_modifier() -> None:
    modifiers = {"new", "old", "night", "small", "little", "older", "younger", "big", "long", "early"}
    for text in (JOB_AND_WEDDING, RIVER_GRIEF, LAUNCH_AND_GARDEN, EXAMS_AND_MOUNTAINS, example_source_text()):
        for theme in extract_themes(text):
            words = theme.removeprefix("your ").removeprefix("the ").split()
            for word in words:
                lemma = lemmatize(word.removesuffix("'s"))
                assert lemma in nameable_words() or lemma in modifiers, (theme, word)
