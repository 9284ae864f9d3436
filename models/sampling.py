"""Next-token sampling in explicit stages: raw → temperature → top-k → top-p → renormalised.

Same order and meaning as transformers' TemperatureLogitsWarper → TopKLogitsWarper →
TopPLogitsWarper (each keeping at least one token):

* temperature T: logits / T. T = 0 means greedy: all mass on the argmax. So does any T below
  ``MIN_TEMPERATURE`` (1e-4): dividing by a vanishing T overflows to NaN, and long before that
  the tempered distribution is the argmax to float precision (``is_greedy``).
* top-k: keep tokens whose tempered logit is >= the k-th largest (ties at the boundary stay).
  k = 0 switches the stage off; k above the vocabulary keeps everything.
* top-p (nucleus): sort ascending, drop the tokens whose cumulative probability is <= 1 - p;
  the most likely token always stays. p = 1 switches the stage off.

Everything here works on a last axis of vocabulary size, with any leading batch axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MIN_TEMPERATURE = 1e-4  # below it (0 included), sampling is greedy


def is_greedy(temperature: float) -> bool:
    """Whether ``temperature`` (already checked) means greedy: 0, or a positive number below ``MIN_TEMPERATURE``."""
    return temperature < MIN_TEMPERATURE


@dataclass
class StagedDistribution:
    raw: Tensor  # (..., V) softmax of the logits
    tempered: Tensor  # (..., V) softmax of logits / T
    final: Tensor  # (..., V) tempered, restricted to the kept set and renormalised
    kept: Tensor  # (..., V) bool: the tokens that can still be sampled
    temperature: float
    top_k: int
    top_p: float

    @property
    def entropy(self) -> Tensor:
        """Entropy of the final distribution in nats, (...)."""
        return entropy(self.final)

    @property
    def raw_entropy(self) -> Tensor:
        """Entropy of the model's own distribution (before any setting) in nats, (...)."""
        return entropy(self.raw)


def entropy(p: Tensor) -> Tensor:
    """Shannon entropy in nats over the last axis; zero-probability tokens contribute nothing."""
    p = p.float()
    return -(p * torch.log(p.clamp_min(1e-45))).where(p > 0, torch.zeros_like(p)).sum(-1)


def check_settings(temperature: float, top_k: int, top_p: float) -> None:
    """Raise ValueError with a plain message for settings outside their ranges."""
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be a whole number >= 0 (0 = off), got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")


def staged_distribution(
    logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> StagedDistribution:
    """Every stage of the sampling pipeline for ``logits`` (..., V). See the module docstring."""
    if isinstance(top_k, float) and top_k.is_integer():
        top_k = int(top_k)
    check_settings(temperature, top_k, top_p)
    logits = logits.detach().float()
    if torch.isnan(logits).any():
        raise ValueError("the model produced NaN logits")
    # Shifting by the max changes no probability and keeps tiny temperatures from overflowing.
    shifted = logits - logits.amax(-1, keepdim=True)  # (..., V), max 0
    raw = torch.softmax(shifted, dim=-1)

    if is_greedy(temperature):  # a one-hot on the argmax (the first, on ties)
        kept = torch.zeros_like(logits, dtype=torch.bool)
        kept.scatter_(-1, logits.argmax(-1, keepdim=True), True)
        onehot = kept.float()
        return StagedDistribution(raw, onehot, onehot.clone(), kept, 0.0, top_k, top_p)

    scores = shifted / temperature  # (..., V)
    tempered = torch.softmax(scores, dim=-1)
    kept = torch.isfinite(scores)

    vocab = scores.shape[-1]
    if top_k > 0 and top_k < vocab:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest
        kept &= scores >= kth
    if top_p < 1.0:
        masked = scores.masked_fill(~kept, float("-inf"))
        sorted_scores, order = torch.sort(masked, dim=-1, descending=False)
        cum = torch.softmax(sorted_scores, dim=-1).cumsum(-1)  # ascending cumulative mass
        drop_sorted = cum <= (1 - top_p)
        drop_sorted[..., -1] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        kept &= ~drop

    final = torch.softmax(scores.masked_fill(~kept, float("-inf")), dim=-1)
    return StagedDistribution(raw, tempered, final, kept, float(temperature), top_k, float(top_p))


def sample_many(probs: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` independent draws from one distribution (V,) (e.g. ``staged_distribution(...).final``)
    -> (n,) ids; same seed, same draws."""
    gen = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs.cpu(), n, replacement=True, generator=gen)
