"""An architecture card: what a model is made of, read from its config and its parameters.

``architecture(model)`` lists the design choices (width, heads, positions, norms, experts, SSM
sizes ...) as (name, value) rows, in words a reader can compare across families: each family's
registry entry names its rows function and its parameter rules (both defined here, beside the
wording they share).
``parameter_breakdown(model)`` says where the parameters sit, by component, counting a shared
matrix once (tied embeddings: the LM head adds 0), so the rows sum exactly to the model's
unique parameter count. ``active_parameters(model)`` is what one token uses: a mixture of
experts runs only top_k of its n_experts experts per layer.
"""

from __future__ import annotations

import re

from torch import nn

from archplay.models import registry
from archplay.models.architectures.layers import alibi_slopes, count_parameters
from archplay.models.architectures.moe import SparseMoE

ACTIVATION_NAMES = {
    "gelu": "GELU", "gelu_new": "tanh-approximated GELU", "gelu_pytorch_tanh": "tanh-approximated GELU",
    "gelu_fast": "tanh-approximated GELU", "relu": "ReLU", "silu": "SiLU", "swish": "SiLU",
}  # fmt: skip
NORM_NAMES = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "gemma_rmsnorm": "Gemma's RMSNorm, x̂·(1 + w) in float32"}

LM_HEAD = "LM head"
TIED_LM_HEAD = "LM head (tied to token embeddings: 0 extra)"
OTHER = "other"


# --------------------------------------------------------------------------- the card


def architecture(model: nn.Module) -> list[tuple[str, str]]:
    """(name, value) rows describing the model's architecture, every value a display string."""
    cfg = model.config
    family = registry.of(model)
    rows = [("name", str(cfg.name)), ("family", f"{family.name}: {family.title}")]
    rows += family.card_rows(cfg)
    total = count_parameters(model)
    rows.append(("parameters", f"{total:,}"))
    if "routing" in family.views:
        active = active_parameters(model)
        rows.append(("active parameters per token", f"{active:,} ({active / total:.0%} of the total)"))
    return rows


def decoder_rows(cfg) -> list[tuple[str, str]]:
    return _decoder_stack_rows(cfg, [("feed-forward", _ffn(cfg.d_ff, cfg.activation, cfg.mlp == "gated"))])


def moe_rows(cfg) -> list[tuple[str, str]]:
    return _decoder_stack_rows(cfg, _latent_attention_rows(cfg) + _expert_rows(cfg))


def _latent_attention_rows(cfg) -> list[tuple[str, str]]:
    """DeepSeek's multi-head latent attention: the low-rank paths, the rope/nope split, the cache it saves."""
    r = getattr(cfg, "kv_lora_rank", None)
    if r is None:
        return []
    H, Dqk, rope, Dv = cfg.n_head, cfg.head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    latent, full = r + rope, H * (Dqk + Dv)
    queries = (f"through a {cfg.q_lora_rank}-wide bottleneck: q_a_proj → RMSNorm → q_b_proj" if cfg.q_lora_rank
               else "one q_proj (no low-rank path)")  # fmt: skip
    layout = "channel pairs (0, 1), (2, 3), …" if cfg.rope_interleaved else "the two halves"
    return [
        ("latent attention (MLA)", f"keys and values rebuilt per head from one {r}-wide latent of each token: "
                                   "kv_a_proj → RMSNorm → kv_b_proj (DeepSeek); queries " + queries),
        ("q/k head split", f"{Dqk} = {Dqk - rope} without position (nope) + {rope} rotated (RoPE on {layout}); the "
                           f"rotated key is one head shared by all {H}; values {Dv} wide; q·k × 1/√{Dqk}"),
        ("KV cache per token", f"{latent} numbers per layer (the {r}-wide latent + the {rope}-wide rope key), against "
                               f"{full} for full keys and values ({H} heads × ({Dqk} + {Dv})): {full / latent:.1f}× "
                               "smaller"),
    ]  # fmt: skip


def _decoder_stack_rows(cfg, feed_forward: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A decoder-only stack's rows, with ``feed_forward`` (dense or experts) after the attention."""
    return [
        ("layers", str(cfg.n_layer)),
        ("width (d_model)", str(cfg.d_model)),
        *_attention_rows(cfg.n_head, cfg.n_kv_head, cfg.head_dim),
        ("attention", _attention(cfg, causal=True)),
        *_block_rows(cfg),
        *feed_forward,
        ("positions", _positions(cfg, causal=True)),
        ("norm", _norm_placement(cfg, causal=True)),
        ("biases", _biases(cfg)),
        ("vocabulary", f"{cfg.vocab_size:,}"),
        ("context length", _context(cfg, f"{cfg.max_seq_len:,} tokens")),
        ("tied embeddings", _tied(cfg.tie_embeddings)),
    ]


def _block_rows(cfg) -> list[tuple[str, str]]:
    """Rows for what only some checkpoints' blocks do (none for the others)."""
    rows = []
    gemma = getattr(cfg, "norm", None) == "gemma_rmsnorm"
    if getattr(cfg, "qk_norm", None) == "head":
        kind, where = ("Gemma's RMSNorm, x̂·(1 + w),", "Gemma 3") if gemma else ("RMSNorm", "Qwen3")
        rows.append(("q/k norm", f"{kind} over each head's q and k ({cfg.head_dim} channels, a scale per channel "
                                 f"shared by the heads), before RoPE ({where})"))  # fmt: skip
    elif getattr(cfg, "qk_norm", None) == "all":
        rows.append(("q/k norm", f"RMSNorm over the whole q and k projections ({cfg.n_head * cfg.head_dim} and "
                                 f"{cfg.n_kv_head * cfg.head_dim} channels), before RoPE (OLMoE, OLMo 2)"))  # fmt: skip
    elif getattr(cfg, "qk_norm", None) == "each_head":
        rows.append(("q/k norm", f"LayerNorm (no bias) over each head's q and k ({cfg.head_dim} channels), every head "
                                 "its own scale, before RoPE (StableLM 2)"))  # fmt: skip
    if getattr(cfg, "reordered_norm", False):
        rows.append(("reordered norm", "a norm after the attention and after the feed-forward, none before: "
                                       "x + Norm(Attn(x)), x + Norm(MLP(x)) (OLMo 2)"))  # fmt: skip
    if getattr(cfg, "embed_dim", None) not in (None, cfg.d_model):  # OPT-350m
        rows.append(("embedding projections", f"token embeddings {cfg.embed_dim} wide: projected in to {cfg.d_model} "
                                              f"before the first block and out to {cfg.embed_dim} before the LM head "
                                              "(OPT-350m)"))  # fmt: skip
    if getattr(cfg, "shared_norm", False):  # GPT-J, Phi
        rows.append(("residual", f"parallel: x + Attn(Norm(x)) + MLP(Norm(x)), one {_norm(cfg.norm)} shared by "
                                 "attention and MLP (GPT-J, Phi, StableLM)"))  # fmt: skip
    elif getattr(cfg, "parallel_residual", False):
        rows.append(("residual", "parallel: x + Attn(Norm₁(x)) + MLP(Norm₂(x)), the MLP reads the block's input, "
                                 "not the attention's output (GPT-NeoX)"))  # fmt: skip
    return rows + _gemma_rows(cfg)


def _gemma_rows(cfg) -> list[tuple[str, str]]:
    """Gemma's parts, each only when on: sandwich norms, the embedding scale, the attention scale, soft-capping,
    and the local/global layer pattern."""
    rows = []
    if getattr(cfg, "sandwich_norm", False):
        rows.append(("sandwich norms", "a norm after the attention and after the feed-forward as well as before: "
                                       "x + Norm(Attn(Norm(x))), x + Norm(MLP(Norm(x))) (Gemma 2, 3)"))  # fmt: skip
    if getattr(cfg, "embed_scale", False):
        rows.append(("embedding scale", f"token embeddings × √d_model = {cfg.d_model**0.5:.5g}, rounded to the "
                                        "weights' dtype (Gemma)"))  # fmt: skip
    if getattr(cfg, "attn_scale", None) == 1.0:  # GPT-Neo
        rows.append(("attention scale", f"q·k unscaled (× 1, not 1/√d_head = {cfg.head_dim**-0.5:.4g}) (GPT-Neo)"))
    elif getattr(cfg, "attn_scale", None) is not None:
        rows.append(("attention scale", f"q·k × {cfg.attn_scale:.4g} = {cfg.attn_scale**-2:.4g}^-½ "
                                        f"(query_pre_attn_scalar), not 1/√d_head = {cfg.head_dim**-0.5:.4g}"))  # fmt: skip
    caps = []
    if getattr(cfg, "attn_softcap", None) is not None:
        c = cfg.attn_softcap
        caps.append(f"attention scores {c:g}·tanh(s/{c:g}) after the scale, before the softmax")
    if getattr(cfg, "final_softcap", None) is not None:
        c = cfg.final_softcap
        caps.append(f"final logits {c:g}·tanh(z/{c:g})")
    if caps:
        rows.append(("soft-capping", "; ".join(caps)))
    kinds = cfg.layer_types
    if "full" in kinds and len(set(kinds)) > 1:
        letters = ["G" if k == "full" else "L" for k in kinds]
        period = next(p for p in range(1, len(letters) + 1) if all(c == letters[i % p] for i, c in enumerate(letters)))
        order = " ".join(letters[:period]) + (", repeated" if period < len(letters) else "")
        n_local = sum(k != "full" for k in kinds)
        rows.append(("local/global layers", f"{n_local} local : {len(kinds) - n_local} global, in order {order} "
                                            f"(L: a window of {cfg.sliding_window}, G: every earlier token)"))  # fmt: skip
    return rows


def _expert_rows(cfg) -> list[tuple[str, str]]:
    rows = [
        ("experts", f"{cfg.n_experts} per MoE layer, each a gated MLP {cfg.d_expert} wide, "
                    f"{ACTIVATION_NAMES.get(cfg.activation, cfg.activation)}"),
        ("experts per token (top-k)", str(cfg.top_k)),
        ("router", _router(cfg)),
    ]  # fmt: skip
    if cfg.d_shared_expert:
        gate = "scaled by a sigmoid gate" if getattr(cfg, "shared_expert_gate", True) else "no gate (added as is)"
        rows.append(("shared expert", f"always on, {cfg.d_shared_expert} wide, {gate}"))
    n_moe = sum(cfg.moe_layers)
    if n_moe < cfg.n_layer:
        dense = _ffn(cfg.d_ff, cfg.activation, True)
        first = cfg.n_layer - n_moe
        where = (f"the first {first} dense (first_k_dense_replace)" if cfg.moe_layers == [False] * first + [True] * n_moe
                 else "the others dense")  # fmt: skip
        rows.append(("MoE layers", f"{n_moe} of {cfg.n_layer}; {where}: a feed-forward {dense}"))
    return rows


def _router(cfg) -> str:
    if getattr(cfg, "router_score", "softmax") != "sigmoid":
        n_group, scale = getattr(cfg, "n_group", 1), getattr(cfg, "routed_scaling_factor", 1.0)
        if n_group > 1 or scale != 1.0:  # DeepSeek-V2
            groups = (f" → only the {cfg.topk_group} best of {n_group} groups of {cfg.n_experts // n_group} (a group's "
                      "score: its best expert)") if n_group > 1 else ""  # fmt: skip
            renorm = " → renormalised to sum to 1" if cfg.normalize_top_k else " (not renormalised)"
            return (f"softmax over all experts (float32){groups} → top-k{renorm} × {scale:g} (routed_scaling_factor)"
                    " (DeepSeek-V2)")  # fmt: skip
        return "softmax over all experts (float32) → top-k" + (
            " → renormalised to sum to 1" if cfg.normalize_top_k else " (weights not renormalised)")
    groups = ""
    if cfg.n_group > 1:
        groups = (f" → only the {cfg.topk_group} best of {cfg.n_group} groups of {cfg.n_experts // cfg.n_group} "
                  "(a group's score: its 2 best)")  # fmt: skip
    renorm = " → renormalised to sum to 1" if cfg.normalize_top_k else ""
    return (f"a sigmoid per expert (float32, no softmax) + a learned bias used only to choose (e_score_correction_bias)"
            f"{groups} → top-k → the chosen sigmoids{renorm} × {cfg.routed_scaling_factor:g} (routed_scaling_factor)"
            " (DeepSeek-V3)")  # fmt: skip


def encoder_rows(cfg) -> list[tuple[str, str]]:
    return [
        ("layers", str(cfg.n_layer)),
        ("width (d_model)", str(cfg.d_model)),
        *_attention_rows(cfg.n_head, cfg.n_head, cfg.d_model // cfg.n_head),
        ("attention", _attention(cfg, causal=False)),
        *_encoder_block_rows(cfg),
        ("feed-forward", _ffn(cfg.d_ff, cfg.activation, cfg.mlp == "gated")),
        ("positions", _positions(cfg, causal=False) + _encoder_position_notes(cfg)),
        ("norm", _norm_placement(cfg, causal=False) + ("" if getattr(cfg, "norm_bias", True) else "; no bias")),
        ("biases", _encoder_biases(cfg)),
        ("vocabulary", f"{cfg.vocab_size:,}"),
        ("context length", _context(cfg, f"{cfg.max_seq_len:,} tokens (the position table)")),
        ("tied embeddings", "yes: the masked-LM head's output matrix is the token embedding matrix"
                            if cfg.has_mlm_head else "no masked-LM head in this checkpoint"),
    ]  # fmt: skip


def _encoder_block_rows(cfg) -> list[tuple[str, str]]:
    """ModernBERT's parts, each only when on: global and local layers (a symmetric window), no first pre-norm."""
    rows, kinds = [], cfg.layer_types
    if "full" in kinds and "sliding" in kinds and len(set(kinds)) == 2:
        letters = ["G" if k == "full" else "L" for k in kinds]
        period = next(p for p in range(1, len(letters) + 1) if all(c == letters[i % p] for i, c in enumerate(letters)))
        order = " ".join(letters[:period]) + (", repeated" if period < len(letters) else "")
        n_local, reach = letters.count("L"), cfg.sliding_window - 1
        rows.append(("local/global layers", f"{n_local} local : {len(kinds) - n_local} global, in order {order} "
                                            f"(L: the keys within ±{reach} of the query, a window of {2 * reach} "
                                            "either side together; G: every token)"))  # fmt: skip
    if not getattr(cfg, "first_attn_norm", True):
        rows.append(("first layer", "no norm before layer 0's attention: it reads the embedding norm's output "
                                    "(ModernBERT)"))  # fmt: skip
    return rows


def _encoder_biases(cfg) -> str:
    """BERT: everywhere; ModernBERT: only where its config switches them on."""
    parts = [("q/k/v, attention output", getattr(cfg, "attention_bias", True)),
             ("feed-forward", getattr(cfg, "mlp_bias", True)), ("norms", getattr(cfg, "norm_bias", True))]  # fmt: skip
    if getattr(cfg, "has_mlm_head", False):
        parts += [("masked-LM head dense", getattr(cfg, "head_bias", True)),
                  ("masked-LM output", getattr(cfg, "head_decoder_bias", True))]  # fmt: skip
    where = [name for name, on in parts if on]
    return "everywhere" if len(where) == len(parts) else ", ".join(where) or "none"


def _encoder_position_notes(cfg) -> str:
    """RoBERTa's positions after padding_idx; DistilBERT's lack of token types."""
    text = ""
    if getattr(cfg, "position_offset", 0):
        text += (f", starting at {cfg.position_offset} (padding_idx + 1) and counting only non-padding tokens; "
                 f"padding sits at {cfg.position_offset - 1} (RoBERTa)")  # fmt: skip
    return text + (" + token-type embeddings" if getattr(cfg, "type_vocab_size", 1) else ", no token-type embeddings")


def encoder_decoder_rows(cfg) -> list[tuple[str, str]]:
    """T5's rows; BART's options (learned positions, post-norm LayerNorm, biases, scaled q·k ...) change them."""
    if cfg.tie_embeddings:
        tied = "yes: encoder, decoder and LM head share one matrix"
    elif cfg.share_embeddings:
        tied = "encoder and decoder share the embedding; the LM head has its own matrix"
    else:
        tied = "no: encoder, decoder and LM head each have their own matrix"
    if cfg.scale_decoder_outputs:
        tied += " (decoder output × d_model^-0.5 before the head)"
    learned = cfg.positions == "learned"
    rows = [
        ("layers", f"{cfg.n_layer} encoder + {cfg.n_decoder_layer} decoder"),
        ("width (d_model)", str(cfg.d_model)),
        *_attention_rows(cfg.n_head, cfg.n_kv_head, cfg.head_dim),
        ("attention", "encoder: bidirectional; decoder: causal self-attention + cross-attention to the encoder; "
                      + (f"q·k scaled by 1/√d_head (1/√{cfg.d_kv})" if cfg.scale_attention
                         else "no 1/√d scaling of q·k")),
        ("feed-forward", _ffn(cfg.d_ff, cfg.ffn_activation, cfg.gated)),
        ("positions", _encoder_decoder_positions(cfg)),
    ]  # fmt: skip
    if cfg.scale_embedding or cfg.embedding_norm:
        steps = (["× √d_model (scaled embedding)"] if cfg.scale_embedding else []) + (
            [f"+ positions, then {_norm(cfg.norm)} of the embeddings, in both stacks"] if cfg.embedding_norm else [])
        rows.append(("embeddings", "token embeddings " + ", ".join(steps)))
    if cfg.post_norm:
        norm = f"{_norm(cfg.norm)}, post-norm (after each residual add; no final norm), ε = {cfg.norm_eps:g}"
    else:
        norm = f"{_norm(cfg.norm)}, pre-norm (+ a final norm per stack), ε = {cfg.norm_eps:g}"
    rows += [
        ("norm", norm),
        ("biases", "on every projection (q/k/v, attention output, feed-forward)" if cfg.bias else "none"),
        ("vocabulary", f"{cfg.vocab_size:,}"),
        ("context length", f"{cfg.max_seq_len:,} tokens per stack (the learned position tables)" if learned
                           else f"{cfg.max_seq_len:,} tokens offered (relative positions set no hard limit)"),
        ("tied embeddings", tied),
    ]  # fmt: skip
    if cfg.final_logits_bias:
        rows.append(("output bias", "a stored bias per vocabulary entry added to the logits (final_logits_bias)"))
    rows.append(("decoding starts at", f"token {cfg.decoder_start_token_id}"))
    return rows


def _encoder_decoder_positions(cfg) -> str:
    if cfg.positions == "learned":
        offset = (f", position p reading row p + {cfg.position_offset} (an offset of {cfg.position_offset}, "
                  "from fairseq)") if cfg.position_offset else ""  # fmt: skip
        return (f"learned absolute tables, one per stack, added to the token embeddings: "
                f"{cfg.max_seq_len:,} positions{offset}")  # fmt: skip
    return (f"relative position buckets: a learned bias per head for {cfg.relative_attention_num_buckets} buckets of "
            f"distance (log-spaced up to {cfg.relative_attention_max_distance}), one table per stack")  # fmt: skip


def ssm_rows(cfg) -> list[tuple[str, str]]:
    if getattr(cfg, "version", 1) == 2:
        return _mamba2_rows(cfg)
    return [
        ("layers", str(cfg.n_layer)),
        ("width (d_model)", str(cfg.d_model)),
        ("mixer", "selective SSM in place of attention: in_proj → causal depthwise conv → "
                  f"{ACTIVATION_NAMES.get(cfg.activation, cfg.activation)} → selective scan, gated by SiLU(z)"),
        ("d_inner (expand × d_model)", f"{cfg.d_inner} (expand {cfg.expand})"),
        ("d_state (N)", str(cfg.d_state)),
        ("d_conv (conv kernel)", str(cfg.d_conv)),
        ("dt_rank (R)", str(cfg.dt_rank)),
        ("positions", "none: order enters through the causal conv and the recurrence"),
        ("norm", f"{_norm(cfg.norm)}, pre-norm (+ a final norm), ε = {cfg.norm_eps:g}"),
        ("biases", _ssm_biases(cfg)),
        ("vocabulary", f"{cfg.vocab_size:,}"),
        ("context length", f"no limit (a fixed-size recurrent state); the UI offers {cfg.max_seq_len:,} tokens"),
        ("tied embeddings", _tied(cfg.tie_embeddings)),
    ]  # fmt: skip


def _mamba2_rows(cfg) -> list[tuple[str, str]]:
    H, P, G, N = cfg.n_heads, cfg.head_dim, cfg.n_groups, cfg.d_state
    hi = "∞" if cfg.dt_limit_max is None else f"{cfg.dt_limit_max:g}"
    act = ACTIVATION_NAMES.get(cfg.activation, cfg.activation)
    biases = ["dt_bias"] + (["conv1d"] if cfg.conv_bias else []) + (["in_proj, out_proj"] if cfg.bias else [])
    return [
        ("layers", str(cfg.n_layer)),
        ("width (d_model)", str(cfg.d_model)),
        ("mixer", "Mamba-2 (state-space duality) in place of attention: in_proj → z, x·B·C, Δ; causal depthwise "
                  f"conv over x·B·C together → {act} → SSD scan + D·x → gated RMSNorm(y · SiLU(z)) → out_proj"),
        ("d_inner (expand × d_model)", f"{cfg.d_inner} (expand {cfg.expand})"),
        ("heads × head dim", f"{H} × {P}: one scalar A, one Δ per token and one D per head"),
        ("groups (B, C)", f"{G}: every {H // G} head{'s' if H // G > 1 else ''} share one B and one C; the gated "
                          f"norm normalises {G} group{'s' if G > 1 else ''} of {cfg.d_inner // G} channels"),
        ("d_state (N)", f"{N} (state per head: {P} × {N})"),
        ("d_conv (conv kernel)", f"{cfg.d_conv}, over {cfg.conv_dim} channels (x, B and C)"),
        ("A", f"a scalar per head (A_log [{H}]): Ā = exp(Δ·A) decays a head's whole state by one factor"),
        ("Δ (step size)", f"softplus(Δ_raw + dt_bias), clamped to [{cfg.dt_limit_min:g}, {hi}]"),
        ("scan (SSD)", f"chunks of {cfg.chunk_size}: y = (L ∘ C·Bᵀ)·(Δ x) inside a chunk, states carried between "
                       "chunks; hidden attention α (T × T) per head, shown as the mean |α| over heads (= over "
                       "channels)"),
        ("positions", "none: order enters through the causal conv and the recurrence"),
        ("norm", f"{_norm(cfg.norm)}, pre-norm (+ a final norm), ε = {cfg.norm_eps:g}; gated RMSNorm in the mixer"),
        ("biases", ", ".join(biases)),
        ("vocabulary", f"{cfg.vocab_size:,}"),
        ("context length", f"no limit (a fixed-size recurrent state); the UI offers {cfg.max_seq_len:,} tokens"),
        ("tied embeddings", _tied(cfg.tie_embeddings)),
    ]  # fmt: skip


def hybrid_rows(cfg) -> list[tuple[str, str]]:
    """A hybrid (Jamba): which layers attend, which scan, which route; then each part's sizes."""
    n_attn = sum(cfg.attn_layers)
    n_mamba = cfg.n_layer - n_attn
    act = ACTIVATION_NAMES.get(cfg.activation, cfg.activation)
    norms = " → RMSNorms on Δ_low, B and C (Jamba)" if cfg.ssm_norms else ""
    biases = ["dt_proj"] + (["conv1d"] if cfg.ssm_conv_bias else []) + (["in_proj, out_proj"] if cfg.ssm_bias else [])
    return [
        ("layers", str(cfg.n_layer)),
        ("layer pattern", _hybrid_pattern(cfg)),
        ("width (d_model)", str(cfg.d_model)),
        *_attention_rows(cfg.n_head, cfg.n_kv_head, cfg.head_dim),
        ("attention", f"causal self-attention in {n_attn} of {cfg.n_layer} layers ({_layer_list(cfg.attn_layers)})"),
        ("Mamba mixer", f"in {n_mamba} of {cfg.n_layer} layers: Mamba-1's selective SSM, in_proj → causal depthwise "
                        f"conv → {act} → x_proj{norms} → selective scan + D·u, gated by SiLU(z) → out_proj"),
        ("d_inner (expand × d_model)", f"{cfg.d_inner} (expand {cfg.expand})"),
        ("d_state (N) · d_conv · dt_rank (R)", f"{cfg.d_state} · {cfg.d_conv} · {cfg.dt_rank}"),
        *_expert_rows(cfg),
        ("positions", "none (NoPE) in the attention layers: order enters through the Mamba layers' causal conv and "
                      "recurrence, and the causal mask"),
        ("KV cache", f"only the {n_attn} attention layers keep keys and values ({2 * cfg.n_kv_head * cfg.head_dim} "
                     f"numbers per token each); the {n_mamba} Mamba layers a fixed-size state (the conv's last "
                     f"{cfg.d_conv} inputs and {cfg.d_inner} × {cfg.d_state} SSM numbers), whatever the length"),
        ("norm", f"{_norm(cfg.norm)}, pre-norm (+ a final norm), ε = {cfg.norm_eps:g}"),
        ("biases", ", ".join(biases) + " (Mamba mixers); none elsewhere"),
        ("vocabulary", f"{cfg.vocab_size:,}"),
        ("context length", _context(cfg, f"{cfg.max_seq_len:,} tokens")),
        ("tied embeddings", _tied(cfg.tie_embeddings)),
    ]  # fmt: skip


def _layer_list(flags: list[bool]) -> str:
    """"layers 1, 3", or for many "layers 1, 3, 5, …, 31 (16)"."""
    on = [str(i) for i, f in enumerate(flags) if f]
    if len(on) > 6:
        on = [*on[:3], "…", f"{on[-1]} ({len(on)})"]
    return ("layer " if len(on) == 1 else "layers ") + ", ".join(on)


def _hybrid_pattern(cfg) -> str:
    """The repeating unit of layers, e.g. "Mamba+MoE, attention+MLP, repeated (4 layers; attention in ...)"."""
    kinds = [cfg.layer_kind(i).replace(" + ", "+") for i in range(cfg.n_layer)]
    period = next(p for p in range(1, len(kinds) + 1) if all(k == kinds[i % p] for i, k in enumerate(kinds)))
    order = ", ".join(kinds[:period]) + (", repeated" if period < len(kinds) else "")
    return (f"{order} ({len(kinds)} layers; attention in {_layer_list(cfg.attn_layers)}, experts in "
            f"{_layer_list(cfg.moe_layers)})")


def _attention_rows(n_head: int, n_kv_head: int, head_dim: int) -> list[tuple[str, str]]:
    if n_kv_head == n_head:
        kv = f"{n_kv_head} (multi-head: one per query head)"
    elif n_kv_head == 1:
        kv = f"1 (multi-query: all {n_head} query heads share it)"
    else:
        kv = f"{n_kv_head} (grouped-query: {n_head // n_kv_head} query heads share each)"
    return [("attention heads", str(n_head)), ("key/value heads", kv), ("head dim", str(head_dim))]


PATTERN_TEXT = {  # layers.attention_mask's local patterns, W = the window
    "sliding": "a sliding window of {w}",
    "strided": "strided (Sparse Transformer): the last {w} tokens + every {w}-th one before them",
    "block": "block-local: blocks of {w} tokens",
}


def _attention(cfg, *, causal: bool) -> str:
    """Causal or bidirectional, and which layers use a local pattern of ``sliding_window`` W."""
    local = [(p, cfg.layer_types.count(p)) for p in PATTERN_TEXT if p in cfg.layer_types]
    if not local:
        return "causal self-attention" if causal else "bidirectional self-attention (every token sees every token)"
    parts = [f"{PATTERN_TEXT[p].format(w=cfg.sliding_window)} on {n} of {cfg.n_layer} layers" for p, n in local]
    return "; ".join(["causal self-attention" if causal else "bidirectional self-attention", *parts])


def _positions(cfg, *, causal: bool) -> str:
    kind = cfg.positions
    if kind == "learned":
        offset = getattr(cfg, "position_offset", 0) if causal else 0
        if offset:  # OPT
            return (f"learned absolute table ({cfg.max_seq_len:,} positions), positions from row {offset}: position p "
                    f"reads row p + {offset} (OPT)")  # fmt: skip
        return f"learned absolute table ({cfg.max_seq_len:,} positions)"
    if kind == "sinusoidal":
        return "fixed sinusoidal table, added to the embeddings"
    if kind == "alibi":
        distance = "(q − k)" if causal else "|q − k|"
        m = alibi_slopes(cfg.n_head).tolist()
        return (f"ALiBi: no position embedding; each head h adds −m_h·{distance} to its scores, "
                f"geometric slopes m_h from {m[0]:.3g} to {min(m):.3g}")  # fmt: skip
    if kind == "relative":
        direction = "causal: earlier keys only" if causal else "both directions"
        return (f"relative position buckets: a learned bias per head for {cfg.relative_buckets} buckets of "
                f"distance ({direction}, log-spaced up to {cfg.relative_max_distance}), "
                "one table shared by all layers")  # fmt: skip
    if kind == "none":
        if causal:
            return "none (NoPE): order enters only through the causal mask"
        return "none: order enters only through a local attention pattern, if any"
    text = f"rotary (RoPE) on q and k, θ = {cfg.rope_theta:g}"
    if getattr(cfg, "rotary_fraction", 1.0) < 1:
        text += f", on {cfg.rotary_fraction:.0%} of each head's channels"
    if getattr(cfg, "rope_interleaved", False):
        text += ", rotary interleaved: channel pairs (0, 1), (2, 3), … (GPT-J, DeepSeek-V3), not the two halves"
    if getattr(cfg, "rope_scaling", None):
        factor = cfg.rope_scaling.get("factor")
        text += f", {cfg.rope_scaling.get('rope_type', 'default')} scaling" + (f" × {factor:g}" if factor else "")
    if getattr(cfg, "rope_local_theta", None) is not None:
        text += (f" on global layers; local layers θ = {cfg.rope_local_theta:g}, unscaled "
                 f"({'Gemma 3' if causal else 'ModernBERT'})")  # fmt: skip
    return text


def _norm_placement(cfg, *, causal: bool) -> str:
    """Which norm, and where: pre-norm (+ a final norm) or post-norm (after each residual add)."""
    if cfg.norm_position == "post":
        where = "no final norm" if causal else "and on the embeddings"
        return f"{_norm(cfg.norm)}, post-norm (after each residual add, {where}), ε = {cfg.norm_eps:g}"
    where = "+ a final norm" if causal else "+ a final norm, and on the embeddings"
    if getattr(cfg, "reordered_norm", False):  # OLMo 2
        return (f"{_norm(cfg.norm)} after each sublayer, before its residual add (none before; + a final norm), "
                f"ε = {cfg.norm_eps:g}")  # fmt: skip
    if causal and not getattr(cfg, "final_norm", True):
        where = "no final norm"  # OPT's _remove_final_layer_norm
    return f"{_norm(cfg.norm)}, pre-norm ({where}), ε = {cfg.norm_eps:g}"


def _context(cfg, table: str) -> str:
    """The context row: a position table (learned, sinusoidal) sets the limit; the other kinds do not."""
    if cfg.positions in ("learned", "sinusoidal"):
        return table
    return f"{cfg.max_seq_len:,} tokens offered (no position table: no hard limit)"


def _ffn(width: int, act: str, gated: bool) -> str:
    name = ACTIVATION_NAMES.get(act, act)
    if not gated:
        return f"{width} wide, {name}"
    glu = {"SiLU": "SwiGLU", "GELU": "GEGLU", "tanh-approximated GELU": "GEGLU", "ReLU": "ReGLU"}.get(name)
    kind = f"{glu} (gated {name})" if glu else f"gated {name}"
    return f"{width} wide, {kind}: down(act(gate(x)) ⊙ up(x))"


def _biases(cfg) -> str:
    where = [name for name, on in (("q/k/v", cfg.qkv_bias), ("attention output", cfg.o_bias),
                                   ("feed-forward", cfg.mlp_bias),
                                   ("LM head", getattr(cfg, "lm_head_bias", False))) if on]  # fmt: skip
    return ", ".join(where) if where else "none"


def _ssm_biases(cfg) -> str:
    where = ["dt_proj"] + (["conv1d"] if cfg.conv_bias else []) + (["in_proj, out_proj"] if cfg.bias else [])
    return ", ".join(where)


def _norm(kind: str) -> str:
    return NORM_NAMES.get(kind, kind)


def _tied(tied: bool) -> str:
    return "yes: the LM head is the token embedding matrix" if tied else "no: the LM head has its own matrix"


# --------------------------------------------------------------------------- parameters

# Each family's parameter rules: (regex matched at the start of a parameter name, component), first match wins.
_NORMS = (r"(.*\.)?\w*norm\.", "norms")
DECODER_RULES = (  # decoder and moe
    (r"(embed_tokens\.project_in|lm_head\.project_out)\.", "embedding projections (in and out, OPT-350m)"),
    (r"embed_tokens\.", "token embeddings"),
    (r"embed_positions\.", "position embeddings"),
    (r"relative_attention_bias\.", "relative position bias"),
    (r"layers\.\d+\.attn\.", "attention"),
    (r"layers\.\d+\.mlp\.router\.", "router"),
    (r"layers\.\d+\.mlp\.experts\.", "experts"),
    (r"layers\.\d+\.mlp\.shared_expert", "shared expert"),  # the expert and its gate
    (r"layers\.\d+\.mlp\.", "feed-forward"),
    _NORMS,
    (r"lm_head\.", LM_HEAD),
)
ENCODER_RULES = (
    (r"embed_tokens\.", "token embeddings"),
    (r"embed_positions\.", "position embeddings"),
    (r"embed_types\.", "token-type embeddings"),
    (r"relative_attention_bias\.", "relative position bias"),
    (r"layers\.\d+\.attn\.", "attention"),
    (r"layers\.\d+\.mlp\.", "feed-forward"),
    (r"mlm_head\.", "masked-LM head (its output matrix is tied)"),
    _NORMS,
)
ENCODER_DECODER_RULES = (
    (r"shared\.", "token embeddings (shared)"),
    (r"(encoder|decoder)\.embed_tokens\.", "token embeddings (one per stack)"),  # an untied BART
    (r"(encoder|decoder)\.embed_positions\.", "position embeddings"),  # BART's learned tables
    (r"(encoder|decoder)\.relative_attention_bias\.", "relative position bias"),
    (r"encoder\.layers\.\d+\.attn\.", "encoder self-attention"),
    (r"encoder\.layers\.\d+\.mlp\.", "encoder feed-forward"),
    (r"decoder\.layers\.\d+\.attn\.", "decoder self-attention"),
    (r"decoder\.layers\.\d+\.cross_attn\.", "cross-attention"),
    (r"decoder\.layers\.\d+\.mlp\.", "decoder feed-forward"),
    _NORMS,
    (r"lm_head\.", LM_HEAD),
)
SSM_RULES = (
    (r"embed_tokens\.", "token embeddings"),
    (r"layers\.\d+\.mixer\.in_proj\.", "mixer in_proj (x and gate z)"),
    (r"layers\.\d+\.mixer\.conv1d\.", "mixer causal conv1d"),
    (r"layers\.\d+\.mixer\.(x_proj|dt_proj)\.", "mixer x_proj + dt_proj (Δ, B, C)"),
    (r"layers\.\d+\.mixer\.(A_log|D)$", "mixer A and D"),
    (r"layers\.\d+\.mixer\.dt_bias$", "mixer dt_bias (Mamba-2's Δ)"),
    (r"layers\.\d+\.mixer\.norm\.", "mixer gated RMSNorm (Mamba-2)"),
    (r"layers\.\d+\.mixer\.out_proj\.", "mixer out_proj"),
    _NORMS,
    (r"lm_head\.", LM_HEAD),
)
HYBRID_RULES = (  # the attention layers' names as the decoder's, the Mamba layers' as the ssm family's
    (r"layers\.\d+\.mixer\.(dt|b|c)_layernorm\.", "mixer RMSNorms on Δ, B, C (Jamba)"),
    *(rule for rule in SSM_RULES if "mixer" in rule[0]),
    *DECODER_RULES,
)


def parameter_breakdown(model: nn.Module) -> list[tuple[str, int]]:
    """(component, parameter count) rows that sum exactly to the unique parameter count.

    A shared Parameter is counted once, under the first name it was registered with (the token
    embeddings, for a tied LM head, which then shows as a 0-count row). Components with no
    parameters are left out; anything no rule names would land in "other".
    """
    rules = [(re.compile(pattern), label) for pattern, label in registry.of(model).parameter_rules]
    counts = {label: 0 for _, label in rules}
    counts[OTHER] = 0
    for name, p in model.named_parameters():  # each Parameter once, shared ones included
        label = next((lab for rx, lab in rules if rx.match(name)), OTHER)
        counts[label] += p.numel()
    rows = [(label, n) for label, n in counts.items() if n > 0]
    if _lm_head_is_tied(model):
        rows.append((TIED_LM_HEAD, 0))
    return rows


def _lm_head_is_tied(model: nn.Module) -> bool:
    """True when the model has an LM head whose weight is a Parameter registered earlier under another name."""
    head = getattr(model, "lm_head", None)
    if head is None:
        return False
    return "lm_head.weight" not in dict(model.named_parameters())


def active_parameters(model: nn.Module) -> int:
    """The parameters one token uses: the total, less the (n_experts - top_k) experts each MoE layer skips."""
    idle = 0
    for module in model.modules():
        if isinstance(module, SparseMoE):
            per_expert = count_parameters(module.experts[0])
            idle += (len(module.experts) - module.router.top_k) * per_expert
    return count_parameters(model) - idle


__all__ = [
    "DECODER_RULES", "ENCODER_DECODER_RULES", "ENCODER_RULES", "HYBRID_RULES", "SSM_RULES", "active_parameters",
    "architecture", "decoder_rows", "encoder_decoder_rows", "encoder_rows", "hybrid_rows", "moe_rows",
    "parameter_breakdown", "ssm_rows",
]  # fmt: skip
