"""OLMo 2 and StableLM checkpoints -> the decoder family (``olmo2``, ``stablelm``); ModernBERT -> the encoder
family (``modernbert``).

OLMo 2 is Llama's skeleton (RoPE, SwiGLU, RMSNorm, no biases) with the norms moved: ``reordered_norm``, a
norm after the attention and after the MLP and none before them, x + Norm(Attn(x)), x + Norm(MLP(x)); its
``post_attention_layernorm`` and ``post_feedforward_layernorm`` are those two. q and k are normalised over
the whole projection (``qk_norm`` "all", as OLMoE).

StableLM (stablelm-3b-4e1t, StableLM 2) is a Llama with LayerNorm (with a bias), rotary positions on a
share of each head (``partial_rotary_factor``, 0.25 when absent), biases on q, k, v only when
``use_qkv_bias``; StableLM 2 12B adds ``qk_layernorm`` (a bias-free LayerNorm per head, each head its own
scale: ``qk_norm`` "each_head"; stored as one LayerNorm per head, stacked here) and
``use_parallel_residual`` (attention and MLP both read the block's one norm: ``shared_norm``).

ModernBERT is a pre-norm encoder: the token embeddings through a LayerNorm (no positions added, no token
types), blocks whose first has no norm before its attention (``first_attn_norm`` False), a final norm, the
masked-LM head dense → act → norm → the tied embedding + a bias. LayerNorms without a bias (``norm_bias``), no
biases in attention or MLP (``attention_bias``, ``mlp_bias``), q, k and v fused in ``Wqkv`` (split here), a
GeGLU MLP whose ``Wi`` holds [the activated half; the gate] (split into gate_proj and up_proj). Layers
alternate global and local attention (every ``global_attn_every_n_layers``-th global, or ``layer_types``);
local layers see keys within ±``local_attention``/2 of the query (transformers' mask: |q − k| ≤ W/2, our
window W/2 + 1) and rotate with their own RoPE base (``local_rope_theta``, global layers ``global_rope_theta``).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.architectures.encoder import EncoderConfig
from archplay.models.checkpoints.bert import _check_tied
from archplay.models.checkpoints.convert import Converter, LoadError
from archplay.models.checkpoints.llama import _llama_like_config, _llama_rename, rope, rotary_fraction

# --------------------------------------------------------------------------- OLMo 2


def _olmo2_config(hf: dict, name: str) -> DecoderConfig:
    if hf.get("sliding_window") or hf.get("layer_types"):
        raise LoadError("OLMo 2 checkpoints with sliding-window layers (OLMo 3's layer_types) are not supported: "
                        "olmo2 attends to every earlier token")  # fmt: skip
    bias = bool(hf.get("attention_bias", False))
    return _llama_like_config(hf, name, reordered_norm=True, qk_norm="all", qkv_bias=bias, o_bias=bias,
                              mlp_bias=False, norm_eps=hf.get("rms_norm_eps", 1e-5))  # fmt: skip


_OLMO2_NORMS = {".post_attention_layernorm.": ".post_attn_norm.", ".post_feedforward_layernorm.": ".post_mlp_norm."}


def _olmo2_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    """OLMo 2's post_attention_layernorm is the norm after the attention (Llama's is the one before the MLP)."""
    for theirs, ours in _OLMO2_NORMS.items():
        key = key.replace(theirs, ours)
    return _llama_rename(key, t)  # model. prefix, self_attn -> attn (q_norm, k_norm keep their names)


# --------------------------------------------------------------------------- StableLM


def _stablelm_config(hf: dict, name: str) -> DecoderConfig:
    d, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if d % n_head:
        raise LoadError(f"hidden_size {d} does not divide into {n_head} heads")
    parallel = bool(hf.get("use_parallel_residual", False))
    return _llama_like_config(
        {**hf, "head_dim": d // n_head, "sliding_window": None}, name,
        norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5),
        rotary_fraction=rotary_fraction(hf, default=0.25),
        qkv_bias=bool(hf.get("use_qkv_bias", False)), o_bias=False, mlp_bias=False,
        qk_norm="each_head" if hf.get("qk_layernorm") else None,
        parallel_residual=parallel, shared_norm=parallel,
    )  # fmt: skip


def _stablelm_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    key = key.replace(".self_attn.q_layernorm.", ".self_attn.q_norm.")
    key = key.replace(".self_attn.k_layernorm.", ".self_attn.k_norm.")
    return _llama_rename(key, t)  # input_layernorm -> attn_norm, post_attention_layernorm -> mlp_norm


def _stack_head_norms(cfg: DecoderConfig, state: dict[str, Tensor]) -> None:
    """qk_layernorm: one LayerNorm per head (``q_norm.norms.{h}.weight``, (Dh,) each) -> ``q_norm.weight`` (H, Dh)."""
    groups: dict[str, dict[int, Tensor]] = {}
    for key in [k for k in state if re.search(r"\.attn\.[qk]_norm\.norms\.\d+\.weight$", k)]:
        stem, h = re.fullmatch(r"(.+)\.norms\.(\d+)\.weight", key).groups()
        groups.setdefault(stem, {})[int(h)] = state.pop(key)
    for stem, per_head in groups.items():
        n = cfg.n_head if stem.endswith("q_norm") else cfg.n_kv_head
        if sorted(per_head) != list(range(n)):
            raise LoadError(f"{stem}: per-head norms {sorted(per_head)}, but the config has {n} heads")
        state[f"{stem}.weight"] = torch.stack([per_head[h] for h in range(n)])  # (n, Dh)


# --------------------------------------------------------------------------- ModernBERT


def _modernbert_layer_types(hf: dict, n_layer: int) -> list[str]:
    kinds = hf.get("layer_types")
    if kinds is None:  # older configs: every n-th layer global, from layer 0
        every = hf.get("global_attn_every_n_layers", 3)
        return ["sliding" if i % every else "full" for i in range(n_layer)]
    bad = sorted({str(k) for k in kinds} - {"sliding_attention", "full_attention"})
    if bad or len(kinds) != n_layer:
        raise LoadError(f"layer_types must give one of sliding_attention, full_attention per layer ({n_layer}); "
                        f"got {kinds!r}")  # fmt: skip
    return ["sliding" if k == "sliding_attention" else "full" for k in kinds]


def _modernbert_rope(hf: dict) -> tuple[float, float]:
    """(global θ, local θ) from ``rope_parameters`` per layer type (transformers 5) or the older
    ``global_rope_theta`` and ``local_rope_theta``. Scaled RoPE is refused."""
    params = hf.get("rope_parameters") or {}
    full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    theta, scaling = rope({"rope_parameters": full}, theta=float(hf.get("global_rope_theta") or 160_000.0))
    local_theta, local_scaling = rope({"rope_parameters": local}, theta=float(hf.get("local_rope_theta") or theta))
    if scaling or local_scaling:
        raise LoadError(f"ModernBERT with scaled RoPE ({(scaling or local_scaling)['rope_type']!r}) is not supported")
    return theta, local_theta


def _modernbert_config(hf: dict, name: str) -> EncoderConfig:
    _check_tied(hf, "ModernBERT")
    d, n_head, n_layer = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    if d % n_head:
        raise LoadError(f"hidden_size {d} does not divide into {n_head} heads")
    types = _modernbert_layer_types(hf, n_layer)
    local = "sliding" in types
    theta, local_theta = _modernbert_rope(hf)
    half = int(hf.get("local_attention", 128)) // 2  # transformers: a key within |q − k| <= local_attention // 2
    return EncoderConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layer=n_layer, n_head=n_head, d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 8192), type_vocab_size=0, norm_eps=hf.get("norm_eps", 1e-5),
        activation=hf.get("hidden_activation", "gelu"), positions="rotary", rope_theta=theta,
        rope_local_theta=local_theta if local else None, norm="layernorm", norm_position="pre", mlp="gated",
        sliding_window=half + 1 if local else None, layer_types=types,
        head_activation=hf.get("classifier_activation", "gelu"), pad_token_id=hf.get("pad_token_id"),
        norm_bias=bool(hf.get("norm_bias", False)), attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)), head_bias=bool(hf.get("classifier_bias", False)),
        head_decoder_bias=bool(hf.get("decoder_bias", True)), first_attn_norm=False, name=name,
    )  # fmt: skip


_MODERNBERT_SUBS = [
    (r"^model\.embeddings\.tok_embeddings\.", "embed_tokens."),
    (r"^model\.embeddings\.norm\.", "embed_norm."),
    (r"^model\.layers\.(\d+)\.attn\.Wqkv\.", r"layers.\1.attn.qkv."),
    (r"^model\.layers\.(\d+)\.attn\.Wo\.", r"layers.\1.attn.o_proj."),
    (r"^model\.layers\.(\d+)\.mlp\.Wo\.", r"layers.\1.mlp.down_proj."),
    (r"^model\.layers\.(\d+)\.(attn_norm|mlp_norm)\.", r"layers.\1.\2."),
    (r"^model\.final_norm\.", "norm."),
    (r"^head\.dense\.", "mlm_head.dense."),
    (r"^head\.norm\.", "mlm_head.norm."),
    (r"^decoder\.", "mlm_head.decoder."),
]


def _modernbert_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    if key.startswith(("embeddings.", "layers.", "final_norm.")):  # a bare ModernBertModel: no "model." prefix
        key = "model." + key
    m = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.Wi\.(weight|bias)", key)
    if m:  # GeGLU: Wi's first half is activated (our gate_proj), its second half multiplies it (our up_proj)
        first, second = t.chunk(2, dim=0)
        stem, kind = f"layers.{m.group(1)}.mlp", m.group(2)
        return {f"{stem}.gate_proj.{kind}": first.contiguous(), f"{stem}.up_proj.{kind}": second.contiguous()}
    for pattern, repl in _MODERNBERT_SUBS:
        new, n = re.subn(pattern, repl, key)
        if n:
            return {new: t}
    return {key: t}  # a task head's classifier (dropped in finish) or reported as unexpected


def _modernbert_finish(cfg: EncoderConfig, state: dict[str, Tensor]) -> None:
    """Wqkv's rows are [q; k; v], each H·Dh (transformers views them as (3, H, Dh)): split them. A classification
    checkpoint (``classifier``) has a head of its own, not the masked-LM one: the encoder alone is kept."""
    for key in [k for k in state if ".attn.qkv." in k]:
        fused = state.pop(key)
        if fused.shape[0] != 3 * cfg.d_model:
            raise LoadError(f"{key}: {fused.shape[0]} rows, but q, k and v need 3 × {cfg.d_model}")
        for part, t in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0)):
            state[key.replace(".qkv.", f".{part}.")] = t.contiguous()
    if any(k.startswith("classifier.") for k in state):
        for k in [k for k in state if k.startswith(("classifier.", "mlm_head."))]:
            del state[k]
    cfg.has_mlm_head = any(k.startswith("mlm_head.") for k in state)


OLMO2 = Converter(_olmo2_config, _olmo2_rename)
STABLELM = Converter(_stablelm_config, _stablelm_rename, _stack_head_norms)
MODERNBERT = Converter(_modernbert_config, _modernbert_rename, _modernbert_finish)
