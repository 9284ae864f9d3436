"""Mamba checkpoints (``model_type: mamba`` and ``mamba2``) -> the ssm family."""

from __future__ import annotations

import math

from torch import Tensor

from archplay.models.architectures.layers import ACTIVATIONS
from archplay.models.architectures.ssm import MambaConfig
from archplay.models.checkpoints.convert import Converter


def hf_config(hf: dict, name: str) -> MambaConfig:
    """transformers' MambaConfig (as a config.json dict) -> ours. Raises ValueError for what we cannot run.

    Ignored, as they change only training or initialisation: residual_in_fp32 (we compute in
    float32 throughout), rescale_prenorm_residual, time_step_{scale,min,max,floor,init_scheme},
    initializer_range, use_mambapy, use_associative_scan, use_cache.
    """
    arch = hf.get("architectures") or ["MambaForCausalLM"]
    if not {"MambaForCausalLM", "MambaModel"} & set(arch):
        raise ValueError(f"Mamba checkpoints of {', '.join(arch)} are not supported; only MambaForCausalLM")
    act = hf.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} is not supported; supported: {', '.join(sorted(ACTIVATIONS))}")
    rank = hf.get("time_step_rank", "auto")
    if not (rank == "auto" or (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0)):
        raise ValueError(f"time_step_rank must be 'auto' or a positive integer, got {rank!r}")
    d, expand = hf["hidden_size"], hf.get("expand", 2)
    eos = hf.get("eos_token_id", 0)
    return MambaConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layer=hf["num_hidden_layers"],
        d_state=hf.get("state_size", 16), d_conv=hf.get("conv_kernel", 4), expand=int(expand),
        d_inner=hf.get("intermediate_size") or int(expand * d),  # transformers honours a stored value
        dt_rank=rank, norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        conv_bias=bool(hf.get("use_conv_bias", True)), bias=bool(hf.get("use_bias", False)),
        activation=act, tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
        pad_token_id=hf.get("pad_token_id", 0), bos_token_id=hf.get("bos_token_id", 0),
        eos_token_id=eos[0] if isinstance(eos, list) and eos else eos, name=name,
    )  # fmt: skip


def hf_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    """One tensor of a MambaForCausalLM checkpoint -> ours. The mixer keeps the checkpoint's names.

        backbone.embeddings.weight (older: backbone.embedding.weight) -> embed_tokens.weight
        backbone.layers.{i}.norm.weight                               -> layers.{i}.norm.weight
        backbone.layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, out_proj}.{weight, bias},
        backbone.layers.{i}.mixer.{A_log, D}                          -> layers.{i}.mixer.…
        backbone.norm_f.weight                                        -> norm.weight
        lm_head.weight (absent when tied)                             -> lm_head.weight
    """
    key = key.removeprefix("backbone.")
    if key in ("embeddings.weight", "embedding.weight"):
        return {"embed_tokens.weight": t}
    if key.startswith("norm_f."):
        return {"norm." + key.removeprefix("norm_f."): t}
    return {key: t}  # layers.* and lm_head.weight are already ours; anything else is reported as unexpected


def mamba2_config(hf: dict, name: str) -> MambaConfig:
    """transformers' Mamba2Config (as a config.json dict) -> ours (``version=2``). Raises ValueError for what
    we cannot run.

    Ignored, as they change only training, initialisation or nothing in Mamba-2: residual_in_fp32 (we
    compute in float32 throughout), rescale_prenorm_residual, time_step_{min,max,floor}, time_step_rank
    (Mamba-2 has no Δ projection), initializer_range, use_cache.
    """
    arch = hf.get("architectures") or ["Mamba2ForCausalLM"]
    if not {"Mamba2ForCausalLM", "Mamba2Model"} & set(arch):
        raise ValueError(f"Mamba-2 checkpoints of {', '.join(arch)} are not supported; only Mamba2ForCausalLM")
    act = hf.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} is not supported; supported: {', '.join(sorted(ACTIVATIONS))}")
    d, expand = hf["hidden_size"], hf.get("expand", 2)
    heads, head_dim, groups = hf.get("num_heads", 128), hf.get("head_dim", 64), hf.get("n_groups", 8)
    d_inner = int(expand * d)
    if heads * head_dim != d_inner:
        raise ValueError(f"num_heads × head_dim ({heads} × {head_dim}) must equal expand × hidden_size ({d_inner}), "
                         "as transformers requires")  # fmt: skip
    if not (isinstance(groups, int) and groups >= 1 and heads % groups == 0):
        raise ValueError(f"n_groups must divide num_heads {heads}, got {groups!r}")
    limit = hf.get("time_step_limit") or (0.0, math.inf)
    if isinstance(limit, (list, tuple)):
        limit = [_special_float(v) for v in limit]
    if not (isinstance(limit, list) and len(limit) == 2 and all(isinstance(v, (int, float)) for v in limit)):
        raise ValueError(f"time_step_limit must be a pair (min, max), got {limit!r}")
    eos = hf.get("eos_token_id", 2)
    return MambaConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layer=hf["num_hidden_layers"], version=2,
        d_state=hf.get("state_size", 128), d_conv=hf.get("conv_kernel", 4), expand=int(expand), d_inner=d_inner,
        n_heads=heads, head_dim=head_dim, n_groups=groups, chunk_size=hf.get("chunk_size", 256),
        dt_limit_min=float(limit[0]), dt_limit_max=None if math.isinf(limit[1]) else float(limit[1]),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), conv_bias=bool(hf.get("use_conv_bias", True)),
        bias=bool(hf.get("use_bias", False)), activation=act, tie_embeddings=hf.get("tie_word_embeddings", False) is True,
        pad_token_id=hf.get("pad_token_id", 1), bos_token_id=hf.get("bos_token_id", 0),
        eos_token_id=eos[0] if isinstance(eos, list) and eos else eos, name=name,
    )  # fmt: skip


def _special_float(v):
    """transformers writes an infinite float into config.json as {"__float__": "Infinity"}."""
    if isinstance(v, dict) and set(v) == {"__float__"} and v["__float__"] in ("Infinity", "-Infinity", "NaN"):
        return float(v["__float__"].replace("Infinity", "inf"))
    return v


CONVERTER = Converter(hf_config, hf_rename)
# Mamba-2's tensor names are Mamba's with the mixer's own (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj).
MAMBA2 = Converter(mamba2_config, hf_rename)
