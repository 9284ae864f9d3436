"""The other mixers, step by step: a mixture of experts' gate and Mamba's selective scan at one token.

``gate_steps``: router logits → softmax over all experts (float32) → top-k → renormalised weights →
the weighted sum of the chosen experts' outputs (+ the shared expert behind its sigmoid gate).
DeepSeek-V3's router (``score`` "sigmoid"): a sigmoid per expert → + the choice-only bias → the kept
groups → top-k → the chosen sigmoids renormalised × the scaling factor (+ its ungated shared experts).
``scan_steps``: Δ_t → Ā_t = exp(Δ_t A), B̄_t = Δ_t B_t → h_t = Ā_t ⊙ h_{t−1} + B̄_t u_t →
y_t = h_t · C_t + D ⊙ u_t → ⊙ SiLU(z_t) → out_proj; the hidden-attention row of the same token beside it.
Mamba-2 the same with one Δ, A and D per head, B and C per group, and the gated RMSNorm before out_proj.

Both read the layer's real input from a forward pass of the model (a dormant hook, active only in
this thread: ``interventions``) and recompute the layer's arithmetic from it; the tests check the
result equals the layer's own output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archplay.models.analysis.interventions import capture_input
from archplay.models.architectures.moe import GroupedSigmoidRouter, GroupedSoftmaxRouter
from archplay.models.architectures.ssm import Mamba2Mixer, selective_scan_sequential, ssd_attention, ssd_sequential


def _check(name: str, value: int, n: int) -> int:
    value = int(value)
    if not 0 <= value < n:
        raise ValueError(f"{name} {value} is out of range (0 to {n - 1})")
    return value


@dataclass
class GateSteps:
    layer: int
    token: int
    x: Tensor  # (D,) the MoE layer's input at the token (after the block's norm)
    logits: Tensor  # (E,) router logits
    probs: Tensor  # (E,) softmax over all experts; score "sigmoid": each expert's own sigmoid (not summing to 1)
    chosen: list[int]  # the k experts, largest probability (sigmoid: largest choice score) first
    chosen_probs: Tensor  # (k,) their probabilities (sigmoid scores) before renormalising
    weights: Tensor  # (k,) the weights used (renormalised when the model does; × scaling)
    expert_outputs: Tensor  # (E, D) every expert's output on this token (only the chosen ones count)
    expert_norms: Tensor  # (E,) their lengths
    shared_gate: float | None  # sigmoid(gate(x)) of the shared expert (Qwen2-MoE), None without one
    shared_output: Tensor | None  # (D,) the shared expert's output, before its gate
    output: Tensor  # (D,) Σ_k w_k · expert_k(x) (+ shared_gate · shared_output)
    score: str = "softmax"  # "softmax" | "sigmoid" (DeepSeek-V3: experts scored each on its own)
    choice_bias: Tensor | None = None  # (E,) sigmoid: e_score_correction_bias, added to the scores to choose only
    choice_scores: Tensor | None = None  # (E,) sigmoid: probs + choice_bias, −inf outside the kept groups
    groups_kept: list[int] | None = None  # sigmoid with n_group > 1: the groups the top-k was drawn from
    scaling: float = 1.0  # the routed weights' factor after renormalising (routed_scaling_factor)


@torch.inference_mode()
def gate_steps(model: nn.Module, ids: Tensor, layer: int, token: int) -> GateSteps:
    """The gate of MoE layer ``layer`` at position ``token``, from the model's own forward pass."""
    layers = getattr(model, "layers", [])
    layer = _check("layer", layer, len(layers))
    moe = getattr(layers[layer], "mlp", None)
    if getattr(moe, "router", None) is None:
        raise ValueError(f"layer {layer} has no router (a dense layer, or not a mixture of experts)")
    x = capture_input(model, moe, ids)[0]  # (T, D)
    token = _check("token", token, x.shape[0])
    xt = x[token][None]  # (1, D)
    router = moe.router
    logits = F.linear(xt, router.weight)  # (1, E)
    weights, indices = router.choose(logits)  # (1, k) each
    sigmoid = {}
    if isinstance(router, GroupedSoftmaxRouter):  # DeepSeek-V2: a softmax limited to the best groups, scaled
        probs, _, kept = (t[0] if t is not None else None for t in router.select(logits))
        sigmoid = dict(groups_kept=None if kept is None else sorted(kept.tolist()), scaling=float(router.scale))
    elif isinstance(router, GroupedSigmoidRouter):  # DeepSeek-V3: independent sigmoids, chosen with a bias in groups
        probs, choice, kept = (t[0] if t is not None else None for t in router.select(logits))
        order = torch.argsort(choice[indices[0]], descending=True)  # largest choice score first
        weights, indices = weights[:, order], indices[:, order]
        sigmoid = dict(score="sigmoid", choice_bias=router.e_score_correction_bias.float().cpu(),
                       choice_scores=choice.cpu(), groups_kept=None if kept is None else sorted(kept.tolist()),
                       scaling=float(router.scale))  # fmt: skip
    else:
        probs = torch.softmax(logits[0].float(), -1)
    outputs = torch.cat([e(xt) for e in moe.experts]).float()  # (E, D)
    chosen = indices[0].tolist()
    y = sum(outputs[e] * weights[0, j].float() for j, e in enumerate(chosen))
    shared_gate = shared_out = None
    if moe.shared_expert is not None:  # an ungated shared expert (DeepSeek) counts with a gate of 1
        gate = moe.shared_expert_gate
        shared_gate = 1.0 if gate is None else float(torch.sigmoid(gate(xt)).float())
        shared_out = moe.shared_expert(xt)[0].float()
        y = y + shared_gate * shared_out
    return GateSteps(layer=layer, token=token, x=xt[0].float().cpu(), logits=logits[0].float().cpu(),
                     probs=probs.cpu(), chosen=chosen, chosen_probs=probs[indices[0]].cpu(),
                     weights=weights[0].float().cpu(), expert_outputs=outputs.cpu(), expert_norms=outputs.norm(dim=-1).cpu(),
                     shared_gate=shared_gate, shared_output=None if shared_out is None else shared_out.cpu(),
                     output=y.cpu(), **sigmoid)  # fmt: skip


@dataclass
class ScanSteps:
    """One token's step of the scan, per channel d of the D_inner channels (the figure's rows).

    Mamba-2 (``version`` 2) has one Δ, one A and one D per head: the per-channel fields repeat each head's
    value over its head_dim channels (exactly what each channel computes), and the ``head_*`` fields hold
    them once per head. Its B and C are per group: ``B``/``C`` are the first group's (all there is with
    n_groups 1, as in mamba2-130m…2.7b), ``B_groups``/``C_groups`` every group's; ``B_bar_u``, ``h``
    and ``readout`` use each channel's own group. Its output passes the gated norm: ``normed``.
    """

    layer: int
    token: int
    u: Tensor  # (Di,) the scan's input at the token (after the conv and SiLU)
    delta: Tensor  # (Di,) Δ_t
    A: Tensor  # (Di, N) the fixed state matrix (negative)
    A_bar: Tensor  # (Di, N) exp(Δ_t A): how much of each state survives the step
    B: Tensor  # (N,) B_t
    B_bar_u: Tensor  # (Di, N) Δ_t B_t u_t: what the token writes into the state
    h_prev: Tensor  # (Di, N) the state before the token
    h: Tensor  # (Di, N) the state after it: A_bar ⊙ h_prev + B_bar_u
    C: Tensor  # (N,) C_t
    readout: Tensor  # (Di,) h · C_t
    skip: Tensor  # (Di,) D ⊙ u_t
    y: Tensor  # (Di,) readout + skip
    gate: Tensor  # (Di,) SiLU(z_t)
    output: Tensor  # (D,) out_proj(y ⊙ gate) (Mamba-2: out_proj(normed)): the mixer's output at the token
    hidden_attention: Tensor | None  # (T,) the same token's hidden-attention row (mean over channels of |α|)
    version: int = 1  # 1: Mamba; 2: Mamba-2 (the fields below)
    head_delta: Tensor | None = None  # (H,) Δ_t per head
    head_A: Tensor | None = None  # (H,) the scalar A per head
    head_A_bar: Tensor | None = None  # (H,) exp(Δ_t A) per head
    head_D: Tensor | None = None  # (H,) the skip per head
    B_groups: Tensor | None = None  # (G, N) B_t of every group
    C_groups: Tensor | None = None  # (G, N) C_t of every group
    norm_rms: Tensor | None = None  # (G,) the RMS of y ⊙ gate over each norm group
    normed: Tensor | None = None  # (Di,) weight ⊙ (y ⊙ gate) / RMS: what out_proj reads


@torch.inference_mode()
def scan_steps(model: nn.Module, ids: Tensor, layer: int, token: int) -> ScanSteps:
    """The scan in layer ``layer`` at position ``token``, from the model's own forward pass (one pass:
    the hidden-attention row is computed from the same Δ, A, B, C, not from a traced run)."""
    if model.config.family != "ssm" and not hasattr(model.config, "attn_layers"):
        raise ValueError("the selective scan is a state-space model's (Mamba) mixer")
    layer = _check("layer", layer, len(model.layers))
    mixer = getattr(model.layers[layer], "mixer", None)
    if mixer is None:  # a hybrid (Jamba): its attention layers have no scan
        raise ValueError(f"layer {layer} is an attention layer, not a Mamba layer: its attention map is in Explore")
    x_hat = capture_input(model, mixer, ids)  # (1, T, D)
    token = _check("token", token, x_hat.shape[1])
    if isinstance(mixer, Mamba2Mixer):
        return _ssd_steps(mixer, x_hat, layer, token)
    s = mixer.ssm_inputs(x_hat)
    A, D = mixer.A, mixer.D.float()
    u, delta, B, C = s.u.float(), s.delta.float(), s.B.float(), s.C.float()
    h_prev = u.new_zeros(1, mixer.d_inner, mixer.d_state)  # (1, Di, N): nothing before the first token
    if token > 0:
        _, h_prev = selective_scan_sequential(u[:, :token], delta[:, :token], A, B[:, :token], C[:, :token], D)
    A_bar = torch.exp(delta[0, token, :, None] * A)  # (Di, N)
    Bu = (delta[0, token] * u[0, token])[:, None] * B[0, token][None, :]  # (Di, N)
    h = A_bar * h_prev[0] + Bu
    readout = h @ C[0, token]  # (Di,)
    skip = D * u[0, token]
    y = readout + skip
    gate = F.silu(s.z[0, token].float())
    out = mixer.out_proj((y * gate).to(x_hat.dtype)[None])[0].float()
    row = hidden_attention_row(delta[0], A, B[0], C[0], token)
    return ScanSteps(layer=layer, token=token, u=u[0, token].cpu(), delta=delta[0, token].cpu(), A=A.cpu(),
                     A_bar=A_bar.cpu(), B=B[0, token].cpu(), B_bar_u=Bu.cpu(), h_prev=h_prev[0].cpu(), h=h.cpu(),
                     C=C[0, token].cpu(), readout=readout.cpu(), skip=skip.cpu(), y=y.cpu(), gate=gate.cpu(),
                     output=out.cpu(), hidden_attention=row.cpu())  # fmt: skip


def _ssd_steps(mixer: Mamba2Mixer, x_hat: Tensor, layer: int, token: int) -> ScanSteps:
    """Mamba-2's step at ``token``: Δ per head, Ā = exp(Δ·A) per head, B̄x, the state update, C·h, D·x, the
    gated norm, out_proj."""
    s = mixer.ssm_inputs(x_hat)
    H, P, G, N = mixer.n_heads, mixer.head_dim, mixer.n_groups, mixer.d_state
    A, D = mixer.A, mixer.D.detach().float()  # (H,) each
    x, delta, B, C = s.u.float(), s.delta.float(), s.B.float(), s.C.float()  # (1,T,H,P), (1,T,H), (1,T,G,N) ×2
    h_prev = x.new_zeros(1, H, P, N)  # nothing before the first token
    if token > 0:
        _, h_prev = ssd_sequential(x[:, :token], delta[:, :token], A, B[:, :token], C[:, :token], D)
    group = torch.arange(H, device=x.device) // (H // G)  # (H,) the group each head reads
    dt, xt = delta[0, token], x[0, token]  # (H,), (H, P)
    Bt, Ct = B[0, token][group], C[0, token][group]  # (H, N)
    A_bar = torch.exp(dt * A)  # (H,) one decay per head
    Bx = (dt[:, None] * xt)[..., None] * Bt[:, None, :]  # (H, P, N): Δ x ⊗ B
    h = A_bar[:, None, None] * h_prev[0] + Bx  # (H, P, N)
    readout = (h @ Ct[..., None])[..., 0]  # (H, P)
    skip = D[:, None] * xt  # (H, P)
    y = (readout + skip).reshape(-1)  # (Di,)
    gate = F.silu(s.z[0, token].float())  # (Di,)
    gated = (y * gate).view(G, -1)  # (G, Di / G): the norm's groups
    rms = torch.sqrt(gated.pow(2).mean(-1) + mixer.norm.eps)  # (G,)
    normed = mixer.norm.weight.float() * (gated / rms[:, None]).reshape(-1)  # (Di,)
    out = mixer.out_proj(normed.to(x_hat.dtype)[None])[0].float()
    row = ssd_attention(delta, A, B, C, rows=slice(token, token + 1))[0, 0]  # (T,)

    def per_channel(v: Tensor) -> Tensor:  # (H, ...) -> (Di, ...): each head's value on its P channels
        return v.repeat_interleave(P, dim=0)

    Di = H * P
    return ScanSteps(layer=layer, token=token, u=xt.reshape(-1).cpu(), delta=per_channel(dt).cpu(),
                     A=per_channel(A)[:, None].repeat(1, N).cpu(), A_bar=per_channel(A_bar)[:, None].repeat(1, N).cpu(),
                     B=B[0, token, 0].cpu(), B_bar_u=Bx.reshape(Di, N).cpu(), h_prev=h_prev[0].reshape(Di, N).cpu(),
                     h=h.reshape(Di, N).cpu(), C=C[0, token, 0].cpu(), readout=readout.reshape(-1).cpu(),
                     skip=skip.reshape(-1).cpu(), y=y.cpu(), gate=gate.cpu(), output=out.cpu(),
                     hidden_attention=row.cpu(), version=2, head_delta=dt.cpu(), head_A=A.cpu(),
                     head_A_bar=A_bar.cpu(), head_D=D.cpu(), B_groups=B[0, token].cpu(), C_groups=C[0, token].cpu(),
                     norm_rms=rms.cpu(), normed=normed.cpu())  # fmt: skip


def hidden_attention_row(
    delta: Tensor, A: Tensor, B: Tensor, C: Tensor, t: int, *, max_bytes: int = 32 * 2**20
) -> Tensor:
    """Mamba's hidden-attention row at token ``t``, (T,), as the trace reports it (mean over channels of |α|),
    straight from the definition: α[d, s] = Σ_n C_t[n] · exp(Σ_{r=s+1..t} Δ_r[d] A[d, n]) · Δ_s[d] B_s[n].

    delta (T, Di); A (Di, N); B, C (T, N). Columns come in blocks of about ``max_bytes``; the exponents
    are differences of a float64 running sum of Δ (≥ 0, times A < 0: no overflow). Zero after ``t``.
    """
    T, Di = delta.shape
    N = A.shape[1]
    cum = delta.double().cumsum(0)  # (T, Di)
    out = delta.new_zeros(T, dtype=torch.float32)
    block = max(1, max_bytes // (4 * 2 * Di * N))
    for s0 in range(0, t + 1, block):
        s1 = min(s0 + block, t + 1)
        seg = (cum[t] - cum[s0:s1]).float()  # (l, Di): Σ_{r=s+1..t} Δ_r
        CB = C[t].float() * B[s0:s1].float()  # (l, N): C_t[n] B_s[n]
        alpha = (torch.exp(seg[..., None] * A.float()) * CB[:, None, :]).sum(-1) * delta[s0:s1].float()  # (l, Di)
        out[s0:s1] = alpha.abs().mean(-1)
    return out


__all__ = ["GateSteps", "ScanSteps", "gate_steps", "hidden_attention_row", "scan_steps"]
