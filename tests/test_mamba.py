"""Mamba (state-space family): parity with transformers, the scans, hidden attention, recurrent generation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize, word_tokenizer

from archplay import models
from archplay.models import LoadError
from archplay.models.architectures.ssm import (
    Mamba,
    MambaConfig,
    compiled_scan,
    hidden_attention,
    hidden_attention_full,
    selective_scan_chunked,
    selective_scan_segmented,
    selective_scan_sequential,
)
from archplay.models.checkpoints.mamba import hf_config, hf_rename

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"
VARIANTS = {
    "default": {},  # tied head, no in/out biases, conv bias, dt_rank auto (2), N = 16
    "biases-untied": {"use_bias": True, "use_conv_bias": False, "tie_word_embeddings": False,
                      "time_step_rank": 3, "state_size": 8},  # fmt: skip
}


def make_hf_mamba(folder, seed: int = 0, **overrides):
    """A tiny random MambaForCausalLM saved with a word tokenizer; returns the HF model."""
    import transformers as T

    kw = dict(vocab_size=99, hidden_size=32, state_size=16, num_hidden_layers=2, expand=2, conv_kernel=4,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)  # fmt: skip
    model = T.MambaForCausalLM(T.MambaConfig(**{**kw, **overrides}))
    randomize(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # keep the SSM sane: S4D-real A (plus noise), Δ around 1e-2 .. 0.5
        for layer in model.backbone.layers:
            m = layer.mixer
            Di, N = m.A_log.shape
            m.A_log.copy_(torch.log(torch.arange(1, N + 1.0)).expand(Di, N) + 0.1 * torch.randn(Di, N, generator=gen))
            dt = torch.exp(torch.rand(Di, generator=gen) * (math.log(0.5) - math.log(0.01)) + math.log(0.01))
            m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹
    model.eval()
    model.save_pretrained(folder)
    word_tokenizer("decoder").save_pretrained(folder)
    return model


@pytest.fixture(params=list(VARIANTS))
def mamba(tmp_path, request):
    hf = make_hf_mamba(tmp_path / "mamba", **VARIANTS[request.param])
    ours, tok = models.load(tmp_path / "mamba")
    return ours, tok, hf


@pytest.fixture
def tiny(tmp_path):
    make_hf_mamba(tmp_path / "mamba")
    ours, tok = models.load(tmp_path / "mamba")
    return ours, tok


def _ids(tok, text=PROMPT, batch=2):
    ids = tok.encode(text)
    return torch.tensor([ids, ids[::-1]][:batch])


# --------------------------------------------------------------------------- parity with transformers


def test_parity_with_transformers(mamba):
    ours, tok, hf = mamba
    cfg = ours.config
    assert cfg.family == "ssm" and cfg.d_inner == 64 and cfg.n_layer == 2
    assert cfg.dt_rank == hf.config.time_step_rank and cfg.d_state == hf.config.state_size
    ids = _ids(tok)
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        out = ours(ids, trace=True)
        fast = ours(ids)
        emb = hf.backbone.embeddings(ids)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.logits, ref.logits, atol=ATOL, rtol=0)
    # transformers reports [layer 1, ..., layer N, norm_f(layer N)], without the embeddings;
    # we report [embeddings, layer 1, ..., layer N], all raw.
    hs = out.trace.hidden_states
    assert len(hs) == len(ref.hidden_states) == cfg.n_layer + 1
    torch.testing.assert_close(hs[0], emb, atol=ATOL, rtol=0)
    for a, b in zip(hs[1:], ref.hidden_states[:-1], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.norm(hs[-1]), ref.hidden_states[-1], atol=ATOL, rtol=0)


def test_delta_is_the_step_size_transformers_computes(mamba):
    """ssm_delta per layer equals Δ = softplus(dt_proj(Δ_low)) computed with transformers' own modules."""
    ours, tok, hf = mamba
    ids = _ids(tok)
    T = ids.shape[1]
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        deltas = ours(ids, trace=True).trace.ssm_delta
        x = hf.backbone.embeddings(ids)
        for i, layer in enumerate(hf.backbone.layers):
            m = layer.mixer
            xs, _gate = m.in_proj(layer.norm(x)).transpose(1, 2).chunk(2, dim=1)  # (b, Di, T)
            xs = m.act(m.conv1d(xs)[..., :T]).transpose(1, 2)  # HF pads both sides and keeps the first T
            dt, _, _ = torch.split(m.x_proj(xs), [m.time_step_rank, m.ssm_state_size, m.ssm_state_size], dim=-1)
            delta = F.softplus(m.dt_proj(dt))  # (b, T, Di)
            assert deltas[i].shape == (2, T, ours.config.d_inner)
            torch.testing.assert_close(deltas[i], delta, atol=ATOL, rtol=0)
            x = ref.hidden_states[i]


def test_greedy_generation_matches_reference_loop(mamba):
    ours, tok, hf = mamba
    ids = _ids(tok, "the cat sat on the")
    seq = ids
    with torch.no_grad():
        for _ in range(32):  # full forwards, no cache: the plainest reference
            seq = torch.cat([seq, hf(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    got = ours.generate(ids, max_new_tokens=32)
    assert got.shape == (2, ids.shape[1] + 32)
    assert got.tolist() == seq.tolist()


# --------------------------------------------------------------------------- the scans


def _scan_inputs(b, T, Di, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, T, Di, generator=g)
    delta = F.softplus(torch.randn(b, T, Di, generator=g) - 1.0)
    A = -torch.exp(torch.log(torch.arange(1, N + 1.0)).expand(Di, N) + 0.3 * torch.randn(Di, N, generator=g))
    B, C = torch.randn(b, T, N, generator=g), torch.randn(b, T, N, generator=g)
    D = torch.randn(Di, generator=g)
    return u, delta, A, B, C, D


@pytest.mark.parametrize("T", [1, 2, 7, 31, 32, 33, 100, 257])
@pytest.mark.parametrize("chunk", [16, 32, 7])
def test_chunked_scan_equals_sequential(T, chunk):
    args = _scan_inputs(2, T, 12, 5, seed=T)
    h0 = torch.randn(2, 12, 5, generator=torch.Generator().manual_seed(9))
    for init in (None, h0):
        y_ref, h_ref = selective_scan_sequential(*args, h0=init)
        y, h = selective_scan_chunked(*args, h0=init, chunk=chunk)
        assert y.shape == (2, T, 12) and h.shape == (2, 12, 5)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T, segment", [(100, 32), (64, 64), (65, 64), (7, 3)])
def test_segmented_scan_equals_sequential(T, segment):
    args = _scan_inputs(2, T, 12, 5, seed=T + segment)
    h0 = torch.randn(2, 12, 5, generator=torch.Generator().manual_seed(3))
    y_ref, h_ref = selective_scan_sequential(*args, h0=h0)
    y, h = selective_scan_segmented(*args, h0=h0, segment=segment, chunk=8)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def test_chunked_scan_is_stable_under_strong_decay():
    """Large Δ·A (the state forgets within a step or two) must not overflow the chunked scan."""
    u, delta, A, B, C, D = _scan_inputs(1, 150, 8, 16, seed=3)
    delta = delta * 20  # Δ·A down to about −1000 per step
    y_ref, h_ref = selective_scan_sequential(u, delta, A, B, C, D)
    y, h = selective_scan_chunked(u, delta, A, B, C, D, chunk=64)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def test_compiled_scan_equals_sequential_with_gradients():
    """Training's compiled scan: the same outputs, final state and gradients as the reference."""
    args = [a.requires_grad_() for a in _scan_inputs(2, 40, 12, 5, seed=11)]
    y_ref, h_ref = selective_scan_sequential(*args)
    grads_ref = torch.autograd.grad((y_ref.square().sum() + h_ref.sum()), args)
    y, h = compiled_scan()(*args)
    grads = torch.autograd.grad((y.square().sum() + h.sum()), args)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


def test_use_scan_routes_the_fast_path_and_resets(tiny):
    ours, _ = tiny
    calls = []

    def counting_scan(*a, **kw):
        calls.append(1)
        return selective_scan_chunked(*a, **kw)

    ids = torch.randint(0, 99, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = ours(ids).logits
        ours.use_scan(counting_scan)
        try:
            routed = ours(ids).logits
        finally:
            ours.use_scan(None)
        ours(ids)
    assert len(calls) == ours.config.n_layer  # once per layer while set, never after the reset
    torch.testing.assert_close(routed, before)


def test_traced_logits_equal_untraced(tiny):
    ours, _ = tiny
    ids = torch.randint(0, 99, (2, 75), generator=torch.Generator().manual_seed(4))  # several chunks
    with torch.no_grad():
        traced = ours(ids, trace=True)
        fast = ours(ids)
    assert fast.trace is None
    torch.testing.assert_close(fast.logits, traced.logits, atol=1e-5, rtol=0)
    tr = traced.trace
    assert tr.attentions is None
    for name in ("decoder_hidden_states", "decoder_attentions", "cross_attentions", "router_logits", "expert_indices"):
        assert getattr(tr, name) is None, name
    assert len(tr.ssm_attention) == len(tr.ssm_delta) == ours.config.n_layer
    assert all(d.shape == (2, 75, 64) and (d > 0).all() for d in tr.ssm_delta)
    assert all(a.shape == (2, 75, 75) for a in tr.ssm_attention)


# --------------------------------------------------------------------------- hidden attention


def test_hidden_attention_reproduces_the_mixer(tiny):
    """y_t[d] = Σ_c α[d,t,c] u_c[d] + D u_t, gated and projected, is the mixer's output; the
    trace's ssm_attention is mean_d |α| of that same α, and zero above the diagonal."""
    ours, tok = tiny
    ids = _ids(tok)
    T = ids.shape[1]
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        tr = ours(ids, trace=True).trace
        for i, layer in enumerate(ours.layers):
            m = layer.mixer
            h = layer.norm(tr.hidden_states[i])
            s = m.ssm_inputs(h)
            alpha = hidden_attention_full(s.delta.double(), m.A.double(), s.B.double(), s.C.double())  # (b, Di, T, T)
            assert alpha.shape == (2, 64, T, T)
            assert alpha[..., upper].abs().max() == 0
            y = torch.einsum("bdtc,bcd->btd", alpha, s.u.double()) + m.D.double() * s.u.double()
            out = m.out_proj((y * F.silu(s.z.double())).float())
            mixer_out, _, _ = m(h)
            torch.testing.assert_close(out, mixer_out, atol=ATOL, rtol=0)
            torch.testing.assert_close(tr.hidden_states[i] + out, tr.hidden_states[i + 1], atol=ATOL, rtol=0)
            reported = tr.ssm_attention[i]
            torch.testing.assert_close(reported, alpha.abs().mean(1).float(), atol=1e-6, rtol=1e-4)
            assert reported[..., upper].abs().max() == 0
            assert reported[..., ~upper].min() > 0  # every token reaches every earlier one


@pytest.mark.parametrize("T", [1, 9, 50])
def test_blocked_hidden_attention_equals_definition(T):
    """Row blocks and channel groups (forced small here) give mean_d |α| of the full computation."""
    _, delta, A, B, C, _ = _scan_inputs(2, T, 10, 6, seed=T)
    full = hidden_attention_full(delta.double(), A.double(), B.double(), C.double()).abs().mean(1)
    for block, max_bytes in [(64, 2**30), (8, 1), (7, 200_000)]:  # one block; 1 channel at a time; a few
        got = hidden_attention(delta, A, B, C, block=block, max_bytes=max_bytes)
        assert got.shape == (2, T, T)
        torch.testing.assert_close(got, full.float(), atol=1e-6, rtol=1e-4)


def test_blocked_hidden_attention_is_stable_under_strong_decay():
    """Σ Δ·A reaches about −20000 over the sequence; the factorised blocks must not overflow."""
    _, delta, A, B, C, _ = _scan_inputs(1, 120, 6, 16, seed=5)
    delta = delta * 20
    full = hidden_attention_full(delta.double(), A.double(), B.double(), C.double()).abs().mean(1)
    got = hidden_attention(delta, A, B, C, block=16)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, full.float(), atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- recurrent generation


def test_stepwise_state_equals_full_forward(tiny):
    """Prompt in one pass, then a few tokens at once, then one at a time, each continuing the
    carried conv and SSM state: the logits match a full forward at every position."""
    ours, _ = tiny
    ids = torch.randint(0, 99, (2, 40), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = ours(ids).logits  # (2, 40, V)
        out = ours(ids[:, :5])
        got = [out.logits]
        out = ours(ids[:, 5:11], state=out.cache)  # several tokens with a state: the conv window spans calls
        got.append(out.logits)
        state = out.cache
        for t in range(11, 40):
            out = ours(ids[:, t : t + 1], state=state)
            state = out.cache
            got.append(out.logits)
    assert state[0].conv.shape == (2, 64, 4) and state[0].ssm.shape == (2, 64, 16)
    torch.testing.assert_close(torch.cat(got, dim=1), full, atol=ATOL, rtol=0)


def test_generation_runs_the_prefix_once(tiny, monkeypatch):
    ours, tok = tiny
    ids = _ids(tok, "the cat sat on the")
    seen = []
    forward = ours.forward

    def spy(x, **kw):
        seen.append((x.shape[1], kw.get("state") is None))
        return forward(x, **kw)

    monkeypatch.setattr(ours, "forward", spy)
    ours.generate(ids, max_new_tokens=6)
    assert seen == [(ids.shape[1], True)] + [(1, False)] * 5


def test_generate_stream_equals_generate(tiny):
    ours, tok = tiny
    ids = _ids(tok, "the cat sat on the", batch=1)
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    one = ours.generate(ids, **kw)
    streamed = list(ours.generate_stream(ids, **kw))
    assert [t for t, _ in streamed] == one[0, ids.shape[1] :].tolist()
    assert all(0 < p <= 1 for _, p in streamed)
    assert torch.equal(ours.generate(ids, **kw), one)  # the same seed, the same sample
    assert not torch.equal(ours.generate(ids, **{**kw, "seed": 4, "temperature": 5.0}), one)
    greedy = ours.generate(ids, max_new_tokens=12)
    assert [t for t, _ in ours.generate_stream(ids, max_new_tokens=12)] == greedy[0, ids.shape[1] :].tolist()


def test_generation_stops_at_eos(tiny):
    ours, tok = tiny
    ids = _ids(tok, "the cat sat on the", batch=1)
    first = int(ours.generate(ids, max_new_tokens=1)[0, -1])
    assert ours.generate(ids, max_new_tokens=10, eos_token_id=first).tolist() == [ids[0].tolist() + [first]]


# --------------------------------------------------------------------------- config and conversion


def test_config_derives_rejects_and_round_trips():
    cfg = MambaConfig.mamba_tiny()
    assert (cfg.d_inner, cfg.dt_rank, cfg.family) == (64, 2, "ssm")
    assert MambaConfig.mamba_tiny(d_model=40, expand=3).d_inner == 120
    assert MambaConfig.mamba_tiny(d_model=40).dt_rank == 3  # ceil(40 / 16)
    assert MambaConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown MambaConfig keys"):
        MambaConfig.from_dict({**cfg.to_dict(), "n_head": 4})
    with pytest.raises(ValueError, match="MambaConfig: dt_rank must be a whole number of at least 1, got 0"):
        MambaConfig.mamba_tiny(dt_rank=0)
    torch.manual_seed(0)
    model = Mamba(cfg).eval()  # a fresh random model is well-behaved: finite, traced == untraced
    ids = torch.randint(0, 99, (1, 40))
    with torch.no_grad():
        a, b = model(ids, trace=True), model(ids)
    assert torch.isfinite(a.logits).all()
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)


def test_hf_config_conversion_and_errors():
    base = {"model_type": "mamba", "vocab_size": 99, "hidden_size": 48, "num_hidden_layers": 3, "state_size": 8,
            "expand": 2, "conv_kernel": 3, "time_step_rank": "auto", "use_bias": True, "use_conv_bias": False,
            "residual_in_fp32": True, "rescale_prenorm_residual": True, "tie_word_embeddings": False,
            "eos_token_id": [0, 5]}  # fmt: skip
    cfg = hf_config(base, "m")
    assert (cfg.d_model, cfg.n_layer, cfg.d_state, cfg.d_conv, cfg.d_inner, cfg.dt_rank) == (48, 3, 8, 3, 96, 3)
    assert cfg.bias and not cfg.conv_bias and not cfg.tie_embeddings and cfg.eos_token_id == 0
    assert hf_config({**base, "intermediate_size": 100}, "m").d_inner == 100  # transformers honours it too
    assert hf_config({**base, "time_step_rank": 7}, "m").dt_rank == 7
    with pytest.raises(ValueError, match="hidden_act 'swoosh'"):
        hf_config({**base, "hidden_act": "swoosh"}, "m")
    with pytest.raises(ValueError, match="time_step_rank"):
        hf_config({**base, "time_step_rank": "big"}, "m")
    with pytest.raises(ValueError, match="not supported"):
        hf_config({**base, "architectures": ["MambaForSequenceClassification"]}, "m")


def test_unsupported_checkpoint_is_refused_with_a_load_error(tmp_path):
    import json

    make_hf_mamba(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hidden_act": "swoosh"}))
    with pytest.raises(LoadError, match="hidden_act"):
        models.load(tmp_path / "m")


def test_hf_names_map_onto_ours():
    t = torch.zeros(1)
    assert list(hf_rename("backbone.embeddings.weight", t)) == ["embed_tokens.weight"]
    assert list(hf_rename("backbone.embedding.weight", t)) == ["embed_tokens.weight"]  # older checkpoints
    assert list(hf_rename("backbone.norm_f.weight", t)) == ["norm.weight"]
    assert list(hf_rename("backbone.layers.3.norm.weight", t)) == ["layers.3.norm.weight"]
    assert list(hf_rename("backbone.layers.0.mixer.A_log", t)) == ["layers.0.mixer.A_log"]
    assert list(hf_rename("lm_head.weight", t)) == ["lm_head.weight"]
    # Every parameter of our model is named by some tensor of a transformers checkpoint.
    import transformers as T

    hf = T.MambaForCausalLM(T.MambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, use_bias=True,
                                          tie_word_embeddings=False))  # fmt: skip
    ours = Mamba(hf_config(hf.config.to_dict(), "m"))
    mapped = {k for name, v in hf.state_dict().items() for k in hf_rename(name, v)}
    assert mapped == set(ours.state_dict())
