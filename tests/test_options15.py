"""Issue 15's architecture options as real model choices: positions (ALiBi, relative, NoPE, ...),
norm placement, activations and attention patterns, for the decoder, the encoder and the MoE.

Tiny random models throughout; every mask is checked against a brute-force definition.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize
from torch import nn

from archplay.models import load
from archplay.models.analysis.card import architecture
from archplay.models.analysis.lens import logit_lens
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.architectures.encoder import Encoder, EncoderConfig
from archplay.models.architectures.layers import (
    alibi_bias,
    alibi_slopes,
    attention_mask,
    relative_position_bucket,
)
from archplay.models.architectures.moe import MoEConfig, MoEDecoder

T, W = 12, 3  # sequence length and window of every pattern check
ATOL = 1e-5

DECODER_OPTIONS = {
    **{f"positions={p}": dict(positions=p) for p in ("learned", "rotary", "sinusoidal", "alibi", "relative", "none")},
    "post-norm": dict(norm_position="post"),
    "post-norm-rmsnorm": dict(norm_position="post", norm="rmsnorm"),
    "relu": dict(mlp="mlp", activation="relu"),
    "gelu": dict(mlp="mlp", activation="gelu"),
    "swiglu": dict(mlp="gated", activation="silu"),
    "geglu": dict(mlp="gated", activation="gelu"),
    **{f"pattern={p}": dict(layer_types=[p, "full"], sliding_window=W) for p in ("sliding", "strided", "block")},
    "alibi+strided+post": dict(positions="alibi", layer_types=["strided", "block"], sliding_window=W,
                               norm_position="post"),
    "relative+block+gqa": dict(positions="relative", layer_types=["block", "sliding"], sliding_window=W,
                               n_kv_head=2, relative_buckets=8, relative_max_distance=16),
    "none+sliding+rmsnorm": dict(positions="none", layer_types=["sliding", "strided"], sliding_window=W,
                                 norm="rmsnorm"),
}  # fmt: skip
ENCODER_OPTIONS = {
    **{f"positions={p}": dict(positions=p) for p in ("learned", "sinusoidal", "rotary", "alibi", "relative", "none")},
    "pre-norm": dict(norm_position="pre"),
    "rmsnorm": dict(norm="rmsnorm"),
    "pre-norm-rmsnorm": dict(norm_position="pre", norm="rmsnorm"),
    "relu": dict(activation="relu"),
    "swiglu": dict(mlp="gated", activation="silu"),
    "geglu": dict(mlp="gated", activation="gelu"),
    **{f"pattern={p}": dict(layer_types=[p, "full"], sliding_window=W) for p in ("sliding", "strided", "block")},
    "alibi+strided+pre": dict(positions="alibi", layer_types=["strided", "block"], sliding_window=W,
                              norm_position="pre"),
    "relative+sliding": dict(positions="relative", layer_types=["sliding", "full"], sliding_window=W),
}  # fmt: skip
MOE_OPTIONS = {
    "alibi+strided": dict(positions="alibi", layer_types=["strided", "full"], sliding_window=W),
    "relative+post+shared": dict(positions="relative", norm_position="post", d_shared_expert=24),
    "none+block+geglu": dict(positions="none", layer_types=["block", "block"], sliding_window=W, activation="gelu"),
}  # fmt: skip


def brute_mask(pattern: str, n: int, window: int, *, causal: bool) -> torch.Tensor:
    """The patterns by their definition, one (q, k) at a time: (n, n) bool."""
    m = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            if causal and k > q:
                continue
            d = abs(q - k)
            m[q, k] = {
                "full": True,
                "sliding": d < window,
                "strided": d < window or d % window == 0,
                "block": q // window == k // window,
            }[pattern]
    return m


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    randomize(model, seed, std=0.1)
    return model.eval()


def _decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    return _randomized(Decoder(DecoderConfig.gpt2_tiny(**kw)))


def _moe(**kw) -> MoEDecoder:
    torch.manual_seed(0)
    return _randomized(MoEDecoder(MoEConfig.mixtral_tiny(**kw)))


def _encoder(**kw) -> Encoder:
    torch.manual_seed(0)
    return _randomized(Encoder(EncoderConfig.bert_tiny(**kw)))


def _ids(vocab: int, batch: int = 2, n: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def _check_attentions(model, attentions, *, causal: bool, n: int = T):
    cfg = model.config
    assert len(attentions) == cfg.n_layer
    for pattern, a in zip(cfg.layer_types, attentions):
        assert a.shape == (2, cfg.n_head, n, n)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)
        allowed = brute_mask(pattern, n, cfg.sliding_window or 1, causal=causal)
        assert not a[..., ~allowed].any(), f"{pattern}: weight outside the pattern"
        assert a[..., allowed].min() > 0, f"{pattern}: a key inside the pattern got no weight"


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pattern", ["full", "sliding", "strided", "block"])
def test_pattern_masks_equal_brute_force(pattern, causal):
    pos = torch.arange(T)
    mask = attention_mask(pos, pos, causal=causal, window=W, pattern=pattern)
    expected = brute_mask(pattern, T, W, causal=causal)
    if mask is None:  # bidirectional full: every key
        assert expected.all()
    else:
        assert torch.equal(mask, expected)
    # With a cache: the last four queries against every key are the last rows of the full mask.
    step = attention_mask(pos[-4:], pos, causal=causal, window=W, pattern=pattern)
    if step is not None:
        assert torch.equal(step, expected[-4:])


def test_pattern_examples():
    pos = torch.arange(T)
    strided = attention_mask(pos, pos, causal=True, window=W, pattern="strided")
    assert strided[10].nonzero().flatten().tolist() == [1, 4, 7, 8, 9, 10]  # last 3, then every 3rd back
    block = attention_mask(pos, pos, causal=True, window=W, pattern="block")
    assert block[10].nonzero().flatten().tolist() == [9, 10]  # its own block, 9..11, up to itself
    sliding = attention_mask(pos, pos, causal=False, window=W, pattern="sliding")
    assert sliding[5].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]
    # The old call (a window, no pattern) is still the sliding window.
    assert torch.equal(attention_mask(pos, pos, causal=True, window=W), brute_mask("sliding", T, W, causal=True))


# --------------------------------------------------------------------------- the decoder


@pytest.mark.parametrize("name", DECODER_OPTIONS)
def test_decoder_option_contract(name):
    model = _decoder(**DECODER_OPTIONS[name])
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        out = model(ids, trace=True)
        fused = model(ids).logits
    assert out.logits.shape == (2, T, model.config.vocab_size)
    assert len(out.trace.hidden_states) == model.config.n_layer + 1
    torch.testing.assert_close(fused, out.logits, atol=ATOL, rtol=0)
    _check_attentions(model, out.trace.attentions, causal=True)


def _cache_equals_full_forward(model, total: int = 14):
    """KV-cache logits (a prompt, then chunks of 2, then single tokens) equal one full forward's."""
    ids = _ids(model.config.vocab_size, batch=2, n=total, seed=5)
    with torch.no_grad():
        full = model(ids).logits  # (B, total, V)
        full_traced = model(ids, trace=True).logits
        cache = model.new_cache()
        parts, start = [], 0
        for size in (4, 2, 2, *([1] * (total - 8))):
            parts.append(model(ids[:, start : start + size], cache=cache).logits)
            start += size
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=ATOL, rtol=0)
    torch.testing.assert_close(full_traced, full, atol=ATOL, rtol=0)

    prompt, new = ids[:, :4], total - 4
    greedy = model.generate(prompt, max_new_tokens=new, temperature=0.0)
    seq = prompt
    with torch.no_grad():
        for _ in range(new):  # step by step: the argmax of a full forward over everything so far
            seq = torch.cat((seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(greedy, seq)


@pytest.mark.parametrize("name", DECODER_OPTIONS)
def test_decoder_kv_cache_equals_full_forward(name):
    _cache_equals_full_forward(_decoder(**DECODER_OPTIONS[name]))


@pytest.mark.parametrize("name", MOE_OPTIONS)
def test_moe_options(name):
    model = _moe(**MOE_OPTIONS[name])
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        out = model(ids, trace=True)
        fused = model(ids).logits
    torch.testing.assert_close(fused, out.logits, atol=ATOL, rtol=0)
    _check_attentions(model, out.trace.attentions, causal=True)
    assert [r.shape for r in out.trace.router_logits] == [(2, T, model.config.n_experts)] * model.config.n_layer
    if model.config.d_shared_expert:
        assert model.layers[0].mlp.shared_expert is not None
    _cache_equals_full_forward(model)


def test_tables_limit_the_length_and_bias_positions_do_not():
    for kind in ("learned", "sinusoidal"):
        model = _decoder(positions=kind, max_seq_len=16)
        with pytest.raises(ValueError, match="exceed this model's context of 16"):
            model(torch.zeros(1, 17, dtype=torch.long))
        with pytest.raises(ValueError, match="context of 16"):
            model.generate(torch.zeros(1, 10, dtype=torch.long), max_new_tokens=7)
    for kind in ("rotary", "alibi", "relative", "none"):
        model = _decoder(positions=kind, max_seq_len=16)
        assert model.generate(torch.zeros(1, 10, dtype=torch.long), max_new_tokens=10).shape == (1, 20)
    enc = _encoder(positions="sinusoidal", max_seq_len=16)
    with pytest.raises(ValueError, match="context of 16"):
        enc(torch.zeros(1, 17, dtype=torch.long))
    assert _encoder(positions="alibi", max_seq_len=16)(torch.zeros(1, 20, dtype=torch.long)).logits.shape[1] == 20


# --------------------------------------------------------------------------- ALiBi


def _probs(attn, h: torch.Tensor, bias, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q·k·scale + bias), masked, from the projections of h (B, T, D): (B, H, T, T)."""
    B, n, _ = h.shape
    q = attn.q_proj(h).view(B, n, attn.n_head, -1).transpose(1, 2)  # (B, H, T, Dh)
    k = attn.k_proj(h).view(B, n, attn.n_kv_head, -1).transpose(1, 2)
    k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)
    scores = q @ k.transpose(-2, -1) * attn.scale + bias  # (B, H, T, T)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def _hand_attention(model, layer: int, x: torch.Tensor, bias, mask: torch.Tensor) -> torch.Tensor:
    """Layer ``layer``'s probabilities recomputed from its weights and its input x (B, T, D)."""
    blk = model.layers[layer]
    return _probs(blk.attn, x if blk.post_norm else blk.attn_norm(x), bias, mask)


@pytest.mark.parametrize("n_head", [4, 6, 8, 12])
def test_alibi_slopes_equal_bloom(n_head):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    ref = build_alibi_tensor(torch.ones(1, T), n_head, torch.float32)  # (H, 1, T): slope_h * k
    torch.testing.assert_close(alibi_slopes(n_head), ref[:, 0, 1], atol=0, rtol=1e-6)
    # Bloom's slope·k differs from −slope·(q − k) by −slope·q, a constant per row: the same softmax.
    pos = torch.arange(T)
    ours = alibi_bias(alibi_slopes(n_head), pos, pos)[0]  # (H, T, T)
    causal = brute_mask("full", T, 1, causal=True)
    diff = (ours - ref[:, 0][:, None, :]) * causal  # on the keys a causal query sees
    expected = -alibi_slopes(n_head)[:, None, None] * pos[None, :, None] * causal
    torch.testing.assert_close(diff, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_of", [lambda: _decoder(positions="alibi"), lambda: _encoder(positions="alibi")])
def test_alibi_adds_minus_slope_times_distance(model_of):
    model = model_of()
    causal = isinstance(model, Decoder)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        tr = model(ids, trace=True).trace
        pos = torch.arange(T)
        slopes = alibi_slopes(model.config.n_head)
        assert slopes[0] == 2 ** (-8 / 4) and slopes[-1] == 2**-8  # 4 heads: 2^-2, 2^-4, 2^-6, 2^-8
        bias = -slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs().float()  # (H, T, T)
        mask = brute_mask("full", T, 1, causal=causal)
        for layer in range(model.config.n_layer):
            probs = _hand_attention(model, layer, tr.hidden_states[layer], bias, mask)
            torch.testing.assert_close(tr.attentions[layer], probs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["alibi", "relative", "none", "learned"])
def test_bias_positions_carry_no_absolute_position(kind):
    """Block-local layers and a position bias: a later block computes as if it stood at the start.
    A learned table gives the same tokens another embedding there, so it differs."""
    model = _decoder(positions=kind, layer_types=["block", "block"], sliding_window=W)
    ids = _ids(model.config.vocab_size, batch=1, n=2 * W)
    with torch.no_grad():
        whole = model(ids).logits[:, W:]  # the second block
        alone = model(ids[:, W:]).logits  # the same tokens at positions 0 .. W-1
    assert torch.allclose(whole, alone, atol=1e-5) == (kind != "learned")


# --------------------------------------------------------------------------- relative positions


def test_decoder_relative_buckets_equal_t5_unidirectional():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)[None, :]
    for n, d in [(32, 128), (8, 16), (4, 10)]:
        kw = dict(bidirectional=False, num_buckets=n, max_distance=d)
        assert torch.equal(relative_position_bucket(rel, **kw), T5Attention._relative_position_bucket(rel, **kw))


def test_t5_still_imports_the_one_bucket_function():
    from archplay.models.architectures import encoder_decoder, layers

    assert encoder_decoder.relative_position_bucket is layers.relative_position_bucket


@pytest.mark.parametrize("model_of", [lambda: _decoder(positions="relative", relative_buckets=8,
                                                       relative_max_distance=16),
                                      lambda: _encoder(positions="relative")])  # fmt: skip
def test_relative_bias_is_one_shared_table(model_of):
    model = model_of()
    cfg = model.config
    causal = isinstance(model, Decoder)
    table = model.relative_attention_bias  # one table for the stack, as T5
    assert table.weight.shape == (cfg.relative_buckets, cfg.n_head)
    assert not any("relative_attention_bias" in n for n, _ in model.layers.named_parameters())
    ids = _ids(cfg.vocab_size)
    pos = torch.arange(T)
    rel = pos[None, :] - pos[:, None]  # key − query
    buckets = relative_position_bucket(rel, bidirectional=not causal, num_buckets=cfg.relative_buckets,
                                       max_distance=cfg.relative_max_distance)  # fmt: skip
    with torch.no_grad():
        tr = model(ids, trace=True).trace
        bias = table.weight[buckets].permute(2, 0, 1)  # (H, T, T)
        mask = brute_mask("full", T, 1, causal=causal)
        for layer in range(cfg.n_layer):
            probs = _hand_attention(model, layer, tr.hidden_states[layer], bias, mask)
            torch.testing.assert_close(tr.attentions[layer], probs, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- norm placement


def _ln(x, norm):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def _hand_block(model, x, *, post: bool, causal: bool):
    """One block written out: post-norm LN(x + attn(x)), LN(h + mlp(h)); pre-norm x + attn(LN(x)), ..."""
    blk = model.layers[0]
    mask = brute_mask("full", x.shape[1], 1, causal=causal)

    def attn(h):  # (B, T, D) -> (B, T, D)
        a, (B, n, _) = blk.attn, h.shape
        v = a.v_proj(h).view(B, n, a.n_head, -1).transpose(1, 2)  # (B, H, T, Dh)
        return a.o_proj((_probs(a, h, 0.0, mask) @ v).transpose(1, 2).reshape(B, n, -1))

    def mlp(h):
        return blk.mlp.down_proj(blk.mlp.act(blk.mlp.up_proj(h)))

    if post:
        h = _ln(x + attn(x), blk.attn_norm)
        return _ln(h + mlp(h), blk.mlp_norm)
    h = x + attn(_ln(x, blk.attn_norm))
    return h + mlp(_ln(h, blk.mlp_norm))


def test_post_norm_decoder_block_by_hand():
    model = _decoder(norm_position="post", n_layer=1)
    assert isinstance(model.norm, nn.Identity)  # GPT-1: no final norm after a post-norm stack
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        out = model(ids, trace=True)
        x = model.embed_tokens(ids) + model.embed_positions(torch.arange(T))
        torch.testing.assert_close(out.trace.hidden_states[0], x, atol=1e-6, rtol=0)
        y = _hand_block(model, x, post=True, causal=True)
        torch.testing.assert_close(out.trace.hidden_states[1], y, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.logits, model.lm_head(y), atol=1e-5, rtol=0)
        # Each block's output is normalised: zero mean, unit variance before the affine part.
        pre = model(ids).last_hidden_state
        torch.testing.assert_close(pre, y, atol=1e-5, rtol=0)


def test_pre_norm_encoder_block_by_hand():
    model = _encoder(norm_position="pre", n_layer=1)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        out = model(ids, trace=True)
        x = out.trace.hidden_states[0]
        y = _hand_block(model, x, post=False, causal=False)
        torch.testing.assert_close(out.trace.hidden_states[1], y, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.last_hidden_state, _ln(y, model.norm), atol=1e-5, rtol=0)  # final norm
        torch.testing.assert_close(out.logits, model.mlm_head(_ln(y, model.norm)), atol=1e-5, rtol=0)


def test_post_norm_logit_lens_reads_the_identity():
    model = _decoder(norm_position="post")
    ids = _ids(model.config.vocab_size, batch=1)
    with torch.no_grad():
        out = model(ids, trace=True)
    lens = logit_lens(model, out.trace.hidden_states)
    assert torch.equal(lens.final_ids, out.logits[0].argmax(-1))
    probs = torch.softmax(out.logits[0].float(), -1)
    torch.testing.assert_close(lens.top_probs[-1, :, 0], probs.max(-1).values, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- the encoder


@pytest.mark.parametrize("name", ENCODER_OPTIONS)
def test_encoder_option_contract(name):
    model = _encoder(**ENCODER_OPTIONS[name])
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        out = model(ids, trace=True)
        fused = model(ids).logits
        padded = model(ids, attention_mask=torch.tensor([[1] * T, [1] * (T - 3) + [0] * 3]), trace=True)
    assert out.logits.shape == (2, T, model.config.vocab_size)
    torch.testing.assert_close(fused, out.logits, atol=ATOL, rtol=0)
    _check_attentions(model, out.trace.attentions, causal=False)
    for a in padded.trace.attentions:  # padding hides keys on top of the pattern
        assert a[1, :, : T - 3, T - 3 :].abs().max() == 0
    torch.testing.assert_close(padded.logits[0], out.logits[0], atol=ATOL, rtol=0)


def test_tokens_outside_the_pattern_get_zero_weight():
    model = _decoder(layer_types=["strided", "block"], sliding_window=W)
    with torch.no_grad():
        a_strided, a_block = model(_ids(model.config.vocab_size), trace=True).trace.attentions
    assert a_strided[..., 10, 5].abs().max() == 0 and a_strided[..., 10, 4].min() > 0  # 6 back: a stride
    assert a_block[..., 10, 8].abs().max() == 0 and a_block[..., 10, 9].min() > 0  # 8 is the block before


# --------------------------------------------------------------------------- defaults unchanged


# The keys issue 15 added, absent from the built-ins' config.json files.
NEW_KEYS = {
    "decoder": {"relative_buckets", "relative_max_distance", "norm_position"},
    "encoder": {"positions", "rope_theta", "relative_buckets", "relative_max_distance", "norm", "norm_position",
                "mlp", "sliding_window", "layer_types"},
}  # fmt: skip
NEW_KEYS["moe"] = NEW_KEYS["decoder"]


@pytest.mark.parametrize("name", ["gpt", "bert", "moe"])
def test_builtins_load_with_todays_defaults(name):
    from archplay.models.checkpoints.loading import fast_cpu_layout

    model, tok = load(name)
    family = model.config.family
    old = {k: v for k, v in model.config.to_dict().items() if k not in NEW_KEYS[family] | {"family"}}
    again = type(model)(type(model.config).from_dict(old)).eval()
    again.load_state_dict(model.state_dict())
    fast_cpu_layout(again)
    assert again.config == model.config
    ids = torch.tensor([tok.encode("Mia has a red ball. She plays with it.")])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=1e-6, rtol=0)
    assert model.config.norm_position == ("post" if name == "bert" else "pre")
    assert isinstance(model.norm, nn.Identity) == (name == "bert")  # only the pre-norm stacks end in a norm


def test_builtin_config_files_need_no_new_keys():
    from archplay.models.checkpoints.loading import BUILTIN_DIR

    meta = json.loads((BUILTIN_DIR / "bert" / "config.json").read_text())
    cfg = EncoderConfig.from_dict({k: v for k, v in meta["config"].items() if k not in NEW_KEYS["encoder"]})
    assert (cfg.positions, cfg.norm, cfg.norm_position, cfg.mlp) == ("learned", "layernorm", "post", "mlp")
    assert cfg.layer_types == ["full"] * cfg.n_layer and cfg.sliding_window is None
    dec = DecoderConfig.gpt2_tiny()
    assert (dec.positions, dec.norm_position, dec.relative_buckets, dec.relative_max_distance) == (
        "learned", "pre", 32, 128)  # fmt: skip


# --------------------------------------------------------------------------- bad values


BAD_DECODER = [
    (dict(positions="spiral"), "positions must be one of learned, rotary, sinusoidal, alibi, relative, none"),
    (dict(norm_position="middle"), "norm_position must be one of pre, post"),
    (dict(norm="batchnorm"), "norm must be one of layernorm, rmsnorm"),
    (dict(mlp="moe"), "mlp must be one of mlp, gated"),
    (dict(activation="tanh"), "activation must be one of gelu, .*relu.*silu"),
    (dict(layer_types=["full", "dilated"], sliding_window=3), r"layer_types entries must be one of full, sliding, "
                                                              r"strided, block, got \['dilated'\]"),
    (dict(layer_types=["strided", "full"]), "layers of type strided need sliding_window"),
    (dict(layer_types=["block", "full"], sliding_window=0), "sliding_window must be None or a whole number"),
    (dict(layer_types=["full"]), "layer_types needs one entry per layer"),
    (dict(positions="relative", relative_buckets=1), "relative_buckets must be at least 2"),
    (dict(positions="relative", relative_buckets=32, relative_max_distance=8), "relative_max_distance"),
]  # fmt: skip


@pytest.mark.parametrize(("kw", "message"), BAD_DECODER)
def test_bad_decoder_values_are_refused(kw, message):
    with pytest.raises(ValueError, match="DecoderConfig: " + message):
        DecoderConfig.gpt2_tiny(**kw)
    with pytest.raises(ValueError, match="MoEConfig: " + message):
        MoEConfig.mixtral_tiny(**kw)


@pytest.mark.parametrize(("kw", "message"), [
    (dict(positions="spiral"), "positions must be one of learned, sinusoidal, rotary, alibi, relative, none"),
    (dict(norm_position="middle"), "norm_position must be one of pre, post"),
    (dict(layer_types=["sliding", "full"]), "layers of type sliding need sliding_window"),
    (dict(positions="relative", relative_buckets=3), "relative_buckets must be at least 4"),
])  # fmt: skip
def test_bad_encoder_values_are_refused(kw, message):
    with pytest.raises(ValueError, match="EncoderConfig: " + message):
        EncoderConfig.bert_tiny(**kw)


def test_attention_mask_refuses_unknown_patterns_and_missing_windows():
    pos = torch.arange(4)
    with pytest.raises(ValueError, match="expected one of full, sliding, strided, block"):
        attention_mask(pos, pos, causal=True, window=2, pattern="dilated")
    with pytest.raises(ValueError, match="needs a window of at least 1"):
        attention_mask(pos, pos, causal=True, pattern="block")


# --------------------------------------------------------------------------- the card


def test_card_rows_show_the_choices():
    def rows(model):
        return dict(architecture(model))

    r = rows(_decoder(positions="alibi", norm_position="post", layer_types=["strided", "block"], sliding_window=W))
    assert r["positions"].startswith("ALiBi") and "post-norm" in r["norm"] and "no final norm" in r["norm"]
    assert "strided" in r["attention"] and "block-local" in r["attention"] and f"{W}" in r["attention"]
    assert "no hard limit" in r["context length"]
    r = rows(_decoder(positions="relative"))
    assert r["positions"].startswith("relative position buckets") and "causal" in r["positions"]
    assert "pre-norm" in r["norm"]
    assert rows(_decoder(positions="none"))["positions"].startswith("none (NoPE)")
    assert rows(_decoder(layer_types=["sliding", "full"], sliding_window=W))["attention"] == (
        f"causal self-attention; a sliding window of {W} on 1 of 2 layers")  # fmt: skip
    r = rows(_encoder(positions="relative", norm="rmsnorm", norm_position="pre", mlp="gated",
                      layer_types=["block", "full"], sliding_window=W))  # fmt: skip
    assert "both directions" in r["positions"] and r["norm"].startswith("RMSNorm, pre-norm")
    assert "bidirectional" in r["attention"] and "block-local" in r["attention"] and "GEGLU" in r["feed-forward"]
    bert = rows(_encoder())
    assert bert["positions"].startswith("learned absolute table") and "post-norm" in bert["norm"]
    assert bert["attention"] == "bidirectional self-attention (every token sees every token)"
    assert rows(_moe(positions="alibi"))["positions"].startswith("ALiBi")


def test_sinusoidal_positions_scale_the_token_embeddings_as_the_original_transformer():
    """Vaswani et al. multiply the embeddings by √d_model before adding the unit-size waves; without it
    the waves drowned the tokens (std 0.02) and a Lab decoder with sinusoidal positions did not learn."""
    from archplay.models.architectures.layers import sinusoidal_positions

    dec = Decoder(DecoderConfig.gpt2_tiny(positions="sinusoidal"))
    ids = torch.tensor([[5, 7, 9]])
    x0 = dec(ids, trace=True).trace.hidden_states[0][0]
    expected = dec.embed_tokens(ids)[0] * 32**0.5 + sinusoidal_positions(64, 32)[:3]
    torch.testing.assert_close(x0, expected)
