"""Issue 18: ``estimate`` checked against measurement, on tiny configurations.

* parameter counts: equal to ``sum(p.numel())`` of the same config built for real, and to the
  published totals for the presets (built on the meta device);
* the KV cache: equal to the bytes of the cache ``generate`` ends with (grouped-query, multi-query,
  a sliding window, Mamba's state);
* forward FLOPs: within ±5% of ``torch.utils.flop_counter.FlopCounterMode`` (which counts matrix
  products only, at 2 FLOPs per multiply-add; attention runs through SDPA's math path so that it
  sees the score products);
* training memory: within ±15% of the measured peak of a real training step on the CPU. torch keeps
  no allocator statistics for the CPU, so ``measure.LiveBytes`` (a ``TorchDispatchMode``) records the
  storage of every tensor an operation returns, forward and backward, and subtracts it when a weak
  reference says it was freed; the weights, the previous step's gradients and AdamW's moments are
  counted from the start. The step is the training loop's: forward and loss, ``zero_grad``,
  backward, clipping, ``AdamW.step``, measured at its second step (steady state).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from archplay.models import registry
from archplay.models.analysis import card, presets
from archplay.models.analysis.estimate import GPUS, chinchilla_loss, estimate
from archplay.models.analysis.measure import measure_flops, measure_kv_cache, measure_training_step
from archplay.models.architectures.decoder import DecoderConfig
from archplay.models.architectures.encoder import EncoderConfig
from archplay.models.architectures.encoder_decoder import EncoderDecoderConfig
from archplay.models.architectures.moe import MoEConfig
from archplay.models.architectures.ssm import MambaConfig

TINY = {
    "gpt": lambda: DecoderConfig.gpt2_tiny(d_model=64, max_seq_len=128),
    "llama-gqa": lambda: DecoderConfig.llama_tiny(d_model=64, d_ff=128),
    "multi-query": lambda: DecoderConfig.llama_tiny(d_model=64, d_ff=128, n_kv_head=1),
    "sliding": lambda: DecoderConfig.llama_tiny(d_model=64, d_ff=128, sliding_window=16,
                                                layer_types=["sliding", "full"]),
    "moe": lambda: MoEConfig.mixtral_tiny(d_model=64, d_ff=96),
    "moe-shared": lambda: MoEConfig.mixtral_tiny(n_layer=3, d_shared_expert=40, moe_layers=[True, False, True]),
    "bert": lambda: EncoderConfig.bert_tiny(d_model=64, d_ff=256, max_seq_len=128),
    "t5": lambda: EncoderDecoderConfig.t5_tiny(),
    "t5-v1.1": lambda: EncoderDecoderConfig.t5_v11_tiny(),
    "mamba": lambda: MambaConfig.mamba_tiny(d_model=64),
}  # fmt: skip
B, T = 2, 64


def built(name: str):
    torch.manual_seed(0)
    cfg = TINY[name]()
    return cfg, registry.of(cfg).build(cfg).eval()


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", list(TINY))
def test_counts_equal_the_built_model(name):
    cfg, model = built(name)
    r = estimate(cfg)
    assert r["params"] == sum(p.numel() for p in model.parameters())  # parameters() yields a tied matrix once
    assert r["active_params"] == card.active_parameters(model)
    assert sum(r["params_by_component"].values()) == r["params"]
    assert r["family"] == cfg.family


def test_presets_give_the_published_totals():
    for p in presets.PRESETS.values():
        assert estimate(p.name)["params"] == p.params, p.name
    assert estimate("gpt2")["params"] == 124_439_808
    assert estimate("llama-2-7b")["params"] == 6_738_415_616
    assert estimate("mistral-7b")["params"] == 7_241_732_096
    mixtral = estimate("mixtral-8x7b")
    assert mixtral["params"] == 46_702_792_704
    assert mixtral["active_params"] == pytest.approx(12.9e9, rel=0.01)  # not 187 B, nor 56 B
    assert mixtral["params_by_component"]["experts"] > 0.95 * mixtral["params"]


# --------------------------------------------------------------------------- the KV cache


@pytest.mark.parametrize("name", ["gpt", "llama-gqa", "multi-query", "moe"])
def test_kv_cache_equals_what_generate_holds(name):
    cfg, model = built(name)
    ids = torch.randint(0, 99, (B, T - 3))
    held = measure_kv_cache(model, ids, max_new_tokens=4)
    assert held["positions"] == T  # T - 3 prompt tokens + 4 new - 1 (the last one drawn is never fed back)
    r = estimate(cfg, dtype="fp32", batch=B, context=T)  # the model runs in float32: so does its cache
    assert r["kv_cache_bytes"] == held["bytes"] == r["memory"]["kv_cache"]
    assert r["kv_cache_bytes_per_token"] * B * T == held["bytes"]
    assert r["kv_cache_bytes_per_token"] == cfg.n_layer * 2 * cfg.n_kv_head * cfg.head_dim * 4


def test_sliding_window_cache():
    """archplay's generate keeps every position (the window is a mask): ``kv_cache_bytes_unwindowed``.
    A rolling cache keeps the last W positions of a sliding layer: ``kv_cache_bytes`` (and ``memory``)."""
    cfg, model = built("sliding")
    held = measure_kv_cache(model, torch.randint(0, 99, (B, T - 3)), max_new_tokens=4)
    r = estimate(cfg, dtype="fp32", batch=B, context=T)
    assert r["kv_cache_bytes_unwindowed"] == held["bytes"]
    per_layer_token = 2 * cfg.n_kv_head * cfg.head_dim * 4
    assert r["kv_cache_bytes"] == B * per_layer_token * (cfg.sliding_window + T)  # layer 0 sliding, layer 1 full
    assert r["memory"]["kv_cache"] == r["kv_cache_bytes"] < held["bytes"]
    assert any("window" in n for n in r["notes"])


def test_mamba_state_instead_of_a_cache():
    cfg, model = built("mamba")
    held = measure_kv_cache(model, torch.randint(0, 99, (B, T)))
    r = estimate(cfg, dtype="fp32", batch=B, context=T)
    assert r["kv_cache_bytes_per_token"] == 0
    assert r["state_bytes"] * B == held["bytes"] == r["memory"]["kv_cache"]
    assert estimate(cfg, dtype="fp32", batch=B, context=4 * T)["memory"]["kv_cache"] == held["bytes"]  # fixed size


def test_encoder_decoder_cache_and_encoder_without_one():
    cfg = TINY["t5"]()
    r = estimate(cfg, dtype="fp32", batch=1, context=T)
    per_layer_token = 2 * cfg.n_head * cfg.d_kv * 4
    assert r["kv_cache_bytes_per_token"] == cfg.n_decoder_layer * per_layer_token
    assert r["cross_kv_bytes_per_source_token"] == cfg.n_decoder_layer * per_layer_token
    assert r["memory"]["kv_cache"] == 2 * T * cfg.n_decoder_layer * per_layer_token  # self + cross
    bert = estimate(TINY["bert"]())
    assert bert["kv_cache_bytes_per_token"] == 0 and bert["memory"]["kv_cache"] == 0


# --------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("name", ["gpt", "llama-gqa", "moe", "moe-shared", "bert", "t5-v1.1"])
def test_forward_flops_match_flop_counter(name):
    cfg, model = built(name)
    ids = torch.randint(0, 99, (B, T))
    extra = {"decoder_input_ids": torch.randint(0, 99, (B, T))} if name.startswith("t5") else {}
    measured = measure_flops(model, ids, **extra)["total"]
    r = estimate(cfg, batch=B, context=T)
    tokens = B * T * (2 if extra else 1)  # an encoder-decoder: source and target tokens
    assert r["flops_per_token"] * tokens == pytest.approx(measured, rel=0.05)
    assert r["training_flops_per_token"] == 3 * r["flops_per_token"]


def test_sliding_window_flops_count_the_window():
    """Our eager kernel scores every key and masks; the estimate counts what a window kernel computes."""
    cfg, model = built("sliding")
    measured = measure_flops(model, torch.randint(0, 99, (B, T)))["total"]
    r = estimate(cfg, batch=B, context=T)
    per_key = 4 * cfg.n_head * cfg.head_dim
    assert r["flops_breakdown"]["attention"] == per_key * (cfg.sliding_window + T)
    masked_out = B * T * per_key * (T - cfg.sliding_window)
    assert r["flops_per_token"] * B * T + masked_out == pytest.approx(measured, rel=0.05)


def test_mamba_matmul_flops_match_flop_counter():
    """FlopCounterMode counts the projections and the conv; the scan's element-wise work it does not
    see is the estimate's separate 9 · d_inner · d_state per token (Gu & Dao 2023)."""
    cfg, model = built("mamba")
    by_op = measure_flops(model, torch.randint(0, 99, (B, T)))["by_op"]
    r = estimate(cfg, batch=B, context=T)
    measured = by_op["mm"] + by_op.get("addmm", 0) + by_op["convolution"]
    assert r["flops_breakdown"]["matmul"] * B * T == pytest.approx(measured, rel=0.05)
    assert r["flops_breakdown"]["scan"] == cfg.n_layer * 9 * cfg.d_inner * cfg.d_state


# --------------------------------------------------------------------------- training memory


def _fp32_training(cfg, **kw):
    return estimate(cfg, dtype="fp32", mixed_precision=False, train=True, batch=4, context=T, **kw)


@pytest.mark.parametrize("name", ["gpt", "llama-gqa", "moe", "bert"])
def test_training_memory_within_15_percent_of_a_real_step(name):
    cfg, model = built(name)
    ids = torch.randint(0, 99, (4, T))
    measured = measure_training_step(model, (ids, ids.clone()))
    r = _fp32_training(cfg)
    states = r["memory"]["weights"] + r["memory"]["gradients"] + r["memory"]["optimizer"]
    assert states == 16 * r["params"]  # fp32 AdamW: weights, gradients, two moments
    assert measured["baseline"] == pytest.approx(states, rel=0.01)  # + the AdamW step counters and the batch
    assert r["memory"]["total"] == pytest.approx(measured["peak"], rel=0.15)


def test_checkpointed_training_memory_within_15_percent():
    """Every layer under ``torch.utils.checkpoint``: only its input is kept, its tensors come back in backward."""
    cfg, model = built("gpt")
    for layer in model.layers:
        layer.forward = functools.partial(torch.utils.checkpoint.checkpoint, layer.forward, use_reentrant=False)
    ids = torch.randint(0, 99, (4, T))
    measured = measure_training_step(model, (ids, ids.clone()))
    r = _fp32_training(cfg, checkpointing=True)
    assert r["memory"]["activations"] < _fp32_training(cfg)["memory"]["activations"]
    assert r["memory"]["total"] == pytest.approx(measured["peak"], rel=0.15)


def test_korthikanti_per_layer_formula():
    """GPT's layer with dropout, without a fused attention kernel, 16-bit: s·b·h·(34 + 5·a·s/h) bytes;
    tensor parallel t with sequence parallelism: all of it / t; without: s·b·h·(10 + 24/t + 5·a·s/(h·t))."""
    cfg = DecoderConfig(vocab_size=1000, d_model=256, n_layer=4, n_head=8, max_seq_len=512)
    s, b, h, a = 512, 2, 256, 8
    kw = dict(dtype="bf16", train=True, batch=b, context=s, dropout=True, flash_attention=False)
    assert estimate(cfg, **kw)["activations_per_layer"] == [s * b * h * (34 + 5 * a * s / h)] * 4
    assert estimate(cfg, tp=2, **kw)["activations_per_layer"][0] == s * b * h * (34 + 5 * a * s / h) / 2
    no_sp = estimate(cfg, tp=2, sequence_parallel=False, **kw)["activations_per_layer"][0]
    assert no_sp == s * b * h * (10 + 24 / 2 + 5 * a * s / (h * 2))
    # Full checkpointing keeps each layer's input, 2·s·b·h bytes, and one layer's tensors in backward
    # (here larger than the output layer's logits and log-probabilities, which come before).
    full = estimate(cfg, **kw)
    ckpt = estimate(cfg, checkpointing=True, **kw)
    output = full["memory"]["activations"] - sum(full["activations_per_layer"])
    assert output < s * b * h * (34 + 5 * a * s / h)
    assert ckpt["memory"]["activations"] == pytest.approx(4 * 2 * s * b * h + s * b * h * (34 + 5 * a * s / h))
    assert ckpt["recompute_flops_per_token"] == ckpt["flops_per_token"]


def test_memory_rules():
    P = estimate("llama-2-7b")["params"]
    mixed = estimate("llama-2-7b", train=True)["memory"]  # bf16 weights and gradients, fp32 master + AdamW
    assert (mixed["weights"], mixed["gradients"], mixed["optimizer"]) == (2 * P, 2 * P, 12 * P)
    assert mixed["total"] > 80 * 2**30  # a 7 B model does not train on one 80 GB GPU ...
    inference = estimate("llama-2-7b")
    assert inference["memory"]["weights"] == 2 * P
    fits = {f["gpu"]: f["fits"] for f in inference["fits"]}
    assert fits["laptop 16GB"] and fits["H100 80GB"]  # ... but runs in 16 GB
    assert not {f["gpu"]: f["fits"] for f in estimate("llama-2-7b", train=True)["fits"]}["H100 80GB"]
    assert [f["gpu"] for f in inference["fits"]] == [g.name for g in GPUS]
    assert estimate("llama-2-7b", dtype="int4")["memory"]["weights"] == P // 2
    assert estimate("llama-2-7b", dtype="int8")["memory"]["weights"] == P
    assert estimate("llama-2-7b", train=True, optimizer="sgd")["memory"]["optimizer"] == 8 * P  # momentum + master
    assert estimate("llama-2-7b", train=True, optimizer="adamw8bit")["memory"]["optimizer"] == 6 * P
    pure = estimate("llama-2-7b", train=True, dtype="fp32", mixed_precision=False)["memory"]
    assert (pure["weights"], pure["gradients"], pure["optimizer"]) == (4 * P, 4 * P, 8 * P)
    sharded = {1: ("optimizer",), 2: ("optimizer", "gradients"), 3: ("optimizer", "gradients", "weights")}
    for stage, divided in sharded.items():
        z = estimate("llama-2-7b", train=True, zero=stage, dp=8)["memory"]
        for key in ("weights", "gradients", "optimizer"):
            assert z[key] == (math.ceil(mixed[key] / 8) if key in divided else mixed[key]), (stage, key)
    par = estimate("llama-2-7b", train=True, tp=2, pp=2)["memory"]
    assert par["weights"] == math.ceil(mixed["weights"] / 4)
    assert par["activations"] == pytest.approx(mixed["activations"] / 2, rel=0.01)  # pp does not divide them
    gqa = estimate("llama-2-70b", batch=4, context=4096, tp=8)
    assert gqa["memory"]["kv_cache"] == gqa["kv_cache_bytes"] / 8  # 8 key/value heads, one per GPU


def test_chinchilla_and_training_time():
    r = estimate("llama-2-7b")
    P = r["params"]
    assert r["chinchilla"]["tokens"] == 20 * P
    assert r["chinchilla"]["loss"] == pytest.approx(1.69 + 406.4 / P**0.34 + 410.7 / (20 * P) ** 0.28)
    assert chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.94, abs=0.01)  # Chinchilla itself
    seconds = r.train_time_s(2e12, 0.5, "H100 80GB", gpus=1000)
    assert seconds == pytest.approx(2e12 * r["training_flops_per_token"] / (1000 * 989e12 * 0.5))
    with pytest.raises(ValueError, match="unknown GPU"):
        r.train_time_s(1e9, 0.4, "TPU v9")
    with pytest.raises(ValueError, match="mfu"):
        r.train_time_s(1e9, 1.5)


# --------------------------------------------------------------------------- what estimate accepts


@pytest.mark.parametrize("kw, message", [
    ({"model": "llama-9000"}, "unknown model 'llama-9000'"),
    ({"model": "gpt2", "zero": 4}, "zero must be a ZeRO stage"),
    ({"model": "gpt2", "dp": 0}, "dp must be a whole number of at least 1"),
    ({"model": "gpt2", "tp": True}, "tp must be a whole number"),
    ({"model": "gpt2", "context": 0}, "context must be"),
    ({"model": "gpt2", "dtype": "fp64"}, "unknown dtype 'fp64'"),
    ({"model": "gpt2", "optimizer": "lion"}, "unknown optimizer 'lion'"),
    ({"model": "gpt2", "train": True, "dtype": "int8"}, "training keeps weights in"),
    ({"model": "gpt2", "tp": 5}, "tp \\(5\\) must divide"),
    ({"model": "gpt2", "pp": 13}, "pp \\(13\\) cannot exceed"),
    ({"model": "gpt2", "checkpointing": "yes"}, "checkpointing must be True or False"),
    ({"model": 3.5}, "not a float"),
])  # fmt: skip
def test_bad_arguments_say_what_is_wrong(kw, message):
    with pytest.raises(ValueError, match=message):
        estimate(**kw)


def test_a_folder_with_only_config_json(tmp_path):
    import transformers as T

    hf = T.LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    hf.save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    r = estimate(tmp_path)
    assert r["source"] == "folder" and r["family"] == "decoder"
    assert r["params"] == sum(p.numel() for p in T.LlamaForCausalLM(hf).parameters())
    assert r["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 8 * 2  # layers · (k, v) · kv heads · head dim · bf16
    assert estimate(str(tmp_path))["params"] == r["params"]
    assert estimate(tmp_path / "config.json")["params"] == r["params"]
    assert estimate(hf.to_dict())["params"] == r["params"]  # the config itself, as a dict
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="no config.json"):
        estimate(tmp_path)


def test_builtins_and_recipes():
    from archplay.models.training.recipe import RECIPE_DIR, Recipe, builtin_recipe, parameter_count

    recipe = Recipe.from_json(RECIPE_DIR / "gpt.json")
    from_recipe = estimate(recipe)
    assert from_recipe["source"] == "recipe"
    assert from_recipe["params"] == parameter_count(recipe)["total"]
    assert estimate(str(RECIPE_DIR / "gpt.json"))["params"] == from_recipe["params"]
    assert estimate(recipe.to_dict())["params"] == from_recipe["params"]
    moe = builtin_recipe("moe")
    assert estimate(moe)["active_params"] == parameter_count(moe)["active"]
    builtin = estimate("gpt")
    assert builtin["source"] == "built-in" and builtin["params"] == from_recipe["params"]
