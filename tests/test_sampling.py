"""staged_distribution equals transformers' Temperature → TopK → TopP warpers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from archplay.models.architectures import generation
from archplay.models.sampling import entropy, sample_many, staged_distribution

V = 97


def reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The final distribution as transformers builds it (it adds a warper only when it is on)."""
    return torch.softmax(reference_scores(logits, temperature, top_k, top_p), dim=-1)


def reference_scores(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The warped scores; -inf marks a token filtered out."""
    scores = logits[None].clone()
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores[0]


def random_logits(seed: int, ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(V, generator=g) * 3
    if ties:  # coarse values so the top-k boundary has ties
        x = torch.round(x)
    return x


GRID = [
    (t, k, p)
    for t in (0.05, 0.7, 1.0, 2.5)
    for k in (0, 1, 5, V, V + 50)
    for p in (1e-6, 0.3, 0.9, 1.0)
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_transformers_warpers(seed, ties):
    logits = random_logits(seed, ties)
    for t, k, p in GRID:
        s = staged_distribution(logits, temperature=t, top_k=k, top_p=p)
        ref = reference(logits, t, k, p)
        torch.testing.assert_close(s.final, ref, atol=1e-6, rtol=0, msg=f"T={t} k={k} p={p}")
        kept = torch.isfinite(reference_scores(logits, t, k, p))
        assert torch.equal(s.kept, kept), f"kept set differs at T={t} k={k} p={p}"
        assert s.kept.sum() >= 1
        torch.testing.assert_close(s.raw, torch.softmax(logits, -1), atol=1e-6, rtol=0)
        torch.testing.assert_close(s.tempered, torch.softmax(logits / t, -1), atol=1e-6, rtol=0)


def test_edges():
    logits = random_logits(3)
    top1 = staged_distribution(logits, 1.0, top_k=1)
    assert top1.kept.sum() == 1 and top1.kept[logits.argmax()]
    everything = staged_distribution(logits, 1.0, top_k=V + 10, top_p=1.0)
    assert everything.kept.all()
    torch.testing.assert_close(everything.final, torch.softmax(logits, -1))
    tiny_p = staged_distribution(logits, 1.0, top_p=1e-9)
    assert tiny_p.kept.sum() == 1 and tiny_p.kept[logits.argmax()]
    greedy = staged_distribution(logits, 0.0, top_k=5, top_p=0.5)
    assert greedy.kept.sum() == 1 and greedy.final[logits.argmax()] == 1.0
    assert greedy.tempered[logits.argmax()] == 1.0
    torch.testing.assert_close(greedy.raw, torch.softmax(logits, -1))


def test_batched_rows_are_independent():
    logits = torch.stack([random_logits(4), random_logits(5)])
    s = staged_distribution(logits, 0.8, 7, 0.8)
    for i in range(2):
        torch.testing.assert_close(s.final[i], reference(logits[i], 0.8, 7, 0.8), atol=1e-6, rtol=0)


def test_large_vocab_and_extreme_temperatures():
    logits = torch.randn(50257, generator=torch.Generator().manual_seed(6)) * 4
    s = staged_distribution(logits, 1e-4, 50, 0.9)
    assert torch.isfinite(s.final).all() and s.kept.sum() == 1
    hot = staged_distribution(logits, 1000.0)
    assert hot.entropy == pytest.approx(math.log(50257), abs=1e-2)  # nearly uniform
    torch.testing.assert_close(staged_distribution(logits, 0.9, 40, 0.95).final, reference(logits, 0.9, 40, 0.95), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
    ],
)
def test_out_of_range_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        staged_distribution(random_logits(0), **kw)


def test_entropy_and_sampling_follow_final():
    logits = random_logits(7)
    s = staged_distribution(logits, 1.0, top_k=3)
    p = s.final[s.kept]
    assert float(s.entropy) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    assert float(entropy(torch.tensor([1.0, 0.0]))) == 0.0
    draws = sample_many(s.final, 4000, seed=0)
    counts = torch.bincount(draws, minlength=V).float() / 4000
    assert set(draws.tolist()) <= set(s.kept.nonzero().flatten().tolist())
    torch.testing.assert_close(counts, s.final, atol=0.03, rtol=0)
    greedy = staged_distribution(logits, 0.0).final
    assert sample_many(greedy, 5).tolist() == [int(logits.argmax())] * 5  # temperature 0: the argmax


# --------------------------------------------------------------------------- NaN logits in greedy generation


def _nan_at(bad_step: int, vocab: int = 7, eos_at: int | None = None):
    """A step function whose logits favour token (step % vocab), NaN at call ``bad_step``; eos_at: emit 0 there."""
    calls = []

    def step(ids, state):
        n = len(calls)
        calls.append(n)
        logits = torch.zeros(ids.shape[0], ids.shape[1], vocab)
        logits[:, -1, 1 + n % (vocab - 1)] = 1.0
        if eos_at is not None and n == eos_at:
            logits[:, -1, 0] = 5.0
        if n == bad_step:
            logits[:, -1, 3] = float("nan")
        return logits, state

    return step, calls


@pytest.mark.parametrize("every, steps_run", [(1, 6), (4, 8), (16, 10)])
def test_greedy_nan_raises_before_the_result(every, steps_run):
    step, calls = _nan_at(bad_step=5)  # the 6th step's logits hold a NaN
    with pytest.raises(ValueError, match="NaN"):
        generation.generate(step, torch.zeros(1, 2, dtype=torch.long), None, max_new_tokens=10, check_every=every)
    assert len(calls) == steps_run  # looked at after steps 4, 8 (every 4); only after the last (every 16)


def test_greedy_nan_checked_per_token_when_streaming():
    step, calls = _nan_at(bad_step=2)
    got = []
    with pytest.raises(ValueError, match="NaN"):
        for tok in generation.stream(step, torch.zeros(1, 2, dtype=torch.long), None, max_new_tokens=10):
            got.append(tok)
    assert [t for t, _ in got] == [1, 2] and len(calls) == 3


@pytest.mark.parametrize("bad_step", [3, 9])
def test_greedy_nan_raises_on_the_last_step_and_at_an_early_end(bad_step):
    step, _ = _nan_at(bad_step=bad_step)  # bad_step 9: the 10th and last token
    with pytest.raises(ValueError, match="NaN"):
        generation.generate(step, torch.zeros(1, 2, dtype=torch.long), None, max_new_tokens=10, check_every=16)
    step, calls = _nan_at(bad_step=3, eos_at=4)  # end-of-sequence at step 4, before a look-up was due
    with pytest.raises(ValueError, match="NaN"):
        generation.generate(step, torch.zeros(1, 2, dtype=torch.long), None, max_new_tokens=10, check_every=16,
                            eos_token_id=0)  # fmt: skip
    assert len(calls) == 5


def test_greedy_without_nan_is_unchanged_by_check_every():
    outs = []
    for every in (1, 16):
        step, _ = _nan_at(bad_step=-1)
        outs.append(generation.generate(step, torch.zeros(1, 2, dtype=torch.long), None, max_new_tokens=10,
                                        check_every=every))  # fmt: skip
    assert torch.equal(outs[0], outs[1]) and outs[0][0, 2:].tolist() == [1, 2, 3, 4, 5, 6, 1, 2, 3, 4]


# --------------------------------------------------------------------------- a vanishing temperature


@pytest.mark.parametrize("t", [1e-46, 1e-30, 5e-5])
def test_a_temperature_below_the_floor_is_greedy(t):
    """Below MIN_TEMPERATURE sampling is greedy; 1e-46 used to underflow to 0 in float32 and give NaN."""
    from archplay.models.sampling import MIN_TEMPERATURE, is_greedy

    logits = random_logits(3)
    s = staged_distribution(logits, t)
    assert t < MIN_TEMPERATURE and is_greedy(t) and not is_greedy(MIN_TEMPERATURE)
    assert not torch.isnan(s.final).any()
    assert s.kept.nonzero().flatten().tolist() == [int(logits.argmax())]
    assert float(s.final[logits.argmax()]) == 1.0 and s.temperature == 0.0


def test_generation_with_a_vanishing_temperature_is_greedy():
    from archplay.models.architectures.decoder import Decoder, DecoderConfig

    torch.manual_seed(0)
    model = Decoder(DecoderConfig.gpt2_tiny()).eval()
    ids = torch.tensor([[1, 2, 3]])
    greedy = model.generate(ids, max_new_tokens=6, temperature=0.0)
    assert torch.equal(model.generate(ids, max_new_tokens=6, temperature=1e-46, seed=3), greedy)
