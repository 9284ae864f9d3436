"""Encoder-decoder transformer: T5 (Raffel et al. 2020) and T5 v1.1 / Flan-T5 from one implementation.

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

Generation runs the encoder once; each decoding step then costs one decoder pass over the
new token, with a KV cache for decoder self-attention and the cross-attention keys and
values of the encoder output computed once and reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from archplay.models.architectures import generation
from archplay.models.architectures.layers import (
    MLP,
    POSITIONS_OFF,
    Attention,
    ConfigDict,
    GatedMLP,
    KVCache,
    ModelOutput,
    RMSNorm,
    Trace,
    activation,
    attention_mask,
    padding_mask,
    relative_position_bias,
    relative_position_bucket,
)


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
    max_seq_len: int = 512  # for the UI only: relative positions impose no hard limit
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
        self.require(self.relative_attention_num_buckets >= 4, "T5 needs at least 4 relative position buckets")
        self.require(self.relative_attention_max_distance > self.relative_attention_num_buckets // 4,
                     "relative_attention_max_distance must exceed a quarter of the buckets")  # fmt: skip

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
    """T5's DenseReluDense: wi -> act -> wo, or v1.1's gated act(wi_0) * wi_1 -> wo. No biases."""
    if cfg.gated:
        return GatedMLP(cfg.d_model, cfg.d_ff, cfg.ffn_activation, bias=False)
    return MLP(cfg.d_model, cfg.d_ff, cfg.ffn_activation, bias=False)


def t5_attention(cfg: EncoderDecoderConfig) -> Attention:
    # scale=1.0: T5 does not divide q·k by sqrt(d_kv); its initialisation accounts for it.
    return Attention(cfg.d_model, cfg.n_head, head_dim=cfg.d_kv, scale=1.0)


Memory = tuple[Tensor, Tensor]  # one decoder block's cross-attention keys and values, each (B, H, S, Dh)


class EncoderBlock(nn.Module):
    """Pre-norm: x + SelfAttn(Norm(x)) with the relative position bias, then x + FFN(Norm(x))."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = t5_attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = make_ffn(cfg)

    def forward(self, x: Tensor, *, bias: Tensor, mask: Tensor | None, need_weights: bool):
        a, probs = self.attn(self.attn_norm(x), bias=bias, mask=mask, need_weights=need_weights)
        x = x + a  # (B, S, D)
        x = x + self.mlp(self.mlp_norm(x))
        return x, probs  # probs (B, H, S, S) or None


@dataclass
class DecoderLayerTrace:
    self_attention: Tensor | None  # (B, H, T, T_total), causal
    cross_attention: Tensor | None  # (B, H, T, S)


class DecoderBlock(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the encoder, feed-forward."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = t5_attention(cfg)
        self.cross_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.cross_attn = t5_attention(cfg)  # keys and values from the encoder output
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = make_ffn(cfg)

    def forward(self, x: Tensor, *, bias: Tensor, mask: Tensor, memory: Memory, memory_mask: Tensor | None,
                cache: KVCache | None, need_weights: bool) -> tuple[Tensor, DecoderLayerTrace]:  # fmt: skip
        a, self_probs = self.attn(self.attn_norm(x), bias=bias, mask=mask, cache=cache, need_weights=need_weights)
        x = x + a  # (B, T, D)
        # Cross-attention: queries from the decoder, keys and values from the encoder (projected once per input).
        a, cross_probs = self.cross_attn(self.cross_attn_norm(x), memory=memory, mask=memory_mask,
                                         need_weights=need_weights)  # fmt: skip
        x = x + a
        x = x + self.mlp(self.mlp_norm(x))
        return x, DecoderLayerTrace(self_attention=self_probs, cross_attention=cross_probs)


# --------------------------------------------------------------------------- stacks


@dataclass
class StackOutput:
    last_hidden_state: Tensor  # (B, T, D) after the stack's final norm
    hidden_states: list[Tensor]  # the embeddings, then each block's output (before the final norm)
    attentions: list[Tensor | None]  # self-attention per block
    cross_attentions: list[Tensor | None] | None = None  # decoder only


class EncoderStack(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.config = cfg
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.n_head)
        self.layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)  # T5's final_layer_norm

    def forward(self, x: Tensor, *, key_mask: Tensor | None, need_weights: bool) -> StackOutput:
        """x (B, S, D) embeddings; key_mask (B, S) 1 for real tokens, 0 for padding."""
        pos = torch.arange(x.shape[1], device=x.device)
        bias = position_bias(self.relative_attention_bias, pos, pos, bidirectional=True, cfg=self.config)
        mask = padding_mask(key_mask) if key_mask is not None else None  # (B, 1, 1, S)
        hidden, attns = [x], []
        for layer in self.layers:
            x, probs = layer(x, bias=bias, mask=mask, need_weights=need_weights)
            hidden.append(x)
            attns.append(probs)
        return StackOutput(self.norm(x), hidden, attns)


class DecoderStack(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.config = cfg
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.n_head)
        self.layers = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_decoder_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def memories(self, enc: Tensor) -> list[Memory]:
        """Each block's cross-attention keys and values of the encoder output (B, S, D)."""
        return [layer.cross_attn.keys_values(enc) for layer in self.layers]

    def forward(self, x: Tensor, *, memories: list[Memory], key_mask: Tensor | None,
                cache: list[KVCache] | None, need_weights: bool) -> StackOutput:  # fmt: skip
        """x (B, T, D) embeddings of the new decoder tokens; ``cache`` holds the earlier ones."""
        offset = cache[0].length if cache else 0
        T = x.shape[1]
        pos = torch.arange(offset, offset + T, device=x.device)  # (T,) query positions
        k_pos = torch.arange(offset + T, device=x.device)  # (T_total,) key positions
        bias = position_bias(self.relative_attention_bias, pos, k_pos, bidirectional=False, cfg=self.config)
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
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)  # one table for encoder, decoder (and head)
        self.encoder = EncoderStack(cfg)
        self.decoder = DecoderStack(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.shared.weight

    def _init_weights(self, m: nn.Module) -> None:
        """T5's initialisation (Mesh TensorFlow): it is what makes the unscaled q·k work."""
        cfg = self.config
        if m is self:
            nn.init.normal_(m.shared.weight, std=1.0)
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
        elif isinstance(m, (EncoderStack, DecoderStack)):
            nn.init.normal_(m.relative_attention_bias.weight, std=cfg.d_model**-0.5)

    # ------------------------------------------------------------------ the two halves

    def encode(self, ids: Tensor, attention_mask: Tensor | None = None, *, trace: bool = False) -> StackOutput:
        """ids (B, S) -> the encoder's output (last_hidden_state (B, S, D), after its final norm)."""
        return self.encoder(self.shared(ids), key_mask=attention_mask, need_weights=trace)

    def decode(self, ids: Tensor, memories: list[Memory], attention_mask: Tensor | None = None, *,
               cache: list[KVCache] | None = None, trace: bool = False) -> tuple[Tensor, StackOutput]:  # fmt: skip
        """Decoder ids (B, T) against the encoder memory -> (logits (B, T, V), the decoder's outputs)."""
        out = self.decoder(self.shared(ids), memories=memories, key_mask=attention_mask, cache=cache,
                           need_weights=trace)  # fmt: skip
        h = out.last_hidden_state  # (B, T, D)
        if self.config.scale_decoder_outputs:
            h = h * self.config.d_model**-0.5  # original T5 rescales before its tied head
        return self.lm_head(h), out

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
        start, state = self._start(ids, None)
        return generation.stream(
            self._step, start, state, max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id,
        )  # fmt: skip


__all__ = [
    "DecoderBlock", "EncoderBlock", "EncoderDecoder", "EncoderDecoderConfig",
    "relative_position_bucket",
]  # fmt: skip
