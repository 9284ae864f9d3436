"""Gemma 2 and Gemma 3 checkpoints (``model_type: gemma2``, ``gemma3_text``) -> the decoder family.

Llama's skeleton (RoPE, grouped-query attention, a gated MLP, RMSNorm), with Gemma's own parts,
each a ``DecoderConfig`` field:

* ``norm`` "gemma_rmsnorm": the weight is stored as an offset from 1, x̂·(1 + w), in float32;
* ``embed_scale``: the token embeddings × √d_model, the factor rounded to the weights' dtype;
* ``sandwich_norm``: a norm after the attention and after the MLP as well as before them
  (``post_attention_layernorm`` here is that post-attention norm, not Llama's pre-MLP norm);
* ``attn_scale``: q·k × query_pre_attn_scalar^-½, not 1/√head_dim;
* ``attn_softcap`` (Gemma 2) and ``final_softcap``: cap·tanh(x/cap) on the scaled scores, on the logits;
* ``layer_types``: local (sliding window) and global layers alternating, Gemma 2 one to one,
  Gemma 3 five local to one global (``sliding_window_pattern`` in older configs);
* Gemma 3 only: q/k norms per head (Gemma's RMSNorm) before RoPE, and a RoPE base of the local layers'
  own (``rope_parameters["sliding_attention"]``; older configs: ``rope_local_base_freq``), while the
  global layers keep theirs and any scaling (``rope_parameters["full_attention"]``; older:
  ``rope_theta`` and ``rope_scaling``).

Missing keys take transformers' defaults for the model type (they differ from Llama's: head_dim 256,
query_pre_attn_scalar 256, a window of 4096, Gemma 2's caps 50 and 30, tied embeddings).
transformers 5 ignores ``attn_logit_softcapping`` in Gemma 3's attention; so does this converter.
"""

from __future__ import annotations

from torch import Tensor

from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.checkpoints.convert import Converter, LoadError
from archplay.models.checkpoints.llama import _llama_like_config, _llama_rename, rope

_DEFAULTS = {  # transformers' config defaults that differ between the two
    "gemma2": dict(max_position_embeddings=8192, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, pattern=2),
    "gemma3_text": dict(max_position_embeddings=131_072, attn_logit_softcapping=None, final_logit_softcapping=None,
                        pattern=6),
}  # fmt: skip


def _layer_types(hf: dict, n_layer: int, pattern: int) -> list[str]:
    """Each layer "sliding" or "full": ``layer_types`` when given, else every ``pattern``-th layer global."""
    kinds = hf.get("layer_types")
    if kinds is None:
        pattern = hf.get("sliding_window_pattern", pattern)  # older Gemma 3 configs
        return ["sliding" if (i + 1) % pattern else "full" for i in range(n_layer)]
    bad = sorted({str(k) for k in kinds} - {"sliding_attention", "full_attention"})
    if bad or len(kinds) != n_layer:
        raise LoadError(f"layer_types must give one of sliding_attention, full_attention per layer ({n_layer}); "
                        f"got {kinds!r}")  # fmt: skip
    return ["sliding" if k == "sliding_attention" else "full" for k in kinds]


def _gemma3_rope(hf: dict) -> tuple[float, dict | None, float]:
    """(global θ, global scaling or None, local θ) from ``rope_parameters`` per layer type (transformers 5)
    or the older ``rope_theta``, ``rope_scaling`` (global layers) and ``rope_local_base_freq``."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    else:
        full, local = dict(hf.get("rope_scaling") or {}), {}
    context = hf.get("max_position_embeddings", _DEFAULTS["gemma3_text"]["max_position_embeddings"])  # yarn, dynamic
    theta, scaling = rope({"rope_parameters": full, "max_position_embeddings": context},
                          theta=float(hf.get("rope_theta", 1_000_000.0)))  # fmt: skip
    local_theta, local_scaling = rope({"rope_parameters": local}, theta=float(hf.get("rope_local_base_freq", 10_000.0)))
    if local_scaling is not None:
        raise LoadError(f"RoPE scaling {local_scaling['rope_type']!r} on Gemma 3's local (sliding) layers is not "
                        "supported; only the global layers may be scaled")  # fmt: skip
    return theta, scaling, local_theta


def _gemma_config(hf: dict, name: str, mtype: str) -> DecoderConfig:
    defaults = _DEFAULTS[mtype]
    if hf.get("use_bidirectional_attention"):
        raise LoadError(f"{mtype} with use_bidirectional_attention (an encoder, not a causal LM) is not supported")
    n_layer = hf["num_hidden_layers"]
    window = hf.get("sliding_window", 4096)
    types = _layer_types(hf, n_layer, defaults["pattern"])
    if window is None:  # no window: transformers' sliding layers see every earlier token
        types = ["full"] * n_layer
    caps = {key: hf.get(key, defaults[key]) for key in ("attn_logit_softcapping", "final_logit_softcapping")}
    bias = bool(hf.get("attention_bias", False))
    fields = dict(
        head_dim=hf.get("head_dim", 256),
        max_seq_len=hf.get("max_position_embeddings", defaults["max_position_embeddings"]),
        norm="gemma_rmsnorm", activation=hf.get("hidden_activation") or "gelu_pytorch_tanh",
        qkv_bias=bias, o_bias=bias, mlp_bias=False, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        layer_types=types, sliding_window=window if "sliding" in types else None,
        embed_scale=True, sandwich_norm=True, attn_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5,
        final_softcap=caps["final_logit_softcapping"],
    )  # fmt: skip
    if mtype == "gemma2":
        fields.update(attn_softcap=caps["attn_logit_softcapping"])
    else:  # transformers' Gemma3Attention does not cap its scores, whatever the config says
        theta, scaling, local_theta = _gemma3_rope(hf)
        fields.update(qk_norm="head", rope_theta=theta, rope_scaling=scaling, rope_local_theta=local_theta)
    return _llama_like_config(hf, name, **fields)


_NORMS = {  # Gemma's four norms per block -> ours (Llama's post_attention_layernorm is its pre-MLP norm)
    ".input_layernorm.": ".attn_norm.", ".post_attention_layernorm.": ".post_attn_norm.",
    ".pre_feedforward_layernorm.": ".mlp_norm.", ".post_feedforward_layernorm.": ".post_mlp_norm.",
}  # fmt: skip


def _gemma_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    for theirs, ours in _NORMS.items():
        key = key.replace(theirs, ours)
    return _llama_rename(key, t)  # model. prefix, self_attn -> attn, rotary buffers dropped


GEMMA2 = Converter(lambda hf, name: _gemma_config(hf, name, "gemma2"), _gemma_rename)
GEMMA3_TEXT = Converter(lambda hf, name: _gemma_config(hf, name, "gemma3_text"), _gemma_rename)
