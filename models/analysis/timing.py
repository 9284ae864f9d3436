"""Measured forward latency against input length: how attention's cost grows next to an SSM's.

``forward_latency`` times untraced forward passes (the fast path, no gradients) of random ids at
each length. A length beyond the model's context (a learned position table runs out) is timed
on a same-shaped copy with a longer context and random weights: the arithmetic, and so the time,
is the architecture's, not the weights'. Such points are flagged ``stretched``.

Timings here are for the page's chart; the benchmark suite (``bench/``) owns the reported numbers.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from archplay.models import registry

LENGTHS = (64, 128, 256, 512, 1024, 2048)
DECODER_STEPS = 16  # an encoder-decoder's timed pass: the source at the length, 16 target tokens


@dataclass
class Timing:
    length: int
    ms: float  # the median of the repeats
    stretched: bool  # timed on a same-shaped copy with a longer context


def stretched_copy(model: nn.Module, length: int) -> nn.Module:
    """The same architecture with room for ``length`` tokens and random weights (for timing only)."""
    cfg = dataclasses.replace(model.config, max_seq_len=length)
    param = next(model.parameters())
    return type(model)(cfg).to(device=param.device, dtype=param.dtype).eval()


@torch.inference_mode()
def time_forward(model: nn.Module, length: int, repeats: int = 3, seed: int = 0) -> float:
    """Median milliseconds of ``repeats`` untraced forward passes on ``length`` random ids (one warm-up)."""
    cfg = model.config
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (1, length), generator=gen).to(device)
    kwargs = {}
    if registry.of(model).objective == "translation":  # the decoder runs too, on a few target steps
        start = int(getattr(cfg, "decoder_start_token_id", 0) or 0)
        kwargs["decoder_input_ids"] = torch.full((1, DECODER_STEPS), start, dtype=torch.long, device=device)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model(ids, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first pass warms caches and allocators
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def forward_latency(model: nn.Module, lengths=LENGTHS, repeats: int = 3, stop=None) -> list[Timing]:
    """Forward latency at each length; beyond the context, on one stretched copy (see the module doc).

    ``stop()``, asked before each length, ends the measurement early (its caller has gone): the
    lengths measured so far are returned."""
    context = int(getattr(model.config, "max_seq_len", 0) or 0)
    longest = max(lengths)
    stretched = stretched_copy(model, longest) if longest > context else None
    out = []
    for n in sorted(lengths):
        if stop is not None and stop():
            break
        beyond = n > context
        out.append(Timing(n, time_forward(stretched if beyond else model, n, repeats), beyond))
    return out


def growth(timings: list[Timing]) -> float | None:
    """The fitted exponent b of ms ≈ a · length^b over the points from 512 up (1 = linear, 2 = quadratic)."""
    pts = [(t.length, t.ms) for t in timings if t.length >= 512 and t.ms > 0]
    if len(pts) < 2:
        return None
    xs = [torch.log(torch.tensor(float(n))) for n, _ in pts]
    ys = [torch.log(torch.tensor(ms)) for _, ms in pts]
    x, y = torch.stack(xs), torch.stack(ys)
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())
