"""Writes a guided-meditation script from a conversation's source text, offline and deterministically."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.content.feelings import WORRY_ABOUT_CHANGE, is_feeling, named_feelings
from services.content.image_prompts import Landscape, LandscapeChoice, landscape_of_place
from services.content.refuge import choose_scene, is_comfort_word, names_a_place_of
from services.content.themes import content_words, extract_themes
from services.script_marks import count_spoken_words, format_pause

MIN_SCRIPT_WORDS = 400
MAX_SCRIPT_WORDS = 500
# Optional sentences are added until the script reaches this, leaving room either side of the midpoint.
_TARGET_SCRIPT_WORDS = 450
# The reflection names at most this many themes; more would turn it into a list.
_MAX_NAMED_THEMES = 3
# A theme longer than this is not a theme but a fragment of someone's sentence (spoken words).
_MAX_THEME_WORDS = 4
_MAX_THEME_CHARS = 40
# Letters (any script), apostrophes, hyphens and spaces: nothing a user writes can add a pause mark or markup.
_THEME_UNSAFE_CHARS = re.compile(r"[^\w' -]|[\d_]")
# Words that read naturally without an article ("you spoke about grief"); any other single-word theme that is
# not a plural is a countable thing and gets "the" ("you spoke about the wedding", not "about wedding").
_MASS_NOUN_LIST = (
    "anger anxiety burnout cancer change childhood college confidence death dementia depression"
    " exhaustion family fear food frustration grief guilt health heartbreak home homework insomnia"
    " jealousy loneliness loss love money motherhood music overwhelm pain panic parenthood peace pregnancy"
    " pressure rain rest retirement sadness school shame sleep stress tension therapy tiredness uni"
    " university weather work worry"
)
_MASS_NOUNS = frozenset(_MASS_NOUN_LIST.split())
_MASS_NOUN_SUFFIXES = ("ness", "ing", "ity", "ism")
# "-ing" is mostly a pastime ("gardening") or a feeling ("grieving"); these are things, said with "the".
_COUNTABLE_ING_LIST = (
    "beginning building ceiling ending evening meeting offspring sibling spring string wedding"
)
_COUNTABLE_ING_NOUNS = frozenset(_COUNTABLE_ING_LIST.split())
_DETERMINERS = frozenset({"a", "an", "her", "his", "my", "our", "the", "their", "your"})
# Words that point to the body as where the conversation's weight sits, making a body scan the better fit.
_BODY_WORD_LIST = (
    "ache body breath burnout chest exhaustion headache health heart illness insomnia jaw migraine muscle"
    " neck pain panic physical restless restlessness shoulder sick sleep stomach tense tension tight"
    " tightness tiredness"
)
_BODY_WORDS = frozenset(_BODY_WORD_LIST.split())
# This many body words settle the choice whatever else the conversation mentions.
_DECISIVE_BODY_WORDS = 3

_P2 = format_pause(2)
_P3 = format_pause(3)
_P4 = format_pause(4)
_P5 = format_pause(5)
_P6 = format_pause(6)


@dataclass(frozen=True)
class _Sentence:
    """One slot of the script: alternative phrasings of the same moment, one of which is spoken."""

    variants: tuple[str, ...]
    is_optional: bool = False


def _core(*variants: str) -> _Sentence:
    return _Sentence(variants)


def _extra(*variants: str) -> _Sentence:
    return _Sentence(variants, is_optional=True)


_ARRIVAL = (
    _core(
        "Welcome. Let yourself arrive here, just as you are, and find a position where your body feels"
        " supported, sitting or lying down.",
        "Take a moment to arrive. For the next few minutes there is nowhere else you need to be, and nothing"
        " you need to fix.",
        "Welcome to this quiet time. Settle into a position that feels easy, with your back supported"
        " and your hands resting softly.",
    ),
    _core(
        "If it feels right, let your eyes close, or let your gaze soften and rest on a spot in front of"
        f" you. {_P3}",
        "You might close your eyes now, or simply lower your gaze and let it rest on the floor ahead of"
        f" you. {_P3}",
    ),
    _extra(
        f"Notice the sounds around you, near and far, and let them come and go without following them. {_P3}",
        f"Feel the places where your body meets the chair, the bed, or the floor, and let them take a little"
        f" more of your weight. {_P3}",
    ),
    _extra(
        "Let your shoulders drop a little away from your ears, and let your jaw loosen.",
        "Let your hands grow heavy, and let your face soften, especially around the eyes and mouth.",
    ),
    _core(
        f"There is nothing to achieve here. You only need to be present. {_P4}",
        f"Whatever kind of day you have had, you are welcome here, exactly as you are. {_P4}",
    ),
)

_BREATH = (
    _core(
        "Now bring your attention to your breath. Don't change it yet. Simply notice the air moving in and"
        " out, and the gentle rise and fall of your chest and belly.",
        "Let your attention settle on your breathing. Notice where you feel it most, at the nose, in"
        " the chest, or in the belly, without changing anything.",
    ),
    _core(
        f"{_P3} Now breathe in slowly through your nose, two, three, four. {_P2} Hold it gently, two, three."
        f" {_P2} And breathe out through your mouth, two, three, four, five, six. {_P4}",
        f"{_P3} Let's slow it down together. Breathe in through your nose, one, two, three, four. {_P2}"
        f" Pause at the top, one, two. {_P2} And release slowly, one, two, three, four, five, six. {_P4}",
    ),
    _core(
        f"Once more. In, two, three, four. {_P2} Hold, two, three. {_P2} And out, slowly, two, three, four,"
        f" five, six. {_P4}",
        f"Again, breathe in, one, two, three, four. {_P2} Hold, one, two. {_P2} And let it go, one,"
        f" two, three, four, five, six. {_P4}",
    ),
    _extra(
        f"One last time, at your own pace. In, two, three, four. {_P2} And a long, unhurried breath out."
        f" {_P5}",
        f"And one more, as slowly as feels comfortable. In, two, three, four. {_P2} And all the way out."
        f" {_P5}",
    ),
    _core(
        f"Now let your breath return to its own natural rhythm. There is no right way to breathe here, only"
        f" your way. {_P3}",
        f"Now let go of the counting, and let your breath find its own rhythm, easy and unforced. {_P3}",
    ),
    _extra(
        f"With every breath out, let yourself soften a little more, as if you were setting down something"
        f" heavy. {_P3}",
        f"Each breath out is a small letting go. You do not have to hold everything at once. {_P3}",
    ),
)

_BODY_SCAN = (
    _core(
        "Now let your attention move slowly through your body, noticing each part without needing to"
        " change it.",
        "Let's take a slow journey through the body now, with curiosity rather than judgement.",
    ),
    _core(
        f"Begin at the top of your head, then let your attention drift down across your forehead, your eyes,"
        f" and your jaw. If you find any tightness, let it soften. {_P4}",
        f"Start with your face. Notice your forehead, the small muscles around your eyes, and your jaw, and"
        f" let each of them loosen. {_P4}",
    ),
    _core(
        f"Move down to your neck and shoulders, where so much of the day tends to gather. Breathe into them,"
        f" and let them drop. {_P4}",
        f"Let your attention settle on your neck and shoulders. They carry a great deal. Breathe into them,"
        f" and let them release. {_P4}",
    ),
    _extra(
        f"Feel your arms, your hands, and each of your fingers, heavy and warm. {_P3}",
        f"Let the warmth travel down your arms and into your hands, all the way to your fingertips. {_P3}",
    ),
    _core(
        f"Bring your awareness to your chest and your belly, rising and falling with each breath. {_P3}",
        f"Notice your chest and belly, softly moving as you breathe, with nothing to hold in. {_P3}",
    ),
    _core(
        "Now notice your hips, your legs, and your feet, and feel how completely the ground holds you."
        f" {_P4}",
        f"Let your attention flow down through your hips and legs to the soles of your feet, resting and"
        f" supported. {_P4}",
    ),
    _extra(
        "If your mind wanders, that is perfectly fine. Gently guide it back to the part of the body"
        " you were noticing.",
        "Whenever a thought pulls you away, simply notice it, and come back to the body and the breath.",
    ),
    _extra(
        f"Now sense your whole body at once, breathing, resting, and held. {_P5}",
        f"Feel your whole body together now, from head to feet, calm and at ease. {_P5}",
    ),
)

_VISUALISATION_OPENING = _core(
    "Now let an image form in your mind, a place where you can feel completely at ease.",
    "Now, in your imagination, let yourself arrive somewhere calm and beautiful.",
)
_VISUALISATION_CLOSING = (
    _extra(
        "Notice the colours around you, and the temperature of the air on your skin.",
        "Take in the small details, the sounds, the colours, and the feeling of the air.",
    ),
    _extra(
        f"Stay here for a few breaths, and let this place hold you. {_P5}",
        f"Rest here for a little while. There is nothing you need to do. {_P5}",
    ),
)
# Each scene is the landscape the meditation's image shows, so what the listener sees is what they hear.
_SCENES = {
    Landscape.MOUNTAIN_DAWN: (
        f"You are standing on a quiet mountainside just before dawn. The air is cool and clean, and a valley"
        f" of soft mist lies below you. {_P3}",
        f"Watch the first pale gold light touch the distant peaks, one after another, slowly and without"
        f" hurry. {_P4}",
        f"Feel the solid ground beneath your feet. The mountain has stood through every kind of weather, and"
        f" it is still here, steady and calm. {_P4}",
    ),
    Landscape.EVENING_LIGHT: (
        f"You are walking through rolling hills in the soft light of early evening. The warmth of the day"
        f" still lingers in the air. {_P3}",
        f"Long, gentle shadows stretch across the grass, and the sky glows amber and rose above you. {_P4}",
        f"Find a place to sit and watch the light change. Nothing here needs anything from you. The evening"
        f" simply holds you, as it holds everything. {_P4}",
    ),
    Landscape.MOONLIT_WATER: (
        f"You are sitting at the edge of quiet water at night. The air is mild, and everything around you is"
        f" resting. {_P3}",
        "A full moon hangs low in a clear sky, and its light lies across the water in a soft silver path."
        f" {_P4}",
        f"Listen to the faint lapping of the water at the shore. With each small wave, let your body grow a"
        f" little heavier and more at rest. {_P4}",
    ),
    Landscape.SPRING_MEADOW: (
        f"You are standing at the edge of a wide meadow at sunrise. The grass is fresh and green, scattered"
        f" with small wildflowers. {_P3}",
        f"Warm light spreads slowly across the meadow, catching the dew, and somewhere nearby a bird begins"
        f" to sing. {_P4}",
        f"Everything here is growing quietly, at its own pace, without forcing anything. Let that gentle pace"
        f" become your own. {_P4}",
    ),
    Landscape.OCEAN_SHORE: (
        f"You are walking barefoot along a wide, calm shore in the early morning. The sand is cool and smooth"
        f" beneath your feet. {_P3}",
        f"Gentle waves roll in and slip back out again, in and out, just like your breath. {_P4}",
        f"Look out at the wide horizon. Let the open space in front of you make a little more space inside"
        f" you. {_P4}",
    ),
    Landscape.STILL_LAKE: (
        f"You are sitting beside a still lake at dawn. A thin mist rests on the water, and the hills around"
        f" it are quiet. {_P3}",
        f"The surface of the lake is so calm that it holds a perfect reflection of the sky. {_P4}",
        f"Let your own mind become like that water, settling and clearing, reflecting whatever passes over it"
        f" without being disturbed. {_P4}",
    ),
    Landscape.FOREST_CLEARING: (
        f"You are stepping into a sunlit clearing in an old forest. Tall trees stand all around you, and the"
        f" ground is soft with moss. {_P3}",
        f"Light falls through the leaves in shifting patterns, and the air smells of earth and green"
        f" things. {_P4}",
        f"Feel how sheltered you are here. The trees have stood together for many years, rooted and patient,"
        f" and they make room for you. {_P4}",
    ),
    Landscape.RIVERSIDE: (
        f"You are walking slowly along a quiet riverbank in the soft light of early morning. The path is easy"
        f" beneath your feet. {_P3}",
        f"Beside you the river moves steadily on, carrying small leaves and ripples downstream, never in a"
        f" hurry. {_P4}",
        f"Let your thoughts be like those leaves on the water. Notice each one, and let the current carry it"
        f" gently away. {_P4}",
    ),
    Landscape.GARDEN: (
        f"You are standing in a quiet garden in the early morning. The air is cool, and it smells of damp"
        f" earth and green leaves. {_P3}",
        f"Everything around you is growing at its own pace, the flowers opening slowly toward the light."
        f" {_P4}",
        f"Feel the soil, soft and cool beneath your hands. Nothing here can be hurried, and nothing needs to"
        f" be. {_P4}",
    ),
}

_REFLECTION_OPENING = _core(
    "Now, from this calm place, gently bring to mind what you have been carrying lately.",
    "From this place of stillness, let your mind turn gently toward the conversation that brought you here.",
)
_REFLECTION_CLOSING = (
    _core(
        f"You do not have to carry all of this at once. Each part of it can wait its turn, and you can"
        f" meet it when the time comes. {_P4}",
        f"None of this needs to be solved in this moment. For now, it is enough to notice it, and to breathe."
        f" {_P4}",
    ),
    _extra(
        f"Imagine setting it down beside you, close enough to pick up later, but not in your hands right"
        f" now. {_P4}",
        f"Picture placing it gently on a shelf nearby. It will be there when you return, and you can rest"
        f" now. {_P4}",
    ),
    _extra(
        "Offer yourself the same patience you would offer a good friend who was carrying the same things.",
        "Be as kind to yourself as you would be to someone you love who was in your place.",
    ),
)

# Said after the feelings are named, for the first of them: plain and kind, never a promise.
_KIND_WORDS = {
    "grief": f"Grief is a measure of how much you have loved. It keeps its own time, and that is all right."
    f" {_P3}",
    "guilt": f"Whatever you wish you had done differently, you were doing what you could. You can be gentle"
    f" with yourself now. {_P3}",
    "shame": f"You are more than the hardest moments you have lived through. You can be gentle with yourself"
    f" now. {_P3}",
    "fear": f"Right now, in this breath, nothing is asked of you. {_P3}",
    "panic": f"Right now, in this breath, nothing is asked of you. Let each breath out be a little slower."
    f" {_P3}",
    "worry": f"Not everything ahead needs to be known today. You only need to meet this moment. {_P3}",
    "anxiety": f"Not everything ahead needs to be known today. You only need to meet this moment. {_P3}",
    WORRY_ABOUT_CHANGE: f"Change can unsettle anyone. Not everything ahead needs to be known today. You only"
    f" need to meet this moment. {_P3}",
    "loneliness": f"Even on the loneliest days, you are worth the same care you would give anyone else."
    f" {_P3}",
    "sadness": f"Sadness can be here without needing to be fixed. Let it soften a little with each breath."
    f" {_P3}",
}

_CLOSING = (
    _core(
        f"Now slowly begin to bring your awareness back to the room around you. {_P3}",
        f"Gently, begin to return. Notice the sounds of the room and the surface beneath you. {_P3}",
    ),
    _core(
        f"Wiggle your fingers and toes, and take one deeper breath. {_P3}",
        f"Let a little movement come back into your hands and feet, and take a fuller breath. {_P3}",
    ),
    _extra(
        "Remember that this calm is always within reach. Your breath comes with you wherever you go.",
        "You can return to this stillness whenever you need it, with just a few slow breaths.",
    ),
    _extra(
        f"Thank yourself for taking this time. It matters. {_P2}",
        f"Take a moment to thank yourself for making this space. {_P2}",
    ),
    _core(
        "When you are ready, open your eyes, and carry this quiet with you into the rest of your day.",
        "When you feel ready, let your eyes open, and take this steadiness with you, one breath at a time.",
    ),
)


def compose_meditation(source_text: str) -> str:
    """Returns a 400 to 500 word guided meditation with pause marks, reflecting the source text's themes and
    feelings, and visiting only a place the person found calming (services/content/refuge.py)."""
    rng = random.Random(_seed(source_text))
    themes = extract_themes(source_text)
    scene = choose_scene(themes, source_text)
    landscape = scene.landscape
    # Named from the reviewed list in data/feelings.txt, never from the person's own spelling.
    feelings = named_feelings(source_text)
    # A place said in distress is acknowledged once, gently, never met as a weight to breathe into; feelings
    # are met in words of their own (or not at all, when the person said them only to deny them: "I'm not
    # scared"); and "calm" said of a refuge is part of the refuge, not a weight.
    weights = [
        theme
        for theme in themes
        if not names_a_place_of(theme, scene.distressing_words)
        and not is_feeling(theme)
        and not _is_named_feeling(theme, feelings)
        and not is_comfort_word(theme)
    ]
    refuge = next(iter(_speakable_themes([scene.refuge] if scene.refuge else [])), None)
    if refuge is not None:
        weights = [theme for theme in weights if landscape_of_place(theme) is not landscape_of_place(refuge)]
    spoken = _speakable_themes(weights)
    hard_place = next(iter(_speakable_themes(scene.distressing)), None)
    middle: tuple[_Sentence, ...]
    if _prefers_body_scan(source_text, landscape, rng):
        middle = _BODY_SCAN
    else:
        middle = _visualisation(landscape, _place_to_visit(refuge, landscape))
    reflection = _reflection(spoken, refuge, feelings, hard_place)
    sections = (_ARRIVAL, _BREATH, middle, reflection, _CLOSING)
    # Phrasings are drawn before sentences are chosen, so the choice of one never shifts the other.
    drafted = [[(rng.choice(slot.variants), slot.is_optional) for slot in section] for section in sections]
    kept = _fit_to_word_range(drafted, rng)
    paragraphs = [
        " ".join(text for position, (text, _) in enumerate(section) if (index, position) in kept)
        for index, section in enumerate(drafted)
    ]
    return "\n\n".join(paragraphs)


def _is_named_feeling(theme: str, feelings: Sequence[str]) -> bool:
    """Whether a theme ("grief", "worry") is already said as a feeling ("worry about the change ahead")."""
    return any(theme == feeling or theme in feeling.split() for feeling in feelings)


def _seed(source_text: str) -> int:
    # SHA-256 rather than hash(): the same conversation must give the same script in every process.
    return int.from_bytes(hashlib.sha256(source_text.encode("utf-8")).digest()[:8], "big")


def _prefers_body_scan(source_text: str, landscape: LandscapeChoice, rng: random.Random) -> bool:
    # A place the person named as their calm is the strongest cue there is: take them there.
    if landscape.is_named_place:
        return False
    body_hits = sum(1 for word in content_words(source_text) if word in _BODY_WORDS)
    if body_hits >= _DECISIVE_BODY_WORDS or (body_hits > 0 and landscape.keyword_hits == 0):
        return True
    if body_hits == 0 and landscape.keyword_hits > 0:
        return False
    return rng.random() < 0.5


def _visualisation(landscape: LandscapeChoice, named_place: str | None) -> tuple[_Sentence, ...]:
    scene = tuple(_core(sentence) for sentence in _SCENES[landscape.landscape])
    opening = _VISUALISATION_OPENING
    if named_place is not None:
        opening = _core(
            f"Now, in your imagination, let yourself go back to {named_place}, the place where you feel at"
            " ease.",
            f"Now let an image of {named_place} form in your mind, as clearly and as gently as it comes.",
        )
    return (opening, *scene, *_VISUALISATION_CLOSING)


def _place_to_visit(refuge: str | None, landscape: LandscapeChoice) -> str | None:
    """Returns the refuge when the visualisation shows it: a place ("the sea", "your garden"), not a pastime
    ("gardening"), and the very place the image shows, so what is heard and what is seen agree."""
    if refuge is None or not refuge.startswith(("the ", "your ")):
        return None
    return refuge if landscape_of_place(refuge) is landscape.landscape else None


def _speakable_themes(themes: Sequence[str]) -> list[str]:
    """Returns the themes as the narrator may say them: plain words only, short, distinct, at most three."""
    speakable: list[str] = []
    for theme in themes:
        words = [word.strip("'-") for word in _THEME_UNSAFE_CHARS.sub(" ", theme.lower()).split()]
        words = [word for word in words if word]
        # Counted the way the script's length is counted, so a theme can never push the script out of range.
        while words and count_spoken_words(" ".join(words)) > _MAX_THEME_WORDS:
            words.pop()
        cleaned = " ".join(words)
        if not cleaned or len(cleaned) > _MAX_THEME_CHARS:
            continue
        # "the" is one more spoken word than the limit above allows; the script's budget leaves room for it.
        spoken = _with_article(cleaned)
        if spoken not in speakable:
            speakable.append(spoken)
        if len(speakable) == _MAX_NAMED_THEMES:
            break
    return speakable


def _with_article(theme: str) -> str:
    """Returns a theme that ends in a lone countable noun with "the" ("the wedding", "the new job"), so it
    reads as a thing in a sentence; a feeling, a plural or a phrase that already says whose is left as is."""
    words = theme.split()
    first, last = words[0], words[-1]
    # Only English has these rules; a word in another language is said just as the person wrote it.
    if not theme.isascii() or first in _DETERMINERS or first.endswith("'s") or last in _MASS_NOUNS:
        return theme
    if last.endswith(_MASS_NOUN_SUFFIXES) and last not in _COUNTABLE_ING_NOUNS:
        return theme
    # "diagnosis" and "virus" end in s without being plurals.
    if last.endswith("s") and not last.endswith(("ss", "is", "us")):
        return theme
    return f"the {theme}"


def _reflection(
    themes: Sequence[str],
    refuge: str | None = None,
    feelings: Sequence[str] = (),
    hard_place: str | None = None,
) -> tuple[_Sentence, ...]:
    hard = (*_acknowledgement(hard_place), *_feelings_met(feelings))
    # What is hard is met in words of its own, so the second weight may give way to keep the script in length.
    is_second_weight_optional = bool(hard)
    if refuge is None:
        middle = _reflection_on_weights(themes, is_second_weight_optional)
    else:
        middle = _reflection_with_refuge(themes[: _MAX_NAMED_THEMES - 1], refuge, is_second_weight_optional)
    # The refuge is named last, as something to keep, so what is hard is met before it.
    keep = middle[-1:] if refuge is not None else ()
    met = middle[:-1] if refuge is not None else middle
    return (_REFLECTION_OPENING, *met, *hard, *keep, *_REFLECTION_CLOSING)


def _acknowledgement(place: str | None) -> tuple[_Sentence, ...]:
    if place is None:
        return ()
    return (
        _core(
            f"You spoke, too, of {place}, and of what it holds for you. You do not need to go there now. It"
            f" is enough to acknowledge it, gently. {_P4}",
            f"You spoke, too, of {place}. That was hard, and it is enough to acknowledge it here, gently,"
            f" without going back there now. {_P4}",
        ),
    )


def _feelings_met(feelings: Sequence[str]) -> tuple[_Sentence, ...]:
    if not feelings:
        return ()
    named = _listed(feelings)
    if len(feelings) == 1:
        sentence = _core(
            f"You have felt {named}. That is a natural, human feeling, and it is welcome here, just as it is."
            f" {_P4}",
            f"There has been {named} in what you shared. Let it be here, met with kindness rather than"
            f" judgement. {_P4}",
        )
    else:
        sentence = _core(
            f"You have felt {named}. These are natural, human feelings, and they are welcome here, just as"
            f" they are. {_P4}",
            f"There has been {named} in what you shared. Let them be here, met with kindness rather than"
            f" judgement. {_P4}",
        )
    kindness = _KIND_WORDS.get(feelings[0])
    return (sentence, _extra(kindness)) if kindness is not None else (sentence,)


def _listed(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return f"{', '.join(items[:-1])}, and {items[-1]}"


def _reflection_on_weights(
    themes: Sequence[str], is_second_weight_optional: bool = False
) -> tuple[_Sentence, ...]:
    # Phrased so a theme reads right whether singular or plural ("sleep", "work deadlines"): "that", not "it".
    if not themes:
        return (
            _core(
                f"Let whatever has been on your mind today come gently into view, without needing to name"
                f" it or solve it. {_P4}",
                f"Let whatever you have been turning over lately come quietly into view. You do not need"
                f" to name it. {_P4}",
            ),
            _core(
                f"Notice where you feel it in your body, and let your breath move softly around that"
                f" place. {_P5}",
            ),
        )
    if len(themes) == 1:
        only = themes[0]
        return (
            _core(
                f"You spoke about {only}. Let that come to mind now, gently, without needing to solve"
                f" anything. {_P4}",
                f"In your conversation, you spoke about {only}. Let that come into view now, softly,"
                f" without needing to change it. {_P4}",
            ),
            _core(
                f"Notice what stirs in you when you think of {only}, and where you feel it in your body."
                f" Let your breath move gently around that place. {_P5}",
            ),
        )
    first, second = themes[0], themes[1]
    named = f"{first} and {second}" if len(themes) == 2 else f"{first}, {second}, and {themes[2]}"
    middle: tuple[_Sentence, ...] = (
        _core(
            f"You spoke about {named}. {_P3}",
            f"In your conversation, you talked about {named}. {_P3}",
            f"Lately your thoughts have turned to {named}. {_P3}",
        ),
        _first_weight(first),
        _second_weight(second, is_second_weight_optional),
    )
    if len(themes) > 2:
        middle = (*middle, _extra(f"And {themes[2]}, too. Nothing needs solving right now. {_P3}"))
    return middle


def _reflection_with_refuge(
    carried: Sequence[str], refuge: str, is_second_weight_optional: bool = False
) -> tuple[_Sentence, ...]:
    """The weights are met one by one, and the place of quiet is named last, as something to keep."""
    # "the sea, your place of quiet"; "your garden, where you find quiet" (never "your garden, your ...").
    framed = f"{refuge}, {'your place of quiet' if refuge.startswith('the ') else 'where you find quiet'}"
    if not carried:
        return (
            _core(
                f"You spoke about {framed}. Let it come to mind now, as clearly as you can. {_P4}",
                f"In your conversation, you spoke about {framed}. Picture it now, softly, in as much detail"
                f" as you like. {_P4}",
            ),
            _core(
                f"Notice how your body feels when you picture {refuge}, and let that ease spread a little"
                f" further with each breath. {_P5}",
            ),
        )
    named = carried[0] if len(carried) == 1 else f"{carried[0]} and {carried[1]}"
    middle = [
        _core(
            f"You spoke about {named}, and about {framed}. {_P3}",
            f"In your conversation, you talked about {named}, and about {framed}. {_P3}",
            f"Lately your thoughts have turned to {named}, and to {framed}. {_P3}",
        ),
        _first_weight(carried[0]),
    ]
    if len(carried) > 1:
        middle.append(_second_weight(carried[1], is_second_weight_optional))
    middle.append(
        _core(
            f"And whenever it feels like too much, remember {refuge}, and the quiet you find there. That"
            f" quiet is still yours. {_P4}",
            f"And remember {refuge}. The calm you find there is yours, and you can return to it whenever you"
            f" need. {_P4}",
        )
    )
    return tuple(middle)


def _first_weight(theme: str) -> _Sentence:
    return _core(
        f"Think first of {theme}. Notice what stirs in you, and where you feel it in your body. Let your"
        f" breath move gently around that place. {_P5}",
        f"Begin with {theme}. Notice where that lives in your body, and let your breath soften the place."
        f" {_P5}",
    )


def _second_weight(theme: str, is_optional: bool = False) -> _Sentence:
    return (_extra if is_optional else _core)(
        f"Now bring {theme} to mind. Whatever comes up, let it be here for a moment, held with kindness"
        f" rather than pressure. {_P5}",
        f"Now turn toward {theme}. Meet whatever you find there with warmth instead of worry. {_P5}",
    )


def _fit_to_word_range(drafted: list[list[tuple[str, bool]]], rng: random.Random) -> set[tuple[int, int]]:
    """Returns the (section, sentence) positions to keep: every core sentence, and optional ones until the
    script is near the middle of the allowed range."""
    kept = {
        (index, position)
        for index, section in enumerate(drafted)
        for position, (_, is_optional) in enumerate(section)
        if not is_optional
    }
    word_count = sum(count_spoken_words(drafted[index][position][0]) for index, position in kept)
    optional = [
        (index, position)
        for index, section in enumerate(drafted)
        for position, (_, is_optional) in enumerate(section)
        if is_optional
    ]
    # Which optional sentences are spoken varies with the seed, so scripts differ in shape, not just wording.
    rng.shuffle(optional)
    for index, position in optional:
        if word_count >= _TARGET_SCRIPT_WORDS:
            break
        sentence_words = count_spoken_words(drafted[index][position][0])
        if word_count + sentence_words <= MAX_SCRIPT_WORDS:
            kept.add((index, position))
            word_count += sentence_words
    return kept
