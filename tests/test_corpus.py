"""The synthetic story world: determinism, gold annotations, exact log-probabilities, translation."""

from __future__ import annotations

import math
import random

import pytest

from archplay.models import story as C

SMALL = dict(n_train=60, n_valid=20, n_test=20)


@pytest.fixture(scope="module")
def stories() -> list[C.Story]:
    rng = random.Random(1234)
    return [C.generate_story(rng) for _ in range(400)]


def logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(math.fsum(math.exp(x - m) for x in xs))


# --------------------------------------------------------------------------- splits


def test_splits_are_deterministic_in_the_seed():
    a, b, c = C.make_splits(seed=0, **SMALL), C.make_splits(seed=0, **SMALL), C.make_splits(seed=1, **SMALL)
    assert list(a) == ["train", "validation", "test"]
    assert [len(a[k]) for k in a] == [60, 20, 20]
    for k in a:
        assert a[k] == b[k]  # every field of every story
        assert [s.text for s in a[k]] != [s.text for s in c[k]]


def test_validation_does_not_depend_on_the_train_size():
    other = C.make_splits(seed=0, n_train=5, n_valid=20, n_test=1)
    assert C.make_splits(seed=0, **SMALL)["validation"] == other["validation"]


def test_held_out_texts_never_repeat_a_training_text(monkeypatch):
    real = C.make_splits(seed=0, **SMALL)
    texts = {k: {s.text for s in v} for k, v in real.items()}
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    # A generator that repeats itself: the held-out splits must still come out disjoint.
    pool = [C.generate_story(random.Random(i)) for i in range(30)]
    monkeypatch.setattr(C, "generate_story", lambda rng: pool[rng.randrange(len(pool))])
    splits = C.make_splits(seed=0, n_train=20, n_valid=4, n_test=4)
    train = {s.text for s in splits["train"]}
    held = [s.text for s in splits["validation"] + splits["test"]]
    assert len(set(held)) == 8 and not train & set(held)


# --------------------------------------------------------------------------- the text and its annotations


def test_text_spans_and_shape(stories):
    for s in stories:
        n = len(s.words)
        assert len(s.pos) == len(s.antecedent) == len(s.entity) == len(s.logprob) == len(s.spans) == n
        assert [s.text[a:b] for a, b in s.spans] == s.words
        assert " ." not in s.text and " ," not in s.text and "  " not in s.text
        assert C.MIN_SENTENCES <= len(s.sentences) <= C.MAX_SENTENCES
        assert s.sentences[0][0] == 0 and s.sentences[-1][1] == n
        assert all(s.words[b - 1] == "." for a, b in s.sentences)
        assert all(a == b for (_, a), (b, _) in zip(s.sentences, s.sentences[1:]))


def test_hand_checked_story():
    s = C.generate_story(random.Random(0))
    assert s.text.startswith("Noah sees a red pen. He plays with Kate. She plays with a tiny grey puzzle.")
    assert s.pos[:12] == ["NAME", "VERB", "DET", "ADJ", "NOUN", "PUNCT",
                          "PRON", "VERB", "PREP", "NAME", "PUNCT", "PRON"]  # fmt: skip
    assert s.antecedent[6] == 0  # "He" -> "Noah"
    assert s.antecedent[11] == 9  # "She" -> "Kate"
    pen = s.words.index("pen")
    later = [i for i, w in enumerate(s.words) if w == "pen" and i > pen]
    assert later and all(s.antecedent[i] == pen for i in later)  # "the pen" -> "a red pen"


VERB_WORDS = {"has", "finds", "sees", "likes", "throws", "gives", "eats", "opens", "reads", "wears", "loses",
              "plays", "looks", "says", "wants", "holds", "drops", "hides", "shows", "buys", "makes", "helps",
              "hugs", "calls", "goes", "runs", "walks", "is", "go", "play"}  # fmt: skip


def expected_tag(word: str) -> str:
    """The tag a word must have, from hand-written word classes."""
    if word in C.FEMALE or word in C.MALE:
        return "NAME"
    table = {"she": "PRON", "he": "PRON", "his": "POSS", "her": "POSS", "a": "DET", "the": "DET", "one": "NUM",
             "two": "NUM", "three": "NUM", "four": "NUM", "to": "PREP", "with": "PREP", "for": "PREP",
             "and": "CONJ", "hello": "INTJ", ".": "PUNCT", ",": "PUNCT", "then": "ADV", "later": "ADV",
             "soon": "ADV", "next": "ADV", "day": "NOUN", "home": "NOUN"}  # fmt: skip
    low = word.lower()
    if low in table:
        return table[low]
    if low in VERB_WORDS:
        return "VERB"
    if low in (*C.COLOURS, *C.SIZES, *C.FEELINGS):
        return "ADJ"
    if low in C.PLACES or low in C.NOUNS or low in {p for p, _ in C.NOUNS.values()}:
        return "NOUN"
    raise AssertionError(f"unknown word {word!r}")


def test_pos_tags_are_of_the_right_kind(stories):
    for s in stories:
        assert set(s.pos) <= set(C.TAGS)
        assert s.pos == [expected_tag(w) for w in s.words], s.text


def test_antecedents_point_back_to_the_same_referent(stories):
    checked = {"PRON": 0, "POSS": 0, "NOUN": 0}
    for s in stories:
        first = {}  # entity -> index of its first mention
        for i, e in enumerate(s.entity):
            if e is not None:
                first.setdefault(e, i)
        for i, a in enumerate(s.antecedent):
            if a is None:
                continue
            assert a < i and s.entity[a] == s.entity[i] and first[s.entity[i]] == a
            w = s.words[i].lower()
            if s.pos[i] in ("PRON", "POSS"):
                assert s.pos[a] == "NAME"
                assert s.words[a] in (C.FEMALE if w in ("she", "her") else C.MALE)  # gender agrees
            else:
                assert s.pos[i] == "NOUN" and s.words[a] == s.words[i]  # "the ball" -> "a ... ball"
                assert s.words[i - 1] in ("the", "his", "her") or s.words[i - 2] in ("the", "his", "her")
            checked[s.pos[i]] += 1
    assert min(checked.values()) > 40


def test_every_reference_has_an_antecedent(stories):
    for s in stories:
        for i, (w, p) in enumerate(zip(s.words, s.pos)):
            if p in ("PRON", "POSS"):
                assert s.antecedent[i] is not None
            if p == "NOUN" and w not in C.PLACES and w not in ("day", "home"):
                definite = s.words[i - 1] in ("the", "his", "her") or (
                    s.pos[i - 1] == "ADJ" and s.words[i - 2] in ("the", "his", "her"))  # fmt: skip
                assert (s.antecedent[i] is not None) == definite, (s.text, w)


def test_pronouns_are_unambiguous(stories):
    """A pronoun's character is the only one of that gender so far and was in the previous sentence."""
    n = 0
    for s in stories:
        sentence_of = [k for k, (a, b) in enumerate(s.sentences) for _ in range(a, b)]
        for i, p in enumerate(s.pos):
            if p != "PRON":
                continue
            female = s.words[i].lower() == "she"
            names = {w for w in s.words[:i] if w in (C.FEMALE if female else C.MALE)}
            assert names == {s.words[s.antecedent[i]]}
            prev = [j for j in range(i) if sentence_of[j] == sentence_of[i] - 1]
            assert any(s.entity[j] == s.entity[i] for j in prev)
            n += 1
    assert n > 100


def test_definite_descriptions_pick_out_one_object(stories):
    """ "the (colour) noun": no other earlier object fits the description."""
    coloured = 0
    for s in stories:
        objects = {}  # entity -> (noun form, colour or None) at its introduction
        for i, e in enumerate(s.entity):
            if e is None or s.pos[i] != "NOUN" or s.antecedent[i] is not None:
                continue
            colour = s.words[i - 1] if s.words[i - 1] in C.COLOURS else None
            objects[e] = (s.words[i], colour)
        for i, a in enumerate(s.antecedent):
            if a is None or s.pos[i] != "NOUN" or s.words[i - 1] in ("his", "her"):
                continue
            colour = s.words[i - 1] if s.pos[i - 1] == "ADJ" else None
            fits = [e for e, (noun, c) in objects.items() if noun == s.words[i] and colour in (None, c)]
            introduced_before = [e for e in fits if s.entity.index(e) < i]
            assert introduced_before == [s.entity[i]], (s.text, i)
            coloured += colour is not None
    assert coloured >= 5  # "the red ball" next to "the blue ball" does occur


# --------------------------------------------------------------------------- log-probabilities


def test_logprobs_are_log_probabilities(stories):
    for s in stories:
        assert all(lp <= 0.0 for lp in s.logprob) and s.end_logprob <= 0.0
        assert -s.total_logprob > 5.0
        for i in range(2, len(s.words)):
            if s.words[i - 2 : i + 1] == ["goes", "to", "the"]:
                assert s.logprob[i] == 0.0  # fixed by the grammar
        if len(s.sentences) == C.MAX_SENTENCES:
            assert s.end_logprob == 0.0
        else:
            assert s.end_logprob == pytest.approx(math.log(C.P_STOP))


def test_first_word_logprob_by_hand():
    """ "One day," or no opener (1/2 each), then one of the 24 names (uniform)."""
    for seed in range(20):
        s = C.generate_story(random.Random(seed))
        assert s.logprob[0] == pytest.approx(math.log(0.5) + (0 if s.words[0] == "One" else math.log(1 / 24)))
        if s.words[0] == "One":
            assert s.logprob[1:3] == [0.0, 0.0] and s.logprob[3] == pytest.approx(math.log(1 / 24))


def test_text_determines_the_choices_and_the_total_logprob(stories):
    """Search all choice sequences: exactly one yields each text, with the recorded log-prob."""
    for s in stories[:60]:
        found = C.derivations(s.words, limit=2)
        assert len(found) == 1, s.text
        assert found[0] == pytest.approx(s.total_logprob, abs=1e-9)


def test_derivations_reject_texts_the_grammar_cannot_make(stories):
    s = stories[0]
    wrong_pronoun = [{"He": "She", "She": "He", "he": "she", "she": "he"}.get(w, w) for w in s.words]
    assert C.derivations(s.words + ["Mia"], limit=1) == []  # a dangling word
    assert C.derivations(s.words[:-1], limit=1) == []  # no final "."
    if wrong_pronoun != s.words:
        assert C.derivations(wrong_pronoun, limit=1) == []


def test_each_word_logprob_is_the_exact_conditional(stories):
    """logprob[i] = log P(first i+1 words) - log P(first i words), by brute force."""
    for s in stories[:2]:
        acc = 0.0
        for k in range(1, len(s.words) + 1):
            acc += s.logprob[k - 1]
            assert logsumexp(C.derivations(s.words[:k], complete=False)) == pytest.approx(acc, abs=1e-9)


def test_next_word_distribution_sums_to_one(stories):
    """After a prefix, P(each possible next word) + P(the story ends) = 1."""
    vocab = sorted({w for s in stories for w in s.words})
    s = stories[3]
    for k in (len(s.words) - 1, s.sentences[0][1] + 2):
        prefix = s.words[:k]
        base = logsumexp(C.derivations(prefix, complete=False))
        total = sum(math.exp(logsumexp(d) - base) for w in vocab if (d := C.derivations(prefix + [w], complete=False)))
        ends = C.derivations(prefix)
        total += math.exp(logsumexp(ends) - base) if ends else 0.0
        assert total == pytest.approx(1.0, abs=1e-9)


def test_entropy_floor_arithmetic():
    def story(logprob, end):
        words = ["Mia"] * len(logprob)
        return C.Story(words, ["NAME"] * len(words), [None] * len(words), [None] * len(words), logprob, end,
                       [(0, len(words))])  # fmt: skip

    toy = [story([-1.0, -2.0, 0.0], -0.5), story([-0.25], 0.0)]
    assert C.entropy_floor(toy, n_tokens=7) == pytest.approx((3.5 + 0.25) / 7)


def test_token_word_index():
    s = C.Story(["Mia", "has", "a", "ball", "."], ["NAME", "VERB", "DET", "NOUN", "PUNCT"], [None] * 5, [None] * 5,
                [0.0] * 5, 0.0, [(0, 5)])  # fmt: skip
    assert s.text == "Mia has a ball."
    #              <s>   "Mia"   "▁has"  "▁"     "a"     "▁ba"    "ll"     "."
    spans = [None, (0, 3), (3, 7), (7, 8), (8, 9), (9, 12), (12, 14), (14, 15)]
    assert C.token_word_index(s, spans) == [None, 0, 1, None, 2, 3, 3, 4]


# --------------------------------------------------------------------------- translation

POS = {"Mia": "NAME", "Tom": "NAME", "throws": "VERB", "has": "VERB", "the": "DET", "a": "DET", "big": "ADJ",
       "red": "ADJ", "ball": "NOUN", "balls": "NOUN", "to": "PREP", "two": "NUM", ".": "PUNCT", "goes": "VERB",
       "home": "NOUN", "is": "VERB", "happy": "ADJ", "Then": "ADV", "she": "PRON"}  # fmt: skip


def tr(sentence: str) -> C.Pair:
    words = sentence.split()
    return C.translate(words, [POS[w] for w in words])


def test_translation_is_sov_with_adjectives_after_the_noun():
    L = C.LEXICON
    p = tr("Mia throws the big red ball to Tom .")
    assert p.target_words == ["Mia", "ga", "Tom", L["to"], L["ball"], L["red"], L["big"], L["the"], "wo",
                              L["throws"], "."]  # fmt: skip
    assert p.alignment == [0, None, 7, 6, 5, 4, 3, 2, None, 1, 8]
    assert p.source == "Mia throws the big red ball to Tom." and p.target == " ".join(p.target_words[:-1]) + "."
    assert tr("Then she is happy .").target_words == [L["then"], L["she"], "ga", L["happy"], L["is"], "."]
    assert tr("Mia goes home .").target_words == ["Mia", "ga", L["home"], "na", L["goes"], "."]


def test_plural_suffix():
    p = tr("Mia has two red balls .")
    assert p.target_words == ["Mia", "ga", C.LEXICON["two"], C.LEXICON["ball"] + C.PLURAL_SUFFIX, C.LEXICON["red"],
                              "wo", C.LEXICON["has"], "."]  # fmt: skip
    assert p.source_words[p.alignment[3]] == "balls"


def test_lexicon_is_invented_and_unambiguous():
    english = set(C.LEXICON) | {p for p, _ in C.NOUNS.values()}
    invented = [w for e, w in C.LEXICON.items() if e not in ("go", "play", ".", ",")]
    assert len(set(invented)) == len(invented)  # one English word per target word
    assert not set(invented) & english
    plurals = {w + C.PLURAL_SUFFIX for w in invented}
    assert not plurals & set(invented)


PLURALS = {plural: noun for noun, (plural, _) in C.NOUNS.items()}


def test_translation_pairs_alignment(stories):
    pairs = C.translation_pairs(stories[:100])
    assert len(pairs) == sum(len(s.sentences) for s in stories[:100])
    plural = 0
    for p in pairs:
        assert len(p.alignment) == len(p.target_words)
        assert p.target_words[-1] == "." and p.source_words[-1] == "."
        verb = next(i for i, j in enumerate(p.alignment) if j is not None and expected_tag(p.source_words[j]) == "VERB")
        assert verb == len(p.target_words) - 2  # verb-final
        for t, j in zip(p.target_words, p.alignment):
            if j is None:
                assert t in (C.SUBJECT, C.OBJECT, C.TOWARDS)
            else:
                assert 0 <= j < len(p.source_words) and C.target_word(p.source_words[j]) == t
        aligned = sorted(j for j in p.alignment if j is not None)
        assert aligned == [j for j, w in enumerate(p.source_words) if w != "a"]  # each other word exactly once
        for t, j in zip(p.target_words, p.alignment):
            if j is not None and p.source_words[j] in PLURALS:
                assert t == C.LEXICON[PLURALS[p.source_words[j]]] + C.PLURAL_SUFFIX
                plural += 1
    assert plural > 5
