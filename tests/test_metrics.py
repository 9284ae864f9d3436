"""The evaluation report's measures on inputs whose answers are known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from archplay.models.training.metrics import bleu, entropy_bits, head_hits, mutual_information


def test_bleu_perfect_and_disjoint():
    ref = ["a b c d e".split(), "f g h i".split()]
    assert bleu(ref, ref) == pytest.approx(1.0)
    assert bleu([["x", "y", "z", "w"]] * 2, ref) == 0.0


def test_bleu_by_hand():
    hyp, ref = ["the cat sat on the mat".split()], ["the cat sat on a mat".split()]
    # 1-grams 5/6, 2-grams 3/5, 3-grams 2/4 (the cat sat, cat sat on), 4-grams 1/3; same length: no penalty
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert bleu(hyp, ref) == pytest.approx(expected)


def test_bleu_clips_repeats_and_penalises_brevity():
    # "the the the the" against "the cat": 1-gram matches clipped to 1 of 4
    assert bleu([["the"] * 4], [["the", "cat"]], max_n=1) == pytest.approx(1 / 4)
    short = bleu([["a", "b"]], [["a", "b", "c", "d"]], max_n=2)
    assert short == pytest.approx(math.exp(1 - 4 / 2))  # precisions 1, brevity e^(1 - r/c)


def test_mutual_information():
    assert mutual_information([0, 1, 0, 1], ["a", "b", "a", "b"]) == pytest.approx(1.0)  # one bit, determined
    assert mutual_information([0, 0, 1, 1], ["a", "b", "a", "b"]) == pytest.approx(0.0)  # independent
    x = [0, 0, 0, 1]
    assert mutual_information(x, x) == pytest.approx(entropy_bits(x))
    assert entropy_bits(x) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_head_hits_counts_argmax_on_targets():
    T = 4
    att0 = torch.zeros(2, T, T)
    att0[0, :, 0] = 1  # head 0 always looks at token 0
    att0[1] = torch.eye(T)  # head 1 looks at itself
    att1 = torch.full((2, T, T), 1 / T)
    att1[0, 3] = torch.tensor([0.1, 0.6, 0.2, 0.1])  # layer 1 head 0: query 3 looks at 1
    hits = head_hits([att0, att1], queries=[2, 3], targets=[{0}, {1}])
    # layer 0 head 0: query 2 → 0 ✓, query 3 → 0 ✗; head 1: 2 → 2 ✗, 3 → 3 ✗
    # layer 1 head 0: query 2 uniform → argmax 0 ✓, query 3 → 1 ✓; head 1: 2 → 0 ✓, 3 → 0 ✗
    assert hits.tolist() == [[1, 0], [2, 1]]
