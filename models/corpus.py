"""A synthetic story world whose truth is known: stories, their grammar, and a translation.

The built-in models train on short English stories drawn from a small probabilistic grammar.
Because every random choice is recorded, each story comes with its gold annotations:

* ``pos``: a part-of-speech tag per word (``TAGS``);
* ``antecedent``: for a pronoun, a possessive, or the noun of a definite reference ("the ball",
  "her ball"), the index of the word that introduced the referent (the name, or the noun of
  the object's first mention);
* ``entity``: which character or object a name, pronoun, possessive or object noun denotes;
* ``logprob``: ``log P(word | the words before it)`` under the true process, and
  ``end_logprob``: ``log P(the story stops here | all its words)``.

    >>> import random
    >>> s = generate_story(random.Random(0))
    >>> s.text                      # e.g. "One day, Mia finds a big red ball. She throws the ball to Tom. ..."
    >>> splits = make_splits(seed=0)   # {"train": [...], "validation": [...], "test": [...]}

Rules that make the annotations exact
-------------------------------------
* Unique reading. At every choice point the alternatives start with different words, or (one
  choice spanning several words) the log-probability is split word by word over the
  alternatives that share a prefix. Choices that print nothing ("no adjective") are resolved
  by the next word, because the word classes are disjoint. So the text determines the choices,
  ``sum(logprob) + end_logprob`` is the exact log-probability of the *text*, and each
  ``logprob[i]`` is the exact conditional ``log P(w_i | w_<i)``. ``derivations`` re-derives
  both by searching all choice sequences; the tests run it.
* Pronouns. "she"/"he" only as the subject, only for the one character of that gender in the
  story so far, and only if that character was mentioned in the previous sentence.
  "his"/"her" are possessives only (no object pronouns) and denote the sentence's subject,
  who owns the object.
* Definite objects. Two objects may share a noun (and number) only if all of them have
  different colours; "the X" then includes the colour ("the red ball"), otherwise it is the
  bare noun. So every "the ..." picks out exactly one earlier object.
* No article "an": no adjective or noun starts with a vowel, so "a" is always right.
* The story stops after 3 to 8 sentences: after sentence n >= 3 it stops with probability
  ``P_STOP`` (always after 8). "Go on" is paid by the next sentence's first word, "stop" by
  ``end_logprob``.

The translation (``translate``, ``translation_pairs``) maps each sentence into an invented
subject-object-verb language with postpositions, adjectives after the noun, a plural suffix
and case particles, with a gold word alignment.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
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


# --------------------------------------------------------------------------- choices and their log-probs


class Word(NamedTuple):
    """A word as the grammar emits it, with its annotations."""

    text: str
    pos: str
    entity: int | None = None
    antecedent: int | None = None


class Option(NamedTuple):
    """One alternative at a choice point: its value, unnormalised weight and the words it prints now."""

    value: object
    weight: float
    words: tuple[Word, ...] = ()


# decide(writer, options, probs) -> index of the option taken (options with weight > 0 only).
Decide = Callable[["_Writer", list[Option], list[float]], int]


class _Writer:
    """Builds a story word by word; every random choice goes through ``choose``.

    The log-probability of a choice is paid by the words it prints: the first word pays
    ``log P(its prefix among the alternatives)``, each later word the conditional of its
    longer prefix. What is left (an option that prints nothing, or shares all its words with
    others) waits in ``pending`` and is paid by the next word printed, or by the end.
    """

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.words: list[Word] = []
        self.logprob: list[float] = []
        self.pending = 0.0  # log-prob of choices made but not yet paid by a word
        self.sentences: list[tuple[int, int]] = []

    def say(self, text: str, pos: str, entity: int | None = None, antecedent: int | None = None) -> None:
        """Print a word the grammar fixes (it pays only what is pending)."""
        self._emit(Word(text, pos, entity, antecedent), 0.0)

    def choose(self, options: Sequence[Option]):
        options = [o for o in options if o.weight > 0]
        assert options, "the grammar reached a dead end"
        if len(options) == 1:
            self._emit_all(options[0].words, [1.0], options)
            return options[0].value
        total = sum(o.weight for o in options)
        probs = [o.weight / total for o in options]
        k = self.decide(self, options, probs)
        mass = self._emit_all(options[k].words, probs, options)
        self.pending += math.log(probs[k] / mass)  # 0.0 when the words alone identify the option
        return options[k].value

    def _emit_all(self, words: tuple[Word, ...], probs: list[float], options: list[Option]) -> float:
        """Print ``words``, each paying log P(its prefix) - log P(the shorter prefix); return the last P."""
        if len(words) == 1:  # the common case, made fast
            text = words[0].text
            mass = sum(p for p, o in zip(probs, options) if o.words and o.words[0].text == text)
            self._emit(words[0], math.log(mass))
            return mass
        alive = list(range(len(options)))  # options that agree with the words printed so far
        mass = 1.0
        for n, word in enumerate(words):
            alive = [j for j in alive if len(options[j].words) > n and options[j].words[n].text == word.text]
            new_mass = sum(probs[j] for j in alive)
            self._emit(word, math.log(new_mass / mass))
            mass = new_mass
        return mass

    def mark_last(self, entity: int) -> None:
        """Give the word just printed its entity (known only once it is chosen)."""
        self.words[-1] = self.words[-1]._replace(entity=entity)

    def _emit(self, word: Word, logprob: float) -> None:
        self.words.append(word)
        self.logprob.append(logprob + self.pending)
        self.pending = 0.0


def _sampler(rng: random.Random) -> Decide:
    def decide(_writer, _options, probs) -> int:
        u, acc = rng.random(), 0.0
        for i, p in enumerate(probs):
            acc += p
            if u < acc:
                return i
        return len(probs) - 1  # u within rounding of 1.0

    return decide


# --------------------------------------------------------------------------- the world a story tells


@dataclass(eq=False)
class _Character:
    id: int  # entity id
    name: str
    gender: str  # "f" | "m"
    first: int  # index of the name's first mention
    last_seen: int  # the latest sentence that mentions them


@dataclass(eq=False)
class _Thing:
    id: int
    noun: str  # singular lemma
    plural: bool
    colour: str | None
    first: int  # index of the noun at its first mention
    owner: _Character | None
    holder: _Character | None
    gone: bool = False  # eaten

    @property
    def form(self) -> str:
        return NOUNS[self.noun][0] if self.plural else self.noun


@dataclass
class _World:
    characters: list[_Character] = field(default_factory=list)
    things: list[_Thing] = field(default_factory=list)
    place: str | None = None
    sentence: int = 0  # number of the sentence being told
    next_id: int = 0


def _name(c: _Character) -> Word:
    return Word(c.name, "NAME", c.id)


def _pronoun(c: _Character, capital: bool) -> Word:
    text = "she" if c.gender == "f" else "he"
    return Word(text.capitalize() if capital else text, "PRON", c.id, c.first)


def _possessive(c: _Character) -> Word:
    return Word("her" if c.gender == "f" else "his", "POSS", c.id, c.first)


def _may_pronoun(world: _World, c: _Character) -> bool:
    """The only character of their gender so far, and mentioned in the previous sentence."""
    same = [d for d in world.characters if d.gender == c.gender]
    return len(same) == 1 and c.last_seen == world.sentence - 1


def _definite(world: _World, t: _Thing) -> tuple[Word, ...]:
    """How "the ..." / "her ..." names an earlier object: with its colour iff its noun is shared."""
    shared = sum(1 for u in world.things if u.noun == t.noun and u.plural == t.plural) > 1
    noun = Word(t.form, "NOUN", t.id, t.first)
    return (Word(t.colour, "ADJ"), noun) if shared else (noun,)


def _colours_taken(world: _World, plural: bool) -> dict[str, set[str | None]]:
    """noun -> the colours (None: no colour) of the earlier objects with that noun and number."""
    taken: dict[str, set[str | None]] = {}
    for t in world.things:
        if t.plural == plural:
            taken.setdefault(t.noun, set()).add(t.colour)
    return taken


def _fits(taken: dict[str, set[str | None]], noun: str, colour: str | None) -> bool:
    """May a new object be this noun and colour? Same-noun objects must all differ in colour."""
    same = taken.get(noun)
    return not same or (colour is not None and None not in same and colour not in same)


def _new_character(w: _Writer, world: _World) -> _Character:
    used = {c.name for c in world.characters}
    name, gender = w.choose([o for o in _NAME_OPTIONS if o.value[0] not in used])
    w.mark_last(world.next_id)
    c = _Character(world.next_id, name, gender, first=len(w.words) - 1, last_seen=world.sentence)
    world.next_id += 1
    world.characters.append(c)
    return c


def _new_thing(w: _Writer, world: _World, kind: str | None, count: int) -> _Thing:
    """[size] [colour] noun after "a"/"two"/...: each an independent choice, in text order."""
    plural = count > 1
    nouns = _NOUNS_OF_KIND[kind]
    w.choose(_SIZE_OPTIONS)
    taken = _colours_taken(world, plural)
    colours = [o for o in _COLOUR_OPTIONS if any(_fits(taken, n, o.value) for n in nouns)]
    colour = w.choose(colours)
    # A noun already in the story (then in another colour) is likelier: "a red ball ... a blue ball".
    noun = w.choose([_NOUN_OPTIONS[n, plural]._replace(weight=P_SAME_NOUN if n in taken else 1.0)
                     for n in nouns if _fits(taken, n, colour)])  # fmt: skip
    w.mark_last(world.next_id)
    t = _Thing(world.next_id, noun, plural, colour, first=len(w.words) - 1, owner=None, holder=None)
    world.next_id += 1
    world.things.append(t)
    return t


# --------------------------------------------------------------------------- verbs and their objects


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

# Options that never change, built once (the generator is called a few hundred thousand times).
_THE = Word("the", "DET")
_COUNT_WORDS = [(n, p, (Word(det, pos),)) for det, pos, n, p in COUNTS]
_SIZE_OPTIONS = [Option(None, P_NO_SIZE)] + [Option(z, (1 - P_NO_SIZE) / len(SIZES), (Word(z, "ADJ"),)) for z in SIZES]
_COLOUR_OPTIONS = [Option(None, P_NO_COLOUR)] + [Option(c, (1 - P_NO_COLOUR) / len(COLOURS), (Word(c, "ADJ"),))
                                                 for c in COLOURS]  # fmt: skip
_FEELING_OPTIONS = [Option(f, 1.0, (Word(f, "ADJ"),)) for f in FEELINGS]
_MOTION_OPTIONS = [Option("go", p, (Word(v, "VERB"),)) for v, p in MOTION]
_VERB_OPTIONS = [Option(v, v.weight, tuple(Word(x, VERB_POS.get(x, "VERB")) for x in v.words)) for v in VERBS]
_NAME_OPTIONS = [Option((n, g), 1.0, (Word(n, "NAME"),)) for names, g in ((FEMALE, "f"), (MALE, "m")) for n in names]
_NOUNS_OF_KIND = {k: [n for n, (_, kinds) in NOUNS.items() if k is None or k in kinds]
                  for k in {None, *(k for _, kinds in NOUNS.values() for k in kinds)}}  # fmt: skip
_NOUN_OPTIONS = {(n, plural): Option(n, 1.0, (Word(NOUNS[n][0] if plural else n, "NOUN"),))
                 for n in NOUNS for plural in (False, True)}  # fmt: skip


def _may_refer(t: _Thing, s: _Character, old_if: str) -> bool:
    if t.gone:
        return False
    if old_if == "free":
        return t.holder is None
    if old_if == "mine":
        return t.holder is s
    if old_if == "free-or-mine":
        return t.holder is None or t.holder is s
    if old_if == "not-mine":
        return t.holder is not s
    return True  # any


def _olds(world: _World, s: _Character, slot: Slot) -> list[_Thing]:
    """The earlier objects the slot may refer back to."""
    return [t for t in world.things
            if _may_refer(t, s, slot.old_if) and (slot.kind is None or slot.kind in NOUNS[t.noun][1])]  # fmt: skip


def _slot_open(world: _World, s: _Character, slot: Slot) -> bool:
    """Can the slot be filled at all? (Exactly when ``_slot_options`` is not empty.)"""
    return bool((slot.new and len(world.things) < MAX_THINGS) or (slot.old and _olds(world, s, slot))
                or (slot.person and _anyone(world, s)))  # fmt: skip


def _slot_options(world: _World, s: _Character, slot: Slot) -> list[Option]:
    """The first word of the object: a determiner, a possessive or a name (values say which)."""
    opts = []
    if slot.new and len(world.things) < MAX_THINGS:
        opts += [Option(("new", n), slot.new * p, words) for n, p, words in _COUNT_WORDS]
    olds = _olds(world, s, slot)
    mine = [t for t in olds if t.owner is s]
    if slot.old and olds:
        share = 0.5 if mine else 1.0  # the rest: "her ball" for the subject's own things
        opts.append(Option(("old", olds), slot.old * share, (_THE,)))
        if mine:
            opts.append(Option(("old", mine), slot.old * (1 - share), (_possessive(s),)))
    others = [c for c in world.characters if c is not s]
    n_people = len(others) + (len(world.characters) < MAX_CHARACTERS)
    if slot.person and n_people:
        opts += [Option(("person", c), slot.person / n_people, (_name(c),)) for c in others]
        if len(world.characters) < MAX_CHARACTERS:
            opts.append(Option(("person", None), slot.person / n_people))  # someone new: the name follows
    return opts


def _fill_slot(w: _Writer, world: _World, slot: Slot, how) -> _Thing | _Character:
    tag, arg = how
    if tag == "new":
        return _new_thing(w, world, slot.kind, arg)
    if tag == "old":  # after "the" / "her": which one, named by (colour) noun
        return w.choose([Option(t, 1.0, _definite(world, t)) for t in arg])
    c = arg if arg is not None else _new_character(w, world)
    c.last_seen = world.sentence
    return c


def _anyone(world: _World, s: _Character) -> bool:
    """Is there someone other than ``s`` to name: an earlier character or room for a new one?"""
    return len(world.characters) > 1 or len(world.characters) < MAX_CHARACTERS


def _person(w: _Writer, world: _World, s: _Character) -> _Character:
    """Someone other than ``s``, by name: an earlier character or a new one."""
    return _fill_slot(w, world, Slot(person=1.0), w.choose(_slot_options(world, s, Slot(person=1.0))))


def _transitive(w: _Writer, world: _World, s: _Character, verb: Verb, how) -> None:
    obj = _fill_slot(w, world, verb.slot, how)
    if not isinstance(obj, _Thing):
        return
    if verb.effect == "own":
        obj.owner = obj.owner or s
        obj.holder = s
    elif verb.effect == "take":
        obj.holder = s
    elif verb.effect == "drop":
        obj.holder = None
    elif verb.effect == "eat":
        obj.gone, obj.holder = True, None
    elif verb.effect == "throw":  # "throws the ball." or "throws the ball to Tom."
        to = w.choose([Option(False, 0.5), Option(True, 0.5 * _anyone(world, s), (Word("to", "PREP"),))])
        obj.holder = _person(w, world, s) if to else None
    elif verb.effect in ("give", "show"):  # "gives/shows the ball to Tom."
        w.say("to", "PREP")
        to = _person(w, world, s)
        obj.holder = to if verb.effect == "give" else obj.holder


def _go(w: _Writer, world: _World) -> None:
    """ "to the <place>" (a place other than the current one) or "home"."""
    home = w.choose([Option(False, 0.85, (Word("to", "PREP"),))] +
                    ([Option(True, 0.15, (Word("home", "NOUN"),))] if world.place != "home" else []))  # fmt: skip
    if home:
        world.place = "home"
        return
    w.say("the", "DET")
    world.place = w.choose([Option(p, 1.0, (Word(p, "NOUN"),)) for p in PLACES if p != world.place])


def _together(w: _Writer, world: _World, s: _Character) -> None:
    """ "<s> and <t> go to the park." / "... play with the ball." """
    _person(w, world, s)
    play = Slot(kind="toy", new=0.5, old=0.5, old_if="free")
    plays = _slot_options(world, s, play)
    what = w.choose([Option(None, 0.6, (Word("go", "VERB"),))] +
                    ([Option(plays, 0.4, (Word("play", "VERB"), Word("with", "PREP")))] if plays else []))  # fmt: skip
    if what is None:
        _go(w, world)
        return
    obj = _fill_slot(w, world, play, w.choose(what))
    obj.holder = s  # the first named holds what they play with


def _predicate(w: _Writer, world: _World, s: _Character) -> None:
    """The verb and what follows it, chosen among what the world allows now."""
    options = list(_MOTION_OPTIONS)  # goes / runs / walks
    options.append(Option("feel", 0.7, (Word("is", "VERB"),)))
    anyone = _anyone(world, s)
    for o in _VERB_OPTIONS:  # the verbs whose object the world can supply now
        needs_someone = o.value.effect in ("give", "show")
        if _slot_open(world, s, o.value.slot) and (anyone or not needs_someone):
            options.append(o)
    if anyone:
        options.append(Option("and", 0.4, (Word("and", "CONJ"),)))
    what = w.choose(options)
    if what == "go":
        _go(w, world)
    elif what == "feel":
        w.choose(_FEELING_OPTIONS)
    elif what == "and":
        _together(w, world, s)
    else:
        _transitive(w, world, s, what, w.choose(_slot_options(world, s, what.slot)))


def _subject(w: _Writer, world: _World, capital: bool) -> _Character:
    """A name or (when the pronoun rule allows) "she"/"he"; the first sentence names someone new."""
    options = []
    room = len(world.characters) < MAX_CHARACTERS
    p_new = 1.0 if not world.characters else (P_NEW_CHARACTER if room else 0.0)
    if p_new:
        options.append(Option(None, p_new))  # the name follows
    # Stories keep to their characters: someone in the previous sentence is twice as likely.
    recent = [2.0 if c.last_seen == world.sentence - 1 else 1.0 for c in world.characters]
    for c, r in zip(world.characters, recent):
        share = (1 - p_new) * r / sum(recent)
        if _may_pronoun(world, c):
            options.append(Option(c, share * P_PRONOUN, (_pronoun(c, capital),)))
            options.append(Option(c, share * (1 - P_PRONOUN), (_name(c),)))
        else:
            options.append(Option(c, share, (_name(c),)))
    c = w.choose(options) or _new_character(w, world)
    c.last_seen = world.sentence
    return c


def _sentence(w: _Writer, world: _World) -> None:
    start = len(w.words)
    if world.sentence == 0:
        one_day = (Word("One", "NUM"), Word("day", "NOUN"), Word(",", "PUNCT"))
        opener = w.choose([Option(True, 0.5, one_day), Option(False, 0.5)])
    else:
        opener = w.choose([Option(False, 0.6)] + [Option(True, 0.1, (Word(o, "ADV"),)) for o in OPENERS])
    s = _subject(w, world, capital=not opener)
    _predicate(w, world, s)
    w.say(".", "PUNCT")
    w.sentences.append((start, len(w.words)))
    world.sentence += 1


def _tell(w: _Writer) -> None:
    """The whole story: sentences until the stop choice says stop."""
    world = _World()
    while True:
        _sentence(w, world)
        n = world.sentence
        if n >= MIN_SENTENCES:
            p_stop = 1.0 if n >= MAX_SENTENCES else P_STOP
            if w.choose([Option(True, p_stop), Option(False, 1 - p_stop)]):
                return


def generate_story(rng: random.Random) -> Story:
    """Draw one story, using only ``rng`` (a ``random.Random``) for randomness."""
    w = _Writer(_sampler(rng))
    _tell(w)
    return Story(
        words=[x.text for x in w.words],
        pos=[x.pos for x in w.words],
        antecedent=[x.antecedent for x in w.words],
        entity=[x.entity for x in w.words],
        logprob=w.logprob,
        end_logprob=w.pending,  # only the stop choice is left unpaid
        sentences=w.sentences,
    )


# --------------------------------------------------------------------------- splits


def make_splits(seed: int = 0, n_train: int = 14000, n_valid: int = 400, n_test: int = 400) -> dict[str, list[Story]]:
    """Train, validation and test stories, deterministic in ``seed``.

    Each split has its own random stream (so the validation set does not change with
    ``n_train``). A validation or test story whose text already occurred in an earlier split
    (or earlier in its own) is drawn again, so the held-out texts are never seen in training;
    with ~60 nats per story this almost never happens.
    """
    seen: set[str] = set()
    out: dict[str, list[Story]] = {}
    for split, n in (("train", n_train), ("validation", n_valid), ("test", n_test)):
        rng = random.Random(f"archplay-{split}-{seed}")
        stories: list[Story] = []
        while len(stories) < n:
            s = generate_story(rng)
            if split != "train":
                if s.text in seen:
                    continue
                seen.add(s.text)
            stories.append(s)
        if split == "train":
            seen.update(s.text for s in stories)
        out[split] = stories
    return out


def entropy_floor(stories: Sequence[Story], n_tokens: int) -> float:
    """The true entropy per token, in nats: total -log P(story) over ``n_tokens``.

    ``n_tokens``: how many tokens the stories take under the caller's tokenizer, counting one
    end-of-text token per story (the model must predict the end, and ``end_logprob`` is its
    price). Since a tokenizer maps each text to one token sequence, a language model's total
    cross-entropy on those token streams is, in expectation over stories, at least the total
    entropy of the texts (Gibbs' inequality); so its mean loss per token cannot (in
    expectation) go below this number.
    """
    return -math.fsum(s.total_logprob for s in stories) / n_tokens


def token_word_index(story: Story, token_char_spans: Sequence[tuple[int, int] | None]) -> list[int | None]:
    """Map tokens to the word they belong to, from their char spans in ``story.text``.

    A token belongs to the word containing its first non-space character ("▁ball" -> "ball").
    Tokens without a span (specials) or covering only spaces get None.
    """
    owner: list[int | None] = [None] * len(story.text)  # char -> word index
    for i, (a, b) in enumerate(story.spans):
        owner[a:b] = [i] * (b - a)
    out = []
    for span in token_char_spans:
        hit = None
        if span is not None:
            hit = next((owner[c] for c in range(*span) if c < len(owner) and owner[c] is not None), None)
        out.append(hit)
    return out


# --------------------------------------------------------------------------- checking uniqueness


class _Branch(Exception):
    def __init__(self, options: list[tuple[int, float]]):
        self.options = options  # (index, probability) of the options that fit the target


class _Stop(Exception):
    def __init__(self, reached: bool):
        self.reached = reached


def _replay(forced: list[int], target: list[str], complete: bool) -> bool:
    """Run the grammar with the choices in ``forced``; raise _Branch at the first free choice.

    Returns whether the path yields ``target`` (complete) or starts with it (prefix mode;
    the path ends at the first choice after it has printed that many words). A path is
    abandoned (False) as soon as its words disagree with the target.
    """
    at = 0

    def fits(w: _Writer) -> None:
        n = len(w.words)
        if [x.text for x in w.words[: len(target)]] != target[:n] or (complete and n > len(target)):
            raise _Stop(False)
        if not complete and n >= len(target):
            raise _Stop(True)

    def decide(w: _Writer, options: list[Option], probs: list[float]) -> int:
        nonlocal at
        fits(w)
        if at < len(forced):
            at += 1
            return forced[at - 1]
        n = len(w.words)
        texts = [tuple(x.text for x in o.words) for o in options]
        ok = [(i, p) for i, (p, t) in enumerate(zip(probs, texts))
              if (complete and n + len(t) <= len(target) or not complete)
              and list(t[: max(0, len(target) - n)]) == target[n : n + len(t)]]  # fmt: skip
        raise _Branch(ok)

    w = _Writer(decide)
    try:
        _tell(w)
    except _Stop as stop:
        return stop.reached
    # _tell returned: the story ended (the last stop choice may have had no alternative)
    got = [x.text for x in w.words]
    return got == target if complete else got[: len(target)] == target


def derivations(words: Sequence[str], *, complete: bool = True, limit: int | None = None) -> list[float]:
    """Log-probabilities of all choice sequences whose story is ``words`` (or starts with it).

    A brute-force check of the grammar, independent of the per-word bookkeeping in ``_Writer``:
    a depth-first search over every choice sequence, pruned as soon as its words leave the
    target. ``complete=True``: stories equal to ``words`` (one derivation means the text
    determines the choices; its value is ``Story.total_logprob``). ``complete=False``:
    stories that begin with ``words``, stopped at the choice that prints the last of them;
    their log-sum-exp is ``log P(words are the first len(words) words)``.
    """
    target = list(words)
    found: list[float] = []
    stack: list[tuple[list[int], float]] = [([], 0.0)]
    while stack and (limit is None or len(found) < limit):
        forced, lp = stack.pop()
        try:
            if _replay(forced, target, complete):
                found.append(lp)
        except _Branch as b:
            stack += [(forced + [i], lp + math.log(p)) for i, p in reversed(b.options)]
    return found


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
