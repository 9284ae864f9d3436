"""The encoder-decoder family (T5): parity with transformers, generation, and the trace contract."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize, word_tokenizer

from archplay import models
from archplay.models.architectures.encoder_decoder import EncoderDecoder, EncoderDecoderConfig, relative_position_bucket
from archplay.models.checkpoints.t5 import hf_config

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"
TARGET = "the cat sat on the mat"


def make_t5(folder, *, untie: bool = False, seed: int = 0, **overrides):
    """Save a tiny random T5ForConditionalGeneration (+ the word tokenizer) in ``folder``.

    transformers 5 always ties T5's head to the embedding (``T5Config`` forces
    ``tie_word_embeddings=True``). ``untie`` gives the head its own matrix and writes the
    config as the Hub's T5 v1.1 / Flan-T5 checkpoints have it: ``tie_word_embeddings: false``.
    """
    import transformers as T

    cfg = T.T5Config(
        vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        pad_token_id=0, eos_token_id=3, decoder_start_token_id=0, **overrides,
    )  # fmt: skip
    model = T.T5ForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    if untie:
        model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(model.shared.weight))
    randomize(model, seed)
    model.eval()
    model.save_pretrained(folder)
    if untie:
        path = folder / "config.json"
        c = json.loads(path.read_text())
        c["tie_word_embeddings"] = False
        c.pop("scale_decoder_outputs", None)
        path.write_text(json.dumps(c))
    word_tokenizer("decoder").save_pretrained(folder)
    return model


STYLES = {
    "original": dict(feed_forward_proj="relu"),  # ReLU FFN, tied head, output × d_model^-0.5
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, untie=True),  # untied, unscaled
    # what transformers 5 itself makes of a v1.1 config: the head stays tied, but unscaled
    "v1.1-saved-by-transformers-5": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "deeper-decoder": dict(num_decoder_layers=3),
    "few-buckets": dict(relative_attention_num_buckets=8, relative_attention_max_distance=10),  # far buckets clamp
}


@pytest.fixture
def t5(tmp_path):
    """Factory: t5("v1.1") -> (our model, tokenizer, HF model)."""

    def make(style: str, **kw):
        folder = tmp_path / style
        hf = make_t5(folder, **{**STYLES[style], **kw})
        ours, tok = models.load(folder)
        return ours, tok, hf

    return make


def _ids(tok, text: str, start: bool = False) -> torch.Tensor:
    return torch.tensor([([0] if start else []) + tok.encode(text)])


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("style", list(STYLES))
def test_t5_parity(t5, style):
    ours, tok, hf = t5(style)
    assert ours.config.family == "encoder-decoder"
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    with torch.no_grad():
        ref = hf(ids, decoder_input_ids=dec, output_attentions=True, output_hidden_states=True)
        out = ours(ids, decoder_input_ids=dec, trace=True)
    tr, cfg = out.trace, ours.config
    assert out.logits.shape == (1, dec.shape[1], 99)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    for ours_a, ref_a in [(tr.attentions, ref.encoder_attentions), (tr.decoder_attentions, ref.decoder_attentions),
                          (tr.cross_attentions, ref.cross_attentions)]:  # fmt: skip
        for a, b in zip(ours_a, ref_a, strict=True):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert len(tr.attentions) == cfg.n_layer and len(tr.cross_attentions) == cfg.n_decoder_layer
    # transformers' last hidden state of each stack is after the stack's final norm; ours is
    # the raw output of the last block (like the decoder family's), so compare like with like.
    for hs, ref_hs, stack in [(tr.hidden_states, ref.encoder_hidden_states, ours.encoder),
                              (tr.decoder_hidden_states, ref.decoder_hidden_states, ours.decoder)]:  # fmt: skip
        assert len(hs) == len(ref_hs) == len(stack.layers) + 1
        for a, b in zip(hs[:-1], ref_hs[:-1]):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
        torch.testing.assert_close(stack.norm(hs[-1]), ref_hs[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.last_hidden_state, ref.decoder_hidden_states[-1], atol=ATOL, rtol=0)


def test_config_reads_tying_and_scaling(t5):
    cases = {"original": (True, True), "v1.1": (False, False), "v1.1-saved-by-transformers-5": (True, False)}
    for style, (tied, scaled) in cases.items():
        ours, _, _ = t5(style)
        assert ours.config.tie_embeddings is tied and ours.config.scale_decoder_outputs is scaled, style
        assert (ours.lm_head.weight is ours.shared.weight) is tied, style
    deep, _, _ = t5("deeper-decoder")
    assert (deep.config.n_layer, deep.config.n_decoder_layer) == (2, 3)


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)[None, :]
    for bidirectional in (True, False):
        for n, d in [(32, 128), (8, 10), (6, 20)]:
            kw = dict(bidirectional=bidirectional, num_buckets=n, max_distance=d)
            ours = relative_position_bucket(rel, **kw)
            ref = T5Attention._relative_position_bucket(rel, **kw)
            assert torch.equal(ours, ref), (bidirectional, n, d)
            assert ours.min() >= 0 and ours.max() == n - 1


def test_padded_encoder_batch_matches_transformers(t5):
    ours, tok, hf = t5("v1.1")
    a, b = tok.encode(PROMPT), tok.encode("a dog ran home")
    ids = torch.tensor([a, b + [0] * (len(a) - len(b))])
    mask = (torch.arange(len(a))[None, :] < torch.tensor([[len(a)], [len(b)]])).long()
    dec = torch.cat([_ids(tok, TARGET, start=True)] * 2)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
        out = ours(ids, attention_mask=mask, decoder_input_ids=dec, trace=True)
        fast = ours(ids, attention_mask=mask, decoder_input_ids=dec)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.logits, ref.logits, atol=ATOL, rtol=0)
    for x, r in zip(out.trace.cross_attentions, ref.cross_attentions, strict=True):
        torch.testing.assert_close(x, r, atol=ATOL, rtol=0)
        assert x[1, ..., len(b):].abs().max() == 0  # padding gets no cross-attention


def test_checkpoint_storing_every_tied_alias_loads(t5, tmp_path):
    """Older checkpoints (torch.save of a state dict) carry the embedding under all its names."""
    _, tok, hf = t5("original")
    folder = tmp_path / "original"
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"} <= set(state)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    ours, _ = models.load(folder)
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, decoder_input_ids=dec).logits, hf(ids, decoder_input_ids=dec).logits,
                                   atol=ATOL, rtol=0)  # fmt: skip


def test_untied_checkpoint_resaved_by_transformers_5(t5, tmp_path):
    """transformers 5 writes tie_word_embeddings: true even for an untied (Flan-T5 style) head and
    then stores both matrices; only the tensor list, not config.json, says the head is untied."""
    import transformers as T

    _, tok, _ = t5("v1.1")
    hf = T.T5ForConditionalGeneration.from_pretrained(tmp_path / "v1.1", attn_implementation="eager").eval()
    hf.save_pretrained(tmp_path / "resaved")
    word_tokenizer("decoder").save_pretrained(tmp_path / "resaved")
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["tie_word_embeddings"] is True
    ours, _ = models.load(tmp_path / "resaved")
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, decoder_input_ids=dec).logits, hf(ids, decoder_input_ids=dec).logits,
                                   atol=ATOL, rtol=0)  # fmt: skip


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("style", ["original", "v1.1", "deeper-decoder"])
def test_greedy_generation_equals_full_forward_loop(t5, style):
    """The cached path (encoder once, KV cache, cross-attention memory) picks the tokens that
    repeated full transformers forward passes pick."""
    ours, tok, hf = t5(style)
    ids = torch.tensor([tok.encode("the cat sat on the mat"), tok.encode("tom saw a big red box")])
    got = ours.generate(ids, max_new_tokens=32)
    dec = torch.zeros(2, 1, dtype=torch.long)  # the decoder start token
    with torch.no_grad():
        for _ in range(32):
            nxt = hf(ids, decoder_input_ids=dec).logits[:, -1].argmax(-1, keepdim=True)
            dec = torch.cat([dec, nxt], dim=1)
    assert got.shape == (2, 32)
    assert got.tolist() == dec[:, 1:].tolist()


@pytest.mark.parametrize("style", ["v1.1", "deeper-decoder"])
def test_cached_decoding_steps_equal_one_full_pass(t5, style):
    """Teacher-forced, one token at a time through the KV cache: the same logits as one full
    pass over the whole decoder sequence (independent of what greedy decoding happens to pick)."""
    ours, tok, _ = t5(style)
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET + " and the dog ran home", start=True)
    with torch.no_grad():
        full = ours(ids, decoder_input_ids=dec).logits  # (1, T, V)
        _, state = ours._start(ids, None)
        steps = [ours._step(dec[:, t : t + 1], state)[0] for t in range(dec.shape[1])]
    assert state.caches[0].length == dec.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("style", ["original", "v1.1"])
def test_greedy_generation_matches_transformers_generate(t5, style):
    ours, tok, hf = t5(style)
    ids = _ids(tok, "the cat sat on the mat")
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=32, do_sample=False)
    assert ref[0, 0] == 0  # transformers returns the start token too
    got = ours.generate(ids, max_new_tokens=32, eos_token_id=hf.config.eos_token_id)
    assert got.tolist() == ref[:, 1:].tolist()


def test_generation_runs_the_encoder_once(t5):
    ours, tok, _ = t5("deeper-decoder")
    calls = {"encoder": 0, "cross_kv": 0}

    def count_encoder(*_):
        calls["encoder"] += 1

    def count_cross(_, args):
        calls["cross_kv"] += args[0].shape[1] > 0  # projections of real encoder positions

    ours.encoder.register_forward_pre_hook(count_encoder)
    for layer in ours.decoder.layers:
        layer.cross_attn.k_proj.register_forward_pre_hook(count_cross)
    ours.generate(_ids(tok, PROMPT), max_new_tokens=10)
    assert calls == {"encoder": 1, "cross_kv": ours.config.n_decoder_layer}


def test_stream_equals_generate_and_eos_stops(t5):
    ours, tok, _ = t5("v1.1")
    ids = _ids(tok, PROMPT)
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    one = ours.generate(ids, **kw)
    assert torch.equal(one, ours.generate(ids, **kw)), "the same seed must give the same sample"
    streamed = list(ours.generate_stream(ids, **kw))
    assert [t for t, _ in streamed] == one[0].tolist()
    assert all(0 < p <= 1 for _, p in streamed)
    first = int(ours.generate(ids, max_new_tokens=1)[0, 0])
    assert ours.generate(ids, max_new_tokens=10, eos_token_id=first).tolist() == [[first]]
    assert ours.generate(ids, max_new_tokens=0).shape == (1, 0)


# --------------------------------------------------------------------------- trace contract


@pytest.mark.parametrize("preset", ["t5_tiny", "t5_v11_tiny"])
def test_trace_contract(preset):
    torch.manual_seed(0)
    cfg = getattr(EncoderDecoderConfig, preset)(n_decoder_layer=3)
    model = EncoderDecoder(cfg).eval()
    B, S, T, H = 2, 11, 7, cfg.n_head
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
    dec = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    with torch.no_grad():
        out = model(ids, decoder_input_ids=dec, trace=True)
        fast = model(ids, decoder_input_ids=dec, trace=False)
    assert out.logits.shape == (B, T, cfg.vocab_size)
    torch.testing.assert_close(fast.logits, out.logits, atol=1e-5, rtol=0)  # fused path == eager path
    assert fast.trace is None
    tr = out.trace
    assert [h.shape for h in tr.hidden_states] == [(B, S, cfg.d_model)] * (cfg.n_layer + 1)
    assert [h.shape for h in tr.decoder_hidden_states] == [(B, T, cfg.d_model)] * (cfg.n_decoder_layer + 1)
    assert [a.shape for a in tr.attentions] == [(B, H, S, S)] * cfg.n_layer
    assert [a.shape for a in tr.decoder_attentions] == [(B, H, T, T)] * cfg.n_decoder_layer
    assert [a.shape for a in tr.cross_attentions] == [(B, H, T, S)] * cfg.n_decoder_layer
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for a in tr.attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(B, H, S), atol=1e-5, rtol=0)
        assert a.min() > 0, "the encoder sees every token, later ones included"
    for a in tr.decoder_attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(B, H, T), atol=1e-5, rtol=0)
        assert a[..., upper].abs().max() == 0, "the decoder attended to the future"
        assert a[..., ~upper].min() > 0
    for a in tr.cross_attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(B, H, T), atol=1e-5, rtol=0)
        assert a.min() > 0
    for name in ("router_logits", "expert_indices", "ssm_attention", "ssm_delta"):
        assert getattr(tr, name) is None, name
    start = torch.full((B, 1), cfg.decoder_start_token_id)
    with torch.no_grad():  # decoder_input_ids defaults to the start token alone
        assert torch.equal(model(ids).logits, model(ids, decoder_input_ids=start).logits)


def test_config_round_trip_and_errors():
    cfg = EncoderDecoderConfig.t5_v11_tiny(n_decoder_layer=3)
    assert EncoderDecoderConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.scale_decoder_outputs is False and EncoderDecoderConfig.t5_tiny().scale_decoder_outputs is True
    with pytest.raises(ValueError, match="unknown EncoderDecoderConfig keys"):
        EncoderDecoderConfig.from_dict({**cfg.to_dict(), "n_experts": 4})
    with pytest.raises(ValueError, match="unknown activation"):
        EncoderDecoderConfig.t5_tiny(ffn="gated-wobble")
    base = {"vocab_size": 99, "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4}
    with pytest.raises(ValueError, match="feed_forward_proj"):
        hf_config({**base, "feed_forward_proj": "gelu-gated"}, "x")
    with pytest.raises(ValueError, match="T5ForConditionalGeneration"):
        hf_config({**base, "architectures": ["T5EncoderModel"]}, "x")


def test_encoder_only_checkpoint_is_refused_clearly(tmp_path):
    import transformers as T

    cfg = T.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    T.T5EncoderModel(cfg).save_pretrained(tmp_path)
    word_tokenizer("decoder").save_pretrained(tmp_path)
    with pytest.raises(models.LoadError, match="T5EncoderModel.*not supported"):
        models.load(tmp_path)
