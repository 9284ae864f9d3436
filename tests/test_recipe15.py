"""Recipes (issue 15): validation with clear messages, the built-ins' recipes, counts on the meta device."""

from __future__ import annotations

import json
import resource
import time

import pytest
import torch

from archplay.models import registry
from archplay.models.analysis import card
from archplay.models.checkpoints.loading import BUILTIN_DIR
from archplay.models.training import recipe as rc
from archplay.models.training import train
from archplay.models.training.recipe import Recipe

TINY = {"family": "decoder", "layers": 2, "width": 32, "heads": 4, "steps": 3, "batch": 4, "context": 32}


def tiny(**kw) -> dict:
    return {**TINY, **kw}


# --------------------------------------------------------------------------- reading and validation


def test_a_recipe_round_trips_and_takes_the_family_defaults(tmp_path):
    r = Recipe.from_dict(tiny(kv_heads=2, attention="sliding", window=8))
    assert r.positions == "rope" and r.norm == "rmsnorm" and r.objective == "next-token"  # the blank decoder's
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_json(r.to_json(tmp_path / "r.json")) == r
    assert "experts" not in r.to_dict() and "window" in r.to_dict()
    assert r.replace(attention="full", window=None).window is None


@pytest.mark.parametrize("family", rc.families())
def test_every_family_has_a_blank_recipe_that_builds(family):
    r = rc.blank_recipe(family)
    assert r.family == family and r.objective == rc.OBJECTIVES[registry.get(family).objective]
    cfg = rc.config_for(r)
    assert cfg.family == family
    assert 1e5 < rc.parameter_count(r)["total"] < 5e6  # small enough for a CPU


@pytest.mark.parametrize(
    "data, message",
    [
        (tiny(layer=3), r"unknown recipe keys \['layer'\]; known keys: family, name"),
        (tiny(experts=4), r"experts do not apply to the decoder family"),
        (tiny(d_state=16), r"d_state do not apply to the decoder family"),
        ({**tiny(family="ssm"), "heads": 4}, r"heads do not apply to the ssm family"),
        (tiny(family="encoder-decoder", positions="rope"), r"supports positions relative only, not 'rope'"),
        (tiny(objective="masked"), r"decoder family trains on the next-token objective, not masked"),
        (tiny(family="encoder", objective="next-token"), r"encoder family trains on the masked objective"),
        (tiny(family="encoder-decoder", objective="next-token"), r"trains on the translation objective"),
        (tiny(family="moe", activation="gelu"), r"moe family supports activation swiglu or geglu only"),
        (tiny(family="encoder", kv_heads=2), r"encoder family has no grouped-query attention"),
        (tiny(layers="4"), r"layers must be a whole number, got '4'"),
        (tiny(layers=4.0), r"layers must be a whole number, got 4.0"),
        (tiny(layers=True), r"layers must be a whole number, got True"),
        (tiny(layers=0), r"layers must be between 1 and 48"),
        (tiny(width=10**30), r"width must be between 1 and 2,048 \(the playground's cap\)"),
        (tiny(steps=-1), r"steps must be between 1 and"),
        (tiny(batch=[1, 2]), r"batch must be a whole number, got \[1, 2\]"),
        (tiny(heads={"a": {"b": [1]}}), r"heads must be a whole number"),
        (tiny(positions="rotary"), r"positions must be one of learned, sinusoidal, rope, alibi, relative, none"),
        (tiny(norm=["rmsnorm"]), r"norm must be one of layernorm, rmsnorm"),
        (tiny(lr=0), r"lr must be in \(0, 1\]"),
        (tiny(lr=float("nan")), r"lr must be a finite number"),
        (tiny(lr=10**400), r"lr must be a finite number"),
        (tiny(lr="0.1"), r"lr must be a finite number"),
        (tiny(bias="yes"), r"bias must be true or false"),
        (tiny(family="moe", shared_expert=1), r"shared_expert must be true or false"),
        (tiny(family="moe", experts=2, top_k=3), r"top_k \(3\) must not exceed experts \(2\)"),
        (tiny(width=30), r"width \(30\) must be a multiple of heads \(4\)"),
        (tiny(kv_heads=3), r"heads \(4\) must be a multiple of kv_heads \(3\)"),
        (tiny(attention="sliding"), r"attention 'sliding' needs window"),
        (tiny(window=8), r"window applies only to sliding, strided or block attention"),
        (tiny(max_len=16), r"max_len \(16\) must be at least the training context \(32\)"),
        (tiny(name="x" * 500), r"name must be a short printable text"),
        (tiny(seed=-1), r"seed must be between 0 and"),
        (tiny(layers=None), r"layers: null is not a value"),
        (tiny(family="transformer"), r"family must be one of decoder, encoder, encoder-decoder, moe, ssm"),
        ({k: v for k, v in TINY.items() if k != "family"}, r"family must be one of"),
        ([1, 2, 3], r"a recipe is a JSON object"),
        ("decoder", r"a recipe is a JSON object"),
        (tiny(layers=48, width=2048, d_ff=16384), r"about [\d,]+ parameters; the playground trains at most 200,000,000"),
        (tiny(family="moe", layers=48, width=2048, experts=64, top_k=2), r"the playground trains at most"),
        ({f"k{i}": i for i in range(10_000)}, r"unknown recipe keys \[.*\] and 9995 more"),
    ],
)
def test_bad_recipes_are_value_errors_that_say_what_is_wrong(data, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(data)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ValueError, match="no such recipe file"):
        Recipe.from_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="is not a file"):
        Recipe.from_json(tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="could not be read as JSON"):
        Recipe.from_json(tmp_path / "broken.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="could not be read as JSON|a recipe is a JSON object"):
        Recipe.from_json(tmp_path / "deep.json")
    (tmp_path / "big.json").write_text(json.dumps({"family": "decoder", "name": "x" * (2 << 20)}))
    with pytest.raises(ValueError, match="larger than"):
        Recipe.from_json(tmp_path / "big.json")
    (tmp_path / "bad.json").write_text(json.dumps(tiny(layers=-3)))
    with pytest.raises(ValueError, match=r"bad\.json: layers must be between 1 and 48"):
        Recipe.from_json(tmp_path / "bad.json")


# --------------------------------------------------------------------------- mapping to configs


def test_options_map_onto_the_config_fields():
    r = Recipe.from_dict(tiny(kv_heads=1, positions="rope", activation="swiglu", attention="sliding", window=8))
    cfg = rc.config_for(r)
    assert (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.n_kv_head) == (32, 2, 4, 1)
    assert (cfg.positions, cfg.mlp, cfg.activation) == ("rotary", "gated", "silu")
    assert cfg.layer_types == ["sliding", "sliding"] and cfg.sliding_window == 8
    assert cfg.d_ff == 88 and cfg.max_seq_len == 32  # ≈ 8/3 · 32 rounded up to 8; max_len = context
    gpt = rc.config_for(Recipe.from_dict(tiny(positions="learned", norm="layernorm", activation="gelu", bias=True)))
    assert (gpt.mlp, gpt.activation, gpt.d_ff, gpt.qkv_bias, gpt.norm) == ("mlp", "gelu_new", 128, True, "layernorm")
    moe = rc.config_for(Recipe.from_dict(tiny(family="moe", experts=4, top_k=1, shared_expert=True, d_ff=48)))
    assert (moe.n_experts, moe.top_k, moe.d_expert, moe.d_shared_expert, moe.mlp) == (4, 1, 48, 48, "gated")
    t5 = rc.config_for(Recipe.from_dict(tiny(family="encoder-decoder", activation="swiglu")))
    assert (t5.d_kv, t5.ffn, t5.n_decoder_layer) == (8, "gated-silu", 2)
    ssm = rc.config_for(Recipe.from_dict({"family": "ssm", "layers": 2, "width": 32, "d_state": 8, "expand": 3}))
    assert (ssm.d_model, ssm.n_layer, ssm.d_state, ssm.d_inner) == (32, 2, 8, 96)


# Options the model files gained in issue 15 (positions, norm placement, sparse patterns, encoder choices).
LAB_OPTIONS = [
    ("decoder", {"positions": "alibi"}),
    ("decoder", {"positions": "relative"}),
    ("decoder", {"positions": "none"}),
    ("decoder", {"positions": "sinusoidal"}),
    ("decoder", {"norm_position": "post", "norm": "layernorm"}),
    ("decoder", {"attention": "strided", "window": 4}),
    ("decoder", {"attention": "block", "window": 4}),
    ("decoder", {"activation": "geglu"}),
    ("decoder", {"activation": "relu"}),
    ("moe", {"positions": "alibi", "norm_position": "post", "attention": "sliding", "window": 4}),
    ("encoder", {"positions": "rope", "norm": "rmsnorm", "norm_position": "pre", "activation": "swiglu"}),
    ("encoder", {"positions": "relative", "attention": "block", "window": 4}),
    ("encoder", {"positions": "alibi", "activation": "relu"}),
    ("encoder", {"positions": "none", "attention": "sliding", "window": 4}),
]


@pytest.mark.parametrize("family, options", LAB_OPTIONS)
def test_every_lab_option_builds_and_runs(family, options):
    r = Recipe.from_dict({**tiny(family=family), **options})
    cfg = rc.config_for(r)
    for key, field in (("norm_position", "norm_position"), ("window", "sliding_window")):
        if key in options:
            assert getattr(cfg, field) == options[key]
    torch.manual_seed(0)
    model = registry.of(cfg).build(cfg).eval()
    ids = torch.randint(4, cfg.vocab_size, (2, 12))
    logits = model(ids).logits
    assert logits.shape == (2, 12, cfg.vocab_size) and torch.isfinite(logits).all()
    assert rc.parameter_count(r)["total"] == sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- the built-ins' recipes


@pytest.mark.parametrize("name", rc.BUILTIN_RECIPES)
def test_builtin_recipes_reproduce_the_shipped_checkpoints(name):
    r = rc.builtin_recipe(name)
    meta = json.loads((BUILTIN_DIR / name / "config.json").read_text())
    shipped = registry.get(meta["family"]).config.from_dict(meta["config"]).to_dict()
    tok = rc.tokenizer_for(r)
    assert [list(tok.prefix), list(tok.suffix)] == [meta["tokenizer"]["prefix"], meta["tokenizer"]["suffix"]]
    assert rc.config_for(r, tok).to_dict() == shipped
    # ... and the schedule the built-in trainer used (its validation cadence aside)
    mine, theirs = r.schedule(), train.RECIPES[name]
    for f in ("steps", "batch_size", "seq_len", "lr", "warmup", "weight_decay", "aux_loss_coef", "prefix", "suffix"):
        assert getattr(mine, f) == getattr(theirs, f), f
    assert rc.config_for(r, tok).to_dict() == theirs.make_config(tok).to_dict()


def test_unknown_builtin_recipe():
    with pytest.raises(ValueError, match="no built-in recipe 'gpt2'; built-ins: gpt, bert, t5, moe, mamba"):
        rc.builtin_recipe("gpt2")


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize("name", rc.BUILTIN_RECIPES)
def test_parameter_count_equals_the_built_model(name):
    r = rc.builtin_recipe(name)
    torch.manual_seed(0)
    cfg = rc.config_for(r)
    model = registry.of(cfg).build(cfg)
    n = rc.parameter_count(r)
    assert n["total"] == sum(p.numel() for p in model.parameters())
    assert n["active"] == card.active_parameters(model)
    assert n["by_component"] == card.parameter_breakdown(model)
    assert sum(c for _, c in n["by_component"]) == n["total"]


def test_moe_active_parameters_count_top_k_of_the_experts():
    base = tiny(family="moe", experts=4, top_k=1, d_ff=48)
    one, two = rc.parameter_count(Recipe.from_dict(base)), rc.parameter_count(Recipe.from_dict({**base, "top_k": 2}))
    per_expert = 3 * 32 * 48  # gate, up, down; no biases
    assert one["total"] == two["total"] and two["active"] - one["active"] == 2 * per_expert  # one more expert × 2 layers
    assert one["total"] - one["active"] == 2 * 3 * per_expert


def test_the_meta_skeleton_allocates_nothing_and_counting_is_fast():
    big = Recipe.from_dict(tiny(layers=12, width=1024, heads=16, d_ff=4096, activation="gelu"))  # 133 M parameters' worth of shapes
    rc.parameter_count(Recipe.from_dict(tiny()))  # imports and the tokenizer, before measuring
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = rc.skeleton(big)
    assert all(p.is_meta for p in model.parameters())
    n = rc.parameter_count(big)["total"]
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert n > 1.3e8 and grown_mb < 50, (n, grown_mb)  # 530 MB had it been real
    r = rc.builtin_recipe("gpt")
    rc.parameter_count(r.replace(layers=5))  # warm (imports, the tokenizer)
    times = []
    for width in (64, 96, 160):  # new shapes each time: nothing cached
        t = time.perf_counter()
        rc.parameter_count(r.replace(layers=6, width=width))
        times.append(time.perf_counter() - t)
    assert min(times) < 0.05, times  # the page asks on every option change


def test_flops_per_token_follows_the_rule_of_thumb():
    r = rc.builtin_recipe("gpt")
    n = rc.parameter_count(r)
    f = rc.flops_per_token(r)
    assert f["weights"] == 2 * (n["active"] - n["embedding"])
    assert f["attention"] == 2 * 2 * r.layers * r.context * r.width
    assert f["forward"] == f["weights"] + f["attention"] and f["train"] == 3 * f["forward"]
    assert rc.flops_per_token(r, context=256)["attention"] == 2 * f["attention"]
    moe = rc.builtin_recipe("moe")
    assert rc.flops_per_token(moe)["weights"] < 2 * (rc.parameter_count(moe)["total"] - rc.parameter_count(moe)["embedding"])
    assert rc.flops_per_token(rc.builtin_recipe("mamba"))["attention"] == 0


def test_counting_leaves_other_threads_alone():
    """The meta device and the skipped initialisation hold in the counting thread only (a web server builds
    real models in others meanwhile)."""
    import threading

    inside, release = threading.Event(), threading.Event()

    def count_slowly():
        with torch.device("meta"), rc._SkipInit():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=count_slowly)
    t.start()
    inside.wait(10)
    try:
        layer = torch.nn.Linear(4, 4)
        assert layer.weight.device.type == "cpu" and bool(layer.weight.detach().abs().sum() > 0)  # initialised
    finally:
        release.set()
        t.join()


def test_a_local_attention_pattern_costs_only_its_window():
    """The attention term counts the keys a query sees: the window (strided: and every window-th before it)."""
    from archplay.models.training.recipe import blank_recipe, flops_per_token

    full = blank_recipe("decoder").replace(context=128)
    f = flops_per_token(full)["attention"]
    assert flops_per_token(full.replace(attention="sliding", window=16))["attention"] == f * 16 // 128
    assert flops_per_token(full.replace(attention="strided", window=16))["attention"] == f * (16 + 8) // 128
    assert flops_per_token(full.replace(attention="block", window=512))["attention"] == f  # a window past the context
