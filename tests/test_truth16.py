"""Issue 16, item 6 (the truth beside the model): the story world's exact next-word distribution."""

from __future__ import annotations

import math
import random

import pytest

from archplay.models.story import generate_story
from archplay.models.story.derivation import END, next_words


@pytest.mark.parametrize("seed", [5, 11])
def test_the_next_word_distribution_is_the_worlds_exact_conditional(seed):
    story = generate_story(random.Random(seed))
    for i in range(len(story.words) + 1):
        d = next_words(story.words[:i])
        assert math.fsum(d.values()) == pytest.approx(1.0, abs=1e-9)
        assert all(p > 0 for p in d.values())
        actual = story.words[i] if i < len(story.words) else END
        want = math.exp(story.logprob[i] if i < len(story.words) else story.end_logprob)
        assert d[actual] == pytest.approx(want, rel=1e-9)  # Story.logprob is log P(w_i | w_<i)
    assert next_words([])["One"] == pytest.approx(0.5)  # "One day, ..." opens half the stories


def test_a_text_outside_the_world_has_no_next_word():
    assert next_words(["The", "cat", "sat"]) == {}
    assert next_words(["Mia", "has", "a", "mat"]) == {}


def test_the_world_beside_a_model():
    from archplay.models import load
    from archplay.models.analysis.truth import beside

    model, tok = load("gpt")
    b = beside(model, tok, "Mia finds a big red ball. She throws the")
    assert b.in_world and b.words[-1] == "the"
    assert math.fsum(b.world.values()) == pytest.approx(1.0)
    assert set(b.model) == set(b.world) and all(0 <= p <= 1 for p in b.model.values())
    assert b.world["ball"] == pytest.approx(1.0) and b.model["ball"] > 0.5  # "the" can only be the ball
    assert b.kl == pytest.approx(-math.log(b.model["ball"]), rel=1e-6) and 0 <= b.outside < 0.5
    b = beside(model, tok, "Jack wants three small purple kites. Jack looks for the kites. Next Rosa has a puzzle.")
    # after a third sentence the story may end
    assert "</s>" in b.world and b.kl >= 0
    for text, left in [("The cat sat on the mat because it was comfortable.", 0), ("Mia has a mat.", 3)]:
        out = beside(model, tok, text)
        assert not out.in_world and out.left_at == left and out.words[left] in out.reason
    for odd in ("<b>Mia</b> has", "Mia  has 2 balls!", ""):
        out = beside(model, tok, odd)
        assert not out.in_world and "story world's words" in out.reason


def test_where_a_text_leaves_the_world_is_found_by_bisection(monkeypatch):
    """_left_at asks the world about log2(n) prefixes, not each one (before: up to n searches after every
    Run), and finds the same word as asking each prefix in turn."""
    from archplay.models.analysis import truth
    from archplay.models.story.derivation import next_words

    story = ("Jack wants three small purple kites. Jack looks for the kites. Next Rosa has a puzzle. "
             "Rosa gives the puzzle to Jack.").split()  # fmt: skip
    words = truth.world_words(" ".join(story))
    assert words and next_words(words)  # the whole story is the world's
    asked = []
    monkeypatch.setattr(truth, "next_words", lambda w: asked.append(len(w)) or next_words(w))
    for cut in (0, 1, 5, len(words) // 2, len(words) - 1):
        text = [*words[:cut], "because", *words[cut:]]  # a word the world never writes, at ``cut``
        asked.clear()
        assert truth._left_at(text) == cut
        assert len(asked) <= math.ceil(math.log2(len(text))) + 1, asked
        linear = next(i for i in range(len(text)) if text[i] not in next_words(text[:i]))
        assert linear == cut
    asked.clear()
    assert truth._left_at(words) == len(words) and len(asked) == 1


def test_the_world_fills_a_blank_from_both_sides():
    from archplay.models.analysis.truth import blank

    d = blank("Mia finds a big red ball. She throws the", ". Tom sees the ball.")
    assert d == {"ball": pytest.approx(1.0)}  # only one object: "the" must be the ball
    d = blank("Mia has a", "ball.")
    assert math.fsum(d.values()) == pytest.approx(1.0) and set(d) >= {"red", "big"}
    assert "kite" not in d  # "a kite ball" is not the world's
    assert blank("<b>x</b>", "") is None and blank("The cat", "sat.") == {}
