"""Decoder-only transformer: GPT-2 and Llama / Qwen2 from one config-driven implementation.

    ids ─► token embedding (+ learned positions) ─► N × [x + Attn(Norm(x)); x + MLP(Norm(x))] ─► Norm ─► LM head

Every block has causal self-attention. What differs between the families is configuration,
not code:

| choice        | GPT-2                  | Llama / Qwen2                          |
|---------------|------------------------|----------------------------------------|
| positions     | learned table          | rotary (RoPE) on q and k               |
| norm          | LayerNorm              | RMSNorm                                |
| MLP           | GELU (tanh)            | SwiGLU (gated, SiLU)                   |
| heads         | multi-head             | grouped-query (fewer k/v heads)        |
| biases        | everywhere             | none (Qwen2: on q, k, v only)          |
| output head   | tied to the embedding  | separate (usually)                     |
| window        | full causal            | Qwen2 may use a sliding window per layer |

The Architecture Lab adds the choices of the papers these came from, as config fields:

* ``positions``: besides learned / rotary / sinusoidal, "alibi" (Press et al. 2022: no embedding,
  a per-head score bias −m_h·(q − k)), "relative" (T5's learned bias per bucket of distance,
  causal buckets, one table shared by every layer as in T5), "none" (NoPE: only the causal
  mask tells positions apart). Only the two tables (learned, sinusoidal) limit the length.
* ``norm_position``: "pre" (above) or "post": x = Norm(x + Attn(x)); x = Norm(x + MLP(x)), as
  the original Transformer and GPT-1. A post-norm stack's output is already normalised, so,
  like GPT-1, it has no final norm (``model.norm`` is the identity; the logit lens still reads
  ``model.norm`` then ``model.lm_head``).
* ``layer_types``: per layer "full", "sliding", "strided" (Sparse Transformer) or "block"
  (block-local), each local pattern over ``sliding_window`` positions (``layers.attention_mask``).

Gemma 2 and 3 bring their own parts, each a field that is off by default: ``norm`` "gemma_rmsnorm"
(x̂·(1 + w) in float32), ``embed_scale`` (the token embeddings × √d_model), ``sandwich_norm`` (a norm
after the attention and after the MLP as well as before: x + Norm'(Attn(Norm(x)))), ``attn_scale``
(query_pre_attn_scalar^-½ in place of 1/√d_head), ``attn_softcap`` and ``final_softcap`` (scores and
logits through cap·tanh(·/cap)), and ``rope_local_theta`` (local layers rotate with their own RoPE base,
unscaled, while global layers keep ``rope_theta`` and ``rope_scaling``).

Two more choices come from checkpoints: ``qk_norm`` (an RMSNorm on q and k before RoPE: "head",
per head, Qwen3; "all", over the whole projection, OLMoE) and ``parallel_residual`` (GPT-NeoX / Pythia, GPT-J: attention and MLP both read
the block's input, x + Attn(Norm₁(x)) + MLP(Norm₂(x)), instead of one after the other).
GPT-J, Phi and OPT add, each off by default: ``shared_norm`` (GPT-J, Phi: the parallel block's two branches
read one norm, x + Attn(Norm(x)) + MLP(Norm(x))), ``rope_interleaved`` (GPT-J: RoPE on the channel pairs
(0, 1), (2, 3), ... instead of (i, i + d/2)), ``position_offset`` (OPT: position p reads row p + 2 of the
learned table), ``final_norm`` False (no final norm in a pre-norm stack), ``lm_head_bias``, and ``embed_dim``
(OPT-350m: token embeddings narrower than the stack, projected in after the lookup and out before the head,
both inside ``embed_tokens`` and ``lm_head`` so the logit lens and a tied head work unchanged).
OLMo 2 adds ``reordered_norm`` (a norm after each sublayer and none before it: x + Norm(Attn(x)),
x + Norm(MLP(x)); with ``qk_norm`` "all"); StableLM 2 ``qk_norm`` "each_head" (a bias-free LayerNorm per
head, each head its own scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from archplay.models.architectures import generation
from archplay.models.architectures.layers import (
    POSITIONS_OFF,
    QK_NORMS,
    Attention,
    ConfigDict,
    KVCache,
    ModelOutput,
    RotaryEmbedding,
    SoftCappedLinear,
    Trace,
    alibi_bias,
    alibi_slopes,
    attention_mask,
    check_choices,
    check_relative,
    init_normal,
    make_mlp,
    make_norm,
    relative_position_bias,
    residual,
    sinusoidal_positions,
)

POSITIONS = ("learned", "rotary", "sinusoidal", "alibi", "relative", "none")
TABLE_POSITIONS = ("learned", "sinusoidal")  # a table of max_seq_len rows: the only ones that limit the length


@dataclass
class DecoderConfig(ConfigDict):
    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int | None = None  # None = n_head (multi-head); fewer = grouped-query
    head_dim: int | None = None  # None = d_model // n_head
    d_ff: int | None = None  # None = 4 * d_model
    max_seq_len: int = 1024
    positions: str = "learned"  # learned | rotary | sinusoidal | alibi | relative | none
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # transformers' rope_parameters beyond the default
    rotary_fraction: float = 1.0  # partial RoPE: the share of each head's channels rotated
    relative_buckets: int = 32  # positions "relative": T5's buckets of distance (causal: all of them backwards)
    relative_max_distance: int = 128  # ... log-spaced up to this distance; farther keys share the last bucket
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_position: str = "pre"  # pre: x + f(norm(x)); post: norm(x + f(x)), and no final norm
    norm_eps: float = 1e-5
    mlp: str = "mlp"  # mlp | gated
    activation: str = "gelu_new"
    qkv_bias: bool = True
    o_bias: bool = True
    mlp_bias: bool = True
    tie_embeddings: bool = True
    sliding_window: int | None = None  # W: the keys a local pattern lets a query see, itself included
    layer_types: list[str] | None = None  # per layer "full" | "sliding" | "strided" | "block"; None = all full
    attn_scale_by_layer: bool = False  # GPT-2's scale_attn_by_inverse_layer_idx
    qk_norm: str | None = None  # RMSNorm on q and k before the rotation: "head" (Qwen3) | "all" (OLMoE); None = off
    parallel_residual: bool = False  # GPT-NeoX: x + Attn(Norm1(x)) + MLP(Norm2(x)), both from the same x
    embed_scale: bool = False  # Gemma: token embeddings × √d_model (rounded to the weights' dtype)
    sandwich_norm: bool = False  # Gemma 2/3: x + Norm'(Attn(Norm(x))), x + Norm'(MLP(Norm(x))): a norm after too
    attn_scale: float | None = None  # the factor on q·k; None = 1/√head_dim (Gemma: query_pre_attn_scalar^-½)
    attn_softcap: float | None = None  # Gemma 2: scaled scores -> cap·tanh(scores/cap) before the softmax
    final_softcap: float | None = None  # Gemma 2/3: logits -> cap·tanh(logits/cap)
    rope_local_theta: float | None = None  # Gemma 3: RoPE base of the local (non-"full") layers, unscaled
    shared_norm: bool = False  # GPT-J, Phi: a parallel block with one norm, x + Attn(Norm(x)) + MLP(Norm(x))
    rope_interleaved: bool = False  # GPT-J: rotary on channel pairs (0, 1), (2, 3), ... not on the two halves
    position_offset: int = 0  # OPT: learned position p reads table row p + offset (the table has offset more rows)
    final_norm: bool = True  # False: a pre-norm stack without the final norm (OPT's _remove_final_layer_norm)
    lm_head_bias: bool = False  # GPT-J, Phi: the LM head adds a bias per vocabulary entry
    embed_dim: int | None = None  # OPT-350m: token embedding width ≠ d_model (projected in and out); None = d_model
    reordered_norm: bool = False  # OLMo 2: x + Norm(Attn(x)), x + Norm(MLP(x)): a norm after each sublayer, none before
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    name: str = "decoder"
    trained: bool = True  # False for the random-weight placeholder
    family: str = field(default="decoder", init=False)

    def __post_init__(self) -> None:
        self.require_sizes("vocab_size", "d_model", "n_layer", "n_head")
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.d_model // self.n_head
        self.d_ff = self.d_ff or 4 * self.d_model
        if self.layer_types is None:
            self.layer_types = ["full"] * self.n_layer
        elif isinstance(self.layer_types, tuple):
            self.layer_types = list(self.layer_types)
        self.require_sizes("n_kv_head", "head_dim", "d_ff", "max_seq_len")
        self.require(self.n_head % self.n_kv_head == 0, "n_head must be a multiple of n_kv_head")
        self.require(self.positions in POSITIONS, f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        check_choices(self)
        self.require(self.qk_norm in (None, *QK_NORMS), f"qk_norm must be None or one of {', '.join(QK_NORMS)}, "
                                                         f"got {self.qk_norm!r}")  # fmt: skip
        self.require(0 < self.rotary_fraction <= 1, f"rotary_fraction must be in (0, 1], got {self.rotary_fraction}")
        if self.positions == "relative":
            check_relative(self, bidirectional=False)
        self.require(not (self.parallel_residual and self.norm_position == "post"),
                     "parallel_residual needs norm_position 'pre' (both branches read the un-normalised x)")  # fmt: skip
        self._check_gemma_parts()
        self._check_checkpoint_parts()
        self.require(not self.reordered_norm or (self.norm_position == "pre" and not self.parallel_residual
                                                 and not self.sandwich_norm and self.family == "decoder"),
                     "reordered_norm (OLMo 2) needs norm_position 'pre', no parallel_residual, no sandwich_norm, "
                     "and the dense decoder")  # fmt: skip

    def _check_checkpoint_parts(self) -> None:
        """GPT-J's, Phi's and OPT's options (off by default)."""
        self.require(not self.shared_norm or self.parallel_residual,
                     "shared_norm (one norm for attention and MLP) needs parallel_residual")  # fmt: skip
        self.require(not self.rope_interleaved or self.positions == "rotary", "rope_interleaved needs rotary positions")
        off = self.position_offset
        self.require(isinstance(off, int) and not isinstance(off, bool) and off >= 0,
                     f"position_offset must be a whole number of at least 0, got {off!r}")  # fmt: skip
        self.require(not off or self.positions == "learned", "position_offset needs learned positions")
        if self.embed_dim is not None:
            self.require_sizes("embed_dim")
            self.require(self.final_softcap is None, "embed_dim (projected embeddings) does not combine with final_softcap")

    def _check_gemma_parts(self) -> None:
        for name in ("attn_scale", "attn_softcap", "final_softcap", "rope_local_theta"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            positive = value is None or (number and value > 0)
            self.require(positive, f"{name} must be None or a positive number, got {value!r}")
        self.require(not self.sandwich_norm or (self.norm_position == "pre" and not self.parallel_residual),
                     "sandwich_norm needs norm_position 'pre' and no parallel_residual")  # fmt: skip
        self.require(not self.sandwich_norm or self.family == "decoder",
                     "sandwich_norm is for the dense decoder (a mixture of experts does not support it)")  # fmt: skip
        self.require(self.rope_local_theta is None or self.positions == "rotary",
                     "rope_local_theta needs rotary positions")  # fmt: skip

    @property
    def post_norm(self) -> bool:
        return self.norm_position == "post"

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    # Tiny named presets, for tests and the built-in placeholder.
    @classmethod
    def gpt2_tiny(cls, **kw) -> "DecoderConfig":
        return cls(**{"vocab_size": 99, "d_model": 32, "n_layer": 2, "n_head": 4, "max_seq_len": 64, **kw})

    @classmethod
    def llama_tiny(cls, **kw) -> "DecoderConfig":
        base = dict(
            vocab_size=99, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=128,
            positions="rotary", norm="rmsnorm", norm_eps=1e-6, mlp="gated", activation="silu",
            qkv_bias=False, o_bias=False, mlp_bias=False, tie_embeddings=False,
        )  # fmt: skip
        return cls(**{**base, **kw})


@dataclass
class LayerTrace:
    """What one block reports when traced; the model loop gathers these into a Trace."""

    attention: Tensor | None = None  # (B, H, T, S)
    router_logits: Tensor | None = None  # (B, T, E), MoE blocks only
    expert_indices: Tensor | None = None  # (B, T, k), MoE blocks only


class DecoderBlock(nn.Module):
    """Pre-norm block: x + Attn(Norm(x)), then x + MLP(Norm(x)); post-norm: Norm(x + Attn(x)), ...
    Parallel (GPT-NeoX): x + Attn(Norm₁(x)) + MLP(Norm₂(x)), the MLP not seeing the attention's output."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int):
        super().__init__()
        scale = (cfg.attn_scale or cfg.head_dim**-0.5) / (layer_idx + 1 if cfg.attn_scale_by_layer else 1)
        self.pattern = cfg.layer_types[layer_idx]  # which mask of the model's masks this layer uses
        self.post_norm = cfg.post_norm
        self.parallel = cfg.parallel_residual
        # OLMo 2's reordered norm: no norm before the sublayers (the identity), one after each
        self.attn_norm = nn.Identity() if cfg.reordered_norm else make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.attn = Attention(
            cfg.d_model, cfg.n_head, n_kv_head=cfg.n_kv_head, head_dim=cfg.head_dim,
            qkv_bias=cfg.qkv_bias, o_bias=cfg.o_bias, scale=scale, qk_norm=cfg.qk_norm, norm_eps=cfg.norm_eps,
            qk_norm_kind="gemma_rmsnorm" if cfg.norm == "gemma_rmsnorm" else "rmsnorm", softcap=cfg.attn_softcap,
            rope_interleaved=cfg.rope_interleaved,
        )  # fmt: skip
        # GPT-J, Phi: one norm feeds both branches of the parallel block (no mlp_norm, no parameters for one)
        self.mlp_norm = None if cfg.shared_norm else make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        if cfg.reordered_norm:
            self.mlp_norm = nn.Identity()
        self.mlp = self.make_ffn(cfg)
        self.post_attn_norm = self.post_mlp_norm = None  # sandwich norms (Gemma): only when on
        if cfg.sandwich_norm or cfg.reordered_norm:
            self.post_attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
            self.post_mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)

    def make_ffn(self, cfg: DecoderConfig) -> nn.Module:
        """The feed-forward half; the MoE family swaps in a sparse mixture of experts."""
        return make_mlp(cfg.mlp, cfg.d_model, cfg.d_ff, cfg.activation, cfg.mlp_bias)

    def attention(self, x, *, masks, bias, rope, cache, need_weights) -> tuple[Tensor, Tensor | None]:
        """The first half of the block: x + Attn(Norm(x)) (or post-norm) -> (x, probabilities or None)."""
        attn = partial(self.attn, mask=masks[self.pattern], bias=bias, rope=rope, cache=cache,
                       need_weights=need_weights)  # fmt: skip
        attn = _then_norm(attn, self.post_attn_norm)
        return residual(x, self.attn_norm, attn, post=self.post_norm)  # (B, T, D), (B, H, T, S) or None

    def forward(self, x, **kw) -> tuple[Tensor, LayerTrace]:
        if self.parallel:  # both branches from the block's input x
            attn_x, probs = self.attention(x, **kw)  # x + Attn(Norm1(x))
            mlp_norm = self.attn_norm if self.mlp_norm is None else self.mlp_norm  # shared: the same Norm(x)
            return attn_x + self.mlp(mlp_norm(x)), LayerTrace(attention=probs)
        x, probs = self.attention(x, **kw)
        mlp = _then_norm(lambda h: (self.mlp(h),), self.post_mlp_norm)
        (x,) = residual(x, self.mlp_norm, mlp, post=self.post_norm)
        return x, LayerTrace(attention=probs)


class ProjectedEmbedding(nn.Embedding):
    """OPT-350m's token embeddings: a (vocab, E) table, then ``project_in`` E -> D (no bias). A subclass, so the
    table keeps its name (``embed_tokens.weight``) and its tie to the head."""

    def __init__(self, vocab_size: int, embed_dim: int, d_model: int):
        super().__init__(vocab_size, embed_dim)
        self.project_in = nn.Linear(embed_dim, d_model, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        return self.project_in(super().forward(ids))  # (B, T, E) -> (B, T, D)


class ProjectedLinear(nn.Linear):
    """OPT-350m's LM head: ``project_out`` D -> E (no bias), then the (vocab, E) output matrix."""

    def __init__(self, d_model: int, embed_dim: int, vocab_size: int, bias: bool = False):
        super().__init__(embed_dim, vocab_size, bias=bias)
        self.project_out = nn.Linear(d_model, embed_dim, bias=False)
        self.in_features = d_model  # what the head as a whole reads (the logit lens checks it)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.project_out(x))  # (B, T, D) -> (B, T, E) -> (B, T, V)


def _then_norm(f, norm: nn.Module | None):
    """``f`` (returning (output, ...)) with its output through ``norm`` before the residual add: Gemma's
    sandwich, x + Norm'(f(Norm(x))). ``f`` itself when there is no such norm."""
    if norm is None:
        return f

    def normed(h: Tensor) -> tuple:
        y, *rest = f(h)
        return norm(y), *rest

    return normed


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.config = cfg
        if cfg.embed_dim in (None, cfg.d_model):
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        else:  # OPT-350m: narrower token embeddings, projected in
            self.embed_tokens = ProjectedEmbedding(cfg.vocab_size, cfg.embed_dim, cfg.d_model)
        if cfg.positions == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len + cfg.position_offset, cfg.d_model)  # OPT: + 2 rows
        elif cfg.positions == "sinusoidal":
            table = sinusoidal_positions(cfg.max_seq_len, cfg.d_model)
            self.register_buffer("sinusoid", table, persistent=False)  # (P, D)
        elif cfg.positions == "rotary":
            self.rotary = RotaryEmbedding(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling,
                                          interleaved=cfg.rope_interleaved)  # fmt: skip
        elif cfg.positions == "relative":
            # One table for the whole stack, as T5 does: its bias is computed once per forward
            # and added to every layer's scores (not a table per layer).
            self.relative_attention_bias = nn.Embedding(cfg.relative_buckets, cfg.n_head)  # (buckets, H)
        # Gemma 3: local (sliding) layers rotate with a base of their own, unscaled; None = every layer the same
        self.rotary_local = None
        if cfg.positions == "rotary" and cfg.rope_local_theta is not None:
            self.rotary_local = RotaryEmbedding(cfg.rotary_dim, cfg.rope_local_theta, interleaved=cfg.rope_interleaved)
        self.layers = nn.ModuleList(self.make_block(cfg, i) for i in range(cfg.n_layer))
        # Post-norm: the last block ends in a norm already; GPT-1 has no final norm before its head.
        final = cfg.final_norm and not cfg.post_norm
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if final else nn.Identity()
        if cfg.embed_dim not in (None, cfg.d_model):  # OPT-350m: projected out to the embeddings' width first
            self.lm_head = ProjectedLinear(cfg.d_model, cfg.embed_dim, cfg.vocab_size, bias=cfg.lm_head_bias)
        elif cfg.final_softcap is None:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        else:  # Gemma: logits -> cap·tanh(logits/cap), part of the head so the logit lens reads them capped too
            self.lm_head = SoftCappedLinear(cfg.d_model, cfg.vocab_size, cfg.final_softcap, bias=cfg.lm_head_bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(init_normal)

    def make_block(self, cfg: DecoderConfig, layer_idx: int) -> nn.Module:
        """One block; a family that changes the feed-forward (MoE) overrides this."""
        return DecoderBlock(cfg, layer_idx)

    # ------------------------------------------------------------------ forward

    def forward(
        self, ids: Tensor, *, trace: bool = False, cache: list[KVCache] | None = None, last_only: bool = False
    ) -> ModelOutput:
        """ids (B, T). ``cache`` (from a previous call's output) continues a sequence. ``last_only``: the logits
        of the last position only, (B, 1, V) (generation reads no other: a prompt's head is one row, not T)."""
        cfg = self.config
        offset = cache[0].length if cache else 0
        T = ids.shape[1]
        if offset + T > cfg.max_seq_len and cfg.positions in TABLE_POSITIONS:
            raise ValueError(f"{offset + T} tokens exceed this model's context of {cfg.max_seq_len}")
        pos = torch.arange(offset, offset + T, device=ids.device)  # (T,) absolute positions
        k_pos = torch.arange(offset + T, device=ids.device)  # (S,)

        x = self.embed_tokens(ids)  # (B, T, D)
        if cfg.embed_scale:  # Gemma: × √d_model, the factor rounded to the weights' dtype as transformers does
            x = x * torch.tensor(cfg.d_model**0.5).to(x.dtype)
        x, rope, bias = self._positions(x, pos, k_pos)
        masks = self._masks(pos, k_pos)
        local_rope = self.rotary_local(pos) if rope is not None and self.rotary_local is not None else None

        hidden, layer_traces = [x], []
        for i, layer in enumerate(self.layers):
            layer_rope = local_rope if local_rope is not None and layer.pattern != "full" else rope
            x, lt = layer(x, masks=masks, bias=bias, rope=layer_rope, cache=cache[i] if cache else None,
                          need_weights=trace)  # fmt: skip
            hidden.append(x)
            layer_traces.append(lt)
        h = self.norm(x)
        logits = self.lm_head(h[:, -1:] if last_only else h)  # (B, T, V), or (B, 1, V)
        tr = _gather(hidden, layer_traces) if trace else None
        return ModelOutput(logits=logits, trace=tr, cache=cache, last_hidden_state=h)

    def _positions(self, x: Tensor, pos: Tensor, k_pos: Tensor):
        """Where position enters: added to x (learned, sinusoidal), rotating q and k (rotary), or a
        bias on the scores (alibi, relative), for queries at ``pos`` against keys at ``k_pos``.
        Returns (x (B, T, D), rope (cos, sin) or None, bias (1, H, T, S) or None)."""
        kind = self.config.positions
        if POSITIONS_OFF.get():  # analysis: the same model without its position term
            return (x * self.config.d_model**0.5 if kind == "sinusoidal" else x), None, None
        if kind == "learned":
            return x + self.embed_positions(pos + self.config.position_offset), None, None
        if kind == "sinusoidal":  # the token embeddings × √d_model first, as Vaswani et al. (unit-size waves)
            return x * self.config.d_model**0.5 + self.sinusoid[pos].to(x.dtype), None, None
        if kind == "rotary":
            return x, self.rotary(pos), None  # (cos, sin), each (T, rotary_dim)
        if kind == "alibi":
            return x, None, alibi_bias(alibi_slopes(self.config.n_head, pos.device), pos, k_pos)
        if kind == "relative":
            bias = relative_position_bias(self.relative_attention_bias, pos, k_pos, bidirectional=False,
                                          max_distance=self.config.relative_max_distance)  # fmt: skip
            return x, None, bias
        return x, None, None  # "none" (NoPE): the causal mask alone tells positions apart

    def _masks(self, pos: Tensor, k_pos: Tensor) -> dict[str, Tensor | None]:
        """The bool masks the layers use, by pattern, for the patterns some layer has.

        None where every key up to the query may be seen: one new token (each generation step)
        under "full", or under a local pattern while the whole sequence fits in the window (the
        query at S - 1 is then within W of every key, in one block, for all three patterns)."""
        cfg = self.config
        one_token, S = pos.shape[0] == 1, k_pos.shape[0]
        masks = {}
        for pattern in dict.fromkeys(cfg.layer_types):  # each pattern once, in order
            sees_all = one_token and (pattern == "full" or S <= cfg.sliding_window)
            masks[pattern] = None if sees_all else attention_mask(
                pos, k_pos, causal=True, window=cfg.sliding_window, pattern=pattern)  # fmt: skip
        return masks

    # ------------------------------------------------------------------ generation

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def _step(self, ids: Tensor, cache: list[KVCache]):
        out = self(ids, cache=cache, last_only=True)
        return out.logits, out.cache

    def _stepper(self):
        """``_step``; with longrope that re-rotates every key when the sequence first grows past its
        original length (``RotaryEmbedding.restarts_at``), one that then reruns the whole sequence with a
        fresh cache, as transformers' Phi-3 does."""
        at = getattr(getattr(self, "rotary", None), "restarts_at", None)
        if at is None:
            return self._step
        seen: list[Tensor] = []

        def step(ids: Tensor, cache: list[KVCache]):
            seen.append(ids)
            done = cache[0].length
            if 0 < done <= at < done + ids.shape[1]:
                cache, ids = self.new_cache(), torch.cat(seen, dim=1)
            return self._step(ids, cache)

        return step

    def generate(self, ids: Tensor, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 eos_token_id: int | None = None) -> Tensor:  # fmt: skip
        """Continue ``ids`` (B, T) -> (B, T + new), with a KV cache. Temperature 0 is greedy."""
        self._check_room(ids, max_new_tokens)
        return generation.generate(
            self._stepper(), ids, self.new_cache(), max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id,
        )  # fmt: skip

    def generate_stream(self, ids: Tensor, max_new_tokens: int = 32, temperature: float = 0.0,
                        top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                        eos_token_id: int | None = None):  # fmt: skip
        """Like ``generate`` for one sequence, yielding (token id, probability) as they come."""
        self._check_room(ids, max_new_tokens)
        return generation.stream(
            self._stepper(), ids, self.new_cache(), max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id,
        )  # fmt: skip

    def _check_room(self, ids: Tensor, max_new_tokens: int) -> None:
        if self.config.positions in TABLE_POSITIONS and ids.shape[1] + max_new_tokens > self.config.max_seq_len:
            raise ValueError(
                f"{ids.shape[1]} prompt tokens + {max_new_tokens} new ones exceed this model's "
                f"context of {self.config.max_seq_len}"
            )


def _gather(hidden: list[Tensor], layers: list[LayerTrace]) -> Trace:
    """Per-layer reports -> one Trace; router fields only from the layers that route."""
    routed = [lt for lt in layers if lt.router_logits is not None]
    return Trace(
        hidden_states=hidden,
        attentions=[lt.attention for lt in layers],
        router_logits=[lt.router_logits for lt in routed] if routed else None,
        expert_indices=[lt.expert_indices for lt in routed] if routed else None,
    )


__all__ = ["POSITIONS", "Decoder", "DecoderBlock", "DecoderConfig", "LayerTrace"]
