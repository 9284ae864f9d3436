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
    parallel: bool = False  # the block's attention and feed-forward both read its input, one add (GPT-NeoX, GPT-J, Phi)


def _norm(cfg) -> str:
    return {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}.get(getattr(cfg, "norm", "rmsnorm"), "norm")


PRE_NORM = "before the sublayer (pre-norm)"


def _sublayer(parts: list[Part], post: bool, norm: str, mixer: Part, before: str | None = PRE_NORM,
              after: str | None = None) -> None:  # fmt: skip
    """x + f(norm(x)) (pre-norm) or norm(x + f(x)) (post-norm), appended to ``parts``. ``before`` None: no pre-norm
    (OLMo 2); ``after``: a norm on the sublayer's output before the add (Gemma's sandwich, OLMo 2), its detail."""
    shape = mixer.shape_in
    if not post and before:
        parts.append(Part(norm, "norm", shape, shape, before))
    parts.append(mixer)
    if after:
        parts.append(Part(norm, "norm", shape, shape, after))
    parts.append(Part("+ residual", "add", mixer.shape_out, mixer.shape_out, "the sublayer's output added to its input"))
    if post:
        parts.append(Part(norm, "norm", shape, shape, "after the add (post-norm)"))


def _attention(cfg, T: int, S: int, *, name: str = "self-attention", kind: str = "attention") -> Part:
    H, Hkv = cfg.n_head, getattr(cfg, "n_kv_head", None) or cfg.n_head
    Dh = getattr(cfg, "head_dim", None) or getattr(cfg, "d_kv", None) or cfg.d_model // H
    kv = "" if Hkv == H else (f", {Hkv} key/value heads (grouped-query)" if Hkv > 1 else ", 1 key/value head (multi-query)")
    detail = f"{H} heads × {Dh}{kv}: q (1, {H}, {T}, {Dh}), scores (1, {H}, {T}, {S})"
    if (r := getattr(cfg, "kv_lora_rank", None)) is not None:  # DeepSeek: keys and values from a cached latent
        rope, Dv = cfg.qk_rope_head_dim, cfg.v_head_dim
        name = "latent attention (MLA)"
        detail = (f"latent (1, {T}, {r}) + rope key (1, {T}, {rope}) cached → per head k (1, {H}, {S}, {Dh}) = "
                  f"{Dh - rope} nope + {rope} rope, v (1, {H}, {S}, {Dv}); scores (1, {H}, {T}, {S})")  # fmt: skip
    return Part(name, kind, (1, T, cfg.d_model), (1, T, cfg.d_model), detail, view="attention")


def _ffn(cfg, T: int) -> Part:
    D = cfg.d_model
    if cfg.family == "moe":
        detail = f"router over {cfg.n_experts} experts, top-{cfg.top_k}; each expert {D} → {cfg.d_expert} → {D}"
        if getattr(cfg, "router_score", "softmax") == "sigmoid":  # DeepSeek-V3
            groups = f" in {cfg.n_group} groups, the best {cfg.topk_group} kept," if cfg.n_group > 1 else ""
            detail = (f"sigmoid router over {cfg.n_experts} experts,{groups} top-{cfg.top_k}; each expert {D} → "
                      f"{cfg.d_expert} → {D}")  # fmt: skip
        elif getattr(cfg, "n_group", 1) > 1:  # DeepSeek-V2
            detail = (f"router over {cfg.n_experts} experts in {cfg.n_group} groups, the best {cfg.topk_group} kept, "
                      f"top-{cfg.top_k}; each expert {D} → {cfg.d_expert} → {D}")  # fmt: skip
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
    E = getattr(cfg, "embed_dim", None)
    if E not in (None, D):  # OPT-350m: a narrower table, projected in (and out again before the head)
        embed[0].detail = f"{V:,} × {E} table, projected in to {D} (and out to {E} before the LM head)"
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
    attention = _attention(cfg, T, T, name="causal self-attention" if causal else "self-attention")
    ffn = _ffn(cfg, T)
    if getattr(cfg, "attn_layers", None) is not None:  # a hybrid (Jamba): the layers differ, each part says where
        attention, ffn = _hybrid_parts(cfg, attention, T)
    parallel = bool(getattr(cfg, "parallel_residual", False))
    if parallel:
        _parallel(block, cfg, norm, attention, ffn)
    else:
        _sublayer(block, post, norm, attention, **_norms_around(cfg, attention=True))
        _sublayer(block, post, norm, ffn, **_norms_around(cfg))
    stack = Stack("decoder" if causal else "encoder", cfg.n_layer, embed, block, parallel=parallel)
    head = "LM head" if causal else "masked-word head"
    stack.out = ([] if post else [Part(norm, "norm", (1, T, D), (1, T, D), "final")]) + [
        Part(head, "head", (1, T, D), (1, T, V))]
    stack.contribution, stack.stream = _residual(trace.hidden_states)
    return [stack]


def _hybrid_parts(cfg, attention: Part, T: int) -> tuple[Part, Part]:
    """A hybrid's block (Jamba): its mixer is attention in some layers and Mamba's scan in the others, its
    feed-forward sparse experts in some and a dense MLP in the others; each part names the layers of each."""
    D = cfg.d_model

    def where(flags: list[bool], on: bool) -> str:
        layers = [str(i) for i, f in enumerate(flags) if f == on]
        return ("layer " if len(layers) == 1 else "layers ") + ", ".join(layers) if layers else "no layer"

    scan = (f"in_proj {D} → 2 × {cfg.d_inner}, conv {cfg.d_conv}, RMSNorms on Δ, B, C, state {cfg.d_inner} × "
            f"{cfg.d_state}, gate, out_proj → {D}")  # fmt: skip
    mixer = Part(f"attention ({where(cfg.attn_layers, True)}) or Mamba scan ({where(cfg.attn_layers, False)})",
                 "attention", (1, T, D), (1, T, D), f"attention: {attention.detail}, no positions (NoPE); scan: {scan}",
                 view="attention")  # fmt: skip
    ffn = Part(f"experts ({where(cfg.moe_layers, True)}) or feed-forward ({where(cfg.moe_layers, False)})", "experts",
               (1, T, D), (1, T, D), f"router over {cfg.n_experts} experts, top-{cfg.top_k}, each {D} → {cfg.d_expert} → "
               f"{D}; dense: {D} → {cfg.d_ff} → {D}", view="gate")  # fmt: skip
    return mixer, ffn


def _norms_around(cfg, attention: bool = False) -> dict:
    """Where a pre-norm block's norms sit around a sublayer: OLMo 2's reordered norm (only after), Gemma's sandwich
    (before and after), ModernBERT's first layer (no norm before its attention)."""
    if getattr(cfg, "reordered_norm", False):
        return dict(before=None, after="after the sublayer, before the add (OLMo 2: no norm before it)")
    before = PRE_NORM
    if attention and not getattr(cfg, "first_attn_norm", True):
        before += "; none in layer 0, which reads the normed embeddings (ModernBERT)"
    after = "after the sublayer, before the add (sandwich norm)" if getattr(cfg, "sandwich_norm", False) else None
    return dict(before=before, after=after)


def _parallel(parts: list[Part], cfg, norm: str, attention: Part, ffn: Part) -> None:
    """A parallel block, x + Attn(Norm₁(x)) + MLP(Norm₂(x)) (GPT-NeoX), or with one norm for both branches,
    x + Attn(Norm(x)) + MLP(Norm(x)) (GPT-J, Phi): the feed-forward reads the block's input, not the attention's
    output, and one add sums the input and both branches."""
    shape = attention.shape_in
    if getattr(cfg, "shared_norm", False):
        parts.append(Part(norm, "norm", shape, shape, "one norm shared by attention and feed-forward (parallel block)"))
        parts.append(attention)
        ffn.detail += "; parallel: reads the same normalised x as the attention"
        parts.append(ffn)
    else:
        parts.append(Part(norm, "norm", shape, shape, "before the attention branch (parallel block)"))
        parts.append(attention)
        parts.append(Part(norm, "norm", shape, shape, "before the feed-forward branch: the block's input x, not "
                                                      "the attention's output"))  # fmt: skip
        ffn.detail += "; parallel: reads the block's input"
        parts.append(ffn)
    parts.append(Part("+ residual", "add", shape, shape, "x + attention + feed-forward: both branches added to the "
                                                         "block's input at once"))  # fmt: skip


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
