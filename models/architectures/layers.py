"""Building blocks every family shares: the Trace, norms, positions, masks, attention, MLPs.

Only what is truly common lives here. Each family file (``decoder.py``, ``encoder.py``, ...)
composes these pieces into its own blocks and model, readable top to bottom.

Shapes use: B batch, T query length, S key length, D model width, H query heads,
Hkv key/value heads, Dh head width.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConfigDict:
    """``from_dict`` / ``to_dict`` for the config dataclasses: unknown keys are rejected (so a
    typo or a key of another family fails loudly); ``family`` is derived, never read."""

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls) if f.init}
        unknown = set(d) - known - {"family"}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def require(self, ok: bool, message: str) -> None:
        """A config check that stays under ``python -O``: ValueError naming the config and the problem."""
        if not ok:
            raise ValueError(f"{type(self).__name__}: {message}")

    def require_sizes(self, *names: str) -> None:
        """Each named field must be a whole number of at least 1 (not a bool, a fraction or a string)."""
        for name in names:
            value = getattr(self, name)
            self.require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                         f"{name} must be a whole number of at least 1, got {value!r}")  # fmt: skip


# --------------------------------------------------------------------------- trace


@dataclass
class Trace:
    """What a traced forward pass exposes. Fields that do not apply to a family stay None."""

    hidden_states: list[Tensor] | None = None  # [embeddings, layer 1 out, ...], each (B, T, D)
    attentions: list[Tensor] | None = None  # per layer (B, H, T, T) probabilities
    decoder_hidden_states: list[Tensor] | None = None  # enc-dec only
    decoder_attentions: list[Tensor] | None = None  # enc-dec only
    cross_attentions: list[Tensor] | None = None  # enc-dec: per decoder layer (B, H, Tdec, Tenc)
    router_logits: list[Tensor] | None = None  # moe: per MoE layer (B, T, E)
    expert_indices: list[Tensor] | None = None  # moe: per MoE layer (B, T, k)
    ssm_attention: list[Tensor] | None = None  # ssm: per layer (B, T, T)
    ssm_delta: list[Tensor] | None = None  # ssm: per layer (B, T, D_inner)

    def detach(self, sequence: int | None = None) -> "Trace":
        """A copy safe to cache per session: detached, float32, on the CPU.

        With ``sequence``, each tensor is that row of the batch (the leading B dimension dropped:
        attentions (H, T, T), hidden states (T, D), ...); fields that are None stay None.
        """
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                value = [(t if sequence is None else t[sequence]).detach().float().cpu() for t in value]
            out[f.name] = value
        return Trace(**out)


@dataclass
class ModelOutput:
    logits: Tensor  # (B, T, vocab)
    trace: Trace | None = None
    cache: object | None = None  # what generate() feeds back: KV caches or recurrent state
    last_hidden_state: Tensor | None = None  # (B, T, D) after the final norm (encoders: the embeddings)


# --------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # the same arithmetic, one kernel
        # Computed in float32 as the reference implementations do, then cast back.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class GemmaRMSNorm(nn.Module):
    """Gemma's RMSNorm: the weight is stored as an offset from 1, x̂·(1 + w), all in float32, then cast back
    (Llama casts x̂ back first and multiplies after). Initialised at w = 0, the identity scale."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).type_as(x)


NORMS = ("layernorm", "rmsnorm", "gemma_rmsnorm")


NORM_POSITIONS = ("pre", "post")


def residual(x: Tensor, norm: nn.Module, f, *, post: bool) -> tuple:
    """One residual sub-layer around ``f``, which returns a tuple (output, anything else ...).

    pre-norm  x + f(norm(x))   GPT-2, Llama: the residual stream itself is never normalised
    post-norm norm(x + f(x))   the original Transformer, BERT, GPT-1
    Returns (the new x, anything else f returned ...).
    """
    if post:
        y, *rest = f(x)
        return norm(x + y), *rest
    y, *rest = f(norm(x))
    return x + y, *rest


def make_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    """``bias`` False: a LayerNorm without its shift (ModernBERT's norm_bias); RMSNorms have none anyway."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "gemma_rmsnorm":
        return GemmaRMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


# --------------------------------------------------------------------------- activations and MLPs


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's GELU: the tanh approximation (Hendrycks & Gimpel 2016)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "gelu": F.gelu,  # exact, erf-based (BERT)
    "gelu_new": gelu_tanh,  # GPT-2
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,  # Llama's SwiGLU gate
    "swish": F.silu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """Position-wise feed-forward: down(act(up(x))). GPT-2 and BERT use GELU here."""

    def __init__(self, d_model: int, d_ff: int, act: str, bias: bool = True):
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class GatedMLP(nn.Module):
    """Gated feed-forward (Shazeer 2020): down(act(gate(x)) * up(x)). With SiLU this is SwiGLU."""

    def __init__(self, d_model: int, d_ff: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


MLPS = ("mlp", "gated")


def make_mlp(kind: str, d_model: int, d_ff: int, act: str, bias: bool) -> nn.Module:
    if kind == "mlp":
        return MLP(d_model, d_ff, act, bias)
    if kind == "gated":
        return GatedMLP(d_model, d_ff, act, bias)
    raise ValueError(f"unknown mlp {kind!r}; expected one of {', '.join(MLPS)}")


# --------------------------------------------------------------------------- positions


def sinusoidal_positions(n_positions: int, dim: int, base: float = 10000.0) -> Tensor:
    """The fixed sin/cos table of "Attention Is All You Need": (n_positions, dim)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), in the half-split layout Llama checkpoints use.

    Produces (cos, sin) of shape (T, rot_dim) for given positions; ``apply_rotary`` rotates q and k.
    ``scaling`` follows the checkpoints' ``rope_parameters`` (transformers' maths, ``modeling_rope_utils``):

    * ``linear``: every frequency / factor;  ``llama3``: Llama 3.1's per-wavelength stretch;
    * ``yarn``: a ramp between stretched (long wavelengths) and untouched (short ones) frequencies, and
      cos, sin × ``attention_factor`` (so q·k × its square): Qwen2.5/Qwen3 long context, DeepSeek-V3;
    * ``longrope`` (Phi-3 128k, Phi-3.5): per-pair ``short_factor`` while the sequence fits in
      ``original_max_position_embeddings``, ``long_factor`` beyond, and cos, sin × ``attention_factor``;
    * ``dynamic`` (NTK-aware): the base θ grows with the sequence once it exceeds ``max_position_embeddings``.

    The last two depend on the length: a call's positions choose, by the last one (its sequence so far is
    ``positions.max() + 1`` long), as transformers' ``dynamic_rope_update`` does on a freshly loaded model.
    Keys already cached keep the rotation they got, as in transformers' generate (its Phi-3 alone reruns the
    sequence when longrope switches: ``restarts_at``). Unlike transformers' module, nothing is remembered
    between calls: after a long call, transformers' dynamic keeps the frequencies of the longest sequence it
    has seen for later ones still past the threshold; here each call is computed as on a fresh model.
    ``inv_freq`` holds the frequencies short sequences use; ``frequencies(n)`` those of an n-token sequence
    (the positions view draws these). The converters add ``max_position_embeddings`` to ``scaling`` for the
    types that read it.
    """

    def __init__(self, rot_dim: int, theta: float = 10000.0, scaling: dict | None = None, interleaved: bool = False):
        super().__init__()
        self.interleaved = interleaved  # GPT-J: (cos, sin) laid out per channel pair, f0 f0 f1 f1 ...
        self.rot_dim, self.theta = rot_dim, float(theta)
        self.scaling = dict(scaling or {})
        self.kind = self.scaling.get("rope_type", "default")
        self.attention_factor = 1.0  # multiplies cos and sin (yarn, longrope)
        # longrope / dynamic: sequences longer than this rotate with other frequencies; None = fixed frequencies
        self.switch_at: int | None = None
        inv_freq = 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim))
        p = self.scaling
        if self.kind == "linear":
            inv_freq = inv_freq / float(p["factor"])
        elif self.kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, p)
        elif self.kind == "yarn":
            inv_freq, self.attention_factor = _yarn_inv_freq(rot_dim, self.theta, p)
        elif self.kind == "longrope":
            for key in ("short_factor", "long_factor"):
                if len(p[key]) != rot_dim // 2:
                    raise ValueError(f"longrope's {key} has {len(p[key])} entries; the {rot_dim} rotated channels "
                                     f"make {rot_dim // 2} pairs")  # fmt: skip
            self.switch_at = int(p["original_max_position_embeddings"])
            inv_freq = _longrope_inv_freq(rot_dim, self.theta, p["short_factor"])
            self.register_buffer("long_inv_freq", _longrope_inv_freq(rot_dim, self.theta, p["long_factor"]),
                                 persistent=False)  # fmt: skip
            self.attention_factor = _longrope_attention_factor(p)
        elif self.kind == "dynamic":
            self.switch_at = int(p["max_position_embeddings"])
            inv_freq = _dynamic_inv_freq(rot_dim, self.theta, p, self.switch_at)
        elif self.kind != "default":
            raise ValueError(f"unsupported RoPE scaling {self.kind!r}; supported: {', '.join(ROPE_SCALINGS)}")
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (rot_dim/2,)

    @property
    def restarts_at(self) -> int | None:
        """Generation should rerun the whole sequence, cache dropped, when it first grows past this length:
        longrope, whose switch re-rotates every earlier key, where the checkpoint's family does so in
        transformers (Phi-3: ``scaling["rerun_on_switch"]``, set by its converter); None = never."""
        return self.switch_at if self.kind == "longrope" and self.scaling.get("rerun_on_switch") else None

    def frequencies(self, seq_len: Tensor | int) -> Tensor:
        """The inverse frequencies (rot_dim/2,) a sequence of ``seq_len`` tokens rotates with."""
        if self.switch_at is None:
            return self.inv_freq
        longer = torch.as_tensor(seq_len, device=self.inv_freq.device) > self.switch_at  # no host sync on a GPU
        if self.kind == "longrope":
            return torch.where(longer, self.long_inv_freq, self.inv_freq)
        stretched = _dynamic_inv_freq(self.rot_dim, self.theta, self.scaling, seq_len, device=self.inv_freq.device)
        return torch.where(longer, stretched, self.inv_freq)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        inv_freq = self.inv_freq if self.switch_at is None else self.frequencies(positions.max() + 1)
        freqs = positions[:, None].float() * inv_freq[None, :]  # (T, rot_dim/2)
        # (T, rot_dim): half-split f0 f1 ... f0 f1 ..., or interleaved (GPT-J) f0 f0 f1 f1 ...
        emb = freqs.repeat_interleave(2, dim=-1) if self.interleaved else torch.cat((freqs, freqs), dim=-1)
        if self.attention_factor == 1.0:
            return emb.cos(), emb.sin()
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor


ROPE_SCALINGS = ("default", "linear", "llama3", "yarn", "longrope", "dynamic")


def _llama3_inv_freq(inv_freq: Tensor, p: dict) -> Tensor:
    """Llama 3.1's frequency-dependent stretching of the rotary wavelengths."""
    factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_len = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1·mscale·ln(factor) + 1 (1 when not stretched)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_inv_freq(dim: int, theta: float, p: dict) -> tuple[Tensor, float]:
    """YaRN (Peng et al. 2023): (inverse frequencies, the factor on cos and sin).

    Pairs that turn more than ``beta_fast`` times over the original context keep their frequency, those
    that turn fewer than ``beta_slow`` times are divided by ``factor``; a linear ramp over the pair index
    blends the two in between."""
    old_len = p["original_max_position_embeddings"]
    factor = p.get("factor") or p["max_position_embeddings"] / old_len
    attention_factor = p.get("attention_factor")
    if attention_factor is None:  # DeepSeek-V3: mscale / mscale_all_dim (1 when the two are equal)
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = yarn_mscale(factor, p["mscale"]) / yarn_mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = yarn_mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def pair_turning(turns: float) -> float:  # the (fractional) pair index that turns ``turns`` times in old_len
        return dim * math.log(old_len / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_turning(beta_fast), pair_turning(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # 0 fast .. 1 slow
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)  # (dim/2,) wavelengths / 2π
    keep = 1 - ramp  # the share of the original (extrapolated) frequency
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep
    return inv_freq, float(attention_factor)


def _longrope_inv_freq(dim: int, theta: float, factors: list[float]) -> Tensor:
    """LongRoPE: each pair's wavelength stretched by its own factor (``short_factor`` or ``long_factor``)."""
    ext = torch.tensor(factors, dtype=torch.float32)  # (dim/2,)
    return 1.0 / (ext * theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _longrope_attention_factor(p: dict) -> float:
    """√(1 + ln(factor) / ln(original context)) unless the checkpoint gives it; factor defaults to the ratio
    of the two context lengths (Phi-3)."""
    if p.get("attention_factor") is not None:
        return float(p["attention_factor"])
    old_len = p["original_max_position_embeddings"]
    factor = p.get("factor") or p["max_position_embeddings"] / old_len
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(old_len))


def _dynamic_inv_freq(dim: int, theta: float, p: dict, seq_len: Tensor | int, device=None) -> Tensor:
    """Dynamic NTK: θ' = θ·(factor·L/L_max − (factor − 1))^(dim/(dim−2)) for a sequence of L ≥ L_max tokens.

    At L_max (a Python int) θ' is θ; for a longer sequence L arrives as a tensor, and the arithmetic runs
    in float32 as transformers' does."""
    factor, max_len = p["factor"], p["max_position_embeddings"]
    if isinstance(seq_len, Tensor):
        seq_len = torch.maximum(seq_len, torch.tensor(max_len, dtype=seq_len.dtype, device=seq_len.device))
    else:
        seq_len = max(seq_len, max_len)
    base = theta * ((factor * seq_len / max_len) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_every_two(x: Tensor) -> Tensor:
    """GPT-J's pairs: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate the first rot_dim channels of x (B, H, T, Dh); the rest pass through (partial RoPE).
    ``interleaved`` (GPT-J): the rotated pairs are channels (0, 1), (2, 3), ...; otherwise (i, i + rot_dim/2)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    turned = _rotate_every_two(x_rot) if interleaved else _rotate_half(x_rot)
    x_rot = x_rot * cos.to(x.dtype) + turned * sin.to(x.dtype)
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.shape[-1] else x_rot


def alibi_slopes(n_head: int, device: torch.device | str | None = None) -> Tensor:
    """ALiBi's per-head slopes m_h (Press et al. 2022): (H,) float32.

    For H a power of two, the geometric sequence 2^(-8/H), 2^(-16/H), ..., 2^(-8). Otherwise
    the sequence of the closest smaller power of two P, then every other slope of the sequence
    for 2P (the odd powers), until there are H: the paper's code, and transformers' Bloom.
    """

    def geometric(n: int, powers: Tensor) -> Tensor:
        return (2.0 ** (-8.0 / n)) ** powers  # base 2^(-8/n), raised to each power

    p = 2 ** math.floor(math.log2(n_head))
    slopes = geometric(p, torch.arange(1, p + 1, dtype=torch.float32, device=device))
    if p != n_head:
        extra = torch.arange(1, 2 * (n_head - p), 2, dtype=torch.float32, device=device)  # 1, 3, 5, ...
        slopes = torch.cat((slopes, geometric(2 * p, extra)))
    return slopes  # (H,)


def alibi_bias(slopes: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """The ALiBi score bias −m_h · |q − k| -> (1, H, T, S), float32. No position embedding is added.

    Causal models only see k <= q, where this is −m_h · (q − k): a penalty that grows linearly
    with distance. Encoders get the symmetric distance. The query's absolute position against
    the keys' positions, so a KV-cache step gets the same bias as a full forward.
    """
    distance = (q_pos[:, None] - k_pos[None, :]).abs().float()  # (T, S)
    return -(slopes[:, None, None] * distance)[None]  # (1, H, T, S)


def relative_position_bucket(
    relative_position: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """Map distances key - query (an int tensor) to T5's buckets in [0, num_buckets).

    Half the buckets (per direction) hold the exact distances 0 .. max_exact - 1; the other
    half cover max_exact .. max_distance on a log scale; anything farther shares the last one.
    Bidirectional (encoder): the upper half of the buckets is for keys after the query.
    Causal (decoder): keys after the query all fall in bucket 0 (the causal mask hides them).
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -relative_position.clamp(max=0)  # how far back the key is; 0 for later keys
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()  # -inf at 0 is never selected
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def relative_position_bias(
    table: nn.Embedding, q_pos: Tensor, k_pos: Tensor, *, bidirectional: bool, max_distance: int
) -> Tensor:
    """T5's additive score bias: a learned scalar per (bucket, head) of ``table`` -> (1, H, T, S)."""
    rel = k_pos[None, :] - q_pos[:, None]  # (T, S): negative = key before the query
    buckets = relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=table.num_embeddings, max_distance=max_distance
    )  # (T, S)
    return table(buckets).permute(2, 0, 1)[None]  # (T, S, H) -> (1, H, T, S)


# --------------------------------------------------------------------------- masks


PATTERNS = ("full", "sliding", "strided", "block")  # which keys a query may see, per layer


def attention_mask(
    q_pos: Tensor, k_pos: Tensor, *, causal: bool, window: int | None = None, pattern: str | None = None
) -> Tensor | None:
    """Which keys each query may see, as a bool (T, S) matrix (True = attend); None = all.

    causal: key position <= query position. ``window`` W is how many tokens a query may see
    (itself included) under a local pattern; d = q - k (bidirectional: |q - k|):

        full     every key (causal: every key up to the query)
        sliding  d < W                       (Mistral's sliding_window, Longformer's local band)
        strided  d < W  or  d % W == 0       (Child et al. 2019: the union of the Sparse
                                              Transformer's two strided heads, local + every W-th)
        block    q // W == k // W            (block-local: the query's own block of W positions)

    ``pattern`` None means "sliding" when a window is given, else "full".
    """
    pattern = pattern or ("full" if window is None else "sliding")
    if pattern not in PATTERNS:
        raise ValueError(f"unknown attention pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    if pattern != "full" and not (isinstance(window, int) and window >= 1):
        raise ValueError(f"the {pattern!r} pattern needs a window of at least 1, got {window!r}")
    if not causal and pattern == "full":
        return None
    q, k = q_pos[:, None], k_pos[None, :]  # comparisons straight to bool: no (T, S) int64 difference
    allowed = k <= q if causal else torch.ones(q.shape[0], k.shape[1], dtype=torch.bool, device=q_pos.device)
    if pattern == "full":
        return allowed
    near = (k > q - window) & (k < q + window)  # |q − k| < W
    if pattern == "sliding":
        return allowed & near
    if pattern == "strided":
        return allowed & (near | (q % window == k % window))  # |q − k| % W == 0  ⇔  q ≡ k (mod W)
    return allowed & (q // window == k // window)  # block


def padding_mask(key_mask: Tensor) -> Tensor:
    """(B, S) of 1 for real tokens, 0 for padding -> bool (B, 1, 1, S) for broadcasting over heads and queries."""
    return key_mask.bool()[:, None, None, :]


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


# --------------------------------------------------------------------------- attention


def soft_cap(x: Tensor, cap: float) -> Tensor:
    """Gemma 2's soft-capping: cap·tanh(x / cap), smooth, about x for |x| ≪ cap, never beyond ±cap."""
    return torch.tanh(x / cap) * cap


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    need_weights: bool = False,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention for q (B, H, T, Dh), k/v (B, Hkv, S, Dh).

    mask: bool, True = attend, broadcastable to (B, H, T, S). bias: added to the scores (T5).
    need_weights: the eager path, softmax computed by hand in float32, probabilities returned.
    Otherwise the fused ``scaled_dot_product_attention`` path, which returns no probabilities.
    softcap: the scaled scores become cap·tanh(scores/cap) before the bias (Gemma 2); the fused
    kernel cannot do that, so a capped attention always takes the eager path.
    """
    n_rep = q.shape[1] // k.shape[1]  # grouped-query attention: each kv head serves n_rep query heads
    if need_weights or softcap is not None:
        if n_rep > 1:
            k = k.repeat_interleave(n_rep, dim=1)  # (B, H, S, Dh)
            v = v.repeat_interleave(n_rep, dim=1)
        scores = torch.matmul(q, k.transpose(-2, -1)).float() * scale  # (B, H, T, S)
        if softcap is not None:
            scores = soft_cap(scores, softcap)
        if bias is not None:
            scores = scores + bias.float()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        probs = torch.nan_to_num(probs, nan=0.0)  # a query that may see no key attends to nothing
        probs = probs.to(q.dtype)
        return torch.matmul(probs, v), (probs if need_weights else None)  # (B, H, T, Dh), (B, H, T, S)

    attn_mask = mask
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if mask is not None:
            attn_mask = attn_mask.masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=n_rep > 1)
    return out, None


class KVCache:
    """Keys and values of the positions seen so far, for one attention layer."""

    def __init__(self) -> None:
        self.k: Tensor | None = None  # (B, Hkv, S, Dh)
        self.v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's keys and values; return all of them."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat((self.k, k), dim=2)
            self.v = torch.cat((self.v, v), dim=2)
        return self.k, self.v


@dataclass
class AttentionTap:
    """One attention call's intermediates, as ``Attention.forward`` computed them (batch first)."""

    x: Tensor  # (B, T, D) the module's input (after any norm)
    q: Tensor  # (B, H, T, Dh) after any rotation
    k: Tensor  # (B, Hkv, S, Dh) after any rotation
    v: Tensor  # (B, Hkv, S, Dh)
    q_before: Tensor | None  # (B, H, T, Dh) before the rotation (rotary positions only)
    k_before: Tensor | None  # (B, Hkv, T, Dh)
    mask: Tensor | None  # bool, True = may attend, broadcastable to (B, H, T, S)
    bias: Tensor | None  # added to the scaled scores, broadcastable to (B, H, T, S)
    heads: Tensor  # (B, T, H*Dh) the heads' outputs, concatenated, before the output projection
    output: Tensor  # (B, T, D) after the output projection
    softcap: float | None = None  # scaled scores -> cap·tanh(scores/cap) before the bias (Gemma 2); None = off


# Analysis only: True runs the model with its position term switched off (no position embedding
# added, no rotation, no position bias), per thread; ``analysis.positions`` compares the two.
POSITIONS_OFF: ContextVar[bool] = ContextVar("archplay_positions_off", default=False)

# Which attention modules report their intermediates, and to whom: {module: callback(AttentionTap)}.
# A context variable, so one request's analysis never touches another thread's forward pass.
ATTENTION_TAPS: ContextVar[dict | None] = ContextVar("archplay_attention_taps", default=None)


QK_NORMS = ("head", "all", "each_head")  # Attention's qk_norm: per head (Qwen3), over the whole projection (OLMoE),
# or a LayerNorm per head with each head's own scale (StableLM 2)


class HeadwiseLayerNorm(nn.Module):
    """StableLM 2's q/k norm: a bias-free LayerNorm over each head's Dh channels, every head its own scale
    (``weight`` (n, Dh)), for x (B, n, T, Dh)."""

    def __init__(self, n_head: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_head, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (x.shape[-1],), eps=self.eps) * self.weight[:, None, :]  # (B, n, T, Dh)


class Attention(nn.Module):
    """Multi-head attention with grouped-query support.

    Self-attention by default. Cross-attention reads its keys and values from the encoder: pass
    them as ``memory``, projected once per input with ``keys_values(encoder_output)``.
    n_kv_head < n_head is grouped-query attention (n_kv_head = 1 is multi-query).
    ``qk_norm`` normalises queries and keys (RMSNorm) before the rotation, so q·k stays bounded:
    "head" (Qwen3) over each head's Dh channels, one scale per channel shared by the heads; "all"
    (OLMoE, OLMo 2) over the whole projection, H·Dh channels (Hkv·Dh for k), each with its own scale; "each_head"
    (StableLM 2) a bias-free LayerNorm over each head's Dh channels, every head its own scale (``HeadwiseLayerNorm``);
    ``qk_norm_kind`` "gemma_rmsnorm" makes them Gemma 3's x̂·(1 + w). ``softcap``: Gemma 2's scores become
    cap·tanh(scores·scale/cap) before the softmax (always the eager path: no fused kernel caps).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        *,
        n_kv_head: int | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        o_bias: bool = False,
        scale: float | None = None,
        kv_dim: int | None = None,
        qk_norm: str | None = None,
        norm_eps: float = 1e-6,
        qk_norm_kind: str = "rmsnorm",
        softcap: float | None = None,
        rope_interleaved: bool = False,
    ):
        super().__init__()
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        self.head_dim = head_dim or d_model // n_head
        if n_head % self.n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        self.scale = self.head_dim**-0.5 if scale is None else scale
        kv_dim = kv_dim or d_model
        self.q_proj = nn.Linear(d_model, n_head * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(kv_dim, self.n_kv_head * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(kv_dim, self.n_kv_head * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_head * self.head_dim, d_model, bias=o_bias)
        if qk_norm not in (None, *QK_NORMS):
            raise ValueError(f"unknown qk_norm {qk_norm!r}; expected None or one of {', '.join(QK_NORMS)}")
        self.qk_norm = qk_norm
        self.q_norm = self.k_norm = None  # registered only when on: no parameters and no work otherwise
        if qk_norm == "head":  # qk_norm_kind: "rmsnorm", or "gemma_rmsnorm" (Gemma 3's x·(1 + w))
            self.q_norm = make_norm(qk_norm_kind, self.head_dim, norm_eps)
            self.k_norm = make_norm(qk_norm_kind, self.head_dim, norm_eps)
        elif qk_norm == "each_head":
            self.q_norm = HeadwiseLayerNorm(n_head, self.head_dim, norm_eps)
            self.k_norm = HeadwiseLayerNorm(self.n_kv_head, self.head_dim, norm_eps)
        elif qk_norm == "all":
            self.q_norm = make_norm(qk_norm_kind, n_head * self.head_dim, norm_eps)
            self.k_norm = make_norm(qk_norm_kind, self.n_kv_head * self.head_dim, norm_eps)
        self.softcap = softcap  # Gemma 2: attention logit soft-capping; None = off
        self.rope_interleaved = rope_interleaved  # GPT-J: rotary on channel pairs (0, 1), (2, 3), ...

    def _heads(self, x: Tensor, n: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, Dh)

    def keys_values(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of ``src`` (B, S, D): each (B, Hkv, S, Dh)."""
        k = self._project(self.k_proj, self.k_norm, src, self.n_kv_head)  # (B, Hkv, S, Dh)
        return k, self._heads(self.v_proj(src), self.n_kv_head)

    def _project(self, proj: nn.Linear, norm: nn.Module | None, x: Tensor, n: int) -> Tensor:
        """The n heads (B, n, T, Dh) of proj(x), through the q/k norm when there is one."""
        y = proj(x)  # (B, T, n·Dh)
        if norm is not None and self.qk_norm == "all":
            y = norm(y)  # over all n·Dh channels
        y = self._heads(y, n)
        if norm is not None and self.qk_norm in ("head", "each_head"):
            y = norm(y)  # over each head's Dh channels
        return y

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        memory: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``x`` (B, T, D) -> (output (B, T, D), probabilities (B, H, T, S) or None).

        ``memory``: cross-attention's (keys, values) from ``keys_values``; otherwise keys and values
        come from ``x`` (after ``rope``), appended to ``cache`` when one is given.
        """
        q = self._project(self.q_proj, self.q_norm, x, self.n_head)  # (B, H, T, Dh)
        q_before = k_before = None
        if memory is not None:
            k, v = memory  # (B, Hkv, S, Dh) each, the encoder's
        else:
            k, v = self.keys_values(x)  # (B, Hkv, T, Dh) each
            if rope is not None:  # (cos, sin) for the new positions
                q_before, k_before = q, k
                q = apply_rotary(q, *rope, interleaved=self.rope_interleaved)
                k = apply_rotary(k, *rope, interleaved=self.rope_interleaved)
            if cache is not None:
                k, v = cache.update(k, v)  # (B, Hkv, S_total, Dh)
        out, probs = attend(q, k, v, scale=self.scale, mask=mask, bias=bias, need_weights=need_weights,
                            softcap=self.softcap)  # fmt: skip
        B, _, T, _ = out.shape
        out = out.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H*Dh)
        y = self.o_proj(out)  # (B, T, D)
        taps = ATTENTION_TAPS.get()
        if taps is not None and self in taps:  # analysis.steps asked for this module's intermediates
            taps[self](AttentionTap(x=x, q=q, k=k, v=v, q_before=q_before, k_before=k_before, mask=mask,
                                    bias=bias, heads=out, output=y, softcap=self.softcap))  # fmt: skip
        return y, probs



class SoftCappedLinear(nn.Linear):
    """A linear map whose outputs are soft-capped, cap·tanh(y / cap): Gemma's LM head (final logits).
    A subclass, so the weight keeps its name (``lm_head.weight``) and its tie to the embedding."""

    def __init__(self, in_features: int, out_features: int, cap: float, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.cap = cap

    def forward(self, x: Tensor) -> Tensor:
        return soft_cap(super().forward(x), self.cap)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cap={self.cap}"


# --------------------------------------------------------------------------- utilities


def init_normal(m: nn.Module, std: float = 0.02) -> None:
    """GPT-2 style initialisation of one module (use with ``model.apply``): N(0, std) weights for
    linear maps and embeddings, zero biases; norms keep their unit weights."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=std)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


def check_choices(cfg: ConfigDict) -> None:
    """The Lab's choices a decoder and an encoder share: norm, placement, MLP, activation, patterns."""
    cfg.require(cfg.norm in NORMS, f"norm must be one of {', '.join(NORMS)}, got {cfg.norm!r}")
    cfg.require(cfg.norm_position in NORM_POSITIONS,
                f"norm_position must be one of {', '.join(NORM_POSITIONS)}, got {cfg.norm_position!r}")  # fmt: skip
    cfg.require(cfg.mlp in MLPS, f"mlp must be one of {', '.join(MLPS)}, got {cfg.mlp!r}")
    cfg.require(cfg.activation in ACTIVATIONS,
                f"activation must be one of {', '.join(sorted(ACTIVATIONS))}, got {cfg.activation!r}")  # fmt: skip
    cfg.require(isinstance(cfg.layer_types, list) and len(cfg.layer_types) == cfg.n_layer,
                f"layer_types needs one entry per layer ({cfg.n_layer}), got {cfg.layer_types!r}")  # fmt: skip
    bad = sorted({str(t) for t in cfg.layer_types} - set(PATTERNS))
    cfg.require(not bad, f"layer_types entries must be one of {', '.join(PATTERNS)}, got {bad}")
    w = cfg.sliding_window
    cfg.require(w is None or (isinstance(w, int) and not isinstance(w, bool) and w >= 1),
                f"sliding_window must be None or a whole number of at least 1, got {w!r}")  # fmt: skip
    local = sorted(set(cfg.layer_types) - {"full"})
    cfg.require(not local or w is not None,
                f"layers of type {', '.join(local)} need sliding_window (the window W), got None")  # fmt: skip


def check_relative(cfg: ConfigDict, *, bidirectional: bool) -> None:
    """T5's buckets need at least one exact bucket per direction, and a log range beyond it."""
    cfg.require_sizes("relative_buckets", "relative_max_distance")
    exact = cfg.relative_buckets // (4 if bidirectional else 2)  # exact distances per direction
    least = 4 if bidirectional else 2
    cfg.require(exact >= 1, f"relative_buckets must be at least {least}, got {cfg.relative_buckets}")
    cfg.require(cfg.relative_max_distance > exact,
                f"relative_max_distance ({cfg.relative_max_distance}) must exceed the {exact} exact buckets")  # fmt: skip


def count_parameters(module: nn.Module) -> int:
    """Parameters counted once even when shared (tied embeddings)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
