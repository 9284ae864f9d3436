"""Issue 16's contracts: attention_steps recomputes the model's own numbers, ablate switches parts off
exactly, attribution ranks the input tokens; checked on tiny random models of every family, the
built-ins, and against transformers' own modules."""

from __future__ import annotations

import pytest
import torch
from test_contract import _tiny

from archplay import models
from archplay.models import ablate, attention_steps, attribution
from archplay.models.analysis.steps import attention_modules

ATOL = 1e-5
ATTENDING = ["gpt2-style", "llama-style", "sliding-window", "sinusoidal", "bert-style", "mixtral-style", "t5-style"]


def _inputs(model, T: int = 9):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (1, T), generator=g)
    kw = {}
    if model.config.family == "encoder-decoder":
        kw["decoder_input_ids"] = torch.randint(3, model.config.vocab_size, (1, 6), generator=g)
    return ids, kw


def _trace_row(out, kind: str, layer: int, head: int, query: int):
    t = out.trace
    maps = {"self": t.attentions, "decoder": t.decoder_attentions, "cross": t.cross_attentions}[kind]
    return maps[layer][0, head, query]


def _kinds(model):
    return ["self", "decoder", "cross"] if model.config.family == "encoder-decoder" else ["self"]


@pytest.mark.parametrize("name", [*ATTENDING, "builtin-gpt", "builtin-t5"])
def test_the_steps_recompute_the_models_own_attention(name):
    model = _tiny(name)
    ids, kw = _inputs(model)
    with torch.inference_mode():
        out = model(ids, trace=True, **kw)
    for kind in _kinds(model):
        n_layers = len(attention_modules(model, kind))
        T = kw["decoder_input_ids"].shape[1] if kind != "self" else ids.shape[1]
        for layer, head, query in [(0, 0, T - 1), (n_layers - 1, 1, T // 2), (n_layers - 1, 3, 0)]:
            s = attention_steps(model, ids, layer, head, query, kind=kind, **kw)
            ref = _trace_row(out, kind, layer, head, query).float()
            torch.testing.assert_close(s.weights, ref, atol=ATOL, rtol=0)  # the trace's row
            z = (s.scores * s.scale + s.bias).masked_fill(~s.mask, float("-inf"))
            torch.testing.assert_close(torch.softmax(z, -1), s.weights, atol=ATOL, rtol=0)
            torch.testing.assert_close(s.scores, s.k @ s.q, atol=ATOL, rtol=0)  # unscaled q·k
            torch.testing.assert_close(s.out, s.weights @ s.v, atol=ATOL, rtol=0)
            assert (s.weights[~s.mask] == 0).all() and s.mask.any()
            if kind == "decoder" or model.config.family in ("decoder", "moe"):  # causal: no key after the query
                assert not s.mask[query + 1 :].any()
            assert s.head in s.group and s.kv_head == s.group[0] // len(s.group)


def test_the_heads_shares_add_up_to_the_attention_output():
    model = _tiny("llama-style")  # grouped-query: 4 query heads on 2 key/value heads, RoPE
    ids, _ = _inputs(model)
    parts = [attention_steps(model, ids, 1, h, 5) for h in range(4)]
    total = sum(p.head_output for p in parts)  # no W_o bias in llama
    torch.testing.assert_close(total, parts[0].attention_output, atol=ATOL, rtol=0)
    assert parts[0].group == [0, 1] and parts[3].group == [2, 3] and parts[3].kv_head == 1
    with torch.inference_mode():
        hs = model(ids, trace=True).trace.hidden_states
    torch.testing.assert_close(parts[0].residual_in, hs[1][0, 5], atol=ATOL, rtol=0)
    torch.testing.assert_close(parts[0].residual_out, hs[1][0, 5] + parts[0].attention_output, atol=ATOL, rtol=0)
    s = parts[0]  # RoPE: before and after the rotation differ, and rotation keeps each pair's length
    assert s.q_before is not None and not torch.allclose(s.q_before, s.q)
    torch.testing.assert_close(s.q.norm(), s.q_before.norm(), atol=1e-4, rtol=0)
    assert _tiny("gpt2-style") and attention_steps(_tiny("gpt2-style"), ids, 0, 0, 3).q_before is None


def test_position_terms_show_as_the_bias():
    t5 = _tiny("t5-style")
    ids, kw = _inputs(t5)
    s = attention_steps(t5, ids, 0, 1, 4, **kw)
    assert s.scale == 1.0 and s.bias.abs().sum() > 0  # T5: no 1/√d, relative buckets as a bias
    assert attention_steps(t5, ids, 0, 1, 2, kind="cross", **kw).bias.abs().sum() == 0  # cross-attention has none
    from archplay.models.architectures.decoder import Decoder, DecoderConfig

    torch.manual_seed(0)
    alibi = Decoder(DecoderConfig.gpt2_tiny(positions="alibi"))
    s = attention_steps(alibi, ids, 0, 0, 6)
    slope = -(s.bias[5] - s.bias[6])  # ALiBi: linear in distance, the head's slope
    torch.testing.assert_close(s.bias[:7], slope * (torch.arange(7.0) - 6), atol=1e-5, rtol=0)


def test_steps_refuse_what_the_model_lacks():
    ids = torch.tensor([[3, 4, 5]])
    with pytest.raises(ValueError, match="no attention"):
        attention_steps(_tiny("mamba-style"), ids, 0, 0, 0)
    gpt = _tiny("gpt2-style")
    for args, match in [((5, 0, 0), "layer 5"), ((0, 9, 0), "head 9"), ((0, 0, 3), "query 3"), ((0, -1, 0), "head -1")]:
        with pytest.raises(ValueError, match=match):
            attention_steps(gpt, ids, *args)
    with pytest.raises(ValueError, match="encoder-decoder"):
        attention_steps(gpt, ids, 0, 0, 0, kind="cross")


# --------------------------------------------------------------------------- ablation


def test_ablating_a_head_zeroes_its_slice_before_the_output_projection():
    model = _tiny("llama-style")
    ids, _ = _inputs(model)
    with torch.inference_mode():
        base = model(ids).logits
        off = ablate(model, ids, heads=[(1, 2)]).logits
        # by hand: the same forward with the head's slice of o_proj's input zeroed
        Dh = model.config.head_dim

        def zero(mod, args):
            x = args[0].clone()
            x[..., 2 * Dh : 3 * Dh] = 0
            return (x,)

        h = model.layers[1].attn.o_proj.register_forward_pre_hook(zero)
        try:
            expected = model(ids).logits
        finally:
            h.remove()
        again = model(ids).logits  # the hooks are dormant outside ablate()
    torch.testing.assert_close(off, expected, atol=0, rtol=0)
    assert (off - base).abs().max() > 1e-4
    torch.testing.assert_close(again, base, atol=0, rtol=0)


def test_ablating_experts_routes_among_the_rest():
    model = _tiny("mixtral-style")  # 3 layers, 4 experts, top-2
    ids, _ = _inputs(model)
    with torch.inference_mode():
        out = ablate(model, ids, experts=[(0, 1), (0, 3), (2, 0)], trace=True)
        base = model(ids, trace=True)
    chosen0, chosen2 = out.trace.expert_indices[0], out.trace.expert_indices[2]
    assert set(chosen0.unique().tolist()) == {0, 2} and 0 not in chosen2.unique().tolist()
    torch.testing.assert_close(out.trace.router_logits[0], base.trace.router_logits[0], atol=0, rtol=0)
    assert (out.logits - base.logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match="at most 2"):
        ablate(model, ids, experts=[(0, 0), (0, 1), (0, 2)])
    with pytest.raises(ValueError, match="mixture of experts"):
        ablate(_tiny("gpt2-style"), ids, experts=[(0, 0)])


def test_ablating_tokens_and_scan_layers():
    gpt = _tiny("gpt2-style")
    ids, _ = _inputs(gpt)
    with torch.inference_mode():
        base = gpt(ids).logits
        off = ablate(gpt, ids, tokens=[4]).logits
    torch.testing.assert_close(off[:, :4], base[:, :4], atol=0, rtol=0)  # causal: earlier positions unchanged
    assert (off[:, 4:] - base[:, 4:]).abs().max() > 1e-4
    mamba = _tiny("mamba-style")
    with torch.inference_mode():
        out = ablate(mamba, ids, mixers=[0], trace=True)
    torch.testing.assert_close(out.trace.hidden_states[1], out.trace.hidden_states[0], atol=0, rtol=0)
    t5 = _tiny("t5-style")
    ids5, kw = _inputs(t5)
    with torch.inference_mode():
        enc = ablate(t5, ids5, tokens=[0, 2], trace=True, **kw).trace.hidden_states[0]
    assert enc[0, [0, 2]].abs().max() == 0 and enc[0, 1].abs().max() > 0
    for kw_bad, match in [({"tokens": [9]}, "token 9"), ({"heads": [(0, 7)]}, "head 7"), ({"mixers": [0]}, "Mamba")]:
        with pytest.raises(ValueError, match=match):
            ablate(gpt, ids, **kw_bad)


def test_attribution_by_gradient_and_by_knocking_out():
    model, tok = models.load("gpt")
    ids = torch.tensor([tok.encode("Mia has a red ball. She throws the")])
    T = ids.shape[1]
    target = tok.encode(" ball")[-1]
    with torch.inference_mode():
        logits = model(ids).logits[0, -1]
    a = attribution(model, ids, T - 1, target)
    assert a["logprob"] == pytest.approx(float(torch.log_softmax(logits.float(), -1)[target]), abs=1e-5)
    assert a["grad_x_input"].shape == a["knock_out"].shape == (T,)
    for i in (2, T - 3):  # the knock-out column is ablate's own difference
        with torch.inference_mode():
            got = torch.log_softmax(ablate(model, ids, tokens=[i]).logits[0, -1].float(), -1)[target]
        assert a["knock_out"][i] == pytest.approx(float(got) - a["logprob"], abs=1e-5)
    words = tok.tokens(ids[0].tolist())
    ball = next(i for i, w in enumerate(words) if "ball" in w)
    assert a["knock_out"][ball] < 0  # without "ball" the model is less sure the thrown thing is the ball


# --------------------------------------------------------------------------- against transformers


def _capture_hf(hf, kind: str):
    """Register an attention function that records transformers' own query/key/value (after RoPE)."""
    import importlib

    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    eager_attention_forward = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}").eager_attention_forward

    seen: list = []

    def capture(module, query, key, value, attention_mask, **kw):
        seen.append((query.detach(), key.detach(), value.detach()))
        return eager_attention_forward(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("archplay_capture", capture)
    AttentionMaskInterface.register("archplay_capture", eager_mask)  # the causal mask eager attention gets
    hf.set_attn_implementation("archplay_capture")
    return seen


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_q_k_v_and_head_ablation_equal_transformers(hf_folder, kind):
    folder, hf = hf_folder(kind)
    ours, tok = models.load(folder)
    ids = torch.tensor([tok.encode("mia has a red ball and the cat sat on the mat")])
    seen = _capture_hf(hf, kind)
    with torch.no_grad():
        reference = hf(ids).logits
    torch.testing.assert_close(ours(ids).logits, reference, atol=1e-4, rtol=0)  # the capture changed nothing
    layer, head, query = 1, 3, ids.shape[1] - 2
    s = attention_steps(ours, ids, layer, head, query)
    q, k, v = seen[layer]
    kv = head // (q.shape[1] // k.shape[1])
    torch.testing.assert_close(s.q, q[0, head, query].float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(s.k, k[0, kv].float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(s.v, v[0, kv].float(), atol=1e-4, rtol=0)
    # a head switched off: transformers' model with that head's slice zeroed before the output projection
    attn = hf.model.layers[layer].self_attn.o_proj if kind == "llama" else hf.transformer.h[layer].attn.c_proj
    Dh = ours.config.head_dim

    def zero(mod, args):
        x = args[0].clone()
        x[..., head * Dh : (head + 1) * Dh] = 0
        return (x,)

    h = attn.register_forward_pre_hook(zero)
    try:
        with torch.no_grad():
            expected = hf(ids).logits
    finally:
        h.remove()
    with torch.inference_mode():
        got = ablate(ours, ids, heads=[(layer, head)]).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["mamba-style", "t5-style", "mixtral-style"])
def test_the_batched_knock_outs_equal_one_ablation_each(name):
    model = _tiny(name)
    ids, kw = _inputs(model, T=7)
    a = attribution(model, ids, 2, 5, **kw)
    for i in (0, 3, 6):
        with torch.inference_mode():
            got = torch.log_softmax(ablate(model, ids, tokens=[i], **kw).logits[0, 2].float(), -1)[5]
        assert float(a["knock_out"][i]) == pytest.approx(float(got) - a["logprob"], abs=1e-4)
