"""Mixture of experts: parity with transformers' Mixtral, routing honesty, the auxiliary loss."""

from __future__ import annotations

import pytest
import torch

from archplay import models
from archplay.models.architectures.moe import MoEConfig, MoEDecoder, expert_load, load_balancing_loss

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"


@pytest.fixture(params=["mixtral", "qwen2_moe"])
def mixtral(hf_folder, request):
    folder, hf = hf_folder(request.param)
    ours, tok = models.load(folder)
    return ours, tok, hf


def test_mixtral_parity(mixtral):
    """Mixtral (GQA, 4 experts, top-2) and Qwen2-MoE (shared expert, no renormalisation, a dense layer)."""
    ours, tok, hf = mixtral
    assert ours.config.family == "moe" and ours.config.n_kv_head == 2 and ours.config.n_experts == 4
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, output_attentions=True, output_router_logits=True)
        out = ours(ids, trace=True)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    tr = out.trace
    for a, b in zip(tr.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    ref_router = [r for r in ref.router_logits if r is not None]  # dense layers report none
    assert len(tr.router_logits) == sum(ours.config.moe_layers) == len(ref_router)
    for a, b in zip(tr.router_logits, ref_router, strict=True):
        torch.testing.assert_close(a.reshape(b.shape), b, atol=ATOL, rtol=0)
    for a, b in zip(tr.hidden_states[:-1], ref.hidden_states[:-1], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.norm(tr.hidden_states[-1]), ref.hidden_states[-1], atol=ATOL, rtol=0)
    # The experts in the trace are the router's top-2 by probability.
    for logits, idx in zip(tr.router_logits, tr.expert_indices):
        assert idx.shape == (1, ids.shape[1], 2)
        assert torch.equal(idx, logits.softmax(-1).topk(2).indices)


def test_mixtral_greedy_generation_matches_reference_loop(mixtral):
    ours, tok, hf = mixtral
    ids = torch.tensor([tok.encode("the cat sat on the")])
    seq = ids
    with torch.no_grad():
        for _ in range(32):
            seq = torch.cat([seq, hf(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert ours.generate(ids, max_new_tokens=32).tolist() == seq.tolist()


def test_trace_names_exactly_the_experts_used():
    torch.manual_seed(0)
    model = MoEDecoder(MoEConfig.mixtral_tiny(n_layer=1, n_experts=4, top_k=2)).eval()
    ids = torch.randint(0, 99, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(ids, trace=True)
    chosen = base.trace.expert_indices[0][0]  # (T, k)
    moe = model.layers[0].mlp
    for e in range(4):
        users = (chosen == e).any(-1)  # (T,) tokens that ran expert e
        saved = {k: v.clone() for k, v in moe.experts[e].state_dict().items()}
        with torch.no_grad():
            for p in moe.experts[e].parameters():
                p.zero_()
            logits = model(ids).logits[0]  # (T, V)
            moe.experts[e].load_state_dict(saved)
        changed = (logits - base.logits[0]).abs().amax(-1) > 1e-6  # (T,)
        # One layer: the MoE output reaches no other position, so exactly the users change.
        assert torch.equal(changed, users), f"expert {e}: {changed.tolist()} vs users {users.tolist()}"
    # The same on the MoE layer itself, for random inputs.
    x = torch.randn(1, 12, 32)
    with torch.no_grad():
        y, logits, idx = moe(x)
        for e in range(4):
            saved = {k: v.clone() for k, v in moe.experts[e].state_dict().items()}
            for p in moe.experts[e].parameters():
                p.zero_()
            y2, _, _ = moe(x)
            moe.experts[e].load_state_dict(saved)
            users = (idx[0] == e).any(-1)
            diff = (y2 - y)[0].abs().amax(-1)
            assert (diff[~users] == 0).all()
            assert (diff[users] > 0).all()


def test_expert_load_and_parameter_counts():
    from archplay.models.analysis.card import active_parameters
    from archplay.models.architectures.layers import count_parameters

    model = MoEDecoder(MoEConfig.mixtral_tiny())
    per_expert = 3 * 32 * 48
    assert count_parameters(model) - active_parameters(model) == 2 * 2 * per_expert  # 2 layers x 2 idle experts
    idx = torch.tensor([[[0, 1], [0, 2], [0, 3]]])
    torch.testing.assert_close(expert_load(idx, 4), torch.tensor([0.5, 1 / 6, 1 / 6, 1 / 6]))


@pytest.mark.parametrize("masked", [False, True])
def test_load_balancing_loss_equals_transformers(masked):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    g = torch.Generator().manual_seed(0)
    B, T, E, k = 2, 7, 4, 2
    layers = [torch.randn(B, T, E, generator=g) * 2 for _ in range(3)]
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0
    ref = load_balancing_loss_func(tuple(x.reshape(-1, E) for x in layers), E, k, mask if masked else None)
    ours = load_balancing_loss(layers, E, k, mask if masked else None)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    uniform = load_balancing_loss([torch.zeros(B, T, E)], E, 1)
    # All-zero logits: top-1 picks expert 0 every time, f = (1, 0, 0, 0), P = 1/4 each: 4 * 1/4 = 1.
    assert float(uniform) == pytest.approx(1.0)


def test_one_token_path_equals_the_grouped_path():
    """Generation steps run a token's k experts directly; the result is the grouped computation's."""
    from archplay.models.architectures.moe import MoEConfig, SparseMoE

    torch.manual_seed(0)
    cfg = MoEConfig.mixtral_tiny()
    moe = SparseMoE(cfg).eval()
    with torch.no_grad():
        for seed in range(5):
            flat = torch.randn(1, cfg.d_model, generator=torch.Generator().manual_seed(seed))
            _, weights, indices = moe.router(flat)
            torch.testing.assert_close(moe._one_token(flat, weights[0], indices[0]), moe._grouped(flat, weights, indices),
                                       rtol=0, atol=0)  # fmt: skip


def test_rmsnorm_fast_path_equals_the_reference_formula():
    from archplay.models.architectures.layers import RMSNorm

    norm = RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 7, 64)
    ref = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(norm(x), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(norm(x.bfloat16()).float(), ref, rtol=2e-2, atol=2e-2)  # the float32-upcast path
