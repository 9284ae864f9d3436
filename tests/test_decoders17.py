"""Issue 17, GPT-Neo, GPT-J, OPT and Phi (``gpt_neo``, ``gptj``, ``opt``, ``phi``): each reproduces transformers on
small random weights (logits, every attention map and hidden state, 32 greedy tokens, traced and untraced); each
family's own part is there and matters (switched off, the logits move); what is refused says why; the card, the
block anatomy and the positions view name the parts; "Inside a step" and head ablation stay exact; estimate
counts the parameters transformers has.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_causal_parity

from archplay import models
from archplay.models import ablate, attention_steps
from archplay.models.analysis import card
from archplay.models.analysis.anatomy import anatomy
from archplay.models.analysis.estimate import estimate
from archplay.models.analysis.positions import encoding
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.architectures.layers import RotaryEmbedding, apply_rotary
from archplay.models.checkpoints.convert import LoadError

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"
LOCAL = {"attention_types": [[["local"], 2]], "attention_layers": ["local", "local"]}

CASES = [
    ("gpt_neo", {}),  # global then local (a window of 4), tied
    ("gpt_neo", {**LOCAL, "window_size": 6, "tie_word_embeddings": False}),
    ("gptj", {}),  # interleaved RoPE on 4 of 8 channels, untied
    ("gptj", {"rotary_dim": 8, "tie_word_embeddings": True}),
    ("opt", {}),  # pre-norm, biases, tied
    ("opt", {"do_layer_norm_before": False, "enable_bias": False, "tie_word_embeddings": False}),  # OPT-350m's order
    ("opt", {"_remove_final_layer_norm": True}),
    ("opt", {"word_embed_proj_dim": 16, "do_layer_norm_before": False}),  # OPT-350m: embeddings projected in, out
    ("phi", {}),  # half-split RoPE on half of each head
    ("phi", {"num_key_value_heads": 2, "tie_word_embeddings": True,
             "rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.75}}),
]  # fmt: skip
IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(CASES)]


@pytest.fixture(scope="module")
def ckpt(hf_ckpt):
    return hf_ckpt


def _ids(tok, text=PROMPT):
    return torch.tensor([tok.encode(text)])


@pytest.mark.parametrize("kind, overrides", CASES, ids=IDS)
def test_parity_and_generation(ckpt, kind, overrides):
    ours, tok, hf, _ = ckpt(kind, **overrides)
    assert ours.config.family == "decoder" and ours.config.n_layer == 2
    assert len(tok.encode(PROMPT)) > 12  # longer than any window
    projected = ours.config.embed_dim is not None  # OPT-350m: transformers' last hidden state is projected out
    assert_causal_parity(ours, hf, tok, layers=2, atol=ATOL, prompt=PROMPT,
                         last=(lambda h: ours.lm_head.project_out(ours.norm(h))) if projected else None)


def test_configs_are_read(ckpt):
    c = ckpt("gpt_neo")[0].config
    assert (c.attn_scale, c.layer_types, c.sliding_window, c.qkv_bias, c.o_bias) == (1.0, ["full", "sliding"], 4,
                                                                                     False, True)  # fmt: skip
    assert c.positions == "learned" and c.activation == "gelu_new" and c.tie_embeddings
    g = ckpt("gptj")[0]
    c = g.config
    assert c.parallel_residual and c.shared_norm and c.rope_interleaved and c.lm_head_bias and c.rotary_dim == 4
    assert g.layers[0].mlp_norm is None and g.lm_head.bias is not None and not (c.qkv_bias or c.o_bias)
    o = ckpt("opt")[0]
    c = o.config
    assert c.position_offset == 2 and o.embed_positions.weight.shape == (128 + 2, 32) and c.activation == "relu"
    c = ckpt("opt", do_layer_norm_before=False, enable_bias=False, tie_word_embeddings=False)[0].config
    assert c.norm_position == "post" and not (c.qkv_bias or c.o_bias or c.mlp_bias)
    assert ckpt("opt", _remove_final_layer_norm=True)[0].config.final_norm is False
    o = ckpt("opt", word_embed_proj_dim=16, do_layer_norm_before=False)[0]
    assert o.config.embed_dim == 16 and o.embed_tokens.weight.shape == (99, 16) and o.lm_head.weight is o.embed_tokens.weight
    assert o.embed_tokens.project_in.weight.shape == (32, 16) and o.lm_head.project_out.weight.shape == (16, 32)
    from archplay.models.analysis.lens import logit_lens

    ids = _ids(ckpt("opt")[1])
    with torch.no_grad():
        out = o(ids, trace=True)
    lens = logit_lens(o, out.trace.hidden_states, top=1)  # the lens reads through the projection too
    torch.testing.assert_close(lens.top_probs[-1, :, 0], torch.softmax(out.logits[0], -1).max(-1).values,
                               atol=1e-5, rtol=0)  # fmt: skip
    p = ckpt("phi")[0]
    c = p.config
    assert c.shared_norm and c.rotary_dim == 4 and not c.rope_interleaved and c.qkv_bias and c.o_bias
    assert p.lm_head.bias is not None and p.layers[0].mlp_norm is None


def test_gptj_rotary_fraction_keeps_the_rotated_channel_count():
    from archplay.models.checkpoints.more_decoders import _fraction

    for rotated, head_dim in [(24, 80), (64, 256), (6, 10), (14, 56), (2, 2)]:
        assert int(head_dim * _fraction(rotated, head_dim)) == rotated


# --------------------------------------------------------------------------- each part is there and matters


def _variant(model: Decoder, *, fresh: tuple = (), **changes) -> Decoder:
    """The same weights under a config with ``changes``: weights the variant lacks are dropped; a second norm it
    needs (a shared norm switched off) starts as a copy of the first; the ``fresh`` ones keep their initial values."""
    cfg = DecoderConfig.from_dict({**model.config.to_dict(), **changes})
    other = Decoder(cfg).eval()
    state = dict(model.state_dict())
    for key in list(state):
        if ".attn_norm." in key and key.replace(".attn_norm.", ".mlp_norm.") not in state:
            state[key.replace(".attn_norm.", ".mlp_norm.")] = state[key]
    missing, _ = other.load_state_dict(state, strict=False)
    assert sorted(missing) == sorted(fresh), missing
    return other


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


PARTS = [
    ("gpt_neo", {"attn_scale": None}), ("gpt_neo", {"layer_types": ["full", "full"]}),
    ("gptj-full", {"rope_interleaved": False}), ("gptj", {"shared_norm": False, "parallel_residual": False}),
    ("gptj", {"lm_head_bias": False}), ("gptj", {"rotary_fraction": 1.0}),
    ("opt", {"position_offset": 0, "max_seq_len": 130}), ("opt", {"activation": "gelu"}),
    ("phi", {"shared_norm": False, "parallel_residual": False}), ("phi", {"rotary_fraction": 1.0}),
    ("phi", {"lm_head_bias": False}),
]  # fmt: skip


@pytest.mark.parametrize("kind, change", PARTS, ids=[f"{k}-{next(iter(c))}" for k, c in PARTS])
def test_each_part_matters(ckpt, kind, change):
    ours, tok, *_ = ckpt("gptj", rotary_dim=8, tie_word_embeddings=True) if kind == "gptj-full" else ckpt(kind)
    ids = _ids(tok)
    base = _logits(ours, ids)
    torch.testing.assert_close(_logits(_variant(ours), ids), base, atol=1e-6, rtol=0)  # the copy itself is exact
    assert (_logits(_variant(ours, **change), ids) - base).abs().max() > 10 * ATOL  # far beyond parity's tolerance


def test_opt_final_norm_and_post_norm_matter(ckpt):
    ours, tok, *_ = ckpt("opt", _remove_final_layer_norm=True)
    ids = _ids(tok)
    assert isinstance(ours.norm, torch.nn.Identity)
    assert (_logits(_variant(ours, final_norm=True, fresh=("norm.weight", "norm.bias")), ids) - _logits(ours, ids)).abs().max() > 1e-2
    post, tok, *_ = ckpt("opt", do_layer_norm_before=False, enable_bias=False, tie_word_embeddings=False)
    assert (_logits(_variant(post, norm_position="pre", fresh=("norm.weight", "norm.bias")), ids) - _logits(post, ids)).abs().max() > 1e-2


def test_interleaved_rotary_turns_each_channel_pair():
    """GPT-J's layout: channels (2i, 2i + 1) are one complex number, turned by position × θ^(-2i/d)."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 8)  # (B, H, T, Dh), rotary on the first 6 channels
    cos, sin = RotaryEmbedding(6, 100.0, interleaved=True)(torch.arange(5))
    got = apply_rotary(x, cos, sin, interleaved=True)
    angle = torch.arange(5)[:, None] * 100.0 ** (-torch.arange(0, 6, 2) / 6)  # (T, 3)
    z = torch.view_as_complex(x[..., :6].reshape(1, 2, 5, 3, 2).contiguous()) * torch.polar(torch.ones(5, 3), angle)
    torch.testing.assert_close(got[..., :6], torch.view_as_real(z).flatten(-2), atol=1e-5, rtol=0)
    torch.testing.assert_close(got[..., 6:], x[..., 6:])  # the rest pass through
    half = apply_rotary(x, *RotaryEmbedding(6, 100.0)(torch.arange(5)))
    assert (half - got).abs().max() > 0.1


def test_the_new_options_are_off_by_default_and_checked():
    plain = Decoder(DecoderConfig.gpt2_tiny())
    names = {n for n, _ in plain.named_parameters()}
    assert "layers.0.mlp_norm.weight" in names and "lm_head.bias" not in names
    assert plain.embed_positions.weight.shape[0] == 64 and not plain.layers[0].attn.rope_interleaved
    for bad, match in [({"shared_norm": True}, "shared_norm .* needs parallel_residual"),
                       ({"rope_interleaved": True}, "rope_interleaved needs rotary"),
                       ({"position_offset": -1}, "position_offset must be a whole number"),
                       ({"position_offset": 2, "positions": "alibi"}, "position_offset needs learned")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DecoderConfig.gpt2_tiny(**bad)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind, change, match", [
    ("opt", {"layer_norm_elementwise_affine": False}, "layer_norm_elementwise_affine=false"),
    ("phi", {"qk_layernorm": True}, "qk_layernorm"),
    ("gpt_neo", {"attention_layers": ["global", "dilated"]}, "must be 'global' or 'local'"),
    ("gptj", {"rotary_dim": 5}, "rotary_dim 5 must be even"),
])  # fmt: skip
def test_refusals_say_why(ckpt, tmp_path, kind, change, match):
    *_, folder = ckpt(kind)
    for f in folder.iterdir():  # the same checkpoint with one key of its config.json changed
        (tmp_path / f.name).write_bytes(f.read_bytes())
    hf = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, **change}))
    with pytest.raises(LoadError, match=match):
        models.load(tmp_path)


# --------------------------------------------------------------------------- card, anatomy, positions, estimate


def test_card_rows_name_each_familys_parts(ckpt):
    rows = dict(card.architecture(ckpt("gpt_neo")[0]))
    assert rows["attention scale"] == "q·k unscaled (× 1, not 1/√d_head = 0.3536) (GPT-Neo)"
    assert rows["local/global layers"].startswith("1 local : 1 global, in order G L (L: a window of 4")
    assert rows["biases"] == "attention output, feed-forward" and "residual" not in rows
    rows = dict(card.architecture(ckpt("gptj")[0]))
    assert rows["residual"].startswith("parallel: x + Attn(Norm(x)) + MLP(Norm(x)), one LayerNorm shared by "
                                       "attention and MLP")  # fmt: skip
    assert rows["positions"] == ("rotary (RoPE) on q and k, θ = 10000, on 50% of each head's channels, rotary "
                                 "interleaved: channel pairs (0, 1), (2, 3), … (GPT-J, DeepSeek-V3), not the two halves")  # fmt: skip
    assert rows["biases"] == "feed-forward, LM head"
    rows = dict(card.architecture(ckpt("opt")[0]))
    assert rows["positions"] == "learned absolute table (128 positions), positions from row 2: position p reads row p + 2 (OPT)"
    assert "ReLU" in rows["feed-forward"] and rows["norm"] == "LayerNorm, pre-norm (+ a final norm), ε = 1e-05"
    rows = dict(card.architecture(ckpt("opt", _remove_final_layer_norm=True)[0]))
    assert rows["norm"] == "LayerNorm, pre-norm (no final norm), ε = 1e-05"
    opt350 = ckpt("opt", word_embed_proj_dim=16, do_layer_norm_before=False)[0]
    rows = dict(card.architecture(opt350))
    assert rows["embedding projections"] == ("token embeddings 16 wide: projected in to 32 before the first block and "
                                             "out to 16 before the LM head (OPT-350m)")  # fmt: skip
    assert rows["norm"].startswith("LayerNorm, post-norm")
    assert dict(card.parameter_breakdown(opt350))["embedding projections (in and out, OPT-350m)"] == 2 * 16 * 32
    rows = dict(card.architecture(ckpt("phi")[0]))
    assert "one LayerNorm shared by attention and MLP" in rows["residual"] and "interleaved" not in rows["positions"]
    assert rows["biases"] == "q/k/v, attention output, feed-forward, LM head"
    pythia = dict(card.architecture(Decoder(DecoderConfig.gpt2_tiny(parallel_residual=True))))
    assert pythia["residual"].startswith("parallel: x + Attn(Norm₁(x)) + MLP(Norm₂(x))")


def test_anatomy_draws_the_parallel_blocks(ckpt):
    from archplay.viz.anatomy import block_diagram

    ours, tok, *_ = ckpt("gptj")
    ids = _ids(tok)
    (stack,) = anatomy(ours, ids)
    assert [p.kind for p in stack.block] == ["norm", "attention", "mlp", "add"] and stack.parallel
    assert "shared" in stack.block[0].detail and "same normalised x" in stack.block[2].detail
    with torch.no_grad():
        hs = ours(ids, trace=True).trace.hidden_states
    torch.testing.assert_close(stack.contribution[1], (hs[2][0] - hs[1][0]).norm(dim=-1), atol=1e-5, rtol=0)
    (neox,) = anatomy(Decoder(DecoderConfig.gpt2_tiny(parallel_residual=True)), ids[:, :6])
    assert [p.kind for p in neox.block] == ["norm", "attention", "norm", "mlp", "add"] and neox.parallel
    (gpt,) = anatomy(Decoder(DecoderConfig.gpt2_tiny()), ids[:, :6])
    assert [p.kind for p in gpt.block] == ["norm", "attention", "add", "norm", "mlp", "add"] and not gpt.parallel
    assert len(block_diagram([stack]).data) > 0  # the diagram draws a parallel block


def test_opt_positions_read_the_table_from_row_2(ckpt):
    ours, tok, hf, _ = ckpt("opt")
    enc = encoding(ours, 10)
    assert enc.kind == "learned" and enc.offset == 2 and "row p + 2 (OPT" in enc.note
    torch.testing.assert_close(enc.table, hf.model.decoder.embed_positions.weight[2:12].detach(), atol=0, rtol=0)
    anatomy_pos = [p for p in anatomy(ours, _ids(tok))[0].embed if p.kind == "positions"]
    assert len(anatomy_pos) == 1 and anatomy_pos[0].view == "positions"


@pytest.mark.parametrize("kind, overrides", [("gpt_neo", {}), ("gptj", {}), ("opt", {}), ("phi", {}),
                                             ("opt", {"tie_word_embeddings": False}),
                                             ("opt", {"word_embed_proj_dim": 16, "do_layer_norm_before": False})])  # fmt: skip
def test_estimate_counts_what_transformers_has(ckpt, kind, overrides):
    *_, hf, folder = ckpt(kind, **overrides)
    assert estimate(folder)["params"] == sum(p.numel() for p in hf.parameters())


# --------------------------------------------------------------------------- inside a step, ablation


@pytest.mark.parametrize("kind", ["gpt_neo", "gptj"])
def test_attention_steps_recompute_the_heads_exactly(ckpt, kind):
    ours, tok, *_ = ckpt(kind)
    ids = _ids(tok)
    T = ids.shape[1]
    with torch.no_grad():
        trace = ours(ids, trace=True).trace
    for layer, head, query in [(0, 1, T - 1), (1, 3, T // 2), (1, 0, 2)]:
        s = attention_steps(ours, ids, layer, head, query)
        assert s.scale == (1.0 if kind == "gpt_neo" else pytest.approx(8**-0.5))
        z = (s.scores * s.scale + s.bias).masked_fill(~s.mask, float("-inf"))
        torch.testing.assert_close(torch.softmax(z, -1), s.weights, atol=1e-5, rtol=0)
        torch.testing.assert_close(s.weights, trace.attentions[layer][0, head, query], atol=1e-5, rtol=0)
        torch.testing.assert_close(s.out, s.weights @ s.v, atol=1e-5, rtol=0)
        if ours.config.layer_types[layer] == "sliding":
            assert int(s.mask.sum()) == min(4, query + 1)  # GPT-Neo's local layer: the last 4 tokens
        if kind == "gptj":  # interleaved rotation of the first 4 channels; the other 4 unrotated
            torch.testing.assert_close(s.q[4:], s.q_before[4:], atol=0, rtol=0)
            assert (s.q[:4] - s.q_before[:4]).abs().max() > 1e-3 or query == 0


@pytest.mark.parametrize("kind, module", [("gptj", "out_proj"), ("phi", "dense"), ("opt", "out_proj")])
def test_head_ablation_equals_transformers_with_the_heads_slice_zeroed(ckpt, kind, module):
    ours, tok, hf, _ = ckpt(kind)
    ids = _ids(tok)
    layer, head, Dh = 1, 2, ours.config.head_dim
    attn = {"gptj": lambda: hf.transformer.h[layer].attn, "phi": lambda: hf.model.layers[layer].self_attn,
            "opt": lambda: hf.model.decoder.layers[layer].self_attn}[kind]()  # fmt: skip

    def zero(mod, args):
        x = args[0].clone()
        x[..., head * Dh : (head + 1) * Dh] = 0
        return (x,)

    handle = getattr(attn, module).register_forward_pre_hook(zero)
    try:
        with torch.no_grad():
            expected = hf(ids).logits
    finally:
        handle.remove()
    with torch.inference_mode():
        off = ablate(ours, ids, heads=[(layer, head)]).logits
        base = ours(ids).logits
    torch.testing.assert_close(off, expected, atol=ATOL, rtol=0)
    assert (off - base).abs().max() > 1e-3
