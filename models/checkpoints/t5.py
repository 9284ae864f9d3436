"""T5 checkpoints (``model_type: t5``) -> the encoder-decoder family."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from archplay.models.architectures.encoder_decoder import EncoderDecoderConfig
from archplay.models.checkpoints.convert import Converter


def hf_config(hf: dict, name: str) -> EncoderDecoderConfig:
    """transformers' T5Config (as a config.json dict) -> ours. Raises ValueError for what we cannot run.

    transformers 5 always writes ``tie_word_embeddings: true`` for T5 and records the output
    rescaling separately as ``scale_decoder_outputs``; older configs (and the Hub's v1.1 /
    Flan-T5 ones) say ``tie_word_embeddings: false`` for an untied, unscaled head.
    """
    arch = hf.get("architectures") or ["T5ForConditionalGeneration"]
    if not {"T5ForConditionalGeneration", "T5Model"} & set(arch):
        raise ValueError(
            f"T5 checkpoints of {', '.join(arch)} are not supported; only T5ForConditionalGeneration "
            "(encoder, decoder and language-model head)"
        )
    if hf.get("is_decoder"):
        raise ValueError("T5 checkpoints configured as a lone decoder (is_decoder=true) are not supported")
    ffn = hf.get("feed_forward_proj", "relu")
    parts = ffn.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(
            f"feed_forward_proj {ffn!r} is not supported; expected 'ACT' or 'gated-ACT', e.g. 'relu', 'gated-gelu'"
        )
    tie = hf.get("tie_word_embeddings", True) is not False
    scale = hf.get("scale_decoder_outputs", tie)
    eos = hf.get("eos_token_id", 1)
    pad = hf.get("pad_token_id")
    pad = 0 if pad is None else pad
    start = hf.get("decoder_start_token_id")
    return EncoderDecoderConfig(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
        n_layer=hf["num_layers"], n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"],
        n_head=hf["num_heads"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), ffn=ffn,
        tie_embeddings=tie, scale_decoder_outputs=bool(scale),
        pad_token_id=pad, eos_token_id=eos[0] if isinstance(eos, list) and eos else eos,
        decoder_start_token_id=pad if start is None else start, name=name,
    )  # fmt: skip


_HF_BLOCK = {
    "layer.0.SelfAttention.q": "attn.q_proj", "layer.0.SelfAttention.k": "attn.k_proj",
    "layer.0.SelfAttention.v": "attn.v_proj", "layer.0.SelfAttention.o": "attn.o_proj",
    "layer.0.layer_norm": "attn_norm",
}  # fmt: skip
_HF_CROSS = {
    "layer.1.EncDecAttention.q": "cross_attn.q_proj", "layer.1.EncDecAttention.k": "cross_attn.k_proj",
    "layer.1.EncDecAttention.v": "cross_attn.v_proj", "layer.1.EncDecAttention.o": "cross_attn.o_proj",
    "layer.1.layer_norm": "cross_attn_norm",
}  # fmt: skip
_HF_FFN = {"DenseReluDense.wi": "mlp.up_proj", "DenseReluDense.wi_0": "mlp.gate_proj",
           "DenseReluDense.wi_1": "mlp.up_proj", "DenseReluDense.wo": "mlp.down_proj",
           "layer_norm": "mlp_norm"}  # fmt: skip


def hf_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    """One tensor of a T5ForConditionalGeneration checkpoint -> ours ({} = not a weight we use)."""
    if key in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        return {"shared.weight": t}  # one matrix; some checkpoints store its tied aliases too
    if key == "lm_head.weight":
        return {"lm_head.weight": t}
    if key == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight":
        return {}  # an unused table some old checkpoints carry (transformers ignores it too)
    m = re.fullmatch(r"(encoder|decoder)\.final_layer_norm\.weight", key)
    if m:
        return {f"{m.group(1)}.norm.weight": t}
    m = re.fullmatch(r"(encoder|decoder)\.block\.(\d+)\.(.+)\.weight", key)
    if not m:
        return {key: t}  # reported as unexpected
    stack, i, part = m.groups()
    if part == "layer.0.SelfAttention.relative_attention_bias":
        return {f"{stack}.relative_attention_bias.weight": t} if i == "0" else {key: t}
    ffn_layer = "layer.1." if stack == "encoder" else "layer.2."
    if part in _HF_BLOCK:
        ours = _HF_BLOCK[part]
    elif stack == "decoder" and part in _HF_CROSS:
        ours = _HF_CROSS[part]
    elif part.startswith(ffn_layer) and part.removeprefix(ffn_layer) in _HF_FFN:
        ours = _HF_FFN[part.removeprefix(ffn_layer)]
    else:
        return {key: t}
    return {f"{stack}.layers.{i}.{ours}.weight": t}


def _tie(cfg: EncoderDecoderConfig, state: dict[str, Tensor]) -> None:
    # transformers 5 writes tie_word_embeddings: true for every T5, even an untied (v1.1, Flan) one
    # whose head it then stores: a distinct lm_head on disk is what says "untied".
    # (Checking shapes only, a stored head is taken as its own matrix; the values decide afterwards.)
    head, shared = state.get("lm_head.weight"), state.get("shared.weight")
    cfg.tie_embeddings = head is None or (shared is not None and not head.is_meta and torch.equal(head, shared))


CONVERTER = Converter(hf_config, hf_rename, _tie)
