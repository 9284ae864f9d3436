"""Measures used by the evaluation report: pure functions on ids, counts and attention maps.

Kept apart from ``archplay.models.training.evaluate`` (which runs the models on the corpus) so each can be
checked on hand-made inputs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor


def bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) with one reference per sentence, in [0, 1].

    Clipped n-gram precisions for n = 1..max_n pooled over the corpus, their geometric mean,
    times the brevity penalty exp(1 − r/c) when the hypotheses are shorter (c < r) in total.
    No smoothing: a corpus without any matching 4-gram scores 0, as in sacreBLEU's default.
    """
    if len(hypotheses) != len(references):
        raise ValueError("one reference per hypothesis")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, max_n + 1):
            h = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
            r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum(min(c, r[g]) for g, c in h.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def mutual_information(x: Sequence, y: Sequence) -> float:
    """I(X; Y) in bits from paired samples (plug-in estimate from the joint counts)."""
    if len(x) != len(y):
        raise ValueError("x and y must pair up")
    n = len(x)
    if n == 0:
        return 0.0
    joint, px, py = Counter(zip(x, y)), Counter(x), Counter(y)
    return sum(c / n * math.log2(c * n / (px[a] * py[b])) for (a, b), c in joint.items())


def entropy_bits(x: Sequence) -> float:
    """H(X) in bits of the empirical distribution of ``x``."""
    n = len(x)
    return -sum(c / n * math.log2(c / n) for c in Counter(x).values()) if n else 0.0


def head_hits(attentions: Sequence[Tensor], queries: Sequence[int], targets: Sequence[set[int]]) -> Tensor:
    """For every layer and head, how many queries put their largest weight on one of their targets.

    attentions: per layer (H, T, S) probabilities; queries: positions q; targets: for each q,
    the set of key positions that count as right. Returns (layers, H) integer counts.
    """
    hits = torch.zeros(len(attentions), attentions[0].shape[0], dtype=torch.long)
    if not queries:
        return hits
    q = torch.tensor(list(queries))
    for li, att in enumerate(attentions):
        best = att[:, q, :].argmax(-1)  # (H, Q): where each head looks hardest from each query
        for qi, allowed in enumerate(targets):
            hits[li] += torch.tensor([int(best[h, qi]) in allowed for h in range(att.shape[0])], dtype=torch.long)
    return hits


__all__ = ["bleu", "entropy_bits", "head_hits", "mutual_information"]
