"""GPT-2 checkpoints (``model_type: gpt2``) -> the decoder family.

GPT-2 stores its projections as ``Conv1D`` weights, (in, out), and q, k, v fused in one
``c_attn``: each is transposed and split into our ``nn.Linear`` names.
"""

from __future__ import annotations

import re

from torch import Tensor

from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.checkpoints.convert import Converter, LoadError


def gpt2_config(hf: dict, name: str) -> DecoderConfig:
    if hf.get("add_cross_attention"):
        raise LoadError("GPT-2 checkpoints with cross-attention are not supported")
    if not hf.get("scale_attn_weights", True):
        raise LoadError("GPT-2 checkpoints with scale_attn_weights=false are not supported")
    d = hf["n_embd"]
    return DecoderConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layer=hf["n_layer"], n_head=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf.get("n_positions", 1024),
        positions="learned", norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp="mlp", activation=hf.get("activation_function", "gelu_new"),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        attn_scale_by_layer=hf.get("scale_attn_by_inverse_layer_idx", False),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"), name=name,
    )  # fmt: skip


_GPT2_BLOCK = {"ln_1": "attn_norm", "ln_2": "mlp_norm", "attn.c_proj": "attn.o_proj",
               "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}  # fmt: skip


def gpt2_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    key = key.removeprefix("transformer.")
    if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
        return {}
    top = {"wte.weight": "embed_tokens.weight", "wpe.weight": "embed_positions.weight",
           "ln_f.weight": "norm.weight", "ln_f.bias": "norm.bias", "lm_head.weight": "lm_head.weight"}  # fmt: skip
    if key in top:
        return {top[key]: t}
    m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", key)
    if not m:
        return {key: t}  # reported as unexpected
    i, part, kind = m.groups()
    conv1d = part.startswith(("attn.", "mlp.")) and kind == "weight"  # GPT-2's Conv1D stores weights as (in, out)
    if part == "attn.c_attn":  # fused q, k, v along the output axis
        parts = t.chunk(3, dim=-1 if conv1d else 0)
        return {f"layers.{i}.attn.{p}.{kind}": _linear(x) if conv1d else x
                for p, x in zip(("q_proj", "k_proj", "v_proj"), parts)}  # fmt: skip
    if part not in _GPT2_BLOCK:
        return {key: t}
    return {f"layers.{i}.{_GPT2_BLOCK[part]}.{kind}": _linear(t) if conv1d else t}


def _linear(w: Tensor) -> Tensor:
    """A Conv1D weight (in, out) as an ``nn.Linear`` one (out, in): a view, no copy. Column-major is the layout
    Conv1D itself multiplies by (``x @ W``) and the one ``loading.fast_cpu_layout`` gives widening maps, so a
    float32 model on the CPU uses it as it is stored (mapped from the file, nothing read until the first
    forward); ``loading.materialize`` makes it row-major where that layout does not pay (another dtype or
    device). q, k and v stay views of the fused c_attn (rows of a matrix three times as wide)."""
    return w.t()


CONVERTER = Converter(gpt2_config, gpt2_rename)
