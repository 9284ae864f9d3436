"""Issue 16, item 3: each family's positional encoding, and one query's attention with and without it."""

from __future__ import annotations

import math

import pytest
import torch
from test_contract import _tiny

from archplay import models
from archplay.models.analysis.positions import effect, encoding, positions_off
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.architectures.encoder import Encoder, EncoderConfig
from archplay.models.architectures.layers import sinusoidal_positions

IDS = torch.tensor([[5, 9, 13, 17, 21, 25, 29, 33]])


def _decoder(positions: str):
    torch.manual_seed(0)
    return Decoder(DecoderConfig.gpt2_tiny(positions=positions))


def test_each_family_says_how_positions_enter():
    gpt, _ = models.load("gpt")
    e = encoding(gpt, 16)
    assert e.kind == "learned" and e.table.shape == (16, gpt.config.d_model)
    torch.testing.assert_close(e.table, gpt.embed_positions.weight[:16].float())
    torch.testing.assert_close(e.similarity.diagonal(), torch.ones(16), atol=1e-5, rtol=0)
    s = encoding(_decoder("sinusoidal"), 10)
    torch.testing.assert_close(s.table, sinusoidal_positions(10, 32).float())
    r = encoding(_tiny("llama-style"), 8)
    assert r.kind == "rotary" and r.inv_freq[0] == 1.0 and (r.inv_freq.diff() < 0).all()
    torch.testing.assert_close(r.wavelength, 2 * math.pi / r.inv_freq)
    a = encoding(_decoder("alibi"), 6)
    assert a.slopes.shape == (4,) and a.bias.shape == (4, 6, 6)
    torch.testing.assert_close(a.bias[0, 5, 2], -a.slopes[0] * 3)  # 3 tokens back: three slopes
    t5 = encoding(_tiny("t5-style"), 7)
    assert t5.kind == "relative" and t5.bias.shape == (4, 7, 7)
    s5 = models.attention_steps(_tiny("t5-style"), IDS[:, :7], 0, 2, 3, decoder_input_ids=IDS[:, :2])
    torch.testing.assert_close(t5.bias[2, 3], s5.bias, atol=1e-6, rtol=0)  # the bias the encoder adds
    m = encoding(_tiny("mamba-style"))
    assert m.kind == "none" and m.table is None and m.bias is None and "scan" in m.note


@pytest.mark.parametrize("positions", ["learned", "rotary", "alibi", "relative"])
def test_the_position_term_changes_the_scores_and_can_be_switched_off(positions):
    model = _decoder(positions)
    e = effect(model, IDS, 1, 0, 6)
    torch.testing.assert_close(e.with_positions.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert (e.with_positions - e.without_positions).abs().max() > 1e-4
    with torch.inference_mode():
        on = model(IDS, trace=True).trace.attentions[1][0, 0, 6]
        with positions_off():
            off = model(IDS, trace=True).trace.attentions[1][0, 0, 6]
        again = model(IDS, trace=True).trace.attentions[1][0, 0, 6]
    torch.testing.assert_close(e.with_positions, on.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(e.without_positions, off.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(again, on, atol=0, rtol=0)  # off only inside the block


def test_without_positions_a_bidirectional_model_is_a_bag_of_tokens():
    torch.manual_seed(0)
    bert = Encoder(EncoderConfig.bert_tiny())
    perm = torch.tensor([3, 1, 0, 2, 4, 7, 6, 5])
    with torch.inference_mode(), positions_off():
        a = bert(IDS, trace=True).trace.hidden_states[-1][0]
        b = bert(IDS[:, perm], trace=True).trace.hidden_states[-1][0]
    torch.testing.assert_close(b, a[perm], atol=1e-5, rtol=0)  # permuting the tokens permutes the output
