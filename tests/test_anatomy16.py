"""Issue 16, item 4 (model side): block anatomy with this input's shapes, and the residual stream."""

from __future__ import annotations

import torch
from test_contract import _tiny

from archplay import models
from archplay.models.analysis.anatomy import anatomy

IDS = torch.tensor([[5, 9, 13, 17, 21, 25, 29]])


def _kinds(stack):
    return [p.kind for p in stack.block]


def test_pre_and_post_norm_blocks_put_the_norms_where_the_model_does():
    (gpt,) = anatomy(_tiny("gpt2-style"), IDS)
    assert _kinds(gpt) == ["norm", "attention", "add", "norm", "mlp", "add"]  # pre-norm
    assert gpt.block[1].shape_in == (1, 7, 32) and "scores (1, 4, 7, 7)" in gpt.block[1].detail
    assert [p.kind for p in gpt.embed] == ["embed", "positions"] and gpt.out[-1].shape_out == (1, 7, 99)
    (bert,) = anatomy(_tiny("bert-style"), IDS)
    assert _kinds(bert) == ["attention", "add", "norm", "mlp", "add", "norm"]  # post-norm (BERT)
    (moe,) = anatomy(_tiny("mixtral-style"), IDS)
    assert moe.block[4].kind == "experts" and moe.block[4].view == "gate" and "top-2" in moe.block[4].detail
    assert "grouped-query" in moe.block[1].detail
    (mamba,) = anatomy(_tiny("mamba-style"), IDS)
    assert _kinds(mamba) == ["norm", "scan", "add"] and mamba.block[1].view == "scan"


def test_an_encoder_decoder_has_two_stacks_and_cross_attention():
    enc, dec = anatomy(_tiny("t5-style"), IDS, decoder_input_ids=IDS[:, :3])
    assert "cross-attention" in _kinds(dec) and "cross-attention" not in _kinds(enc)
    cross = next(p for p in dec.block if p.kind == "cross-attention")
    assert "scores (1, 4, 3, 7)" in cross.detail  # 3 decoder queries over 7 encoder keys
    assert dec.layers == 3 and dec.contribution.shape == (3, 3) and enc.contribution.shape == (2, 7)


def test_the_residual_stream_is_each_layers_contribution():
    model, tok = models.load("gpt")
    ids = torch.tensor([tok.encode("Mia has a red ball.")])
    (stack,) = anatomy(model, ids)
    with torch.inference_mode():
        hs = model(ids, trace=True).trace.hidden_states
    L, T = len(hs) - 1, ids.shape[1]
    assert stack.contribution.shape == (L, T) and stack.stream.shape == (L + 1, T)
    torch.testing.assert_close(stack.contribution[2, 3], (hs[3][0, 3] - hs[2][0, 3]).norm(), atol=1e-5, rtol=0)
    torch.testing.assert_close(stack.stream[0], hs[0][0].norm(dim=-1), atol=1e-5, rtol=0)


def test_each_t5_stack_describes_its_own_position_bias():
    enc, dec = anatomy(_tiny("t5-style"), IDS, decoder_input_ids=IDS[:, :3])
    (e,) = [p for p in enc.embed if p.kind == "positions"]
    (d,) = [p for p in dec.embed if p.kind == "positions"]
    assert e.shape_out == (4, 7, 7) and d.shape_out == (4, 3, 3) and "causal" in d.name
