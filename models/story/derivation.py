"""The exact check of the grammar: re-derive a text's log-probability by searching all choices.

``derivations(words)`` runs the grammar of ``grammar.py`` again and again, each time forcing
the choices of a depth-first search and abandoning a path as soon as its words leave the
target; it returns the log-probability of every choice sequence that yields the text (or,
with ``complete=False``, that starts with it). It is independent of the per-word bookkeeping
of ``_Writer``, so the tests use it to confirm that the text determines the choices (one
derivation) and that ``Story.logprob`` / ``Story.end_logprob`` are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from archplay.models.story.grammar import Option, _tell, _Writer

# --------------------------------------------------------------------------- checking uniqueness


class _Branch(Exception):
    def __init__(self, options: list[tuple[int, float]]):
        self.options = options  # (index, probability) of the options that fit the target


class _Stop(Exception):
    def __init__(self, reached: bool):
        self.reached = reached


def _replay(forced: list[int], target: list[str], complete: bool, words: list | None = None) -> bool:
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
        if stop.reached and words is not None:
            words.extend(w.words[: len(target)])
        return stop.reached
    # _tell returned: the story ended (the last stop choice may have had no alternative)
    got = [x.text for x in w.words]
    ok = got == target if complete else got[: len(target)] == target
    if ok and words is not None:
        words.extend(w.words[: len(target)])
    return ok


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


# --------------------------------------------------------------------------- the next word


class _Next(Exception):
    def __init__(self, word: str):
        self.word = word


END = "</s>"  # the story ends here


def _replay_next(forced: list[int], target: list[str]) -> str | None:
    """Run the grammar with the choices in ``forced``; raise _Branch at the first free choice, _Next
    once the path has printed one word past ``target``. Returns END when the story ends exactly at the
    target's last word, the next word when it printed one (no choice after it), None when it left the target."""
    at, L = 0, len(target)

    def check(w: _Writer) -> None:
        got = [x.text for x in w.words]
        if got[:L] != target[: len(got)]:
            raise _Stop(False)
        if len(got) > L:
            raise _Next(got[L])

    def decide(w: _Writer, options: list[Option], probs: list[float]) -> int:
        nonlocal at
        check(w)
        if at < len(forced):
            at += 1
            return forced[at - 1]
        n = len(w.words)
        texts = [tuple(x.text for x in o.words) for o in options]
        ok = [(i, p) for i, (p, t) in enumerate(zip(probs, texts)) if list(t[: max(0, L - n)]) == target[n : n + len(t)]]
        raise _Branch(ok)

    w = _Writer(decide)
    try:
        _tell(w)
    except _Stop:
        return None
    got = [x.text for x in w.words]
    if got == target:
        return END
    return got[L] if len(got) > L and got[:L] == target else None


def next_words(prefix: Sequence[str]) -> dict[str, float]:
    """The story world's exact distribution of the word after ``prefix`` (``END``: the story stops).

    Sums every choice sequence that begins with ``prefix`` by the word it prints next (a depth-first
    search as in ``derivations``, stopped one word past the prefix), then normalises. Empty when no
    story of the world begins with ``prefix`` (the text has left the world)."""
    target = list(prefix)
    mass: dict[str, float] = {}
    stack: list[tuple[list[int], float]] = [([], 0.0)]
    while stack:
        forced, lp = stack.pop()
        try:
            word = _replay_next(forced, target)
        except _Branch as b:
            stack += [(forced + [i], lp + math.log(p)) for i, p in reversed(b.options)]
            continue
        except _Next as nxt:
            word = nxt.word
        if word is not None:
            mass[word] = mass.get(word, 0.0) + math.exp(lp)
    total = math.fsum(mass.values())
    return {w: p / total for w, p in sorted(mass.items(), key=lambda kv: -kv[1])} if total > 0 else {}


def annotate(words: Sequence[str]) -> list | None:
    """The world's gold annotations of a text (or the start of one): its ``Word``s (part of speech,
    entity, antecedent) from the first derivation found, None when no story begins with ``words``.
    (The grammar's unique reading makes that derivation the only one for a whole story.)"""
    target = list(words)
    stack: list[list[int]] = [[]]
    while stack:
        forced = stack.pop()
        got: list = []
        try:
            if _replay(forced, target, False, got):
                return got
        except _Branch as b:
            stack += [forced + [i] for i, _ in reversed(b.options)]
    return None
