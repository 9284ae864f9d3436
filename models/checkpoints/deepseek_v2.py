"""DeepSeek-V2 checkpoints (``model_type: deepseek_v2``: DeepSeek-V2, V2-Lite, V2.5) -> the mixture-of-experts family.

DeepSeek-V3's skeleton (``deepseek.py``): multi-head latent attention, ungated shared experts,
``first_k_dense_replace`` dense layers, with V2's own router (``moe.GroupedSoftmaxRouter``): a softmax over
all experts in float32, then top-k, either over all of them (``topk_method: greedy``) or only within the
``topk_group`` best of ``n_group`` groups, a group scored by its largest probability
(``group_limited_greedy``); the chosen probabilities × ``routed_scaling_factor``, not renormalised
(transformers' DeepSeek-V2 never renormalises, whatever ``norm_topk_prob`` says; neither do we). No
correction bias. RoPE on the rope channels in interleaved pairs (transformers' complex rotation); YaRN's
softmax-scale correction as in V3 (``deepseek._scale``).

Refused, saying why: another ``topk_method`` (V3's ``noaux_tc`` is ``deepseek_v3``), and a config whose every
layer is dense.
"""

from __future__ import annotations

from archplay.models.architectures.moe import MoEConfig
from archplay.models.checkpoints import deepseek
from archplay.models.checkpoints.convert import Converter, LoadError
from archplay.models.checkpoints.llama import _llama_like_config

_DEFAULTS = dict(  # transformers' DeepseekV2Config defaults for keys a config.json may leave out
    kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128,
    first_k_dense_replace=0, routed_scaling_factor=1.0, n_shared_experts=2, n_routed_experts=64,
    moe_intermediate_size=1407, topk_method="greedy",
)  # fmt: skip
TOPK_METHODS = ("greedy", "group_limited_greedy")


def _get(hf: dict, key: str):
    value = hf.get(key)
    return _DEFAULTS[key] if value is None else value


def _deepseek_v2_config(hf: dict, name: str) -> MoEConfig:
    moe_layers = deepseek.routed_layers(hf, _get(hf, "first_k_dense_replace"), "deepseek_v2")
    method = _get(hf, "topk_method")
    if method not in TOPK_METHODS:
        raise LoadError(f"deepseek_v2: topk_method {method!r} is not supported; supported: {', '.join(TOPK_METHODS)}")
    grouped = method == "group_limited_greedy"
    if grouped and not (hf.get("n_group") and hf.get("topk_group")):
        raise LoadError("deepseek_v2: topk_method 'group_limited_greedy' needs n_group and topk_group")
    rope_dim, nope_dim = _get(hf, "qk_rope_head_dim"), _get(hf, "qk_nope_head_dim")
    head_dim = nope_dim + rope_dim
    n_shared = hf.get("n_shared_experts", _DEFAULTS["n_shared_experts"]) or 0
    d_expert = _get(hf, "moe_intermediate_size")
    bias = bool(hf.get("attention_bias", False))
    top_k = hf.get("num_experts_per_tok")
    if not top_k:
        raise LoadError("deepseek_v2: config.json lacks num_experts_per_tok, the experts each token is routed to")
    return _llama_like_config(
        {**hf, "sliding_window": None}, name, cls=MoEConfig,
        n_kv_head=hf["num_attention_heads"], head_dim=head_dim, qkv_bias=bias, o_bias=bias,
        attn_scale=deepseek._scale(hf, head_dim), n_experts=_get(hf, "n_routed_experts"), top_k=top_k,
        d_expert=d_expert, normalize_top_k=False, d_shared_expert=d_expert * n_shared or None,
        shared_expert_gate=False, moe_layers=moe_layers, router_score="softmax",
        n_group=hf["n_group"] if grouped else 1, topk_group=hf["topk_group"] if grouped else 1,
        routed_scaling_factor=float(_get(hf, "routed_scaling_factor")),
        kv_lora_rank=_get(hf, "kv_lora_rank"), q_lora_rank=hf.get("q_lora_rank", _DEFAULTS["q_lora_rank"]),
        qk_rope_head_dim=rope_dim, v_head_dim=_get(hf, "v_head_dim"), rope_interleaved=True,
    )  # fmt: skip


DEEPSEEK_V2 = Converter(_deepseek_v2_config, deepseek._deepseek_rename, deepseek._drop_extra_layers)

__all__ = ["DEEPSEEK_V2"]
