"""State-space language model: Mamba (Gu & Dao 2023), a selective SSM in place of attention, and
Mamba-2 (Dao & Gu 2024; ``MambaConfig(version=2)``), whose scalar-per-head A makes the scan a masked
matrix product (state-space duality): see the Mamba-2 section below.

    ids ─► embedding ─► N × [x + Mixer(RMSNorm(x))] ─► RMSNorm ─► LM head

    The mixer (one per block), on the normed input x̂:

        x̂ ─► in_proj ─┬─► x ─► causal depthwise conv1d (kernel d_conv) ─► SiLU ─► u
                      │                                                         │
                      │        x_proj(u) ─► Δ_low, B, C;   Δ = softplus(dt_proj(Δ_low))
                      │                                                         ▼
                      │                   y = selective_scan(u, Δ, A, B, C) + D ⊙ u
                      │                                                         │
                      └─► z ─► SiLU ──────────────────────────────────────────► ⊙ ─► out_proj ─► out

There is no attention and no position embedding: order enters through the causal conv and
the recurrence. Generation carries a fixed-size state per layer (the conv's last d_conv
inputs and the SSM state h), so each new token costs the same however long the prefix.

Glossary (the paper's symbols; per channel d of the D_inner channels, per state n of N):

    D_inner  width of the mixer, expand × d_model; every channel d has its own SSM
    N        state size per channel (d_state, 16 in the released models)
    Δ        step size, input-dependent: Δ_t = softplus(dt_proj(Δ_low_t)) > 0, Δ_low_t being the
             first R outputs of x_proj(u_t) (a low-rank bottleneck).
             Large Δ resets the state towards the current input; small Δ keeps the past
    A        (D_inner, N) state matrix, diagonal, fixed per channel: A = −exp(A_log) < 0
    B        (T, N) input matrix, input-dependent (shared across channels): writes u_t into h
    C        (T, N) output matrix, input-dependent: reads y_t out of h
    D        (D_inner,) skip connection: y_t += D ⊙ u_t
    Ā, B̄     the discretised pair: Ā_t = exp(Δ_t A) (zero-order hold), B̄_t = Δ_t B_t (Euler)

    h_t = Ā_t ⊙ h_{t−1} + B̄_t u_t          (D_inner, N)
    y_t = h_t · C_t + D ⊙ u_t               (D_inner,)

Unrolled, y_r[d] = Σ_{c≤r} α[d, r, c] u_c[d] + D[d] u_r[d] with the *hidden attention*
(Ali, Zimerman & Wolf 2024, "The Hidden Attention of Mamba Models")

    α[d, r, c] = Σ_n C_r[n] · exp(Σ_{k=c+1..r} Δ_k[d] A[d, n]) · Δ_c[d] B_c[n]     (c ≤ r, else 0)

which the trace reports as mean_d |α| per layer, next to Δ.

Shapes: b batch, T sequence length, D model width, Di = D_inner, N state size, R = dt_rank.
B, C and D always mean the paper's matrices and skip; in shapes, b is the batch and D the width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archplay.models.architectures import generation
from archplay.models.architectures.layers import (
    ACTIVATIONS,
    ConfigDict,
    ModelOutput,
    Trace,
    activation,
    init_normal,
    make_norm,
)


@dataclass
class MambaConfig(ConfigDict):
    vocab_size: int
    d_model: int
    n_layer: int
    d_state: int = 16  # N
    d_conv: int = 4  # kernel width of the causal depthwise conv
    expand: int = 2
    d_inner: int | None = None  # None = expand * d_model (checkpoints may store it explicitly)
    dt_rank: int | str = "auto"  # R, the width Δ is projected through; "auto" = ceil(d_model / 16)
    norm: str = "rmsnorm"  # Mamba uses RMSNorm; "layernorm" for mamba_ssm checkpoints without it
    norm_eps: float = 1e-5
    conv_bias: bool = True
    bias: bool = False  # on in_proj and out_proj
    activation: str = "silu"  # after the conv (the gate z always uses SiLU, as in the reference)
    tie_embeddings: bool = True
    max_seq_len: int = 2048  # a length the UI offers; the model itself has no limit
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    name: str = "mamba"
    trained: bool = True  # False for the random-weight placeholder
    # Mamba-2 (version 2; the fields below are Mamba-2's only, dt_rank is Mamba-1's only):
    version: int = 1  # 1: Mamba's selective scan; 2: Mamba-2's state-space duality (SSD)
    head_dim: int = 64  # P: channels per head; every head has one scalar A and one Δ per token
    n_heads: int | None = None  # H; None = d_inner / head_dim
    n_groups: int = 1  # G: groups of heads that share B and C (and the gated norm's groups)
    chunk_size: int = 256  # the SSD's block length (the result does not depend on it)
    dt_limit_min: float = 0.0  # Δ is clamped to [dt_limit_min, dt_limit_max] (transformers' time_step_limit)
    dt_limit_max: float | None = None  # None: no upper limit
    family: str = field(default="ssm", init=False)

    def __post_init__(self) -> None:
        self.require_sizes("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand")
        self.d_inner = self.d_inner or self.expand * self.d_model
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        self.require_sizes("d_inner", "dt_rank")
        self.require(self.activation in ACTIVATIONS,
                     f"activation must be one of {', '.join(sorted(ACTIVATIONS))}, got {self.activation!r}")  # fmt: skip
        self.require(self.version in (1, 2), f"version must be 1 (Mamba) or 2 (Mamba-2), got {self.version!r}")
        if self.version == 2:
            self.require_sizes("head_dim", "n_groups", "chunk_size")
            self.require(self.d_inner % self.head_dim == 0,
                         f"d_inner {self.d_inner} must be a multiple of head_dim {self.head_dim}")  # fmt: skip
            self.n_heads = self.n_heads or self.d_inner // self.head_dim
            self.require(self.n_heads * self.head_dim == self.d_inner,
                         f"n_heads × head_dim ({self.n_heads} × {self.head_dim}) must equal d_inner {self.d_inner}")  # fmt: skip
            self.require(self.n_heads % self.n_groups == 0,
                         f"n_heads {self.n_heads} must be a multiple of n_groups {self.n_groups}")  # fmt: skip
            hi = math.inf if self.dt_limit_max is None else self.dt_limit_max
            self.require(0.0 <= self.dt_limit_min < hi,
                         f"the Δ limits must satisfy 0 ≤ min < max, got ({self.dt_limit_min}, {self.dt_limit_max})")  # fmt: skip

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: Mamba's x (d_inner); Mamba-2's x, B and C together."""
        return self.d_inner + (2 * self.n_groups * self.d_state if self.version == 2 else 0)

    # A tiny named preset, for tests.
    @classmethod
    def mamba_tiny(cls, **kw) -> "MambaConfig":
        return cls(**{"vocab_size": 99, "d_model": 32, "n_layer": 2, "d_state": 16, "max_seq_len": 256, **kw})

    @classmethod
    def mamba2_tiny(cls, **kw) -> "MambaConfig":
        return cls(**{"vocab_size": 99, "d_model": 32, "n_layer": 2, "d_state": 16, "max_seq_len": 256, "version": 2,
                      "head_dim": 16, "n_groups": 2, "chunk_size": 8, "tie_embeddings": False, **kw})  # fmt: skip


# --------------------------------------------------------------------------- the selective scan


def selective_scan_sequential(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The reference scan, one time step at a time, exactly as the recurrence reads.

    u, delta (b, T, Di); A (Di, N); B, C (b, T, N); D (Di,); h0 (b, Di, N) or None (zeros).
    Returns y (b, T, Di) and the final state h_T (b, Di, N).
    """
    b, T, Di = u.shape
    h = u.new_zeros(b, Di, A.shape[1]) if h0 is None else h0  # (b, Di, N)
    ys = []
    for t in range(T):
        # 1. Discretise A by zero-order hold: Ā_t = exp(Δ_t A), a decay in (0, 1) per channel and state.
        A_bar = torch.exp(delta[:, t, :, None] * A)  # (b, Di, N)
        # 2. Discretise B (Euler, as Mamba does) and apply it to the input: B̄_t u_t = Δ_t B_t u_t.
        Bu = (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]  # (b, Di, N)
        # 3. Update the state: forget by Ā_t, write B̄_t u_t.
        h = A_bar * h + Bu  # (b, Di, N)
        # 4. Read out through C_t, plus the skip D u_t.
        y = (h @ C[:, t, :, None])[..., 0]  # (b, Di)
        ys.append(y + D * u[:, t])
    return torch.stack(ys, dim=1), h  # (b, T, Di), (b, Di, N)


def selective_scan_chunked(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk: int = 16,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The same scan with T/L + 2L Python steps instead of T: cut the sequence into chunks of L.

    1. Scan every chunk at once from a zero state: L steps on (b, T/L, Di, N) tensors.
    2. Carry the state across chunks: h_in[k+1] = exp(ΣΔ_chunk k · A) ⊙ h_in[k] + h_end[k].
    3. Add each chunk's incoming state, decayed to each position: y_t += C_t · (exp(cumΔ_t A) ⊙ h_in),
       with cumΔ_t the cumulative sum of Δ within the chunk (log space: exponents stay ≤ 0).

    Exact up to rounding, and stable: every exponent is Δ·A summed over steps, never positive.
    Same arguments and results as ``selective_scan_sequential``.
    """
    b, T, Di = u.shape
    N = A.shape[1]
    L = max(1, min(chunk, T))
    n_chunks = -(-T // L)
    pad = n_chunks * L - T  # padded steps have Δ = 0: decay 1, input 0, so the state passes unchanged

    def chunked(x: Tensor) -> Tensor:  # (b, T, F) -> (b, n_chunks, L, F)
        return F.pad(x, (0, 0, 0, pad)).view(b, n_chunks, L, x.shape[-1])

    u_, delta_, B_, C_ = chunked(u), chunked(delta), chunked(B), chunked(C)
    du = delta_ * u_  # (b, nc, L, Di)

    # 1. Within every chunk, from a zero state.
    h = u.new_zeros(b, n_chunks, Di, N)  # (b, nc, Di, N)
    ys = []
    for t in range(L):
        h = torch.exp(delta_[:, :, t, :, None] * A) * h + du[:, :, t, :, None] * B_[:, :, t, None, :]
        ys.append(h @ C_[:, :, t, :, None])  # (b, nc, Di, 1)
    y = torch.cat(ys, dim=-1)  # (b, nc, Di, L)

    # 2. Across chunks: the true state entering each chunk.
    chunk_decay = torch.exp(delta_.sum(2)[..., None] * A)  # (b, nc, Di, N)
    carry = u.new_zeros(b, Di, N) if h0 is None else h0  # (b, Di, N)
    h_in = []
    for k in range(n_chunks):
        h_in.append(carry)
        carry = chunk_decay[:, k] * carry + h[:, k]
    h_in = torch.stack(h_in, dim=1)  # (b, nc, Di, N)

    # 3. What the incoming state contributes at each position of its chunk.
    cum = delta_.cumsum(2)  # (b, nc, L, Di)
    ys = [(torch.exp(cum[:, :, t, :, None] * A) * h_in) @ C_[:, :, t, :, None] for t in range(L)]
    y = y + torch.cat(ys, dim=-1)  # (b, nc, Di, L)

    y = y.transpose(2, 3).reshape(b, n_chunks * L, Di)[:, :T]  # (b, T, Di)
    return y + D * u, carry


def selective_scan_segmented(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, segment: int = 512, chunk: int = 16,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The chunked scan over consecutive segments of ``segment`` tokens, each starting from the
    state the previous one ended in: the same recurrence, exactly. It bounds the working set of
    every element-wise operation (about (b, segment/chunk, Di, N) floats, 0.5 MB for Di = 256),
    so a long input stays in the CPU's cache and the time grows linearly with the length.
    """
    T = u.shape[1]
    if T <= segment:
        return selective_scan_chunked(u, delta, A, B, C, D, h0, chunk=chunk)
    ys, h = [], h0
    for s0 in range(0, T, segment):
        part = slice(s0, s0 + segment)
        y, h = selective_scan_chunked(u[:, part], delta[:, part], A, B[:, part], C[:, part], D, h, chunk=chunk)
        ys.append(y)
    return torch.cat(ys, dim=1), h


selective_scan = selective_scan_segmented  # the fast path's scan


def compiled_scan():
    """``selective_scan_chunked`` through ``torch.compile``, for training.

    Inductor fuses each step's element-wise ops into one loop, so the (b, T/L, Di, N) state makes
    one trip through memory per step instead of five: a Mamba training step on 2 CPU cores runs
    about 1.6× faster. The first call compiles (~40 s) and needs a C++ compiler.
    """
    return torch.compile(selective_scan_chunked, dynamic=False)


# --------------------------------------------------------------------------- hidden attention


def hidden_attention_full(delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Per-channel hidden attention α (b, Di, T, T), straight from the definition.

    Materialises (b, Di, T, T, N) and a (T, T, T) mask: for small inputs and tests only.
    Computed in delta's dtype (pass float64 for a reference).
    """
    T = delta.shape[1]
    r, c, k = torch.meshgrid(*(torch.arange(T, device=delta.device),) * 3, indexing="ij")
    between = ((c < k) & (k <= r)).to(delta.dtype)  # (T, T, T): the steps k = c+1..r
    seg = torch.einsum("rck,bkd->bdrc", between, delta)  # (b, Di, T, T): Σ_{k=c+1..r} Δ_k
    decay = torch.exp(seg[..., None] * A.to(delta.dtype)[:, None, None, :])  # (b, Di, T, T, N)
    alpha = torch.einsum("brn,bdrcn,bcd,bcn->bdrc", C.to(delta.dtype), decay, delta, B.to(delta.dtype))
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=delta.device))
    return alpha.masked_fill(~causal, 0.0)  # (b, Di, T, T)


@torch.no_grad()  # a picture of the model, not part of its computation
def hidden_attention(
    delta: Tensor, A: Tensor, B: Tensor, C: Tensor, *, block: int | None = None, max_bytes: int = 64 * 2**20
) -> Tensor:
    """mean over channels of |α|, (b, T, T), with bounded memory.

    Rows come in blocks of ``block`` (None: 8) and channels in groups sized so one step's working
    tensors stay near ``max_bytes`` (plus the (b, T, T) result). For a row block starting at
    r0, the columns before it factor through the position just before the block, p = r0 − 1:

        exp(Σ_{k=c+1..r} Δ_k A) = exp(Σ_{k=p+1..r} Δ_k A) · exp(Σ_{k=c+1..p} Δ_k A)    (c ≤ p < r)

    so that part is one matrix product (rows × N) @ (N × columns) per channel, with both
    exponents ≤ 0 (no overflow). The diagonal block is computed directly: it costs T · block · N
    exponentials per channel against T² · N / (2 · block) for the factored part, so small blocks
    win (measured on 2 CPU cores, Di 256, N 16: 5× faster at T = 128 with block 8 than with 64).
    """
    b, T, Di = delta.shape
    N = A.shape[1]
    if block is None:
        block = 8
    L = max(1, min(block, T))
    cum = delta.double().cumsum(1).transpose(1, 2)  # (b, Di, T); float64 so long sums subtract without loss
    per_channel = 4 * b * (2 * L * T + 3 * N * T + 2 * L * L * N)  # bytes of one step's tensors
    group = max(1, min(Di, max_bytes // per_channel))
    B, C = B.float(), C.float()
    out = delta.new_zeros(b, T, T)
    for d0 in range(0, Di, group):
        chans = slice(d0, min(d0 + group, Di))
        cum_g = cum[:, chans].contiguous()  # (b, G, T)
        delta_g = delta[:, :, chans].transpose(1, 2).float()  # (b, G, T)
        A_g = A[chans].float()[None, :, None, :]  # (1, G, 1, N)
        dB = delta_g[..., None] * B[:, None]  # (b, G, T, N): Δ_c B_c
        # right[..., c, :] = exp(Σ_{k=c+1..p} Δ_k A) Δ_c B_c for the columns before the current
        # block, p being the block's last-but-one position; kept across blocks and advanced by one
        # decay per block, so each column's exponential is taken once, not once per row block.
        right = torch.empty_like(dB)
        p = None
        for r0 in range(0, T, L):
            r1 = min(r0 + L, T)
            out[:, r0:r1, r0:r1] += _diagonal_block(cum_g, dB, A_g, C, r0, r1).abs_().sum(1)
            if r0:
                left = torch.exp((cum_g[..., r0:r1] - p).float()[..., None] * A_g) * C[:, None, r0:r1]  # (b, G, l, N)
                out[:, r0:r1, :r0] += (left @ right[:, :, :r0].transpose(-1, -2)).abs_().sum(1)  # (b, l, r0)
            p_next = cum_g[..., r1 - 1 : r1]  # (b, G, 1)
            if r0:
                right[:, :, :r0] *= torch.exp((p_next - p).float()[..., None] * A_g)
            right[:, :, r0:r1] = torch.exp((p_next - cum_g[..., r0:r1]).float()[..., None] * A_g) * dB[:, :, r0:r1]
            p = p_next
    return out / Di


def _diagonal_block(cum: Tensor, dB: Tensor, A: Tensor, C: Tensor, r0: int, r1: int) -> Tensor:
    """α for rows and columns r0..r1−1 of a group of G channels, (b, G, l, l), zero above the diagonal:
    exp(Σ_{k=c+1..r} Δ_k A) directly. cum (b, G, T); dB (b, G, T, N) = Δ_c B_c; A (1, G, 1, N)."""
    cum_r = cum[..., r0:r1]  # (b, G, l)
    seg = (cum_r[..., :, None] - cum_r[..., None, :]).clamp_(min=0).float()  # (b, G, l, l): r, c
    terms = torch.exp(seg[..., None] * A[:, :, None])  # (b, G, l, l, N)
    terms *= dB[:, :, None, r0:r1]  # · Δ_c B_c
    terms *= C[:, None, r0:r1, None]  # · C_r
    causal = torch.ones(r1 - r0, r1 - r0, dtype=torch.bool, device=cum.device).tril()
    return terms.sum(-1).masked_fill_(~causal, 0.0)  # (b, G, l, l)


# --------------------------------------------------------------------------- the block


@dataclass
class LayerState:
    """What one layer remembers of the prefix during generation."""

    conv: Tensor  # (b, Di, d_conv) the conv's last d_conv inputs (Mamba-2: (b, Di + 2·G·N, d_conv))
    ssm: Tensor  # (b, Di, N) the SSM state h (Mamba-2: (b, H, P, N))


@dataclass
class SSMInputs:
    """Everything the scan consumes, computed from the block's normed input."""

    u: Tensor  # (b, T, Di) the scan's input: conv, then SiLU
    z: Tensor  # (b, T, Di) the gate, before its SiLU
    delta: Tensor  # (b, T, Di) Δ, after softplus
    B: Tensor  # (b, T, N)
    C: Tensor  # (b, T, N)
    conv_state: Tensor  # (b, Di, d_conv) for the next call


@dataclass
class SSMLayerTrace:
    delta: Tensor  # (b, T, Di)
    attention: Tensor  # (b, T, T) mean over channels of |α|


def causal_conv(conv1d: nn.Conv1d, x: Tensor, conv_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The causal depthwise conv: x (b, C, T), channels first -> (out (b, C, T), the new state (b, C, d_conv)).

    ``conv_state`` holds the conv's previous d_conv inputs (None: zeros, the start of a sequence).
    Output t sees inputs t−d_conv+1..t; no activation here.
    """
    b, channels, T = x.shape
    d_conv = conv1d.weight.shape[-1]
    if conv_state is None:
        conv_state = x.new_zeros(b, channels, d_conv)
    window = torch.cat((conv_state, x), dim=-1)  # (b, C, d_conv + T)
    if T == 1:  # one generation step: the conv is a dot product of the last d_conv inputs with the kernel
        out = (window[..., 1:] * conv1d.weight[:, 0, :]).sum(-1, keepdim=True)  # (b, C, 1)
        if conv1d.bias is not None:
            out = out + conv1d.bias[:, None]
    else:  # the first output (the state only) is dropped
        out = F.conv1d(window, conv1d.weight, conv1d.bias, groups=channels)[..., 1:]  # (b, C, T)
    return out, window[..., -d_conv:]


class MambaMixer(nn.Module):
    """The selective SSM with its gate: what replaces attention. Names follow the checkpoints."""

    scan = None  # None: the module's ``selective_scan``; training may set a compiled one (Mamba.use_scan)

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        Di, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.d_inner, self.d_state, self.dt_rank, self.d_conv = Di, N, R, cfg.d_conv
        self.in_proj = nn.Linear(cfg.d_model, 2 * Di, bias=cfg.bias)
        self.conv1d = nn.Conv1d(Di, Di, cfg.d_conv, groups=Di, bias=cfg.conv_bias)  # depthwise
        self.x_proj = nn.Linear(Di, R + 2 * N, bias=False)  # -> Δ_low, B, C
        self.dt_proj = nn.Linear(R, Di, bias=True)
        self.A_log = nn.Parameter(torch.zeros(Di, N))
        self.D = nn.Parameter(torch.ones(Di))
        self.out_proj = nn.Linear(Di, cfg.d_model, bias=cfg.bias)
        self.act = activation(cfg.activation)

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())  # (Di, N), negative: every mode decays

    def ssm_inputs(self, x_hat: Tensor, conv_state: Tensor | None = None) -> SSMInputs:
        """x̂ (b, T, D), the normed block input -> u, z, Δ, B, C.

        ``conv_state`` holds the conv's previous inputs (None: zeros, the start of a sequence).
        """
        x, z = self.in_proj(x_hat).chunk(2, dim=-1)  # (b, T, Di) each
        x, conv_state = causal_conv(self.conv1d, x.transpose(1, 2), conv_state)  # (b, Di, T): channels first
        u = self.act(x).transpose(1, 2)  # (b, T, Di)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (b, T, R|N|N)
        delta = F.softplus(self.dt_proj(dt))  # (b, T, Di)
        return SSMInputs(u=u, z=z, delta=delta, B=B, C=C, conv_state=conv_state)

    def layer_trace(self, s: SSMInputs) -> SSMLayerTrace:
        """What a traced pass reports: Δ and the hidden attention, from the same Δ, B, C."""
        return SSMLayerTrace(delta=s.delta, attention=hidden_attention(s.delta, self.A, s.B, s.C))

    def forward(self, x_hat: Tensor, state: LayerState | None = None) -> tuple[Tensor, LayerState, SSMInputs]:
        """x̂ (b, T, D) -> (out (b, T, D), the state after these tokens, the scan's inputs)."""
        s = self.ssm_inputs(x_hat, state.conv if state is not None else None)
        one_step = x_hat.shape[1] == 1  # a generation step: the recurrence itself, no chunking to set up
        scan = selective_scan_sequential if one_step else (self.scan or selective_scan)
        y, h_last = scan(s.u, s.delta, self.A, s.B, s.C, self.D.float(), state.ssm if state is not None else None)
        out = self.out_proj((y * F.silu(s.z)).to(x_hat.dtype))  # (b, T, D)
        return out, LayerState(conv=s.conv_state, ssm=h_last), s


# --------------------------------------------------------------------------- Mamba-2: state-space duality
#
# Mamba-2 (Dao & Gu 2024, "Transformers are SSMs") keeps the recurrence and restricts A to a scalar per
# head, which makes the scan a masked matrix product ("state-space duality", SSD):
#
#     x̂ ─► in_proj ─┬─► z ─────────────────────────────────────────────────────────────┐
#                   ├─► x·B·C ─► causal depthwise conv1d ─► SiLU ─► x (H × P), B, C (G × N)  │
#                   └─► Δ_raw ─► Δ = clamp(softplus(Δ_raw + dt_bias), dt_limit)  (one per head)
#                        y = SSD(x, Δ, A, B, C) + D ⊙ x ─► GatedRMSNorm(y, z) = RMSNorm_G(y ⊙ SiLU(z)) ─► out_proj
#
# Glossary (per head h of H; P = head_dim channels per head, N = d_state, G = n_groups):
#
#     A        (H,) one scalar per head, A = −exp(A_log) < 0 (Mamba: a (D_inner, N) matrix)
#     Δ        (T, H) one step size per head and token, Δ = softplus(Δ_raw + dt_bias), clamped
#     B, C     (T, G, N): head h reads group g(h) = h // (H / G); G = 1 in mamba2-130m…2.7b, 8 in Mamba-Codestral
#     D        (H,) skip per head
#     Ā_t      exp(Δ_t A), a scalar per head: the whole state of a head decays by one factor
#
#     h_t = Ā_t h_{t−1} + Δ_t x_t ⊗ B_t       (H, P, N)
#     y_t = h_t C_t + D x_t                   (H, P)
#
# Unrolled, y_t = Σ_{s≤t} α_{t,s} x_s + D x_t with one (T, T) matrix per head,
#
#     α[h, t, s] = (C_t · B_s) · exp(Σ_{r=s+1..t} Δ_r A_h) · Δ_s       (s ≤ t, else 0)
#
# = L ∘ (C Bᵀ) · diag(Δ): a causal, decaying "attention" matrix, the same for every channel of the
# head. The SSD computes it in chunks of chunk_size: the (L × L) blocks on the diagonal directly,
# the rest through the states at the chunk boundaries (a low-rank factorisation). The trace reports
# mean over channels of |α| (= mean over heads, each head's P channels sharing α), as for Mamba.
#
# Shapes: b batch, T length, H heads, P head_dim, G groups, N state size, K = conv channels.


def _heads(t: Tensor, H: int) -> Tensor:
    """(b, T, G, N) -> (b, T, H, N): each head reads its group's B or C."""
    return t.repeat_interleave(H // t.shape[2], dim=2)


def ssd_sequential(
    x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mamba-2's reference scan, one time step at a time.

    x (b, T, H, P); delta (b, T, H); A (H,); B, C (b, T, G, N); D (H,); h0 (b, H, P, N) or None (zeros).
    Returns y (b, T, H, P) and the final state (b, H, P, N).
    """
    b, T, H, P = x.shape
    B, C = _heads(B, H), _heads(C, H)  # (b, T, H, N)
    h = x.new_zeros(b, H, P, B.shape[-1]) if h0 is None else h0  # (b, H, P, N)
    ys = []
    for t in range(T):
        # 1. Ā_t = exp(Δ_t A): one decay per head, for its whole state.
        A_bar = torch.exp(delta[:, t] * A)  # (b, H)
        # 2. What the token writes: B̄_t x_t = Δ_t x_t ⊗ B_t.
        Bx = (delta[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]  # (b, H, P, N)
        # 3. The state update.
        h = A_bar[..., None, None] * h + Bx  # (b, H, P, N)
        # 4. Read out through C_t, plus the skip D x_t.
        y = (h @ C[:, t, :, :, None])[..., 0]  # (b, H, P)
        ys.append(y + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), h


def ssd_chunked(
    x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, h0: Tensor | None = None,
    *, chunk: int = 256,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The same scan in its dual form, chunks of L tokens; same arguments and results as ``ssd_sequential``.

    1. Within every chunk, the masked matrix: y_t = Σ_{s ≤ t in the chunk} (C_t·B_s) exp(cum_t − cum_s) Δ_s x_s,
       cum being the running sum of Δ·A inside the chunk (every exponent ≤ 0: stable).
    2. Each chunk's own final state from zero: Σ_s exp(cum_last − cum_s) Δ_s x_s ⊗ B_s.
    3. Carry the states across chunks: h_in[k+1] = exp(cum_last[k]) h_in[k] + state[k].
    4. What the incoming state adds at each position: y_t += exp(cum_t) h_in C_t.
    """
    b, T, H, P = x.shape
    L = max(1, min(chunk, T))
    n_chunks = -(-T // L)
    pad = n_chunks * L - T  # padded steps have Δ = 0: decay 1, input 0, so the state passes unchanged

    def chunked(t: Tensor) -> Tensor:  # (b, T, ...) -> (b, nc, L, ...)
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.view(b, n_chunks, L, *t.shape[2:])

    dx = chunked(delta[..., None] * x)  # (b, nc, L, H, P): Δ_s x_s
    B_, C_ = chunked(_heads(B, H)), chunked(_heads(C, H))  # (b, nc, L, H, N)
    cum = chunked(delta * A).cumsum(2)  # (b, nc, L, H)

    # 1. The diagonal blocks: the SSD matrix L ∘ (C Bᵀ) inside each chunk.
    seg = cum[:, :, :, None] - cum[:, :, None]  # (b, nc, L, L, H): t, s
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()[..., None]  # (L, L, 1)
    decay = torch.exp(seg.masked_fill(~causal, -math.inf))  # (b, nc, L, L, H), 0 above the diagonal
    scores = torch.einsum("bcthn,bcshn->bctsh", C_, B_) * decay  # (b, nc, L, L, H)
    y = torch.einsum("bctsh,bcshp->bcthp", scores, dx)  # (b, nc, L, H, P)

    # 2. Each chunk's final state, from a zero state.
    to_end = torch.exp(cum[:, :, -1:] - cum)  # (b, nc, L, H)
    states = torch.einsum("bclh,bclhn,bclhp->bchpn", to_end, B_, dx)  # (b, nc, H, P, N)

    # 3. Across chunks: the true state entering each chunk.
    chunk_decay = torch.exp(cum[:, :, -1])  # (b, nc, H)
    carry = x.new_zeros(b, H, P, B.shape[-1]) if h0 is None else h0  # (b, H, P, N)
    h_in = []
    for k in range(n_chunks):
        h_in.append(carry)
        carry = chunk_decay[:, k, :, None, None] * carry + states[:, k]
    h_in = torch.stack(h_in, dim=1)  # (b, nc, H, P, N)

    # 4. The incoming state, decayed to each position, read out through C.
    y = y + torch.einsum("bclhn,bchpn->bclhp", C_, h_in) * torch.exp(cum)[..., None]  # (b, nc, L, H, P)
    y = y.reshape(b, n_chunks * L, H, P)[:, :T]
    return y + D[:, None] * x, carry


def ssd_attention_full(delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Mamba-2's hidden attention per head, α (b, H, T, T), signed, zero above the diagonal:
    (C_t·B_s) · exp(Σ_{r=s+1..t} Δ_r A) · Δ_s. In delta's dtype (float64 for a reference)."""
    T, H = delta.shape[1], delta.shape[2]
    dt = delta.dtype
    cum = (delta * A.to(dt)).cumsum(1).transpose(1, 2)  # (b, H, T)
    seg = cum[..., :, None] - cum[..., None, :]  # (b, H, T, T): t, s
    causal = torch.ones(T, T, dtype=torch.bool, device=delta.device).tril()
    decay = torch.exp(seg.masked_fill(~causal, -math.inf))
    CB = torch.einsum("bthn,bshn->bhts", _heads(C.to(dt), H), _heads(B.to(dt), H))  # (b, H, T, T)
    return CB * decay * delta.transpose(1, 2)[:, :, None, :]


@torch.no_grad()  # a picture of the model, not part of its computation
def ssd_attention(delta: Tensor, A: Tensor, B: Tensor, C: Tensor, *, rows: slice | None = None,
                  max_bytes: int = 64 * 2**20) -> Tensor:  # fmt: skip
    """mean over heads (= over channels) of |α|, (b, T, T), or the rows ``rows`` of it, (b, R, T).

    delta (b, T, H); A (H,); B, C (b, T, G, N). Rows come in blocks sized so one block's (b, H, rows, T)
    tensors stay near ``max_bytes``. The exponents are differences of a float64 running sum of Δ·A,
    clamped at 0 before the causal mask (so nothing overflows).
    """
    b, T, H = delta.shape
    rows = rows or slice(0, T)
    r_start, r_stop = rows.indices(T)[:2]
    cum = (delta.double() * A.double()).cumsum(1)  # (b, T, H)
    B, C = _heads(B.float(), H), _heads(C.float(), H)  # (b, T, H, N)
    dt_s = delta.float().transpose(1, 2)[:, :, None, :]  # (b, H, 1, T): Δ_s
    block = max(1, min(r_stop - r_start, max_bytes // (4 * 4 * b * H * T)))
    out = delta.new_zeros(b, r_stop - r_start, T, dtype=torch.float32)
    s = torch.arange(T, device=delta.device)
    for r0 in range(r_start, r_stop, block):
        r1 = min(r0 + block, r_stop)
        seg = (cum[:, r0:r1, None] - cum[:, None]).permute(0, 3, 1, 2)  # (b, H, l, T): t, s
        causal = s[None, :] <= torch.arange(r0, r1, device=delta.device)[:, None]  # (l, T)
        decay = torch.exp(seg.clamp(max=0).float()).masked_fill_(~causal, 0.0)
        CB = torch.einsum("bthn,bshn->bhts", C[:, r0:r1], B)  # (b, H, l, T)
        out[:, r0 - r_start : r1 - r_start] = (CB * decay * dt_s).abs_().mean(1)
    return out


@dataclass
class SSDInputs:
    """Everything Mamba-2's scan consumes, computed from the block's normed input."""

    u: Tensor  # (b, T, H, P) the scan's input x: conv, then SiLU
    z: Tensor  # (b, T, Di) the gate, before its SiLU
    delta: Tensor  # (b, T, H) Δ per head, after bias, softplus and clamp (float32)
    B: Tensor  # (b, T, G, N)
    C: Tensor  # (b, T, G, N)
    conv_state: Tensor  # (b, K, d_conv) for the next call, K = Di + 2·G·N


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: RMSNorm of y ⊙ SiLU(z) (the gate first), over each of G groups of channels."""

    def __init__(self, dim: int, groups: int, eps: float):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        g = y.float() * F.silu(z.float())  # (..., Di)
        g = g.view(*g.shape[:-1], self.groups, -1)  # (..., G, Di / G)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.flatten(-2).to(y.dtype)


class Mamba2Mixer(nn.Module):
    """Mamba-2's mixer: one projection for z, x·B·C and Δ; a conv over x·B·C; the SSD; the gated norm.
    Names follow the checkpoints."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        Di, N, H, G = cfg.d_inner, cfg.d_state, cfg.n_heads, cfg.n_groups
        self.d_inner, self.d_state, self.d_conv = Di, N, cfg.d_conv
        self.n_heads, self.head_dim, self.n_groups, self.chunk_size = H, cfg.head_dim, G, cfg.chunk_size
        self.dt_limit = (cfg.dt_limit_min, math.inf if cfg.dt_limit_max is None else cfg.dt_limit_max)
        self.conv_dim = cfg.conv_dim
        self.in_proj = nn.Linear(cfg.d_model, Di + self.conv_dim + H, bias=cfg.bias)  # -> z, x·B·C, Δ_raw
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.A_log = nn.Parameter(torch.zeros(H))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(Di, G, cfg.norm_eps)
        self.out_proj = nn.Linear(Di, cfg.d_model, bias=cfg.bias)
        self.act = activation(cfg.activation)

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())  # (H,), negative: every head decays

    def ssm_inputs(self, x_hat: Tensor, conv_state: Tensor | None = None) -> SSDInputs:
        """x̂ (b, T, D), the normed block input -> x, z, Δ, B, C (``conv_state`` as for Mamba)."""
        b, T, _ = x_hat.shape
        Di, H, GN = self.d_inner, self.n_heads, self.n_groups * self.d_state
        z, xBC, dt = self.in_proj(x_hat).split([Di, self.conv_dim, H], dim=-1)  # (b, T, Di | K | H)
        xBC, conv_state = causal_conv(self.conv1d, xBC.transpose(1, 2), conv_state)  # (b, K, T)
        x, B, C = self.act(xBC).transpose(1, 2).split([Di, GN, GN], dim=-1)  # (b, T, Di | G·N | G·N)
        delta = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit)  # (b, T, H)
        return SSDInputs(u=x.reshape(b, T, H, self.head_dim), z=z, delta=delta,
                         B=B.reshape(b, T, self.n_groups, self.d_state), C=C.reshape(b, T, self.n_groups, self.d_state),
                         conv_state=conv_state)  # fmt: skip

    def forward(self, x_hat: Tensor, state: LayerState | None = None) -> tuple[Tensor, LayerState, SSDInputs]:
        """x̂ (b, T, D) -> (out (b, T, D), the state after these tokens, the scan's inputs)."""
        b, T, _ = x_hat.shape
        s = self.ssm_inputs(x_hat, state.conv if state is not None else None)
        args = (s.u.float(), s.delta, self.A, s.B.float(), s.C.float(), self.D.float(), state.ssm if state else None)
        y, h_last = ssd_sequential(*args) if T == 1 else ssd_chunked(*args, chunk=self.chunk_size)  # (b, T, H, P)
        out = self.out_proj(self.norm(y.reshape(b, T, self.d_inner), s.z).to(x_hat.dtype))  # (b, T, D)
        return out, LayerState(conv=s.conv_state, ssm=h_last), s

    def layer_trace(self, s: SSDInputs) -> SSMLayerTrace:
        """Δ per channel (each head's Δ over its P channels) and mean |α| over channels, as for Mamba."""
        delta = s.delta.repeat_interleave(self.head_dim, dim=-1)  # (b, T, Di)
        return SSMLayerTrace(delta=delta, attention=ssd_attention(s.delta, self.A, s.B, s.C))


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + Mixer(Norm(x))."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg) if cfg.version == 2 else MambaMixer(cfg)

    def forward(
        self, x: Tensor, state: LayerState | None = None, *, trace: bool = False
    ) -> tuple[Tensor, LayerState, SSMLayerTrace | None]:
        # Traced or not, the chunked scan (equal to the sequential reference: tests/test_mamba.py);
        # tracing adds the hidden attention, computed from the same Δ, B, C.
        out, state, s = self.mixer(self.norm(x), state)
        return x + out, state, self.mixer.layer_trace(s) if trace else None


# --------------------------------------------------------------------------- the model


class Mamba(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MambaBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(_init_weights)

    def forward(self, ids: Tensor, *, trace: bool = False, state: list[LayerState] | None = None,
                last_only: bool = False) -> ModelOutput:  # fmt: skip
        """ids (b, T). ``state`` (a previous output's ``cache``) continues a sequence. ``last_only``: the
        logits of the last position only (generation reads no other).

        The output's ``cache`` is the state after these tokens. ``trace`` needs a whole
        sequence (no state): the hidden attention covers the tokens it is shown.
        """
        if trace and state is not None:
            raise ValueError("trace=True takes a whole sequence, not a continuation with a carried state")
        x = self.embed_tokens(ids)  # (b, T, D)
        hidden, layer_traces, new_state = [x], [], []
        for i, layer in enumerate(self.layers):
            x, st, lt = layer(x, state[i] if state is not None else None, trace=trace)
            hidden.append(x)
            layer_traces.append(lt)
            new_state.append(st)
        h = self.norm(x)
        logits = self.lm_head(h[:, -1:] if last_only else h)  # (b, T, V), or (b, 1, V)
        tr = None
        if trace:
            tr = Trace(
                hidden_states=hidden,
                attentions=None,
                ssm_attention=[lt.attention for lt in layer_traces],
                ssm_delta=[lt.delta for lt in layer_traces],
            )
        return ModelOutput(logits=logits, trace=tr, cache=new_state, last_hidden_state=h)

    def use_scan(self, scan=None) -> None:
        """Run every Mamba-1 mixer's untraced scan through ``scan`` (e.g. ``compiled_scan()``); None: the
        default. Mamba-2's SSD is matrix products already and keeps its own."""
        for layer in self.layers:
            if isinstance(layer.mixer, MambaMixer):
                layer.mixer.scan = scan

    # ------------------------------------------------------------------ generation

    def _step(self, ids: Tensor, state: list[LayerState] | None):
        """The prompt in one pass from a zero state (state None), then one token per call."""
        out = self(ids, state=state, last_only=True)
        return out.logits, out.cache

    def generate(self, ids: Tensor, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 eos_token_id: int | None = None) -> Tensor:  # fmt: skip
        """Continue ``ids`` (b, T) -> (b, T + new), carrying the recurrent state. Temperature 0 is greedy."""
        return generation.generate(
            self._step, ids, None, max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id,
        )  # fmt: skip

    def generate_stream(self, ids: Tensor, max_new_tokens: int = 32, temperature: float = 0.0,
                        top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                        eos_token_id: int | None = None) -> Iterator[tuple[int, float]]:  # fmt: skip
        """Like ``generate`` for one sequence, yielding (token id, probability) as they come."""
        return generation.stream(
            self._step, ids, None, max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, eos_token_id=eos_token_id,
        )  # fmt: skip


def _init_weights(m: nn.Module) -> None:
    """Small normal weights; the mixer's SSM parameters as in the paper (S4D-real A, Δ in [1e-3, 1e-1])."""
    init_normal(m)
    if isinstance(m, Mamba2Mixer):  # A = −1..−H across the heads, as transformers and mamba_ssm initialise it
        with torch.no_grad():
            m.A_log.copy_(torch.log(torch.arange(1, m.n_heads + 1, dtype=torch.float32)))
            m.D.fill_(1.0)
            dt = torch.exp(torch.rand(m.n_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
    if isinstance(m, MambaMixer):
        with torch.no_grad():
            m.A_log.copy_(torch.log(torch.arange(1, m.d_state + 1, dtype=torch.float32)).expand(m.d_inner, -1))
            m.D.fill_(1.0)
            nn.init.uniform_(m.dt_proj.weight, -(m.dt_rank**-0.5), m.dt_rank**-0.5)
            dt = torch.exp(torch.rand(m.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)


__all__ = [
    "GatedRMSNorm", "LayerState", "Mamba", "Mamba2Mixer", "MambaBlock", "MambaConfig", "MambaMixer", "SSDInputs",
    "SSMInputs", "SSMLayerTrace", "causal_conv", "compiled_scan", "hidden_attention", "hidden_attention_full",
    "selective_scan", "selective_scan_chunked", "selective_scan_segmented", "selective_scan_sequential",
    "ssd_attention", "ssd_attention_full", "ssd_chunked", "ssd_sequential",
]  # fmt: skip
