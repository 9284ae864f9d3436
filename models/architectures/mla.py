"""Multi-head latent attention (MLA), DeepSeek-V2 and V3: keys and values from one small cached latent.

    x ─► q_a_proj ─► RMSNorm ─► q_b_proj ─► q (H heads) = [q_nope ; q_rope]        (or one q_proj: q_lora_rank None)
    x ─► kv_a_proj_with_mqa ─► [c_kv (kv_lora_rank) ; k_rope (qk_rope_head_dim, one head shared by all)]
         c_kv ─► RMSNorm ─► kv_b_proj ─► per head [k_nope ; v]
    k = [k_nope ; RoPE(k_rope)],  q = [q_nope ; RoPE(q_rope)]       RoPE only on the rope channels
    out = softmax(q·k × scale, causal) v,  scale = 1/√(qk_nope_head_dim + qk_rope_head_dim)
                                             (YaRN checkpoints: × mscale², from the converter's attn_scale)

What a token leaves in the KV cache is c_kv and the rotated k_rope: kv_lora_rank + qk_rope_head_dim
numbers per layer, against H·(Dqk + Dv) for the full keys and values; the per-head keys and values are
rebuilt from them at every step (``KVCache`` holds the two as single-head (B, 1, S, ·) tensors, as
transformers' cache does). The value heads may be narrower or wider than q and k (``v_head_dim``).

``rope_interleaved`` (DeepSeek's checkpoints; GPT-J's layout): the rotated pairs are channels (0, 1), (2, 3), ...
rather than (i, i + rope/2). transformers returns such q and k de-interleaved ([evens ; odds]); here they keep the
checkpoint's channel order. q·k, and so every attention weight, is the same either way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from archplay.models.architectures.layers import (
    ATTENTION_TAPS,
    AttentionTap,
    KVCache,
    RMSNorm,
    apply_rotary,
    attend,
)


class LatentAttention(nn.Module):
    """Self-attention whose keys and values are rebuilt from a compressed latent (module names as the checkpoints').

    Reads from ``cfg`` (a ``MoEConfig``): d_model, n_head, head_dim (= qk_nope + qk_rope), qk_rope_head_dim,
    v_head_dim, kv_lora_rank, q_lora_rank, qkv_bias and o_bias (transformers' attention_bias), attn_scale (None:
    1/√head_dim), rope_interleaved. The two latent norms use RMSNorm's ε = 1e-6, as transformers does.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        D, H = cfg.d_model, cfg.n_head
        self.n_head = self.n_kv_head = H  # every head has its own key and value, rebuilt from the shared latent
        self.qk_head_dim = cfg.head_dim  # q and k: [nope ; rope]
        self.qk_rope_head_dim = cfg.qk_rope_head_dim
        self.qk_nope_head_dim = cfg.head_dim - cfg.qk_rope_head_dim
        self.v_head_dim = cfg.v_head_dim
        # What the analyses read per head of the output projection (its input is H heads of v_head_dim each):
        # ablating a head zeroes, and attention_steps slices W_o at, head · v_head_dim ... (head + 1) · v_head_dim.
        self.head_dim = self.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.q_lora_rank = cfg.q_lora_rank
        self.rope_interleaved = cfg.rope_interleaved
        self.scale = cfg.attn_scale or self.qk_head_dim**-0.5
        self.softcap = None
        bias = cfg.qkv_bias
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(D, H * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(D, self.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank)
            self.q_b_proj = nn.Linear(self.q_lora_rank, H * self.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.kv_lora_rank + self.qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, H * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * self.v_head_dim, D, bias=cfg.o_bias)

    def _rotate(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        """RoPE on the rope channels x (B, n, T, qk_rope_head_dim)."""
        return apply_rotary(x, *rope, interleaved=self.rope_interleaved)

    def latent(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> c_kv (B, 1, T, kv_lora_rank) normalised, k_rope (B, 1, T, rope) before and after RoPE."""
        B, T, _ = x.shape
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv).view(B, 1, T, self.kv_lora_rank)
        k_rope = k_rope.reshape(B, 1, T, self.qk_rope_head_dim)  # one rope key, shared by every head
        return c_kv, k_rope, (k_rope if rope is None else self._rotate(k_rope, rope))

    def expand(self, c_kv: Tensor, k_rope: Tensor) -> tuple[Tensor, Tensor]:
        """The cached c_kv (B, 1, S, r) and rotated k_rope (B, 1, S, rope) -> k (B, H, S, Dqk), v (B, H, S, Dv)."""
        B, _, S, _ = c_kv.shape
        kv = self.kv_b_proj(c_kv[:, 0]).view(B, S, self.n_head, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.transpose(1, 2).split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)  # (B, H, S, ·)
        k = torch.cat((k_nope, k_rope.expand(B, self.n_head, S, self.qk_rope_head_dim)), dim=-1)  # (B, H, S, Dqk)
        return k, v

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
        """``x`` (B, T, D) -> (output (B, T, D), probabilities (B, H, T, S) or None). Self-attention only."""
        if memory is not None:
            raise ValueError("latent attention is self-attention only (no encoder memory)")
        B, T, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, self.n_head, self.qk_head_dim).transpose(1, 2)  # (B, H, T, Dqk)
        q_nope, q_rope = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        c_kv, k_rope_before, k_rope = self.latent(x, rope)
        q_before = q
        if rope is not None:
            q = torch.cat((q_nope, self._rotate(q_rope, rope)), dim=-1)  # RoPE on the rope channels only
        if cache is not None:  # what is cached: the latent and the rotated rope key, not per-head k and v
            c_kv, k_rope = cache.update(c_kv, k_rope)  # (B, 1, S, r), (B, 1, S, rope)
        k, v = self.expand(c_kv, k_rope)  # (B, H, S, Dqk), (B, H, S, Dv)
        out, probs = attend(q, k, v, scale=self.scale, mask=mask, bias=bias, need_weights=need_weights)
        out = out.transpose(1, 2).reshape(B, T, self.n_head * self.v_head_dim)  # (B, T, H*Dv)
        y = self.o_proj(out)  # (B, T, D)
        taps = ATTENTION_TAPS.get()
        if taps is not None and self in taps:  # analysis.steps asked for this module's intermediates
            k_before = None
            if rope is not None:
                k_before = self.expand(c_kv[:, :, -T:], k_rope_before)[0]  # (B, H, T, Dqk) unrotated
            taps[self](AttentionTap(x=x, q=q, k=k, v=v, q_before=q_before if rope is not None else None,
                                    k_before=k_before, mask=mask, bias=bias, heads=out, output=y))  # fmt: skip
        return y, probs


__all__ = ["LatentAttention"]
