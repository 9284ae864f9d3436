"""Issue 17, DeepSeek-V2 (``deepseek_v2``): V3's latent attention with V2's softmax router (greedy or
group-limited, scaled, not renormalised).

Parity with transformers' DeepseekV2ForCausalLM on small random configs (logits, every attention map, hidden
states, the experts chosen, 24 greedy tokens); the groups and the scale matter; what is refused says why;
the card and the gate step by step describe V2's router.
"""

from __future__ import annotations

import pytest
import torch
from conftest import hf_routed, make_hf_model

from archplay import models
from archplay.models.analysis import card
from archplay.models.analysis.interventions import ablate
from archplay.models.analysis.mixers import gate_steps
from archplay.models.architectures.moe import GroupedSoftmaxRouter
from archplay.models.checkpoints.convert import LoadError

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"


def _load(tmp_path, **overrides):
    folder = tmp_path / "deepseek_v2"
    hf = make_hf_model("deepseek_v2", folder, **overrides)
    ours, tok = models.load(folder)
    return ours, tok, hf, folder


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("v2"))


def _hf_run(hf, ids):
    """transformers' outputs and, per MoE layer, its router's (logits, weights, indices), hooked on its gates."""
    return hf_routed(hf, ids, [layer.mlp.gate for layer in hf.model.layers if hasattr(layer.mlp, "gate")])


@pytest.mark.parametrize("overrides", [{}, {"topk_method": "greedy", "n_group": None, "topk_group": None,
                                            "q_lora_rank": 10, "routed_scaling_factor": 1.0}],
                         ids=["group-limited-plain-q", "greedy-low-rank-q"])  # fmt: skip
def test_parity_with_transformers(tmp_path, v2, overrides):
    ours, tok, hf, _ = _load(tmp_path, **overrides) if overrides else v2
    cfg = ours.config
    assert cfg.family == "moe" and cfg.kv_lora_rank == 12 and cfg.moe_layers == [False, True, True]
    grouped = not overrides
    assert (cfg.n_group, cfg.topk_group) == ((4, 1) if grouped else (1, 1)) and not cfg.normalize_top_k
    assert isinstance(ours.layers[1].mlp.router, GroupedSoftmaxRouter) == grouped
    ids = torch.tensor([tok.encode(PROMPT)])
    ref, gates = _hf_run(hf, ids)
    with torch.no_grad():
        out = ours(ids, trace=True)
        fast = ours(ids)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.logits, ref.logits, atol=ATOL, rtol=0)
    for a, b in zip(out.trace.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    for a, b in zip(out.trace.hidden_states[:-1], ref.hidden_states[:-1], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert len(out.trace.router_logits) == len(gates) == 2
    for logits, idx, (hf_logits, hf_weights, hf_idx) in zip(out.trace.router_logits, out.trace.expert_indices, gates,
                                                            strict=True):  # fmt: skip
        torch.testing.assert_close(logits.reshape(hf_logits.shape), hf_logits, atol=ATOL, rtol=0)
        assert idx.reshape(hf_idx.shape).sort(-1).values.tolist() == hf_idx.sort(-1).values.tolist()
    router = ours.layers[1].mlp.router
    weights, indices = router.choose(out.trace.router_logits[0].reshape(-1, cfg.n_experts))
    hf_logits, hf_weights, hf_idx = gates[0]
    order = hf_idx.argsort(-1)
    torch.testing.assert_close(weights.gather(1, indices.argsort(-1)), hf_weights.gather(1, order), atol=1e-6, rtol=0)
    prompt = torch.tensor([tok.encode("the cat sat on the")])
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert ours.generate(prompt, max_new_tokens=24).tolist() == expected.tolist()


@torch.no_grad()
def test_the_groups_and_the_scale_matter(v2):
    """Without the group limit other experts are chosen; the scale changes the output (so parity tests both);
    within the kept groups the choice is the softmax's top-k."""
    ours, tok, _, _ = v2
    ids = torch.tensor([tok.encode(PROMPT)])
    base = ours(ids, trace=True)
    routers = [layer.mlp.router for layer in ours.layers[1:]]
    for r in routers:
        r.n_group = 1
    try:
        ungrouped = ours(ids, trace=True)
    finally:
        for r in routers:
            r.n_group = 4
    assert any((a.sort(-1).values != b.sort(-1).values).any()
               for a, b in zip(ungrouped.trace.expert_indices, base.trace.expert_indices))  # fmt: skip
    for r in routers:
        r.scale = 1.0
    try:
        unscaled = ours(ids).logits
    finally:
        for r in routers:
            r.scale = 2.0
    assert (unscaled - base.logits).abs().max() > 1e-3
    logits = base.trace.router_logits[0][0]  # (T, E)
    probs = logits.float().softmax(-1)
    best = probs.view(-1, 4, 2).amax(-1).argmax(-1)  # (T,) the kept group, by its best expert
    chosen = base.trace.expert_indices[0][0]  # (T, k)
    assert (chosen // 2 == best[:, None]).all()  # both chosen experts in the kept group


def test_refusals_say_why(tmp_path):
    with pytest.raises(LoadError, match="topk_method 'noaux_tc' is not supported; supported: greedy, group_limited"):
        _load(tmp_path, topk_method="noaux_tc")
    with pytest.raises(LoadError, match="leaves none of the 3 layers routed"):
        _load(tmp_path, first_k_dense_replace=3)


def test_card_and_gate_steps_describe_the_router(v2):
    ours, tok, _, _ = v2
    text = " ".join(str(v) for v in dict(card.architecture(ours)).values())
    assert "softmax" in text and "1 best of 4 groups" in text and "× 2" in text and "DeepSeek-V2" in text
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        out = ours(ids, trace=True)
    s = gate_steps(ours, ids, layer=1, token=5)
    assert s.score == "softmax" and s.scaling == 2.0 and len(s.groups_kept) == 1
    assert sorted(s.chosen) == sorted(out.trace.expert_indices[0][0, 5].tolist())
    torch.testing.assert_close(s.weights.sum(), s.chosen_probs.sum() * 2.0)  # not renormalised, × 2
    assert all(e // 2 in s.groups_kept for e in s.chosen)
    # the gate's output plus the shared experts is the MoE layer's output at that token
    moe = ours.layers[1].mlp
    captured = {}
    h = moe.register_forward_hook(lambda m, i, o: captured.update(y=o[0]))  # returns None: output unchanged
    with torch.no_grad():
        ours(ids)
    h.remove()
    torch.testing.assert_close(s.output, captured["y"][0, 5].float(), atol=1e-5, rtol=0)


@torch.no_grad()
def test_an_expert_switched_off_is_never_chosen(v2):
    ours, tok, _, _ = v2
    ids = torch.tensor([tok.encode(PROMPT)])
    base = ours(ids, trace=True)
    busiest = int(base.trace.expert_indices[0].flatten().mode().values)
    out = ablate(ours, ids, experts=[(1, busiest)], trace=True)
    assert busiest not in out.trace.expert_indices[0].flatten().tolist()
    assert (out.logits - base.logits).abs().max() > 1e-4
