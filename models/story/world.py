"""The story world's vocabulary and records: what the grammar may say, and how a story is kept.

* the parts of speech (``TAGS``) and the word classes: names (``FEMALE``, ``MALE``), ``PLACES``,
  ``COLOURS``, ``SIZES``, ``FEELINGS``, ``OPENERS``, ``NOUNS`` (with plurals and kinds), the
  determiners of new objects (``COUNTS``), the verbs (``VERBS``, each with the ``Slot`` its
  object fills and its ``effect``), ``MOTION`` and ``PUNCT``;
* the story generator's probabilities and limits (``P_STOP``, ``MAX_CHARACTERS``, ...);
* ``Story``: one story and its gold annotations, parallel lists with one item per word:

  * ``pos``: a part-of-speech tag per word (``TAGS``);
  * ``antecedent``: for a pronoun, a possessive, or the noun of a definite reference ("the ball",
    "her ball"), the index of the word that introduced the referent (the name, or the noun of
    the object's first mention);
  * ``entity``: which character or object a name, pronoun, possessive or object noun denotes;
  * ``logprob``: ``log P(word | the words before it)`` under the true process, and
    ``end_logprob``: ``log P(the story stops here | all its words)``;

* ``Word``: a word as the grammar emits it, with its annotations; ``detokenize``: words -> text.

The grammar that draws stories from this vocabulary is in ``grammar.py``; the invented target
language in ``translation.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

# --------------------------------------------------------------------------- the vocabulary

TAGS = ("NAME", "PRON", "POSS", "DET", "NUM", "ADJ", "NOUN", "VERB", "PREP", "CONJ", "ADV", "INTJ", "PUNCT")
"""Parts of speech. NAME: a character's name. PRON: subject pronoun (she, he). POSS: possessive
(his, her). DET: a, the. NUM: one, two, three, four. ADJ: colours, sizes, feelings. NOUN:
objects, places, "day", "home". VERB: verbs and the copula. PREP: to, with, for. CONJ: and.
ADV: sentence openers (Then, Later, Soon, Next). INTJ: hello. PUNCT: "." and ","."""

FEMALE = ("Mia", "Lily", "Emma", "Anna", "Sara", "Lucy", "Zoe", "Ella", "Ruby", "Nora", "Rosa", "Kate")
MALE = ("Tom", "Ben", "Sam", "Leo", "Max", "Jack", "Noah", "Finn", "Owen", "Dan", "Paul", "Ravi")
PLACES = ("park", "kitchen", "garden", "beach", "school", "forest", "shop", "farm", "lake", "zoo",
          "library", "river", "market", "pond", "station", "bakery", "playground", "garage")  # fmt: skip
COLOURS = ("red", "blue", "green", "yellow", "pink", "white", "black", "brown", "purple", "grey")
SIZES = ("big", "small", "little", "tiny", "huge")
FEELINGS = ("happy", "sad", "tired", "hungry", "sleepy", "excited", "scared", "angry", "cold", "busy")
OPENERS = ("Then", "Later", "Soon", "Next")

# noun -> (plural, kinds). Kinds say which verbs take it: toy (plays with), throw, food (eats),
# bake (makes), wear, open, read. Every verb not listed here takes any noun.
NOUNS: dict[str, tuple[str, frozenset[str]]] = {
    noun: (plural, frozenset(kinds.split()))
    for noun, plural, kinds in [
        ("ball", "balls", "toy throw"), ("kite", "kites", "toy"), ("doll", "dolls", "toy throw"),
        ("car", "cars", "toy throw"), ("boat", "boats", "toy"), ("drum", "drums", "toy"),
        ("bell", "bells", "toy"), ("train", "trains", "toy"), ("robot", "robots", "toy"),
        ("block", "blocks", "toy throw"), ("balloon", "balloons", "toy"), ("puzzle", "puzzles", "toy"),
        ("whistle", "whistles", "toy"), ("teddy", "teddies", "toy throw"),
        ("cake", "cakes", "food bake"), ("cookie", "cookies", "food bake"), ("pie", "pies", "food bake"),
        ("banana", "bananas", "food"), ("pear", "pears", "food throw"), ("muffin", "muffins", "food bake"),
        ("carrot", "carrots", "food"), ("lemon", "lemons", "food throw"), ("peach", "peaches", "food"),
        ("plum", "plums", "food"),
        ("hat", "hats", "wear throw"), ("coat", "coats", "wear"), ("sock", "socks", "wear throw"),
        ("shoe", "shoes", "wear throw"), ("dress", "dresses", "wear"), ("boot", "boots", "wear"),
        ("box", "boxes", "open"), ("bag", "bags", "open"), ("basket", "baskets", "open"),
        ("jar", "jars", "open"),
        ("book", "books", "read open throw"), ("letter", "letters", "read open"), ("map", "maps", "read"),
        ("card", "cards", "read throw"),
        ("flower", "flowers", ""), ("shell", "shells", "throw"), ("stone", "stones", "throw"),
        ("feather", "feathers", ""), ("key", "keys", ""), ("pen", "pens", ""), ("cup", "cups", ""),
        ("spoon", "spoons", ""), ("coin", "coins", "throw"), ("ring", "rings", "wear"), ("rope", "ropes", ""),
        ("clock", "clocks", ""), ("lamp", "lamps", ""), ("bottle", "bottles", "open"),
        ("pillow", "pillows", "throw"), ("blanket", "blankets", ""), ("candle", "candles", ""),
    ]
}  # fmt: skip

# New objects: the determiner says singular or how many (probabilities within "new").
COUNTS = (("a", "DET", 1, 0.8), ("two", "NUM", 2, 0.1), ("three", "NUM", 3, 0.06), ("four", "NUM", 4, 0.04))

MAX_CHARACTERS = 3  # per story
MAX_THINGS = 5  # objects per story
MIN_SENTENCES, MAX_SENTENCES = 3, 8
P_STOP = 0.2  # after each sentence from the 3rd to the 7th
P_NEW_CHARACTER = 0.2  # a later sentence's subject is someone new
P_PRONOUN = 0.6  # a subject that may be a pronoun is one
P_NO_SIZE, P_NO_COLOUR = 0.6, 0.4
P_SAME_NOUN = 10.0  # relative weight of a new object's noun that an earlier object has

PUNCT = (".", ",")


# --------------------------------------------------------------------------- the verbs


@dataclass(frozen=True)
class Slot:
    """What the object of a verb may be, with the weight of each way of filling it."""

    kind: str | None = None  # new and earlier objects must have this kind (None: any)
    new: float = 0.0  # a new object: "a big red ball", "two cakes"
    old: float = 0.0  # an earlier object: "the ball", "her ball"
    person: float = 0.0  # a character other than the subject: "Tom"
    old_if: str = "any"  # which earlier objects: any | free (nobody holds it) | mine (the subject holds it)
    # | free-or-mine | not-mine


@dataclass(frozen=True)
class Verb:
    words: tuple[str, ...]  # "plays", "with": the verb and its fixed preposition
    weight: float
    slot: Slot
    effect: str = "none"  # on the object: none | own | take | drop | eat | throw | give | show


VERBS = (
    Verb(("has",), 1.2, Slot(new=1.0), "own"),
    Verb(("finds",), 1.0, Slot(new=0.5, old=0.5, old_if="free"), "take"),
    Verb(("sees",), 0.7, Slot(new=0.3, old=0.4, person=0.3)),
    Verb(("likes",), 0.6, Slot(old=0.6, person=0.4)),
    Verb(("throws",), 1.2, Slot(kind="throw", old=1.0, old_if="mine"), "throw"),
    Verb(("gives",), 1.2, Slot(old=1.0, old_if="mine"), "give"),
    Verb(("eats",), 0.6, Slot(kind="food", new=0.5, old=0.5, old_if="free-or-mine"), "eat"),
    Verb(("opens",), 0.4, Slot(kind="open", new=0.4, old=0.6, old_if="free-or-mine"), "take"),
    Verb(("reads",), 0.4, Slot(kind="read", new=0.4, old=0.6, old_if="free-or-mine"), "take"),
    Verb(("wears",), 0.4, Slot(kind="wear", new=0.5, old=0.5, old_if="free-or-mine"), "own"),
    Verb(("loses",), 0.4, Slot(old=1.0, old_if="mine"), "drop"),
    Verb(("plays", "with"), 0.8, Slot(kind="toy", new=0.3, old=0.5, person=0.2, old_if="free-or-mine"), "take"),
    Verb(("looks", "for"), 0.6, Slot(old=1.0, old_if="not-mine")),
    Verb(("says", "hello", "to"), 0.4, Slot(person=1.0)),
    Verb(("wants",), 0.5, Slot(new=0.4, old=0.6, old_if="not-mine")),
    Verb(("holds",), 0.6, Slot(old=1.0, old_if="free-or-mine"), "take"),
    Verb(("drops",), 0.5, Slot(old=1.0, old_if="mine"), "drop"),
    Verb(("hides",), 0.4, Slot(old=1.0, old_if="free-or-mine"), "drop"),
    Verb(("shows",), 0.6, Slot(old=1.0, old_if="mine"), "show"),
    Verb(("buys",), 0.4, Slot(new=1.0), "own"),
    Verb(("makes",), 0.4, Slot(kind="bake", new=1.0), "own"),
    Verb(("helps",), 0.4, Slot(person=1.0)),
    Verb(("hugs",), 0.4, Slot(person=1.0)),
    Verb(("calls",), 0.3, Slot(person=1.0)),
)
MOTION = (("goes", 1.0), ("runs", 0.3), ("walks", 0.3))  # "<verb> to the park" / "<verb> home"

VERB_POS = {"with": "PREP", "for": "PREP", "to": "PREP", "hello": "INTJ"}


# --------------------------------------------------------------------------- the story record


@dataclass
class Story:
    """One story and its gold annotations; the lists are parallel, one item per word."""

    words: list[str]  # "Mia", "has", "a", "red", "ball", "." (punctuation is a word)
    pos: list[str]  # a tag from TAGS per word
    antecedent: list[int | None]  # pronoun / possessive / definite noun -> index of the introducing word
    entity: list[int | None]  # id of the character or object a name/pronoun/possessive/object noun denotes
    logprob: list[float]  # log P(word | earlier words), natural log; 0.0 for a word the grammar fixes
    # (unless it also settles an earlier choice that printed nothing: "." after "throws the ball")
    end_logprob: float  # log P(stop here | the whole text): the story-length choice
    sentences: list[tuple[int, int]]  # word ranges [start, end) of the sentences
    text: str = ""  # the words detokenised: a space between words, none before "." and ","
    spans: list[tuple[int, int]] = field(default_factory=list)  # char span of each word in text

    def __post_init__(self) -> None:
        if not self.text:
            self.text, self.spans = detokenize(self.words)

    @property
    def total_logprob(self) -> float:
        """log P(text) under the generator: the story's log-probability, stop included."""
        return math.fsum(self.logprob) + self.end_logprob


def detokenize(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join words with spaces, none before punctuation; return (text, char span of each word)."""
    parts, spans, at = [], [], 0
    for i, w in enumerate(words):
        if i and w not in PUNCT:
            parts.append(" ")
            at += 1
        parts.append(w)
        spans.append((at, at + len(w)))
        at += len(w)
    return "".join(parts), spans


# --------------------------------------------------------------------------- the grammar's words


class Word(NamedTuple):
    """A word as the grammar emits it, with its annotations."""

    text: str
    pos: str
    entity: int | None = None
    antecedent: int | None = None
