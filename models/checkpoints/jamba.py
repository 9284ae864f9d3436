"""Jamba checkpoints (``model_type: jamba``) -> the hybrid family (``architectures/hybrid.py``).

transformers' JambaConfig says where each part goes by two periods; here they become per-layer flags:

    attention layer  i % attn_layer_period == attn_layer_offset      (else a Mamba mixer)
    MoE layer        i % expert_layer_period == expert_layer_offset   (else a dense gated MLP), when num_experts > 1

The attention is grouped-query with no positions (NoPE) and no biases; the Mamba mixers are Mamba-1's with an
RMSNorm on each of Δ_low, B and C (``mamba_*`` keys); the router is a softmax, top-k, the weights not
renormalised; experts and the dense MLP share ``intermediate_size``. Tensor names: ``self_attn`` -> ``attn``,
``mamba`` -> ``mixer``, ``feed_forward`` -> ``mlp``, ``input_layernorm`` -> ``attn_norm`` or (a Mamba layer)
``mixer_norm``, ``pre_ff_layernorm`` -> ``mlp_norm``, ``final_layernorm`` -> ``norm``; experts stored one by one
or fused (split here, as Mixtral's).

Refused, saying why: an offset not below its period (transformers refuses it too), ``num_experts`` 1 or an
expert pattern that routes no layer (no mixture of experts: not this family).

Ignored, as they change only training, kernels or initialisation: use_mamba_kernels, use_mambapy,
use_associative_scan, router_aux_loss_coef, output_router_logits, attention_dropout, initializer_range.
"""

from __future__ import annotations

import math
import re

from torch import Tensor

from archplay.models.architectures.hybrid import HybridConfig
from archplay.models.checkpoints.convert import Converter, LoadError, first
from archplay.models.checkpoints.llama import _mixtral_rename

_DEFAULTS = dict(  # transformers' JambaConfig defaults for keys a config.json may leave out
    num_experts=16, num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=8,
    attn_layer_offset=4, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto",
    mamba_conv_bias=True, mamba_proj_bias=False, rms_norm_eps=1e-6, hidden_act="silu", max_position_embeddings=262144,
)  # fmt: skip


def _get(hf: dict, key: str):
    value = hf.get(key)
    return _DEFAULTS[key] if value is None else value


def _pattern(hf: dict, what: str, n_layer: int) -> list[bool]:
    """One flag per layer: ``i % {what}_layer_period == {what}_layer_offset``."""
    period, offset = _get(hf, f"{what}_layer_period"), _get(hf, f"{what}_layer_offset")
    if not (isinstance(period, int) and isinstance(offset, int) and 0 <= offset < period):
        raise LoadError(f"jamba: {what}_layer_offset ({offset}) must be at least 0 and smaller than "
                        f"{what}_layer_period ({period})")  # fmt: skip
    return [i % period == offset for i in range(n_layer)]


def jamba_config(hf: dict, name: str) -> HybridConfig:
    n_layer, d, n_head = hf["num_hidden_layers"], hf["hidden_size"], hf["num_attention_heads"]
    n_experts = hf.get("num_experts") or hf.get("num_local_experts") or _DEFAULTS["num_experts"]
    moe = _pattern(hf, "expert", n_layer) if n_experts > 1 else [False] * n_layer
    if not any(moe):
        period, offset = _get(hf, "expert_layer_period"), _get(hf, "expert_layer_offset")
        raise LoadError(f"jamba with num_experts {n_experts} and expert_layer_period/offset {period}/{offset} has no "
                        f"mixture-of-experts layer among its {n_layer}; only Jamba models with experts are supported")
    rank = _get(hf, "mamba_dt_rank")
    return HybridConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layer=n_layer, n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head, head_dim=hf.get("head_dim") or d // n_head,
        d_ff=hf["intermediate_size"], max_seq_len=_get(hf, "max_position_embeddings"), positions="none",
        norm="rmsnorm", norm_eps=_get(hf, "rms_norm_eps"), mlp="gated", activation=_get(hf, "hidden_act"),
        qkv_bias=False, o_bias=False, mlp_bias=False, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        n_experts=n_experts, top_k=_get(hf, "num_experts_per_tok"), normalize_top_k=False, moe_layers=moe,
        attn_layers=_pattern(hf, "attn", n_layer), d_state=_get(hf, "mamba_d_state"), d_conv=_get(hf, "mamba_d_conv"),
        expand=_get(hf, "mamba_expand"), dt_rank=math.ceil(d / 16) if rank == "auto" else rank,
        ssm_conv_bias=bool(_get(hf, "mamba_conv_bias")), ssm_bias=bool(_get(hf, "mamba_proj_bias")),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=first(hf.get("eos_token_id")), name=name,
    )  # fmt: skip


_NAMES = (("model.final_layernorm.", "norm."), (".mamba.", ".mixer."), (".feed_forward.", ".mlp."),
          (".pre_ff_layernorm.", ".mlp_norm."))  # fmt: skip


def jamba_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    """Jamba's names -> ours; the experts and the attention through Mixtral's and Llama's renames (which also
    make ``input_layernorm`` ``attn_norm``: ``_mixer_norms`` renames a Mamba layer's)."""
    for old, new in _NAMES:
        key = key.replace(old, new)
    return _mixtral_rename(key, t)


def _mixer_norms(cfg: HybridConfig, state: dict[str, Tensor]) -> None:
    """A Mamba layer's input norm is ``mixer_norm`` (the rename cannot tell the layer kinds apart)."""
    for key in list(state):
        m = re.match(r"layers\.(\d+)\.attn_norm\.", key)
        if m and int(m.group(1)) < cfg.n_layer and not cfg.attn_layers[int(m.group(1))]:
            state[key.replace(".attn_norm.", ".mixer_norm.")] = state.pop(key)


JAMBA = Converter(jamba_config, jamba_rename, _mixer_norms)

__all__ = ["JAMBA"]
