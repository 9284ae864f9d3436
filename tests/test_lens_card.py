"""The logit lens and the architecture card, checked against hand computations on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize
from torch import nn

from archplay.models.analysis import lens as lens_module
from archplay.models.analysis.card import TIED_LM_HEAD, active_parameters, architecture, parameter_breakdown
from archplay.models.analysis.lens import logit_lens
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.architectures.encoder import Encoder, EncoderConfig
from archplay.models.architectures.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from archplay.models.architectures.moe import MoEConfig, MoEDecoder
from archplay.models.architectures.ssm import Mamba, MambaConfig
from archplay.viz.card import parameter_figure
from archplay.viz.lens import logit_lens_heatmap

V, D, T = 99, 32, 9
BUILD = {
    "gpt2": lambda: Decoder(DecoderConfig.gpt2_tiny()),
    "llama": lambda: Decoder(DecoderConfig.llama_tiny()),
    "moe": lambda: MoEDecoder(MoEConfig.mixtral_tiny()),
    "mamba": lambda: Mamba(MambaConfig.mamba_tiny()),
    "bert": lambda: Encoder(EncoderConfig.bert_tiny()),
    "t5": lambda: EncoderDecoder(EncoderDecoderConfig.t5_tiny()),
    "t5-v1.1": lambda: EncoderDecoder(EncoderDecoderConfig.t5_v11_tiny()),
}
LENS_MODELS = ["gpt2", "llama", "moe", "mamba"]
VOCAB_LABELS = [f"v{i}" for i in range(V)]
INPUT_LABELS = [f"t{i}" for i in range(T)]


def tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = BUILD[name]().eval()
    randomize(model)  # large random weights: sharp, well-separated distributions at every layer
    return model


def traced(name: str, batch: int = 1):
    model = tiny(name)
    ids = torch.randint(0, V, (batch, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids, trace=True)
    return model, out


def lens_of(name: str, top: int = 5):
    model, out = traced(name)
    return model, out, logit_lens(model, [h[0] for h in out.trace.hidden_states], top=top)


def hand_readout(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """softmax(lm_head(final_norm(h))) written out from the weights: h (T, D) -> (T, V)."""
    norm = model.norm
    if isinstance(norm, nn.LayerNorm):
        mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        x = (h - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    else:  # RMSNorm
        x = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    return torch.softmax(x @ model.lm_head.weight.T, dim=-1)


def unique_parameter_count(model: nn.Module) -> int:
    """Every Parameter once, gathered module by module (a tied matrix sits in two modules)."""
    seen = {id(p): p.numel() for m in model.modules() for p in m.parameters(recurse=False)}
    return sum(seen.values())


# ---------------------------------------------------------------- the logit lens


@pytest.mark.parametrize("name", LENS_MODELS)
def test_last_row_is_the_models_own_next_token_distribution(name):
    model, out, lens = lens_of(name)
    n_rows = model.config.n_layer + 1
    assert lens.top_ids.shape == lens.top_probs.shape == (n_rows, T, 5)
    assert lens.final_prob.shape == lens.final_rank.shape == lens.entropy.shape == (n_rows, T)
    assert lens.top_probs.dtype == torch.float32 and lens.top_ids.dtype == torch.int64
    assert lens.layer_labels == ["embeddings"] + [f"layer {i}" for i in range(1, n_rows)]

    probs = torch.softmax(out.logits[0].float(), dim=-1)  # (T, V)
    want = probs.topk(5, dim=-1)
    assert torch.equal(lens.top_ids[-1], want.indices)
    torch.testing.assert_close(lens.top_probs[-1], want.values)
    assert torch.equal(lens.final_ids, probs.argmax(-1))
    torch.testing.assert_close(lens.final_prob[-1], probs.max(-1).values)
    assert (lens.final_rank[-1] == 0).all()
    torch.testing.assert_close(lens.entropy[-1], -(probs * probs.log()).sum(-1))


@pytest.mark.parametrize("name", LENS_MODELS)
def test_every_layer_is_the_final_norm_and_head_applied_by_hand(name):
    model, out, lens = lens_of(name)
    hidden = out.trace.hidden_states
    with torch.no_grad():
        final = hand_readout(model, hidden[-1][0]).argmax(-1)  # (T,)
        for layer, h in enumerate(hidden):
            p = hand_readout(model, h[0])  # (T, V)
            want = p.topk(5, dim=-1)
            assert torch.equal(lens.top_ids[layer], want.indices), f"layer {layer}"
            torch.testing.assert_close(lens.top_probs[layer], want.values, atol=1e-5, rtol=1e-4)
            p_final = p.gather(-1, final[:, None])[:, 0]
            torch.testing.assert_close(lens.final_prob[layer], p_final, atol=1e-5, rtol=1e-4)
            assert torch.equal(lens.final_rank[layer], (p > p_final[:, None]).sum(-1))
            torch.testing.assert_close(lens.entropy[layer], -(p * p.log()).sum(-1), atol=1e-4, rtol=1e-4)
    # The layers really differ: the embeddings' guesses are not the output's.
    assert not torch.equal(lens.top_ids[0], lens.top_ids[-1])


def test_chunked_read_out_and_batch_selection_give_the_same_lens(monkeypatch):
    model, out = traced("llama", batch=2)
    whole = logit_lens(model, [h[1] for h in out.trace.hidden_states], top=3)
    monkeypatch.setattr(lens_module, "CHUNK_ELEMENTS", 2 * V)  # two positions per chunk
    chunked = logit_lens(model, out.trace.hidden_states, top=3, sequence=1)  # (B, T, D) input, row 1
    for field in ("top_ids", "top_probs", "final_ids", "final_prob", "final_rank", "entropy"):
        torch.testing.assert_close(getattr(chunked, field), getattr(whole, field))


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_encoder_families_are_refused(name):
    model, out = traced(name)
    with pytest.raises(ValueError, match="decoder-only"):
        logit_lens(model, [h[0] for h in out.trace.hidden_states])


def test_mismatched_hidden_states_are_refused():
    model, out = traced("gpt2")
    hidden = [h[0] for h in out.trace.hidden_states]
    with pytest.raises(ValueError, match="same"):
        logit_lens(model, [hidden[0], hidden[1][:-1]])
    with pytest.raises(ValueError, match="wide"):
        logit_lens(model, [h[:, :16] for h in hidden])


# ---------------------------------------------------------------- the lens heatmap


def test_heatmap_shows_each_layers_top_prediction():
    _, _, lens = lens_of("gpt2")
    fig = logit_lens_heatmap(lens, INPUT_LABELS, VOCAB_LABELS)
    (hm,) = fig.data
    assert hm.type == "heatmap" and hm.name == "logit lens"
    np.testing.assert_array_equal(np.asarray(hm.z), lens.top_probs[..., 0].numpy())
    top1 = lens.top_ids[..., 0].tolist()
    assert [list(row) for row in hm.text] == [[VOCAB_LABELS[i] for i in row] for row in top1]
    np.testing.assert_array_equal(np.asarray(hm.y), np.arange(3))  # y 0 = embeddings, at the bottom
    assert list(fig.layout.yaxis.ticktext) == lens.layer_labels
    assert list(fig.layout.xaxis.ticktext) == INPUT_LABELS
    assert fig.layout.yaxis.autorange != "reversed"

    cd = np.asarray(hm.customdata)
    assert cd.shape == (3, T)
    hover = cd[1][4]
    assert "layer 1" in hover and "‘t4’" in hover
    ranked = [f"{r + 1}. ‘{VOCAB_LABELS[i]}’ {p:.1%}" for r, (i, p) in
              enumerate(zip(lens.top_ids[1, 4].tolist(), lens.top_probs[1, 4].tolist()))]  # fmt: skip
    assert all(line in hover for line in ranked)
    assert hover.index(ranked[0]) < hover.index(ranked[-1])
    assert f"{lens.final_prob[1, 4].item():.1%}" in hover


def test_heatmap_takes_plain_arrays_and_a_label_function_and_escapes_labels():
    ids = np.array([[[1, 2], [2, 1]], [[3, 1], [1, 3]]])  # (L=2, T=2, k=2)
    probs = [[[0.6, 0.3], [0.5, 0.4]], [[0.9, 0.05], [0.7, 0.2]]]
    calls = []

    names = {1: "<br>", 2: "a&b", 3: "averyverylongtoken"}

    def labels_for(id_list):
        calls.append(list(id_list))
        return [names[i] for i in id_list]

    fig = logit_lens_heatmap({"top_ids": ids, "top_probs": probs}, ["x", "<y>"], labels_for)
    hm = fig.data[0]
    assert calls == [[1, 2, 3]]  # asked once, for the distinct ids
    np.testing.assert_array_equal(np.asarray(hm.z), np.array(probs)[..., 0])
    assert [list(r) for r in hm.text] == [["&lt;br&gt;", "a&amp;b"], ["averyve…", "&lt;br&gt;"]]
    assert "‘&lt;y&gt;’" in hm.customdata[0][1] and "<br>" in hm.customdata[0][1]  # markup only as line breaks
    assert list(fig.layout.yaxis.ticktext) == ["embeddings", "layer 1"]
    assert list(fig.layout.xaxis.ticktext) == ["x", "&lt;y&gt;"]


def test_long_inputs_keep_hover_but_drop_cell_text():
    n_layers, n_pos = 3, 80
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(n_layers, n_pos, 5))
    probs = np.sort(rng.random((n_layers, n_pos, 5)), axis=-1)[..., ::-1] / 5
    fig = logit_lens_heatmap({"top_ids": ids, "top_probs": probs}, [f"w{i}" for i in range(n_pos)], VOCAB_LABELS)
    hm = fig.data[0]
    assert hm.text is None
    assert np.asarray(hm.customdata).shape == (n_layers, n_pos)
    assert f"‘{VOCAB_LABELS[ids[2, 70, 0]]}’" in hm.customdata[2][70]
    np.testing.assert_array_equal(np.asarray(hm.z), probs[..., 0])


def test_heatmap_rejects_labels_that_do_not_fit():
    _, _, lens = lens_of("gpt2")
    with pytest.raises(ValueError, match="token labels"):
        logit_lens_heatmap(lens, INPUT_LABELS[:-1], VOCAB_LABELS)


# ---------------------------------------------------------------- parameter breakdown


@pytest.mark.parametrize("name", list(BUILD))
def test_breakdown_sums_to_the_unique_parameter_count(name):
    model = BUILD[name]()
    rows = parameter_breakdown(model)
    labels = [label for label, _ in rows]
    assert len(labels) == len(set(labels)) and "other" not in labels
    assert all(isinstance(n, int) and n >= 0 for _, n in rows)
    assert sum(n for _, n in rows) == unique_parameter_count(model)


def test_breakdown_components_match_hand_counts():
    gpt2 = dict(parameter_breakdown(BUILD["gpt2"]()))  # d_ff 128, 64 positions, tied head
    assert gpt2["token embeddings"] == V * D
    assert gpt2["position embeddings"] == 64 * D
    assert gpt2["attention"] == 2 * (4 * D * D + 4 * D)
    assert gpt2["feed-forward"] == 2 * (D * 128 + 128 + 128 * D + D)
    assert gpt2["norms"] == (2 * 2 + 1) * 2 * D  # two LayerNorms per block + the final one
    assert gpt2[TIED_LM_HEAD] == 0 and "LM head" not in gpt2

    llama = dict(parameter_breakdown(BUILD["llama"]()))  # 2 kv heads of 8: k and v are 32 -> 16
    assert llama["attention"] == 2 * (D * D + D * 16 + D * 16 + D * D)
    assert llama["LM head"] == V * D and TIED_LM_HEAD not in llama
    assert "position embeddings" not in llama  # rotary: nothing learned

    moe = dict(parameter_breakdown(BUILD["moe"]()))
    assert moe["experts"] == 2 * 4 * 3 * D * 48 and moe["router"] == 2 * 4 * D
    assert "feed-forward" not in moe

    t5 = dict(parameter_breakdown(BUILD["t5"]()))
    assert t5["cross-attention"] == 2 * 4 * D * D
    assert t5["relative position bias"] == 2 * 32 * 4
    assert t5["token embeddings (shared)"] == V * D and t5[TIED_LM_HEAD] == 0

    mamba = dict(parameter_breakdown(BUILD["mamba"]()))  # d_inner 64, d_state 16
    assert mamba["mixer A and D"] == 2 * (64 * 16 + 64)
    assert mamba["mixer in_proj (x and gate z)"] == 2 * D * 128

    bert = dict(parameter_breakdown(BUILD["bert"]()))
    assert bert["token-type embeddings"] == 2 * D


def test_moe_active_parameters_skip_the_unchosen_experts():
    cfg = MoEConfig.mixtral_tiny(n_layer=3, n_experts=4, top_k=1, moe_layers=[True, False, True])
    model = MoEDecoder(cfg)
    per_expert = 3 * D * 48  # gate, up and down projections, no biases
    total = unique_parameter_count(model)
    assert active_parameters(model) == total - (4 - 1) * per_expert * 2  # two MoE layers
    for name in ("gpt2", "mamba", "t5", "bert"):
        dense = BUILD[name]()
        assert active_parameters(dense) == unique_parameter_count(dense)


# ---------------------------------------------------------------- architecture card


def test_architecture_rows_name_each_familys_choices():
    cards = {name: dict(architecture(BUILD[name]())) for name in BUILD}
    for name, card in cards.items():
        assert all(isinstance(v, str) for v in card.values())
        assert card["parameters"] == f"{unique_parameter_count(BUILD[name]()):,}"
    assert "learned" in cards["gpt2"]["positions"] and "LayerNorm" in cards["gpt2"]["norm"]
    assert cards["gpt2"]["tied embeddings"].startswith("yes")
    assert cards["llama"]["key/value heads"].startswith("2 (grouped-query")
    assert "rotary" in cards["llama"]["positions"] and "RMSNorm" in cards["llama"]["norm"]
    assert "SwiGLU" in cards["llama"]["feed-forward"]
    assert cards["moe"]["experts per token (top-k)"] == "2" and "4 per MoE layer" in cards["moe"]["experts"]
    assert "active parameters per token" in cards["moe"]
    assert "relative" in cards["t5"]["positions"] and cards["t5"]["layers"] == "2 encoder + 2 decoder"
    assert "post-norm" in cards["bert"]["norm"]
    assert cards["mamba"]["d_state (N)"] == "16" and cards["mamba"]["dt_rank (R)"] == "2"
    assert cards["mamba"]["positions"].startswith("none")
    assert "attention heads" not in cards["mamba"]


# ---------------------------------------------------------------- parameter figure


def test_parameter_figure_bars_are_the_breakdown():
    model = BUILD["moe"]()
    rows = parameter_breakdown(model)
    total, active = unique_parameter_count(model), active_parameters(model)
    fig = parameter_figure(rows, active=active, total=total)
    (bars,) = fig.data
    assert bars.type == "bar" and bars.orientation == "h"
    assert np.asarray(bars.x).tolist() == [n for _, n in rows]
    assert list(fig.layout.yaxis.ticktext) == [label for label, _ in rows]
    assert fig.layout.yaxis.autorange == "reversed"  # the first component on top
    shares = [row[2] for row in bars.customdata]
    assert sum(shares) == pytest.approx(1.0)
    note = fig.layout.annotations[0].text
    assert f"{total:,}" in note and f"{active:,}" in note

    plain = parameter_figure([("a", 3), ("b <c>", 1)])
    assert np.asarray(plain.data[0].x).tolist() == [3, 1]
    assert list(plain.layout.yaxis.ticktext) == ["a", "b &lt;c&gt;"]
    assert "active" not in plain.layout.annotations[0].text
    assert list(plain.data[0].text) == ["3 · 75.0%", "1 · 25.0%"]
