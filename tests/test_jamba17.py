"""Issue 17, Jamba (``jamba``): the hybrid family, attention, Mamba and mixture-of-experts layers in one stack.

Parity with transformers' JambaForCausalLM on a small random config (4 layers: Mamba+MoE, attention+MLP,
Mamba+MoE, attention+MLP): logits traced and untraced, every hidden state, the attention layers' maps, the MoE
layers' router logits and the experts chosen, 32 greedy tokens (KV cache and Mamba state); each special part
matters; the cache continues a sequence exactly; the card names the layer pattern; the estimate counts the
parameters, the keys and values of the attention layers and the Mamba state; what is refused says why; the scan
step by step and ablation read each layer's own part; the app's Explore, Inside a step, Interventions, Logit lens,
Compare and Architecture handlers (and, in Chromium, the page) draw a loaded checkpoint.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import hf_routed, make_hf_model

from archplay import models
from archplay.models import registry
from archplay.models.analysis import card
from archplay.models.architectures.hybrid import HybridConfig, HybridDecoder, JambaMixer
from archplay.models.architectures.layers import KVCache
from archplay.models.architectures.ssm import LayerState
from archplay.models.checkpoints.convert import LoadError

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"


def _load(tmp_path, seed=0, **overrides):
    folder = tmp_path / f"jamba{seed}"
    hf = make_hf_model("jamba", folder, seed=seed, **overrides)
    ours, tok = models.load(folder)
    return ours, tok, hf, folder


@pytest.fixture(scope="module")
def jamba(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("jamba"))


def _hf_choices(hf, ids):
    """transformers' outputs, and its routers' (logits, top-k indices) per MoE layer, hooked."""
    routers = [layer.feed_forward.router for layer in hf.model.layers if hasattr(layer.feed_forward, "router")]
    ref, got = hf_routed(hf, ids, routers, output_router_logits=True)
    return ref, [(o[0], o[2]) for o in got]


@pytest.mark.parametrize("overrides", [{}, dict(attn_layer_period=3, attn_layer_offset=2, expert_layer_period=1,
                                                expert_layer_offset=0, num_experts_per_tok=1, mamba_proj_bias=True,
                                                mamba_conv_bias=False, tie_word_embeddings=True)]
                         , ids=["alternating", "every-layer-routed"])  # fmt: skip
def test_parity_with_transformers(tmp_path, jamba, overrides):
    ours, tok, hf, _ = _load(tmp_path, seed=1, **overrides) if overrides else jamba
    cfg = ours.config
    assert registry.checkpoint("jamba")[0].name == "hybrid" and cfg.family == "hybrid"
    expected_attn = [i % hf.config.attn_layer_period == hf.config.attn_layer_offset for i in range(4)]
    assert cfg.attn_layers == expected_attn == [b == "attention" for b in hf.config.layers_block_type]
    assert cfg.moe_layers == [n > 1 for n in hf.config.layers_num_experts]
    ids = torch.tensor([tok.encode(PROMPT)])
    ref, choices = _hf_choices(hf, ids)
    with torch.no_grad():
        out = ours(ids, trace=True)
        fast = ours(ids)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.logits, ref.logits, atol=ATOL, rtol=0)
    # hidden states: the embeddings, then every layer (Mamba or attention) in the model's own numbering
    hs = out.trace.hidden_states
    assert len(hs) == len(ref.hidden_states) == 5
    for a, b in zip(hs[:-1], ref.hidden_states[:-1], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.norm(hs[-1]), ref.hidden_states[-1], atol=ATOL, rtol=0)
    # attentions: one per attention layer, as transformers returns them
    assert len(out.trace.attentions) == len(ref.attentions) == sum(expected_attn) == len(cfg.attention_blocks)
    for a, b in zip(out.trace.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    # router logits and the experts run: one per MoE layer
    assert len(out.trace.router_logits) == len(ref.router_logits) == len(choices) == sum(cfg.moe_layers)
    for logits, idx, (hf_logits, hf_idx) in zip(out.trace.router_logits, out.trace.expert_indices, choices,
                                                strict=True):  # fmt: skip
        torch.testing.assert_close(logits.reshape(hf_logits.shape), hf_logits, atol=ATOL, rtol=0)
        assert idx.reshape(hf_idx.shape).sort(-1).values.tolist() == hf_idx.sort(-1).values.tolist()
    # the scan's view: one per Mamba layer, Δ (B, T, D_inner) and the hidden attention (B, T, T)
    n_mamba = 4 - sum(expected_attn)
    assert len(out.trace.ssm_delta) == len(out.trace.ssm_attention) == n_mamba == len(cfg.mamba_blocks)
    assert out.trace.ssm_delta[0].shape == (1, ids.shape[1], 64) and (out.trace.ssm_delta[0] > 0).all()
    assert out.trace.ssm_attention[0].shape == (1, ids.shape[1], ids.shape[1])
    prompt = torch.tensor([tok.encode("the cat sat on the")])
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0)
    assert ours.generate(prompt, max_new_tokens=32).tolist() == expected.tolist()
    streamed = [t for t, _ in ours.generate_stream(prompt, max_new_tokens=32)]
    assert streamed == expected[0, prompt.shape[1] :].tolist()


def test_delta_is_the_step_size_transformers_computes(jamba):
    """Δ in the trace is softplus(dt_proj(RMSNorm(Δ_low))) of transformers' mixer (its norm on Δ_low included)."""
    ours, tok, hf, _ = jamba
    ids = torch.tensor([tok.encode(PROMPT)])
    mixer = hf.model.layers[0].mamba
    got = []
    hook = mixer.x_proj.register_forward_hook(lambda m, i, o: got.append(o))
    try:
        with torch.no_grad():
            hf(ids)
            out = ours(ids, trace=True)
    finally:
        hook.remove()
    dt = got[0][..., : mixer.time_step_rank]
    with torch.no_grad():
        expected = torch.nn.functional.softplus(mixer.dt_proj(mixer.dt_layernorm(dt)))
    torch.testing.assert_close(out.trace.ssm_delta[0], expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_each_special_part_matters(jamba):
    """Switching off any one of Jamba's parts changes the logits (so parity above tests each)."""
    ours, tok, _, _ = jamba
    ids = torch.tensor([tok.encode(PROMPT)])
    base = ours(ids).logits
    mixers = [m for m in ours.modules() if isinstance(m, JambaMixer)]
    routers = [layer.mlp.router for layer in ours.layers if hasattr(layer.mlp, "router")]
    assert len(mixers) == 2 and len(routers) == 2

    def differs(undo, redo) -> bool:
        undo()
        try:
            return (ours(ids).logits - base).abs().max() > 1e-3
        finally:
            redo()

    assert differs(lambda: [setattr(m, "norms", False) for m in mixers],
                   lambda: [setattr(m, "norms", True) for m in mixers])  # fmt: skip
    assert differs(lambda: [setattr(r, "normalize", True) for r in routers],
                   lambda: [setattr(r, "normalize", False) for r in routers])  # fmt: skip
    torch.testing.assert_close(ours(ids).logits, base)  # restored


def test_the_cache_continues_a_sequence(jamba):
    """A prompt, then one token at a time: the KV caches grow, the Mamba states stay one size; the same logits."""
    ours, tok, _, _ = jamba
    ids = torch.tensor([tok.encode(PROMPT)])
    T = ids.shape[1]
    cache = ours.new_cache()
    with torch.no_grad():
        full = ours(ids).logits
        ours(ids[:, :-3], cache=cache)
        state = cache[0].ssm.clone()
        steps = [ours(ids[:, t : t + 1], cache=cache).logits for t in range(T - 3, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, -3:], atol=ATOL, rtol=0)
    assert isinstance(cache[1], KVCache) and cache[1].k.shape == (1, 2, T, 8)  # 2 kv heads of 8
    assert isinstance(cache[0], LayerState) and cache[0].ssm.shape == state.shape == (1, 64, 8)
    assert (cache[0].ssm - state).abs().max() > 0  # the state moved on
    with pytest.raises(ValueError, match="whole sequence"):
        ours(ids[:, :1], cache=cache, trace=True)


def test_card_rows_name_the_layer_pattern(jamba):
    ours, _, hf, _ = jamba
    rows = dict(card.architecture(ours))
    assert rows["family"].startswith("hybrid: ")
    assert rows["layer pattern"] == ("Mamba+MoE, attention+MLP, repeated (4 layers; attention in layers 1, 3, "
                                     "experts in layers 0, 2)")  # fmt: skip
    assert rows["attention"] == "causal self-attention in 2 of 4 layers (layers 1, 3)"
    assert rows["Mamba mixer"].startswith("in 2 of 4 layers: Mamba-1's selective SSM")
    assert "RMSNorms on Δ_low, B and C (Jamba)" in rows["Mamba mixer"]
    assert rows["positions"].startswith("none (NoPE)")
    assert rows["router"] == "softmax over all experts (float32) → top-k (weights not renormalised)"
    assert rows["MoE layers"].startswith("2 of 4; the others dense")
    assert rows["KV cache"].startswith("only the 2 attention layers keep keys and values (32 numbers per token each)")
    assert rows["d_state (N) · d_conv · dt_rank (R)"] == "8 · 4 · 4"
    total = sum(p.numel() for p in hf.parameters())
    assert rows["parameters"] == f"{total:,}"
    breakdown = dict(card.parameter_breakdown(ours))
    assert sum(breakdown.values()) == total and "other" not in breakdown
    assert breakdown["mixer RMSNorms on Δ, B, C (Jamba)"] == 2 * (4 + 8 + 8)
    # each MoE layer runs 2 of its 4 experts: 2 idle experts of 3 × 32 × 48 per MoE layer
    assert card.active_parameters(ours) == total - 2 * 2 * 3 * 32 * 48


def _edit_config(folder, **changes):
    hf = json.loads((folder / "config.json").read_text())
    hf.update(changes)
    (folder / "config.json").write_text(json.dumps(hf))


def test_refusals_say_why(tmp_path):
    folder = tmp_path / "jamba"
    make_hf_model("jamba", folder)
    _edit_config(folder, attn_layer_offset=2)
    with pytest.raises(LoadError, match=r"attn_layer_offset \(2\) must be at least 0 and smaller than attn_layer_"):
        models.load(folder)
    _edit_config(folder, attn_layer_offset=1, num_experts=1)
    with pytest.raises(LoadError, match="has no mixture-of-experts layer among its 4"):
        models.load(folder)
    with pytest.raises(ValueError, match="attn_layers needs one flag per layer"):
        HybridConfig.jamba_tiny(attn_layers=[True, False])
    with pytest.raises(ValueError, match="positions must be 'none' or 'rotary'"):
        HybridConfig.jamba_tiny(positions="learned")


def test_config_round_trips_and_builds_through_the_registry():
    cfg = HybridConfig.jamba_tiny()
    again = HybridConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.family == "hybrid" and again.dt_rank == 2  # "auto": ceil(32 / 16)
    model = registry.get("hybrid").build(cfg)
    assert isinstance(model, HybridDecoder)
    kinds = ["MambaLayer", "DecoderBlock", "MambaLayer", "DecoderBlock"]
    assert [type(layer).__name__ for layer in model.layers] == kinds
    assert [cfg.layer_kind(i) for i in range(4)] == ["Mamba + MoE", "attention + MLP", "Mamba + MoE", "attention + MLP"]


# --------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def catalog(jamba):
    from archplay.app.catalog import Catalog

    _, _, _, folder = jamba
    return Catalog.from_names([str(folder)], device="cpu", builtins=("gpt",))


def test_explore_run_draws_attention_layers_and_routing(catalog, jamba):
    from archplay.app.explore import attention, generation, routing, run

    ours, tok, _, folder = jamba
    key = next(k for k in catalog.keys() if catalog.get(k).config.family == "hybrid")
    r = run.analyse(catalog, key, PROMPT, layer=1, head=2, moe_layer=1)
    assert r.ok and r.status.startswith("✓"), r.status
    with torch.no_grad():
        out = ours(torch.tensor([tok.encode(PROMPT)]), trace=True)
    a = r.analysis
    assert a.hybrid and a.n_layer == 4 and a.n_head == 4  # Explore's map spans every layer
    for layer in range(4):  # Mamba, attention, Mamba, attention: each layer's own mixing, in the model's numbering
        fig = attention.attention_figure(a, layer, 2)
        want = (out.trace.ssm_attention[layer // 2][0] if layer % 2 == 0 else out.trace.attentions[layer // 2][0, 2])
        np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=np.float64), want.numpy(), rtol=0, atol=1e-6)
        assert fig.layout.title.text.startswith(f"Layer {layer} of 4 (Mamba): hidden attention" if layer % 2 == 0
                                                else f"Layer {layer} of 4 (attention), head 2 of 4")  # fmt: skip
    maps = attention.attention_maps(a)  # (4, 4, T, T): what the page's payload and the grid carry
    assert maps.shape[:2] == (4, 4)
    torch.testing.assert_close(maps[2, 3], out.trace.ssm_attention[1][0].float())  # each column: the same map
    torch.testing.assert_close(maps[3, 1], out.trace.attentions[1][0, 1].float())
    assert [attention.mask_rule(a, "self", i)[0] for i in range(4)] == ["scan", "causal", "scan", "causal"]
    assert "Layers 0, 2 are Mamba layers" in attention.attention_help(a)
    from archplay.app.explore.payload import attention_payload

    p = attention_payload(a, None, 0)
    assert p["L"] == 4 and p["titles"][0].startswith("Layer 0 of 4 (Mamba)") and "{head}" in p["titles"][1]
    from archplay.app.explore import scan
    from archplay.app.explore.payload import delta_payload

    for layer in (0, 2):  # the Mamba layers' mean step size Δ per token; the attention layers have none
        bars = scan.delta_figure(a, layer)
        np.testing.assert_allclose(np.asarray(bars.data[0].y, dtype=np.float64),
                                   out.trace.ssm_delta[layer // 2][0].mean(-1).numpy(), rtol=1e-6, atol=1e-7)  # fmt: skip
        assert bars.layout.title.text.startswith(f"Layer {layer}: step size Δ")
    assert scan.delta_figure(a, 1).layout.title.text.startswith("Layer 1 attends: no step size Δ (the Mamba layers: 0, 2)")
    d = delta_payload(a)
    assert d["L"] == 4 and d["titles"][3].startswith("Layer {layer} attends")
    for layer, block in enumerate((0, 2)):  # the MoE layers are blocks 0 and 2
        view = routing.view(a, layer)
        probs = torch.softmax(out.trace.router_logits[layer][0].float(), dim=-1).numpy()
        z = np.asarray(next(t for t in view.heatmap.data if t.name == "router probability").z, dtype=np.float64)
        np.testing.assert_allclose(z, probs, rtol=0, atol=1e-6)
        assert f"block {block}" in view.heatmap.layout.title.text
    steps = list(generation.generate(catalog, key, "the cat sat on the", 4, 0.0))
    assert steps[-1].status.startswith("✓") and "Generated 4 tokens" in steps[-1].status


def test_compare_and_the_card_show_jamba(catalog, jamba):
    from archplay.app import compare
    from archplay.app.card import card as card_view

    ours, tok, _, _ = jamba
    key = next(k for k in catalog.keys() if catalog.get(k).config.family == "hybrid")
    status, (_, new) = compare.compare(catalog, ["gpt", key], PROMPT)
    assert status.startswith("✓") and not new.message and new.view is not None
    with torch.no_grad():  # its panel: the router of the last MoE layer (block 2), as the moe family's
        logits = ours(torch.tensor([tok.encode(PROMPT)]), trace=True).trace.router_logits[-1][0]
    np.testing.assert_allclose(np.asarray(new.view.data[0].z, dtype=np.float64), torch.softmax(logits, -1).numpy(),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert "block 2 (MoE layer 1 of 2)" in new.view.layout.title.text
    table, fig = card_view(catalog, key)
    assert "layer pattern" in table and "Mamba+MoE, attention+MLP" in table
    assert int(np.asarray(fig.data[0].x).sum()) == sum(p.numel() for p in ours.parameters())
    from archplay.app.catalog import describe

    assert describe(ours).endswith("hybrid, 4 layers (2 attention × 4 heads, 2 Mamba)")  # not "4 layers × 4 heads"


def test_anatomy_names_the_model_layer_of_an_attention_layer(catalog, jamba):
    """Anatomy's position-term panel spans the attention layers; its title names the model's layer (NoPE: the
    position term changes nothing, so with and without are the same bars)."""
    from archplay.app import anatomy
    from archplay.app.explore import run

    key = next(k for k in catalog.keys() if catalog.get(k).config.family == "hybrid")
    a = run.analyse(catalog, key, PROMPT).analysis
    v = anatomy.anatomy_view(catalog, a, 0, 0, None, None, fit=True)
    assert v.controls.n_layer == 2  # the slider spans the 2 attention layers, not the model's 4
    fig, sentence = anatomy.effect_view(catalog, a, 1, 2, 5)
    assert "attention layer 1 = layer 3, head 2" in fig.layout.title.text
    refused, problem = anatomy.effect_view(catalog, a, 2, 0, 5)
    assert refused is None and "layer must be between 0 and 1" in problem
    with_pos, without = (np.asarray(t.y, dtype=np.float64) for t in fig.data[:2])
    np.testing.assert_allclose(with_pos, without, rtol=0, atol=1e-7)


def test_scan_steps_take_apart_a_mamba_layer_and_refuse_an_attention_layer(jamba):
    """The scan step by step reads a Mamba layer by the model's own number, Jamba's norms on Δ, B, C included."""
    from archplay.models.analysis.mixers import scan_steps

    ours, tok, _, _ = jamba
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        trace = ours(ids, trace=True).trace
    s = scan_steps(ours, ids, 2, 7)  # layer 2 is the second Mamba layer
    torch.testing.assert_close(s.delta, trace.ssm_delta[1][0, 7], atol=1e-6, rtol=0)
    torch.testing.assert_close(s.hidden_attention, trace.ssm_attention[1][0, 7], atol=1e-5, rtol=0)
    torch.testing.assert_close(s.y, s.readout + s.skip)
    with pytest.raises(ValueError, match="layer 1 is an attention layer, not a Mamba layer"):
        scan_steps(ours, ids, 1, 7)


def test_ablating_heads_experts_and_mixers(jamba):
    """Heads are numbered as the trace's attentions (the attention layers); experts and mixers by the model's layer."""
    from archplay.models.analysis.interventions import ablate

    ours, tok, _, _ = jamba
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        base = ours(ids, trace=True)
        o_proj = ours.layers[3].attn.o_proj  # attention layer 1 is the model's layer 3
        saved = o_proj.weight.clone()
        o_proj.weight[:, 2 * 8 : 3 * 8] = 0  # head 2's 8 columns of W_o
        try:
            expected = ours(ids).logits
        finally:
            o_proj.weight.copy_(saved)
    torch.testing.assert_close(ablate(ours, ids, heads=[(1, 2)]).logits, expected)
    e = int(base.trace.expert_indices[1][0, 0, 0])
    out = ablate(ours, ids, experts=[(2, e)], trace=True)  # layer 2 is the second MoE layer
    assert e not in out.trace.expert_indices[1].unique().tolist()
    with pytest.raises(ValueError, match="layer 1 has no experts"):
        ablate(ours, ids, experts=[(1, 0)])
    with pytest.raises(ValueError, match=r"layer 2 is out of range \(0 to 1\)"):  # only 2 attention layers
        ablate(ours, ids, heads=[(2, 0)])
    # a Mamba layer's mixer off: that layer passes its input through its residual (then its feed-forward)
    layer = ours.layers[2]
    off = ablate(ours, ids, mixers=[2], trace=True)
    x = off.trace.hidden_states[2]
    with torch.no_grad():
        expected, _, _ = layer.mlp(layer.mlp_norm(x))
    torch.testing.assert_close(off.trace.hidden_states[3], x + expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="layer 1 is an attention layer, not a Mamba layer: it has no scan"):
        ablate(ours, ids, mixers=[1])


def test_interventions_tab_offers_each_layers_parts(catalog, jamba):
    from archplay.app import interventions
    from archplay.app.explore import run

    key = next(k for k in catalog.keys() if catalog.get(k).config.family == "hybrid")
    a = run.analyse(catalog, key, PROMPT).analysis
    o = interventions.offer(catalog, a)
    assert o.heads == [f"L{layer}.H{h}" for layer in range(2) for h in range(4)]  # the attention layers, as Explore
    assert o.experts == [f"L{layer}.E{e}" for layer in (0, 2) for e in range(4)]  # the model's MoE layers
    assert o.mixers == ["L0", "L2"]  # the model's Mamba layers
    for parts in (dict(heads="L1.H2"), dict(experts="L2.E1"), dict(mixers="L2")):
        v = interventions.intervene(catalog, a, **parts)
        assert v.summary.startswith("✓") and v.prediction is not None, v.summary


def test_steps_tab_takes_apart_attention_and_mamba_layers(catalog, jamba):
    """The Steps tab: an attention head of an attention layer, named by the model's layer; the scan of a Mamba
    layer (its slider spans the Mamba layers); the gate of a MoE layer. Explore's help says where each is."""
    from archplay.app import steps
    from archplay.app.explore import attention, run
    from archplay.models.analysis.mixers import scan_steps

    ours, tok, _, _ = jamba
    key = next(k for k in catalog.keys() if catalog.get(k).config.family == "hybrid")
    a = run.analyse(catalog, key, PROMPT).analysis
    help_text = attention.attention_help(a)
    assert "Layers 1, 3 attend" in help_text and "Layers 0, 2 are Mamba layers" in help_text
    assert "**Inside a step** takes a scan apart" in help_text
    v = steps.steps_view(catalog, a, layer=1, head=2, query=5)
    assert v.flow is not None and v.flow.layout.title.text.startswith("Layer 3, head 2")
    assert a.mamba is not None and a.mamba.blocks == [0, 2] and a.scan is None
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        trace = ours(ids, trace=True).trace
    torch.testing.assert_close(a.mamba.delta_mean[1], trace.ssm_delta[1][0].mean(-1), atol=1e-6, rtol=0)
    m = steps.scan_view(catalog, a, 1, 4)  # Mamba layer 1 = the model's layer 2
    assert m.figure is not None and m.figure.layout.title.text.startswith("Layer 2, token 4")
    expected = scan_steps(ours, ids, 2, 4)
    hidden = next(t for t in m.figure.data if t.name == "hidden attention")
    np.testing.assert_allclose(np.asarray(hidden.y, dtype=np.float64), expected.hidden_attention[:5].numpy(),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert [b for _, b in steps.gate_layers(a)] == [0, 2]
    assert steps.gate_view(catalog, a, 2, 4).figure is not None
    from archplay.models.analysis.mixers import gate_steps

    g = gate_steps(ours, ids, 2, 4)  # the MoE layers keep the model's numbers: layer 2 is MoE layer 1
    torch.testing.assert_close(g.logits, trace.router_logits[1][0, 4], atol=1e-6, rtol=0)
    assert sorted(g.chosen) == sorted(trace.expert_indices[1][0, 4].tolist())
    torch.testing.assert_close(g.weights, g.chosen_probs)  # Jamba's weights: the chosen softmax, not renormalised


def test_estimate_counts_parameters_the_kv_cache_and_the_mamba_state(jamba):
    from archplay.models.analysis.estimate import estimate

    ours, tok, hf, folder = jamba
    r = estimate(str(folder), dtype="fp32")
    assert r["family"] == "hybrid"
    assert r["params"] == hf.num_parameters() == sum(p.numel() for p in ours.parameters())
    assert r["active_params"] == card.active_parameters(ours)
    assert r["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 8 * 4  # 2 attention layers × (k, v) × 2 kv heads × 8 × fp32
    cache = ours.new_cache()
    with torch.no_grad():
        ours(torch.tensor([tok.encode(PROMPT)]), cache=cache)
    states = [c for c in cache if isinstance(c, LayerState)]
    assert len(states) == 2 and r["state_bytes"] == sum(4 * (s.conv.numel() + s.ssm.numel()) for s in states)
    assert r["flops_breakdown"]["scan"] > 0 and r["flops_breakdown"]["attention"] > 0
    # at a context: the attention layers' keys and values grow with it, the Mamba state does not
    at = estimate(str(folder), dtype="fp32", context=100)
    assert at["kv_cache_bytes"] == 100 * 256 + r["state_bytes"] == at["memory"]["kv_cache"]


# --------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def served(catalog):
    """``build_app`` with the Jamba checkpoint beside gpt, served in this process on a free port of 127.0.0.1."""
    from conftest import served_demo

    from archplay.app.main import build_app

    demo = build_app(catalog)
    with served_demo(demo) as url:
        yield url


@pytest.mark.browser
def test_jamba_opens_in_explore_steps_and_architecture(served, jamba):
    import re
    from pathlib import Path

    from playwright.sync_api import expect
    from test_browser import (
        CHROMIUM,
        _array,
        assert_no_console_errors,
        chromium_page,
        open_tab,
        read_plot,
        set_slider,
        wait_for_plot,
        wait_until,
    )

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    ours, tok, _, _ = jamba
    with torch.no_grad():
        out = ours(torch.tensor([tok.encode(PROMPT)]), trace=True)
    with chromium_page(served, timeout_ms=60_000) as page:
        page.locator("#model input").click()
        page.get_by_role("option").filter(has_text=re.compile(r"^\W*jamba0\b")).first.click()  # runs its example
        wait_for_plot(page, "attention-plot", "Layer 0 of 4 (Mamba): hidden attention")
        page.locator("#text textarea").fill(PROMPT)
        page.locator("#run").click()
        T = len(tok.encode(PROMPT))

        def shown(title):
            plot = read_plot(page, "attention-plot")
            return plot if plot and _array(plot["data"][0]["z"]).shape[0] == T and title in plot["title"] else None

        plot = wait_until(page, lambda: shown("Layer 0 of 4 (Mamba)"), f"layer 0's hidden attention of {T} tokens")
        hidden = out.trace.ssm_attention[0][0].half().float().numpy()  # float16 on the way to the page
        np.testing.assert_array_equal(_array(plot["data"][0]["z"]), hidden)
        wait_for_plot(page, "delta-plot", "Layer 0: step size Δ per token")
        set_slider(page, "layer", 3)  # the second attention layer, drawn in the page from the Run's payload
        plot = wait_until(page, lambda: shown("Layer 3 of 4 (attention), head 0 of 4"), "layer 3's attention map")
        wait_for_plot(page, "delta-plot", "Layer 3 attends: no step size Δ")
        np.testing.assert_array_equal(_array(plot["data"][0]["z"]),
                                      out.trace.attentions[1][0, 0].half().float().numpy())  # fmt: skip
        expect(page.locator("#routing-section")).to_be_visible()
        wait_for_plot(page, "routing-plot", "MoE layer")
        open_tab(page, "Inside a step")  # attention layer 0 = model layer 1, Mamba layer 0 = 0; MoE: the last
        wait_for_plot(page, "steps-flow", "Layer 1, head 0")
        wait_for_plot(page, "steps-scan-plot", "Layer 0, token")
        wait_for_plot(page, "steps-gate-plot", "Layer 2, token")
        expect(page.locator("#steps-scan-layer")).to_contain_text("Mamba layer (model layers 0, 2)")
        open_tab(page, "Architecture")
        expect(page.locator("#card-table")).to_contain_text("Mamba+MoE, attention+MLP")
        open_tab(page, "Explore")
        assert_no_console_errors(page)


def test_the_trace_budget_counts_what_a_hybrid_traces(jamba):
    """Attention maps of the attention layers only, scan maps and Δ of the Mamba layers only: the bytes a traced
    run returns, as counted from the config, are what the trace holds (besides the router logits, counted per layer)."""
    from archplay.models.analysis.trace_budget import trace_sizes

    ours, tok, _, _ = jamba
    square, linear = trace_sizes(ours.config)
    assert square == 2 * 4 + 2  # 2 attention layers × 4 heads, 2 hidden-attention maps
    ids = torch.tensor([tok.encode(PROMPT)])
    T = ids.shape[1]
    with torch.no_grad():
        t = ours(ids, trace=True).trace
    held = sum(x.numel() for f in ("attentions", "ssm_attention", "hidden_states", "ssm_delta")
               for x in getattr(t, f)) + T * 99  # + the logits
    assert held == square * T * T + (linear - 4 * 4) * T  # the router: counted on all 4 layers, 2 route


def test_the_logit_lens_reads_every_layer_mamba_and_attention(catalog, jamba):
    """The lens reads each of the 4 layers' outputs (Mamba or attention alike) through the final norm and head."""
    from archplay.app import lens
    from archplay.app.explore import run

    ours, tok, _, _ = jamba
    key = next(k for k in catalog.keys() if catalog.get(k).config.family == "hybrid")
    a = run.analyse(catalog, key, PROMPT).analysis
    fig, text = lens.lens_view(catalog, a)
    assert text.startswith("✓")
    z = np.asarray(fig.data[0].z, dtype=np.float64)  # (embeddings + 4 layers, T): each row's top-1 probability
    with torch.no_grad():
        hs = ours(torch.tensor([tok.encode(PROMPT)]), trace=True).trace.hidden_states
        top = [torch.softmax(ours.lm_head(ours.norm(h[0])), -1).max(-1).values.numpy() for h in hs]
    assert z.shape == (5, len(a.ids))
    np.testing.assert_allclose(z, np.stack(top), rtol=0, atol=1e-5)
