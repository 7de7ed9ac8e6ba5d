"""Distinct conversations, one per job, so no job's transcript or image is another's cached one."""

from __future__ import annotations

from dataclasses import dataclass

from services.content.source import collect_source_text

_WORRIES = (
    ("a run of night shifts on the ward", "my mind keeps replaying the handover and what I forgot to chart"),
    ("my final exams", "I keep rereading the same page and nothing goes in"),
    ("starting a new job next week", "I lie awake rehearsing conversations that have not happened"),
    ("my dad's memory getting worse", "he asked me my name on Sunday and I had to leave the room"),
    ("the breakup", "the flat is too quiet and I keep checking my phone"),
    ("a deadline at work", "my shoulders are up by my ears and my jaw aches"),
    ("moving to a new city", "I do not know anyone yet and the evenings are long"),
    ("my baby not sleeping", "I am so tired that I cry at adverts"),
    ("the money worries", "every bill that arrives makes my chest tight"),
    ("losing my grandmother", "I keep reaching for the phone to call her"),
)
_PEOPLE = ("Mum", "my brother", "my daughter", "Dad", "my partner", "my best friend", "my son", "my sister")
_PLACES = (
    "the sea at Portobello, the cold air and the waves",
    "the hills above the town, where the wind moves the grass",
    "a pine forest after rain, the smell of the needles",
    "the lake by my grandmother's house, very still at dawn",
    "the desert at first light, wide and quiet",
    "a snowy valley in winter, everything muffled",
    "the river path, the water over the stones",
    "a walled garden in summer, bees in the lavender",
    "the harbour at night, boats knocking softly",
    "a meadow at dusk, the first stars coming out",
)


@dataclass(frozen=True)
class ConversationTurn:
    """One message: `role` is user or assistant."""

    role: str
    text: str


def conversation_for(index: int) -> list[ConversationTurn]:
    """The conversation of job `index`: a worry, a person and a place, different for every index."""
    worry, symptom = _WORRIES[index % len(_WORRIES)]
    person = _PEOPLE[(index * 3 + index // len(_WORRIES)) % len(_PEOPLE)]
    place = _PLACES[(index * 7 + index // len(_WORRIES)) % len(_PLACES)]
    days = 2 + index
    return [
        ConversationTurn(
            "user",
            f"It has been {days} days of {worry} and I can't switch off. {symptom.capitalize()}.",
        ),
        ConversationTurn(
            "assistant",
            "That sounds like a lot to carry. When everything goes quiet the mind often keeps working. "
            "What happens when you try to rest?",
        ),
        ConversationTurn(
            "user",
            f"My heart races. Then I think about {person}. I have not told anyone how worried I am, "
            f"and I feel I have to be the calm one for everybody.",
        ),
        ConversationTurn(
            "assistant",
            "Being the calm one for everyone is tiring, especially when you are frightened yourself. "
            "Is there anywhere you feel you can put that down for a while?",
        ),
        ConversationTurn(
            "user",
            f"Honestly, {place}. That was the only time my head went quiet. I have not been there "
            f"for {days % 9 + 2} weeks because I am always too tired.",
        ),
        ConversationTurn(
            "user",
            "I want to sleep, and I want to be gentle with myself. Something slow, please, about letting go "
            "and breathing.",
        ),
    ]


def source_text_of(turns: list[ConversationTurn]) -> str:
    """The reference pipeline's source content: the conversation as `User: ...` lines (Stillpoint's own
    cut, 2,000 characters at most, which is also the reference pipeline's limit)."""
    return collect_source_text(turns)
