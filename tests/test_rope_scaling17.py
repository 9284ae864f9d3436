"""Issue 17, the RoPE scalings released checkpoints use: yarn, longrope and dynamic (NTK), as transformers has them.

* ``RotaryEmbedding``'s frequencies and cos/sin equal transformers' rotary module for each scaling, call by call
  (longrope and dynamic choose by the sequence a call's positions end at);
* parity with transformers' models on small random checkpoints (logits traced and untraced, attention maps,
  hidden states, greedy tokens): Llama (yarn, dynamic, longrope), Qwen3 (yarn), Qwen2 (an older config.json's
  ``rope_scaling`` with ``type``), Phi-3 (longrope with ``original_max_position_embeddings`` 8, texts shorter and
  longer than it), DeepSeek-V3 (yarn with mscale and mscale_all_dim: the softmax-scale correction);
* generation across the threshold: dynamic (the prompt fits, the new tokens do not) as transformers generates;
* what is still refused says so.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_causal_parity, hf_config, make_hf_model, word_tokenizer

from archplay import models
from archplay.models.analysis.positions import encoding
from archplay.models.architectures.layers import RotaryEmbedding
from archplay.models.checkpoints.convert import LoadError
from archplay.viz.positions import UNSCALED_WAVELENGTH, WAVELENGTH, encoding_figure

ATOL = 1e-4
SHORT = "the cat sat on the"  # 5 tokens
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}
DYNAMIC = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0}
# Llama's tiny head: 8 channels, 4 pairs; Phi-3's: half of 8 rotated, 2 pairs
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.2, 1.5, 2.0],
            "long_factor": [1.5, 3.0, 7.0, 16.0], "original_max_position_embeddings": 8}  # fmt: skip
PHI3_LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                 "short_factor": [1.0, 1.5], "long_factor": [3.0, 40.0],
                 "original_max_position_embeddings": 8}  # fmt: skip


def _hf_rotary(params: dict, **overrides):
    """transformers' LlamaRotaryEmbedding for a tiny Llama with ``params`` (a fresh one: dynamic keeps state)."""
    import transformers as T

    cfg = hf_config("llama", rope_parameters=dict(params), **overrides)
    cfg.standardize_rope_params()
    return T.models.llama.modeling_llama.LlamaRotaryEmbedding(cfg)


def _ours_rotary(params: dict, max_len: int = 256):
    from archplay.models.checkpoints.llama import rope

    theta, scaling = rope({"rope_parameters": dict(params), "max_position_embeddings": max_len})
    return RotaryEmbedding(8, theta, scaling)


@pytest.mark.parametrize("params, max_len", [
    (YARN, 256),
    ({**YARN, "factor": 40.0, "beta_fast": 16, "beta_slow": 2, "truncate": False}, 256),
    ({**YARN, "mscale": 1.0, "mscale_all_dim": 0.5}, 256),  # cos, sin × mscale ratio ≠ 1
    ({**YARN, "attention_factor": 1.3}, 256),
    (LONGROPE, 256), ({**LONGROPE, "attention_factor": 0.9}, 256),
    (DYNAMIC, 8),
], ids=["yarn", "yarn-betas-untruncated", "yarn-mscale", "yarn-attention-factor", "longrope",
        "longrope-attention-factor", "dynamic"])  # fmt: skip
def test_rotary_equals_transformers_call_by_call(params, max_len):
    """Each call's (cos, sin) as transformers' rotary module computes them: a first chunk inside the threshold
    (8 for longrope and dynamic), then one token at a time past it, then one long call from a fresh module."""
    ours = _ours_rotary(params, max_len)
    hf = _hf_rotary(params, max_position_embeddings=max_len)
    x = torch.zeros(1)
    for chunk in (torch.arange(0, 6), torch.arange(6, 8), torch.arange(8, 9), torch.arange(9, 10),
                  torch.arange(10, 14)):  # fmt: skip
        cos, sin = ours(chunk)
        ref_cos, ref_sin = hf(x, chunk[None])
        torch.testing.assert_close(cos, ref_cos[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(sin, ref_sin[0], atol=1e-6, rtol=1e-6)
    cos, _ = ours(torch.arange(20))
    ref_cos, _ = _hf_rotary(params, max_position_embeddings=max_len)(x, torch.arange(20)[None])
    torch.testing.assert_close(cos, ref_cos[0], atol=1e-6, rtol=1e-6)


def test_scalings_change_what_they_should():
    """Each scaling is not the default, and moves where it claims to: yarn leaves the fastest pair alone and
    stretches the slowest by its factor; longrope and dynamic switch at their thresholds; the factors on cos, sin."""
    plain = RotaryEmbedding(8, 10000.0)
    yarn = _ours_rotary(YARN)
    assert yarn.inv_freq[0] == plain.inv_freq[0]
    torch.testing.assert_close(yarn.inv_freq[-1], plain.inv_freq[-1] / 4.0)
    assert yarn.attention_factor == pytest.approx(0.1 * math.log(4.0) + 1.0)
    long = _ours_rotary(LONGROPE)
    torch.testing.assert_close(long.frequencies(8), plain.inv_freq / torch.tensor(LONGROPE["short_factor"]))
    torch.testing.assert_close(long.frequencies(9), plain.inv_freq / torch.tensor(LONGROPE["long_factor"]))
    assert long.attention_factor == pytest.approx(math.sqrt(1 + math.log(256 / 8) / math.log(8)))
    dyn = _ours_rotary(DYNAMIC, max_len=8)
    torch.testing.assert_close(dyn.frequencies(8), plain.inv_freq)
    base = 10000.0 * (3.0 * 16 / 8 - 2.0) ** (8 / 6)  # θ' at 16 tokens
    torch.testing.assert_close(dyn.frequencies(16), 1.0 / base ** (torch.arange(0, 8, 2).float() / 8))


@pytest.mark.parametrize("kind, params", [
    ("llama", YARN),
    ("llama", {**YARN, "factor": 8.0, "beta_fast": 8, "attention_factor": 0.8}),
    ("qwen3", {**YARN, "rope_theta": 1_000_000.0}),
], ids=["llama-yarn", "llama-yarn-betas", "qwen3-yarn"])  # fmt: skip
def test_yarn_parity(hf_ckpt, kind, params):
    ours, tok, hf, _ = hf_ckpt(kind, rope_parameters=dict(params))
    assert ours.config.rope_scaling["rope_type"] == "yarn" and ours.rotary.attention_factor != 1.0
    assert_causal_parity(ours, hf, tok, layers=2, atol=ATOL)


def test_gemma3_yarn_on_the_global_layers(hf_ckpt):
    """Gemma 3: the scaling of ``rope_parameters["full_attention"]`` on the global layers, with the model's own
    context (131072 when absent; 256 here) for yarn's defaults; the local layers keep their plain base."""
    params = {"full_attention": {**YARN, "rope_theta": 1_000_000.0},
              "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}  # fmt: skip
    ours, tok, hf, _ = hf_ckpt("gemma3_text", rope_parameters=params)
    assert ours.rotary.kind == "yarn" and ours.rotary_local.kind == "default"
    assert_causal_parity(ours, hf, tok, layers=3, atol=ATOL)


def _older_config(tmp_path, kind: str, theta: float, scaling: dict):
    """A ``kind`` checkpoint whose config.json says its RoPE the older way (``rope_theta`` at the top level,
    ``rope_scaling``) -> (transformers' model, ours, tokenizer), both loaded from it."""
    import transformers as T

    folder = tmp_path / kind
    make_hf_model(kind, folder)
    hf = json.loads((folder / "config.json").read_text())
    hf.pop("rope_parameters", None)
    hf.update(rope_theta=theta, rope_scaling=scaling)
    (folder / "config.json").write_text(json.dumps(hf))
    ref = T.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return ref, *models.load(folder)


def test_qwen2_older_rope_scaling_key(tmp_path):
    """Qwen2.5's long-context recipe in an older config.json: ``rope_scaling`` with ``type``, θ at the top level."""
    ref, ours, tok = _older_config(tmp_path, "qwen2", 5000.0, {"type": "yarn", "factor": 4.0,
                                                            "original_max_position_embeddings": 32})
    assert ref.config.rope_parameters["rope_type"] == "yarn"
    assert ours.config.rope_theta == 5000.0 and ours.config.rope_scaling["original_max_position_embeddings"] == 32
    assert_causal_parity(ours, ref, tok, layers=3, atol=ATOL)


def test_dynamic_parity_and_generation_across_the_threshold(tmp_path):
    """max_position_embeddings 8: the 20-token text is past it (θ grows with the length), and generation from
    5 tokens crosses it; transformers' generate recomputes the frequencies at each longer step and keeps the
    cached keys as they were rotated, as our cache does (a call's frequencies follow its last position)."""
    hf = make_hf_model("llama", tmp_path / "llama", rope_parameters=dict(DYNAMIC), max_position_embeddings=8)
    ours, tok = models.load(tmp_path / "llama")
    assert ours.rotary.switch_at == 8
    assert_causal_parity(ours, hf, tok, layers=2, atol=ATOL)  # its forward first, then its generation
    ids = torch.tensor([tok.encode(SHORT)])
    plain = make_hf_model("llama", tmp_path / "plain", max_position_embeddings=8)  # the same weights, unscaled
    with torch.no_grad():
        assert ours(ids).logits.allclose(plain(ids).logits, atol=ATOL)  # inside the threshold nothing changes
        long = torch.tensor([tok.encode("the cat sat on the mat then she ran to the park")])
        assert not ours(long).logits.allclose(plain(long).logits, atol=1e-2)


def test_llama_longrope_parity(tmp_path):
    """Short factors for a text within original_max_position_embeddings (8), long ones past it; the attention
    factor √(1 + ln(256/8) / ln 8) on cos and sin; generation from a prompt already past the threshold."""
    folder = tmp_path / "llama"
    hf = make_hf_model("llama", folder, rope_parameters=dict(LONGROPE))
    ours, tok = models.load(folder)
    assert ours.rotary.switch_at == 8
    for text in (SHORT, "the cat sat on the mat then she ran to the park"):
        ids = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=ATOL, rtol=0)
    ids = torch.tensor([tok.encode("the cat sat on the mat then she ran")])
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert ours.generate(ids, max_new_tokens=12).tolist() == ref.tolist()


@pytest.fixture(scope="module")
def phi3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phi3") / "phi3"
    hf = make_hf_model("phi3", folder, rope_parameters=dict(PHI3_LONGROPE), original_max_position_embeddings=8)
    return (*models.load(folder), hf)


def _logits_attentions_hidden(ours, hf, ids):
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True, output_attentions=True)
        out = ours(ids, trace=True)
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=0)
    for a, b in zip(out.trace.attentions, ref.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    for a, b in zip(out.trace.hidden_states[:-1], ref.hidden_states[:-1], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    return out.logits


def test_phi3_longrope_parity(phi3):
    """Phi-3 128k's layout: original_max_position_embeddings (8 here) at the top level, factor left to
    max/original (256/8), partial RoPE; a 20-token text rotates with the long factors, a 5-token one with
    the short ones (and the two choices differ)."""
    ours, tok, hf = phi3
    assert ours.config.rope_scaling["original_max_position_embeddings"] == 8 and ours.rotary.switch_at == 8
    assert ours.rotary.attention_factor == pytest.approx(math.sqrt(1 + math.log(32) / math.log(8)))
    ids = torch.tensor([tok.encode("the cat sat on the mat then she ran to the park with her dog and")])
    assert ids.shape[1] > 8
    long = _logits_attentions_hidden(ours, hf, ids)
    short = _logits_attentions_hidden(ours, hf, ids[:, :5])
    assert not long[:, :5].allclose(short, atol=1e-3)  # past the threshold, the long factors from position 0 on


def test_phi3_generation_from_past_the_threshold(phi3):
    ours, tok, hf = phi3
    ids = torch.tensor([tok.encode("the cat sat on the mat then she ran to")])
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert ours.generate(ids, max_new_tokens=16).tolist() == ref.tolist()


def test_phi3_generation_across_the_threshold(phi3):
    ours, tok, hf = phi3
    ids = torch.tensor([tok.encode(SHORT)])
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        no_cache = hf.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, use_cache=False)
    assert ref.tolist() == no_cache.tolist()  # what transformers' restart amounts to
    assert ours.generate(ids, max_new_tokens=12).tolist() == ref.tolist()


def test_phi3_older_su_config_and_its_own_original_length(tmp_path, phi3):
    """Phi-3's first 128k configs: ``rope_scaling`` with ``type`` "su" (longrope, as transformers reads it);
    without a top-level original_max_position_embeddings Phi-3 takes 4096, whatever rope_parameters says."""
    import transformers as T

    _, _, hf_model = phi3
    folder = tmp_path / "phi3"
    hf_model.save_pretrained(folder)
    word_tokenizer("decoder").save_pretrained(folder)
    hf = json.loads((folder / "config.json").read_text())
    params = {k: v for k, v in hf.pop("rope_parameters").items() if k not in ("rope_type", "rope_theta")}
    hf.update(rope_theta=10000.0, rope_scaling={**params, "type": "su"})
    (folder / "config.json").write_text(json.dumps(hf))
    ref = T.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    assert ref.config.rope_parameters["rope_type"] == "longrope"
    ours, _ = models.load(folder)
    ids = torch.arange(4, 24)[None]  # 20 tokens: past 8
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=ATOL, rtol=0)
    assert ours.rotary.switch_at == 8
    del hf["original_max_position_embeddings"]
    hf["rope_scaling"]["original_max_position_embeddings"] = 8
    (folder / "config.json").write_text(json.dumps(hf))
    ours, _ = models.load(folder)
    assert ours.rotary.switch_at == 4096 and ours.rotary.attention_factor == 1.0  # 256/4096: not stretched
    ref = T.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mscale, mscale_all_dim", [(1.0, 1.0), (1.0, 0.7)], ids=["released", "unequal"])
def test_deepseek_v3_yarn_parity(tmp_path, mscale, mscale_all_dim):
    """DeepSeek-V3's YaRN: cos, sin × mscale(s, mscale)/mscale(s, mscale_all_dim) on the rope channels, and the
    softmax scale 1/√(nope + rope) × mscale(s, mscale_all_dim)² (released: mscale = mscale_all_dim = 1)."""
    params = {**YARN, "factor": 40.0, "beta_fast": 32, "beta_slow": 1, "mscale": mscale,
              "mscale_all_dim": mscale_all_dim}  # fmt: skip
    folder = tmp_path / "deepseek"
    hf = make_hf_model("deepseek_v3", folder, rope_parameters=params)
    ours, tok = models.load(folder)
    m = 0.1 * mscale_all_dim * math.log(40.0) + 1.0
    attn = ours.layers[0].attn
    assert attn.scale == pytest.approx(12**-0.5 * m * m)
    assert attn.scale == pytest.approx(hf.model.layers[0].self_attn.scaling)
    assert ours.rotary.attention_factor == pytest.approx((0.1 * mscale * math.log(40.0) + 1.0) / m)
    assert_causal_parity(ours, hf, tok, layers=3, atol=ATOL)


def test_deepseek_v3_released_config_json(tmp_path):
    """DeepSeek-V3's own config.json: ``rope_scaling`` with ``type`` yarn, θ at the top level."""
    ref, ours, _ = _older_config(tmp_path, "deepseek_v3", 10000.0, {
        "type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 64})  # fmt: skip
    assert ours.config.attn_scale == pytest.approx(ref.model.layers[0].self_attn.scaling) != 12**-0.5
    ids = torch.arange(4, 24)[None]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=ATOL, rtol=0)


def test_positions_view_reads_the_scaled_frequencies(phi3, tmp_path):
    """The positions view draws the wavelengths the described text rotates with: longrope's long ones past 8."""
    ours, _, _ = phi3
    short, long = encoding(ours, 5), encoding(ours, 20)
    torch.testing.assert_close(short.inv_freq, ours.rotary.frequencies(5))
    torch.testing.assert_close(long.inv_freq, ours.rotary.frequencies(20))
    assert not torch.allclose(short.inv_freq, long.inv_freq)
    assert "longrope" in long.note
    plain = 2 * math.pi / RotaryEmbedding(4, 10000.0).inv_freq
    torch.testing.assert_close(long.unscaled_wavelength, plain)
    torch.testing.assert_close(long.wavelength, plain * torch.tensor(PHI3_LONGROPE["long_factor"]))
    fig = encoding_figure(long)
    curves = {t.name: np.asarray(t.y, dtype=np.float64) for t in fig.data}
    np.testing.assert_allclose(curves[UNSCALED_WAVELENGTH], plain.numpy(), rtol=1e-6)
    np.testing.assert_allclose(curves[WAVELENGTH], long.wavelength.numpy(), rtol=1e-6)
    make_hf_model("phi3", tmp_path / "plain")  # no scaling: no second curve
    assert encoding(models.load(tmp_path / "plain")[0], 20).unscaled_wavelength is None
    longrope = ours.rotary
    try:
        yarn = "yarn scaling: long wavelengths stretched by 4, short ones kept, a ramp between; cos and sin × 1.14"
        for params, words in ((YARN, yarn),
                              (DYNAMIC, "dynamic scaling: the base θ grows once a text passes 256 tokens"),
                              ({"rope_type": "linear", "factor": 2.0}, "linear scaling")):  # fmt: skip
            ours.rotary = rotary = _ours_rotary(params)  # the view reads the model's rotary module only
            enc = encoding(ours, 20)
            assert words in enc.note and UNSCALED_WAVELENGTH in {t.name for t in encoding_figure(enc).data}
            torch.testing.assert_close(enc.inv_freq, rotary.inv_freq)
    finally:
        ours.rotary = longrope


def test_refusals(tmp_path):
    folder = tmp_path / "llama"
    make_hf_model("llama", folder)
    hf = json.loads((folder / "config.json").read_text())
    for params, message in [
        ({"rope_type": "proportional", "rope_theta": 10000.0}, "RoPE scaling 'proportional' is not supported; "
         "supported: default, linear, llama3, yarn, longrope, dynamic"),
        ({**LONGROPE, "short_factor": [1.0, 1.0]}, "longrope's short_factor has 2 entries; it needs one per "
         "rotated channel pair, 4"),
        ({"rope_type": "dynamic", "rope_theta": 10000.0}, "RoPE scaling 'dynamic' needs factor"),
    ]:  # fmt: skip
        (folder / "config.json").write_text(json.dumps({**hf, "rope_parameters": params}))
        with pytest.raises(LoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
            models.load(folder)
    folder = tmp_path / "phi3"  # transformers' Phi3Config refuses all but default and longrope
    make_hf_model("phi3", folder)
    hf = json.loads((folder / "config.json").read_text())
    hf["rope_parameters"] = {**hf["rope_parameters"], "rope_type": "dynamic", "factor": 2.0}
    (folder / "config.json").write_text(json.dumps(hf))
    with pytest.raises(LoadError, match="phi3 with RoPE scaling 'dynamic' is not supported; transformers' Phi-3 "
                       "takes default or longrope"):  # fmt: skip
        models.load(folder)
