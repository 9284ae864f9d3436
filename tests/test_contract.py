"""The contract every family keeps (see shared/GUIDE.md), on tiny random models."""

from __future__ import annotations

import pytest
import torch

from archplay import models
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.architectures.encoder import Encoder, EncoderConfig
from archplay.models.architectures.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from archplay.models.architectures.layers import attention_mask
from archplay.models.architectures.moe import MoEConfig, MoEDecoder
from archplay.models.architectures.ssm import Mamba, MambaConfig

WINDOW = 3


def _tiny(name: str):
    torch.manual_seed(0)
    if name == "gpt2-style":
        return Decoder(DecoderConfig.gpt2_tiny())
    if name == "llama-style":
        return Decoder(DecoderConfig.llama_tiny())
    if name == "sliding-window":
        return Decoder(DecoderConfig.llama_tiny(sliding_window=WINDOW, layer_types=["sliding", "full"]))
    if name == "sinusoidal":
        return Decoder(DecoderConfig.gpt2_tiny(positions="sinusoidal"))
    if name == "bert-style":
        return Encoder(EncoderConfig.bert_tiny())
    if name == "mixtral-style":
        return MoEDecoder(MoEConfig.mixtral_tiny(n_layer=3, n_experts=4, top_k=2))
    if name == "t5-style":
        return EncoderDecoder(EncoderDecoderConfig.t5_tiny(n_decoder_layer=3))
    if name == "mamba-style":
        return Mamba(MambaConfig.mamba_tiny())
    if name.startswith("builtin-"):
        return models.load(name.removeprefix("builtin-"))[0]
    raise ValueError(name)


FAMILY = {"bert-style": "encoder", "mixtral-style": "moe", "t5-style": "encoder-decoder", "mamba-style": "ssm",
          "builtin-bert": "encoder", "builtin-t5": "encoder-decoder", "builtin-moe": "moe", "builtin-mamba": "ssm"}
BUILTINS = [f"builtin-{n}" for n in models.BUILTIN_NAMES]
NAMES = ["gpt2-style", "llama-style", "sliding-window", "sinusoidal", "bert-style", "mixtral-style", "t5-style",
         "mamba-style", *BUILTINS]  # fmt: skip
GENERATORS = ["gpt2-style", "llama-style", "sliding-window", "mixtral-style", "t5-style", "mamba-style",
              *(b for b in BUILTINS if b != "builtin-bert")]  # fmt: skip
# Trace fields each family fills beyond hidden_states (and attentions, except the ssm).
SPECIAL = {
    "moe": {"router_logits", "expert_indices"},
    "encoder-decoder": {"decoder_hidden_states", "decoder_attentions", "cross_attentions"},
    "ssm": {"ssm_attention", "ssm_delta"},
}
ALL_SPECIAL = {"decoder_hidden_states", "decoder_attentions", "cross_attentions", "router_logits",
               "expert_indices", "ssm_attention", "ssm_delta"}  # fmt: skip
UPPER = lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # noqa: E731


def _check_probabilities(a, shape, *, causal: bool):
    """Attention rows: the shape, non-negative, summing to 1; causal = nothing above the diagonal."""
    assert a.shape == shape
    torch.testing.assert_close(a.sum(-1), torch.ones(shape[:-1]), atol=1e-5, rtol=0)
    assert (a >= 0).all()
    upper = UPPER(shape[-1]) if shape[-1] == shape[-2] else None
    if causal:
        assert a[..., upper].abs().max() == 0, "a causal model attended to the future"
    elif upper is not None:  # (a trained model's peaked rows may underflow to exact zeros: look at the whole)
        assert a[..., upper].max() > 1e-3, "a bidirectional model must see later tokens"


def _forward(model, ids, dec, trace):
    if model.config.family == "encoder-decoder":
        return model(ids, decoder_input_ids=dec, trace=trace)
    return model(ids, trace=trace)


@pytest.mark.parametrize("name", NAMES)
def test_trace_contract(name):
    model = _tiny(name).eval()
    cfg = model.config
    B, T, Td = 2, 11, 6
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
    dec = torch.randint(0, cfg.vocab_size, (B, Td), generator=gen)
    with torch.no_grad():
        out = _forward(model, ids, dec, trace=True)
        fast = _forward(model, ids, dec, trace=False)
    assert cfg.family == FAMILY.get(name, "decoder")
    family = cfg.family
    T_out = Td if family == "encoder-decoder" else T
    assert out.logits.shape == (B, T_out, cfg.vocab_size)
    scale = max(1.0, float(out.logits.abs().max()))  # float32 rounding grows with the logits' size
    torch.testing.assert_close(fast.logits, out.logits, atol=1e-5 * scale, rtol=0)  # fused path == eager path
    assert fast.trace is None

    tr = out.trace
    assert len(tr.hidden_states) == cfg.n_layer + 1
    assert all(h.shape == (B, T, cfg.d_model) for h in tr.hidden_states)
    for field in ALL_SPECIAL - SPECIAL.get(family, set()):
        assert getattr(tr, field) is None, field

    if family == "ssm":
        assert tr.attentions is None
        assert len(tr.ssm_attention) == len(tr.ssm_delta) == cfg.n_layer
        for alpha, delta in zip(tr.ssm_attention, tr.ssm_delta):
            assert alpha.shape == (B, T, T)
            assert alpha[..., UPPER(T)].abs().max() == 0, "hidden attention reached the future"
            assert (alpha >= 0).all() and alpha[..., ~UPPER(T)].min() > 0  # mean of |α| over channels
            assert delta.shape == (B, T, cfg.d_inner) and (delta > 0).all()  # softplus step sizes
        return

    causal = family in ("decoder", "moe")
    assert len(tr.attentions) == cfg.n_layer
    for i, a in enumerate(tr.attentions):
        _check_probabilities(a, (B, cfg.n_head, T, T), causal=causal)
        if causal and cfg.layer_types[i] == "sliding":
            q, k = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
            assert a[..., q - k >= WINDOW].abs().max() == 0, "attention leaked outside the window"
            assert a[..., (q - k < WINDOW) & (k <= q)].min() > 0
    if family == "moe":
        assert len(tr.router_logits) == len(tr.expert_indices) == cfg.n_layer
        for logits, idx in zip(tr.router_logits, tr.expert_indices):
            assert logits.shape == (B, T, cfg.n_experts)
            assert idx.shape == (B, T, cfg.top_k)  # the router picks k experts per token ...
            assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # ... k distinct ones
    if family == "encoder-decoder":
        L = cfg.n_decoder_layer
        assert len(tr.decoder_hidden_states) == L + 1
        assert all(h.shape == (B, Td, cfg.d_model) for h in tr.decoder_hidden_states)
        assert len(tr.decoder_attentions) == len(tr.cross_attentions) == L
        for a in tr.decoder_attentions:
            _check_probabilities(a, (B, cfg.n_head, Td, Td), causal=True)
        for a in tr.cross_attentions:
            _check_probabilities(a, (B, cfg.n_head, Td, T), causal=False)
            assert a[..., -1].max() > 1e-3  # the decoder may read every source token, the last one too


@pytest.mark.parametrize("name", GENERATORS)
def test_generate_contract(name):
    model = _tiny(name).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2))
    new = lambda out: out if model.config.family == "encoder-decoder" else out[:, 5:]  # noqa: E731
    greedy = model.generate(ids, max_new_tokens=7, temperature=0.0)
    if model.config.family == "encoder-decoder":
        assert greedy.shape == (2, 7)  # the decoder's tokens only
    else:
        assert greedy.shape == (2, 12) and torch.equal(greedy[:, :5], ids)
    a = model.generate(ids, max_new_tokens=7, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    b = model.generate(ids, max_new_tokens=7, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    c = model.generate(ids, max_new_tokens=7, temperature=5.0, seed=4)
    assert torch.equal(a, b), "the same seed must give the same sample"
    assert not torch.equal(a, c)
    one = model.generate(ids[:1], max_new_tokens=7, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    streamed = list(model.generate_stream(ids[:1], max_new_tokens=7, temperature=1.0, top_k=20, top_p=0.9, seed=3))
    assert [t for t, _ in streamed] == new(one)[0].tolist()
    assert all(0 < p <= 1 for _, p in streamed)


def test_generation_stops_at_eos():
    model = _tiny("gpt2-style").eval()
    ids = torch.tensor([[1, 2, 3]])
    first = int(model.generate(ids, max_new_tokens=1)[0, -1])
    out = model.generate(ids, max_new_tokens=10, eos_token_id=first)
    assert out.tolist() == [[1, 2, 3, first]]


def test_masks():
    pos = torch.arange(6)
    assert attention_mask(pos, pos, causal=False) is None
    causal = attention_mask(pos, pos, causal=True)
    assert torch.equal(causal, torch.tril(torch.ones(6, 6, dtype=torch.bool)))
    win = attention_mask(pos, pos, causal=True, window=2)
    assert win.sum(-1).tolist() == [1, 2, 2, 2, 2, 2]
    assert win[5].tolist() == [False, False, False, False, True, True]
    bidi = attention_mask(pos, pos, causal=False, window=2)
    assert bidi[3].tolist() == [False, False, True, True, True, False]
    # With a cache: two new queries at positions 4, 5 over six keys.
    step = attention_mask(torch.arange(4, 6), pos, causal=True)
    assert step.tolist() == [[True] * 5 + [False], [True] * 6]


def test_config_rejects_unknown_keys_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown DecoderConfig keys"):
        DecoderConfig.from_dict({**DecoderConfig.gpt2_tiny().to_dict(), "n_experts": 4})
    with pytest.raises(ValueError, match="DecoderConfig: n_head must be a multiple of n_kv_head"):
        DecoderConfig.gpt2_tiny(n_kv_head=3)
    cfg = DecoderConfig.from_dict(DecoderConfig.llama_tiny().to_dict())
    assert cfg == DecoderConfig.llama_tiny()


def test_too_long_input_is_refused_clearly():
    model = _tiny("gpt2-style")
    with pytest.raises(ValueError, match="exceed this model's context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="context"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), max_new_tokens=10)
