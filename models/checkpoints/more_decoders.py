"""GPT-Neo, GPT-J, OPT and Phi checkpoints (``model_type: gpt_neo``, ``gptj``, ``opt``, ``phi``) -> the decoder family.

Each is GPT-2's or GPT-NeoX's skeleton with parts of its own, every one a ``DecoderConfig`` field:

* GPT-Neo: local and global layers alternating (``attention_types``; a local layer sees the last
  ``window_size`` tokens, itself included: our "sliding" pattern, q − k < W), q·k *not* scaled by
  1/√d_head (``attn_scale`` 1), learned positions, q/k/v without biases but an output projection with one.
* GPT-J: a parallel block with one LayerNorm for both branches (``shared_norm``: x + Attn(LN(x)) + MLP(LN(x))),
  RoPE on the first ``rotary_dim`` channels of each head in GPT-J's interleaved layout (``rope_interleaved``:
  channel pairs (0, 1), (2, 3), ...), no attention biases, an LM head with a bias (``lm_head_bias``).
* OPT: learned positions read from row 2 on (``position_offset``; transformers counts positions by the
  attention mask's cumsum, the same as 0, 1, 2, ... for an unpadded sequence, the only kind archplay runs),
  ReLU, pre-norm (``do_layer_norm_before``) or, for OPT-350m, post-norm without a final norm,
  ``enable_bias``, ``_remove_final_layer_norm`` (``final_norm`` off), and OPT-350m's ``word_embed_proj_dim``
  (``embed_dim``: token embeddings narrower than the stack, ``project_in`` after the lookup, ``project_out``
  before the head).
* Phi (Phi-1, 1.5, 2): the same shared-norm parallel block, half-split RoPE on ``partial_rotary_factor`` of
  each head, biases everywhere (the LM head's too), the attention output named ``dense``.

Refused, each with the reason: OPT's ``layer_norm_elementwise_affine`` false, Phi's ``qk_layernorm`` (LayerNorms with biases
on q and k), GPT-Neo layer types other than global and local.
"""

from __future__ import annotations

import math
import re

from torch import Tensor

from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.checkpoints.convert import Converter, LoadError, first
from archplay.models.checkpoints.llama import rope, rotary_fraction


def _heads(d: int, n_head: int) -> None:
    if d % n_head:
        raise LoadError(f"hidden_size {d} does not divide into {n_head} heads")


def _common(hf: dict, name: str) -> dict:
    return dict(vocab_size=hf["vocab_size"], bos_token_id=hf.get("bos_token_id"),
                eos_token_id=first(hf.get("eos_token_id")), name=name)  # fmt: skip


# --------------------------------------------------------------------------- GPT-Neo


def _gpt_neo_layers(hf: dict, n_layer: int) -> list[str]:
    """``attention_layers`` (written by transformers) or ``attention_types`` [[["global", "local"], n], ...]."""
    kinds = hf.get("attention_layers")
    if kinds is None:
        kinds = [k for group, n in hf.get("attention_types") or [[["global", "local"], 12]] for _ in range(n)
                 for k in group]  # fmt: skip
    bad = sorted({str(k) for k in kinds} - {"global", "local"})
    if bad or len(kinds) != n_layer:
        raise LoadError(f"GPT-Neo's attention layers must be 'global' or 'local', one per layer ({n_layer}); "
                        f"got {kinds!r}")  # fmt: skip
    return ["full" if k == "global" else "sliding" for k in kinds]


def _gpt_neo_config(hf: dict, name: str) -> DecoderConfig:
    d, n_head, n_layer = hf["hidden_size"], hf["num_heads"], hf["num_layers"]
    _heads(d, n_head)
    types = _gpt_neo_layers(hf, n_layer)
    return DecoderConfig(
        d_model=d, n_layer=n_layer, n_head=n_head, d_ff=hf.get("intermediate_size") or 4 * d,
        max_seq_len=hf.get("max_position_embeddings", 2048), positions="learned", norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="mlp", activation=hf.get("activation_function", "gelu_new"),
        qkv_bias=False, o_bias=True, mlp_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        layer_types=types, sliding_window=hf.get("window_size", 256) if "sliding" in types else None,
        attn_scale=1.0,  # GPT-Neo does not divide q·k by √d_head
        **_common(hf, name),
    )  # fmt: skip


_GPT_NEO_BLOCK = {"ln_1": "attn_norm", "ln_2": "mlp_norm", "attn.attention.q_proj": "attn.q_proj",
                  "attn.attention.k_proj": "attn.k_proj", "attn.attention.v_proj": "attn.v_proj",
                  "attn.attention.out_proj": "attn.o_proj", "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}  # fmt: skip
_GPT_TOP = {"wte.weight": "embed_tokens.weight", "wpe.weight": "embed_positions.weight", "ln_f.weight": "norm.weight",
            "ln_f.bias": "norm.bias", "lm_head.weight": "lm_head.weight", "lm_head.bias": "lm_head.bias"}  # fmt: skip


def _gpt_rename(block: dict[str, str]):
    """GPT-Neo's and GPT-J's names: ``transformer.`` + GPT-2's top level, ``h.<i>.<part>`` per block."""

    def rename(key: str, t: Tensor) -> dict[str, Tensor]:
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias")):
            return {}  # causal-mask buffers older checkpoints carry, not weights
        if key in _GPT_TOP:
            return {_GPT_TOP[key]: t}
        m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", key)
        if m and m.group(2) in block:
            return {f"layers.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}": t}
        return {key: t}  # reported as unexpected

    return rename


# --------------------------------------------------------------------------- GPT-J


def _fraction(rotated: int, head_dim: int) -> float:
    """rotated / head_dim, nudged up where floating point would make int(head_dim · fraction) one short."""
    frac = rotated / head_dim
    return frac if int(head_dim * frac) == rotated else math.nextafter(frac, 2.0)


def _gptj_config(hf: dict, name: str) -> DecoderConfig:
    d, n_head = hf["n_embd"], hf["n_head"]
    _heads(d, n_head)
    head_dim = d // n_head
    rotary_dim = hf.get("rotary_dim") or head_dim
    if rotary_dim > head_dim or rotary_dim % 2:
        raise LoadError(f"rotary_dim {rotary_dim} must be even and at most the head dim {head_dim}")
    return DecoderConfig(
        d_model=d, n_layer=hf["n_layer"], n_head=n_head, d_ff=hf.get("n_inner") or 4 * d,
        max_seq_len=hf.get("n_positions", 2048), positions="rotary", rotary_fraction=_fraction(rotary_dim, head_dim),
        rope_interleaved=True, norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="mlp",
        activation=hf.get("activation_function", "gelu_new"), qkv_bias=False, o_bias=False, mlp_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), parallel_residual=True, shared_norm=True,
        lm_head_bias=True, **_common(hf, name),
    )  # fmt: skip


_GPTJ_BLOCK = {"ln_1": "attn_norm", "attn.q_proj": "attn.q_proj", "attn.k_proj": "attn.k_proj",
               "attn.v_proj": "attn.v_proj", "attn.out_proj": "attn.o_proj", "mlp.fc_in": "mlp.up_proj",
               "mlp.fc_out": "mlp.down_proj"}  # fmt: skip


# --------------------------------------------------------------------------- OPT


def _opt_config(hf: dict, name: str) -> DecoderConfig:
    d, n_head = hf["hidden_size"], hf["num_attention_heads"]
    _heads(d, n_head)
    proj = hf.get("word_embed_proj_dim") or d  # OPT-350m: 512-wide embeddings, projected in to 1024 and out
    if not hf.get("layer_norm_elementwise_affine", True):
        raise LoadError("OPT checkpoints with layer_norm_elementwise_affine=false (LayerNorms without a weight and "
                        "a bias) are not supported")  # fmt: skip
    pre = bool(hf.get("do_layer_norm_before", True))
    bias = bool(hf.get("enable_bias", True))
    return DecoderConfig(
        d_model=d, n_layer=hf["num_hidden_layers"], n_head=n_head, d_ff=hf["ffn_dim"],
        max_seq_len=hf.get("max_position_embeddings", 2048), positions="learned", position_offset=2,
        norm="layernorm", norm_eps=1e-5, norm_position="pre" if pre else "post",
        final_norm=not hf.get("_remove_final_layer_norm", False), mlp="mlp",
        activation=hf.get("activation_function", "relu"), qkv_bias=bias, o_bias=bias, mlp_bias=bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), embed_dim=None if proj == d else proj,
        **_common(hf, name),
    )  # fmt: skip


_OPT_TOP = {"embed_tokens.weight": "embed_tokens.weight", "embed_positions.weight": "embed_positions.weight",
            "final_layer_norm.weight": "norm.weight", "final_layer_norm.bias": "norm.bias",
            "project_in.weight": "embed_tokens.project_in.weight", "project_out.weight": "lm_head.project_out.weight"}  # fmt: skip
_OPT_BLOCK = {"self_attn_layer_norm": "attn_norm", "final_layer_norm": "mlp_norm", "self_attn.q_proj": "attn.q_proj",
              "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
              "self_attn.out_proj": "attn.o_proj", "fc1": "mlp.up_proj", "fc2": "mlp.down_proj"}  # fmt: skip


def _opt_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    if key == "lm_head.weight":
        return {key: t}
    key = key.removeprefix("model.").removeprefix("decoder.")  # transformers: model.decoder.*; fairseq ports: decoder.*
    if key in _OPT_TOP:
        return {_OPT_TOP[key]: t}
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m.group(2) in _OPT_BLOCK:
        return {f"layers.{m.group(1)}.{_OPT_BLOCK[m.group(2)]}.{m.group(3)}": t}
    return {key: t}  # reported as unexpected


# --------------------------------------------------------------------------- Phi


def _phi_config(hf: dict, name: str) -> DecoderConfig:
    if hf.get("qk_layernorm"):
        raise LoadError("Phi checkpoints with qk_layernorm (LayerNorms with biases on each head's q and k) are "
                        "not supported")  # fmt: skip
    d, n_head = hf["hidden_size"], hf["num_attention_heads"]
    _heads(d, n_head)
    theta, scaling = rope(hf)
    return DecoderConfig(
        d_model=d, n_layer=hf["num_hidden_layers"], n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
        d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048), positions="rotary",
        rope_theta=theta, rope_scaling=scaling, rotary_fraction=rotary_fraction(hf, default=0.5),
        norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5), mlp="mlp", activation=hf.get("hidden_act", "gelu_new"),
        qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        parallel_residual=True, shared_norm=True, lm_head_bias=True, **_common(hf, name),
    )  # fmt: skip


_PHI_TOP = {"embed_tokens.weight": "embed_tokens.weight", "final_layernorm.weight": "norm.weight",
            "final_layernorm.bias": "norm.bias"}  # fmt: skip
_PHI_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj",
              "self_attn.v_proj": "attn.v_proj", "self_attn.dense": "attn.o_proj", "mlp.fc1": "mlp.up_proj",
              "mlp.fc2": "mlp.down_proj"}  # fmt: skip


def _phi_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    if key.startswith("lm_head."):
        return {key: t}
    key = key.removeprefix("model.")
    if key in _PHI_TOP:
        return {_PHI_TOP[key]: t}
    if key.endswith("rotary_emb.inv_freq"):
        return {}
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m.group(2) in _PHI_BLOCK:
        return {f"layers.{m.group(1)}.{_PHI_BLOCK[m.group(2)]}.{m.group(3)}": t}
    return {key: t}  # reported as unexpected


GPT_NEO = Converter(_gpt_neo_config, _gpt_rename(_GPT_NEO_BLOCK))
GPTJ = Converter(_gptj_config, _gpt_rename(_GPTJ_BLOCK))
OPT = Converter(_opt_config, _opt_rename)
PHI = Converter(_phi_config, _phi_rename)
