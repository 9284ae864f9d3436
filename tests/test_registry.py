"""The family registry: the one place families are listed, and what asks it.

A family registered inside a test (under a name nothing else knows) loads from a folder, saves and
reloads as a built-in-style checkpoint, gets its architecture card, its parameter breakdown and its
logit lens, and is evaluated, without any other file naming it. Also the redesign's defects: config
checks that vanish under ``python -O``, the MoE evaluation with dense layers, cross-attention keys
passed as memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch

from archplay.models import LoadError, load, registry
from archplay.models.analysis.card import DECODER_RULES, architecture, decoder_rows, parameter_breakdown
from archplay.models.analysis.lens import logit_lens
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.models.architectures.layers import Attention, Trace
from archplay.models.architectures.moe import MoEConfig, MoEDecoder
from archplay.models.checkpoints.convert import Converter
from archplay.models.checkpoints.loading import load_builtin, save_builtin
from archplay.models.registry import Family

BUILTIN_FAMILIES = {"gpt": "decoder", "bert": "encoder", "t5": "encoder-decoder", "moe": "moe", "mamba": "ssm"}


def test_the_builtin_families_and_what_they_say():
    assert registry.names() == ("decoder", "encoder", "encoder-decoder", "moe", "ssm", "hybrid")
    assert registry.model_types() == ("gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gpt_neox", "gemma2",
                                      "gemma3_text", "gpt_neo", "gptj", "opt", "phi", "olmo2", "stablelm", "bert", "roberta", "xlm-roberta", "distilbert", "modernbert", "t5", "bart",
                                      "mbart", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3",
                                      "mamba",
                                      "mamba2", "jamba")  # fmt: skip
    assert [f.name for f in registry.families() if f.lens] == ["decoder", "moe", "ssm", "hybrid"]
    assert [f.name for f in registry.families() if not f.generates] == ["encoder"]
    assert [f.name for f in registry.families() if not f.has_heads] == ["ssm"]
    assert registry.checkpoint("mixtral")[0].name == "moe"
    assert registry.checkpoint("gpt_neox")[0].name == "decoder" and registry.checkpoint("falcon") is None
    with pytest.raises(ValueError, match="unknown architecture family 'state_space'; known: decoder, encoder"):
        registry.get("state_space")


@pytest.mark.parametrize("name", list(BUILTIN_FAMILIES))
def test_each_builtin_fills_the_trace_fields_its_entry_names(name):
    model, tok = load(name)
    family = registry.of(model)
    assert family.name == BUILTIN_FAMILIES[name]
    ids = torch.tensor([tok.encode("Mia has a red ball.")])
    kwargs = {"decoder_input_ids": ids[:, :3]} if family.objective == "translation" else {}
    trace = model(ids, trace=True, **kwargs).trace
    filled = {k for k, v in vars(trace).items() if v is not None}
    assert filled == set(family.trace_fields)


def test_a_family_entry_is_checked():
    with pytest.raises(ValueError, match="objective must be one of causal, masked, translation"):
        _toy_family(objective="next-word")
    with pytest.raises(ValueError, match="unknown views"):
        _toy_family(views=("attention", "sparkles"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("decoder"))
    with pytest.raises(ValueError, match="model_type 'gpt2' is already read by the 'decoder' family"):
        registry.register(_toy_family(checkpoints={"gpt2": Converter(None, None)}))


# --------------------------------------------------------------------------- a family of the test's own


@dataclass
class ToyConfig(DecoderConfig):
    """A decoder under another family name: the registry, not the class, says what it is."""

    family: str = field(default="toy", init=False)


class Toy(Decoder):
    config: ToyConfig


def _toy_convert(hf: dict, name: str) -> ToyConfig:
    return ToyConfig(vocab_size=hf["vocab"], d_model=hf["width"], n_layer=hf["depth"], n_head=2, max_seq_len=64,
                     name=name)  # fmt: skip


def _toy_family(**overrides) -> Family:
    entry = dict(
        name="toy", title="a toy decoder (registered by a test)", config=ToyConfig, model=Toy, objective="causal",
        card_rows=decoder_rows, parameter_rules=DECODER_RULES, trace_fields=("hidden_states", "attentions"),
        views=("attention",), checkpoints={"toy_lm": Converter(_toy_convert, lambda key, t: {key: t})},
    )  # fmt: skip
    return Family(**{**entry, **overrides})


@pytest.fixture
def toy():
    family = registry.register(_toy_family())
    try:
        yield family
    finally:
        registry.unregister("toy")
    assert "toy" not in registry.names()


def _toy_folder(tmp_path, builtin_tok):
    """A folder in the toy's own checkpoint format: config.json with model_type toy_lm, safetensors, tokenizer."""
    from safetensors.torch import save_model

    torch.manual_seed(0)
    model = Toy(_toy_convert({"vocab": builtin_tok.vocab_size, "width": 16, "depth": 2}, "toy"))
    save_model(model, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy_lm", "vocab": builtin_tok.vocab_size,
                                                      "width": 16, "depth": 2}))  # fmt: skip
    return model


def test_a_registered_family_loads_cards_lenses_and_round_trips(toy, tmp_path):
    _, tok = load("gpt")
    torch.manual_seed(0)
    model = Toy(ToyConfig(vocab_size=tok.vocab_size, d_model=16, n_layer=2, n_head=2, max_seq_len=64, name="toy"))
    assert registry.of(model) is toy

    rows = dict(architecture(model))
    assert rows["family"] == "toy: a toy decoder (registered by a test)"
    assert rows["layers"] == "2"
    breakdown = dict(parameter_breakdown(model))
    assert sum(breakdown.values()) == sum(p.numel() for p in model.parameters())
    assert breakdown["attention"] == 2 * 4 * (16 * 16 + 16)

    ids = torch.tensor([tok.encode("Mia has a red ball.")])
    out = model(ids, trace=True)
    lens = logit_lens(model, out.trace.hidden_states, top=3)
    assert lens.top_ids.shape == (3, ids.shape[1], 3)
    torch.testing.assert_close(lens.top_ids[-1, :, 0], out.logits[0].argmax(-1))

    folder = save_builtin(model, tok, tmp_path / "toy")  # the built-in format names the family
    assert json.loads((folder / "config.json").read_text())["family"] == "toy"
    again, _ = load_builtin(folder)
    assert type(again) is Toy
    torch.testing.assert_close(again(ids).logits, model(ids).logits)


def test_a_registered_model_type_loads_from_a_folder(toy, tmp_path):
    from archplay.models.checkpoints.loading import load_folder

    _, gpt_tok = load("gpt")
    hf_folder = tmp_path / "hf"
    hf_folder.mkdir()
    _toy_folder(hf_folder, gpt_tok)
    # No tokenizer files: the toy's model_type is recognised, its weights read, then the tokenizer is asked for.
    with pytest.raises(LoadError, match="tokenizer"):
        load_folder(hf_folder)
    (hf_folder / "config.json").write_text(json.dumps({"model_type": "toy_lm", "vocab": 8}))
    with pytest.raises(LoadError, match="lacks 'width', which toy_lm needs"):
        load_folder(hf_folder)


def test_an_unknown_model_type_names_every_registered_one(toy, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "falcon"}))
    with pytest.raises(LoadError, match="'falcon' is not supported; supported: gpt2, .*, mamba, mamba2, jamba, toy_lm"):
        load(str(tmp_path))


# --------------------------------------------------------------------------- defects of the old layout


def test_config_checks_hold_under_python_O():
    code = (
        "from archplay.models.architectures.decoder import DecoderConfig\n"
        "for bad in (dict(n_kv_head=3), dict(n_head=0), dict(d_model=32.5), dict(positions='spiral')):\n"
        "    try:\n"
        "        DecoderConfig.gpt2_tiny(**bad)\n"
        "    except ValueError as e:\n"
        "        print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines == [
        "ValueError DecoderConfig: n_head must be a multiple of n_kv_head",
        "ValueError DecoderConfig: n_head must be a whole number of at least 1, got 0",
        "ValueError DecoderConfig: d_model must be a whole number of at least 1, got 32.5",
        "ValueError DecoderConfig: positions must be one of learned, rotary, sinusoidal, alibi, relative, none, got 'spiral'",
    ]


def test_moe_evaluation_counts_only_the_routed_layers():
    """Qwen2-MoE's mlp_only_layers: a dense layer has no router, so the trace has fewer routed layers."""
    from archplay.models import story
    from archplay.models.training.evaluate import expert_pos_counts

    _, tok = load("moe")
    torch.manual_seed(0)
    cfg = MoEConfig.mixtral_tiny(vocab_size=tok.vocab_size, n_layer=3, moe_layers=[False, True, False])
    model = MoEDecoder(cfg).eval()
    stories = story.make_splits(seed=0, n_train=0, n_valid=3, n_test=0)["validation"]
    r = expert_pos_counts(model, tok, stories)
    assert r["counts"].shape == (1, len(r["tags"]), 4)  # one routed layer, not three
    assert r["load"].shape == (1, 4)
    assert float(r["load"].sum()) == pytest.approx(1.0)


def test_cross_attention_reads_the_encoders_keys_as_memory():
    torch.manual_seed(0)
    attn = Attention(16, 4, head_dim=4)
    x, enc = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    out, probs = attn(x, memory=attn.keys_values(enc), need_weights=True)
    assert probs.shape == (2, 4, 3, 5)  # every decoder query over every encoder position
    q = attn.q_proj(x).view(2, 3, 4, 4).transpose(1, 2)
    k, v = attn.keys_values(enc)
    expected = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1)
    torch.testing.assert_close(probs, expected)


def test_trace_detach_takes_one_sequence_as_float32_on_the_cpu():
    t = Trace(attentions=[torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)], ssm_delta=None)
    one = t.detach(1)
    assert one.attentions[0].shape == (3, 4, 4) and one.attentions[0].dtype == torch.float32
    assert not one.attentions[0].requires_grad and one.ssm_delta is None
    torch.testing.assert_close(one.attentions[0], t.attentions[0][1].detach().float())
    assert t.detach().attentions[0].shape == (2, 3, 4, 4)
