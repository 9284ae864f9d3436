"""The invented target language: each story sentence translated, with a gold word alignment.

``translate`` (``translation_pairs`` for whole stories) maps a sentence of the grammar into an
invented subject-object-verb language with postpositions, adjectives after the noun, a plural
suffix (``PLURAL_SUFFIX``) and case particles (``SUBJECT``, ``OBJECT``, ``TOWARDS``); content
words come from ``LEXICON`` (``target_word`` for one word), invented deterministically from
each English lemma. A ``Pair`` holds the sentence, its translation and the alignment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from archplay.models.story.world import (
    COLOURS,
    FEELINGS,
    FEMALE,
    MALE,
    MOTION,
    NOUNS,
    OPENERS,
    PLACES,
    SIZES,
    VERBS,
    Story,
    detokenize,
)

# --------------------------------------------------------------------------- the invented language

# Target-language grammar words: subject and object case particles and "towards" for "home"
# (which has no English word). Content words are invented from the English lemma below.
SUBJECT, OBJECT, TOWARDS = "ga", "wo", "na"
PLURAL_SUFFIX = "ri"
_FIXED = {"and": "en", "to": "na", "with": "sa", "for": "pe", "the": "ko", ".": ".", ",": ","}
_DROPPED = {"a"}  # the indefinite article has no translation


def _english_lemmas() -> list[str]:
    """Every English word (lowercase, singular) that gets an invented translation."""
    words = [*PLACES, *COLOURS, *SIZES, *FEELINGS, *(o.lower() for o in OPENERS), *NOUNS]
    words += ["one", "two", "three", "four", "day", "home", "hello", "she", "he", "her", "his", "is", "go", "play"]
    words += [v for v, _ in MOTION] + [w for v in VERBS for w in v.words]
    return sorted(set(words) - set(_FIXED) - _DROPPED)


def _invent(lemma: str, taken: set[str]) -> str:
    """A pronounceable word from the lemma's hash; longer lemmas get one more syllable."""
    onsets, vowels = "bdfgklmnprstvz", "aeiou"
    for attempt in range(100):
        h = hashlib.sha256(f"{lemma}/{attempt}".encode()).digest()
        n = 2 if len(lemma) <= 5 else 3
        word = "".join(onsets[h[2 * i] % len(onsets)] + vowels[h[2 * i + 1] % len(vowels)] for i in range(n))
        if word not in taken and word + PLURAL_SUFFIX not in taken:
            return word
    raise AssertionError(f"no free word for {lemma}")


def _make_lexicon() -> dict[str, str]:
    # Verb forms share a stem: "goes"/"go" and "plays"/"play" translate alike (no agreement).
    same_as = {"go": "goes", "play": "plays"}
    taken = {*_FIXED.values(), SUBJECT, OBJECT, TOWARDS, *(w.lower() for w in FEMALE + MALE)}
    taken |= {x for x in _english_lemmas()} | {p for p, _ in NOUNS.values()}
    lexicon = dict(_FIXED)
    for lemma in _english_lemmas():
        if lemma in same_as:
            continue
        word = _invent(lemma, taken)
        taken |= {word, word + PLURAL_SUFFIX}
        lexicon[lemma] = word
    for form, lemma in same_as.items():
        lexicon[form] = lexicon[lemma]
    return lexicon


LEXICON: dict[str, str] = _make_lexicon()
"""English word (lowercase; nouns singular) -> target word. Names are kept as they are."""
_PLURALS = {plural: noun for noun, (plural, _) in NOUNS.items()}


def target_word(english: str) -> str | None:
    """The target word for one English word (None if it is dropped): names unchanged,
    plural nouns as the singular's word plus ``PLURAL_SUFFIX``."""
    if english in FEMALE or english in MALE:
        return english
    low = english.lower()
    if low in _DROPPED:
        return None
    if low in _PLURALS:
        return LEXICON[_PLURALS[low]] + PLURAL_SUFFIX
    return LEXICON[low]


@dataclass
class Pair:
    """A sentence and its translation. ``alignment[j]``: the index in ``source_words`` that
    target word j translates, or None for a grammatical word with no English source."""

    source: str
    target: str
    source_words: list[str]
    target_words: list[str]
    alignment: list[int | None]


Translation = Pair  # what ``translate`` returns


def _noun_phrase(words: Sequence[str], pos: Sequence[str], idx: list[int]) -> list[int]:
    """English NP indices -> target order: [number] noun [adjectives, reversed] [possessive] [the]."""
    det = [i for i in idx if pos[i] == "DET"]
    num = [i for i in idx if pos[i] == "NUM"]
    poss = [i for i in idx if pos[i] == "POSS"]
    adjs = [i for i in idx if pos[i] == "ADJ"]
    head = [i for i in idx if pos[i] in ("NOUN", "NAME", "PRON", "INTJ")]
    return num + head + adjs[::-1] + poss + det


def _read_np(pos: Sequence[str], j: int, end: int) -> int:
    """End of the noun phrase starting at j: optional determiner, adjectives, then a head."""
    if j < end and pos[j] in ("DET", "NUM", "POSS"):
        j += 1
    while j < end and pos[j] == "ADJ":
        j += 1
    if j < end and pos[j] in ("NOUN", "NAME", "PRON", "INTJ"):
        j += 1
    return j


def translate(words: Sequence[str], pos: Sequence[str]) -> Pair:
    """Translate one English sentence of the grammar, with the gold alignment.

    Target order: [opener] subject ga [postpositional phrases] [object wo] verb "."
    (complements such as "happy" take no particle). Phrases: "to the park" -> "park ko na",
    "a big red ball" -> "ball red big", "two balls" -> "two ball+ri", "her ball" -> "ball her".
    """
    assert words and words[-1] == "." and len(words) == len(pos)
    end = len(words) - 1
    v = next(i for i, p in enumerate(pos) if p == "VERB")
    order: list[int | str] = []  # source indices in target order, and particles
    j = 0
    if "," in words[:v]:  # "One day ,"
        comma = words.index(",")
        order += _noun_phrase(words, pos, list(range(comma))) + [comma]
        j = comma + 1
    elif pos[0] == "ADV":
        order.append(0)
        j = 1
    order += [i for i in range(j, v)] + [SUBJECT]  # "Mia", "she", "Mia and Tom"
    phrases, obj = [], []
    j = v + 1
    while j < end:
        if pos[j] == "PREP":  # postposition after its noun phrase
            k = _read_np(pos, j + 1, end)
            phrases += _noun_phrase(words, pos, list(range(j + 1, k))) + [j]
        elif words[j] == "home":  # "goes home": home + a postposition English leaves out
            k = j + 1
            phrases += [j, TOWARDS]
        else:
            k = _read_np(pos, j, end)
            np = list(range(j, k))
            obj += _noun_phrase(words, pos, np) + ([OBJECT] if any(pos[i] != "ADJ" for i in np) else [])
        assert k > j, f"cannot parse {words[j]!r} in {' '.join(words)}"
        j = k
    order += phrases + obj + [v, end]
    target, alignment = [], []
    for i in order:
        if isinstance(i, str):  # a particle
            target.append(i)
            alignment.append(None)
        elif (t := target_word(words[i])) is not None:
            target.append(t)
            alignment.append(i)
    return Pair(detokenize(words)[0], detokenize(target)[0], list(words), target, alignment)


def translation_pairs(stories: Sequence[Story]) -> list[Pair]:
    """Every sentence of every story with its translation, in order."""
    return [translate(s.words[a:b], s.pos[a:b]) for s in stories for a, b in s.sentences]
