"""BERT checkpoints (``model_type: bert``) -> the encoder family, with its masked-LM head when stored."""

from __future__ import annotations

import re

from torch import Tensor

from archplay.models.architectures.encoder import EncoderConfig
from archplay.models.checkpoints.convert import Converter, LoadError


def _bert_config(hf: dict, name: str) -> EncoderConfig:
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise LoadError("BERT checkpoints configured as decoders are not supported")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise LoadError("only absolute position embeddings are supported for BERT")
    return EncoderConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=hf.get("layer_norm_eps", 1e-12), activation=hf.get("hidden_act", "gelu"),
        pad_token_id=hf.get("pad_token_id"), name=name,
    )  # fmt: skip


_BERT_SUBS = [
    (r"^embeddings\.word_embeddings\.", "embed_tokens."),
    (r"^embeddings\.position_embeddings\.", "embed_positions."),
    (r"^embeddings\.token_type_embeddings\.", "embed_types."),
    (r"^embeddings\.LayerNorm\.", "embed_norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.attn.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.attn.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.attn.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn.o_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.up_proj."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.down_proj."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.mlp_norm."),
    (r"^cls\.predictions\.transform\.dense\.", "mlm_head.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "mlm_head.norm."),
    (r"^cls\.predictions\.decoder\.weight$", "mlm_head.decoder.weight"),
    (r"^cls\.predictions\.(decoder\.)?bias$", "mlm_head.decoder.bias"),
]


def _bert_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    key = key.removeprefix("bert.")
    key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))  # TF-era names
    if key.startswith(("pooler.", "cls.seq_relationship.")) or key.endswith("position_ids"):
        return {}  # next-sentence and pooling heads: not part of the encoder or its MLM head
    for pattern, repl in _BERT_SUBS:
        new, n = re.subn(pattern, repl, key)
        if n:
            return {new: t}
    return {key: t}


def _bert_finish(cfg: EncoderConfig, state: dict[str, Tensor]) -> None:
    cfg.has_mlm_head = any(k.startswith("mlm_head.") for k in state)


CONVERTER = Converter(_bert_config, _bert_rename, _bert_finish)
