"""Llama-style checkpoints -> the decoder family (``llama``, ``mistral``, ``qwen2``, ``qwen3``,
``phi3``) and the mixture of experts (``mixtral``, ``qwen2_moe``, ``qwen3_moe``, ``olmoe``): RoPE
(with its scalings, and partial), RMSNorm, gated MLPs, grouped-query attention, sliding windows
per layer, q/k norms (Qwen3 per head, OLMoE over the whole projection), Phi-3's fused projections
(split here), and experts stored one by one or fused.

``rope`` reads every RoPE scaling ``RotaryEmbedding`` implements (default, linear, llama3, yarn, longrope,
dynamic) for all the converters that share it; Phi-3 takes only default and longrope (older configs' "su"
and "yarn" are longrope), as transformers' Phi3Config does.
"""

from __future__ import annotations

import re

from torch import Tensor

from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.architectures.layers import ROPE_SCALINGS
from archplay.models.architectures.moe import MoEConfig
from archplay.models.checkpoints.convert import Converter, LoadError, first

_ROPE_TYPES = ROPE_SCALINGS  # default, linear, llama3, yarn, longrope, dynamic
_ROPE_NEEDS = {  # keys transformers requires for each scaling (its _validate_*_rope_parameters)
    "linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor"), "yarn": ("factor",),
    "longrope": ("short_factor", "long_factor"), "dynamic": ("factor",),
}  # fmt: skip


def rope(hf: dict, theta: float = 10000.0) -> tuple[float, dict | None]:
    """(θ, scaling or None) from ``rope_parameters`` (transformers 5) or the older top-level keys.

    The scaling dict is completed as transformers' ``standardize_rope_params`` does: llama3, yarn and
    longrope get ``original_max_position_embeddings`` (a top-level one wins, as Phi-3 stores it; else
    ``max_position_embeddings``), and yarn, longrope and dynamic also carry ``max_position_embeddings``
    (the context their defaults and dynamic's threshold read), so ``RotaryEmbedding`` needs nothing else."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", theta)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise LoadError(f"RoPE scaling {kind!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
    if kind == "default":
        return theta, None
    missing = [key for key in _ROPE_NEEDS[kind] if params.get(key) is None]
    if missing:
        raise LoadError(f"RoPE scaling {kind!r} needs {', '.join(missing)} in rope_parameters")
    scaling = {**params, "rope_type": kind}
    max_len = hf.get("max_position_embeddings", 2048)
    if kind in ("llama3", "yarn", "longrope"):
        if hf.get("original_max_position_embeddings") is not None:
            scaling["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
        elif scaling.get("original_max_position_embeddings") is None:
            scaling["original_max_position_embeddings"] = max_len
    if kind in ("yarn", "longrope", "dynamic"):
        scaling["max_position_embeddings"] = max_len
    return theta, scaling


def rotary_fraction(hf: dict, default: float = 1.0) -> float:
    """Partial RoPE: the share of each head's channels rotated (``partial_rotary_factor``)."""
    params = hf.get("rope_parameters") or {}
    return float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", default)))


def _llama_like_config(hf: dict, name: str, *, qwen2: bool = False, cls=DecoderConfig, **extra) -> DecoderConfig:
    d, n_head, n_layer = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    theta, scaling = rope(hf)
    window, types = hf.get("sliding_window"), None
    if qwen2 and hf.get("layer_types"):
        types = ["sliding" if t == "sliding_attention" else "full" for t in hf["layer_types"]]
    elif qwen2 and hf.get("use_sliding_window") and window:
        first_sliding = hf.get("max_window_layers", n_layer)
        types = ["sliding" if i >= first_sliding else "full" for i in range(n_layer)]
    elif not qwen2 and window:  # Mistral / Mixtral: every layer uses the window
        types = ["sliding"] * n_layer
    bias = bool(hf.get("attention_bias", False))
    fields = dict(
        vocab_size=hf["vocab_size"], d_model=d, n_layer=n_layer, n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head, head_dim=hf.get("head_dim") or d // n_head,
        d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        positions="rotary", rope_theta=theta, rope_scaling=scaling,
        rotary_fraction=rotary_fraction(hf),
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="gated",
        activation=hf.get("hidden_act", "silu"),
        qkv_bias=True if qwen2 else bias, o_bias=False if qwen2 else bias,
        mlp_bias=bool(hf.get("mlp_bias", False)), tie_embeddings=hf.get("tie_word_embeddings", False),
        sliding_window=window if types and "sliding" in types else None, layer_types=types,
        bos_token_id=hf.get("bos_token_id"), eos_token_id=first(hf.get("eos_token_id")), name=name,
    )  # fmt: skip
    cfg = cls(**{**fields, **extra})
    scaling = cfg.rope_scaling or {}
    for key in ("short_factor", "long_factor") if scaling.get("rope_type") == "longrope" else ():
        if len(scaling[key]) != cfg.rotary_dim // 2:
            raise LoadError(f"longrope's {key} has {len(scaling[key])} entries; it needs one per rotated channel "
                            f"pair, {cfg.rotary_dim // 2}")  # fmt: skip
    return cfg


def _llama_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    key = key.removeprefix("model.")
    if key.endswith("rotary_emb.inv_freq"):  # a buffer some checkpoints carry; recomputed
        return {}
    key = key.replace(".self_attn.", ".attn.")
    key = key.replace(".input_layernorm.", ".attn_norm.").replace(".post_attention_layernorm.", ".mlp_norm.")
    return {key: t}


def _mixtral_config(hf: dict, name: str) -> MoEConfig:
    return _llama_like_config(
        hf, name, cls=MoEConfig, n_experts=hf["num_local_experts"], top_k=hf["num_experts_per_tok"]
    )


def _mixtral_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    """transformers 5 writes Mixtral's experts one by one (w1 gate, w3 up, w2 down); fused
    3-D tensors (gate_up_proj (E, 2I, D), down_proj (E, D, I)) are split per expert too."""
    key = key.replace(".block_sparse_moe.", ".mlp.")
    m = re.fullmatch(r"(model\.)?layers\.(\d+)\.mlp\.(.+)", key)
    if not m:
        return _llama_rename(key, t)
    i, rest = m.group(2), m.group(3)
    w = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
    if rest == "gate.weight":
        return {f"layers.{i}.mlp.router.weight": t}
    e = re.fullmatch(r"experts\.(\d+)\.(w[123])\.weight", rest)
    if e:
        return {f"layers.{i}.mlp.experts.{e.group(1)}.{w[e.group(2)]}.weight": t}
    if rest == "experts.gate_up_proj":
        out = {}
        for j, fused in enumerate(t):
            gate, up = fused.chunk(2, dim=0)
            out[f"layers.{i}.mlp.experts.{j}.gate_proj.weight"] = gate.contiguous()
            out[f"layers.{i}.mlp.experts.{j}.up_proj.weight"] = up.contiguous()
        return out
    if rest == "experts.down_proj":
        return {f"layers.{i}.mlp.experts.{j}.down_proj.weight": d.contiguous() for j, d in enumerate(t)}
    return _llama_rename(key, t)  # Qwen2-MoE's expert and shared-expert names are already ours


def _qwen_moe_layers(hf: dict) -> list[bool]:
    """Qwen-MoE: every ``decoder_sparse_step``-th layer routes, except the ``mlp_only_layers``."""
    n_layer, step = hf["num_hidden_layers"], hf.get("decoder_sparse_step", 1)
    dense = set(hf.get("mlp_only_layers") or [])
    return [i not in dense and (i + 1) % step == 0 for i in range(n_layer)]


def _n_experts(hf: dict) -> int:
    return hf.get("num_experts") or hf["num_local_experts"]  # transformers 5 writes the latter for some


def _qwen2_moe_config(hf: dict, name: str) -> MoEConfig:
    return _llama_like_config(
        hf, name, qwen2=True, cls=MoEConfig, n_experts=_n_experts(hf), top_k=hf["num_experts_per_tok"],
        d_expert=hf["moe_intermediate_size"], normalize_top_k=bool(hf.get("norm_topk_prob", False)),
        d_shared_expert=hf.get("shared_expert_intermediate_size") or None, moe_layers=_qwen_moe_layers(hf),
    )  # fmt: skip


def _qwen3_moe_config(hf: dict, name: str) -> MoEConfig:
    """Qwen3's attention (q/k norms per head) with Qwen2-MoE's experts, without a shared expert."""
    hf, bias = _qwen3_window(hf), bool(hf.get("attention_bias", False))
    return _llama_like_config(
        hf, name, qwen2=True, cls=MoEConfig, qk_norm="head", qkv_bias=bias, o_bias=bias, n_experts=_n_experts(hf),
        top_k=hf["num_experts_per_tok"], d_expert=hf["moe_intermediate_size"],
        normalize_top_k=bool(hf.get("norm_topk_prob", False)), moe_layers=_qwen_moe_layers(hf),
    )  # fmt: skip


def _olmoe_config(hf: dict, name: str) -> MoEConfig:
    """OLMoE: q/k norms over the whole projections (not per head), every layer routed, no shared expert."""
    if hf.get("clip_qkv") is not None:
        raise LoadError("OLMoE checkpoints with clip_qkv (q, k and v clamped to ±clip_qkv) are not supported")
    return _llama_like_config(
        hf, name, cls=MoEConfig, qk_norm="all", n_experts=_n_experts(hf), top_k=hf["num_experts_per_tok"],
        normalize_top_k=bool(hf.get("norm_topk_prob", False)),
    )  # fmt: skip


def _qwen3_config(hf: dict, name: str) -> DecoderConfig:
    """Qwen2's layout (sliding windows on the upper layers, when switched on) with q/k norms, and one
    ``attention_bias`` for q, k, v and o alike."""
    bias = bool(hf.get("attention_bias", False))
    return _llama_like_config(_qwen3_window(hf), name, qwen2=True, qk_norm="head", qkv_bias=bias, o_bias=bias)


def _qwen3_window(hf: dict) -> dict:
    if hf.get("use_sliding_window"):
        return hf
    return {**hf, "sliding_window": None, "layer_types": None}  # transformers drops the window, and the sliding layers


def _phi3_config(hf: dict, name: str) -> DecoderConfig:
    """transformers' Phi3Config: RoPE default or longrope only (older configs' "su" and "yarn" mean longrope), and
    ``original_max_position_embeddings`` a config field of its own (4096 when absent) that wins over the one in
    ``rope_parameters``."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    kind = params.get("rope_type", params.pop("type", "default"))
    if kind in ("su", "yarn"):
        kind = "longrope"
    if kind not in ("default", "longrope"):
        raise LoadError(f"phi3 with RoPE scaling {kind!r} is not supported; transformers' Phi-3 takes default "
                        "or longrope")  # fmt: skip
    params.pop("type", None)
    old_len = hf.get("original_max_position_embeddings") or 4096
    # longrope: generation reruns the whole sequence when it first grows past old_len (transformers' Phi-3)
    rerun = {"rerun_on_switch": True} if kind == "longrope" else {}
    hf = {**hf, "rope_parameters": {**params, "rope_type": kind, **rerun}, "original_max_position_embeddings": old_len}
    return _llama_like_config(hf, name, qwen2=False)


def _phi3_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    """Phi-3 fuses the gate and up projections (gate first) and q, k, v: the MLP is split here, the
    attention in ``_split_qkv`` (where the head counts are known)."""
    if key.endswith(".mlp.gate_up_proj.weight"):
        gate, up = t.chunk(2, dim=0)  # (2I, D) -> (I, D) each
        stem = key.removesuffix("gate_up_proj.weight")
        return {**_llama_rename(stem + "gate_proj.weight", gate), **_llama_rename(stem + "up_proj.weight", up)}
    return _llama_rename(key.replace(".self_attn.qkv_proj.", ".self_attn.qkv."), t)


def _split_qkv(cfg: DecoderConfig, state: dict[str, Tensor]) -> None:
    """Phi-3's qkv_proj rows are [q (H·Dh); k (Hkv·Dh); v (Hkv·Dh)]: split into q_proj, k_proj, v_proj."""
    sizes = (cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim)
    for key in [k for k in state if ".attn.qkv." in k]:
        fused = state.pop(key)
        if fused.shape[0] != sum(sizes):
            raise LoadError(f"{key}: {fused.shape[0]} rows, but the config's heads need {sum(sizes)} (q, k, v)")
        for part, t in zip(("q_proj", "k_proj", "v_proj"), fused.split(sizes, dim=0)):
            state[key.replace(".qkv.", f".{part}.")] = t.contiguous()


LLAMA = Converter(lambda hf, name: _llama_like_config(hf, name, qwen2=False), _llama_rename)
MISTRAL = LLAMA  # Llama's names; its sliding_window (when set) applies to every layer
QWEN2 = Converter(lambda hf, name: _llama_like_config(hf, name, qwen2=True), _llama_rename)
QWEN3 = Converter(_qwen3_config, _llama_rename)
PHI3 = Converter(_phi3_config, _phi3_rename, _split_qkv)
MIXTRAL = Converter(_mixtral_config, _mixtral_rename)
QWEN2_MOE = Converter(_qwen2_moe_config, _mixtral_rename)
QWEN3_MOE = Converter(_qwen3_moe_config, _mixtral_rename)
OLMOE = Converter(_olmoe_config, _mixtral_rename)
