"""Mamba-2 (issue 17, item 2): parity with transformers' Mamba2ForCausalLM, the SSD against the sequential
scan, its hidden attention, its special parts, scan_steps (both versions), ablation, the card, estimate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize, word_tokenizer
from torch import Tensor

from archplay import models
from archplay.models import LoadError
from archplay.models.analysis.anatomy import anatomy
from archplay.models.analysis.card import parameter_breakdown, ssm_rows
from archplay.models.analysis.estimate import estimate
from archplay.models.analysis.interventions import ablate, capture_input
from archplay.models.analysis.mixers import hidden_attention_row, scan_steps
from archplay.models.analysis.positions import encoding
from archplay.models.architectures import ssm
from archplay.models.architectures.ssm import (
    Mamba,
    MambaConfig,
    hidden_attention,
    ssd_attention,
    ssd_attention_full,
    ssd_chunked,
    ssd_sequential,
)
from archplay.models.checkpoints.mamba import hf_rename, mamba2_config

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"  # 19 words
VARIANTS = {
    # one group, chunks of 8 (the prompt spans three), untied head, conv bias, no in/out biases
    "groups1": {"n_groups": 1, "chunk_size": 8},
    # two groups (heads 0-1 read one B/C, heads 2-3 the other), chunks of 5, biases, tied head, and a Δ limit
    # that binds for the larger steps
    "groups2": {"n_groups": 2, "chunk_size": 5, "use_bias": True, "use_conv_bias": False, "tie_word_embeddings": True,
                "time_step_limit": (0.0, 0.2)},
}  # fmt: skip


def make_hf_mamba2(folder, seed: int = 0, **overrides):
    """A tiny random Mamba2ForCausalLM (4 heads × 16, N = 8) saved with a word tokenizer; returns the HF model."""
    import transformers as T

    kw = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, expand=2, num_heads=4, head_dim=16, state_size=8,
              conv_kernel=4, n_groups=1, chunk_size=8, bos_token_id=None, eos_token_id=None, pad_token_id=None)  # fmt: skip
    model = T.Mamba2ForCausalLM(T.Mamba2Config(**{**kw, **overrides}))
    randomize(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # keep the SSM sane: A around −1..−H, Δ between 0.01 and 0.5
        for layer in model.backbone.layers:
            m = layer.mixer
            H = m.A_log.shape[0]
            m.A_log.copy_(torch.log(torch.arange(1, H + 1.0)) + 0.1 * torch.randn(H, generator=gen))
            dt = torch.exp(torch.rand(H, generator=gen) * (math.log(0.5) - math.log(0.01)) + math.log(0.01))
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹
    model.eval()
    model.save_pretrained(folder)
    word_tokenizer("decoder").save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def mamba2(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("mamba2") / request.param
    hf = make_hf_mamba2(folder, **VARIANTS[request.param])
    ours, tok = models.load(folder)
    return ours, tok, hf


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Mamba(MambaConfig.mamba2_tiny()).eval()  # 4 heads × 16, 2 groups, chunks of 8
    with torch.no_grad():  # a random, not-initial state: Δ, D, the norm and the conv all away from their defaults
        for layer in model.layers:
            m = layer.mixer
            m.dt_bias.add_(torch.randn(m.n_heads) * 0.5)
            m.D.copy_(torch.randn(m.n_heads))
            m.norm.weight.copy_(1 + 0.3 * torch.randn(m.d_inner))
    return model


def _ids(tok, text=PROMPT, batch=2):
    ids = tok.encode(text)
    return torch.tensor([ids, ids[::-1]][:batch])


def _rand_ids(T, seed=2, b=1):
    return torch.randint(3, 99, (b, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- parity with transformers


def test_parity_with_transformers(mamba2):
    ours, tok, hf = mamba2
    cfg = ours.config
    assert (cfg.version, cfg.n_heads, cfg.head_dim, cfg.d_inner) == (2, 4, 16, 64)
    assert cfg.n_groups == hf.config.n_groups and cfg.chunk_size == hf.config.chunk_size
    ids = _ids(tok)
    assert ids.shape[1] > cfg.chunk_size * 2  # several chunks
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        out = ours(ids, trace=True)
        fast = ours(ids)
        emb = hf.backbone.embeddings(ids)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.logits, ref.logits, atol=ATOL, rtol=0)
    # we report [embeddings, layer 1, ..., layer N], all raw; transformers' convention changed between versions
    hs = out.trace.hidden_states
    assert len(hs) == len(ref.hidden_states) == cfg.n_layer + 1
    torch.testing.assert_close(hs[0], emb, atol=ATOL, rtol=0)
    raw, last = _transformers_layers(ref, emb)
    assert len(raw) >= cfg.n_layer - 1
    for a, b in zip(hs[1:], raw):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.norm(hs[-1]), last, atol=ATOL, rtol=0)


def _transformers_layers(ref, emb) -> tuple[list, Tensor]:
    """(the raw outputs of layers 1, 2, … that transformers reports, norm_f(the last layer's output)): 5.24 gives
    [layer 1, …, layer N, norm_f(layer N)], 5.25 [embeddings, layer 1, …, layer N − 1, norm_f(layer N)]."""
    hs = list(ref.hidden_states)
    first = 1 if hs[0].shape == emb.shape and torch.equal(hs[0], emb) else 0
    return hs[first:-1], hs[-1]


def test_delta_is_the_step_size_transformers_computes(mamba2):
    """ssm_delta: Δ = clamp(softplus(Δ_raw + dt_bias), limit) per head, from transformers' own modules,
    reported on each of the head's 16 channels."""
    ours, tok, hf = mamba2
    ids = _ids(tok)
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        deltas = ours(ids, trace=True).trace.ssm_delta
        x = hf.backbone.embeddings(ids)
        raw, _ = _transformers_layers(ref, x)
        for i, layer in enumerate(hf.backbone.layers):
            m = layer.mixer
            dt = m.in_proj(layer.norm(x))[..., -m.num_heads :]
            delta = F.softplus(dt + m.dt_bias).clamp(*m.time_step_limit)  # (b, T, H)
            assert deltas[i].shape == (2, ids.shape[1], 64)
            torch.testing.assert_close(deltas[i], delta.repeat_interleave(16, dim=-1), atol=ATOL, rtol=0)
            if i + 1 < len(hf.backbone.layers):
                x = raw[i]
    if ours.config.dt_limit_max is not None:  # the limit binds somewhere: the test would see a missing clamp
        assert any((d == ours.config.dt_limit_max).any() for d in deltas)


def test_greedy_generation_matches_transformers(mamba2):
    ours, tok, hf = mamba2
    ids = _ids(tok, "the cat sat on the")
    seq = ids
    with torch.no_grad():
        for _ in range(32):  # full forwards, no cache: the plainest reference (its chunks grow past chunk_size)
            seq = torch.cat([seq, hf(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    got = ours.generate(ids, max_new_tokens=32)
    assert got.shape == (2, ids.shape[1] + 32)
    assert got.tolist() == seq.tolist()


def test_every_tensor_maps_and_estimate_counts_transformers_parameters(tmp_path):
    for name, kw in VARIANTS.items():
        hf = make_hf_mamba2(tmp_path / name, **kw)
        ours = Mamba(mamba2_config(json.loads((tmp_path / name / "config.json").read_text()), "m"))
        mapped = {k for key, v in hf.state_dict().items() for k in hf_rename(key, v)}
        assert mapped == set(ours.state_dict())
        n_hf = sum(p.numel() for p in hf.parameters())  # a tied head counted once, as estimate does
        assert estimate(tmp_path / name)["params"] == n_hf == sum(p.numel() for p in ours.parameters())
        assert dict(parameter_breakdown(ours)).get("other", 0) == 0
        with torch.no_grad():  # the recurrent state: the conv's window over x·B·C and the (H, P, N) state, float32
            cache = ours(torch.tensor([[3, 4, 5]])).cache
        assert estimate(tmp_path / name, dtype="fp32")["state_bytes"] == sum(4 * (c.conv.numel() + c.ssm.numel())
                                                                              for c in cache)  # fmt: skip


# --------------------------------------------------------------------------- the SSD


def _ssd_inputs(b, T, H, P, G, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g)
    delta = F.softplus(torch.randn(b, T, H, generator=g) - 1.0)
    A = -torch.exp(torch.log(torch.arange(1, H + 1.0)) + 0.3 * torch.randn(H, generator=g))
    B, C = torch.randn(b, T, G, N, generator=g), torch.randn(b, T, G, N, generator=g)
    D = torch.randn(H, generator=g)
    return x, delta, A, B, C, D


@pytest.mark.parametrize("T, chunk, G", [(1, 8, 1), (7, 8, 1), (16, 8, 2), (23, 8, 2), (23, 5, 4), (40, 64, 1)])
def test_ssd_chunked_equals_sequential(T, chunk, G):
    args = _ssd_inputs(2, T, 4, 3, G, 5, seed=T + G)
    h0 = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(9))
    for init in (None, h0):
        y_ref, h_ref = ssd_sequential(*args, h0=init)
        y, h = ssd_chunked(*args, h0=init, chunk=chunk)
        assert y.shape == (2, T, 4, 3) and h.shape == (2, 4, 3, 5)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def test_ssd_is_stable_under_strong_decay():
    x, delta, A, B, C, D = _ssd_inputs(1, 90, 4, 3, 2, 5, seed=3)
    delta = delta * 40  # Δ·A down to about −1000 per step
    y_ref, h_ref = ssd_sequential(x, delta, A, B, C, D)
    y, h = ssd_chunked(x, delta, A, B, C, D, chunk=32)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)  # |y| up to ~50 here: float32 rounding
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-4)
    full = ssd_attention_full(delta.double(), A.double(), B.double(), C.double()).abs().mean(1)
    torch.testing.assert_close(ssd_attention(delta, A, B, C, max_bytes=1), full.float(), atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- hidden attention


def test_hidden_attention_reproduces_the_mixer(tiny):
    """Per head, y_t = Σ_s α[h,t,s] x_s + D_h x_t (the SSD matrix applied to x), gated, normed and projected,
    is the mixer's output; the trace's ssm_attention is mean over heads of |α|, zero above the diagonal;
    ssm_delta is each head's Δ on its channels."""
    ids = _rand_ids(19, b=2)
    T = ids.shape[1]
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        tr = tiny(ids, trace=True).trace
        for i, layer in enumerate(tiny.layers):
            m = layer.mixer
            h = layer.norm(tr.hidden_states[i])
            s = m.ssm_inputs(h)
            alpha = ssd_attention_full(s.delta.double(), m.A.double(), s.B.double(), s.C.double())  # (b, H, T, T)
            assert alpha.shape == (2, 4, T, T) and alpha[..., upper].abs().max() == 0
            x = s.u.double()  # (b, T, H, P)
            y = torch.einsum("bhts,bshp->bthp", alpha, x) + m.D.double()[:, None] * x
            out = m.out_proj(m.norm(y.reshape(2, T, -1).float(), s.z))
            mixer_out, _, _ = m(h)
            torch.testing.assert_close(out, mixer_out, atol=ATOL, rtol=0)
            torch.testing.assert_close(tr.hidden_states[i] + out, tr.hidden_states[i + 1], atol=ATOL, rtol=0)
            reported = tr.ssm_attention[i]
            torch.testing.assert_close(reported, alpha.abs().mean(1).float(), atol=1e-6, rtol=1e-4)
            assert reported[..., upper].abs().max() == 0 and reported[..., ~upper].min() > 0
            torch.testing.assert_close(tr.ssm_delta[i], s.delta.repeat_interleave(16, dim=-1))
            # blocked rows (one at a time here) give the same matrix
            blocked = ssd_attention(s.delta, m.A, s.B, s.C, max_bytes=1)
            torch.testing.assert_close(blocked, reported, atol=1e-7, rtol=1e-5)


def test_stepwise_state_equals_full_forward(tiny):
    """Prompt in one pass, then a few tokens at once, then one at a time, each continuing the carried conv
    (over x·B·C) and SSM state: the logits match a full forward at every position."""
    ids = _rand_ids(30, seed=6, b=2)
    with torch.no_grad():
        full = tiny(ids).logits
        out = tiny(ids[:, :5])
        got = [out.logits]
        out = tiny(ids[:, 5:11], state=out.cache)
        got.append(out.logits)
        state = out.cache
        for t in range(11, 30):
            out = tiny(ids[:, t : t + 1], state=state)
            state = out.cache
            got.append(out.logits)
    assert state[0].conv.shape == (2, 64 + 2 * 2 * 16, 4) and state[0].ssm.shape == (2, 4, 16, 16)
    torch.testing.assert_close(torch.cat(got, dim=1), full, atol=ATOL, rtol=0)


def test_special_parts_matter(tmp_path, monkeypatch):
    """Each of Mamba-2's own parts changes the output, so the parity above checks it: the scalar A per head,
    the grouped B/C, D per head, dt_bias, the Δ limit, the gated norm's groups and its gate-before-norm order."""
    hf = make_hf_mamba2(tmp_path / "m", **VARIANTS["groups2"])
    model, _ = models.load(tmp_path / "m")
    ids = _rand_ids(17)
    with torch.no_grad():
        base = model(ids).logits
        torch.testing.assert_close(base, hf(ids).logits, atol=ATOL, rtol=0)
    m = model.layers[0].mixer

    def changed(**edit) -> float:
        saved = {k: getattr(m, k) for k in edit}
        for k, v in edit.items():
            setattr(m, k, v)
        try:
            with torch.no_grad():
                return float((model(ids).logits - base).abs().max())
        finally:
            for k, v in saved.items():
                setattr(m, k, v)

    P = torch.nn.Parameter
    assert changed(A_log=P(m.A_log.flip(0))) > 1e-3  # A is per head: the heads' own decays
    assert changed(D=P(m.D.flip(0))) > 1e-3  # D per head
    assert changed(dt_bias=P(m.dt_bias.flip(0))) > 1e-3
    assert changed(dt_limit=(0.0, math.inf)) > 1e-3  # the limit binds in this variant
    with monkeypatch.context() as mp:  # every head reading the first group's B and C is not the same
        mp.setattr(ssm, "_heads", lambda t, H: t[:, :, :1].expand(-1, -1, H, -1))
        assert changed() > 1e-3
    norm = m.norm
    one_group = type(norm)(norm.weight.shape[0], 1, norm.eps)
    one_group.weight = norm.weight
    assert changed(norm=one_group) > 1e-3  # the norm's RMS is over each group, not all channels

    class NormBeforeGate(torch.nn.Module):  # the other order mamba_ssm offers (norm_before_gate=True)
        def forward(self, y, z):
            return norm(y, torch.full_like(z, 30.0)) * F.silu(z.float())  # SiLU(30) ≈ 30: a plain norm, then the gate

    assert changed(norm=NormBeforeGate()) > 1e-3


# --------------------------------------------------------------------------- scan_steps, ablation


def test_scan_steps_recompute_the_mamba2_mixer(tiny):
    ids = _rand_ids(20)
    with torch.no_grad():
        tr = tiny(ids, trace=True).trace
    for layer, token in [(0, 0), (1, 7), (1, 8), (0, 19)]:  # tokens on both sides of a chunk boundary (8)
        s = scan_steps(tiny, ids, layer, token)
        m = tiny.layers[layer].mixer
        with torch.inference_mode():
            x_hat = capture_input(tiny, m, ids)
            out, _, inputs = m(x_hat)
        assert s.version == 2 and s.head_delta.shape == (4,) and s.B_groups.shape == (2, 16)
        torch.testing.assert_close(s.output, out[0, token].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(s.head_delta, inputs.delta[0, token], atol=1e-6, rtol=0)
        torch.testing.assert_close(s.head_A_bar, torch.exp(s.head_delta * s.head_A), atol=1e-6, rtol=0)
        assert (s.head_A_bar > 0).all() and (s.head_A_bar < 1).all()
        # per channel: Ā is the head's scalar on every state; the update and the readout per channel
        torch.testing.assert_close(s.A_bar, s.head_A_bar.repeat_interleave(16)[:, None].expand(64, 16))
        torch.testing.assert_close(s.h, s.A_bar * s.h_prev + s.B_bar_u, atol=1e-6, rtol=0)
        group = torch.arange(64) // 32  # channels 0-31: heads 0-1, group 0
        torch.testing.assert_close(s.B_bar_u, (s.delta * s.u)[:, None] * s.B_groups[group], atol=1e-6, rtol=0)
        torch.testing.assert_close(s.readout, (s.h * s.C_groups[group]).sum(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(s.y, s.readout + s.head_D.repeat_interleave(16) * s.u, atol=1e-6, rtol=0)
        gated = (s.y * s.gate).view(2, 32)
        torch.testing.assert_close(s.norm_rms, gated.pow(2).mean(-1).add(m.norm.eps).sqrt(), atol=1e-6, rtol=0)
        torch.testing.assert_close(s.normed, m.norm(s.y[None], inputs.z[0, token][None])[0], atol=1e-5, rtol=0)
        # the hidden-attention row, computed without a traced pass, is the trace's row
        torch.testing.assert_close(s.hidden_attention, tr.ssm_attention[layer][0, token], atol=1e-6, rtol=1e-4)
        assert s.hidden_attention[token + 1 :].abs().sum() == 0
    assert scan_steps(tiny, ids, 0, 0).h_prev.abs().sum() == 0


def test_the_scan_figure_draws_mamba2_steps():
    """The step view's figure takes Mamba-2's per-channel fields as they are (one group: its B and C)."""
    from archplay.viz.steps import scan_figure

    model = Mamba(MambaConfig.mamba2_tiny(n_groups=1)).eval()
    s = scan_steps(model, _rand_ids(10), 1, 6)
    torch.testing.assert_close(s.B, s.B_groups[0])
    fig = scan_figure(s, [f"t{i}" for i in range(10)])
    data = {t.name: t for t in fig.data}
    ch = list(fig.layout.meta["channels"])
    np.testing.assert_allclose(np.asarray(data["h"].z), s.h[ch].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(data["A_bar"].z), s.A_bar[ch].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(data["B"].y, dtype=float), s.B.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(data["hidden attention"].y, dtype=float), s.hidden_attention[:7].numpy(),
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("version", [1, 2])
def test_scan_steps_run_one_forward_pass_and_match_the_trace_row(version, monkeypatch):
    torch.manual_seed(1)
    cfg = MambaConfig.mamba_tiny() if version == 1 else MambaConfig.mamba2_tiny()
    model = Mamba(cfg).eval()
    ids = _rand_ids(26)
    with torch.no_grad():
        rows = model(ids, trace=True).trace.ssm_attention
    calls = []
    forward = model.forward

    def spy(x, **kw):
        calls.append(kw.get("trace", False))
        return forward(x, **kw)

    monkeypatch.setattr(model, "forward", spy)
    for layer, token in [(0, 0), (1, 13), (1, 25)]:
        calls.clear()
        s = scan_steps(model, ids, layer, token)
        assert calls == [False]  # only capture_input's pass: no second, traced one
        torch.testing.assert_close(s.hidden_attention, rows[layer][0, token], atol=1e-6, rtol=1e-4)


def test_the_mamba1_row_is_the_definition():
    g = torch.Generator().manual_seed(4)
    T, Di, N = 30, 6, 5
    delta = F.softplus(torch.randn(1, T, Di, generator=g) - 1)
    A = -torch.exp(torch.randn(Di, N, generator=g))
    B, C = torch.randn(1, T, N, generator=g), torch.randn(1, T, N, generator=g)
    full = hidden_attention(delta, A, B, C)[0]
    for t in (0, 11, 29):
        torch.testing.assert_close(hidden_attention_row(delta[0], A, B[0], C[0], t), full[t], atol=1e-6, rtol=1e-4)
        small = hidden_attention_row(delta[0], A, B[0], C[0], t, max_bytes=1)  # one column at a time
        torch.testing.assert_close(small, full[t], atol=1e-6, rtol=1e-4)


def test_ablating_a_mamba2_mixer_passes_the_residual(tiny):
    ids = _rand_ids(12)
    with torch.no_grad():
        got = ablate(tiny, ids, mixers=[0]).logits
        x = tiny.embed_tokens(ids)  # layer 0 adds nothing; layer 1 as usual
        layer = tiny.layers[1]
        x = x + layer.mixer(layer.norm(x))[0]
        want = tiny.lm_head(tiny.norm(x))
        base = tiny(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - base).abs().max() > 1e-3


# --------------------------------------------------------------------------- card, anatomy, positions, config


def test_card_anatomy_and_positions_show_mamba2(tiny):
    rows = dict(ssm_rows(tiny.config))
    assert rows["heads × head dim"].startswith("4 × 16")
    assert rows["groups (B, C)"].startswith("2: every 2 heads share one B and one C")
    assert "scalar per head (A_log [4])" in rows["A"] and "chunks of 8" in rows["scan (SSD)"]
    assert "L ∘ C·Bᵀ" in rows["scan (SSD)"] and "dt_rank (R)" not in rows
    assert rows["d_conv (conv kernel)"] == "4, over 128 channels (x, B and C)"
    assert "Mamba-2" in dict(ssm_rows(MambaConfig.mamba2_tiny()))["mixer"]
    assert "Mamba-2" not in dict(ssm_rows(MambaConfig.mamba_tiny()))["mixer"]
    (stack,) = anatomy(tiny, _rand_ids(6))
    assert [p.kind for p in stack.block] == ["norm", "scan", "add"] and stack.block[1].view == "scan"
    assert "4 heads × 16" in stack.block[1].detail and "2 B/C groups" in stack.block[1].detail
    assert stack.contribution.shape == (2, 6)
    assert encoding(tiny, 8).kind == "none"
    breakdown = dict(parameter_breakdown(tiny))
    assert breakdown["mixer dt_bias (Mamba-2's Δ)"] == 2 * 4
    assert breakdown["mixer gated RMSNorm (Mamba-2)"] == 2 * 64


def test_config_round_trips_and_refuses_what_does_not_fit():
    cfg = MambaConfig.mamba2_tiny()
    assert (cfg.n_heads, cfg.conv_dim) == (4, 128)
    assert MambaConfig.from_dict(cfg.to_dict()) == cfg
    for kw, match in [({"head_dim": 24}, "multiple of head_dim 24"), ({"n_groups": 3}, "multiple of n_groups 3"),
                      ({"n_heads": 8}, "must equal d_inner"), ({"version": 3}, "version must be 1"),
                      ({"dt_limit_min": 0.5, "dt_limit_max": 0.1}, "Δ limits")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            MambaConfig.mamba2_tiny(**kw)


def test_unsupported_mamba2_checkpoints_are_refused_with_a_load_error(tmp_path):
    make_hf_mamba2(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    good = json.loads(path.read_text())
    assert good["time_step_limit"][1] == {"__float__": "Infinity"}  # how transformers writes ∞
    assert models.load(tmp_path / "m")[0].config.dt_limit_max is None
    for edit, match in [
        ({"num_heads": 5}, r"num_heads × head_dim \(5 × 16\) must equal expand × hidden_size \(64\)"),
        ({"n_groups": 3}, "n_groups must divide num_heads 4"),
        ({"hidden_act": "swoosh"}, "hidden_act 'swoosh' is not supported"),
        ({"architectures": ["Mamba2ForSequenceClassification"]}, "only Mamba2ForCausalLM"),
        ({"time_step_limit": "fast"}, "time_step_limit must be a pair"),
    ]:
        path.write_text(json.dumps({**good, **edit}))
        with pytest.raises(LoadError, match=match):
            models.load(tmp_path / "m")


def test_the_scan_figure_shows_each_channels_group_and_the_gated_norm():
    """Inside a step's scan figure for Mamba-2: each channel's B̄u hover uses its own group's Bₜ (before: group
    0's for every channel), the bars say whose they are, and the last column is what W_out reads (the gated
    RMSNorm's output, not y·SiLU(z))."""
    import numpy as np

    from archplay.models.analysis.mixers import scan_steps
    from archplay.viz.steps import scan_figure

    cfg = MambaConfig.mamba2_tiny()
    assert cfg.n_groups == 2
    torch.manual_seed(0)
    m = Mamba(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    s = scan_steps(m, ids, 0, 5)
    fig = scan_figure(s, [str(i) for i in range(9)])
    channels = fig.layout.meta["channels"]
    bu = next(t for t in fig.data if t.name == "B_bar_u")
    groups, heads, Di = s.B_groups.numpy(), len(s.head_delta), s.u.shape[0]
    seen = set()
    for i, d in enumerate(channels):
        g = (d // (Di // heads)) // (heads // len(groups))
        seen.add(g)
        assert f"× {groups[g][1]:.4g} ×" in bu.customdata[i][1]
    assert seen == {0, 1}
    shown = np.asarray(next(t for t in fig.data if t.name == "y_gated").z)[:, 0]
    np.testing.assert_allclose(shown, s.normed.numpy()[channels], rtol=1e-6)
    assert "norm(y·gate)" in fig.layout.xaxis6.ticktext[-1]
    assert any(a.text == "Bₜ<br>(group 0 of 2)" for a in fig.layout.annotations)
