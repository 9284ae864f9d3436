"""Issue 17, DeepSeek-V3 (``deepseek_v3``): multi-head latent attention and its sigmoid, group-limited router.

Parity with transformers' DeepseekV3ForCausalLM on small random configs (logits traced and untraced, every
attention map, hidden states, router logits, the experts chosen, 32 greedy tokens); each special part
matters; the KV cache holds the compressed latent; what is refused says why; the card, the estimate,
attention step by step and the gate step by step describe latent attention and the sigmoid router exactly.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import hf_routed, make_hf_model

from archplay import models
from archplay.models import registry
from archplay.models.analysis import card
from archplay.models.analysis.estimate import estimate
from archplay.models.analysis.interventions import ablate
from archplay.models.analysis.mixers import gate_steps
from archplay.models.analysis.steps import attention_steps
from archplay.models.architectures.moe import MoEConfig
from archplay.models.checkpoints.convert import LoadError

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"

# conftest's config: q through a low-rank path, interleaved RoPE, 4 groups of 2 experts (2 kept), 1 dense layer
PLAIN = dict(q_lora_rank=None, rope_interleave=False, n_group=1, topk_group=1, norm_topk_prob=False,
             v_head_dim=10, attention_bias=True, routed_scaling_factor=1.5, n_shared_experts=2)  # fmt: skip


def _load(tmp_path, seed=0, **overrides):
    """A random transformers model (its correction bias random too, so it matters) and ours, from one folder."""
    folder = tmp_path / f"deepseek{seed}"
    hf = make_hf_model("deepseek_v3", folder, seed=seed, **overrides)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
    hf.save_pretrained(folder)
    ours, tok = models.load(folder)
    return ours, tok, hf, folder


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    """conftest's config, loaded once for the tests that only read it (or restore what they change)."""
    return _load(tmp_path_factory.mktemp("deepseek"))


def _hf_choices(hf, ids):
    """transformers' outputs, and its router's (logits, top-k indices) per MoE layer, hooked on its gates."""
    gates = [layer.mlp.gate for layer in hf.model.layers if hasattr(layer.mlp, "gate")]
    ref, got = hf_routed(hf, ids, gates, output_router_logits=True)
    return ref, [(o[0], o[2]) for o in got]


@pytest.mark.parametrize("overrides", [{}, PLAIN], ids=["low-rank-q-groups", "plain-q-no-groups"])
def test_parity_with_transformers(tmp_path, deepseek, overrides):
    ours, tok, hf, _ = _load(tmp_path, **overrides) if overrides else deepseek
    cfg = ours.config
    assert registry.checkpoint("deepseek_v3")[0].name == "moe" and cfg.family == "moe"
    assert cfg.kv_lora_rank == 12 and cfg.q_lora_rank == overrides.get("q_lora_rank", 20)
    assert cfg.moe_layers == [False, True, True] and cfg.router_score == "sigmoid"
    ids = torch.tensor([tok.encode(PROMPT)])
    ref, choices = _hf_choices(hf, ids)
    with torch.no_grad():
        out = ours(ids, trace=True)
        fast = ours(ids)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.logits, ref.logits, atol=ATOL, rtol=0)
    assert len(out.trace.attentions) == len(ref.attentions) == 3
    for a, b in zip(out.trace.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    for a, b in zip(out.trace.hidden_states[:-1], ref.hidden_states[:-1], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.norm(out.trace.hidden_states[-1]), ref.hidden_states[-1], atol=ATOL, rtol=0)
    routed = [r for r in ref.router_logits if r is not None]
    assert len(out.trace.router_logits) == len(routed) == len(choices) == 2
    for ours_logits, ours_idx, hf_logits, (_, hf_idx) in zip(out.trace.router_logits, out.trace.expert_indices,
                                                             routed, choices, strict=True):  # fmt: skip
        torch.testing.assert_close(ours_logits.reshape(hf_logits.shape), hf_logits, atol=ATOL, rtol=0)
        assert ours_idx.reshape(hf_idx.shape).sort(-1).values.tolist() == hf_idx.sort(-1).values.tolist()
    prompt = torch.tensor([tok.encode("the cat sat on the")])
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0)
    assert ours.generate(prompt, max_new_tokens=32).tolist() == expected.tolist()


@torch.no_grad()
def test_each_special_part_matters(deepseek):
    """Switching off any one of DeepSeek's parts changes what the model computes (so parity above tests each)."""
    ours, tok, hf, _ = deepseek
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        base = ours(ids, trace=True)
    routers = [layer.mlp.router for layer in ours.layers[1:]]
    attns = [layer.attn for layer in ours.layers]

    def changed(undo, redo):
        undo()
        try:
            with torch.no_grad():
                out = ours(ids, trace=True)
        finally:
            redo()
        return out

    bias = [r.e_score_correction_bias.clone() for r in routers]
    out = changed(lambda: [r.e_score_correction_bias.zero_() for r in routers],
                  lambda: [r.e_score_correction_bias.copy_(b) for r, b in zip(routers, bias)])  # fmt: skip
    assert any((a.sort(-1).values != b.sort(-1).values).any() for a, b in zip(out.trace.expert_indices,
                                                                            base.trace.expert_indices))  # fmt: skip
    torch.testing.assert_close(out.trace.router_logits[0], base.trace.router_logits[0])  # the bias chooses only
    out = changed(lambda: [setattr(r, "n_group", 1) for r in routers], lambda: [setattr(r, "n_group", 4) for r in routers])
    assert any((a.sort(-1).values != b.sort(-1).values).any() for a, b in zip(out.trace.expert_indices,
                                                                            base.trace.expert_indices))  # fmt: skip
    for undo, redo in [
        (lambda: [setattr(r, "scale", 1.0) for r in routers], lambda: [setattr(r, "scale", 2.5) for r in routers]),
        (lambda: [setattr(a, "rope_interleaved", False) for a in attns],
         lambda: [setattr(a, "rope_interleaved", True) for a in attns]),
        (lambda: [a.kv_a_layernorm.weight.mul_(2.0) for a in attns], lambda: [a.kv_a_layernorm.weight.div_(2.0) for a in attns]),
        (lambda: [a.q_a_layernorm.weight.mul_(2.0) for a in attns], lambda: [a.q_a_layernorm.weight.div_(2.0) for a in attns]),
        (lambda: [setattr(layer.mlp, "shared_expert", None) for layer in ours.layers[1:]],
         lambda: [setattr(layer.mlp, "shared_expert", s) for layer, s in zip(ours.layers[1:], shared)]),
    ]:  # fmt: skip
        shared = [layer.mlp.shared_expert for layer in ours.layers[1:]]
        assert (changed(undo, redo).logits - base.logits).abs().max() > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, base.logits)  # everything restored
    assert ours.layers[1].mlp.shared_expert_gate is None  # DeepSeek's shared experts are not gated
    assert ours.layers[0].mlp.__class__.__name__ == "GatedMLP"  # first_k_dense_replace: a dense first layer


def test_the_cache_holds_the_compressed_latent(deepseek):
    ours, tok, _, _ = deepseek
    ids = torch.tensor([tok.encode(PROMPT)])
    T = ids.shape[1]
    cache = ours.new_cache()
    with torch.no_grad():
        full = ours(ids).logits
        ours(ids[:, :-3], cache=cache)
        steps = [ours(ids[:, t : t + 1], cache=cache).logits for t in range(T - 3, T)]
    assert cache[0].k.shape == (1, 1, T, 12) and cache[0].v.shape == (1, 1, T, 4)  # latent, rotated rope key
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, -3:], atol=ATOL, rtol=0)


def _edit_config(folder, **changes):
    hf = json.loads((folder / "config.json").read_text())
    hf.update(changes)
    (folder / "config.json").write_text(json.dumps(hf))


def test_refusals_say_why(tmp_path):
    _, _, _, folder = _load(tmp_path)  # (YaRN loads now: test_rope_scaling17)
    _edit_config(folder, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, first_k_dense_replace=3)
    with pytest.raises(LoadError, match="first_k_dense_replace \\(3\\) leaves none of the 3 layers routed"):
        models.load(folder)
    base = dict(vocab_size=99, d_model=32, n_layer=2, n_head=4, d_ff=48, positions="rotary", norm="rmsnorm",
                mlp="gated", activation="silu", n_experts=6, top_k=2, router_score="sigmoid", kv_lora_rank=8,
                qk_rope_head_dim=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"n_experts \(6\) must split into n_group \(4\) groups of 2 or more"):
        MoEConfig(**base, n_group=4, topk_group=2)
    with pytest.raises(ValueError, match="n_kv_head must equal n_head"):
        MoEConfig(**base, n_kv_head=2)
    with pytest.raises(ValueError, match=r"topk_group \(5\) exceeds n_group \(4\)"):
        MoEConfig(**{**base, "router_score": "softmax", "n_experts": 8}, n_group=4, topk_group=5)


def test_card_rows(tmp_path, deepseek):
    ours, *_ = deepseek
    rows = dict(card.architecture(ours))
    assert rows["latent attention (MLA)"].startswith("keys and values rebuilt per head from one 12-wide latent")
    assert "through a 20-wide bottleneck: q_a_proj → RMSNorm → q_b_proj" in rows["latent attention (MLA)"]
    assert rows["q/k head split"].startswith("12 = 8 without position (nope) + 4 rotated (RoPE on channel pairs")
    assert "values 6 wide" in rows["q/k head split"]
    # 12 + 4 cached per layer, against 4 heads × (12 + 6) for full keys and values
    assert rows["KV cache per token"].startswith("16 numbers per layer") and "against 72 for full" in rows["KV cache per token"]
    assert "4.5× smaller" in rows["KV cache per token"]
    router = rows["router"]
    assert router.startswith("a sigmoid per expert") and "e_score_correction_bias" in router
    assert "only the 2 best of 4 groups of 2" in router and "× 2.5 (routed_scaling_factor)" in router
    assert rows["shared expert"] == "always on, 16 wide, no gate (added as is)"
    assert rows["MoE layers"].startswith("2 of 3; the first 1 dense (first_k_dense_replace)")
    assert "attention scale" not in rows  # 1/√(nope + rope) is the usual scale
    plain, *_ = _load(tmp_path, seed=1, **PLAIN)
    rows = dict(card.architecture(plain))
    assert "queries one q_proj" in rows["latent attention (MLA)"] and "the two halves" in rows["q/k head split"]
    assert "groups" not in rows["router"] and "renormalised" not in rows["router"]
    assert rows["shared expert"] == "always on, 32 wide, no gate (added as is)"  # 2 shared experts × 16


def test_estimate_params_and_latent_cache(deepseek):
    ours, _, hf, folder = deepseek
    r = estimate(str(folder), dtype="fp32")
    assert r["params"] == hf.num_parameters() == sum(p.numel() for p in ours.parameters())
    assert r["active_params"] == card.active_parameters(ours)
    assert r["kv_cache_bytes_per_token"] == 3 * (12 + 4) * 4  # 3 layers × (latent + rope key) × fp32
    assert r["kv_cache_bytes_per_token"] < 3 * 2 * 4 * 12 * 4  # what full keys and values would take
    assert estimate(str(folder), dtype="bf16")["kv_cache_bytes_per_token"] == 3 * 16 * 2


def test_attention_steps_are_exact(deepseek):
    ours, tok, _, _ = deepseek
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        trace = ours(ids, trace=True).trace
    layer, query = 1, 9
    heads = [attention_steps(ours, ids, layer, head, query) for head in range(4)]
    for head, s in enumerate(heads):
        assert s.q.shape == (12,) and s.k.shape == (ids.shape[1], 12) and s.v.shape == (ids.shape[1], 6)
        torch.testing.assert_close(s.q[:8], s.q_before[:8])  # the nope channels are not rotated
        assert (s.q[8:] - s.q_before[8:]).abs().max() > 1e-4  # the rope channels are
        torch.testing.assert_close(s.k[:, :8], s.k_before[:, :8])
        torch.testing.assert_close(s.k[:, 8:], heads[0].k[:, 8:])  # one rope key shared by every head
        assert s.scale == pytest.approx(12**-0.5)
        logits = (s.scores * s.scale + s.bias).masked_fill(~s.mask, float("-inf"))
        torch.testing.assert_close(torch.softmax(logits, -1), s.weights)
        torch.testing.assert_close(s.weights, trace.attentions[layer][0, head, query], atol=1e-6, rtol=0)
        torch.testing.assert_close(s.out, s.weights @ s.v)
    assert ours.layers[layer].attn.o_proj.bias is None  # attention_bias False: the heads' shares are the whole output
    torch.testing.assert_close(sum(s.head_output for s in heads), heads[0].attention_output, atol=1e-5, rtol=0)


def test_gate_steps_describe_the_sigmoid_router(deepseek):
    ours, tok, _, _ = deepseek
    ids = torch.tensor([tok.encode(PROMPT)])
    layer, token = 2, 7
    moe = ours.layers[layer].mlp
    got = []
    hook = moe.register_forward_hook(lambda m, i, o: got.append(o))
    try:
        with torch.no_grad():
            trace = ours(ids, trace=True).trace
    finally:
        hook.remove()
    g = gate_steps(ours, ids, layer, token)
    assert g.score == "sigmoid" and g.scaling == 2.5 and len(g.groups_kept) == 2
    torch.testing.assert_close(g.probs, torch.sigmoid(g.logits))
    torch.testing.assert_close(g.logits, trace.router_logits[1][0, token])
    assert sorted(g.chosen) == sorted(trace.expert_indices[1][0, token].tolist())
    assert all(e // 2 in g.groups_kept for e in g.chosen)  # groups of 2 experts
    choice = g.probs + g.choice_bias
    torch.testing.assert_close(g.choice_scores[g.chosen], choice[g.chosen])
    assert choice[g.chosen[0]] >= choice[g.chosen[1]]
    torch.testing.assert_close(g.weights, g.chosen_probs / g.chosen_probs.sum() * 2.5)
    assert g.shared_gate == 1.0
    torch.testing.assert_close(g.output, got[0][0][0, token], atol=1e-5, rtol=0)


def test_ablating_heads_and_experts(deepseek):
    ours, tok, _, _ = deepseek
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        base = ours(ids, trace=True)
        o_proj = ours.layers[1].attn.o_proj
        saved = o_proj.weight.clone()
        o_proj.weight[:, 2 * 6 : 3 * 6] = 0  # head 2's v_head_dim (6) columns of W_o
        try:
            expected = ours(ids).logits
        finally:
            o_proj.weight.copy_(saved)
    torch.testing.assert_close(ablate(ours, ids, heads=[(1, 2)]).logits, expected)
    e = int(base.trace.expert_indices[0][0, 0, 0])
    out = ablate(ours, ids, experts=[(1, e)], trace=True)
    assert e not in out.trace.expert_indices[0].unique().tolist()
    # six of eight off: every token runs the two left, even where their groups would not have been kept
    out = ablate(ours, ids, experts=[(1, x) for x in range(6)], trace=True)
    assert out.trace.expert_indices[0].sort(-1).values.unique(dim=1).tolist() == [[[6, 7]]]


def test_the_routing_view_shows_the_sigmoid_scores(deepseek):
    """The Explore tab's routing view scores DeepSeek-V3's router as the router does, a sigmoid per expert (before:
    a softmax over them, which this router never computes), and says so; Mixtral-style routers keep theirs."""
    from archplay.app.explore.routing import Routing, heatmap

    ours, tok, _, _ = deepseek
    ids = torch.tensor([tok.encode("the cat sat on the mat")])
    with torch.no_grad():
        trace = ours(ids, trace=True).trace.detach(0)
    r = Routing.from_trace(trace, ours.config)
    assert r.score == "sigmoid"
    for p, logits in zip(r.probs, trace.router_logits, strict=True):
        torch.testing.assert_close(p, torch.sigmoid(logits.float()))
    assert "sigmoid score" in heatmap(r, tok.tokens(ids[0].tolist()), 0).layout.title.text
    from archplay.models import load

    moe, mtok = load("moe")
    with torch.no_grad():
        t = moe(torch.tensor([mtok.encode("Mia has a red ball.")]), trace=True).trace.detach(0)
    m = Routing.from_trace(t, moe.config)
    assert m.score == "softmax" and torch.allclose(m.probs[0].sum(-1), torch.ones(m.probs[0].shape[0]))


def test_the_gate_summary_says_sigmoid_not_softmax(deepseek):
    from archplay.app.steps import gate_summary
    from archplay.models.analysis.mixers import gate_steps

    ours, tok, _, _ = deepseek
    ids = torch.tensor([tok.encode("the cat sat on the mat")])
    layer = next(i for i, routed in enumerate(ours.config.moe_layers) if routed)
    g = gate_steps(ours, ids, layer, 3)
    text = gate_summary(g, tok.tokens(ids[0].tolist()))
    assert "own sigmoid" in text and "The softmax" not in text
    assert all(f"{b:.2f}" in text for b in g.weights.tolist())
