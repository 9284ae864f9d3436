"""Encoder-only transformer: BERT (Devlin et al. 2019).

    ids ─► token + position + token-type embeddings ─► LayerNorm ─► N × block ─► (MLM head)
    block (post-norm): x = Norm(x + Attn(x));  x = Norm(x + MLP(x))

Attention is bidirectional: every token sees every other (padding aside), which is why
BERT fills in a [MASK] from both sides but cannot generate left to right. The masked-LM
head (dense → GELU → LayerNorm → the tied embedding matrix + bias) is optional: a bare
encoder checkpoint still loads and traces, and then ``logits`` is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from archplay.models.architectures.layers import (
    MLP,
    Attention,
    ConfigDict,
    ModelOutput,
    Trace,
    activation,
    init_normal,
    padding_mask,
)


@dataclass
class EncoderConfig(ConfigDict):
    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    d_ff: int | None = None  # None = 4 * d_model
    max_seq_len: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    activation: str = "gelu"
    has_mlm_head: bool = True
    pad_token_id: int | None = 0
    name: str = "encoder"
    trained: bool = True
    family: str = field(default="encoder", init=False)

    def __post_init__(self) -> None:
        self.require_sizes("vocab_size", "d_model", "n_layer", "n_head")
        self.d_ff = self.d_ff or 4 * self.d_model
        self.require_sizes("d_ff", "max_seq_len")
        self.require(self.d_model % self.n_head == 0, "d_model must divide into n_head heads")

    @property
    def n_kv_head(self) -> int:
        return self.n_head

    @classmethod
    def bert_tiny(cls, **kw) -> "EncoderConfig":
        return cls(**{"vocab_size": 99, "d_model": 32, "n_layer": 2, "n_head": 4, "d_ff": 37, **kw})


class EncoderBlock(nn.Module):
    """Post-norm block, as in the original Transformer and BERT."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn = Attention(cfg.d_model, cfg.n_head, qkv_bias=True, o_bias=True)
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.activation, bias=True)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, x: Tensor, *, mask: Tensor | None, need_weights: bool):
        a, probs = self.attn(x, mask=mask, need_weights=need_weights)
        x = self.attn_norm(x + a)  # (B, T, D)
        x = self.mlp_norm(x + self.mlp(x))
        return x, probs


class MLMHead(nn.Module):
    """Predicts the token at each position: dense → act → LayerNorm → tied embedding + bias."""

    def __init__(self, cfg: EncoderConfig, embedding: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = activation(cfg.activation)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.decoder.weight = embedding.weight  # tied

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(x))))  # (B, T, V)


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.embed_types = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.embed_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
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
        T = ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"{T} tokens exceed this model's context of {self.config.max_seq_len}")
        pos = torch.arange(T, device=ids.device)
        types = torch.zeros_like(ids) if token_type_ids is None else token_type_ids
        x = self.embed_tokens(ids) + self.embed_positions(pos) + self.embed_types(types)
        x = self.embed_norm(x)  # (B, T, D)
        mask = padding_mask(attention_mask) if attention_mask is not None else None  # bidirectional

        hidden, attns = [x], []
        for layer in self.layers:
            x, probs = layer(x, mask=mask, need_weights=trace)
            hidden.append(x)
            attns.append(probs)
        logits = self.mlm_head(x) if self.mlm_head is not None else None
        tr = Trace(hidden_states=hidden, attentions=attns) if trace else None
        return ModelOutput(logits=logits, trace=tr, last_hidden_state=x)
