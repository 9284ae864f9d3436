"""Positional encodings, each family's own, and what the position term does to one query's scores.

``encoding(model, n)`` describes how positions enter the model, with its numbers for the first
``n`` positions: a learned table (and how similar its rows are), the sinusoidal waves (Vaswani et
al.), RoPE's rotation frequency per dimension pair (and its wavelength in tokens), ALiBi's slope
per head, or T5's relative buckets as a bias per head (query × key); Mamba has none (order enters
through its causal convolution and scan). BART's learned tables (one per stack) start at row 2:
``table`` holds rows 2 .. n + 1, the ones positions 0 .. n - 1 read.

``effect(model, ids, layer, head, query)`` runs the same model twice, with and without its
position term (``layers.POSITIONS_OFF``: no embedding added, no rotation, no bias), and returns the
query's attention row both ways.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archplay.models.analysis.steps import attention_steps
from archplay.models.architectures.layers import (
    POSITIONS_OFF,
    RotaryEmbedding,
    alibi_bias,
    alibi_slopes,
    sinusoidal_positions,
)


@dataclass
class Encoding:
    kind: str  # "learned" | "sinusoidal" | "rotary" | "alibi" | "relative" | "none"
    n: int  # positions described
    table: Tensor | None = None  # (n, D) the vectors added to the token embeddings (learned, sinusoidal)
    similarity: Tensor | None = None  # (n, n) cosine similarity of those vectors
    inv_freq: Tensor | None = None  # (pairs,) rotary: the angle per position of each dimension pair (radians)
    wavelength: Tensor | None = None  # (pairs,) 2π / inv_freq, in tokens
    slopes: Tensor | None = None  # (H,) alibi: the penalty per token of distance, per head
    bias: Tensor | None = None  # (H, n, n) the score bias of the first n queries and keys (alibi, relative)
    note: str = ""  # one sentence on how positions enter
    offset: int = 0  # learned: the table row position 0 reads (BART: 2); ``table`` starts there
    decoder_table: Tensor | None = None  # (n, D) an encoder-decoder's second table, the decoder's (BART)
    local_inv_freq: Tensor | None = None  # (pairs,) rotary with a second base (Gemma 3, ModernBERT): the local layers'
    local_wavelength: Tensor | None = None  # (pairs,) 2π / local_inv_freq; inv_freq is then the global layers'
    unscaled_wavelength: Tensor | None = None  # (pairs,) rotary with a RoPE scaling: plain RoPE's at the same θ


def _kind(model: nn.Module) -> str:
    cfg = model.config
    if cfg.family == "ssm":
        return "none"
    return cfg.positions  # an encoder-decoder: "relative" (T5) or "learned" (BART)


def _cosine(table: Tensor) -> Tensor:
    t = F.normalize(table.float(), dim=-1)
    return t @ t.T  # (n, n)


NOTES = {
    "learned": "a learned vector per position is added to each token's embedding (GPT-2, BERT)",
    "sinusoidal": "fixed sine and cosine waves of geometric wavelengths are added to the embeddings "
                  "(Vaswani et al. 2017); the token embeddings are scaled by √d_model first",
    "rotary": "each query and key is rotated by an angle proportional to its position, a different speed per "
              "dimension pair (RoPE, Su et al. 2021): q·k then depends on the distance between them",
    "alibi": "a penalty proportional to the distance is added to each score, a different slope per head "
             "(ALiBi, Press et al. 2022)",
    "relative": "a learned bias per head and distance bucket is added to each score (T5's relative positions: "
                "exact buckets for short distances, logarithmic ones for long)",
    "none": "no position term: order enters only through the causal mask (or, in Mamba, the causal "
            "convolution and the scan's recurrence)",
}  # fmt: skip


@torch.inference_mode()
def encoding(model: nn.Module, n: int = 32) -> Encoding:
    """How positions enter ``model``, with the numbers for its first ``n`` positions."""
    cfg = model.config
    kind = _kind(model)
    n = max(1, min(int(n), getattr(cfg, "max_seq_len", n) or n))
    out = Encoding(kind=kind, n=n, note=NOTES[kind])
    pos = torch.arange(n)
    if kind == "learned" and cfg.family == "encoder-decoder":  # BART: a table per stack, from row position_offset
        out.offset = cfg.position_offset
        rows = slice(out.offset, out.offset + n)
        out.table = model.encoder.embed_positions.weight[rows].detach().float().cpu()
        out.decoder_table = model.decoder.embed_positions.weight[rows].detach().float().cpu()
        out.note += "; here one table per stack (encoder, decoder)"
        if out.offset:
            out.note += (f", position p reading row p + {out.offset} (BART: fairseq's offset; the first rows are "
                         "never read)")  # fmt: skip
    elif kind == "learned":  # RoBERTa / XLM-R read from row position_offset (padding_idx + 1) on; OPT from row 2
        out.offset = int(getattr(cfg, "position_offset", 0) or 0)
        out.table = model.embed_positions.weight[out.offset : out.offset + n].detach().float().cpu()
        if out.offset and cfg.family != "encoder":  # OPT's decoder
            out.note += (f"; position p reads row p + {out.offset} (OPT: an offset of {out.offset} from fairseq; the "
                         "first rows are never read)")  # fmt: skip
        elif out.offset:
            out.note += (f"; position p reads row p + {out.offset} (RoBERTa: counted from padding_idx + 1; the first "
                         "rows are never read)")  # fmt: skip
    elif kind == "sinusoidal":
        out.table = sinusoidal_positions(n, cfg.d_model).float()
    elif kind == "rotary":
        inv = model.rotary.frequencies(n).float().cpu()  # (pairs,) as a text of n tokens rotates (scalings)
        out.inv_freq, out.wavelength = inv, 2 * math.pi / inv
        out.note += _scaling_note(model.rotary, n)
        if model.rotary.kind != "default":
            plain = RotaryEmbedding(model.rotary.rot_dim, model.rotary.theta).inv_freq  # (pairs,)
            out.unscaled_wavelength = 2 * math.pi / plain
        local = getattr(model, "rotary_local", None)
        if local is not None:  # two bases: global layers rotate with inv_freq, local (windowed) ones with their own
            out.local_inv_freq = local.inv_freq.float().cpu()
            out.local_wavelength = 2 * math.pi / out.local_inv_freq
            out.note += (f"; two bases here: global layers θ = {cfg.rope_theta:g}, local (windowed) layers "
                         f"θ = {cfg.rope_local_theta:g}")  # fmt: skip
    elif kind == "alibi":
        out.slopes = alibi_slopes(cfg.n_head).float()
        out.bias = alibi_bias(out.slopes, pos, pos)[0].float()  # (H, n, n), as the model adds it
    elif kind == "relative":
        out.bias = _relative_bias(model, pos)
    if out.table is not None:
        out.similarity = _cosine(out.table)
    return out


def _scaling_note(rotary: nn.Module, n: int) -> str:
    """What a RoPE scaling does to the wavelengths drawn ("" for plain RoPE)."""
    kind, p, at = rotary.kind, rotary.scaling, rotary.switch_at
    factor = f" {p['factor']:g}" if p.get("factor") else ""
    if kind == "default":
        return ""
    if kind == "linear":
        text = f"; linear scaling: every wavelength stretched by{factor}"
    elif kind == "llama3":
        text = f"; llama3 scaling: long wavelengths stretched by{factor}, short ones kept, a blend between"
    elif kind == "yarn":
        text = f"; yarn scaling: long wavelengths stretched by{factor}, short ones kept, a ramp between"
    elif kind == "longrope":
        text = (f"; longrope scaling: a stretch per pair, one set up to {at} tokens, another beyond (drawn: "
                f"the {'long' if n > at else 'short'} set, for {n} tokens)")  # fmt: skip
    else:  # dynamic
        text = f"; dynamic scaling: the base θ grows once a text passes {at} tokens"
    if rotary.attention_factor != 1.0:
        text += f"; cos and sin × {rotary.attention_factor:.3g}"
    return text


def _relative_bias(model: nn.Module, pos: Tensor) -> Tensor:
    """(H, n, n) the relative-position bias the model adds to its (first) attention's scores."""
    from archplay.models.architectures.layers import relative_position_bias

    cfg = model.config
    if cfg.family == "encoder-decoder":
        from archplay.models.architectures.encoder_decoder import position_bias

        table = model.encoder.relative_attention_bias
        return position_bias(table, pos, pos, bidirectional=True, cfg=cfg)[0].float().cpu()
    bidirectional = cfg.family == "encoder"
    return relative_position_bias(model.relative_attention_bias, pos, pos, bidirectional=bidirectional,
                                  max_distance=cfg.relative_max_distance)[0].float().cpu()  # fmt: skip


@contextmanager
def positions_off():
    """Inside: this thread's forward passes run without the position term."""
    token = POSITIONS_OFF.set(True)
    try:
        yield
    finally:
        POSITIONS_OFF.reset(token)


@dataclass
class Effect:
    kind: str
    with_positions: Tensor  # (S,) the query's attention weights, as the model computes them
    without_positions: Tensor  # (S,) the same model with its position term switched off
    logits_with: Tensor  # (S,) what the softmax saw
    logits_without: Tensor


def effect(model: nn.Module, ids: Tensor, layer: int, head: int, query: int, kind: str = "self",
           **model_kwargs) -> Effect:  # fmt: skip
    """One query's attention with and without the model's position term (see the module doc)."""
    on = attention_steps(model, ids, layer, head, query, kind=kind, **model_kwargs)
    with positions_off():
        off = attention_steps(model, ids, layer, head, query, kind=kind, **model_kwargs)
    return Effect(kind=_kind(model), with_positions=on.weights, without_positions=off.weights,
                  logits_with=on.logits, logits_without=off.logits)  # fmt: skip


__all__ = ["NOTES", "Effect", "Encoding", "effect", "encoding", "positions_off"]
