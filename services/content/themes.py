"""Finds the themes a conversation keeps returning to, as short noun phrases a narrator can say aloud."""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from services.content.own_words import ROLE_PREFIX
from services.content.word_lists import read_word_list

# Themes come from the person's own words only: an assistant's reply (or text made to look like one) may
# say anything, and nothing it says is spoken back. Unmarked text, with no role at all, is the person's.
_ROLE_WEIGHTS = {"user": 2.0, "assistant": 0.0, "system": 0.0}
_UNMARKED_WEIGHT = 2.0
# A phrase never spans punctuation: "work, sleep" is two themes, not one.
_CLAUSE_BREAK = re.compile(r"[.,;:!?()\[\]{}\"“”«»…—–/|*#<>=+~`]+|\s[-']\s")
# Letters only, so digits, emoji and markup never become themes; inner apostrophes and hyphens are kept.
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")
# Longer "words" are pasted URLs, run-together text or unspaced scripts, none of which a narrator can say.
_MAX_WORD_CHARS = 24
_MIN_WORD_CHARS = 3

# A bigram must recur to count: one-off word pairs are mostly accidents of phrasing.
_MIN_BIGRAM_OCCURRENCES = 2
# A recurring bigram ("work deadlines") is more specific than either of its words, so it outranks them.
_BIGRAM_BONUS = 2.0
# A pair that holds at least half a word's mentions stands in for that word; so does one that holds a third
# of them and that the person repeats in more than one message ("launch deadlines" for "launch").
_MIN_SHARE_TO_ABSORB_WORD = 2
_MIN_SHARE_TO_ABSORB_WORD_WHEN_REPEATED = 3
# What the person comes back to in message after message is on their mind; a word repeated within one
# message may only be how they happened to tell it. Each further message that mentions a theme adds this
# share to its score, and a theme only the assistant named loses the same share.
_USER_SPREAD_BONUS = 0.25
# The people someone names carry much of a conversation's feeling, even when named less often than work.
_FAMILY_SALIENCE = 1.5
# Broad words ("work", "air") name little on their own; a specific phrase or person should outrank them.
_GENERIC_SALIENCE = 0.5
# A theme far below the most prominent one was mentioned in passing; naming it would only add noise.
_MIN_SHARE_OF_TOP_SCORE = 0.25
# Words that only echo a pooled theme ("waves" for the sea, "tired" for sleep) count this much toward it.
_ECHO_WEIGHT = 0.5

# Words that mean the person's own: "my sister" becomes "your sister", which reads naturally when narrated.
_USER_POSSESSIVES = frozenset({"my", "our"})
_ASSISTANT_POSSESSIVES = frozenset({"your"})


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_STOPWORDS = _word_set(
    """
    a about above across after afterwards again against all almost alone along already also although
    always am among amongst an and another any anybody anyhow anyone anything anyway anyways anywhere
    are aren't around as at be became because become becomes becoming been before beforehand behind
    being below beside besides between beyond both but by can can't cannot could couldn't did didn't do
    does doesn't doing don't done down during each either else elsewhere enough etc even ever every
    everybody everyone everything everywhere except few for former formerly from further had hadn't has
    hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his how how's
    however i i'd i'll i'm i've if in indeed into is isn't it it'd it'll it's its itself just least less
    let's may me meanwhile might mine more moreover most mostly much must mustn't my myself namely
    neither never nevertheless next no nobody none noone nor not nothing now nowhere of off often on
    once one only onto or other others otherwise ought our ours ourselves out over own per perhaps
    rather same shall shan't she she'd she'll she's should shouldn't since so some somebody somehow
    someone something sometime sometimes somewhere still such than that that's the their theirs them
    themselves then thence there there's thereafter thereby therefore these they they'd they'll they're
    they've this those though through throughout thru thus to together too toward towards under unless
    until up upon us very via was wasn't we we'd we'll we're we've were weren't what what's whatever
    when when's whence whenever where where's whereas wherever whether which while who who's whoever
    whole whom whose why why's will with within without won't would wouldn't yet you you'd you'll you're
    you've your yours yourself yourselves
    """
)

# Conversational filler and assistant small talk: frequent in every chat, a theme of none.
_FILLER_WORDS = _word_set(
    """
    able absolutely actually add added adding advice ago agree ah alright amazing answer anyhow anymore
    appreciate approach april ask asked asking aspect august aw away awesome awful back bad basically
    believe best better big bit bye call called came can't certain certainly chance chat check choose
    chosen come comes coming common completely consider continue conversation cool could couple course
    day days december decide definitely did different difficult do doing done eaten eight eleven else end
    enough especially everyday exactly example excited exciting experience fact fair february feel
    feeling feelings feels felt fifth find fine first five focus follow found four fourth friday get gets
    getting give given glad go goes going gone gonna good got gotta gotten great guess guy guys ha haha
    half happen happened happening happens happy hard hear heard hello help helped helpful helping helps
    hey hi hmm honest honestly hope hoping hour hours hundred idea ideas important instead issue issues
    january july june keep keeping kind kinda know knowing known knows last lately later least leave let
    lets life like liked likely little lol look looked looking looks lot lots love made make makes making
    march maybe mean means meant mention mind minute minutes miss missed missing moment moments monday
    month months morning much natural need needed needs nice night nine normal notice noticed november
    october oh ok okay one part people perfectly person place plan please point possible pretty probably
    problem put question questions quite ready real really reason recently remember right said same
    saturday saw say saying says second see seeing seem seemed seems sense september seven share sharing
    six sixth soon sorry sort sorta sound sounds speak start started step steps stop stops stuff suggest
    suggestion suggestions sunday sure take taken takes taking talk talked talking tell telling ten thank
    thanks thing things think thinking third thirty thought thoughts thousand three thursday time times
    tip tips today told tomorrow tonight totally tried tries true try trying tuesday twelve twenty two
    type uh um understand understandable understanding use used useful usually valid via wanna want
    wanted wanting wants way ways wednesday week weekend weeks welcome well went whatever wish wonder
    wonderful worth wow written yeah year years yep yes yesterday
    """
)

# Feeling adjectives name a theme best as their noun: "stressed" is said as "stress".
_NOUN_FORMS = {
    "afraid": "fear",
    "angry": "anger",
    "anxious": "anxiety",
    "asleep": "sleep",
    "depressed": "depression",
    "died": "death",
    "exhausted": "exhaustion",
    "frightened": "fear",
    "frustrated": "frustration",
    "grieving": "grief",
    "guilty": "guilt",
    "jealous": "jealousy",
    "lonely": "loneliness",
    "moving": "move",
    "nervous": "nerves",
    "overwhelmed": "overwhelm",
    "overwhelming": "overwhelm",
    "panicking": "panic",
    "sad": "sadness",
    "scared": "fear",
    "sleeping": "sleep",
    "sleepless": "sleep",
    "tense": "tension",
    "slept": "sleep",
    "stressed": "stress",
    "stressful": "stress",
    "tired": "tiredness",
    "tiring": "tiredness",
    "working": "work",
    "worried": "worry",
    "worrying": "worry",
}

# Adjectives that make a good phrase with a following noun ("new job", "older sister") but no theme alone.
_MODIFIERS = _word_set(
    """
    best big close day early elder evening full late little long morning new night old older past small
    young younger
    """
)

# "-ing" usually marks a verb ("running through it"); these are the nouns and pastimes that end that way.
_ING_NOUNS = _word_set(
    """
    beginning building ceiling clothing cooking counseling counselling cycling dating ending evening
    funding gardening hiking housing meeting offspring painting parenting reading sibling spring string
    swimming training upbringing wedding wellbeing writing
    """
)
# "-ly" usually marks an adverb ("really", "honestly"); these are the nouns that happen to end that way.
_LY_NOUNS = _word_set(
    "ally anomaly assembly belly bully butterfly family fly holly italy jelly july lily melancholy reply"
    " supply"
)
# Plural stripping would mangle these.
_UNCHANGED_PLURALS = _word_set("christmas clothes diabetes glasses lens news physics politics series species")

# Broad nouns that name little alone; "cold air" is as vague as "air", so a phrase ending in one is too.
_GENERIC_NOUNS = _word_set("air area head level matter room side space thing walk work world")
# People a conversation is about. Family words said like a name ("thinking about Mum") mean the person's own.
_FAMILY_NAMES = _word_set(
    "dad daddy gran grandad granddad grandma grandpa granny mam mama mom mommy mum mummy nan nana nanna papa"
)
FAMILY_WORDS = _FAMILY_NAMES | _word_set(
    """
    aunt boyfriend brother child cousin daughter family father fiance fiancee friend girlfriend grandchild
    granddaughter grandfather grandmother grandson husband kid mother nephew niece parent partner sibling
    sister son stepdad stepmom stepmum uncle wife
    """
)
# Before a family name these make it someone else's ("her mum", "a dad"), not the person's own.
_NOT_OWNING = _word_set("a an another any every her his its some that the their these this those whose")


@dataclass(frozen=True)
class _Pool:
    """Words that name one theme together: "the sea", "the beach" and "the waves" are one place of calm.

    `names` map each word that names the theme to how a narrator says it; `echoes` only add weight once the
    theme has been named ("waves" alone may be grief coming in waves, not the sea).
    """

    names: dict[str, str]
    echoes: frozenset[str] = frozenset()


# The places of calm; the feelings and needs that pool the same way follow.
_PLACE_POOLS = (
    _Pool(
        {
            "sea": "the sea",
            "ocean": "the ocean",
            "beach": "the beach",
            "shore": "the shore",
            "coast": "the coast",
            "seaside": "the seaside",
        },
        _word_set("sand surf tide wave"),
    ),
    _Pool({"river": "the river", "riverbank": "the riverbank", "canal": "the canal"}),
    _Pool({"lake": "the lake", "loch": "the loch", "pond": "the pond"}),
    _Pool(
        {"garden": "the garden", "gardening": "gardening", "allotment": "the allotment"},
        _word_set("flower plant seedling soil tomato vegetable"),
    ),
    _Pool({"mountain": "the mountains", "hill": "the hills"}, _word_set("climb hike hiking trail")),
    _Pool(
        {"forest": "the forest", "wood": "the woods", "woodland": "the woodland"}, _word_set("moss pine tree")
    ),
)
_POOLS = (
    *_PLACE_POOLS,
    # A death, a loss or a funeral is grief when the person names it so, and stays as they said it otherwise.
    _Pool({"grief": "grief"}, _word_set("death funeral loss mourning")),
    # Tiredness is a theme of its own until the person says what they want instead of it: sleep.
    _Pool({"sleep": "sleep"}, _word_set("bedtime exhaustion insomnia tiredness")),
)


def place_name(lemma: str) -> str | None:
    """Returns how a narrator names the place a word names ("the mountains" for "mountain"), if it is one of
    the places of calm the themes pool together."""
    for pool in _PLACE_POOLS:
        if lemma in pool.names:
            return pool.names[lemma]
    return None


def place_echoes() -> dict[str, str]:
    """Maps each word that only echoes a place of calm ("wave", "soil") to a word that names it ("sea")."""
    return {echo: next(iter(pool.names)) for pool in _PLACE_POOLS for echo in pool.echoes}


def lemmatize(word: str) -> str:
    """Returns the comparison form of a lowercase word: its noun form for feelings, singular for plurals."""
    word = _NOUN_FORMS.get(word, word)
    if word in _UNCHANGED_PLURALS or len(word) <= 3 or not word.endswith("s"):
        return word
    if word.endswith(("ss", "us", "is", "ous")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    return word[:-1]


def content_words(text: str) -> list[str]:
    """Returns the lemmas of the words in `text` that carry meaning, in order, with filler dropped."""
    words: list[str] = []
    for clause in _CLAUSE_BREAK.split(text.lower().replace("’", "'")):
        for raw in _WORD.findall(clause):
            token = _read_token(raw)
            if token is not None and token.is_content:
                words.append(token.lemma)
    return words


@functools.cache
def nameable_words() -> frozenset[str]:
    """The reviewed vocabulary a spoken theme is made of (data/nameable_themes.txt), loaded once."""
    return read_word_list("nameable_themes.txt")


def is_nameable(lemmas: frozenset[str]) -> bool:
    """Whether a theme of these lemmas may be spoken: each is in the reviewed vocabulary or a plain modifier
    ("new", "night"), and at least one is in the vocabulary."""
    vocabulary = nameable_words()
    return bool(lemmas & vocabulary) and lemmas <= vocabulary | _MODIFIERS


def extract_themes(text: str, max_themes: int = 5) -> list[str]:
    """Returns the conversation's most prominent themes, most prominent first, as lowercase noun phrases: at
    most `max_themes`, and fewer when the rest were only mentioned in passing.

    Only the person's own (user-role or unmarked) lines count, and a theme is only ever made of words from
    the reviewed vocabulary (`nameable_words`): a phrase is never copied from the text just because it
    recurs, so insults, brand names, URLs and numbers are never themes."""
    if max_themes <= 0 or not text.strip():
        return []
    tally = _Tally()
    for weight, user_message, clause in _iter_clauses(text):
        tally.add_clause(weight, user_message, clause)
    return tally.top_themes(max_themes)


@dataclass(frozen=True)
class _Token:
    surface: str  # as written, lowercased, possessive kept ("sister's")
    lemma: str  # what occurrences are compared by ("sister")
    display: str  # how a theme names it ("sister", "stress" for "stressed")
    is_content: bool  # may stand alone as a theme
    can_lead_bigram: bool
    can_end_bigram: bool


@dataclass
class _Candidate:
    """Everything counted about one phrase (a lemma, or a pair of lemmas)."""

    first_position: int
    weighted_count: float = 0.0
    occurrences: int = 0
    possessive_occurrences: int = 0
    user_occurrences: int = 0
    # Which of the person's messages mention it, by index among all messages.
    user_messages: set[int] = field(default_factory=set)
    displays: Counter[str] = field(default_factory=Counter)


def _read_token(raw: str) -> _Token | None:
    surface = raw.lower()
    if surface in _MODIFIERS:
        return _Token(surface, surface, surface, is_content=False, can_lead_bigram=True, can_end_bigram=False)
    if surface in _STOPWORDS or surface in _FILLER_WORDS:
        return None
    base = surface[:-2] if surface.endswith("'s") else surface
    # Any other apostrophe is a contraction ("could've") or a name the narrator would stumble on.
    if "'" in base or not _MIN_WORD_CHARS <= len(base) <= _MAX_WORD_CHARS:
        return None
    if base in _STOPWORDS or base in _FILLER_WORDS:
        return None
    lemma = lemmatize(base)
    if lemma in _FILLER_WORDS:
        return None
    is_feeling = base in _NOUN_FORMS
    if not is_feeling and _looks_like_adverb_or_verb(base):
        return None
    display = _NOUN_FORMS.get(base, base)
    # A feeling word reads oddly inside a phrase ("stressed job"), so it only ever stands alone.
    return _Token(
        surface,
        lemma,
        display,
        is_content=True,
        can_lead_bigram=not is_feeling,
        can_end_bigram=not is_feeling,
    )


def _looks_like_adverb_or_verb(word: str) -> bool:
    if word.endswith("ly") and word not in _LY_NOUNS:
        return True
    if word.endswith("ing") and len(word) >= 6 and word not in _ING_NOUNS:
        return True
    # "-ed" nearly always ends a verb or adjective; "-eed" words ("need") and short ones ("bed") are nouns.
    return word.endswith("ed") and not word.endswith("eed") and len(word) >= 5


def _iter_clauses(text: str) -> Iterator[tuple[float, int | None, str]]:
    """Yields (weight, user_message, clause) per clause, where user_message is the index of the person's
    message the clause is in (None for the assistant); an unmarked line belongs to the message above."""
    weight = _UNMARKED_WEIGHT
    message = 0
    is_user_voice = True
    for line in text.lower().replace("’", "'").splitlines():
        marker = ROLE_PREFIX.match(line)
        if marker is not None:
            role = marker.group(1)
            weight = _ROLE_WEIGHTS[role]
            is_user_voice = role == "user"
            message += 1
            line = line[marker.end() :]
        if weight <= 0:
            continue
        for clause in _CLAUSE_BREAK.split(line):
            if clause.strip():
                yield weight, message if is_user_voice else None, clause


_Key = TypeVar("_Key", str, tuple[str, str])


@dataclass(frozen=True)
class _Ranked:
    score: float
    is_bigram: bool
    key: str
    lemmas: frozenset[str]  # a theme sharing any of these with a higher-ranked one is left out
    name: str
    first_position: int
    # Words it speaks for without being named by them (a pool's echoes): used up, but never a conflict.
    echoes: frozenset[str] = frozenset()


class _Tally:
    """Weighted counts of unigram and bigram candidates across a whole text."""

    def __init__(self) -> None:
        self._unigrams: dict[str, _Candidate] = {}
        self._bigrams: dict[tuple[str, str], _Candidate] = {}
        self._position = 0

    def add_clause(self, weight: float, user_message: int | None, clause: str) -> None:
        possessives = _USER_POSSESSIVES if user_message is not None else _ASSISTANT_POSSESSIVES
        previous_raw = ""
        previous: _Token | None = None
        previous_follows_possessive = False
        for raw in _WORD.findall(clause):
            token = _read_token(raw)
            follows_possessive = previous_raw in possessives
            if token is not None and token.is_content:
                # "my younger sister": the possessive reaches past the modifier to the noun.
                owned = (
                    follows_possessive
                    or (previous is not None and not previous.is_content and previous_follows_possessive)
                    or _is_family_name_as_own(token.lemma, previous_raw)
                )
                self._count(self._unigrams, token.lemma, token.display, weight, owned, user_message)
            if (
                token is not None
                and previous is not None
                and previous.can_lead_bigram
                and token.can_end_bigram
                and previous.lemma != token.lemma
            ):
                self._count(
                    self._bigrams,
                    (previous.lemma, token.lemma),
                    f"{previous.surface} {token.display}",
                    weight,
                    previous_follows_possessive,
                    user_message,
                )
            previous_follows_possessive = follows_possessive
            previous = token
            previous_raw = raw
            self._position += 1

    def _count(
        self,
        table: dict[_Key, _Candidate],
        key: _Key,
        display: str,
        weight: float,
        owned: bool,
        user_message: int | None,
    ) -> None:
        candidate = table.get(key)
        if candidate is None:
            candidate = table[key] = _Candidate(first_position=self._position)
        candidate.weighted_count += weight
        candidate.occurrences += 1
        candidate.possessive_occurrences += owned
        candidate.displays[display] += 1
        if user_message is not None:
            candidate.user_occurrences += 1
            candidate.user_messages.add(user_message)

    def top_themes(self, max_themes: int) -> list[str]:
        ranked = self._pooled()
        pooled = frozenset().union(*(entry.lemmas | entry.echoes for entry in ranked))
        for lemma, candidate in self._unigrams.items():
            if lemma not in pooled:
                ranked.append(
                    _Ranked(
                        _score(candidate, (lemma,)),
                        False,
                        lemma,
                        frozenset({lemma}),
                        _name(candidate),
                        candidate.first_position,
                    )
                )
        for (first, second), candidate in self._bigrams.items():
            if candidate.occurrences < _MIN_BIGRAM_OCCURRENCES:
                continue
            score = _score(candidate, (first, second)) * _BIGRAM_BONUS
            # When most mentions of a word come in this pair ("new job" for "job"), the pair names the theme
            # better than the word does, so it takes at least the word's rank.
            for lemma in (first, second):
                word = self._unigrams.get(lemma)  # absent for a modifier, which is never a theme alone
                if word is not None and _absorbs(candidate, word):
                    score = max(score, _score(word, (lemma,)))
            ranked.append(
                _Ranked(
                    score,
                    True,
                    f"{first} {second}",
                    frozenset({first, second}),
                    _name(candidate),
                    candidate.first_position,
                )
            )
        # Filtered before ranking, so a recurring phrase that may not be spoken cannot crowd out one that may.
        ranked = [entry for entry in ranked if is_nameable(entry.lemmas)]
        if not ranked:
            return []
        # Highest score first, a pair before a word it ties with, then first said, then alphabetical.
        ranked.sort(key=lambda entry: (-entry.score, not entry.is_bigram, entry.first_position, entry.key))
        themes: list[str] = []
        used_lemmas: set[str] = set()
        for entry in ranked:
            if entry.score < ranked[0].score * _MIN_SHARE_OF_TOP_SCORE:
                break
            if entry.lemmas & used_lemmas or entry.name in themes:
                continue
            used_lemmas |= entry.lemmas | entry.echoes
            themes.append(entry.name)
            if len(themes) == max_themes:
                break
        return themes

    def _pooled(self) -> list[_Ranked]:
        """Returns one entry per pool the text names, scored as all its words together."""
        entries: list[_Ranked] = []
        for pool in _POOLS:
            names = {lemma: self._unigrams[lemma] for lemma in pool.names if lemma in self._unigrams}
            if not names:
                continue
            echoes = {lemma: self._unigrams[lemma] for lemma in pool.echoes if lemma in self._unigrams}
            members = [*names.values(), *echoes.values()]
            weighted_count = sum(
                candidate.weighted_count for candidate in names.values()
            ) + _ECHO_WEIGHT * sum(candidate.weighted_count for candidate in echoes.values())
            user_messages = set[int]().union(*(candidate.user_messages for candidate in members))
            # The word the person uses most for it names it; "the sea" before "the beach" if said as often.
            lemma, candidate = min(
                names.items(),
                key=lambda item: (
                    -len(item[1].user_messages),
                    -item[1].user_occurrences,
                    item[1].first_position,
                ),
            )
            name = pool.names[lemma]
            if _is_mostly_owned(candidate):
                name = "your " + name.removeprefix("the ")
            entries.append(
                _Ranked(
                    weighted_count * _spread(user_messages),
                    False,
                    lemma,
                    frozenset(names),
                    name,
                    min(member.first_position for member in members),
                    frozenset(echoes),
                )
            )
        return entries


def _is_family_name_as_own(lemma: str, previous_raw: str) -> bool:
    """Whether a family word said like a name ("about Mum") means the person's own, not someone else's."""
    return (
        lemma in _FAMILY_NAMES
        and previous_raw not in _NOT_OWNING
        and previous_raw not in _USER_POSSESSIVES | _ASSISTANT_POSSESSIVES
    )


def _absorbs(pair: _Candidate, word: _Candidate) -> bool:
    """Whether a recurring pair names the theme of one of its words better than the word does alone."""
    if pair.occurrences * _MIN_SHARE_TO_ABSORB_WORD >= word.occurrences:
        return True
    is_repeated = len(pair.user_messages) >= _MIN_BIGRAM_OCCURRENCES
    return is_repeated and pair.occurrences * _MIN_SHARE_TO_ABSORB_WORD_WHEN_REPEATED >= word.occurrences


def _spread(user_messages: set[int]) -> float:
    return 1.0 + _USER_SPREAD_BONUS * (len(user_messages) - 1)


def _score(candidate: _Candidate, lemmas: tuple[str, ...]) -> float:
    salience = 1.0
    if any(lemma in FAMILY_WORDS for lemma in lemmas):
        salience = _FAMILY_SALIENCE
    elif lemmas[-1] in _GENERIC_NOUNS:
        salience = _GENERIC_SALIENCE
    return candidate.weighted_count * salience * _spread(candidate.user_messages)


def _is_mostly_owned(candidate: _Candidate) -> bool:
    return candidate.possessive_occurrences * 2 >= candidate.occurrences


def _name(candidate: _Candidate) -> str:
    display = _display(candidate)
    return f"your {display}" if _is_mostly_owned(candidate) else display


def _display(candidate: _Candidate) -> str:
    """Returns how the phrase was most often written, plural when it was written both ways: "night shift"
    and "night shifts" are the same theme, and a theme that recurs is more naturally named in the plural."""
    display = candidate.displays.most_common(1)[0][0]
    stem, _, last = display.rpartition(" ")
    if lemmatize(last) != last:
        return display
    for variant, _ in candidate.displays.most_common():
        variant_stem, _, variant_last = variant.rpartition(" ")
        if variant_stem == stem and variant_last != last and lemmatize(variant_last) == last:
            return variant
    return display
