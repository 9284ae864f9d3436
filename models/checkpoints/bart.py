"""BART checkpoints (``model_type: bart``: facebook/bart-base, bart-large, bart-large-cnn, distilbart) ->
the encoder-decoder family, with BART's options (see ``architectures.encoder_decoder``).

What sets them apart from T5: learned positions per stack, read from row 2 on (``offset`` 2,
fairseq's padding offset); token embeddings × √d_model when ``scale_embedding``, then a LayerNorm
of the embeddings (``layernorm_embedding``) on both stacks; post-norm LayerNorm blocks with biases
everywhere, a GELU feed-forward (``fc1``, ``fc2``), q·k scaled by 1/√d_head, a stored
``final_logits_bias`` added to the logits, and decoding that starts from ``</s>``.

Tying: a tied BART stores ``model.shared.weight`` (older files also its aliases
``model.encoder.embed_tokens.weight``, ``model.decoder.embed_tokens.weight`` and ``lm_head.weight``);
transformers 5's untied BART (``tie_word_embeddings: false``) has a token table per stack and its own
head, and keeps ``model.shared`` too, unused by its forward pass: it is dropped here. The tensors,
not the config, decide (``_tie``), as for T5. ``BartModel`` files (no ``model.`` prefix, no head) get
the tied head and a zero logits bias, as ``BartForConditionalGeneration.from_pretrained`` gives them.

mBART (``model_type: mbart``, mBART-25 and -50) is the same model made pre-norm: each block
x + f(LayerNorm(x)), and a final LayerNorm per stack (``encoder.layer_norm``, ``decoder.layer_norm``).
Its tokenizer's language codes and a generation config's ``forced_bos_token_id`` (the target
language) are not read: decoding starts from ``decoder_start_token_id`` (else ``bos_token_id``).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from archplay.models.architectures.encoder_decoder import EncoderDecoderConfig
from archplay.models.checkpoints.convert import Converter, LoadError, first

ARCHITECTURES = ("BartForConditionalGeneration", "BartModel")
MBART_ARCHITECTURES = ("MBartForConditionalGeneration", "MBartModel")
OFFSET = 2  # BartLearnedPositionalEmbedding's offset
# Keys of old (transformers 3, fairseq-converted) BART configs for the mBART-style variants, with BART's values.
_BART_VALUES = {"normalize_before": False, "add_final_layer_norm": False, "static_position_embeddings": False,
                "normalize_embedding": True, "add_bias_logits": False, "extra_pos_embeddings": OFFSET}  # fmt: skip


def hf_config(hf: dict, name: str, *, mbart: bool = False) -> EncoderDecoderConfig:
    """transformers' BartConfig (or MBartConfig) as a config.json dict -> ours. LoadError for what we cannot run."""
    kind, known = ("mBART", MBART_ARCHITECTURES) if mbart else ("BART", ARCHITECTURES)
    arch = hf.get("architectures") or [known[0]]
    if not set(known) & set(arch):
        raise LoadError(f"{kind} checkpoints of {', '.join(arch)} are not supported; only {' and '.join(known)} "
                        "(encoder, decoder and the language-model head)")  # fmt: skip
    if hf.get("is_decoder"):
        raise LoadError(f"{kind} checkpoints configured as a lone decoder (is_decoder=true) are not supported")
    odd = {k: hf[k] for k, v in _BART_VALUES.items() if k in hf and hf[k] != v}
    if odd and not mbart:
        raise LoadError(f"this BART config asks for {odd}: pre-norm blocks, a final layer norm or fixed positions are "
                        "mBART/Marian-style variants, not BART (post-norm, learned positions); an mBART checkpoint "
                        "says model_type 'mbart'")  # fmt: skip
    d = hf.get("d_model", 1024)
    heads, dec_heads = hf.get("encoder_attention_heads", 16), hf.get("decoder_attention_heads", 16)
    ffn, dec_ffn = hf.get("encoder_ffn_dim", 4096), hf.get("decoder_ffn_dim", 4096)
    if heads != dec_heads or ffn != dec_ffn:
        raise LoadError(f"encoder and decoder differ (attention heads {heads} and {dec_heads}, feed-forward "
                        f"widths {ffn} and {dec_ffn}); archplay's encoder-decoder has one head count and one "
                        "feed-forward width for both stacks")  # fmt: skip
    if not isinstance(heads, int) or heads < 1 or d % heads:
        raise LoadError(f"d_model {d} does not divide into {heads} attention heads")
    act = hf.get("activation_function", "gelu")
    if not isinstance(act, str) or act.startswith("gated"):
        raise LoadError(f"activation_function {act!r} is not supported for BART; use an activation such as 'gelu'")
    tie = hf.get("tie_word_embeddings", True) is not False
    pad, eos = hf.get("pad_token_id", 1), first(hf.get("eos_token_id", 2))
    start = hf.get("decoder_start_token_id", None if mbart else 2)
    if start is None:  # as transformers' generate: the start token, else the beginning-of-text one
        start = first(hf.get("bos_token_id", 0))
    return EncoderDecoderConfig(
        vocab_size=hf.get("vocab_size", 50265), d_model=d, d_kv=d // heads, d_ff=ffn,
        n_layer=hf.get("encoder_layers", 12), n_decoder_layer=hf.get("decoder_layers", 12), n_head=heads,
        norm_eps=1e-5, ffn=act, tie_embeddings=tie, scale_decoder_outputs=False, share_embeddings=tie,
        pad_token_id=1 if pad is None else pad, eos_token_id=eos,
        decoder_start_token_id=(eos if eos is not None else 2) if start is None else start,
        norm_position="pre" if mbart else "post",
        max_seq_len=hf.get("max_position_embeddings", 1024), positions="learned", position_offset=OFFSET,
        norm="layernorm", embedding_norm=True, scale_embedding=bool(hf.get("scale_embedding")),
        bias=True, scale_attention=True, final_logits_bias=True, name=name,
    )  # fmt: skip


_STACK = {"embed_tokens": "embed_tokens", "embed_positions": "embed_positions", "layernorm_embedding": "embed_norm",
          "layer_norm": "norm"}  # the last: mBART's final norm per stack
_BLOCK = {
    "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj", "self_attn.v_proj": "attn.v_proj",
    "self_attn.out_proj": "attn.o_proj", "self_attn_layer_norm": "attn_norm",
    "encoder_attn.q_proj": "cross_attn.q_proj", "encoder_attn.k_proj": "cross_attn.k_proj",
    "encoder_attn.v_proj": "cross_attn.v_proj", "encoder_attn.out_proj": "cross_attn.o_proj",
    "encoder_attn_layer_norm": "cross_attn_norm",
    "fc1": "mlp.up_proj", "fc2": "mlp.down_proj", "final_layer_norm": "mlp_norm",
}  # fmt: skip


def hf_rename(key: str, t: Tensor) -> dict[str, Tensor]:
    """One tensor of a BartForConditionalGeneration (or BartModel) checkpoint -> ours ({} = not used)."""
    if key == "final_logits_bias":
        return {"final_logits_bias": t.reshape(-1)}  # (1, V) -> (V,)
    if key == "lm_head.weight":
        return {key: t}
    name = key.removeprefix("model.")
    if name == "shared.weight":
        return {name: t}
    if name in ("encoder.version", "decoder.version"):
        return {}  # fairseq's format markers, which transformers ignores too
    m = re.fullmatch(r"(encoder|decoder)\.(\w+)\.(weight|bias)", name)
    if m and m.group(2) in _STACK:
        return {f"{m.group(1)}.{_STACK[m.group(2)]}.{m.group(3)}": t}
    m = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m and m.group(3) in _BLOCK and (m.group(1) == "decoder" or not m.group(3).startswith("encoder_attn")):
        return {f"{m.group(1)}.layers.{m.group(2)}.{_BLOCK[m.group(3)]}.{m.group(4)}": t}
    return {key: t}  # reported as unexpected


def _same(t: Tensor | None, base: Tensor | None) -> bool:
    """True when ``t`` is absent or holds ``base``'s values (meta tensors, shapes only: not known, so False)."""
    if t is None or t is base:
        return True
    if base is None or t.is_meta or base.is_meta or t.shape != base.shape:
        return False
    return torch.equal(t, base)


def _tie(cfg: EncoderDecoderConfig, state: dict[str, Tensor]) -> None:
    """Settle from the tensors whether the stacks share one token table and whether the head is tied to it,
    and give a head-less file (BartModel) its zero logits bias."""
    enc_key, dec_key = "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"
    shared, enc, dec, head = (state.get(k) for k in ("shared.weight", enc_key, dec_key, "lm_head.weight"))
    base = next((t for t in (shared, enc, dec) if t is not None), None)
    cfg.share_embeddings = _same(enc, base) and _same(dec, base)
    if cfg.share_embeddings:
        for key in (enc_key, dec_key):
            state.pop(key, None)  # aliases of the one table
        if base is not None:
            state["shared.weight"] = base
    else:
        state.pop("shared.weight", None)  # transformers keeps it, but its untied stacks never read it
        for key, t in ((enc_key, enc), (dec_key, dec)):
            if t is None and shared is not None:
                state[key] = shared  # a stack without its own table reads the shared one
    cfg.tie_embeddings = cfg.share_embeddings and _same(head, base)
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    bias = state.get("final_logits_bias")
    if bias is None and base is not None:  # transformers leaves a missing bias at zero
        state["final_logits_bias"] = torch.zeros(cfg.vocab_size, dtype=base.dtype, device=base.device)


def mbart_config(hf: dict, name: str) -> EncoderDecoderConfig:
    return hf_config(hf, name, mbart=True)


CONVERTER = Converter(hf_config, hf_rename, _tie)
MBART = Converter(mbart_config, hf_rename, _tie)
