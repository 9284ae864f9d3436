"""Mixture of experts: a decoder whose feed-forward is a sparse MoE layer (Mixtral style).

    x ─► Norm ─► Router ──► softmax over all E experts (float32) ─► top-k ─► renormalise ─► weights w
              └─────────► expert e(x) only for the tokens routed to e ──────────────────────┐
                                                   y = Σ_{e in top-k(x)} w_e · e(x) ◄────────┘

Attention, positions and norms are the decoder's (``decoder.py``); only the feed-forward
half of each block changes. Each token runs k of the E experts, so the model has many more
parameters than it uses per token ("total" versus "active").

The trace adds, per MoE layer, the router logits (before the softmax) and the experts each
token actually ran. ``load_balancing_loss`` (Switch Transformer, eqs. 4-6) is a free function.

DeepSeek-V3 (``checkpoints/deepseek.py``) changes three things, each a config field off by default: the
router (``router_score`` "sigmoid": ``GroupedSigmoidRouter``, with expert groups and a choice-only bias),
an ungated always-on shared expert (``shared_expert_gate`` False), and the attention (``kv_lora_rank``:
multi-head latent attention, ``mla.py``, in every layer, dense or routed). Its dense first layers are
``moe_layers``. Its router logits in the trace are the raw q·W scores, before the sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archplay.models.architectures.decoder import Decoder, DecoderBlock, DecoderConfig, LayerTrace
from archplay.models.architectures.layers import GatedMLP, residual
from archplay.models.architectures.mla import LatentAttention


@dataclass
class MoEConfig(DecoderConfig):
    n_experts: int = 4
    top_k: int = 2  # experts per token
    d_expert: int | None = None  # each expert's hidden width; None = d_ff
    normalize_top_k: bool = True  # renormalise the k chosen weights to sum to 1 (Mixtral)
    d_shared_expert: int | None = None  # Qwen2-MoE: an always-on expert behind a sigmoid gate
    moe_layers: list[bool] | None = None  # which layers route; the others keep a dense MLP (d_ff)
    shared_expert_gate: bool = True  # Qwen2-MoE: the shared expert behind sigmoid(gate(x)); DeepSeek-V3: no gate
    # DeepSeek-V3's router (``GroupedSigmoidRouter``): each expert scored by a sigmoid, not a softmax;
    # DeepSeek-V2's (``GroupedSoftmaxRouter``): a softmax with groups and a scale
    router_score: str = "softmax"  # "softmax" (Mixtral, Qwen, DeepSeek-V2) | "sigmoid" (DeepSeek-V3)
    n_group: int = 1  # DeepSeek: the experts in n_group groups; only the topk_group best groups may be chosen
    topk_group: int = 1
    routed_scaling_factor: float = 1.0  # the routed experts' weights times this (after any renormalising)
    # DeepSeek's multi-head latent attention (``mla.LatentAttention``); kv_lora_rank None = the usual attention
    kv_lora_rank: int | None = None  # keys and values rebuilt per head from one cached latent of this width
    q_lora_rank: int | None = None  # queries through a low-rank bottleneck of this width; None = one q_proj
    qk_rope_head_dim: int = 0  # MLA: the rotated channels of each q and k head (k's shared by every head)
    v_head_dim: int | None = None  # MLA: each value head's width; None = head_dim
    family: str = field(default="moe", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.d_expert = self.d_expert or self.d_ff
        if self.moe_layers is None:
            self.moe_layers = [True] * self.n_layer
        self.require_sizes("n_experts", "top_k", "d_expert")
        self.require(len(self.moe_layers) == self.n_layer, "moe_layers needs one flag per layer")
        self.require(any(self.moe_layers), "at least one layer must be a MoE layer")
        self.require(self.top_k <= self.n_experts, f"top_k ({self.top_k}) must not exceed n_experts ({self.n_experts})")
        self.require(self.mlp == "gated", "experts are gated MLPs (SwiGLU): mlp must be 'gated'")
        self.require(not self.parallel_residual, "a mixture of experts runs its MoE layer after attention "
                                                 "(parallel_residual is not supported)")  # fmt: skip
        self._check_deepseek_parts()

    def _check_deepseek_parts(self) -> None:
        self.require(self.router_score in ROUTER_SCORES,
                     f"router_score must be one of {', '.join(ROUTER_SCORES)}, got {self.router_score!r}")  # fmt: skip
        self.require_sizes("n_group", "topk_group")
        if self.n_group > 1 or self.topk_group > 1:
            per = self.n_experts // self.n_group
            self.require(self.n_experts % self.n_group == 0 and per >= 2,
                         f"n_experts ({self.n_experts}) must split into n_group ({self.n_group}) groups of 2 or more")  # fmt: skip
            self.require(self.topk_group <= self.n_group, f"topk_group ({self.topk_group}) exceeds n_group ({self.n_group})")
            self.require(self.top_k <= self.topk_group * per,
                         f"top_k ({self.top_k}) exceeds the {self.topk_group * per} experts of the chosen groups")  # fmt: skip
        if self.kv_lora_rank is None:
            self.require(self.q_lora_rank is None and not self.qk_rope_head_dim and self.v_head_dim is None,
                         "q_lora_rank, qk_rope_head_dim and v_head_dim are parts of latent attention (kv_lora_rank)")  # fmt: skip
            return
        self.v_head_dim = self.v_head_dim or self.head_dim
        self.require_sizes("kv_lora_rank", "qk_rope_head_dim", "v_head_dim")
        if self.q_lora_rank is not None:
            self.require_sizes("q_lora_rank")
        self.require(self.positions == "rotary", "latent attention rotates part of q and k: positions must be 'rotary'")
        self.require(self.qk_rope_head_dim % 2 == 0 and self.qk_rope_head_dim <= self.head_dim,
                     f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even and at most head_dim ({self.head_dim})")  # fmt: skip
        self.require(self.n_kv_head == self.n_head, "latent attention rebuilds keys and values for every head: "
                                                    "n_kv_head must equal n_head")  # fmt: skip
        self.require(self.qk_norm is None and self.attn_softcap is None and set(self.layer_types) == {"full"},
                     "latent attention has no q/k norm, soft-cap or local attention patterns")  # fmt: skip

    @property
    def rotary_dim(self) -> int:
        """Latent attention rotates qk_rope_head_dim channels of each head; otherwise the decoder's rule."""
        return self.qk_rope_head_dim if self.kv_lora_rank is not None else super().rotary_dim

    @classmethod
    def mixtral_tiny(cls, **kw) -> "MoEConfig":
        base = dict(
            vocab_size=99, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48, max_seq_len=128,
            positions="rotary", norm="rmsnorm", norm_eps=1e-5, mlp="gated", activation="silu",
            qkv_bias=False, o_bias=False, mlp_bias=False, tie_embeddings=False, n_experts=4, top_k=2,
        )  # fmt: skip
        return cls(**{**base, **kw})


class Router(nn.Module):
    """Scores each token against every expert and picks the top k.

    The softmax runs in float32 over all E experts; the k largest probabilities are then
    renormalised to sum to 1 (Mixtral), or kept as they are (``normalize=False``).
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, normalize: bool = True):
        super().__init__()
        self.top_k, self.normalize = top_k, normalize
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))  # (E, D)
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, D) -> logits (N, E), weights (N, k), expert indices (N, k)."""
        logits = F.linear(x, self.weight)  # (N, E)
        return (logits, *self.choose(logits))

    def choose(self, logits: Tensor, off: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """logits (N, E) -> the k experts' weights (N, k) and indices (N, k). ``off`` (E,) bool: experts
        switched off (an ablation): the choice is among the rest, from the same full softmax."""
        probs = torch.softmax(logits.float(), dim=-1)  # (N, E)
        if off is not None:
            probs = probs.masked_fill(off, 0.0)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)  # (N, k), largest first
        if self.normalize:
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
        return weights, indices


class GroupedSigmoidRouter(Router):
    """DeepSeek-V3's router: a sigmoid per expert, a bias for choosing only, and group-limited routing.

        s = sigmoid(logits)                    each expert's own score in (0, 1), no competition (float32)
        c = s + b                              b: e_score_correction_bias, learned for load balance, used to *choose*
        groups: the E experts in G groups; a group's score is the sum of its 2 best c; keep the topk_group best
        top-k of c within the kept groups  ->  weights = s of those k (not c), / their sum (norm_topk_prob), × scale
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, normalize: bool, *, n_group: int = 1,
                 topk_group: int = 1, scale: float = 1.0):  # fmt: skip
        super().__init__(d_model, n_experts, top_k, normalize)
        self.n_group, self.topk_group, self.scale = n_group, topk_group, scale
        self.register_buffer("e_score_correction_bias", torch.zeros(n_experts))  # (E,) stored in the checkpoint

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As ``Router.forward``, with the logits computed in float32 (transformers keeps this router in float32)."""
        logits = F.linear(x.float(), self.weight.float())  # (N, E)
        return (logits, *self.choose(logits))

    def select(self, logits: Tensor, off: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """logits (N, E) -> sigmoid scores (N, E), the choice scores (N, E) (+ bias; −inf outside the kept
        groups), the kept groups (N, topk_group) or None without groups.

        ``off`` (E,) bool (an ablation): the groups are kept as without it; then the off experts are −inf and,
        should the kept groups have fewer than k others left, experts outside them are next (−1e30), so an
        off expert is never chosen."""
        scores = torch.sigmoid(logits.float())  # (N, E)
        choice = scores + self.e_score_correction_bias.float()  # (N, E) for choosing only
        kept = None
        if self.n_group > 1:
            N, E = choice.shape
            grouped = choice.view(N, self.n_group, E // self.n_group)  # (N, G, E/G)
            group_score = grouped.topk(2, dim=-1).values.sum(-1)  # (N, G) the sum of each group's 2 best
            kept = torch.topk(group_score, self.topk_group, dim=-1).indices  # (N, topk_group)
            in_kept = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)  # (N, G)
            outside = float("-inf") if off is None else -1e30
            choice = choice.masked_fill(~in_kept.repeat_interleave(E // self.n_group, dim=1), outside)
        if off is not None:
            choice = choice.masked_fill(off, float("-inf"))
        return scores, choice, kept

    def choose(self, logits: Tensor, off: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """logits (N, E) -> the k experts' weights (N, k) and indices (N, k). ``off`` (E,) bool: never chosen."""
        scores, choice, _ = self.select(logits, off)
        indices = torch.topk(choice, self.top_k, dim=-1).indices  # (N, k)
        weights = scores.gather(1, indices)  # (N, k) the sigmoid scores, without the bias
        if self.normalize:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * self.scale, indices


class GroupedSoftmaxRouter(Router):
    """DeepSeek-V2's router: Mixtral's softmax, optionally limited to the best groups, weights × a scale.

        p = softmax(logits)                    over all E experts (float32)
        groups: the E experts in G groups; a group's score is its largest p; keep the topk_group best
        top-k of p within the kept groups  ->  weights = those p (/ their sum when normalising) × scale
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, normalize: bool, *, n_group: int = 1,
                 topk_group: int = 1, scale: float = 1.0):  # fmt: skip
        super().__init__(d_model, n_experts, top_k, normalize)
        self.n_group, self.topk_group, self.scale = n_group, topk_group, scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As ``Router.forward``, with the logits computed in float32 (transformers keeps this router in float32)."""
        logits = F.linear(x.float(), self.weight.float())  # (N, E)
        return (logits, *self.choose(logits))

    def select(self, logits: Tensor, off: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """logits (N, E) -> probabilities (N, E), the choice scores (N, E) (p; outside the kept groups 0, as
        transformers masks them), the kept groups (N, topk_group) or None without groups. ``off`` (E,) bool
        (an ablation): the groups are kept as without it; the off experts are −inf, and experts outside the
        kept groups rank below every kept one (p − 2), so the next best is chosen and an off one never is."""
        probs = torch.softmax(logits.float(), dim=-1)  # (N, E)
        choice, kept = probs, None
        if self.n_group > 1:
            N, E = probs.shape
            group_score = probs.view(N, self.n_group, E // self.n_group).amax(-1)  # (N, G) each group's best
            kept = torch.topk(group_score, self.topk_group, dim=-1).indices  # (N, topk_group)
            in_kept = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)
            outside = ~in_kept.repeat_interleave(E // self.n_group, dim=1)
            choice = probs.masked_fill(outside, 0.0) if off is None else torch.where(outside, probs - 2.0, probs)
        if off is not None:
            choice = choice.masked_fill(off, float("-inf"))
        return probs, choice, kept

    def choose(self, logits: Tensor, off: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """logits (N, E) -> the k experts' weights (N, k) and indices (N, k). ``off`` (E,) bool: never chosen."""
        probs, choice, _ = self.select(logits, off)
        indices = torch.topk(choice, self.top_k, dim=-1).indices  # (N, k), largest first
        weights = probs.gather(1, indices)  # (N, k)
        if self.normalize:
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
        return weights * self.scale, indices


ROUTER_SCORES = ("softmax", "sigmoid")


def make_router(cfg: MoEConfig) -> Router:
    grouped = dict(n_group=cfg.n_group, topk_group=cfg.topk_group, scale=cfg.routed_scaling_factor)
    if cfg.router_score == "sigmoid":
        return GroupedSigmoidRouter(cfg.d_model, cfg.n_experts, cfg.top_k, cfg.normalize_top_k, **grouped)
    if cfg.n_group > 1 or cfg.routed_scaling_factor != 1.0:  # DeepSeek-V2
        return GroupedSoftmaxRouter(cfg.d_model, cfg.n_experts, cfg.top_k, cfg.normalize_top_k, **grouped)
    return Router(cfg.d_model, cfg.n_experts, cfg.top_k, cfg.normalize_top_k)


class SparseMoE(nn.Module):
    """Route each token to k experts and sum their outputs, weighted by the router.

    With a shared expert (Qwen2-MoE) every token also runs it, scaled by sigmoid(gate(x)).
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.router = make_router(cfg)
        self.experts = nn.ModuleList(
            GatedMLP(cfg.d_model, cfg.d_expert, cfg.activation, cfg.mlp_bias) for _ in range(cfg.n_experts)
        )
        if cfg.d_shared_expert:
            self.shared_expert = GatedMLP(cfg.d_model, cfg.d_shared_expert, cfg.activation, cfg.mlp_bias)
            self.shared_expert_gate = nn.Linear(cfg.d_model, 1, bias=False) if cfg.shared_expert_gate else None
        else:
            self.shared_expert = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> output (B, T, D), router logits (B, T, E), expert indices (B, T, k)."""
        B, T, D = x.shape
        flat = x.reshape(-1, D)  # (N, D)
        logits, weights, indices = self.router(flat)
        if flat.shape[0] == 1:  # one token (each generation step): run its k experts directly
            out = self._one_token(flat, weights[0], indices[0])
        else:
            out = self._grouped(flat, weights, indices)
        if self.shared_expert is not None and self.shared_expert_gate is None:  # DeepSeek: always on, ungated
            out = out + self.shared_expert(flat)
        elif self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.view(B, T, D), logits.view(B, T, -1), indices.view(B, T, -1)

    def _one_token(self, flat: Tensor, weights: Tensor, indices: Tensor) -> Tensor:
        """flat (1, D); weights, indices (k,). The experts in ascending order, as ``_grouped`` adds them."""
        chosen = sorted(zip(indices.tolist(), range(indices.shape[0])))
        out = None
        for e, slot in chosen:
            y = self.experts[e](flat) * weights[slot].to(flat.dtype)  # (1, D)
            out = y if out is None else out + y
        return out

    def _grouped(self, flat: Tensor, weights: Tensor, indices: Tensor) -> Tensor:
        """Each expert runs once on all the tokens routed to it; flat (N, D), weights, indices (N, k)."""
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(indices == e)  # the tokens routed to e, and in which of their k slots
            if rows.numel() == 0:
                continue  # an expert no token chose does no work
            y = expert(flat[rows]) * weights[rows, slot, None].to(flat.dtype)  # (n_e, D)
            out.index_add_(0, rows, y)
        return out


class MoEBlock(DecoderBlock):
    """The decoder's block (pre- or post-norm) with the MLP replaced by a sparse MoE layer."""

    def make_ffn(self, cfg: MoEConfig) -> nn.Module:
        return SparseMoE(cfg)

    def forward(self, x, **kw) -> tuple[Tensor, LayerTrace]:
        x, probs = self.attention(x, **kw)
        x, router_logits, indices = residual(x, self.mlp_norm, self.mlp, post=self.post_norm)
        return x, LayerTrace(attention=probs, router_logits=router_logits, expert_indices=indices)


class MoEDecoder(Decoder):
    config: MoEConfig

    def make_block(self, cfg: MoEConfig, layer_idx: int) -> nn.Module:
        block = MoEBlock(cfg, layer_idx) if cfg.moe_layers[layer_idx] else DecoderBlock(cfg, layer_idx)
        if cfg.kv_lora_rank is not None:  # DeepSeek: multi-head latent attention in place of the usual one
            block.attn = LatentAttention(cfg)
        return block


def expert_load(expert_indices: Tensor, n_experts: int) -> Tensor:
    """The share of routed (token, slot) pairs each expert received: (E,), sums to 1."""
    counts = torch.bincount(expert_indices.reshape(-1), minlength=n_experts).float()
    return counts / counts.sum().clamp_min(1)


def load_balancing_loss(
    router_logits: Sequence[Tensor], n_experts: int, top_k: int, attention_mask: Tensor | None = None
) -> Tensor:
    """Switch Transformer's auxiliary loss, as Mixtral trains with it: E · Σ_e f_e · P_e.

    f_e: the fraction of tokens whose top-k includes expert e (summing to k over experts);
    P_e: the mean router probability of e. Both are pooled over all layers (and weighted by
    ``attention_mask`` (B, T) when given, so padding does not count). The loss is smallest
    when routing is uniform.
    """
    counts = torch.zeros(n_experts)
    prob_sum = torch.zeros(n_experts)
    rows = torch.zeros(())
    for layer in router_logits:
        logits = layer.reshape(-1, n_experts).float().cpu()  # (N, E)
        probs = torch.softmax(logits, dim=-1)
        chosen = torch.topk(probs, top_k, dim=-1).indices  # (N, k)
        w = torch.ones(logits.shape[0]) if attention_mask is None else attention_mask.reshape(-1).float().cpu()
        counts += torch.zeros(n_experts).scatter_add_(0, chosen.reshape(-1), w.repeat_interleave(top_k))
        prob_sum += (probs * w[:, None]).sum(0)
        rows += w.sum()
    f = counts / rows  # (E,)
    p = prob_sum / rows  # (E,)
    return n_experts * (f * p).sum()


__all__ = ["GroupedSigmoidRouter", "MoEConfig", "MoEDecoder", "Router", "SparseMoE", "expert_load", "load_balancing_loss"]
