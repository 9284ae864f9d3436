"""The story grammar: a probabilistic writer whose every choice is recorded, and the splits.

``generate_story`` draws one story from the vocabulary in ``world.py`` with its exact gold
annotations (see ``Story``); ``make_splits`` gives the train, validation and test stories;
``entropy_floor`` the true entropy per token; ``token_word_index`` maps a tokenizer's tokens
to the story's words.

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
  ``logprob[i]`` is the exact conditional ``log P(w_i | w_<i)``. ``derivations`` (in
  ``derivation.py``) re-derives both by searching all choice sequences; the tests run it.
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
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from archplay.models.story.world import (
    COLOURS,
    COUNTS,
    FEELINGS,
    FEMALE,
    MALE,
    MAX_CHARACTERS,
    MAX_SENTENCES,
    MAX_THINGS,
    MIN_SENTENCES,
    MOTION,
    NOUNS,
    OPENERS,
    P_NEW_CHARACTER,
    P_NO_COLOUR,
    P_NO_SIZE,
    P_PRONOUN,
    P_SAME_NOUN,
    P_STOP,
    PLACES,
    SIZES,
    VERB_POS,
    VERBS,
    Slot,
    Story,
    Verb,
    Word,
)

# --------------------------------------------------------------------------- choices and their log-probs


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

    Splits of 1,000 stories or more are kept on disk once drawn (``story.cache``).
    """
    from archplay.models.story import cache

    counts = {"train": n_train, "validation": n_valid, "test": n_test}
    big = sum(counts.values()) >= cache.MIN_STORIES
    name = cache.key(seed=seed, **counts) if big else ""
    if big and (cached := cache.load(name, counts)) is not None:
        return cached
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
    if big:
        cache.save(name, out)
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
