"""Encoder-only transformer: BERT (Devlin et al. 2019).

    ids ─► token + position + token-type embeddings ─► LayerNorm ─► N × block ─► (MLM head)
    block (post-norm): x = Norm(x + Attn(x));  x = Norm(x + MLP(x))

Attention is bidirectional: every token sees every other (padding aside), which is why
BERT fills in a [MASK] from both sides but cannot generate left to right. The masked-LM
head (dense → GELU → LayerNorm → the tied embedding matrix + bias) is optional: a bare
encoder checkpoint still loads and traces, and then ``logits`` is None.

The defaults are BERT. The Architecture Lab's choices, as config fields (the decoder's, made
bidirectional):

* ``positions``: "learned" (BERT), "sinusoidal", "rotary", "alibi" (a per-head bias −m_h·|q − k|),
  "relative" (T5's bidirectional buckets, one table shared by every layer), "none".
* ``norm`` ("layernorm" | "rmsnorm") everywhere, and ``norm_position``: "post" (BERT) or "pre":
  x + f(Norm(x)), which then needs a final norm after the last block (Xiong et al. 2020). The
  embedding norm stays in both (as ModernBERT keeps it with pre-norm).
* ``mlp`` ("mlp" | "gated") with ``activation``; ``layer_types`` / ``sliding_window``: the
  bidirectional patterns of ``layers.attention_mask`` (sliding, strided, block).

What the BERT descendants change, also as config fields: ``position_offset`` (RoBERTa, XLM-R:
positions count the non-padding tokens from padding_idx + 1, padding sits at padding_idx, as
fairseq's ``make_positions``), ``type_vocab_size`` 0 (DistilBERT: no token-type embeddings) and
``head_activation`` (RoBERTa's masked-LM head always uses GELU, whatever the blocks use).

ModernBERT's parts, each off by default: ``norm_bias`` False (LayerNorms without a shift), ``attention_bias`` and
``mlp_bias`` False (no biases in the blocks), ``head_bias`` / ``head_decoder_bias`` (the masked-LM head's dense
and output biases), ``rope_local_theta`` (local, windowed layers rotate with a RoPE base of their own, global
layers with ``rope_theta``) and ``first_attn_norm`` False (pre-norm, but layer 0 has no norm before its
attention: it reads the embedding norm's output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from archplay.models.architectures.layers import (
    ACTIVATIONS,
    POSITIONS_OFF,
    Attention,
    ConfigDict,
    ModelOutput,
    RotaryEmbedding,
    Trace,
    activation,
    alibi_bias,
    alibi_slopes,
    check_choices,
    check_relative,
    combine_masks,
    init_normal,
    make_mlp,
    make_norm,
    padding_mask,
    relative_position_bias,
    residual,
    sinusoidal_positions,
)
from archplay.models.architectures.layers import (
    attention_mask as pattern_mask,  # `attention_mask` is forward's padding argument
)

POSITIONS = ("learned", "sinusoidal", "rotary", "alibi", "relative", "none")
TABLE_POSITIONS = ("learned", "sinusoidal")  # a table of max_seq_len rows: the only ones that limit the length


@dataclass
class EncoderConfig(ConfigDict):
    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    d_ff: int | None = None  # None = 4 * d_model
    max_seq_len: int = 512  # tokens a sequence may have (the position table has position_offset more rows)
    type_vocab_size: int = 2  # 0: no token-type embeddings (DistilBERT)
    position_offset: int = 0  # RoBERTa: padding_idx + 1, the first real token's position (needs pad_token_id)
    norm_eps: float = 1e-12
    activation: str = "gelu"
    positions: str = "learned"  # learned | sinusoidal | rotary | alibi | relative | none
    rope_theta: float = 10000.0
    relative_buckets: int = 32  # positions "relative": T5's bidirectional buckets (half for each side)
    relative_max_distance: int = 128
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_position: str = "post"  # post (BERT): norm(x + f(x)); pre: x + f(norm(x)) and a final norm
    mlp: str = "mlp"  # mlp | gated
    sliding_window: int | None = None  # W for the local patterns
    layer_types: list[str] | None = None  # per layer "full" | "sliding" | "strided" | "block"; None = all full
    has_mlm_head: bool = True
    head_activation: str | None = None  # the masked-LM head's; None = activation (RoBERTa: always "gelu")
    norm_bias: bool = True  # False: every LayerNorm without its bias (ModernBERT)
    attention_bias: bool = True  # q, k, v and output projections (ModernBERT: none)
    mlp_bias: bool = True
    head_bias: bool = True  # the masked-LM head's dense layer (ModernBERT: classifier_bias)
    head_decoder_bias: bool = True  # the masked-LM head's output bias per vocabulary entry (ModernBERT: decoder_bias)
    rope_local_theta: float | None = None  # ModernBERT: RoPE base of the local (non-"full") layers; None = rope_theta
    first_attn_norm: bool = True  # False: layer 0 has no pre-norm before its attention (ModernBERT)
    pad_token_id: int | None = 0
    name: str = "encoder"
    trained: bool = True
    family: str = field(default="encoder", init=False)

    def __post_init__(self) -> None:
        self.require_sizes("vocab_size", "d_model", "n_layer", "n_head")
        self.d_ff = self.d_ff or 4 * self.d_model
        if self.layer_types is None:
            self.layer_types = ["full"] * self.n_layer
        elif isinstance(self.layer_types, tuple):
            self.layer_types = list(self.layer_types)
        self.require_sizes("d_ff", "max_seq_len")
        self.require(self.d_model % self.n_head == 0, "d_model must divide into n_head heads")
        self.require(self.positions in POSITIONS, f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        check_choices(self)
        if self.positions == "relative":
            check_relative(self, bidirectional=True)
        self.require(isinstance(self.type_vocab_size, int) and self.type_vocab_size >= 0,
                     f"type_vocab_size must be a whole number (0 = none), got {self.type_vocab_size!r}")  # fmt: skip
        self.require(isinstance(self.position_offset, int) and self.position_offset >= 0,
                     f"position_offset must be a whole number, got {self.position_offset!r}")  # fmt: skip
        if self.position_offset:
            self.require(self.positions == "learned" and self.pad_token_id is not None,
                         "position_offset (RoBERTa's positions after padding_idx) needs learned positions "
                         "and a pad_token_id")  # fmt: skip
        self.require(self.head_activation is None or self.head_activation in ACTIVATIONS,
                     f"head_activation must be None or one of {', '.join(sorted(ACTIVATIONS))}")  # fmt: skip
        local = self.rope_local_theta
        self.require(local is None or (isinstance(local, (int, float)) and not isinstance(local, bool) and local > 0),
                     f"rope_local_theta must be None or a positive number, got {local!r}")  # fmt: skip
        self.require(local is None or self.positions == "rotary", "rope_local_theta needs rotary positions")
        self.require(self.first_attn_norm or self.norm_position == "pre",
                     "first_attn_norm False (layer 0 without a pre-norm) needs norm_position 'pre'")  # fmt: skip

    @property
    def n_kv_head(self) -> int:
        return self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def post_norm(self) -> bool:
        return self.norm_position == "post"

    @classmethod
    def bert_tiny(cls, **kw) -> "EncoderConfig":
        return cls(**{"vocab_size": 99, "d_model": 32, "n_layer": 2, "n_head": 4, "d_ff": 37, **kw})


class EncoderBlock(nn.Module):
    """Post-norm block, as in the original Transformer and BERT: Norm(x + Attn(x)), Norm(x + MLP(x)).
    Pre-norm: x + Attn(Norm(x)), x + MLP(Norm(x))."""

    def __init__(self, cfg: EncoderConfig, layer_idx: int = 0):
        super().__init__()
        self.pattern = cfg.layer_types[layer_idx]
        self.post_norm = cfg.post_norm
        self.attn = Attention(cfg.d_model, cfg.n_head, qkv_bias=cfg.attention_bias, o_bias=cfg.attention_bias)
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, bias=cfg.norm_bias)
        if layer_idx == 0 and not cfg.first_attn_norm:  # ModernBERT: layer 0 reads the embedding norm's output
            self.attn_norm = nn.Identity()
        self.mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.d_ff, cfg.activation, bias=cfg.mlp_bias)
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, bias=cfg.norm_bias)

    def forward(self, x: Tensor, *, masks: dict, bias: Tensor | None = None, rope=None, need_weights: bool):
        attn = partial(self.attn, mask=masks[self.pattern], bias=bias, rope=rope, need_weights=need_weights)
        x, probs = residual(x, self.attn_norm, attn, post=self.post_norm)  # (B, T, D), (B, H, T, T) or None
        (x,) = residual(x, self.mlp_norm, lambda h: (self.mlp(h),), post=self.post_norm)
        return x, probs


class MLMHead(nn.Module):
    """Predicts the token at each position: dense → act → LayerNorm → tied embedding + bias."""

    def __init__(self, cfg: EncoderConfig, embedding: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.head_bias)
        self.act = activation(cfg.head_activation or cfg.activation)
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, bias=cfg.norm_bias)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_decoder_bias)
        self.decoder.weight = embedding.weight  # tied

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(x))))  # (B, T, V)


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len + cfg.position_offset, cfg.d_model)
        elif cfg.positions == "sinusoidal":
            self.register_buffer("sinusoid", sinusoidal_positions(cfg.max_seq_len, cfg.d_model), persistent=False)
        elif cfg.positions == "rotary":
            self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        # ModernBERT: local (windowed) layers rotate with a base of their own; None = every layer the same
        self.rotary_local = None
        if cfg.positions == "rotary" and cfg.rope_local_theta is not None:
            self.rotary_local = RotaryEmbedding(cfg.head_dim, cfg.rope_local_theta)
        elif cfg.positions == "relative":
            # One table for the whole stack, as T5's encoder: computed once, added in every layer.
            self.relative_attention_bias = nn.Embedding(cfg.relative_buckets, cfg.n_head)  # (buckets, H)
        self.embed_types = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.embed_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, bias=cfg.norm_bias)
        self.layers = nn.ModuleList(EncoderBlock(cfg, i) for i in range(cfg.n_layer))
        # Pre-norm leaves the residual stream unnormalised: a final norm, as pre-LN transformers have.
        final = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, bias=cfg.norm_bias)
        self.norm = final if not cfg.post_norm else nn.Identity()
        self.mlm_head = MLMHead(cfg, self.embed_tokens) if cfg.has_mlm_head else None
        self.apply(init_normal)

    def forward(
        self,
        ids: Tensor,
        *,
        trace: bool = False,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> ModelOutput:
        """ids (B, T); attention_mask (B, T) is 1 for real tokens and 0 for padding."""
        cfg = self.config
        T = ids.shape[1]
        if T > cfg.max_seq_len and cfg.positions in TABLE_POSITIONS:
            raise ValueError(f"{T} tokens exceed this model's context of {cfg.max_seq_len}")
        pos = torch.arange(T, device=ids.device)
        x, rope, bias = self._positions(self.embed_tokens(ids), pos, ids)
        if self.embed_types is not None:
            x = x + self.embed_types(torch.zeros_like(ids) if token_type_ids is None else token_type_ids)
        x = self.embed_norm(x)  # (B, T, D)
        pad = padding_mask(attention_mask) if attention_mask is not None else None  # (B, 1, 1, T)
        masks = {  # per pattern some layer has: bidirectional, None for "full" without padding
            p: combine_masks(pattern_mask(pos, pos, causal=False, window=cfg.sliding_window, pattern=p), pad)
            for p in dict.fromkeys(cfg.layer_types)
        }  # each (T, T), (B, 1, 1, T) or (B, 1, T, T)

        local_rope = self.rotary_local(pos) if rope is not None and self.rotary_local is not None else None
        hidden, attns = [x], []
        for layer in self.layers:
            layer_rope = local_rope if local_rope is not None and layer.pattern != "full" else rope
            x, probs = layer(x, masks=masks, bias=bias, rope=layer_rope, need_weights=trace)
            hidden.append(x)
            attns.append(probs)
        h = self.norm(x)  # post-norm: the identity
        logits = self.mlm_head(h) if self.mlm_head is not None else None
        tr = Trace(hidden_states=hidden, attentions=attns) if trace else None
        return ModelOutput(logits=logits, trace=tr, last_hidden_state=h)

    def _positions(self, x: Tensor, pos: Tensor, ids: Tensor):
        """(x with any position embedding added, rope (cos, sin) or None, score bias (1, H, T, T) or None)."""
        cfg = self.config
        if POSITIONS_OFF.get():  # analysis: the same model without its position term
            return (x * cfg.d_model**0.5 if cfg.positions == "sinusoidal" else x), None, None
        if cfg.positions == "learned" and cfg.position_offset:  # RoBERTa: count the real tokens only
            real = (ids != cfg.pad_token_id).long()  # (B, T)
            pos = torch.cumsum(real, dim=1) * real + cfg.position_offset - 1  # real: offset, offset + 1, ...; pads: offset - 1
            return x + self.embed_positions(pos), None, None  # (B, T, D)
        if cfg.positions == "learned":
            return x + self.embed_positions(pos), None, None
        if cfg.positions == "sinusoidal":  # the token embeddings × √d_model first, as Vaswani et al.
            return x * cfg.d_model**0.5 + self.sinusoid[pos].to(x.dtype), None, None
        if cfg.positions == "rotary":
            return x, self.rotary(pos), None
        if cfg.positions == "alibi":
            return x, None, alibi_bias(alibi_slopes(cfg.n_head, pos.device), pos, pos)  # −m_h·|q − k|
        if cfg.positions == "relative":
            bias = relative_position_bias(self.relative_attention_bias, pos, pos, bidirectional=True,
                                          max_distance=cfg.relative_max_distance)  # fmt: skip
            return x, None, bias
        return x, None, None  # "none": a bag of tokens, unless a local pattern tells positions apart
