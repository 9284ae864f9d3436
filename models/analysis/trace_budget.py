"""How many tokens a traced run of a model may read, so that what it returns stays a bounded size.

A traced forward pass returns, per layer, attention maps that grow with the square of the length
(layers × heads × T² floats) and hidden states that grow with it (layers × T × D), plus the logits
(T × V). ``Trace.detach`` keeps them as float32, and the model holds its own copies while it runs,
so the peak is about twice that. For GPT-2 (12 × 12) 512 tokens come to about 275 MB; for a 7 B
Llama (32 × 32, D 4,096) about 1.4 GB. ``trace_cap`` returns the longest run that fits
``TRACE_BUDGET`` bytes and a sentence the page shows when it cuts a text shorter than its own limit.

Which trace fields a family fills is its registry entry's word (``Family.trace_fields``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from archplay.models import registry

TRACE_BUDGET = 384 << 20  # bytes of float32 trace per run: GPT-2 keeps its 512 tokens, a 7 B model ~140
FLOAT = 4  # bytes: Trace.detach keeps float32


@dataclass(frozen=True)
class TraceCap:
    tokens: int  # the most tokens a traced run reads (at most the ``limit`` asked about)
    message: str  # why, when the budget is what cuts ("" when the limit was not lowered)
    bytes_at_cap: int  # what a run of ``tokens`` returns, about


def trace_sizes(config) -> tuple[int, int]:
    """(floats per T², floats per token) of a traced run of a model with ``config`` (batch 1)."""
    fields = set(registry.get(config.family).trace_fields)
    layers, heads = int(getattr(config, "n_layer", 0)), int(getattr(config, "n_head", 0) or 0)
    dec_layers = int(getattr(config, "n_decoder_layer", 0) or layers)
    d_model = int(getattr(config, "d_model", 0))
    flags = getattr(config, "attn_layers", None)  # a hybrid (Jamba): attention maps in these layers, a scan in the others
    attending = layers if flags is None else sum(flags)
    scanning = layers if flags is None else layers - attending
    square = 0
    if "attentions" in fields:
        square += attending * heads  # (H, T, T) per (attention) layer
    if "decoder_attentions" in fields:
        square += dec_layers * heads
    if "cross_attentions" in fields:
        square += dec_layers * heads  # (H, T_dec, T_enc), the decoder about as long as its source
    if "ssm_attention" in fields:
        square += scanning  # one (T, T) map per (Mamba) layer, the mean over channels
    linear = int(getattr(config, "vocab_size", 0))  # the logits
    if "hidden_states" in fields:
        linear += (layers + 1) * d_model
    if "decoder_hidden_states" in fields:
        linear += (dec_layers + 1) * d_model
    if "ssm_delta" in fields:
        linear += scanning * int(getattr(config, "d_inner", 0) or 0)
    if "router_logits" in fields:
        linear += layers * int(getattr(config, "n_experts", 0) or 0)
    return square, linear


def trace_bytes(config, tokens: int) -> int:
    """About how many bytes a traced run of ``tokens`` tokens returns (float32, batch 1)."""
    square, linear = trace_sizes(config)
    return FLOAT * (square * tokens * tokens + linear * tokens)


def trace_cap(config, limit: int, budget: int = TRACE_BUDGET) -> TraceCap:
    """The most tokens (at most ``limit``, the page's own cap) a traced run of a model with ``config``
    may read so that it returns at most ``budget`` bytes, with the page's sentence when that is below ``limit``."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if trace_bytes(config, limit) <= budget:
        return TraceCap(limit, "", trace_bytes(config, limit))
    square, linear = trace_sizes(config)
    a, b = FLOAT * square, FLOAT * linear  # a T² + b T <= budget
    tokens = int((-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)) if a else budget // max(b, 1)
    while tokens > 1 and trace_bytes(config, tokens) > budget:  # the square root's rounding
        tokens -= 1
    tokens = max(1, min(limit, tokens))
    layers, heads = int(getattr(config, "n_layer", 0)), int(getattr(config, "n_head", 0) or 0)
    shape = f"{layers} layers × {heads} heads" if heads else f"{layers} layers"
    message = (f"This model is large ({shape}): a traced Run reads at most {tokens:,} tokens, so that its attention "
               f"maps and hidden states stay under {budget / 2**20:,.0f} MB ({limit:,} tokens would take "
               f"{trace_bytes(config, limit) / 2**20:,.0f} MB).")  # fmt: skip
    return TraceCap(tokens, message, trace_bytes(config, tokens))


__all__ = ["TRACE_BUDGET", "TraceCap", "trace_bytes", "trace_cap", "trace_sizes"]
