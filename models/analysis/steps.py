"""Attention, step by step: one head's computation for one query token, with the model's own numbers.

    x ─► q = W_q x ─(rotary)─► q ─┐                       (Gemma 2: ─► cap·tanh(·/cap))
                                  ├─► scores = q·k_j ─► × scale ─► + bias_j ─► mask ─► softmax ─► weights
    x_j ─► k = W_k x_j ─(rotary)─┘                                                                   │
    x_j ─► v = W_v x_j ───────────────────────────────────────────────────────────► out = Σ_j w_j v_j
    out ─► W_o[:, head] out  (this head's share of the output projection) ─► + the other heads ─► + x

``attention_steps`` runs the model once with a tap on the chosen attention module
(``layers.ATTENTION_TAPS``) and reads the numbers the forward pass itself used: nothing is
recomputed from weights except what the tap cannot see (the head's share of ``W_o``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from archplay.models.architectures.layers import ATTENTION_TAPS, AttentionTap, soft_cap

KINDS = ("self", "decoder", "cross")


@dataclass
class AttentionSteps:
    """One head, one query: every number on the way from q and k to the head's output."""

    layer: int
    head: int
    query: int  # the query's position (in the decoder's tokens for "decoder" and "cross")
    kind: str  # "self" | "decoder" | "cross"
    q: Tensor  # (Dh,) the query vector, after any rotation
    k: Tensor  # (S, Dh) every key, after any rotation
    v: Tensor  # (S, Dh) every value (DeepSeek's latent attention: (S, v_head_dim), its values' own width)
    scores: Tensor  # (S,) q·k, unscaled
    scale: float  # the factor on the scores (1/√Dh for most models; 1 for T5)
    bias: Tensor  # (S,) the position term added to the scaled scores (ALiBi, T5's relative buckets); zeros if none
    mask: Tensor  # (S,) bool, True = may attend
    weights: Tensor  # (S,) softmax(scores·scale + bias, masked); with softcap: cap·tanh(scores·scale/cap) + bias
    out: Tensor  # (Dh,) weights @ v
    q_before: Tensor | None  # (Dh,) before the rotation (rotary positions); None otherwise
    k_before: Tensor | None  # (S, Dh)
    kv_head: int  # the key/value head this query head reads (grouped-query attention)
    group: list[int]  # the query heads that share that key/value head (itself included)
    x: Tensor  # (D,) the module's input at the query (after the block's norm)
    head_output: Tensor  # (D,) this head's share of the output projection: W_o[:, head] @ out
    attention_output: Tensor  # (D,) the whole attention output at the query (every head, W_o's bias)
    residual_in: Tensor | None  # (D,) the block's input at the query (the residual stream), self/decoder kinds
    residual_out: Tensor | None  # (D,) residual_in + attention_output (pre-norm; None when a norm comes after)
    softcap: float | None = None  # Gemma 2: the scaled scores become cap·tanh(scores·scale/cap) before the bias

    @property
    def scaled(self) -> Tensor:
        """(S,) the scores times the scale, soft-capped when the model caps them."""
        z = self.scores * self.scale
        return z if self.softcap is None else soft_cap(z, self.softcap)

    @property
    def logits(self) -> Tensor:
        """(S,) what the softmax sees: scores·scale (capped) + bias, −inf where masked."""
        return (self.scaled + self.bias).masked_fill(~self.mask, float("-inf"))


def attention_modules(model: nn.Module, kind: str = "self") -> list[nn.Module]:
    """The model's attention modules of ``kind``, one per layer. ValueError when it has none of that kind.

    "self": the self-attention of a decoder, encoder or mixture of experts, or an encoder-decoder's
    encoder; "decoder": an encoder-decoder's decoder self-attention; "cross": its cross-attention."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    family = model.config.family
    if family == "ssm":
        raise ValueError("a state-space model (Mamba) has no attention: its scan is shown by the scan's own view")
    if family == "encoder-decoder":
        if kind == "self":
            return [layer.attn for layer in model.encoder.layers]
        stack = model.decoder.layers
        return [layer.attn if kind == "decoder" else layer.cross_attn for layer in stack]
    if kind != "self":
        raise ValueError(f"kind {kind!r} is for encoder-decoder models; this is a {family} model: use 'self'")
    # a hybrid (Jamba): its attention layers only, numbered as its trace's attentions (the Mamba layers have none)
    return [layer.attn for layer in model.layers if hasattr(layer, "attn")]


def _hidden(trace, kind: str) -> list[Tensor] | None:
    return trace.decoder_hidden_states if kind in ("decoder", "cross") else trace.hidden_states


def _check(name: str, value: int, n: int) -> int:
    value = int(value)
    if not 0 <= value < n:
        raise ValueError(f"{name} {value} is out of range: this model has {n} (0 to {n - 1})")
    return value


@torch.inference_mode()
def attention_steps(model: nn.Module, ids: Tensor, layer: int, head: int, query: int, kind: str = "self",
                    **model_kwargs) -> AttentionSteps:  # fmt: skip
    """One head's attention for one query, with the numbers the model's forward pass used.

    ``ids`` (1, T); for encoder-decoders pass ``decoder_input_ids=`` as to ``model(...)`` ("self" is then
    the encoder's self-attention, "decoder" the decoder's, "cross" the decoder attending to the encoder)."""
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError("give one sequence: ids of shape (1, T)")
    modules = attention_modules(model, kind)
    layer = _check("layer", layer, len(modules))
    module = modules[layer]
    head = _check("head", head, module.n_head)
    got: list[AttentionTap] = []
    token = ATTENTION_TAPS.set({module: got.append})
    try:
        out = model(ids, trace=True, **model_kwargs)
    finally:
        ATTENTION_TAPS.reset(token)
    if len(got) != 1:
        raise RuntimeError(f"the tapped attention module ran {len(got)} times in one forward pass")
    tap = got[0]
    T = tap.q.shape[2]
    query = _check("query", query, T)
    kv_head = head // (module.n_head // module.n_kv_head)
    group = [h for h in range(module.n_head) if h // (module.n_head // module.n_kv_head) == kv_head]
    q = tap.q[0, head, query].float()  # (Dh,)
    k = tap.k[0, kv_head].float()  # (S, Dh)
    v = tap.v[0, kv_head].float()
    S = k.shape[0]
    mask = torch.ones(S, dtype=torch.bool) if tap.mask is None else tap.mask.expand(1, module.n_head, T, S)[0, head, query].cpu()
    bias = torch.zeros(S) if tap.bias is None else tap.bias.float().expand(1, module.n_head, T, S)[0, head, query].cpu()
    scores = (k @ q).cpu()  # (S,) unscaled
    scaled = scores * module.scale
    if tap.softcap is not None:  # Gemma 2: cap·tanh(·/cap), as the forward pass did
        scaled = soft_cap(scaled, tap.softcap)
    logits = (scaled + bias).masked_fill(~mask, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)  # a query that may see nothing: zeros
    o = weights.to(v.device) @ v  # (Dh,)
    Dh = module.head_dim
    w_o = module.o_proj.weight[:, head * Dh : (head + 1) * Dh].float()  # (D, Dh)
    head_output = (w_o @ o).cpu()
    attention_output = tap.output[0, query].float().cpu()
    residual_in = residual_out = None
    hidden = _hidden(out.trace, kind) if kind != "cross" else None
    if hidden is not None:
        residual_in = hidden[layer][0, query].float().cpu()
        normed_after = getattr(model.config, "sandwich_norm", False) or getattr(model.config, "reordered_norm", False)
        if not getattr(model.config, "post_norm", False) and not normed_after:
            residual_out = residual_in + attention_output  # a sandwich (or OLMo 2's) norm normalises the output first
    return AttentionSteps(
        layer=layer, head=head, query=query, kind=kind, q=q.cpu(), k=k.cpu(), v=v.cpu(), scores=scores,
        scale=float(module.scale), bias=bias, mask=mask, weights=weights, out=o.cpu(),
        q_before=None if tap.q_before is None else tap.q_before[0, head, query].float().cpu(),
        k_before=None if tap.k_before is None else tap.k_before[0, kv_head].float().cpu(),
        kv_head=kv_head, group=group, x=tap.x[0, query].float().cpu(), head_output=head_output,
        attention_output=attention_output, residual_in=residual_in, residual_out=residual_out, softcap=tap.softcap,
    )  # fmt: skip


__all__ = ["KINDS", "AttentionSteps", "attention_modules", "attention_steps"]
