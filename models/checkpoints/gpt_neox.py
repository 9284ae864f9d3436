"""GPT-NeoX checkpoints (``model_type: gpt_neox``: Pythia, GPT-NeoX-20B) -> the decoder family.

What sets them apart: a parallel residual (attention and MLP both read the block's input,
``use_parallel_residual``), rotary positions on only the first ``rotary_pct`` of each head's
channels (a quarter in Pythia), LayerNorm and a plain GELU MLP with biases, and an output
matrix (``embed_out``) of its own. q, k and v are fused in ``query_key_value`` and laid out
per head, [q₀ k₀ v₀ q₁ k₁ v₁ ...] (transformers views it as (…, H, 3·Dh) and chunks the last
axis): ``_split_qkv`` takes them apart once the head count is known.
"""

from __future__ import annotations

import re

from torch import Tensor

from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.checkpoints.convert import Converter, LoadError, first
from archplay.models.checkpoints.llama import rope, rotary_fraction


def _config(hf: dict, name: str) -> DecoderConfig:
    d, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if d % n_head:
        raise LoadError(f"hidden_size {d} does not divide into {n_head} heads")
    theta, scaling = rope(hf, theta=float(hf.get("rotary_emb_base", 10000.0)))  # older configs: rotary_emb_base
    bias = bool(hf.get("attention_bias", True))
    return DecoderConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layer=hf["num_hidden_layers"], n_head=n_head,
        d_ff=hf.get("intermediate_size") or 4 * d, max_seq_len=hf.get("max_position_embeddings", 2048),
        positions="rotary", rope_theta=theta, rope_scaling=scaling,
        rotary_fraction=rotary_fraction(hf, default=float(hf.get("rotary_pct", 0.25))),
        norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5), mlp="mlp", activation=hf.get("hidden_act", "gelu"),
        qkv_bias=bias, o_bias=bias, mlp_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=first(hf.get("eos_token_id")), name=name,
    )  # fmt: skip


_TOP = {"gpt_neox.embed_in.weight": "embed_tokens.weight", "embed_out.weight": "lm_head.weight",
        "gpt_neox.final_layer_norm.weight": "norm.weight", "gpt_neox.final_layer_norm.bias": "norm.bias"}  # fmt: skip
_BLOCK = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm", "attention.dense": "attn.o_proj",
          "attention.query_key_value": "attn.qkv", "mlp.dense_h_to_4h": "mlp.up_proj",
          "mlp.dense_4h_to_h": "mlp.down_proj"}  # fmt: skip


def _rename(key: str, t: Tensor) -> dict[str, Tensor]:
    if key in _TOP:
        return {_TOP[key]: t}
    if key.endswith(("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")):
        return {}  # buffers older checkpoints carry (the causal mask, RoPE frequencies): recomputed
    m = re.fullmatch(r"gpt_neox\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m.group(2) in _BLOCK:
        return {f"layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}": t}
    return {key: t}  # reported as unexpected


def _split_qkv(cfg: DecoderConfig, state: dict[str, Tensor]) -> None:
    """query_key_value (3·H·Dh, D) is (H, 3, Dh, D) per head: q, k, v are [:, 0], [:, 1], [:, 2]."""
    for key in [k for k in state if ".attn.qkv." in k]:
        fused = state.pop(key)
        if fused.shape[0] != 3 * cfg.n_head * cfg.head_dim:
            raise LoadError(f"{key}: {fused.shape[0]} rows, but {cfg.n_head} heads of {cfg.head_dim} need "
                            f"{3 * cfg.n_head * cfg.head_dim}")  # fmt: skip
        per_head = fused.reshape(cfg.n_head, 3, cfg.head_dim, *fused.shape[1:])  # (H, 3, Dh[, D])
        for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
            state[key.replace(".qkv.", f".{part}.")] = per_head[:, i].reshape(-1, *fused.shape[1:]).contiguous()


CONVERTER = Converter(_config, _rename, _split_qkv)
