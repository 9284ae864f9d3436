"""Issue 17, more families: each new model_type reproduces transformers on small random weights.

Causal ones (mistral, phi3, qwen3, gpt_neox): logits, every attention map and hidden state, and
32 greedy tokens. Encoders (roberta, xlm-roberta, distilbert): logits (or the last hidden state
without the head), attentions and hidden states, with and without padding. Each test also checks
that the family's special part is there and matters, and that what is refused says why.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import hf_config, make_hf_model, randomize, word_tokenizer

from archplay import models
from archplay.models.analysis import card
from archplay.models.checkpoints.convert import LoadError

ATOL = 1e-4
PROMPT = "mia has a red ball and the cat sat on the mat then she ran to the park with her dog"
MASKED = "the cat [MASK] on the mat and she saw a red ball"


def _compare(ours, hf, ids, **kw):
    """Traced and untraced runs of ours against transformers' eager run: logits, attentions, hidden states."""
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, output_attentions=True, **kw)
        out = ours(ids, trace=True, **kw)
        fast = ours(ids, **kw)
    if getattr(ref, "logits", None) is not None:
        torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(fast.logits, out.logits, atol=ATOL, rtol=0)
    for a, b in zip(out.trace.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    return out, ref


# --------------------------------------------------------------------------- decoders


def _causal(tmp_path, kind, **overrides):
    folder = tmp_path / kind
    hf = make_hf_model(kind, folder, **overrides)
    ours, tok = models.load(folder)
    return ours, tok, hf


CAUSAL = [
    ("mistral", {}),
    ("mistral", {"sliding_window": None}),  # Mistral without a window is Llama
    ("phi3", {}),
    ("phi3", {"sliding_window": 5}),
    ("qwen3", {}),
    ("qwen3", {"attention_bias": True, "tie_word_embeddings": True}),
    ("gpt_neox", {}),
    ("gpt_neox", {"use_parallel_residual": False}),
]


@pytest.mark.parametrize("kind, overrides", CAUSAL)
def test_causal_parity(tmp_path, kind, overrides):
    ours, tok, hf = _causal(tmp_path, kind, **overrides)
    assert ours.config.family == "decoder"
    ids = torch.tensor([tok.encode(PROMPT)])
    assert ids.shape[1] > 12  # longer than any window
    out, ref = _compare(ours, hf, ids)
    hs = out.trace.hidden_states
    assert len(hs) == len(ref.hidden_states) == ours.config.n_layer + 1
    for a, b in zip(hs[:-1], ref.hidden_states[:-1]):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.norm(hs[-1]), ref.hidden_states[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind, overrides", [c for c in CAUSAL if c[1] != {"use_parallel_residual": False}])
def test_causal_greedy_generation(tmp_path, kind, overrides):
    ours, tok, hf = _causal(tmp_path, kind, **overrides)
    ids = torch.tensor([tok.encode("the cat sat on the")])
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
    got = ours.generate(ids, max_new_tokens=32, temperature=0.0)
    assert ref.shape[1] == ids.shape[1] + 32
    assert got.tolist() == ref.tolist()


def test_mistral_window_on_every_layer(tmp_path):
    ours, tok, _ = _causal(tmp_path, "mistral")
    cfg = ours.config
    assert cfg.layer_types == ["sliding", "sliding"] and cfg.sliding_window == 4 and cfg.head_dim == 16
    ids = torch.tensor([tok.encode(PROMPT)])
    T = ids.shape[1]
    q, k = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    for att in ours(ids, trace=True).trace.attentions:
        assert att[..., (q - k >= 4) | (k > q)].abs().max() == 0
    assert "a sliding window of 4 on 2 of 2 layers" in dict(card.architecture(ours))["attention"]


def test_phi3_fused_projections_are_split(tmp_path):
    ours, tok, hf = _causal(tmp_path, "phi3")
    cfg = ours.config
    assert cfg.rotary_fraction == 0.5 and cfg.rotary_dim == 4 and ours.rotary.inv_freq.shape == (2,)
    layer, ref = ours.layers[0], hf.model.layers[0]
    q, k, v = ref.self_attn.qkv_proj.weight.split([32, 16, 16], dim=0)
    torch.testing.assert_close(layer.attn.q_proj.weight, q, atol=0, rtol=0)
    torch.testing.assert_close(layer.attn.k_proj.weight, k, atol=0, rtol=0)
    torch.testing.assert_close(layer.attn.v_proj.weight, v, atol=0, rtol=0)
    gate, up = ref.mlp.gate_up_proj.weight.chunk(2, dim=0)
    torch.testing.assert_close(layer.mlp.gate_proj.weight, gate, atol=0, rtol=0)
    torch.testing.assert_close(layer.mlp.up_proj.weight, up, atol=0, rtol=0)
    assert "on 50% of each head's channels" in dict(card.architecture(ours))["positions"]


def test_phi3_unknown_rope_is_refused(tmp_path):  # longrope loads (test_rope_scaling17); proportional does not
    folder = tmp_path / "phi3"
    make_hf_model("phi3", folder)
    hf = json.loads((folder / "config.json").read_text())
    hf["rope_parameters"] = {**hf["rope_parameters"], "rope_type": "proportional"}
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(LoadError, match="RoPE scaling 'proportional' is not supported"):
        models.load(folder)


def test_qwen3_qk_norm(tmp_path):
    ours, tok, hf = _causal(tmp_path, "qwen3")
    cfg = ours.config
    assert cfg.qk_norm == "head" and cfg.head_dim == 16 and cfg.n_head * cfg.head_dim == 64 != cfg.d_model
    attn = ours.layers[1].attn
    torch.testing.assert_close(attn.q_norm.weight, hf.model.layers[1].self_attn.q_norm.weight, atol=0, rtol=0)
    torch.testing.assert_close(attn.k_norm.weight, hf.model.layers[1].self_attn.k_norm.weight, atol=0, rtol=0)
    assert attn.q_norm.weight.shape == (16,)
    rows = dict(card.architecture(ours))
    assert "RMSNorm over each head's q and k" in rows["q/k norm"]
    # The norms matter: with them switched off the logits move.
    ids = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        before = ours(ids).logits
        for layer in ours.layers:
            layer.attn.q_norm.weight.fill_(3.0)
        assert not torch.allclose(ours(ids).logits, before, atol=1e-2)


def test_qk_norm_is_off_by_default_and_costs_no_parameters():
    from archplay.models.architectures.decoder import Decoder, DecoderConfig

    plain = Decoder(DecoderConfig.llama_tiny())
    normed = Decoder(DecoderConfig.llama_tiny(qk_norm="head"))
    assert plain.layers[0].attn.q_norm is None and plain.layers[0].attn.k_norm is None
    names = {n for n, _ in normed.named_parameters()} - {n for n, _ in plain.named_parameters()}
    assert names == {f"layers.{i}.attn.{p}_norm.weight" for i in range(2) for p in "qk"}


def test_qwen3_sliding_window_only_when_switched_on(tmp_path):
    ours, *_ = _causal(tmp_path, "qwen3", use_sliding_window=False, sliding_window=3)
    assert ours.config.layer_types == ["full", "full"] and ours.config.sliding_window is None


def test_gpt_neox_split_and_parallel_residual(tmp_path):
    ours, tok, hf = _causal(tmp_path, "gpt_neox")
    cfg = ours.config
    assert cfg.parallel_residual and cfg.rotary_fraction == 0.25 and cfg.rotary_dim == 2
    assert not cfg.tie_embeddings and ours.lm_head.weight.data_ptr() != ours.embed_tokens.weight.data_ptr()
    # query_key_value is laid out per head: rows [q0 k0 v0 q1 k1 v1 ...], each Dh = 8 wide.
    fused = hf.gpt_neox.layers[0].attention.query_key_value
    for h in range(4):
        rows = slice(24 * h, 24 * h + 8)
        torch.testing.assert_close(ours.layers[0].attn.q_proj.weight[8 * h: 8 * h + 8], fused.weight[rows], atol=0, rtol=0)
        torch.testing.assert_close(ours.layers[0].attn.v_proj.bias[8 * h: 8 * h + 8],
                                   fused.bias[24 * h + 16: 24 * h + 24], atol=0, rtol=0)  # fmt: skip
    assert "parallel" in dict(card.architecture(ours))["residual"]


def test_gpt_neox_older_config_keys(tmp_path):
    """Pythia's own config.json: rotary_pct and rotary_emb_base at the top, no rope_parameters."""
    folder = tmp_path / "gpt_neox"
    hf_model = make_hf_model("gpt_neox", folder, rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                                  "partial_rotary_factor": 0.5})  # fmt: skip
    hf = json.loads((folder / "config.json").read_text())
    del hf["rope_parameters"], hf["attention_bias"]
    hf.update(rotary_pct=0.5, rotary_emb_base=500)
    (folder / "config.json").write_text(json.dumps(hf))
    ours, tok = models.load(folder)
    assert ours.config.rotary_fraction == 0.5 and ours.config.rope_theta == 500.0 and ours.config.qkv_bias
    _compare(ours, hf_model, torch.tensor([tok.encode(PROMPT)]))


def test_parallel_residual_needs_pre_norm():
    from archplay.models.architectures.decoder import DecoderConfig
    from archplay.models.architectures.moe import MoEConfig

    with pytest.raises(ValueError, match="parallel_residual needs norm_position 'pre'"):
        DecoderConfig.gpt2_tiny(parallel_residual=True, norm_position="post")
    with pytest.raises(ValueError, match="parallel_residual is not supported"):
        MoEConfig.mixtral_tiny(parallel_residual=True)


# --------------------------------------------------------------------------- encoders


def _encoder(tmp_path, kind, *, head=True, **overrides):
    import transformers as T

    cfg = hf_config(kind, **overrides)
    cls = T.AutoModelForMaskedLM if head else T.AutoModel
    hf = cls.from_config(cfg, attn_implementation="eager")
    randomize(hf)
    hf.eval()
    folder = tmp_path / kind
    hf.save_pretrained(folder)
    word_tokenizer("bert").save_pretrained(folder)
    ours, tok = models.load(folder)
    return ours, tok, hf


ENCODERS = [
    ("roberta", {}),
    ("xlm-roberta", {}),
    ("roberta", {"pad_token_id": 3, "hidden_act": "relu"}),  # the head's GELU is fixed whatever the blocks use
    ("distilbert", {}),
    ("distilbert", {"sinusoidal_pos_embds": True, "activation": "relu"}),
]


@pytest.mark.parametrize("head", [True, False])
@pytest.mark.parametrize("kind, overrides", ENCODERS)
def test_encoder_parity(tmp_path, kind, overrides, head):
    ours, tok, hf = _encoder(tmp_path, kind, head=head, **overrides)
    assert ours.config.family == "encoder" and (ours.mlm_head is not None) == head
    ids = torch.tensor([tok.encode(MASKED)])
    out, ref = _compare(ours, hf, ids)
    if not head:
        assert out.logits is None
        torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=ATOL, rtol=0)
    for a, b in zip(out.trace.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["roberta", "distilbert"])
def test_encoder_padding_matches_transformers(tmp_path, kind):
    """Right and left padding with the pad id: RoBERTa's positions skip padding tokens."""
    ours, tok, hf = _encoder(tmp_path, kind)
    pad = ours.config.pad_token_id
    a, b = tok.encode("the cat sat on the mat"), tok.encode("a dog")
    fill = [pad] * (len(a) - len(b))
    ids = torch.tensor([a, b + fill, fill + b])
    mask = (ids != pad).long()
    out, _ = _compare(ours, hf, ids, attention_mask=mask)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(out.logits[real], ref[real], atol=ATOL, rtol=0)


def test_roberta_positions_start_after_padding_idx(tmp_path):
    ours, tok, hf = _encoder(tmp_path, "roberta")
    cfg = ours.config
    assert cfg.position_offset == 2 and cfg.max_seq_len == 64 and ours.embed_positions.weight.shape[0] == 66
    assert cfg.type_vocab_size == 1 and cfg.head_activation == "gelu"
    assert "starting at 2" in dict(card.architecture(ours))["positions"]
    # the Anatomy tab's table of learned positions is the rows the model reads (before: from row 0, which
    # no position reads), the same as transformers' table from padding_idx + 1 on
    from archplay.models.analysis.positions import encoding

    enc = encoding(ours, n=8)
    assert enc.offset == 2 and "reads row p + 2" in enc.note
    torch.testing.assert_close(enc.table, hf.roberta.embeddings.position_embeddings.weight[2:10].float())
    ids = torch.randint(5, 99, (1, 64))
    assert ours(ids).logits.shape == (1, 64, 99)  # 64 tokens use rows 2..65 of the 66-row table
    with pytest.raises(ValueError, match="65 tokens exceed"):
        ours(torch.randint(5, 99, (1, 65)))


def test_distilbert_has_no_token_types(tmp_path):
    ours, *_ = _encoder(tmp_path, "distilbert")
    assert ours.embed_types is None and ours.config.type_vocab_size == 0
    assert dict(card.architecture(ours))["positions"].endswith(", no token-type embeddings")
    assert not any("token-type" in label for label, _ in card.parameter_breakdown(ours))


def test_untied_mlm_head_is_refused(tmp_path):
    _encoder(tmp_path, "roberta")
    folder = tmp_path / "roberta"
    hf = json.loads((folder / "config.json").read_text())
    hf["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(LoadError, match="tie_word_embeddings"):
        models.load(folder)


def test_new_model_types_are_registered():
    from archplay.models import registry

    for mtype, family in [("mistral", "decoder"), ("phi3", "decoder"), ("qwen3", "decoder"), ("gpt_neox", "decoder"),
                          ("roberta", "encoder"), ("xlm-roberta", "encoder"), ("distilbert", "encoder"),
                          ("qwen3_moe", "moe"), ("olmoe", "moe")]:  # fmt: skip
        assert registry.checkpoint(mtype)[0].name == family


# --------------------------------------------------------------------------- mixtures of experts


@pytest.mark.parametrize("kind", ["qwen3_moe", "olmoe"])
def test_moe_parity(tmp_path, kind):
    ours, tok, hf = _causal(tmp_path, kind)
    cfg = ours.config
    assert cfg.family == "moe" and cfg.qk_norm == ("head" if kind == "qwen3_moe" else "all")
    ids = torch.tensor([tok.encode(PROMPT)])
    out, ref = _compare(ours, hf, ids)
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, output_router_logits=True)
    for a, b in zip(out.trace.hidden_states[:-1], ref.hidden_states[:-1], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    routed = [r for r in ref.router_logits if r is not None]
    assert len(out.trace.router_logits) == sum(cfg.moe_layers) == len(routed)
    for a, b in zip(out.trace.router_logits, routed, strict=True):
        torch.testing.assert_close(a.reshape(b.shape), b, atol=ATOL, rtol=0)
    prompt = torch.tensor([tok.encode("the cat sat on the")])
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0)
    assert ours.generate(prompt, max_new_tokens=32).tolist() == expected.tolist()


def test_moe_card_rows(tmp_path):
    qwen, *_ = _causal(tmp_path, "qwen3_moe")
    rows = dict(card.architecture(qwen))
    assert "each head's q and k" in rows["q/k norm"] and rows["MoE layers"].startswith("2 of 3")
    assert "renormalised" in rows["router"]
    olmoe, *_ = _causal(tmp_path, "olmoe")
    assert "whole q and k projections (32 and 16 channels)" in dict(card.architecture(olmoe))["q/k norm"]
    assert olmoe.layers[0].attn.q_norm.weight.shape == (32,) and olmoe.layers[0].attn.k_norm.weight.shape == (16,)


def test_olmoe_clip_qkv_is_refused(tmp_path):
    folder = tmp_path / "olmoe"
    make_hf_model("olmoe", folder)
    hf = json.loads((folder / "config.json").read_text())
    hf["clip_qkv"] = 8.0
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(LoadError, match="clip_qkv"):
        models.load(folder)
