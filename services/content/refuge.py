"""Judges how the person felt about each place they named, and chooses the calm one a meditation may visit.

The rules are cue words around each mention, sentence by sentence (data/place_cues.txt says which words and
why): comfort ("calms me", "where I can breathe") counts for a place, distress ("waited for news",
"funeral", "guilty", a negated comfort such as "doesn't calm me anymore") against it, fully in the place's
own clause and half as much elsewhere in its sentence. A place any of whose sentences holds more distress
than comfort is never the refuge; it is acknowledged instead. With no calming place, the visualisation is a
neutral one: never a landscape of a place named in distress.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.content.image_prompts import (
    Landscape,
    LandscapeChoice,
    choose_landscape,
    create_image_prompt,
    landscape_of_place,
)
from services.content.own_words import Cue, CueSet, OwnSentence, Word, find_cues, own_sentences
from services.content.themes import (
    FAMILY_WORDS,
    extract_themes,
    is_nameable,
    lemmatize,
    place_echoes,
    place_name,
)
from services.content.word_lists import read_lines

_COMFORT_WEIGHT = 1.0
# The person's own framing ("what steadies me is ...", "my happy place") says more than a passing calm word.
_FRAMING_WEIGHT = 2.0
_DISTRESS_WEIGHT = -1.0
# Missing a place says it was loved, but less plainly than calling it calm.
_LONGING_FOR_PLACE_WEIGHT = 0.5
# Missing someone there ("I miss walking by the river with Dad") is grief, and the place is bound up in it.
_LONGING_FOR_PERSON_WEIGHT = -1.0
# A cue in another clause of the sentence ("I'm worried about work, but the garden calms me") counts half.
_OTHER_CLAUSE_SHARE = 0.5
# A word that only echoes a place ("the waves", "the soil") says less about it than its name.
_ECHO_SHARE = 0.5
# With nothing calming named, any of these gentle, universal places suits (those image_prompts also falls
# back on), leaving out any landscape the person named in distress.
_NEUTRAL_LANDSCAPES = (
    Landscape.STILL_LAKE,
    Landscape.FOREST_CLEARING,
    Landscape.SPRING_MEADOW,
    Landscape.OCEAN_SHORE,
)


class PlaceFeeling(enum.Enum):
    """How the person spoke of a place, all its mentions together."""

    COMFORT = "comfort"
    NEUTRAL = "neutral"
    DISTRESS = "distress"


@dataclass
class PlaceJudgement:
    """One place the person named (all the words for one landscape count as one place) and how they felt."""

    word: str  # the lemma it was first named by ("lake", "hospital")
    landscape: Landscape | None  # None for an everyday place (a hospital) that cannot be visualised
    first_position: int
    words: set[str] = field(default_factory=set)  # every lemma they named it by
    score: float = 0.0
    # A sentence naming it held more distress than comfort: never the refuge, whatever else is said of it.
    is_ruled_out: bool = False

    @property
    def feeling(self) -> PlaceFeeling:
        if self.is_ruled_out or self.score < 0:
            return PlaceFeeling.DISTRESS
        return PlaceFeeling.COMFORT if self.score > 0 else PlaceFeeling.NEUTRAL


@dataclass(frozen=True)
class SceneChoice:
    """What the meditation visualises, the place it offers as the person's own refuge, and the places it must
    only acknowledge."""

    landscape: LandscapeChoice
    # How the narrator names the refuge ("the lake", "your garden", "gardening"); None when nothing calming
    # was named.
    refuge: str | None
    # How the narrator names places said in distress, most distressing first: only reviewed vocabulary.
    distressing: tuple[str, ...]
    # Every lemma that names a place said in distress, so no weight or refuge names one of them.
    distressing_words: frozenset[str]


@dataclass(frozen=True)
class _Cues:
    comfort: CueSet
    framing: CueSet
    distress: CueSet
    longing: CueSet
    person: frozenset[str]
    question: CueSet
    places: frozenset[str]


@functools.cache
def _cues() -> _Cues:
    kinds: dict[str, list[str]] = {}
    for line in read_lines("place_cues.txt"):
        kind, _, phrase = line.partition(":")
        kinds.setdefault(kind.strip(), []).append(phrase.strip().lower())

    def cues(kind: str) -> CueSet:
        return CueSet(Cue.parse(phrase) for phrase in kinds[kind])

    return _Cues(
        comfort=cues("comfort"),
        framing=cues("framing"),
        distress=cues("distress"),
        longing=cues("longing"),
        person=frozenset(kinds["person"]) | FAMILY_WORDS,
        question=cues("question"),
        places=frozenset(kinds["place"]),
    )


def judge_places(source_text: str) -> list[PlaceJudgement]:
    """Returns every place the person named, in the order first named, with how they spoke of it."""
    sentences = own_sentences(source_text)
    named = {_place_key(lemma) for sentence in sentences for lemma in _lemmas(sentence.words)}
    echoes = {echo: word for echo, word in place_echoes().items() if _place_key(word) in named}
    places: dict[Landscape | str, PlaceJudgement] = {}
    position = 0
    for sentence in sentences:
        _judge_sentence(sentence, position, echoes, places)
        position += len(sentence.words)
    return sorted(places.values(), key=lambda place: place.first_position)


def image_prompt_for(source_text: str) -> str:
    """The image prompt for a conversation's source text: the picture shows the place the script visualises,
    one the person found calming, never one they named in grief or fear. Pure CPU work (tens of milliseconds
    for a long conversation): run it off an event loop that serves other calls."""
    themes = extract_themes(source_text)
    scene = choose_scene(themes, source_text)
    return create_image_prompt(themes, source_text, scene.landscape.landscape)


def choose_scene(themes: Sequence[str], source_text: str) -> SceneChoice:
    """Returns the landscape to visualise: the person's calmest place if they named one, else the landscape
    the conversation suits (image_prompts.choose_landscape) unless they named it in distress, else a neutral
    one."""
    places = judge_places(source_text)
    distressing = sorted(
        (place for place in places if place.feeling is PlaceFeeling.DISTRESS),
        key=lambda place: (place.score, place.first_position),
    )
    distressing_words = frozenset(word for place in distressing for word in place.words)
    ruled_out = {place.landscape for place in distressing if place.landscape is not None}
    calming = [
        place for place in places if place.landscape is not None and place.feeling is PlaceFeeling.COMFORT
    ]
    suited = choose_landscape(themes, source_text)
    refuge: str | None = None
    if calming:
        best = max(calming, key=lambda place: (place.score, -place.first_position))
        assert best.landscape is not None
        refuge = _name_of(best, themes)
        hits = suited.keyword_hits if suited.landscape is best.landscape else best.score
        landscape = LandscapeChoice(best.landscape, hits, is_named_place=True)
    elif suited.landscape not in ruled_out:
        landscape = suited
    else:
        allowed = [choice for choice in _NEUTRAL_LANDSCAPES if choice not in ruled_out]
        landscape = LandscapeChoice(allowed[_digest_number(source_text) % len(allowed)], 0.0)
    names = (_name_of(place, themes) for place in distressing)
    return SceneChoice(
        landscape=landscape,
        refuge=refuge,
        distressing=tuple(dict.fromkeys(name for name in names if name is not None)),
        distressing_words=distressing_words,
    )


def is_comfort_word(theme: str) -> bool:
    """Whether a theme is a single word of comfort ("calm", "peace"): said of their refuge, not a weight."""
    words = theme.lower().split()
    return len(words) == 1 and any(len(cue.parts) == 1 for cue in _cues().comfort.starting_with(words[0]))


def names_a_place_of(theme: str, words: frozenset[str]) -> bool:
    """Whether a theme ("the hospital corridor", "the sea") names any of these place lemmas, or the landscape
    of one ("the sea" names the beach's shore)."""
    theme_words = {lemmatize(word.removesuffix("'s")) for word in theme.lower().split()}
    if theme_words & words:
        return True
    landscape = landscape_of_place(theme)
    return landscape is not None and any(landscape_of_place(word) is landscape for word in words)


def _judge_sentence(
    sentence: OwnSentence,
    position: int,
    echoes: dict[str, str],
    places: dict[Landscape | str, PlaceJudgement],
) -> None:
    cues = _cues()
    # Each cue as (weight, clause): the sentence's evidence, to be weighed from where each place sits.
    evidence: list[tuple[float, int]] = []
    for match in find_cues(sentence.words, cues.comfort):
        evidence.append((_DISTRESS_WEIGHT if match.is_negated else _COMFORT_WEIGHT, match.clause))
    for match in find_cues(sentence.words, cues.framing):
        evidence.append((_DISTRESS_WEIGHT if match.is_negated else _FRAMING_WEIGHT, match.clause))
    for match in find_cues(sentence.words, cues.distress):
        if not match.is_negated:
            evidence.append((_DISTRESS_WEIGHT, match.clause))
    lemmas = _lemmas(sentence.words)
    is_about_someone = any(lemma in cues.person for lemma in lemmas)
    for match in find_cues(sentence.words, cues.longing):
        if not match.is_negated:
            weight = _LONGING_FOR_PERSON_WEIGHT if is_about_someone else _LONGING_FOR_PLACE_WEIGHT
            evidence.append((weight, match.clause))
    is_answer = bool(find_cues(sentence.question, cues.question))
    # Each place counts once a sentence, weighed in every clause that names it: named in distress in any
    # clause ("I used to go to the lake, but I can't relax at the lake"), it is in distress.
    mentions: dict[Landscape | str, _Mention] = {}
    for index, (lemma, word) in enumerate(zip(lemmas, sentence.words, strict=True)):
        is_echo = lemma in echoes
        name = echoes[lemma] if is_echo else lemma
        key = _place_key(name)
        if key is None:
            continue
        mention = mentions.get(key)
        if mention is None or (mention.is_echo and not is_echo):
            mention = mentions[key] = _Mention(name, position + index, is_echo)
        if mention.is_echo == is_echo:
            mention.clauses.add(word.clause)
    for key, mention in mentions.items():
        valences = [
            sum(
                weight * (1.0 if cue_clause == clause else _OTHER_CLAUSE_SHARE)
                for weight, cue_clause in evidence
            )
            for clause in mention.clauses
        ]
        valence = min(valences) if min(valences) < 0 else max(valences)
        # An answer to "what helps?" frames the place as a comfort, unless the answer itself is in distress.
        if is_answer and valence >= 0:
            valence += _FRAMING_WEIGHT
        place = places.get(key)
        if place is None:
            landscape = key if isinstance(key, Landscape) else None
            place = places[key] = PlaceJudgement(mention.name, landscape, mention.position)
        if mention.is_echo:
            place.score += valence * _ECHO_SHARE
            continue
        place.words.add(mention.name)
        place.score += valence
        if valence < 0:
            place.is_ruled_out = True


@dataclass
class _Mention:
    """Where a sentence names a place: by name, or only by an echo of it."""

    name: str
    position: int
    is_echo: bool
    clauses: set[int] = field(default_factory=set)


def _lemmas(words: Sequence[Word]) -> list[str]:
    return [lemmatize(word.text.removesuffix("'s")) for word in words]


def _place_key(lemma: str) -> Landscape | str | None:
    landscape = landscape_of_place(lemma)
    if landscape is not None:
        return landscape
    return lemma if lemma in _cues().places else None


def _name_of(place: PlaceJudgement, themes: Sequence[str]) -> str | None:
    """Names a place as the themes did ("your garden") if they named it, else as a narrator would ("the
    lake"); None for a place the reviewed vocabulary does not hold."""
    words = frozenset(place.words or {place.word})
    for theme in themes:
        if names_a_place_of(theme, words):
            return theme
    if not is_nameable(frozenset({place.word})):
        return None
    return place_name(place.word) or place.word


def _digest_number(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
