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
