"""BERT and its descendants -> the encoder family, with the masked-LM head when stored.

``bert``; ``roberta`` and ``xlm-roberta`` (BERT's blocks under other names, positions counted
from padding_idx + 1 and a GELU masked-LM head); ``distilbert`` (no token types, its own names;
a sinusoidal table, when configured, is stored in the checkpoint like a learned one).
"""

from __future__ import annotations

import re
from dataclasses import replace

from torch import Tensor

from archplay.models.architectures.encoder import EncoderConfig
from archplay.models.checkpoints.convert import Converter, LoadError


def _bert_config(hf: dict, name: str, kind: str = "BERT") -> EncoderConfig:
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise LoadError(f"{kind} checkpoints configured as decoders are not supported")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise LoadError(f"only absolute position embeddings are supported for {kind}")
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


# --------------------------------------------------------------------------- RoBERTa, XLM-RoBERTa


def _roberta_config(hf: dict, name: str) -> EncoderConfig:
    """BERT's config, but positions start after padding_idx: the table's first padding_idx + 1 rows
    are never a real token's, so a sequence may hold max_position_embeddings - padding_idx - 1."""
    kind = "XLM-RoBERTa" if hf.get("model_type") == "xlm-roberta" else "RoBERTa"
    _check_tied(hf, kind)
    pad = hf.get("pad_token_id", 1)
    if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < hf["vocab_size"]:
        raise LoadError(f"{kind} needs pad_token_id, a token id (its positions start after it), got {pad!r}")
    offset, table = pad + 1, hf.get("max_position_embeddings", 514)
    if table <= offset:
        raise LoadError(f"max_position_embeddings ({table}) leaves no position after padding_idx {pad}")
    return replace(_bert_config(hf, name, kind), max_seq_len=table - offset, position_offset=offset,
                   pad_token_id=pad, head_activation="gelu")  # fmt: skip


_ROBERTA_HEAD = {"lm_head.dense.weight": "mlm_head.dense.weight", "lm_head.dense.bias": "mlm_head.dense.bias",
                 "lm_head.layer_norm.weight": "mlm_head.norm.weight", "lm_head.layer_norm.bias": "mlm_head.norm.bias",
                 "lm_head.decoder.weight": "mlm_head.decoder.weight", "lm_head.decoder.bias": "mlm_head.decoder.bias",
                 "lm_head.bias": "mlm_head.decoder.bias"}  # fmt: skip


def _roberta_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    if key in _ROBERTA_HEAD:
        return {_ROBERTA_HEAD[key]: t}
    if key.startswith(_TASK_HEADS):
        return {}
    return _bert_rename(key.removeprefix("roberta."), t)


# --------------------------------------------------------------------------- DistilBERT


def _distilbert_config(hf: dict, name: str) -> EncoderConfig:
    _check_tied(hf, "DistilBERT")
    return EncoderConfig(
        vocab_size=hf["vocab_size"], d_model=hf["dim"], n_layer=hf["n_layers"], n_head=hf["n_heads"],
        d_ff=hf["hidden_dim"], max_seq_len=hf.get("max_position_embeddings", 512), type_vocab_size=0,
        norm_eps=1e-12, activation=hf.get("activation", "gelu"), pad_token_id=hf.get("pad_token_id"), name=name,
    )  # fmt: skip


_DISTILBERT_SUBS = [
    (r"^embeddings\.word_embeddings\.", "embed_tokens."),
    (r"^embeddings\.position_embeddings\.", "embed_positions."),
    (r"^embeddings\.LayerNorm\.", "embed_norm."),
    (r"^transformer\.layer\.(\d+)\.attention\.q_lin\.", r"layers.\1.attn.q_proj."),
    (r"^transformer\.layer\.(\d+)\.attention\.k_lin\.", r"layers.\1.attn.k_proj."),
    (r"^transformer\.layer\.(\d+)\.attention\.v_lin\.", r"layers.\1.attn.v_proj."),
    (r"^transformer\.layer\.(\d+)\.attention\.out_lin\.", r"layers.\1.attn.o_proj."),
    (r"^transformer\.layer\.(\d+)\.sa_layer_norm\.", r"layers.\1.attn_norm."),
    (r"^transformer\.layer\.(\d+)\.ffn\.lin1\.", r"layers.\1.mlp.up_proj."),
    (r"^transformer\.layer\.(\d+)\.ffn\.lin2\.", r"layers.\1.mlp.down_proj."),
    (r"^transformer\.layer\.(\d+)\.output_layer_norm\.", r"layers.\1.mlp_norm."),
    (r"^vocab_transform\.", "mlm_head.dense."),
    (r"^vocab_layer_norm\.", "mlm_head.norm."),
    (r"^vocab_projector\.", "mlm_head.decoder."),
]


def _distilbert_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    key = key.removeprefix("distilbert.")
    if key.startswith(_TASK_HEADS) or key.endswith("position_ids"):
        return {}
    for pattern, repl in _DISTILBERT_SUBS:
        new, n = re.subn(pattern, repl, key)
        if n:
            return {new: t}
    return {key: t}


# Heads of fine-tuned checkpoints (classification, question answering): not part of the encoder.
_TASK_HEADS = ("classifier.", "pre_classifier.", "qa_outputs.")


def _check_tied(hf: dict, kind: str) -> None:
    if hf.get("tie_word_embeddings", True) is False:
        raise LoadError(f"{kind} checkpoints with a masked-LM output matrix of their own (tie_word_embeddings "
                        "false) are not supported: the head here is tied to the token embeddings")  # fmt: skip


ROBERTA = Converter(_roberta_config, _roberta_rename, _bert_finish)
DISTILBERT = Converter(_distilbert_config, _distilbert_rename, _bert_finish)
