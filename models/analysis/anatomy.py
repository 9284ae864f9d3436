"""Block anatomy: the parts of a model's blocks in order, with the live tensor shapes of an input,
and the residual stream: how much each layer adds to each token.

``anatomy(model, ids)`` returns the stacks (one; an encoder-decoder's two), each a list of
``Part``s from the embeddings through one block (repeated ``layers`` times) to the output, every
part with its input and output shape for this input (T tokens) and the view that opens it
(``"attention"``: attention step by step, ``"gate"``, ``"scan"``, ``"positions"``). Norm placement
(pre or post) decides where the norms sit. ``residual`` holds, per stack, the length of each
layer's contribution to each token (‖h_{l+1} − h_l‖) beside the length of the stream itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Part:
    name: str  # what a reader sees: "self-attention", "RMSNorm", "+ (residual add)"
    kind: str  # "embed" | "positions" | "norm" | "attention" | "cross-attention" | "mlp" | "experts" | "scan" | "add" | "head"
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]
    detail: str = ""  # one line: heads, widths, the activation
    view: str | None = None  # the view that opens this part: "attention", "gate", "scan", "positions"


@dataclass
class Stack:
    name: str  # "decoder", "encoder", "decoder (cross-attends to the encoder)"
    layers: int
    embed: list[Part] = field(default_factory=list)  # before the first block
    block: list[Part] = field(default_factory=list)  # one block, in order (repeated ``layers`` times)
    out: list[Part] = field(default_factory=list)  # after the last block
    contribution: Tensor | None = None  # (layers, T) ‖h_{l+1} − h_l‖ per token
    stream: Tensor | None = None  # (layers + 1, T) ‖h_l‖ per token


def _norm(cfg) -> str:
    return {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}.get(getattr(cfg, "norm", "rmsnorm"), "norm")


def _sublayer(parts: list[Part], post: bool, norm: str, mixer: Part) -> None:
    """x + f(norm(x)) (pre-norm) or norm(x + f(x)) (post-norm), appended to ``parts``."""
    shape = mixer.shape_in
    if not post:
        parts.append(Part(norm, "norm", shape, shape, "before the sublayer (pre-norm)"))
    parts.append(mixer)
    parts.append(Part("+ residual", "add", mixer.shape_out, mixer.shape_out, "the sublayer's output added to its input"))
    if post:
        parts.append(Part(norm, "norm", shape, shape, "after the add (post-norm)"))


def _attention(cfg, T: int, S: int, *, name: str = "self-attention", kind: str = "attention") -> Part:
    H, Hkv = cfg.n_head, getattr(cfg, "n_kv_head", None) or cfg.n_head
    Dh = getattr(cfg, "head_dim", None) or getattr(cfg, "d_kv", None) or cfg.d_model // H
    kv = "" if Hkv == H else (f", {Hkv} key/value heads (grouped-query)" if Hkv > 1 else ", 1 key/value head (multi-query)")
    detail = f"{H} heads × {Dh}{kv}: q (1, {H}, {T}, {Dh}), scores (1, {H}, {T}, {S})"
    return Part(name, kind, (1, T, cfg.d_model), (1, T, cfg.d_model), detail, view="attention")


def _ffn(cfg, T: int) -> Part:
    D = cfg.d_model
    if cfg.family == "moe":
        detail = f"router over {cfg.n_experts} experts, top-{cfg.top_k}; each expert {D} → {cfg.d_expert} → {D}"
        if getattr(cfg, "d_shared_expert", None):
            detail += f"; a shared expert of {cfg.d_shared_expert}"
        return Part("experts (sparse MoE)", "experts", (1, T, D), (1, T, D), detail, view="gate")
    width = getattr(cfg, "d_ff", None) or 4 * D
    gated = getattr(cfg, "mlp", "") == "gated" or getattr(cfg, "gated", False)
    act = getattr(cfg, "activation", None) or getattr(cfg, "ffn_activation", "")
    return Part("feed-forward", "mlp", (1, T, D), (1, T, D), f"{D} → {width} → {D}, {act}{' gated' if gated else ''}")


def _residual(hidden: list[Tensor] | None) -> tuple[Tensor | None, Tensor | None]:
    if not hidden:
        return None, None
    h = torch.stack([x[0].float() for x in hidden])  # (L+1, T, D)
    return (h[1:] - h[:-1]).norm(dim=-1).cpu(), h.norm(dim=-1).cpu()


@torch.inference_mode()
def anatomy(model: nn.Module, ids: Tensor, **model_kwargs) -> list[Stack]:
    """The model's stacks, their parts with this input's shapes, and the residual stream."""
    cfg = model.config
    T = ids.shape[1]
    D, V = cfg.d_model, cfg.vocab_size
    trace = model(ids, trace=True, **model_kwargs).trace
    embed = [Part("token embedding", "embed", (1, T), (1, T, D), f"{V:,} × {D} table")]
    if cfg.family == "ssm":
        block: list[Part] = []
        mixer = Part("selective scan (Mamba mixer)", "scan", (1, T, D), (1, T, D),
                     f"in_proj {D} → 2 × {cfg.d_inner}, conv {cfg.d_conv}, state {cfg.d_inner} × {cfg.d_state}, gate, "
                     f"out_proj → {D}", view="scan")  # fmt: skip
        if getattr(cfg, "version", 1) == 2:
            H, P, G, N = cfg.n_heads, cfg.head_dim, cfg.n_groups, cfg.d_state
            mixer = Part("state-space duality (Mamba-2 mixer)", "scan", (1, T, D), (1, T, D),
                         f"in_proj {D} → z {cfg.d_inner} + x·B·C {cfg.conv_dim} + Δ {H}, conv {cfg.d_conv} over x·B·C, "
                         f"{H} heads × {P} (scalar A each, state {P} × {N}), {G} B/C group{'s' if G > 1 else ''}, "
                         f"SSD chunks of {cfg.chunk_size}, gated RMSNorm, out_proj → {D}", view="scan")  # fmt: skip
        _sublayer(block, False, _norm(cfg), mixer)
        stack = Stack("scan stack", cfg.n_layer, embed, block)
        stack.out = [Part(_norm(cfg), "norm", (1, T, D), (1, T, D), "final"), Part("LM head", "head", (1, T, D), (1, T, V))]
        stack.contribution, stack.stream = _residual(trace.hidden_states)
        return [stack]
    post = bool(getattr(cfg, "post_norm", False))
    norm = _norm(cfg)
    if cfg.family == "encoder-decoder":
        return _encoder_decoder(cfg, trace, T, model_kwargs["decoder_input_ids"].shape[1], norm, post, embed)
    positions = getattr(cfg, "positions", "none")
    if positions in ("learned", "sinusoidal"):
        embed.append(Part(f"+ {positions} position embedding", "positions", (1, T), (1, T, D), view="positions"))
    elif positions != "none":
        embed.append(Part({"rotary": "rotary (q and k rotated)", "alibi": "ALiBi bias on the scores",
                           "relative": "relative position bias"}[positions], "positions", (T,), (T,), "inside attention",
                          view="positions"))  # fmt: skip
    causal = cfg.family != "encoder"
    if not causal:  # BERT normalises the embeddings (token + position + segment) before the first block
        embed.append(Part(f"{norm} of the embeddings", "norm", (1, T, D), (1, T, D)))
    block = []
    _sublayer(block, post, norm, _attention(cfg, T, T, name="causal self-attention" if causal else "self-attention"))
    _sublayer(block, post, norm, _ffn(cfg, T))
    stack = Stack("decoder" if causal else "encoder", cfg.n_layer, embed, block)
    head = "LM head" if causal else "masked-word head"
    stack.out = ([] if post else [Part(norm, "norm", (1, T, D), (1, T, D), "final")]) + [
        Part(head, "head", (1, T, D), (1, T, V))]
    stack.contribution, stack.stream = _residual(trace.hidden_states)
    return [stack]


def _encoder_decoder(cfg, trace, T: int, Td: int, norm: str, post: bool, embed: list[Part]) -> list[Stack]:
    """T5 (pre-norm RMSNorm, a relative position bias per stack) or BART (learned positions added to the
    scaled embeddings and normalised, post-norm LayerNorm blocks, no final norm)."""
    D, V = cfg.d_model, cfg.vocab_size
    enc_block: list[Part] = []
    _sublayer(enc_block, post, norm, _attention(cfg, T, T))
    _sublayer(enc_block, post, norm, _ffn(cfg, T))
    final = [] if post else [Part(norm, "norm", (1, T, D), (1, T, D), "final")]
    enc = Stack("encoder (reads the input both ways)", cfg.n_layer, embed, enc_block, final)
    enc.contribution, enc.stream = _residual(trace.hidden_states)
    dec_block: list[Part] = []
    _sublayer(dec_block, post, norm, _attention(cfg, Td, Td, name="causal self-attention"))
    _sublayer(dec_block, post, norm, _attention(cfg, Td, T, name="cross-attention (keys, values: the encoder)",
                                                kind="cross-attention"))  # fmt: skip
    _sublayer(dec_block, post, norm, _ffn(cfg, Td))
    shared = "token embedding (shared)" if cfg.share_embeddings else "token embedding (the decoder's own)"
    dec = Stack("decoder (writes the output)", cfg.n_decoder_layer, [Part(shared, "embed", (1, Td), (1, Td, D))],
                dec_block, ([] if post else [Part(norm, "norm", (1, Td, D), (1, Td, D), "final")])
                + [Part("LM head", "head", (1, Td, D), (1, Td, V))])  # fmt: skip
    dec.contribution, dec.stream = _residual(trace.decoder_hidden_states)
    if cfg.scale_embedding:
        for stack in (enc, dec):
            stack.embed[0].detail = (stack.embed[0].detail + ", " if stack.embed[0].detail else "") + "× √d_model"
    if cfg.positions == "learned":
        for stack, n in ((enc, T), (dec, Td)):
            offset = f", position p reads row p + {cfg.position_offset}" if cfg.position_offset else ""
            detail = f"its own table of {cfg.max_seq_len:,} positions{offset}"
            stack.embed.append(Part("+ learned position embedding", "positions", (1, n), (1, n, D), detail,
                                    view="positions"))  # fmt: skip
    else:
        enc.embed.append(Part("relative position bias (bidirectional buckets)", "positions", (T, T),
                              (cfg.n_head, T, T), "its own table, added to every encoder layer's scores",
                              view="positions"))  # fmt: skip
        dec.embed.append(Part("relative position bias (causal buckets)", "positions", (Td, Td),
                              (cfg.n_head, Td, Td), "its own table, added to every decoder self-attention's scores",
                              view="positions"))  # fmt: skip
    if cfg.embedding_norm:
        for stack, n in ((enc, T), (dec, Td)):
            stack.embed.append(Part(f"{norm} of the embeddings", "norm", (1, n, D), (1, n, D)))
    return [enc, dec]


__all__ = ["Part", "Stack", "anatomy"]
