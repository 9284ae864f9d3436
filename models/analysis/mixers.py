"""The other mixers, step by step: a mixture of experts' gate and Mamba's selective scan at one token.

``gate_steps``: router logits → softmax over all experts (float32) → top-k → renormalised weights →
the weighted sum of the chosen experts' outputs (+ the shared expert behind its sigmoid gate).
``scan_steps``: Δ_t → Ā_t = exp(Δ_t A), B̄_t = Δ_t B_t → h_t = Ā_t ⊙ h_{t−1} + B̄_t u_t →
y_t = h_t · C_t + D ⊙ u_t → ⊙ SiLU(z_t) → out_proj; the hidden-attention row of the same token beside it.

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
from archplay.models.architectures.ssm import selective_scan_sequential


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
    probs: Tensor  # (E,) softmax over all experts
    chosen: list[int]  # the k experts, largest probability first
    chosen_probs: Tensor  # (k,) their probabilities before renormalising
    weights: Tensor  # (k,) the weights used (renormalised when the model does)
    expert_outputs: Tensor  # (E, D) every expert's output on this token (only the chosen ones count)
    expert_norms: Tensor  # (E,) their lengths
    shared_gate: float | None  # sigmoid(gate(x)) of the shared expert (Qwen2-MoE), None without one
    shared_output: Tensor | None  # (D,) the shared expert's output, before its gate
    output: Tensor  # (D,) Σ_k w_k · expert_k(x) (+ shared_gate · shared_output)


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
    outputs = torch.cat([e(xt) for e in moe.experts]).float()  # (E, D)
    chosen = indices[0].tolist()
    y = sum(outputs[e] * weights[0, j].float() for j, e in enumerate(chosen))
    shared_gate = shared_out = None
    if moe.shared_expert is not None:
        shared_gate = float(torch.sigmoid(moe.shared_expert_gate(xt)).float())
        shared_out = moe.shared_expert(xt)[0].float()
        y = y + shared_gate * shared_out
    probs = torch.softmax(logits[0].float(), -1)
    return GateSteps(layer=layer, token=token, x=xt[0].float().cpu(), logits=logits[0].float().cpu(),
                     probs=probs.cpu(), chosen=chosen, chosen_probs=probs[indices[0]].cpu(),
                     weights=weights[0].float().cpu(), expert_outputs=outputs.cpu(), expert_norms=outputs.norm(dim=-1).cpu(),
                     shared_gate=shared_gate, shared_output=None if shared_out is None else shared_out.cpu(),
                     output=y.cpu())  # fmt: skip


@dataclass
class ScanSteps:
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
    output: Tensor  # (D,) out_proj(y ⊙ gate): the mixer's output at the token
    hidden_attention: Tensor | None  # (T,) the same token's hidden-attention row (mean over channels of |α|)


@torch.inference_mode()
def scan_steps(model: nn.Module, ids: Tensor, layer: int, token: int) -> ScanSteps:
    """Mamba's selective scan in layer ``layer`` at position ``token``, from the model's own forward pass."""
    if model.config.family != "ssm":
        raise ValueError("the selective scan is a state-space model's (Mamba) mixer")
    layer = _check("layer", layer, len(model.layers))
    mixer = model.layers[layer].mixer
    x_hat = capture_input(model, mixer, ids)  # (1, T, D)
    token = _check("token", token, x_hat.shape[1])
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
    traced = model(ids, trace=True).trace
    row = traced.ssm_attention[layer][0, token].float().cpu() if traced.ssm_attention else None
    return ScanSteps(layer=layer, token=token, u=u[0, token].cpu(), delta=delta[0, token].cpu(), A=A.cpu(),
                     A_bar=A_bar.cpu(), B=B[0, token].cpu(), B_bar_u=Bu.cpu(), h_prev=h_prev[0].cpu(), h=h.cpu(),
                     C=C[0, token].cpu(), readout=readout.cpu(), skip=skip.cpu(), y=y.cpu(), gate=gate.cpu(),
                     output=out.cpu(), hidden_attention=row)  # fmt: skip


__all__ = ["GateSteps", "ScanSteps", "gate_steps", "scan_steps"]
