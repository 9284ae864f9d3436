"""Encoder-decoder transformer: T5 (Raffel et al. 2020), T5 v1.1 / Flan-T5 and BART (Lewis et al. 2020)
from one implementation; the T5 choices are the defaults, BART's are options (see "BART" below).

    input ids (B, S) ─► shared embedding ─► N × EncoderBlock ─► RMSNorm ─► encoder output (B, S, D)
                                            ▲ bidirectional position bias,           │ k, v projected once
                                            │ computed once for the stack            ▼ per decoder block ("memory")
    decoder ids (B, T) ─► shared embedding ─► M × DecoderBlock ◄── cross-attention ──┘
    (starts with pad)                         ▲ causal position bias, computed once
                                              ▼
                                            RMSNorm ─► (× d_model^-0.5, original T5) ─► LM head ─► logits (B, T, V)

    EncoderBlock (pre-norm):  x += SelfAttn(Norm(x));                               x += FFN(Norm(x))
    DecoderBlock (pre-norm):  x += CausalSelfAttn(Norm(x));  x += CrossAttn(Norm(x));  x += FFN(Norm(x))

What makes it T5 rather than the 2017 Transformer:

* No position embeddings. Each attention score gets a learned scalar per head for the
  *bucketed* distance key - query (``relative_position_bucket``): exact buckets for short
  distances, logarithmic ones up to ``relative_attention_max_distance``. Only the first
  block of each stack owns that table in the checkpoint; the bias it gives is reused by
  every later block of the stack (here: computed once per stack, before the blocks).
  Encoder buckets are bidirectional; decoder buckets only tell apart keys before the query.
  Cross-attention has no position bias.
* No 1/sqrt(d) scaling of q·k (it is folded into the initialisation), so ``scale=1.0``.
* RMSNorm without bias ("T5LayerNorm"), no biases anywhere, one embedding matrix shared by
  encoder, decoder and (original T5) the output head.

| choice        | original T5                  | T5 v1.1 / Flan-T5                      |
|---------------|------------------------------|----------------------------------------|
| feed-forward  | ReLU: wo(relu(wi x))         | gated GELU: wo(gelu(wi_0 x) * wi_1 x)  |
| output head   | the embedding matrix (tied), | its own matrix, no rescaling           |
|               | input scaled by d_model^-0.5 |                                        |

The trace keeps, per stack, the embeddings and each block's output *before* the stack's
final norm (transformers reports the last one after it), and the attention probabilities:
encoder self-attention (B, H, S, S), decoder self-attention (B, H, T, T), cross-attention
(B, H, T, S).

BART, the 2017 Transformer's encoder-decoder as fairseq trained it, differs from T5 in every
choice above, each an option of ``EncoderDecoderConfig``:

| choice              | T5 (default)                         | BART                                              |
|---------------------|--------------------------------------|---------------------------------------------------|
| positions           | relative buckets, a bias on scores   | ``positions="learned"``: a table per stack, added |
|                     |                                      | to the embeddings from row ``position_offset`` 2  |
| embeddings          | as they are                          | × √d_model (``scale_embedding``), then a norm     |
|                     |                                      | per stack (``embedding_norm``)                    |
| norm                | RMSNorm, pre-norm, + a final norm    | LayerNorm with bias, post-norm: Norm(x + f(x)),   |
|                     |                                      | no final norm (``norm``, ``norm_position``)       |
| q·k                 | not scaled                           | × 1/√d_kv (``scale_attention``)                   |
| biases              | none                                 | on every projection (``bias``)                    |
| feed-forward        | ReLU or gated GELU                   | GELU (``ffn="gelu"``)                             |
| logits              | head(h)                              | head(h) + a stored bias (``final_logits_bias``)   |
| decoding starts at  | the pad token (0)                    | the end token ``</s>`` (2)                        |

An untied BART (transformers 5's ``tie_word_embeddings: false``) has a token table per stack as well
as its own head (``share_embeddings=False``). mBART is BART made pre-norm: ``norm_position="pre"``,
which brings back a final LayerNorm per stack.

Generation runs the encoder once; each decoding step then costs one decoder pass over the
new token, with a KV cache for decoder self-attention and the cross-attention keys and
values of the encoder output computed once and reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from archplay.models.architectures import generation
from archplay.models.architectures.layers import (
    MLP,
    NORM_POSITIONS,
    NORMS,
    POSITIONS_OFF,
    Attention,
    ConfigDict,
    GatedMLP,
    KVCache,
    ModelOutput,
    Trace,
    activation,
    attention_mask,
    init_normal,
    make_norm,
    padding_mask,
    relative_position_bias,
    relative_position_bucket,
    residual,
)

POSITIONS = ("relative", "learned")  # T5's bucketed score bias; BART's table added to the embeddings


@dataclass
class EncoderDecoderConfig(ConfigDict):
    vocab_size: int
    d_model: int
    d_kv: int  # width of each head (n_head * d_kv need not equal d_model)
    d_ff: int
    n_layer: int  # encoder blocks
    n_head: int
    n_decoder_layer: int | None = None  # None = n_layer
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    norm_eps: float = 1e-6
    ffn: str = "relu"  # "relu" (original T5), "gated-gelu" (v1.1); in general "ACT" or "gated-ACT"
    tie_embeddings: bool = True  # the output head shares the embedding matrix
    scale_decoder_outputs: bool | None = None  # × d_model^-0.5 before the head; None = tie_embeddings
    pad_token_id: int = 0
    eos_token_id: int | None = 1
    decoder_start_token_id: int = 0  # T5 starts decoding from the pad token
    max_seq_len: int = 512  # relative: for the UI only (no hard limit); learned: the position table's length
    # BART's choices (the defaults are T5's; see the module doc).
    positions: str = "relative"  # "relative" (T5) | "learned" (BART: a table per stack, added to the embeddings)
    position_offset: int = 0  # learned: the table row of position 0 (BART: 2, fairseq's padding offset)
    norm: str = "rmsnorm"  # "rmsnorm" (T5, no bias) | "layernorm" (BART, with bias)
    norm_position: str = "pre"  # "post": Norm(x + f(x)) after each residual add, and no final norm (BART)
    embedding_norm: bool = False  # a norm of each stack's embeddings (BART's layernorm_embedding)
    scale_embedding: bool = False  # token embeddings × √d_model (BART's scale_embedding)
    bias: bool = False  # biases on every projection: q, k, v, o and the feed-forward (BART)
    scale_attention: bool = False  # q·k × 1/√d_kv (BART); T5 folds the scale into its initialisation
    final_logits_bias: bool = False  # a stored bias added to the logits (BART's final_logits_bias buffer)
    share_embeddings: bool = True  # one token table for encoder and decoder; False: one per stack
    name: str = "t5"
    trained: bool = True  # False for a random-weight placeholder
    family: str = field(default="encoder-decoder", init=False)

    def __post_init__(self) -> None:
        self.require_sizes("vocab_size", "d_model", "d_kv", "d_ff", "n_layer", "n_head")
        self.n_decoder_layer = self.n_decoder_layer or self.n_layer
        self.require_sizes("n_decoder_layer")
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_embeddings
        activation(self.ffn_activation)  # raises a ValueError naming the supported activations
        self.require(self.positions in POSITIONS,
                     f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")  # fmt: skip
        self.require(self.norm in NORMS, f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        self.require(self.norm_position in NORM_POSITIONS,
                     f"norm_position must be one of {', '.join(NORM_POSITIONS)}, "
                     f"got {self.norm_position!r}")  # fmt: skip
        self.require_sizes("max_seq_len")
        offset = self.position_offset
        self.require(isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0,
                     f"position_offset must be a whole number >= 0, got {offset!r}")  # fmt: skip
        self.require(self.share_embeddings or not self.tie_embeddings,
                     "a head tied to the embeddings needs one shared table (share_embeddings)")  # fmt: skip
        if self.positions == "relative":
            self.require(self.relative_attention_num_buckets >= 4, "T5 needs at least 4 relative position buckets")
            self.require(self.relative_attention_max_distance > self.relative_attention_num_buckets // 4,
                         "relative_attention_max_distance must exceed a quarter of the buckets")  # fmt: skip

    @property
    def post_norm(self) -> bool:
        return self.norm_position == "post"

    @property
    def gated(self) -> bool:
        return self.ffn.startswith("gated-")

    @property
    def ffn_activation(self) -> str:
        act = self.ffn.removeprefix("gated-")
        return "gelu_new" if self.ffn == "gated-gelu" else act  # v1.1 checkpoints use the tanh GELU

    @property
    def head_dim(self) -> int:
        return self.d_kv

    @property
    def n_kv_head(self) -> int:
        return self.n_head

    # Tiny named presets, for tests and placeholders.
    @classmethod
    def t5_tiny(cls, **kw) -> "EncoderDecoderConfig":
        base = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, n_layer=2, n_head=4, eos_token_id=3)
        return cls(**{**base, **kw})

    @classmethod
    def t5_v11_tiny(cls, **kw) -> "EncoderDecoderConfig":
        return cls.t5_tiny(**{"ffn": "gated-gelu", "tie_embeddings": False, **kw})

    @classmethod
    def bart_tiny(cls, **kw) -> "EncoderDecoderConfig":
        base = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, n_layer=2, n_head=4, ffn="gelu",
                    scale_decoder_outputs=False, positions="learned", position_offset=2, norm="layernorm",
                    norm_eps=1e-5, norm_position="post", embedding_norm=True, bias=True, scale_attention=True,
                    final_logits_bias=True, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, max_seq_len=64,
                    name="bart")  # fmt: skip
        return cls(**{**base, **kw})


# --------------------------------------------------------------------------- relative positions


# ``relative_position_bucket`` lives in layers.py (the decoder-only family's "relative" positions
# use it too); it is re-exported here, beside the T5 code it comes from.


def position_bias(
    table: nn.Embedding, q_pos: Tensor, k_pos: Tensor, *, bidirectional: bool, cfg: EncoderDecoderConfig
) -> Tensor:
    """The additive score bias of one stack: a learned scalar per (head, bucket) -> (1, H, T, S)
    (None when analysis switched positions off)."""
    if POSITIONS_OFF.get():
        return None
    return relative_position_bias(table, q_pos, k_pos, bidirectional=bidirectional,
                                  max_distance=cfg.relative_attention_max_distance)  # fmt: skip


# --------------------------------------------------------------------------- blocks


def make_ffn(cfg: EncoderDecoderConfig) -> nn.Module:
    """T5's DenseReluDense: wi -> act -> wo, or v1.1's gated act(wi_0) * wi_1 -> wo (no biases);
    BART's fc1 -> GELU -> fc2 (with biases)."""
    if cfg.gated:
        return GatedMLP(cfg.d_model, cfg.d_ff, cfg.ffn_activation, bias=cfg.bias)
    return MLP(cfg.d_model, cfg.d_ff, cfg.ffn_activation, bias=cfg.bias)


def t5_attention(cfg: EncoderDecoderConfig) -> Attention:
    # scale=1.0: T5 does not divide q·k by sqrt(d_kv); its initialisation accounts for it. BART does (None).
    return Attention(cfg.d_model, cfg.n_head, head_dim=cfg.d_kv, scale=None if cfg.scale_attention else 1.0,
                     qkv_bias=cfg.bias, o_bias=cfg.bias)  # fmt: skip


def norm(cfg: EncoderDecoderConfig) -> nn.Module:
    return make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)


Memory = tuple[Tensor, Tensor]  # one decoder block's cross-attention keys and values, each (B, H, S, Dh)


class EncoderBlock(nn.Module):
    """Pre-norm (T5): x + SelfAttn(Norm(x)) with the relative position bias, then x + FFN(Norm(x)).
    Post-norm (BART): x = Norm(x + SelfAttn(x)), then x = Norm(x + FFN(x))."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.post_norm = cfg.post_norm
        self.attn_norm = norm(cfg)
        self.attn = t5_attention(cfg)
        self.mlp_norm = norm(cfg)
        self.mlp = make_ffn(cfg)

    def forward(self, x: Tensor, *, bias: Tensor | None, mask: Tensor | None, need_weights: bool):
        def attn(h):
            return self.attn(h, bias=bias, mask=mask, need_weights=need_weights)

        x, probs = residual(x, self.attn_norm, attn, post=self.post_norm)  # (B, S, D)
        (x,) = residual(x, self.mlp_norm, lambda h: (self.mlp(h),), post=self.post_norm)
        return x, probs  # probs (B, H, S, S) or None


@dataclass
class DecoderLayerTrace:
    self_attention: Tensor | None  # (B, H, T, T_total), causal
    cross_attention: Tensor | None  # (B, H, T, S)


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder, feed-forward; each pre-norm (T5) or post-norm (BART)."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.post_norm = cfg.post_norm
        self.attn_norm = norm(cfg)
        self.attn = t5_attention(cfg)
        self.cross_attn_norm = norm(cfg)
        self.cross_attn = t5_attention(cfg)  # keys and values from the encoder output
        self.mlp_norm = norm(cfg)
        self.mlp = make_ffn(cfg)

    def forward(self, x: Tensor, *, bias: Tensor | None, mask: Tensor, memory: Memory, memory_mask: Tensor | None,
                cache: KVCache | None, need_weights: bool) -> tuple[Tensor, DecoderLayerTrace]:  # fmt: skip
        def attn(h):
            return self.attn(h, bias=bias, mask=mask, cache=cache, need_weights=need_weights)

        def cross(h):  # queries from the decoder, keys and values from the encoder (projected once per input)
            return self.cross_attn(h, memory=memory, mask=memory_mask, need_weights=need_weights)

        x, self_probs = residual(x, self.attn_norm, attn, post=self.post_norm)  # (B, T, D)
        x, cross_probs = residual(x, self.cross_attn_norm, cross, post=self.post_norm)
        (x,) = residual(x, self.mlp_norm, lambda h: (self.mlp(h),), post=self.post_norm)
        return x, DecoderLayerTrace(self_attention=self_probs, cross_attention=cross_probs)


# --------------------------------------------------------------------------- stacks


@dataclass
class StackOutput:
    last_hidden_state: Tensor  # (B, T, D) after the stack's final norm
    hidden_states: list[Tensor]  # the embeddings, then each block's output (before the final norm)
    attentions: list[Tensor | None]  # self-attention per block
    cross_attentions: list[Tensor | None] | None = None  # decoder only


class Stack(nn.Module):
    """What both stacks share: their own token table (untied BART only), their position term (T5's
    relative-bias table or BART's learned positions), the norm of their embeddings (BART) and their final
    norm (pre-norm only: post-norm blocks end normalised)."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.config = cfg
        if not cfg.share_embeddings:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions == "relative":
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.n_head)
        else:  # BART keeps position_offset unused rows before position 0
            self.embed_positions = nn.Embedding(cfg.max_seq_len + cfg.position_offset, cfg.d_model)
        self.embed_norm = norm(cfg) if cfg.embedding_norm else None

    def final_norm(self, cfg: EncoderDecoderConfig) -> nn.Module:
        return nn.Identity() if cfg.post_norm else norm(cfg)  # T5's final_layer_norm

    def embed(self, x: Tensor, pos: Tensor, offset: int) -> Tensor:
        """Token embeddings x (B, T, D) at positions pos (T,), which start at ``offset`` -> the first block's input."""
        cfg = self.config
        if cfg.positions == "learned":
            if offset + x.shape[1] > cfg.max_seq_len:
                raise ValueError(f"{offset + x.shape[1]} positions go beyond this model's learned position table "
                                 f"({cfg.max_seq_len} positions)")  # fmt: skip
            if not POSITIONS_OFF.get():
                x = x + self.embed_positions(pos + cfg.position_offset)  # (B, T, D)
        return x if self.embed_norm is None else self.embed_norm(x)

    def position_bias(self, q_pos: Tensor, k_pos: Tensor, *, bidirectional: bool) -> Tensor | None:
        if self.config.positions != "relative":
            return None
        return position_bias(self.relative_attention_bias, q_pos, k_pos, bidirectional=bidirectional, cfg=self.config)


class EncoderStack(Stack):
    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = self.final_norm(cfg)

    def forward(self, x: Tensor, *, key_mask: Tensor | None, need_weights: bool) -> StackOutput:
        """x (B, S, D) token embeddings; key_mask (B, S) 1 for real tokens, 0 for padding."""
        pos = torch.arange(x.shape[1], device=x.device)
        x = self.embed(x, pos, 0)
        bias = self.position_bias(pos, pos, bidirectional=True)
        mask = padding_mask(key_mask) if key_mask is not None else None  # (B, 1, 1, S)
        hidden, attns = [x], []
        for layer in self.layers:
            x, probs = layer(x, bias=bias, mask=mask, need_weights=need_weights)
            hidden.append(x)
            attns.append(probs)
        return StackOutput(self.norm(x), hidden, attns)


class DecoderStack(Stack):
    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_decoder_layer))
        self.norm = self.final_norm(cfg)

    def memories(self, enc: Tensor) -> list[Memory]:
        """Each block's cross-attention keys and values of the encoder output (B, S, D)."""
        return [layer.cross_attn.keys_values(enc) for layer in self.layers]

    def forward(self, x: Tensor, *, memories: list[Memory], key_mask: Tensor | None,
                cache: list[KVCache] | None, need_weights: bool) -> StackOutput:  # fmt: skip
        """x (B, T, D) token embeddings of the new decoder tokens; ``cache`` holds the earlier ones."""
        offset = cache[0].length if cache else 0
        T = x.shape[1]
        pos = torch.arange(offset, offset + T, device=x.device)  # (T,) query positions
        k_pos = torch.arange(offset + T, device=x.device)  # (T_total,) key positions
        x = self.embed(x, pos, offset)
        bias = self.position_bias(pos, k_pos, bidirectional=False)
        mask = attention_mask(pos, k_pos, causal=True)  # (T, T_total)
        memory_mask = padding_mask(key_mask) if key_mask is not None else None  # (B, 1, 1, S)
        hidden, attns, cross = [x], [], []
        for i, layer in enumerate(self.layers):
            x, lt = layer(x, bias=bias, mask=mask, memory=memories[i], memory_mask=memory_mask,
                          cache=cache[i] if cache else None, need_weights=need_weights)  # fmt: skip
            hidden.append(x)
            attns.append(lt.self_attention)
            cross.append(lt.cross_attention)
        return StackOutput(self.norm(x), hidden, attns, cross)


# --------------------------------------------------------------------------- model


@dataclass
class DecodeState:
    """What a decoding step needs: the encoder's cross-attention memory and the self-attention caches."""

    memories: list[Memory]  # per decoder block
    key_mask: Tensor | None  # (B, S) encoder padding, or None
    caches: list[KVCache]  # per decoder block


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.config = cfg
        # One table for encoder, decoder (and head); an untied BART has one per stack instead (Stack.embed_tokens).
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model) if cfg.share_embeddings else None
        self.encoder = EncoderStack(cfg)
        self.decoder = DecoderStack(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.final_logits_bias:  # a buffer, as in transformers: stored in the checkpoint, never trained
            self.register_buffer("final_logits_bias", torch.zeros(cfg.vocab_size))
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.shared.weight

    def token_tables(self) -> list[nn.Embedding]:
        return [self.shared] if self.shared is not None else [self.encoder.embed_tokens, self.decoder.embed_tokens]

    def _init_weights(self, m: nn.Module) -> None:
        """T5's initialisation (Mesh TensorFlow): it is what makes the unscaled q·k work. With the scaled
        q·k (BART): N(0, 0.02) for every matrix and table, zero biases."""
        cfg = self.config
        if cfg.scale_attention:
            init_normal(m, 0.02)
            return
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if m is self:
            for table in m.token_tables():
                nn.init.normal_(table.weight, std=1.0)
            nn.init.normal_(m.lm_head.weight, std=1.0)
        elif isinstance(m, Attention):
            nn.init.normal_(m.q_proj.weight, std=(cfg.d_model * cfg.d_kv) ** -0.5)
            nn.init.normal_(m.k_proj.weight, std=cfg.d_model**-0.5)
            nn.init.normal_(m.v_proj.weight, std=cfg.d_model**-0.5)
            nn.init.normal_(m.o_proj.weight, std=(cfg.n_head * cfg.d_kv) ** -0.5)
        elif isinstance(m, (MLP, GatedMLP)):
            for name in ("gate_proj", "up_proj"):
                if hasattr(m, name):
                    nn.init.normal_(getattr(m, name).weight, std=cfg.d_model**-0.5)
            nn.init.normal_(m.down_proj.weight, std=cfg.d_ff**-0.5)
        elif isinstance(m, Stack):
            table = m.relative_attention_bias if cfg.positions == "relative" else m.embed_positions
            nn.init.normal_(table.weight, std=cfg.d_model**-0.5)

    # ------------------------------------------------------------------ the two halves

    def _tokens(self, ids: Tensor, stack: Stack) -> Tensor:
        """ids (B, T) -> the token embeddings (B, T, D) a stack reads (× √d_model for BART's scale_embedding)."""
        x = (self.shared if self.shared is not None else stack.embed_tokens)(ids)
        return x * math.sqrt(self.config.d_model) if self.config.scale_embedding else x

    def encode(self, ids: Tensor, attention_mask: Tensor | None = None, *, trace: bool = False) -> StackOutput:
        """ids (B, S) -> the encoder's output (last_hidden_state (B, S, D), after its final norm)."""
        return self.encoder(self._tokens(ids, self.encoder), key_mask=attention_mask, need_weights=trace)

    def decode(self, ids: Tensor, memories: list[Memory], attention_mask: Tensor | None = None, *,
               cache: list[KVCache] | None = None, trace: bool = False) -> tuple[Tensor, StackOutput]:  # fmt: skip
        """Decoder ids (B, T) against the encoder memory -> (logits (B, T, V), the decoder's outputs)."""
        out = self.decoder(self._tokens(ids, self.decoder), memories=memories, key_mask=attention_mask, cache=cache,
                           need_weights=trace)  # fmt: skip
        h = out.last_hidden_state  # (B, T, D)
        if self.config.scale_decoder_outputs:
            h = h * self.config.d_model**-0.5  # original T5 rescales before its tied head
        logits = self.lm_head(h)  # (B, T, V)
        if self.config.final_logits_bias:
            logits = logits + self.final_logits_bias.to(logits.dtype)
        return logits, out

    def forward(self, ids: Tensor, *, decoder_input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, trace: bool = False) -> ModelOutput:  # fmt: skip
        """ids (B, S) for the encoder; decoder_input_ids (B, T), by default the start token alone.

        attention_mask (B, S): 1 for real encoder tokens, 0 for padding.
        Logits are over decoder positions: (B, T, vocab).
        """
        if decoder_input_ids is None:
            decoder_input_ids = ids.new_full((ids.shape[0], 1), self.config.decoder_start_token_id)
        enc = self.encode(ids, attention_mask, trace=trace)
        memories = self.decoder.memories(enc.last_hidden_state)
        logits, dec = self.decode(decoder_input_ids, memories, attention_mask, trace=trace)
        tr = None
        if trace:
            tr = Trace(
                hidden_states=enc.hidden_states, attentions=enc.attentions,
                decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
                cross_attentions=dec.cross_attentions,
            )  # fmt: skip
        return ModelOutput(logits=logits, trace=tr, last_hidden_state=dec.last_hidden_state)

    # ------------------------------------------------------------------ generation

    def _start(self, ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, DecodeState]:
        """Run the encoder once; return the decoder's start tokens (B, 1) and the decoding state."""
        with torch.inference_mode():
            enc = self.encode(ids, attention_mask).last_hidden_state  # (B, S, D)
            memories = self.decoder.memories(enc)
        caches = [KVCache() for _ in self.decoder.layers]
        start = ids.new_full((ids.shape[0], 1), self.config.decoder_start_token_id)
        return start, DecodeState(memories, attention_mask, caches)

    def _step(self, ids: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        logits, _ = self.decode(ids, state.memories, state.key_mask, cache=state.caches)
        return logits, state

    def generate(self, ids: Tensor, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_token_id: int | None = None,
                 attention_mask: Tensor | None = None) -> Tensor:  # fmt: skip
        """Encode ``ids`` (B, S) once, then decode -> the new decoder tokens (B, new), without the
        start token. Temperature 0 is greedy; ``eos_token_id`` None runs all ``max_new_tokens``."""
        self._check_room(max_new_tokens)
        start, state = self._start(ids, attention_mask)
        out = generation.generate(
            self._step, start, state, max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id,
        )  # fmt: skip
        return out[:, 1:]

    def generate_stream(self, ids: Tensor, max_new_tokens: int = 32, temperature: float = 0.0,
                        top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                        eos_token_id: int | None = None):  # fmt: skip
        """Like ``generate`` for one sequence, yielding (token id, probability) as they come."""
        if ids.shape[0] != 1:
            raise ValueError("streaming generation takes one sequence at a time")
        self._check_room(max_new_tokens)
        start, state = self._start(ids, None)
        return generation.stream(
            self._step, start, state, max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id,
        )  # fmt: skip


    def _check_room(self, max_new_tokens: int) -> None:
        """Learned positions: the decoder reads the start token and all new tokens but the last."""
        cfg = self.config
        if cfg.positions == "learned" and isinstance(max_new_tokens, int) and max_new_tokens > cfg.max_seq_len:
            raise ValueError(f"max_new_tokens {max_new_tokens} is more than this model's {cfg.max_seq_len} "
                             "learned decoder positions")  # fmt: skip


__all__ = [
    "DecoderBlock", "EncoderBlock", "EncoderDecoder", "EncoderDecoderConfig",
    "relative_position_bucket",
]  # fmt: skip
