"""DeepSeek-V3 checkpoints (``model_type: deepseek_v3``) -> the mixture-of-experts family.

Llama's skeleton (RMSNorm, pre-norm blocks, SwiGLU) with DeepSeek's two parts, each ``MoEConfig`` fields:

* multi-head latent attention (``architectures/mla.py``): ``kv_lora_rank``, ``q_lora_rank`` (None: one
  ``q_proj``), ``qk_rope_head_dim`` (head_dim = qk_nope_head_dim + qk_rope_head_dim), ``v_head_dim``,
  ``rope_interleaved`` (transformers' ``rope_interleave``, on by default: RoPE on channel pairs (0, 1), (2, 3), ...);
* the router (``moe.GroupedSigmoidRouter``): sigmoid scores, ``e_score_correction_bias`` for choosing only,
  ``n_group`` / ``topk_group`` group-limited routing, ``norm_topk_prob``, ``routed_scaling_factor``; plus
  ``n_shared_experts`` always-on experts (one MLP of n_shared_experts × moe_intermediate_size, ungated) and
  ``first_k_dense_replace`` dense layers (width intermediate_size) before the routed ones.

RoPE and its scalings come from ``llama.rope`` (default, linear, llama3, yarn, longrope, dynamic). The
released checkpoints use YaRN with ``mscale`` = ``mscale_all_dim``: the rotation's own factor on cos and sin
is then 1, and the softmax scale is 1/√(qk_nope + qk_rope) × mscale(factor, mscale_all_dim)², with
mscale(s, m) = 0.1·m·ln(s) + 1 (transformers' ``yarn_get_mscale`` and ``yarn_apply_mscale``: ``attn_scale``).

Refused, saying why: a config whose every layer is dense (no routed layer: not a mixture of experts). The
multi-token-prediction layers some checkpoints carry after the last layer are not used (transformers skips them too).
"""

from __future__ import annotations

import re

from torch import Tensor

from archplay.models.architectures.layers import yarn_mscale
from archplay.models.architectures.moe import MoEConfig
from archplay.models.checkpoints.convert import Converter, LoadError
from archplay.models.checkpoints.llama import _llama_like_config, _mixtral_rename

_DEFAULTS = dict(  # transformers' DeepseekV3Config defaults for keys a config.json may leave out
    kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=8,
    topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True, routed_scaling_factor=2.5,
    n_shared_experts=1, n_routed_experts=256, moe_intermediate_size=2048, rope_interleave=True,
)  # fmt: skip


def _get(hf: dict, key: str):
    """``hf[key]``, or transformers' default when it is missing (or null)."""
    value = hf.get(key)
    return _DEFAULTS[key] if value is None else value


def _scale(hf: dict, head_dim: int) -> float | None:
    """None (the attention's own 1/√(qk_nope + qk_rope)), or that times mscale² when a scaled RoPE asks for it
    (transformers' yarn_apply_mscale, which it applies to any rope_type but the default)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    factor = float(params.get("factor", 1.0))
    if kind == "default" or not params.get("mscale_all_dim") or factor <= 1:
        return None
    mscale = yarn_mscale(factor, float(params["mscale_all_dim"]))
    return head_dim**-0.5 * mscale * mscale


def routed_layers(hf: dict, dense: int, what: str) -> list[bool]:
    """One flag per layer: the first ``dense`` (first_k_dense_replace) keep a dense MLP, the others route."""
    n_layer = hf["num_hidden_layers"]
    if dense >= n_layer:
        raise LoadError(f"{what}: first_k_dense_replace ({dense}) leaves none of the {n_layer} layers routed; "
                        "a model without a mixture-of-experts layer is not supported")  # fmt: skip
    return [i >= dense for i in range(n_layer)]


def _deepseek_v3_config(hf: dict, name: str) -> MoEConfig:
    moe_layers = routed_layers(hf, _get(hf, "first_k_dense_replace"), "deepseek_v3")
    rope_dim, nope_dim = _get(hf, "qk_rope_head_dim"), _get(hf, "qk_nope_head_dim")
    head_dim = nope_dim + rope_dim
    n_shared = hf.get("n_shared_experts", _DEFAULTS["n_shared_experts"]) or 0
    d_expert = _get(hf, "moe_intermediate_size")
    bias = bool(hf.get("attention_bias", False))
    return _llama_like_config(
        {**hf, "sliding_window": None}, name, cls=MoEConfig,
        n_kv_head=hf["num_attention_heads"], head_dim=head_dim, qkv_bias=bias, o_bias=bias,
        attn_scale=_scale(hf, head_dim), n_experts=_get(hf, "n_routed_experts"), top_k=_get(hf, "num_experts_per_tok"),
        d_expert=d_expert, normalize_top_k=bool(_get(hf, "norm_topk_prob")),
        d_shared_expert=d_expert * n_shared or None, shared_expert_gate=False,
        moe_layers=moe_layers, router_score="sigmoid", n_group=_get(hf, "n_group"),
        topk_group=_get(hf, "topk_group"), routed_scaling_factor=float(_get(hf, "routed_scaling_factor")),
        kv_lora_rank=_get(hf, "kv_lora_rank"), q_lora_rank=hf.get("q_lora_rank", _DEFAULTS["q_lora_rank"]),
        qk_rope_head_dim=rope_dim, v_head_dim=_get(hf, "v_head_dim"),
        rope_interleaved=bool(_get(hf, "rope_interleave")),
    )  # fmt: skip


def _deepseek_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    """Shared experts and the router's correction bias get our names; the rest is Mixtral's and Llama's
    (fused experts split one by one, ``mlp.gate`` -> ``mlp.router``, ``self_attn`` -> ``attn``)."""
    key = re.sub(r"\.mlp\.shared_experts\.", ".mlp.shared_expert.", key)
    m = re.fullmatch(r"(model\.)?layers\.(\d+)\.mlp\.gate\.e_score_correction_bias", key)
    if m:
        return {f"layers.{m.group(2)}.mlp.router.e_score_correction_bias": t}
    return _mixtral_rename(key, t)


def _drop_extra_layers(cfg: MoEConfig, state: dict[str, Tensor]) -> None:
    """Multi-token-prediction modules are stored as layers after the last one: not part of the model."""
    for key in [k for k in state if (m := re.match(r"layers\.(\d+)\.", k)) and int(m.group(1)) >= cfg.n_layer]:
        del state[key]


DEEPSEEK_V3 = Converter(_deepseek_v3_config, _deepseek_rename, _drop_extra_layers)

__all__ = ["DEEPSEEK_V3"]
