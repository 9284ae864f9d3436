"""Autoregressive generation shared by the families that generate.

A family supplies one function, ``step(ids, state) -> (logits (B, T, V), state)``: it runs
the new tokens ``ids`` given what it remembers of the prefix (a KV cache for attention
models, the conv and SSM state for state-space models) and returns the next state. The
prefix is therefore computed once; each new token costs one step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from archplay.models.sampling import check_settings, is_greedy, staged_distribution

Step = Callable[[Tensor, object], tuple[Tensor, object]]


def _check(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    check_settings(temperature, top_k, top_p)


def iterate(
    step: Step,
    ids: Tensor,
    state: object,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | None = None,
    check_every: int = 1,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (next ids (B,), their probability under the final distribution (B,)) per new token.

    Stops after ``max_new_tokens`` or once every row has produced ``eos_token_id``; rows
    that finished earlier keep producing ``eos_token_id``.

    Greedy decoding raises ``ValueError`` on NaN logits. Looking costs a device-to-host sync,
    which on a GPU stalls the queue of launched kernels at every token: ``check_every`` > 1
    looks once per that many tokens (and after the last), so the error comes at most that
    many tokens late, always before the caller has the whole result.
    """
    _check(max_new_tokens, temperature, top_k, top_p)
    if max_new_tokens == 0:
        return
    gen = torch.Generator(device=ids.device).manual_seed(seed)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    nan_seen = None  # greedy: whether any step's logits held a NaN, not yet looked at
    certain = torch.ones(ids.shape[0], device=ids.device)  # a greedy pick's probability (B,)
    new = ids
    for i in range(max_new_tokens):
        logits, state = step(new, state)
        last = logits[:, -1, :].float()  # (B, V)
        if is_greedy(temperature):  # the argmax, whose final probability is 1 (a one-hot)
            bad = torch.isnan(last).any()
            nan_seen = bad if nan_seen is None else nan_seen | bad
            if (i + 1) % check_every == 0 or i + 1 == max_new_tokens:
                if nan_seen:
                    raise ValueError("the model produced NaN logits")
                nan_seen = None
            nxt, prob = last.argmax(-1), certain  # (B,), (B,)
        else:  # one pass through the stages serves both the draw and its probability
            final = staged_distribution(last, temperature, top_k, top_p).final  # (B, V)
            nxt = torch.multinomial(final, 1, generator=gen)[:, 0]  # (B,)
            prob = final.gather(-1, nxt[:, None])[:, 0]  # (B,)
        if eos_token_id is not None:
            nxt = nxt.masked_fill(done, eos_token_id)
            done |= nxt == eos_token_id
        if eos_token_id is not None and bool(done.all()):
            if nan_seen is not None and nan_seen:
                raise ValueError("the model produced NaN logits")
            yield nxt, prob
            return
        yield nxt, prob
        new = nxt[:, None]  # (B, 1)


GPU_CHECK_EVERY = 16  # greedy NaN look-ups on a GPU: once per this many tokens (see ``iterate``)


def generate(step: Step, ids: Tensor, state: object, **kwargs) -> Tensor:
    """All new tokens appended to ``ids``: (B, T + new)."""
    out = [ids]
    kwargs.setdefault("check_every", 1 if ids.device.type == "cpu" else GPU_CHECK_EVERY)  # a sync is free on a CPU
    with torch.inference_mode():
        for nxt, _ in iterate(step, ids, state, **kwargs):
            out.append(nxt[:, None])
    return torch.cat(out, dim=1)


def stream(step: Step, ids: Tensor, state: object, **kwargs) -> Iterator[tuple[int, float]]:
    """Batch-1 generation, one (token id, probability) at a time, for the page to stream."""
    if ids.shape[0] != 1:
        raise ValueError("streaming generation takes one sequence at a time")
    steps = iterate(step, ids, state, **kwargs)
    while True:
        # Inference mode is per thread, and a server may resume this generator on another thread
        # at each token: so it is entered around each step, never held across a yield.
        with torch.inference_mode():
            try:
                nxt, prob = next(steps)
            except StopIteration:
                return
        yield int(nxt[0]), float(prob[0])
