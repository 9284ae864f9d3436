"""Issue 16, item 2: a mixture of experts' gate and Mamba's scan at one token recompute the layer's output."""

from __future__ import annotations

import pytest
import torch
from test_contract import _tiny

from archplay.models.analysis.interventions import capture_input
from archplay.models.analysis.mixers import gate_steps, scan_steps
from archplay.models.architectures.moe import MoEConfig, MoEDecoder

ATOL = 1e-5


def _ids(model, T=9):
    return torch.randint(3, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("shared", [False, True])
def test_the_gate_recomputes_the_moe_layers_output(shared):
    torch.manual_seed(0)
    model = MoEDecoder(MoEConfig.mixtral_tiny(n_layer=2, d_shared_expert=24 if shared else None))
    ids = _ids(model)
    for layer, token in [(0, 0), (1, 6)]:
        g = gate_steps(model, ids, layer, token)
        moe = model.layers[layer].mlp
        with torch.inference_mode():
            x = capture_input(model, moe, ids)
            y, logits, idx = moe(x)
        torch.testing.assert_close(g.output, y[0, token].float(), atol=ATOL, rtol=0)
        torch.testing.assert_close(g.logits, logits[0, token].float(), atol=ATOL, rtol=0)
        assert g.chosen == idx[0, token].tolist() and len(g.chosen) == 2
        torch.testing.assert_close(g.weights.sum(), torch.tensor(1.0), atol=1e-6, rtol=0)  # renormalised
        torch.testing.assert_close(g.weights, g.chosen_probs / g.chosen_probs.sum(), atol=1e-6, rtol=0)
        assert (g.shared_gate is not None) == shared and g.expert_norms.shape == (4,)


def test_the_scan_recomputes_the_mixers_output():
    model = _tiny("mamba-style")
    ids = _ids(model)
    for layer, token in [(0, 0), (1, 5)]:
        s = scan_steps(model, ids, layer, token)
        mixer = model.layers[layer].mixer
        with torch.inference_mode():
            out, _, _ = mixer(capture_input(model, mixer, ids))
        torch.testing.assert_close(s.output, out[0, token].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(s.h, s.A_bar * s.h_prev + s.B_bar_u, atol=1e-6, rtol=0)
        assert (s.A_bar > 0).all() and (s.A_bar < 1).all() and (s.delta > 0).all()
        assert s.hidden_attention is not None and s.hidden_attention[token + 1 :].abs().sum() == 0
    assert scan_steps(model, ids, 0, 0).h_prev.abs().sum() == 0  # nothing before the first token


def test_the_mixer_steps_refuse_what_is_not_there():
    with pytest.raises(ValueError, match="Mamba"):
        scan_steps(_tiny("gpt2-style"), torch.tensor([[3, 4]]), 0, 0)
    with pytest.raises(ValueError, match="no router"):
        gate_steps(_tiny("gpt2-style"), torch.tensor([[3, 4]]), 0, 0)
    moe = _tiny("mixtral-style")
    for args, match in [((9, 0), "layer 9"), ((0, 5), "token 5")]:
        with pytest.raises(ValueError, match=match):
            gate_steps(moe, torch.tensor([[3, 4]]), *args)
