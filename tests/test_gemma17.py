"""Issue 17, Gemma 2 and Gemma 3 (``gemma2``, ``gemma3_text``): each reproduces transformers on small random
weights (logits, every attention map and hidden state, 32 greedy tokens, traced and untraced); each of
Gemma's parts is there and matters (switched off, the logits move); "Inside a step" recomputes a
soft-capped head exactly; the card names the parts; estimate counts the parameters transformers has.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import assert_causal_parity, make_hf_model

from archplay import models
from archplay.models import attention_steps
from archplay.models.analysis import card
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.architectures.layers import GemmaRMSNorm, RMSNorm
from archplay.models.checkpoints.convert import LoadError

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"
FULL = {"rope_type": "default", "rope_theta": 10_000.0}

GEMMA = [
    ("gemma2", {}),  # caps 4 (attention) and 3 (logits), a window of 4 on layers 0 and 2
    ("gemma2", {"attn_logit_softcapping": None, "final_logit_softcapping": None, "attention_bias": True,
                "tie_word_embeddings": False, "layer_types": ["full_attention"] * 3}),  # fmt: skip
    ("gemma3_text", {}),  # q/k norms, local θ 100, linear × 4 on the global layer, logits capped at 3
    ("gemma3_text", {"final_logit_softcapping": None, "sliding_window": 3,
                     "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
                     "rope_parameters": {"full_attention": FULL, "sliding_attention": {**FULL, "rope_theta": 50.0}}}),
]  # fmt: skip
IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(GEMMA)]


@pytest.fixture(scope="module")
def gemma(hf_ckpt):
    """gemma(kind, **overrides) -> (ours, tokenizer, transformers' model); each checkpoint written once per module
    (do not change the transformers model in place)."""
    return lambda kind, **overrides: hf_ckpt(kind, **overrides)[:3]


@pytest.mark.parametrize("kind, overrides", GEMMA, ids=IDS)
def test_gemma_parity_and_generation(gemma, kind, overrides):
    ours, tok, hf = gemma(kind, **overrides)
    assert ours.config.family == "decoder" and ours.config.n_layer == 3
    assert len(tok.encode(PROMPT)) > 12  # longer than any window
    assert_causal_parity(ours, hf, tok, layers=3, atol=ATOL, prompt=PROMPT)  # (the embeddings scaled)


def test_gemma_configs_are_read(gemma):
    g2, *_ = gemma("gemma2")
    c = g2.config
    assert c.norm == "gemma_rmsnorm" and c.embed_scale and c.sandwich_norm and c.tie_embeddings
    assert c.attn_softcap == 4.0 and c.final_softcap == 3.0 and c.attn_scale == pytest.approx(24**-0.5)
    assert c.layer_types == ["sliding", "full", "sliding"] and c.sliding_window == 4 and c.head_dim == 16
    assert c.activation == "gelu_pytorch_tanh" and c.mlp == "gated" and c.qk_norm is None and c.rope_local_theta is None
    assert isinstance(g2.layers[0].post_attn_norm, GemmaRMSNorm) and g2.layers[0].attn.softcap == 4.0
    g3, *_ = gemma("gemma3_text")
    c = g3.config
    assert c.qk_norm == "head" and c.attn_softcap is None and c.final_softcap == 3.0
    assert c.rope_theta == 1e6 and c.rope_scaling["rope_type"] == "linear" and c.rope_local_theta == 100.0
    assert c.layer_types == ["sliding", "sliding", "full"]
    assert isinstance(g3.layers[0].attn.q_norm, GemmaRMSNorm) and g3.layers[0].attn.q_norm.weight.shape == (16,)
    torch.testing.assert_close(g3.rotary.inv_freq * 4, 1e6 ** -(torch.arange(0, 16, 2) / 16.0), atol=0, rtol=1e-6)
    torch.testing.assert_close(g3.rotary_local.inv_freq, 100.0 ** -(torch.arange(0, 16, 2) / 16.0), atol=0, rtol=1e-6)


def test_gemma3_older_config_keys(tmp_path):
    """Gemma 3 configs on the Hub before transformers 5: rope_theta, rope_scaling and rope_local_base_freq at the
    top, sliding_window_pattern instead of layer_types. transformers reads them; so do we, to the same model."""
    import transformers as T

    folder = tmp_path / "gemma3_text"
    make_hf_model("gemma3_text", folder)
    hf = json.loads((folder / "config.json").read_text())
    del hf["rope_parameters"], hf["layer_types"]
    hf.update(rope_theta=20_000.0, rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_local_base_freq=300.0,
              sliding_window_pattern=2)  # fmt: skip
    (folder / "config.json").write_text(json.dumps(hf))
    ours, tok = models.load(folder)
    c = ours.config
    assert (c.rope_theta, c.rope_scaling["factor"], c.rope_local_theta) == (20_000.0, 2.0, 300.0)
    assert c.layer_types == ["sliding", "full", "sliding"]
    ref_model = T.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref_model(ids).logits, atol=ATOL, rtol=0)


def test_gemma_refusals_say_why(tmp_path):
    folder = tmp_path / "gemma3_text"
    make_hf_model("gemma3_text", folder)
    hf = json.loads((folder / "config.json").read_text())
    hf["rope_parameters"]["sliding_attention"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10.0}
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(LoadError, match="RoPE scaling 'linear' on Gemma 3's local"):
        models.load(folder)
    hf = json.loads((folder / "config.json").read_text())
    hf["rope_parameters"]["sliding_attention"] = FULL
    hf["use_bidirectional_attention"] = True
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(LoadError, match="use_bidirectional_attention"):
        models.load(folder)


def test_gemma_types_are_registered():
    from archplay.models import registry

    assert registry.checkpoint("gemma2")[0].name == registry.checkpoint("gemma3_text")[0].name == "decoder"


# --------------------------------------------------------------------------- each part is there and matters


def _variant(model: Decoder, **changes) -> Decoder:
    """The same weights under a config with ``changes``; the weights the variant lacks are dropped."""
    cfg = DecoderConfig.from_dict({**model.config.to_dict(), **changes})
    other = Decoder(cfg).eval()
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=False)
    assert not missing, missing
    return other


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("change", [
    {"attn_softcap": None}, {"embed_scale": False}, {"sandwich_norm": False}, {"attn_scale": None},
    {"norm": "rmsnorm"}, {"layer_types": ["full"] * 3}, {"activation": "silu"},
])  # fmt: skip
def test_each_gemma2_part_matters(gemma, change):
    ours, tok, _ = gemma("gemma2")
    ids = torch.tensor([tok.encode(PROMPT)])
    base = _logits(_variant(ours, final_softcap=None), ids)  # uncapped logits: every change shows in full
    assert (_logits(_variant(ours, final_softcap=None, **change), ids) - base).abs().max() > 1e-2


@pytest.mark.parametrize("change", [{"qk_norm": None}, {"rope_local_theta": None}, {"rope_scaling": None}])
def test_each_gemma3_part_matters(gemma, change):
    ours, tok, _ = gemma("gemma3_text")
    ids = torch.tensor([tok.encode(PROMPT)])
    base = _logits(_variant(ours, final_softcap=None), ids)
    assert (_logits(_variant(ours, final_softcap=None, **change), ids) - base).abs().max() > 1e-2


def test_final_softcap_is_a_tanh_of_the_plain_logits(gemma):
    ours, tok, _ = gemma("gemma2")
    ids = torch.tensor([tok.encode(PROMPT)])
    capped, plain = _logits(ours, ids), _logits(_variant(ours, final_softcap=None), ids)
    assert plain.abs().max() > 3.5 and capped.abs().max() < 3.0  # the cap is 3
    torch.testing.assert_close(capped, 3.0 * torch.tanh(plain / 3.0), atol=1e-5, rtol=0)
    from archplay.models.analysis.lens import logit_lens

    with torch.no_grad():
        out = ours(ids, trace=True)
    lens = logit_lens(ours, out.trace.hidden_states, top=1)  # the lens reads the capped head too
    final = torch.softmax(out.logits[0], -1).max(-1).values
    torch.testing.assert_close(lens.top_probs[-1, :, 0], final, atol=1e-5, rtol=0)


def test_gemma_rmsnorm_scales_by_one_plus_w_in_float32():
    torch.manual_seed(0)
    norm = GemmaRMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x = torch.randn(3, 8) * 5
    x32 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), x32 * (1 + norm.weight), atol=1e-6, rtol=0)
    assert GemmaRMSNorm(8).weight.abs().sum() == 0  # initialised at w = 0: the identity scale
    plain = RMSNorm(8)
    with torch.no_grad():
        plain.weight.copy_(norm.weight)
    assert (plain(x) - norm(x)).abs().max() > 0.5
    # bf16: the product x̂·(1 + w) is taken in float32 and rounded once (Llama's RMSNorm rounds x̂ first)
    xb, nb = x.bfloat16(), GemmaRMSNorm(8).bfloat16()
    with torch.no_grad():
        nb.weight.copy_(norm.weight.bfloat16())
    ref = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-6)
           * (1 + nb.weight.float())).bfloat16()  # fmt: skip
    assert nb(xb).dtype == torch.bfloat16 and torch.equal(nb(xb), ref)


def test_embedding_scale_is_rounded_to_the_weights_dtype(gemma):
    """transformers multiplies by √d_model cast to the weights' dtype (in bf16, √32 = 5.6569 becomes 5.65625)."""
    ours, tok, hf = gemma("gemma2")
    ours, hf = ours.bfloat16(), copy.deepcopy(hf).bfloat16()
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        got = ours(ids, trace=True).trace.hidden_states[0]
        ref = hf(ids, output_hidden_states=True).hidden_states[0]
    assert got.dtype == torch.bfloat16 and torch.equal(got, ref)
    emb = ours.embed_tokens(ids)
    assert not torch.equal(got, emb * 32**0.5)  # a float32 factor rounds differently


def test_gemma_parts_are_off_by_default():
    plain = Decoder(DecoderConfig.llama_tiny())
    names = {n for n, _ in plain.named_parameters()}
    assert not any("post_attn_norm" in n or "post_mlp_norm" in n for n in names)
    assert plain.rotary_local is None and type(plain.lm_head) is torch.nn.Linear
    assert plain.layers[0].attn.softcap is None and plain.layers[0].attn.scale == 8**-0.5
    for bad, match in [({"attn_softcap": 0.0}, "attn_softcap must be None or a positive"),
                       ({"sandwich_norm": True, "norm_position": "post"}, "sandwich_norm needs norm_position 'pre'"),
                       ({"rope_local_theta": 10.0, "positions": "learned"}, "rope_local_theta needs rotary")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DecoderConfig.llama_tiny(**bad)


# --------------------------------------------------------------------------- inside a step, the card, estimate


def test_attention_steps_recompute_a_soft_capped_head(gemma):
    from archplay.viz.steps import attention_step_figure, residual_figure

    ours, tok, _ = gemma("gemma2")
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        trace = ours(ids, trace=True).trace
    T = ids.shape[1]
    for layer, head, query in [(0, 1, T - 1), (1, 3, T // 2), (2, 0, 5)]:
        s = attention_steps(ours, ids, layer, head, query)
        assert s.softcap == 4.0 and s.scale == pytest.approx(24**-0.5) and s.residual_out is None
        torch.testing.assert_close(s.weights, trace.attentions[layer][0, head, query], atol=1e-5, rtol=0)
        z = (4.0 * torch.tanh(s.scores * s.scale / 4.0) + s.bias).masked_fill(~s.mask, float("-inf"))
        torch.testing.assert_close(torch.softmax(z, -1), s.weights, atol=1e-5, rtol=0)
        torch.testing.assert_close(s.logits, z, atol=1e-5, rtol=0)
        uncapped = torch.softmax((s.scores * s.scale + s.bias).masked_fill(~s.mask, float("-inf")), -1)
        assert (uncapped - s.weights).abs().max() > 1e-3  # the cap changes the weights here
        if ours.config.layer_types[layer] == "sliding":
            assert s.mask.sum() == min(4, query + 1)
    flow = attention_step_figure(s, tok.tokens(ids[0].tolist()), "q", position="rotary")
    scaled = np.asarray(next(t for t in flow.data if t.name == "scaled").z, dtype=np.float64)[:, 0]
    np.testing.assert_allclose(scaled, s.scaled.numpy(), atol=1e-6, rtol=1e-6)
    logits = np.asarray(next(t for t in flow.data if t.name == "logits").z, dtype=np.float64)[:, 0]
    np.testing.assert_allclose(logits[s.mask.numpy()], s.logits[s.mask].numpy(), atol=1e-6, rtol=1e-6)
    assert "soft-cap 4·tanh(·/4)" in flow.layout.title.text and "→ cap 4" in flow.layout.xaxis2.ticktext[1]
    hover = next(t for t in flow.data if t.name == "weights").customdata[0][0]
    assert "4·tanh(·/4) = " in hover
    assert [t.name for t in residual_figure(s, "q").data] == ["residual in", "x", "head output", "attention output"]
    llama = Decoder(DecoderConfig.llama_tiny())
    assert attention_steps(llama, ids[:, :6], 0, 0, 5).softcap is None
    # the tab's summary writes the capped sum the softmax takes (before: score × scale + bias, without the cap)
    from archplay.app.steps import summary

    labels = tok.tokens(ids[0].tolist())
    j = int(torch.argmax(s.weights))
    line = summary(s, labels, labels[s.query], "rotary").split("  \n")[0]
    assert f"4·tanh({float(s.scores[j]):.3g} × {s.scale:.3g} / 4)" in line
    assert f"= {float(s.logits[j]):.3g} before the softmax" in line


def test_gemma_card_rows(gemma):
    g2, *_ = gemma("gemma2")
    rows = dict(card.architecture(g2))
    assert rows["soft-capping"] == "attention scores 4·tanh(s/4) after the scale, before the softmax; final logits 3·tanh(z/3)"
    assert rows["sandwich norms"].startswith("a norm after the attention and after the feed-forward")
    assert rows["embedding scale"].startswith("token embeddings × √d_model = 5.6569")
    assert rows["attention scale"].startswith("q·k × 0.2041 = 24^-½")
    assert rows["local/global layers"].startswith("2 local : 1 global, in order L G, repeated (L: a window of 4")
    assert rows["norm"].startswith("Gemma's RMSNorm, x̂·(1 + w) in float32, pre-norm")
    assert "GEGLU" in rows["feed-forward"] and "q/k norm" not in rows
    g3, *_ = gemma("gemma3_text")
    rows = dict(card.architecture(g3))
    assert rows["soft-capping"] == "final logits 3·tanh(z/3)"
    assert rows["positions"] == ("rotary (RoPE) on q and k, θ = 1e+06, linear scaling × 4 on global layers; "
                                 "local layers θ = 100, unscaled (Gemma 3)")  # fmt: skip
    assert rows["q/k norm"].startswith("Gemma's RMSNorm, x̂·(1 + w), over each head's q and k (16 channels")
    assert rows["local/global layers"].startswith("2 local : 1 global, in order L L G (")
    plain = dict(card.architecture(Decoder(DecoderConfig.llama_tiny())))
    assert not {"soft-capping", "sandwich norms", "embedding scale", "attention scale", "local/global layers"} & set(plain)


def test_estimate_counts_what_transformers_has(tmp_path):
    from archplay.models.analysis.estimate import estimate

    for kind in ("gemma2", "gemma3_text"):
        folder = tmp_path / kind
        hf = make_hf_model(kind, folder, tie_word_embeddings=kind == "gemma2")
        assert estimate(folder)["params"] == sum(p.numel() for p in hf.parameters())
