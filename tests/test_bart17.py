"""Issue 17: BART (``model_type: bart``) in the encoder-decoder family: parity with transformers'
BartForConditionalGeneration (logits, attentions, hidden states, greedy generation), each of BART's
special parts, the analyses of issue 16 on it, its card, its parameter count, and its tokenizer."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import WORDS, randomize, word_tokenizer

from archplay import models
from archplay.models import ablate, attention_steps
from archplay.models.analysis.anatomy import anatomy
from archplay.models.analysis.card import architecture, parameter_breakdown
from archplay.models.analysis.estimate import estimate
from archplay.models.analysis.positions import effect, encoding
from archplay.models.architectures.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from archplay.models.architectures.layers import count_parameters
from archplay.models.checkpoints.bart import hf_config

ATOL = 1e-4
V, D, H, DH = 99, 32, 4, 8
EOS = 3  # the word tokenizer's </s>: BART starts decoding from it
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park"
TARGET = "the cat sat on the mat"


def bart_hf_config(**overrides):
    import transformers as T

    kw = dict(vocab_size=V, d_model=D, encoder_layers=2, decoder_layers=3, encoder_attention_heads=H,
              decoder_attention_heads=H, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=40,
              pad_token_id=0, bos_token_id=2, eos_token_id=EOS, decoder_start_token_id=EOS,
              forced_eos_token_id=None)  # fmt: skip
    return T.BartConfig(**{**kw, **overrides})


def make_bart(folder, *, seed: int = 0, **overrides):
    """A tiny random BartForConditionalGeneration (every weight, norm and the logits bias random) + the
    word tokenizer, saved in ``folder``; returns the transformers model."""
    import transformers as T

    model = T.BartForConditionalGeneration._from_config(bart_hf_config(**overrides), attn_implementation="eager")
    randomize(model, seed)
    with torch.no_grad():  # a buffer, which randomize leaves at zero
        bias = model.final_logits_bias
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(seed)))
    model.eval()
    model.save_pretrained(folder)
    word_tokenizer("decoder").save_pretrained(folder)
    return model


STYLES = {
    "tied": dict(),  # one table for encoder, decoder and head; embeddings not scaled
    "untied-scaled": dict(tie_word_embeddings=False, scale_embedding=True, activation_function="relu", seed=1),
}


@pytest.fixture(scope="module")
def bart(tmp_path_factory):
    """bart("tied") -> (our model, tokenizer, HF model, folder), built once per style."""
    made = {}

    def make(style: str):
        if style not in made:
            folder = tmp_path_factory.mktemp(style)
            hf = make_bart(folder, **STYLES[style])
            ours, tok = models.load(folder)
            made[style] = ours, tok, hf, folder
        return made[style]

    return make


def _ids(tok, text: str, start: bool = False) -> torch.Tensor:
    return torch.tensor([([EOS] if start else []) + tok.encode(text)])


def _close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# --------------------------------------------------------------------------- parity


def _against(ours, tok, hf):
    """Ours and transformers on PROMPT → TARGET (teacher-forced), traced: the logits equal, traced and fused."""
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    with torch.no_grad():
        ref = hf(ids, decoder_input_ids=dec, output_attentions=True, output_hidden_states=True)
        out = ours(ids, decoder_input_ids=dec, trace=True)
        fast = ours(ids, decoder_input_ids=dec)
    _close(out.logits, ref.logits)
    _close(fast.logits, ref.logits)  # the fused path too
    return out, ref


@pytest.mark.parametrize("style", list(STYLES))
def test_bart_parity(bart, style):
    ours, tok, hf, _ = bart(style)
    cfg = ours.config
    assert cfg.family == "encoder-decoder" and cfg.positions == "learned" and cfg.post_norm
    tied = style == "tied"
    assert cfg.tie_embeddings is tied and cfg.share_embeddings is tied and cfg.scale_embedding is not tied
    assert (ours.shared is None) is not tied and (ours.lm_head.weight is getattr(ours.shared, "weight", None)) is tied
    out, ref = _against(ours, tok, hf)
    tr = out.trace
    for mine, theirs in [(tr.attentions, ref.encoder_attentions), (tr.decoder_attentions, ref.decoder_attentions),
                         (tr.cross_attentions, ref.cross_attentions)]:  # fmt: skip
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            _close(a, b)
    # Post-norm: no final norm, so every hidden state (the normalised embeddings first) is transformers' own.
    for mine, theirs in [(tr.hidden_states, ref.encoder_hidden_states), (tr.decoder_hidden_states,
                                                                         ref.decoder_hidden_states)]:  # fmt: skip
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            _close(a, b)
    _close(out.last_hidden_state, ref.decoder_hidden_states[-1])


def test_padded_batch_matches_transformers(bart):
    ours, tok, hf, _ = bart("untied-scaled")
    a, b = tok.encode(PROMPT), tok.encode("a dog ran home")
    ids = torch.tensor([a, b + [0] * (len(a) - len(b))])
    mask = (torch.arange(len(a))[None, :] < torch.tensor([[len(a)], [len(b)]])).long()
    dec = torch.cat([_ids(tok, TARGET, start=True)] * 2)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
        out = ours(ids, attention_mask=mask, decoder_input_ids=dec, trace=True)
        fast = ours(ids, attention_mask=mask, decoder_input_ids=dec)
    _close(out.logits, ref.logits)
    _close(fast.logits, ref.logits)
    for x, r in zip(out.trace.cross_attentions, ref.cross_attentions, strict=True):
        _close(x, r)
        assert x[1, ..., len(b) :].abs().max() == 0


@pytest.mark.parametrize("style", list(STYLES))
def test_greedy_generation_matches_transformers_generate(bart, style):
    ours, tok, hf, _ = bart(style)
    ids = torch.tensor([tok.encode("the cat sat on the mat and"), tok.encode("tom saw a big red box then")])
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=20, do_sample=False, num_beams=1)
    assert (ref[:, 0] == EOS).all()  # transformers returns the start token (BART's: </s>) too
    got = ours.generate(ids, max_new_tokens=20, eos_token_id=EOS)
    assert got.tolist() == ref[:, 1:].tolist()
    assert got.shape[1] > 3  # not stopped at once: the comparison covers several cached steps


def test_cached_decoding_steps_equal_one_full_pass(bart):
    ours, tok, _, _ = bart("untied-scaled")
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET + " and the dog ran home", start=True)
    with torch.no_grad():
        full = ours(ids, decoder_input_ids=dec).logits
        _, state = ours._start(ids, None)
        steps = [ours._step(dec[:, t : t + 1], state)[0] for t in range(dec.shape[1])]
    _close(torch.cat(steps, dim=1), full, atol=1e-5)  # each step reads the next learned position


def test_each_special_part_matters(bart):
    """Switch one of BART's options back to T5's (or off): the logits leave transformers'."""
    ours, tok, hf, _ = bart("untied-scaled")
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    with torch.no_grad():
        ref = hf(ids, decoder_input_ids=dec).logits
    cfg = ours.config
    flips = [{"position_offset": 1, "max_seq_len": cfg.max_seq_len + 1}, {"scale_embedding": False},
             {"embedding_norm": False}, {"norm_position": "pre"}, {"norm": "rmsnorm"}, {"bias": False},
             {"scale_attention": False}, {"ffn": "gelu"}, {"final_logits_bias": False}]  # fmt: skip
    state = ours.state_dict()
    for flip in flips:
        other = EncoderDecoder(replace(cfg, **flip)).eval()
        missing, _ = other.load_state_dict(state, strict=False)
        assert not [k for k in missing if not k.startswith(("encoder.norm.", "decoder.norm."))], flip
        with torch.no_grad():
            gap = (other(ids, decoder_input_ids=dec).logits - ref).abs().max()
        assert gap > 1e-2, f"{flip} changed nothing"


def test_checkpoints_with_every_alias_or_without_the_head_load(bart, tmp_path):
    """Older files (torch.save of a state dict) carry the tied table under all its names; a BartModel file
    has no head and no logits bias, which transformers then ties and zeroes."""
    import transformers as T

    _, tok, hf, folder = bart("tied")
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    every = tmp_path / "every"
    every.mkdir()
    (every / "config.json").write_text((folder / "config.json").read_text())
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"} <= set(state)
    torch.save(state, every / "pytorch_model.bin")
    word_tokenizer("decoder").save_pretrained(every)
    ours, _ = models.load(every)
    assert ours.config.tie_embeddings and ours.config.share_embeddings
    with torch.no_grad():
        _close(ours(ids, decoder_input_ids=dec).logits, hf(ids, decoder_input_ids=dec).logits)

    bare = tmp_path / "bare"
    hf.model.save_pretrained(bare)  # BartModel: keys without "model.", no lm_head, no final_logits_bias
    word_tokenizer("decoder").save_pretrained(bare)
    ours, _ = models.load(bare)
    full = T.BartForConditionalGeneration.from_pretrained(bare, attn_implementation="eager").eval()
    assert full.final_logits_bias.abs().max() == 0
    with torch.no_grad():
        _close(ours(ids, decoder_input_ids=dec).logits, full(ids, decoder_input_ids=dec).logits)


def test_what_is_not_bart_is_refused_clearly(tmp_path):
    base = bart_hf_config().to_dict()
    cases = {
        "differ": {"decoder_attention_heads": 2},
        "mBART": {"normalize_before": True},
        "final layer norm": {"add_final_layer_norm": True},
        "BartForSequenceClassification": {"architectures": ["BartForSequenceClassification"]},
        "lone decoder": {"is_decoder": True},
        "divide": {"d_model": 30, "encoder_attention_heads": 4, "decoder_attention_heads": 4},
    }
    for match, change in cases.items():
        with pytest.raises(models.LoadError, match=match):
            hf_config({**base, **change}, "x")
    # through load: the folder's message names the problem
    folder = tmp_path / "prenorm"
    make_bart(folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "normalize_before": True}))
    with pytest.raises(models.LoadError, match="pre-norm"):
        models.load(folder)


def test_inputs_beyond_the_position_table_are_refused():
    model = EncoderDecoder(EncoderDecoderConfig.bart_tiny(max_seq_len=8)).eval()
    with pytest.raises(ValueError, match="learned position table"):
        model(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="learned decoder positions"):
        model.generate(torch.ones(1, 4, dtype=torch.long), max_new_tokens=9)
    assert model.generate(torch.ones(1, 8, dtype=torch.long), max_new_tokens=8).shape == (1, 8)


def test_trace_contract_and_round_trip():
    torch.manual_seed(0)
    cfg = EncoderDecoderConfig.bart_tiny(n_decoder_layer=3)
    assert EncoderDecoderConfig.from_dict(cfg.to_dict()) == cfg
    model = EncoderDecoder(cfg).eval()
    ids, dec = torch.randint(0, V, (2, 11)), torch.randint(0, V, (2, 7))
    with torch.no_grad():
        out = model(ids, decoder_input_ids=dec, trace=True)
        fast = model(ids, decoder_input_ids=dec)
    _close(fast.logits, out.logits, atol=1e-5)
    upper = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)
    for a in out.trace.decoder_attentions:
        _close(a.sum(-1), torch.ones(2, H, 7), atol=1e-5)
        assert a[..., upper].abs().max() == 0
    assert [a.shape for a in out.trace.cross_attentions] == [(2, H, 7, 11)] * 3
    with pytest.raises(ValueError, match="share_embeddings"):
        EncoderDecoderConfig.bart_tiny(share_embeddings=False)  # tied head, but no one table to tie it to
    with pytest.raises(ValueError, match="positions must be"):
        EncoderDecoderConfig.bart_tiny(positions="rotary")


# --------------------------------------------------------------------------- issue 16's analyses


def _hf_attention(hf, kind: str, layer: int):
    if kind == "self":
        return hf.model.encoder.layers[layer].self_attn
    block = hf.model.decoder.layers[layer]
    return block.self_attn if kind == "decoder" else block.encoder_attn


@pytest.mark.parametrize("kind", ["self", "decoder", "cross"])
def test_attention_steps_recompute_transformers_numbers(bart, kind):
    ours, tok, hf, _ = bart("tied")
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    layer, head, query = 1, 2, 4
    got = {}
    module = _hf_attention(hf, kind, layer)
    hooks = [getattr(module, name).register_forward_hook(lambda m, a, o, name=name: got.setdefault(name, o))
             for name in ("q_proj", "k_proj", "v_proj")]  # fmt: skip
    try:
        with torch.no_grad():
            ref = hf(ids, decoder_input_ids=dec, output_attentions=True, output_hidden_states=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    s = attention_steps(ours, ids, layer, head, query, kind=kind, decoder_input_ids=dec)
    per_head = {k: v[0].view(v.shape[1], H, DH)[:, head] for k, v in got.items()}  # (T, Dh) for the head
    _close(s.q, per_head["q_proj"][query], atol=1e-5)
    _close(s.k, per_head["k_proj"], atol=1e-5)
    _close(s.v, per_head["v_proj"], atol=1e-5)
    assert s.scale == pytest.approx(1 / math.sqrt(DH)) and s.bias.abs().max() == 0  # learned positions: no bias
    z = (s.scores * s.scale + s.bias).masked_fill(~s.mask, float("-inf"))
    _close(torch.softmax(z, -1), s.weights, atol=1e-6)
    maps = {"self": ref.encoder_attentions, "decoder": ref.decoder_attentions, "cross": ref.cross_attentions}[kind]
    _close(s.weights, maps[layer][0, head, query], atol=1e-5)
    _close(s.out, s.weights @ s.v, atol=1e-6)
    if kind == "decoder":
        assert not s.mask[query + 1 :].any() and s.mask[: query + 1].all()
    if kind != "cross":  # post-norm: the block's input is known, but no pre-norm sum "after attention"
        hidden = ref.encoder_hidden_states if kind == "self" else ref.decoder_hidden_states
        _close(s.residual_in, hidden[layer][0, query], atol=1e-5)
        assert s.residual_out is None


@pytest.mark.parametrize("kind", ["self", "decoder", "cross"])
def test_head_ablation_equals_transformers_with_the_heads_slice_zeroed(bart, kind):
    ours, tok, hf, _ = bart("untied-scaled")
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    layer, head = 1, 2

    def zero(module, args):
        x = args[0].clone()
        x[..., head * DH : (head + 1) * DH] = 0
        return (x,)

    handle = _hf_attention(hf, kind, layer).out_proj.register_forward_pre_hook(zero)
    try:
        with torch.no_grad():
            expected = hf(ids, decoder_input_ids=dec).logits
    finally:
        handle.remove()
    with torch.no_grad():
        off = ablate(ours, ids, heads=[(layer, head)], kind=kind, decoder_input_ids=dec).logits
        base = ours(ids, decoder_input_ids=dec).logits
    _close(off, expected)
    assert (off - base).abs().max() > 1e-3


def test_positions_describe_the_learned_tables_with_their_offset(bart):
    ours, tok, hf, _ = bart("tied")
    e = encoding(ours, 7)
    assert e.kind == "learned" and e.offset == 2 and "row p + 2" in e.note
    _close(e.table, hf.model.encoder.embed_positions.weight[2:9].float(), atol=0)  # positions 0..6 read rows 2..8
    _close(e.decoder_table, hf.model.decoder.embed_positions.weight[2:9].float(), atol=0)
    _close(e.similarity.diagonal(), torch.ones(7), atol=1e-5)
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    ef = effect(ours, ids, 0, 1, 5, decoder_input_ids=dec)
    assert ef.kind == "learned" and (ef.with_positions - ef.without_positions).abs().max() > 1e-3
    # Without positions = the same model with both position tables zeroed.
    zeroed = EncoderDecoder(ours.config).eval()
    zeroed.load_state_dict(ours.state_dict())
    with torch.no_grad():
        zeroed.encoder.embed_positions.weight.zero_()
        zeroed.decoder.embed_positions.weight.zero_()
        row = zeroed(ids, decoder_input_ids=dec, trace=True).trace.attentions[0][0, 1, 5]
    _close(ef.without_positions, row.float(), atol=1e-5)
    d = effect(ours, ids, 1, 0, 3, kind="decoder", decoder_input_ids=dec)
    assert (d.with_positions - d.without_positions).abs().max() > 1e-3


def test_anatomy_shows_post_norm_layernorm_blocks(bart):
    ours, tok, _, _ = bart("untied-scaled")
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    enc, dec_stack = anatomy(ours, ids, decoder_input_ids=dec)
    kinds = [p.kind for p in enc.block]
    assert kinds == ["attention", "add", "norm", "mlp", "add", "norm"]  # Norm(x + f(x))
    assert [p.kind for p in dec_stack.block] == ["attention", "add", "norm", "cross-attention", "add", "norm", "mlp",
                                                 "add", "norm"]  # fmt: skip
    assert {p.name for p in enc.block if p.kind == "norm"} == {"LayerNorm"}
    assert [p.kind for p in enc.embed] == ["embed", "positions", "norm"] and "√d_model" in enc.embed[0].detail
    assert "row p + 2" in enc.embed[1].detail and enc.embed[1].shape_out == (1, ids.shape[1], D)
    assert enc.out == [] and [p.kind for p in dec_stack.out] == ["head"]  # post-norm: no final norm
    assert "own" in dec_stack.embed[0].name  # untied: the decoder has its own table


# --------------------------------------------------------------------------- card, parameters, tokenizer


def test_card_rows_show_what_is_bart(bart):
    ours, _, hf, folder = bart("untied-scaled")
    card = dict(architecture(ours))
    assert "BART" in card["family"]
    assert card["positions"].startswith("learned absolute tables, one per stack") and "row p + 2" in card["positions"]
    assert card["norm"].startswith("LayerNorm, post-norm") and "no final norm" in card["norm"]
    assert card["feed-forward"] == "37 wide, ReLU" and "1/√d_head" in card["attention"]
    assert "√d_model" in card["embeddings"] and "LayerNorm of the embeddings" in card["embeddings"]
    assert card["biases"].startswith("on every projection") and "own matrix" in card["tied embeddings"]
    assert card["decoding starts at"] == f"token {EOS}" and "final_logits_bias" in card["output bias"]
    tied = dict(architecture(bart("tied")[0]))
    assert tied["feed-forward"] == "37 wide, GELU" and "embeddings" in tied and "√d_model" not in tied["embeddings"]
    rows = dict(parameter_breakdown(ours))
    assert rows["position embeddings"] == 2 * (40 + 2) * D  # two tables, each with BART's two extra rows
    assert rows["token embeddings (one per stack)"] == 2 * V * D and rows["LM head"] == V * D
    assert rows["norms"] == 2 * 2 * D + (2 * 2 + 3 * 3) * 2 * D  # embedding norms + the blocks' LayerNorms
    assert "other" not in rows and sum(rows.values()) == count_parameters(ours)


@pytest.mark.parametrize("style", list(STYLES))
def test_estimate_counts_transformers_parameters(bart, style):
    ours, _, hf, folder = bart(style)
    theirs = sum(p.numel() for p in hf.parameters())
    r = estimate(folder)
    assert r["params"] == count_parameters(ours)
    if style == "tied":
        assert r["params"] == theirs
    else:  # transformers' untied BART also keeps model.shared, which its forward pass never reads
        assert r["params"] == theirs - hf.model.shared.weight.numel()


def bart_tokenizer():
    """A byte-level BPE like BART's (transformers' BartTokenizer, i.e. RobertaTokenizer): <s>=0, <pad>=1,
    </s>=2, <unk>=3, then pieces learnt from the test words, and <mask> last."""
    import transformers as T
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers import models as tk_models

    tk = Tokenizer(tk_models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=150, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=[], show_progress=False)  # fmt: skip
    tk.train_from_iterator([" ".join(WORDS) + ". " + " ".join(WORDS)] * 3, trainer=trainer)
    vocab = tk.get_vocab()
    vocab["<mask>"] = len(vocab)
    merges = [tuple(m) for m in json.loads(tk.to_str())["model"]["merges"]]
    return T.BartTokenizer(vocab=vocab, merges=merges), vocab, merges


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.json + merges.txt"])
def test_a_bart_tokenizer_loads(tmp_path, files):
    tok, vocab, merges = bart_tokenizer()
    folder = tmp_path / "bart"
    make_bart(folder, vocab_size=160, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / f).unlink(missing_ok=True)  # the word tokenizer make_bart saved
    if files == "tokenizer.json":
        tok.save_pretrained(folder)
    else:  # as the Hub's facebook/bart-* folders have it
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    model, ours = models.load(folder)
    ids = ours.encode("mia has a red ball.")
    assert ids == tok.encode("mia has a red ball.") and ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
    assert ours.decode(ids) == "mia has a red ball."
    labels = ours.tokens(ids)
    assert labels[0] == "<s>" and labels[-1] == "</s>" and "␣red" in labels  # Ġ shown as a visible space
    assert (ours.eos_token_id, ours.pad_token_id) == (2, 1) == (model.config.eos_token_id, model.config.pad_token_id)
    out = model.generate(torch.tensor([ids]), max_new_tokens=3)
    assert out.shape == (1, 3)


# --------------------------------------------------------------------------- mBART: the same model, pre-norm


def test_mbart_parity_generation_card_and_count(tmp_path):
    """mBART's blocks are pre-norm, with a final LayerNorm per stack; the rest is BART's."""
    import transformers as T

    cfg = T.MBartConfig(**{**bart_hf_config(scale_embedding=True).to_dict(), "model_type": "mbart"})
    hf = T.MBartForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    randomize(hf, 2)
    with torch.no_grad():
        hf.final_logits_bias.normal_(generator=torch.Generator().manual_seed(2))
    hf.eval()
    hf.save_pretrained(tmp_path)
    word_tokenizer("decoder").save_pretrained(tmp_path)
    ours, tok = models.load(tmp_path)
    assert ours.config.norm_position == "pre" and ours.config.positions == "learned"
    out, ref = _against(ours, tok, hf)
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)  # for generation and the anatomy below
    for a, b in zip(out.trace.cross_attentions + out.trace.attentions, ref.cross_attentions + ref.encoder_attentions,
                    strict=True):  # fmt: skip
        _close(a, b)
    # transformers reports each stack's last hidden state after its final norm; ours is the last block's output
    for hs, ref_hs, stack in [(out.trace.hidden_states, ref.encoder_hidden_states, ours.encoder),
                              (out.trace.decoder_hidden_states, ref.decoder_hidden_states, ours.decoder)]:  # fmt: skip
        assert len(hs) == len(ref_hs)
        for a, b in zip(hs[:-1], ref_hs[:-1]):
            _close(a, b)
        _close(stack.norm(hs[-1]), ref_hs[-1])
    with torch.no_grad():
        gen = hf.generate(ids, max_new_tokens=20, do_sample=False, num_beams=1)
    assert ours.generate(ids, max_new_tokens=20, eos_token_id=EOS).tolist() == gen[:, 1:].tolist()
    card = dict(architecture(ours))
    assert card["norm"].startswith("LayerNorm, pre-norm (+ a final norm per stack)")
    enc, _ = anatomy(ours, ids, decoder_input_ids=dec)
    assert [p.kind for p in enc.block] == ["norm", "attention", "add", "norm", "mlp", "add"]
    assert [p.kind for p in enc.out] == ["norm"]
    assert estimate(tmp_path)["params"] == sum(p.numel() for p in hf.parameters()) == count_parameters(ours)


@pytest.mark.parametrize("kind", ["bart", "mbart"])
def test_conftest_makes_both_kinds(hf_folder, kind):
    folder, hf = hf_folder(kind)
    assert type(hf).__name__ == ("BartForConditionalGeneration" if kind == "bart" else "MBartForConditionalGeneration")
    ours, tok = models.load(folder)
    ids, dec = _ids(tok, PROMPT), _ids(tok, TARGET, start=True)
    with torch.no_grad():
        _close(ours(ids, decoder_input_ids=dec).logits, hf(ids, decoder_input_ids=dec).logits)
