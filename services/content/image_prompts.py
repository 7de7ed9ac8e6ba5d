"""Chooses the calm landscape that suits a conversation and words the prompt its image is painted from."""

from __future__ import annotations

import enum
import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from services.content.themes import lemmatize

# Images are cached by prompt, so a prompt holds only this module's own words, never the person's.
_STYLE = "soft light, no people, no text, painterly, serene"
MAX_PROMPT_CHARS = 400
# A theme is what the conversation is about; a passing word in the source text is weaker evidence.
_THEME_WORD_WEIGHT = 3.0
_SOURCE_WORD_WEIGHT = 1.0
# "new job" says more than "new" or "job" alone, and outweighs a theme that names only "job".
_PHRASE_WEIGHT = 3.0
# A place the person names ("the sea", "my garden") is where they find calm in their own words. Any named
# place is chosen over moods; among several places, one said often outweighs one with many mood words.
_PLACE_WEIGHT = 4.0
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


class Landscape(enum.Enum):
    """A calm place an image (and a narrated visualisation) can show; declaration order breaks ties."""

    MOUNTAIN_DAWN = "mountain_dawn"
    EVENING_LIGHT = "evening_light"
    MOONLIT_WATER = "moonlit_water"
    SPRING_MEADOW = "spring_meadow"
    OCEAN_SHORE = "ocean_shore"
    STILL_LAKE = "still_lake"
    FOREST_CLEARING = "forest_clearing"
    RIVERSIDE = "riverside"
    GARDEN = "garden"


@dataclass(frozen=True)
class LandscapeChoice:
    """The landscape that suits a conversation, and how strongly the conversation pointed to it."""

    landscape: Landscape
    # Weighted keyword matches; 0 when nothing matched and the landscape was drawn by hash.
    keyword_hits: float
    # Whether the conversation names this very place (the sea, a garden), not only its mood.
    is_named_place: bool = False


@dataclass(frozen=True)
class _Scene:
    keywords: str  # space-separated; "new_job" is the two-word phrase "new job"
    description: str
    details: tuple[str, ...]
    mood: str
    places: str = ""  # space-separated single words that name the place itself ("sea", "beach")


_SCENES = {
    Landscape.MOUNTAIN_DAWN: _Scene(
        keywords=(
            "boss burnout busy career client climb colleague deadline exam hike hiking interview job manager"
            " meeting office overwhelm presentation pressure project promotion stress study work workload"
        ),
        description="quiet mountains at dawn, a pale gold sky above a valley of low mist",
        details=(
            "a lone pine on a gentle ridge",
            "a still alpine lake below",
            "distant peaks fading into blue",
        ),
        mood="steadiness and a slow, unhurried morning",
        places="hill mountain summit valley",
    ),
    Landscape.EVENING_LIGHT: _Scene(
        keywords=(
            "anniversary breakup death die died divorce funeral goodbye grief heartbreak loneliness loss lost"
            " memory missing mourn passed widow"
        ),
        description="soft evening light over rolling hills, long gentle shadows under a warm amber sky",
        details=(
            "a winding path through tall grass",
            "a single tree on a hilltop",
            "the first stars appearing",
        ),
        mood="tender remembrance and comfort",
    ),
    Landscape.MOONLIT_WATER: _Scene(
        keywords=("awake bed bedtime dream exhaustion insomnia night nightmare rest sleep tiredness"),
        description="moonlit water under a clear night sky, silver reflections on a quiet bay",
        details=(
            "a soft haze along the shoreline",
            "reeds standing still at the water's edge",
            "a sky of faint stars",
        ),
        mood="deep rest and quiet",
    ),
    Landscape.SPRING_MEADOW: _Scene(
        keywords=(
            "baby begin beginning birth fresh_start future graduation grow growth hope learn move new_chapter"
            " new_home new_job pregnancy pregnant spring wedding"
        ),
        description="a spring meadow at sunrise, wildflowers in fresh green grass beneath a wide open sky",
        details=(
            "a stream curving through the grass",
            "blossoming trees at the meadow's edge",
            "dew catching the light",
        ),
        mood="growth and new beginnings",
        places="meadow",
    ),
    Landscape.OCEAN_SHORE: _Scene(
        keywords="abroad boat flight holiday sail sand surf swim tide travel trip vacation wave",
        description="a wide, calm ocean shore at first light, gentle waves on pale sand",
        details=(
            "a smooth line of driftwood",
            "low cliffs softened by haze",
            "a calm horizon without a boat in sight",
        ),
        mood="openness and ease",
        places="beach coast harbor harbour island ocean sea seaside shore",
    ),
    Landscape.STILL_LAKE: _Scene(
        keywords="breath breathe calm clarity peace quiet rain raining rainy stillness water",
        description="a still lake at dawn, thin mist resting on glassy water framed by hills",
        details=(
            "a wooden jetty reaching into the mist",
            "soft rain rings on the surface",
            "reflections of birch trees",
        ),
        mood="stillness and clarity",
        places="lake loch pond",
    ),
    Landscape.FOREST_CLEARING: _Scene(
        keywords=(
            "anxiety body brother child dad daughter family father friend friendship grandfather grandmother"
            " health home kid mom moss mother mum parent partner pine relationship sister son tree"
        ),
        description="a sunlit forest clearing, tall old trees, soft moss and dappled light",
        details=(
            "a small brook between the roots",
            "ferns unfolding in the shade",
            "beams of light through the leaves",
        ),
        mood="shelter and belonging",
        places="forest wood woodland",
    ),
    Landscape.RIVERSIDE: _Scene(
        keywords="bridge current flow path stream towpath walk",
        description="a slow river winding through a green valley in early light, willows along its banks",
        details=(
            "smooth stones in the shallows",
            "a narrow footpath following the water",
            "mist lifting gently from the current",
        ),
        mood="gentle movement and letting go",
        places="canal river riverbank",
    ),
    Landscape.GARDEN: _Scene(
        keywords="bloom flower grow plant seed seedling soil tomato vegetable",
        description="a quiet garden in soft morning light, flower beds and green leaves bright with dew",
        details=(
            "a wooden bench beneath an old apple tree",
            "a watering can resting by the path",
            "bees drifting between the flowers",
        ),
        mood="patient growth and care",
        places="allotment garden gardening",
    ),
}
# Each keyword in the form `_count_terms` produces, with its weight.
_KEYWORD_WEIGHTS = {
    landscape: (
        *(
            (
                "_".join(lemmatize(part) for part in keyword.split("_")),
                _PHRASE_WEIGHT if "_" in keyword else 1.0,
            )
            for keyword in scene.keywords.split()
        ),
        *((lemmatize(place), _PLACE_WEIGHT) for place in scene.places.split()),
    )
    for landscape, scene in _SCENES.items()
}
_PLACES_BY_LANDSCAPE = {
    landscape: frozenset(lemmatize(place) for place in scene.places.split())
    for landscape, scene in _SCENES.items()
}
_PLACES = {place: landscape for landscape, places in _PLACES_BY_LANDSCAPE.items() for place in places}
_PHRASE_KEYS = frozenset(
    key for keyword_weights in _KEYWORD_WEIGHTS.values() for key, _ in keyword_weights if "_" in key
)
# With nothing to go on, any of these gentle, universal places suits.
_DEFAULT_LANDSCAPES = (
    Landscape.STILL_LAKE,
    Landscape.FOREST_CLEARING,
    Landscape.SPRING_MEADOW,
    Landscape.OCEAN_SHORE,
)


def choose_landscape(themes: Sequence[str], source_text: str) -> LandscapeChoice:
    """Returns the landscape of the place the person names, or else the one whose mood words the themes and
    source text mention most."""
    counts: defaultdict[str, float] = defaultdict(float)
    for theme in themes:
        _count_terms(theme, _THEME_WORD_WEIGHT, counts)
    _count_terms(source_text, _SOURCE_WORD_WEIGHT, counts)
    best = Landscape.STILL_LAKE
    best_rank = (False, 0.0)
    for landscape, keyword_weights in _KEYWORD_WEIGHTS.items():
        hits = sum(counts.get(key, 0.0) * weight for key, weight in keyword_weights)
        is_named_place = any(counts.get(place, 0.0) > 0 for place in _PLACES_BY_LANDSCAPE[landscape])
        # A place the person names is their own picture of calm, so it comes before any count of moods.
        if (is_named_place, hits) > best_rank:
            best, best_rank = landscape, (is_named_place, hits)
    is_named_place, best_hits = best_rank
    if best_hits == 0:
        best = _DEFAULT_LANDSCAPES[_digest_number(source_text) % len(_DEFAULT_LANDSCAPES)]
    return LandscapeChoice(best, best_hits, is_named_place)


def landscape_of_place(phrase: str) -> Landscape | None:
    """Returns the landscape of the first place `phrase` names ("the sea" is the ocean shore), if any."""
    for word in _words(phrase):
        landscape = _PLACES.get(word)
        if landscape is not None:
            return landscape
    return None


def create_image_prompt(themes: Sequence[str], source_text: str, landscape: Landscape | None = None) -> str:
    """Returns a prompt for a calm, people-free landscape, in this module's words: `landscape` (as the
    script's visualisation chose it) or else the one that suits the themes."""
    if landscape is None:
        landscape = choose_landscape(themes, source_text).landscape
    scene = _SCENES[landscape]
    detail = scene.details[_digest_number("\n".join([*themes, source_text])) % len(scene.details)]
    return _prompt(scene, detail)


def all_image_prompts() -> list[str]:
    """Every prompt create_image_prompt can return: a finite set, so pre-generating it off-peak makes every
    later image request a cache hit."""
    return [_prompt(scene, detail) for scene in _SCENES.values() for detail in scene.details]


def _prompt(scene: _Scene, detail: str) -> str:
    prompt = f"A calm landscape: {scene.description}, {detail}, evoking {scene.mood}; {_STYLE}"
    # Every part is a fixed phrase well under the limit; the check guards future edits to the tables.
    if len(prompt) > MAX_PROMPT_CHARS:
        prompt = f"A calm landscape: {scene.description}; {_STYLE}"
    return prompt


def _words(text: str) -> list[str]:
    return [lemmatize(word.removesuffix("'s")) for word in _WORD.findall(text.lower().replace("’", "'"))]


def _count_terms(text: str, weight: float, counts: defaultdict[str, float]) -> None:
    words = _words(text)
    position = 0
    while position < len(words):
        pair = "_".join(words[position : position + 2])
        # A known phrase is counted whole, so "new job" points to a fresh start and not to work.
        if pair in _PHRASE_KEYS:
            counts[pair] += weight
            position += 2
        else:
            counts[words[position]] += weight
            position += 1


def _digest_number(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
