"""Issue 17, the optional list: OLMo 2 and StableLM (decoder family), ModernBERT (encoder family).

Each reproduces transformers on small random weights (logits, every attention map and hidden state; the
decoders 32 greedy tokens, traced and untraced; ModernBERT with and without padding); each special part is
there and matters (switched off, the logits move); what is refused says why; the card names the parts;
``estimate`` counts the parameters transformers has; "Inside a step" recomputes a head's weights exactly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_causal_parity, make_hf_model

from archplay import models
from archplay.models import attention_steps
from archplay.models.analysis import card
from archplay.models.analysis.anatomy import anatomy
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.checkpoints.convert import LoadError

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"

DECODERS = [
    ("olmo2", {}),
    ("olmo2", {"attention_bias": True, "tie_word_embeddings": True, "num_key_value_heads": 4}),
    ("stablelm", {}),  # q/k/v biases, per-head q/k LayerNorms, RoPE on a quarter of each head
    ("stablelm", {"use_parallel_residual": True, "qk_layernorm": False, "use_qkv_bias": False,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}}),
]  # fmt: skip
DECODER_IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(DECODERS)]


@pytest.fixture(scope="module")
def ckpt(hf_ckpt):
    return hf_ckpt


def _logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


def _variant(model, allow_missing=(), **changes):
    """The same weights under a config with ``changes``; weights the variant lacks are dropped, none may be missing
    (but the norms named in ``allow_missing``, which keep their initial unit scale)."""
    other = type(model)(type(model.config).from_dict({**model.config.to_dict(), **changes})).eval()
    missing, _ = other.load_state_dict(model.state_dict(), strict=False)
    assert not [k for k in missing if not any(f".{n}." in k for n in allow_missing)], missing
    return other


# --------------------------------------------------------------------------- decoders: parity


@pytest.mark.parametrize("kind, overrides", DECODERS, ids=DECODER_IDS)
def test_decoder_parity_and_generation(ckpt, kind, overrides):
    ours, tok, hf, _ = ckpt(kind, **overrides)
    assert ours.config.family == "decoder"
    assert_causal_parity(ours, hf, tok, layers=2, atol=ATOL, prompt=PROMPT, stream=True)


def test_configs_are_read(ckpt):
    olmo, *_ = ckpt("olmo2")
    c = olmo.config
    assert c.reordered_norm and c.qk_norm == "all" and not c.sandwich_norm and c.norm == "rmsnorm"
    assert (c.qkv_bias, c.o_bias, c.mlp_bias, c.mlp, c.activation) == (False, False, False, "gated", "silu")
    block = olmo.layers[0]
    assert isinstance(block.attn_norm, torch.nn.Identity) and isinstance(block.mlp_norm, torch.nn.Identity)
    assert block.post_attn_norm.weight.shape == (32,) and block.attn.q_norm.weight.shape == (32,)
    assert block.attn.k_norm.weight.shape == (16,)  # 2 key/value heads × 8
    stable, *_ = ckpt("stablelm")
    c = stable.config
    assert c.norm == "layernorm" and c.rotary_fraction == 0.25 and c.rotary_dim == 2 and c.qk_norm == "each_head"
    assert (c.qkv_bias, c.o_bias, c.mlp_bias, c.parallel_residual) == (True, False, False, False)
    assert stable.layers[0].attn.q_norm.weight.shape == (4, 8) and stable.layers[0].attn.k_norm.weight.shape == (2, 8)
    parallel, *_ = ckpt("stablelm", **DECODERS[3][1])
    c = parallel.config
    assert c.parallel_residual and c.shared_norm and c.qk_norm is None and c.rotary_dim == 4 and c.rope_theta == 500.0
    assert parallel.layers[0].mlp_norm is None


def test_stablelm_per_head_norms_are_stacked_from_the_checkpoint(ckpt):
    ours, _, hf, _ = ckpt("stablelm")
    attn = hf.model.layers[1].self_attn
    q, k = ours.layers[1].attn.q_norm.weight, ours.layers[1].attn.k_norm.weight  # (H, Dh), (Hkv, Dh)
    torch.testing.assert_close(q, torch.stack([n.weight for n in attn.q_layernorm.norms]), atol=0, rtol=0)
    torch.testing.assert_close(k, torch.stack([n.weight for n in attn.k_layernorm.norms]), atol=0, rtol=0)
    assert q.shape == (4, 8) and k.shape == (2, 8) and (q[0] - q[1]).abs().max() > 0.01


# --------------------------------------------------------------------------- decoders: each part matters


@pytest.mark.parametrize("change", [{"reordered_norm": False}, {"qk_norm": None}])
def test_each_olmo2_part_matters(ckpt, change):
    """Without the reordered norm the block is Llama's (fresh unit pre-norms, the post-norms' weights unused)."""
    ours, tok, _, _ = ckpt("olmo2")
    ids = torch.tensor([tok.encode(PROMPT)])
    other = _variant(ours, allow_missing=("attn_norm", "mlp_norm"), **change)
    assert (_logits(other, ids) - _logits(ours, ids)).abs().max() > 1e-2


def test_olmo2_norms_come_after_the_sublayers(ckpt):
    """The block is x + Norm(Attn(x)), x + Norm(MLP(x)), computed here by hand from the block's own modules."""
    ours, tok, _, _ = ckpt("olmo2")
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        hs = ours(ids, trace=True).trace.hidden_states
        block, x = ours.layers[0], hs[0]
        rope = ours.rotary(torch.arange(ids.shape[1]))
        mask = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
        x = x + block.post_attn_norm(block.attn(x, mask=mask, rope=rope)[0])
        x = x + block.post_mlp_norm(block.mlp(x))
    torch.testing.assert_close(x, hs[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("change", [{"qk_norm": None}, {"rotary_fraction": 1.0}, {"qkv_bias": False},
                                    {"norm": "rmsnorm"}])  # fmt: skip
def test_each_stablelm_part_matters(ckpt, change):
    ours, tok, _, _ = ckpt("stablelm")
    ids = torch.tensor([tok.encode(PROMPT)])
    assert (_logits(_variant(ours, **change), ids) - _logits(ours, ids)).abs().max() > 1e-2


def test_stablelm_parallel_residual_matters(ckpt):
    ours, tok, _, _ = ckpt("stablelm", **DECODERS[3][1])
    ids = torch.tensor([tok.encode(PROMPT)])
    sequential = _variant(ours, allow_missing=("mlp_norm",), parallel_residual=False, shared_norm=False)  # fresh
    assert (_logits(sequential, ids) - _logits(ours, ids)).abs().max() > 1e-2


def test_reordered_norm_is_off_by_default_and_checked():
    plain = Decoder(DecoderConfig.llama_tiny())
    assert not plain.config.reordered_norm and plain.layers[0].post_attn_norm is None
    assert not isinstance(plain.layers[0].attn_norm, torch.nn.Identity)
    for bad in ({"norm_position": "post"}, {"parallel_residual": True}, {"sandwich_norm": True}):
        with pytest.raises(ValueError, match="reordered_norm .OLMo 2. needs"):
            DecoderConfig.llama_tiny(reordered_norm=True, **bad)
    with pytest.raises(ValueError, match="qk_norm must be None or one of head, all, each_head"):
        DecoderConfig.llama_tiny(qk_norm="heads")


@pytest.mark.parametrize("kind, change, match", [
    ("olmo2", {"sliding_window": 4}, "OLMo 2 checkpoints with sliding-window layers .* not supported"),
    ("olmo2", {"rope_parameters": {"rope_type": "proportional", "rope_theta": 10000.0}},  # yarn loads (issue 17)
     "RoPE scaling 'proportional' is not supported"),
    ("stablelm", {"hidden_size": 30}, "hidden_size 30 does not divide into 4 heads"),
])  # fmt: skip
def test_decoder_refusals_say_why(ckpt, tmp_path, kind, change, match):
    *_, folder = ckpt(kind)
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    hf = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, **change}))
    with pytest.raises(LoadError, match=match):
        models.load(tmp_path)


def test_stablelm_older_config_keys(ckpt, tmp_path):
    """stablelm-3b-4e1t's config.json: rope_theta and partial_rotary_factor at the top, no rope_parameters."""
    *_, folder = ckpt("stablelm")
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    hf = json.loads((folder / "config.json").read_text())
    del hf["rope_parameters"]
    hf.update(rope_theta=1000.0, partial_rotary_factor=0.5)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    ours, _ = models.load(tmp_path)
    assert ours.config.rope_theta == 1000.0 and ours.config.rotary_dim == 4
    del hf["partial_rotary_factor"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert models.load(tmp_path)[0].config.rotary_fraction == 0.25  # transformers' default for stablelm


# --------------------------------------------------------------------------- decoders: card, anatomy, steps, estimate


def test_decoder_card_rows(ckpt):
    rows = dict(card.architecture(ckpt("olmo2")[0]))
    assert rows["reordered norm"] == ("a norm after the attention and after the feed-forward, none before: "
                                      "x + Norm(Attn(x)), x + Norm(MLP(x)) (OLMo 2)")  # fmt: skip
    assert rows["q/k norm"] == ("RMSNorm over the whole q and k projections (32 and 16 channels), before RoPE "
                                "(OLMoE, OLMo 2)")  # fmt: skip
    assert rows["norm"] == ("RMSNorm after each sublayer, before its residual add (none before; + a final norm), "
                            "ε = 1e-05")  # fmt: skip
    assert rows["biases"] == "none" and "SwiGLU" in rows["feed-forward"]
    rows = dict(card.architecture(ckpt("stablelm")[0]))
    assert rows["q/k norm"] == ("LayerNorm (no bias) over each head's q and k (8 channels), every head its own scale, "
                                "before RoPE (StableLM 2)")  # fmt: skip
    assert rows["positions"] == "rotary (RoPE) on q and k, θ = 10000, on 25% of each head's channels"
    assert rows["biases"] == "q/k/v" and rows["norm"] == "LayerNorm, pre-norm (+ a final norm), ε = 1e-05"
    assert "reordered norm" not in rows and "residual" not in rows
    rows = dict(card.architecture(ckpt("stablelm", **DECODERS[3][1])[0]))
    assert rows["residual"].startswith("parallel: x + Attn(Norm(x)) + MLP(Norm(x)), one LayerNorm shared by")
    assert "StableLM" in rows["residual"] and "q/k norm" not in rows


def test_olmo2_anatomy_has_its_norms_after_the_sublayers(ckpt):
    ours, tok, _, _ = ckpt("olmo2")
    (stack,) = anatomy(ours, torch.tensor([tok.encode(PROMPT)[:7]]))
    assert [p.kind for p in stack.block] == ["attention", "norm", "add", "mlp", "norm", "add"]
    assert "OLMo 2" in stack.block[1].detail and stack.out[0].kind == "norm"
    (gemma,) = anatomy(Decoder(DecoderConfig.llama_tiny(sandwich_norm=True)), torch.tensor([[5, 9, 13]]))
    assert [p.kind for p in gemma.block] == ["norm", "attention", "norm", "add", "norm", "mlp", "norm", "add"]
    (llama,) = anatomy(Decoder(DecoderConfig.llama_tiny()), torch.tensor([[5, 9, 13]]))
    assert [p.kind for p in llama.block] == ["norm", "attention", "add", "norm", "mlp", "add"]


@pytest.mark.parametrize("kind", ["olmo2", "stablelm"])
def test_attention_steps_recompute_the_weights(ckpt, kind):
    ours, tok, _, _ = ckpt(kind)
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        trace = ours(ids, trace=True).trace
    T = ids.shape[1]
    for layer, head, query in [(0, 1, T - 1), (1, 3, T // 2)]:
        s = attention_steps(ours, ids, layer, head, query)
        assert s.scale == pytest.approx(8**-0.5) and s.bias.abs().max() == 0 and s.mask.sum() == query + 1
        z = (s.scores * s.scale + s.bias).masked_fill(~s.mask, float("-inf"))
        torch.testing.assert_close(torch.softmax(z, -1), s.weights, atol=1e-6, rtol=0)
        torch.testing.assert_close(s.weights, trace.attentions[layer][0, head, query], atol=1e-5, rtol=0)
        torch.testing.assert_close(s.out, s.weights @ s.v, atol=1e-5, rtol=0)
        if kind == "olmo2":  # no norm before the attention: x is the residual stream; a norm after it: no sum shown
            torch.testing.assert_close(s.x, s.residual_in, atol=0, rtol=0)
            assert s.residual_out is None
        else:
            torch.testing.assert_close(s.residual_out, s.residual_in + s.attention_output, atol=0, rtol=0)
        assert s.q_before is not None and s.kv_head == head // 2


@pytest.mark.parametrize("kind, overrides", DECODERS, ids=DECODER_IDS)
def test_estimate_counts_what_transformers_has(ckpt, kind, overrides):
    from archplay.models.analysis.estimate import estimate

    ours, _, hf, folder = ckpt(kind, **overrides)
    n = sum(p.numel() for p in hf.parameters())  # transformers counts a tied matrix once too
    assert estimate(folder)["params"] == n == sum(p.numel() for p in {id(p): p for p in ours.parameters()}.values())


# --------------------------------------------------------------------------- ModernBERT

MASKED = "the cat [MASK] on the mat and she saw a red ball then the dog ran to the park"
MODERNBERT = [
    ("modernbert", {}),  # layers G L L, local ±2, θ 1000 global and 50 local, no biases, tied head with a bias
    ("modernbert", {"norm_bias": True, "attention_bias": True, "mlp_bias": True, "classifier_bias": True,
                    "decoder_bias": False, "local_attention": 6, "hidden_activation": "gelu_pytorch_tanh",
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
]  # fmt: skip


def _encoder_compare(ours, hf, ids, real=None, **kw):
    """Logits, attention rows and hidden states of ours (traced and untraced) against transformers' eager run,
    at the real (non-padding) positions ``real`` (B, T) bool, all when None."""
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, output_attentions=True, **kw)
        out = ours(ids, trace=True, **kw)
        fast = ours(ids, **kw)
    real = torch.ones(ids.shape, dtype=torch.bool) if real is None else real
    if ours.mlm_head is not None:
        torch.testing.assert_close(out.logits[real], ref.logits[real], atol=ATOL, rtol=0)
        torch.testing.assert_close(fast.logits, out.logits, atol=ATOL, rtol=0)
    assert len(out.trace.attentions) == len(ref.attentions) == 3
    for a, b in zip(out.trace.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a.transpose(1, 2)[real], b.transpose(1, 2)[real], atol=ATOL, rtol=0)  # real queries
    hs = out.trace.hidden_states  # the embedding norm's output, each layer's output (transformers: the last normed)
    assert len(hs) == len(ref.hidden_states) == 4
    for a, b in zip(hs[:-1], ref.hidden_states[:-1]):
        torch.testing.assert_close(a[real], b[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.norm(hs[-1])[real], ref.hidden_states[-1][real], atol=ATOL, rtol=0)
    return out, ref


@pytest.mark.parametrize("kind, overrides", MODERNBERT, ids=["modernbert-0", "modernbert-1"])
def test_modernbert_parity_with_and_without_padding(ckpt, kind, overrides):
    ours, tok, hf, _ = ckpt(kind, **overrides)
    assert ours.config.family == "encoder" and ours.mlm_head is not None
    ids = torch.tensor([tok.encode(MASKED)])
    assert ids.shape[1] > 16
    out, _ = _encoder_compare(ours, hf, ids)
    # a batch of two, the second padded after 9 tokens: transformers' eager mask on the keys, ours the same
    short = torch.tensor(tok.encode("the cat [MASK] on the mat"))
    batch = torch.zeros(2, ids.shape[1], dtype=torch.long)
    batch[0], batch[1, : len(short)] = ids[0], short
    mask = (batch != 0).long()
    assert mask[1].sum() == len(short) < ids.shape[1]
    padded, _ = _encoder_compare(ours, hf, batch, real=mask.bool(), attention_mask=mask)
    torch.testing.assert_close(padded.logits[0], out.logits[0], atol=1e-5, rtol=0)  # padding changes nothing real
    alone = _logits(ours, short[None])
    torch.testing.assert_close(padded.logits[1, : len(short)], alone[0], atol=1e-5, rtol=0)
    assert padded.trace.attentions[1][1, :, : len(short), len(short) :].abs().max() == 0  # no real query reads a pad


def test_modernbert_config_is_read(ckpt):
    ours, *_ = ckpt("modernbert")
    c = ours.config
    assert c.layer_types == ["full", "sliding", "sliding"] and c.sliding_window == 3  # |q − k| <= 2
    assert (c.rope_theta, c.rope_local_theta, c.positions, c.type_vocab_size) == (1000.0, 50.0, "rotary", 0)
    assert (c.norm_position, c.mlp, c.activation, c.head_activation) == ("pre", "gated", "gelu", "gelu")
    assert not (c.norm_bias or c.attention_bias or c.mlp_bias or c.head_bias or c.first_attn_norm)
    assert c.head_decoder_bias and c.has_mlm_head
    assert isinstance(ours.layers[0].attn_norm, torch.nn.Identity)
    assert isinstance(ours.layers[1].attn_norm, torch.nn.LayerNorm) and ours.layers[1].attn_norm.bias is None
    assert ours.mlm_head.decoder.weight is ours.embed_tokens.weight and ours.mlm_head.dense.bias is None
    torch.testing.assert_close(ours.rotary_local.inv_freq, 50.0 ** -(torch.arange(0, 8, 2) / 8.0), atol=0, rtol=1e-6)


def test_modernbert_fused_weights_are_split(ckpt):
    ours, _, hf, _ = ckpt("modernbert")
    layer, theirs = ours.layers[2], hf.model.layers[2]
    q, k, v = theirs.attn.Wqkv.weight.chunk(3, dim=0)
    for mine, ref in ((layer.attn.q_proj, q), (layer.attn.k_proj, k), (layer.attn.v_proj, v)):
        torch.testing.assert_close(mine.weight, ref, atol=0, rtol=0)
    act_half, gate_half = theirs.mlp.Wi.weight.chunk(2, dim=0)
    torch.testing.assert_close(layer.mlp.gate_proj.weight, act_half, atol=0, rtol=0)
    torch.testing.assert_close(layer.mlp.up_proj.weight, gate_half, atol=0, rtol=0)


def test_modernbert_local_layers_see_a_symmetric_window(ckpt):
    ours, tok, _, _ = ckpt("modernbert")
    ids = torch.tensor([tok.encode(MASKED)])
    with torch.no_grad():
        att = ours(ids, trace=True).trace.attentions
    T = ids.shape[1]
    dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs()
    assert att[0][0, :, dist > 2].abs().max() > 1e-3  # a global layer: every key
    for layer in (1, 2):
        assert att[layer][0, :, dist > 2].abs().max() == 0 and att[layer][0, :, dist <= 2].min() > 0


@pytest.mark.parametrize("change", [
    {"rope_local_theta": None}, {"layer_types": ["full"] * 3}, {"first_attn_norm": True},
    {"activation": "silu"}, {"head_activation": "relu"},
])  # fmt: skip
def test_each_modernbert_part_matters(ckpt, change):
    ours, tok, _, _ = ckpt("modernbert")
    ids = torch.tensor([tok.encode(MASKED)])
    other = _variant(ours, allow_missing=("attn_norm",), **change)
    assert (_logits(other, ids) - _logits(ours, ids)).abs().max() > 1e-2


def test_modernbert_without_its_head_and_its_older_config_keys(ckpt, tmp_path):
    """A bare ModernBertModel loads (logits None); configs from before transformers 5 (global_attn_every_n_layers,
    global_rope_theta, local_rope_theta) read to the same model."""
    bare = tmp_path / "bare"
    hf = make_hf_model("modernbert", bare, head=False)
    ours, tok = models.load(bare)
    ids = torch.tensor([tok.encode(MASKED)])
    assert not ours.config.has_mlm_head and ours(ids).logits is None
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).last_hidden_state, hf(ids).last_hidden_state, atol=ATOL, rtol=0)
    hf_cfg = json.loads((bare / "config.json").read_text())
    del hf_cfg["rope_parameters"], hf_cfg["layer_types"]
    hf_cfg.update(global_attn_every_n_layers=2, global_rope_theta=1000.0, local_rope_theta=50.0)
    (bare / "config.json").write_text(json.dumps(hf_cfg))
    older, _ = models.load(bare)
    c = older.config
    assert (c.layer_types, c.rope_theta, c.rope_local_theta) == (["full", "sliding", "full"], 1000.0, 50.0)


@pytest.mark.parametrize("change, match", [
    ({"tie_word_embeddings": False}, "ModernBERT checkpoints with a masked-LM output matrix of their own"),
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10.0},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}}},
     "ModernBERT with scaled RoPE .'linear'. is not supported"),
    ({"layer_types": ["full_attention", "chunked_attention", "full_attention"]}, "layer_types must give one of"),
])  # fmt: skip
def test_modernbert_refusals_say_why(ckpt, tmp_path, change, match):
    *_, folder = ckpt("modernbert")
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    hf = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, **change}))
    with pytest.raises(LoadError, match=match):
        models.load(tmp_path)


def test_modernbert_card_anatomy_and_positions(ckpt):
    from archplay.models.analysis.positions import encoding

    ours, tok, _, _ = ckpt("modernbert")
    rows = dict(card.architecture(ours))
    assert rows["local/global layers"] == ("2 local : 1 global, in order G L L (L: the keys within ±2 of the query, "
                                           "a window of 4 either side together; G: every token)")  # fmt: skip
    assert rows["first layer"].startswith("no norm before layer 0's attention")
    assert rows["positions"] == ("rotary (RoPE) on q and k, θ = 1000 on global layers; local layers θ = 50, unscaled "
                                 "(ModernBERT), no token-type embeddings")  # fmt: skip
    assert rows["biases"] == "masked-LM output" and rows["norm"].endswith("; no bias")
    assert rows["feed-forward"] == "48 wide, GEGLU (gated GELU): down(act(gate(x)) ⊙ up(x))"
    bert = dict(card.architecture(models.load("bert")[0]))
    assert bert["biases"] == "everywhere" and "first layer" not in bert and "local/global layers" not in bert
    (stack,) = anatomy(ours, torch.tensor([tok.encode(MASKED)[:7]]))
    assert [p.kind for p in stack.block] == ["norm", "attention", "add", "norm", "mlp", "add"]
    assert "none in layer 0" in stack.block[0].detail and "layer 0" not in stack.block[3].detail
    assert [p.kind for p in stack.embed] == ["embed", "positions", "norm"] and stack.out[0].kind == "norm"
    enc = encoding(ours, 16)
    assert enc.kind == "rotary" and "θ = 1000, local (windowed) layers θ = 50" in enc.note
    pairs = torch.arange(0, 8, 2) / 8.0
    torch.testing.assert_close(enc.wavelength, 2 * torch.pi * 1000.0**pairs, atol=0, rtol=1e-5)
    torch.testing.assert_close(enc.local_wavelength, 2 * torch.pi * 50.0**pairs, atol=0, rtol=1e-5)
    # the Anatomy tab draws both bases' wavelengths (before: only the global layers')
    from archplay.viz.positions import LOCAL_WAVELENGTH, WAVELENGTH, encoding_figure

    fig = encoding_figure(enc)
    curves = {t.name: np.asarray(t.y, dtype=np.float64) for t in fig.data if t.name in (WAVELENGTH, LOCAL_WAVELENGTH)}
    np.testing.assert_allclose(curves[WAVELENGTH], enc.wavelength.numpy(), rtol=1e-6)
    np.testing.assert_allclose(curves[LOCAL_WAVELENGTH], enc.local_wavelength.numpy(), rtol=1e-6)
    low = math.floor(math.log10(float(enc.local_wavelength.min())))
    assert fig.layout.yaxis.range[0] <= low  # the axis spans both curves


def test_modernbert_attention_steps_are_exact(ckpt):
    ours, tok, _, _ = ckpt("modernbert")
    ids = torch.tensor([tok.encode(MASKED)])
    with torch.no_grad():
        trace = ours(ids, trace=True).trace
    T = ids.shape[1]
    for layer, head, query in [(0, 2, 5), (1, 0, T // 2), (2, 3, 0)]:
        s = attention_steps(ours, ids, layer, head, query)
        z = (s.scores * s.scale + s.bias).masked_fill(~s.mask, float("-inf"))
        torch.testing.assert_close(torch.softmax(z, -1), s.weights, atol=1e-6, rtol=0)
        torch.testing.assert_close(s.weights, trace.attentions[layer][0, head, query], atol=1e-5, rtol=0)
        dist = (torch.arange(T) - query).abs()
        assert s.mask.tolist() == ((dist <= 2) if layer else torch.ones(T, dtype=torch.bool)).tolist()
        if layer == 0:  # no norm before layer 0's attention: its input is the residual stream itself
            torch.testing.assert_close(s.x, s.residual_in, atol=0, rtol=0)
        torch.testing.assert_close(s.residual_out, s.residual_in + s.attention_output, atol=0, rtol=0)


@pytest.mark.parametrize("head", [True, False])
def test_modernbert_estimate_counts_what_transformers_has(tmp_path, head):
    from archplay.models.analysis.estimate import estimate

    hf = make_hf_model("modernbert", tmp_path / "m", head=head)
    n = sum(p.numel() for p in hf.parameters())  # the tied output matrix once, as ours
    # estimate reads config.json alone and takes an encoder folder to have its masked-LM head (dense, norm, bias)
    head_params = 32 * 32 + 32 + 99  # dense (no bias), norm (no bias), the output bias
    assert estimate(tmp_path / "m")["params"] == n + (0 if head else head_params)
