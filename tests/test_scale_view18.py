"""Issue 18 item 4: the Scale tab. Its figures read back equal ``estimate`` run here on the same
configurations (presets, a built-in, a loaded model; inference and training); the issue's example
claims are computed; bad input gives a message, never an exception; and in a real headless Chromium
switching the dtype from bf16 to int4 shrinks the weights bar by 4×."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from archplay.app import scale
from archplay.app.catalog import Catalog
from archplay.models.analysis.estimate import GPUS, estimate
from archplay.viz.scale import GIB, PARTS, components_figure, memory_figure

SHOTS = os.environ.get("ARCHPLAY_SCALE_SHOTS")  # a folder: screenshots at 1024×768 and 1280×800, for a person
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_names([], device="cpu", builtins=("gpt", "moe"))


def trace(fig, name: str):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def memory_read_back(fig, i: int) -> dict:
    """Column ``i``'s memory parts as the figure carries them: exact bytes, checked against its GiB bars."""
    out = {}
    for key, name, _ in PARTS:
        t = trace(fig, name)
        exact = int(t.customdata[i][1])
        assert t.x[i] * GIB == pytest.approx(exact, rel=1e-12, abs=1e-3)
        out[key] = exact
    total = trace(fig, "total")
    out["total"] = int(total.customdata[i])
    assert total.x[i] * GIB == pytest.approx(out["total"], rel=1e-12)
    return out


# --------------------------------------------------------------------------- the figures


def test_memory_figure_reads_back_the_estimates(catalog):
    v = scale.scale_view(catalog, list(scale.DEFAULTS))
    assert v.status.startswith("✓ 3 configurations") and [label for label, _ in v.results] == [
        "GPT-2 (124M)", "Llama 2 7B", "Mixtral 8x7B (v0.1)"]  # fmt: skip
    for i, name in enumerate(("gpt2", "llama-2-7b", "mixtral-8x7b")):
        assert memory_read_back(v.memory, i) == estimate(name)["memory"]
    # the GPU lines: every size up to the first that holds the largest bar (Mixtral, 87.7 GiB: up to 141)
    lines = sorted(s.x0 for s in v.memory.layout.shapes)
    assert lines == [16, 24, 40, 80, 141]
    trained = scale.scale_view(catalog, [scale.PRESET + "llama-2-7b"], mode="training", dp=8, zero=3,
                               checkpointing=True, batch=2, context=4096)  # fmt: skip
    expected = estimate("llama-2-7b", train=True, dp=8, zero=3, checkpointing=True, batch=2, context=4096)["memory"]
    assert memory_read_back(trained.memory, 0) == expected
    assert expected["gradients"] > 0 and expected["optimizer"] > 0


def test_small_models_get_no_line_that_hides_their_bars():
    fig = memory_figure(["tiny"], [{"weights": 3 << 20, "kv_cache": 1 << 20}], [(g.name, g.memory_bytes) for g in GPUS])
    texts = [a.text for a in fig.layout.annotations]
    assert not fig.layout.shapes and any("the smallest GPU here holds 16 GiB" in t for t in texts), texts
    assert "4 MiB" in texts  # the total at the bar's end
    assert trace(fig, "gradients").showlegend is False  # a part that is zero everywhere is not in the legend


def test_components_figure_reads_back_total_and_active(catalog):
    v = scale.scale_view(catalog, list(scale.DEFAULTS))
    for i, name in enumerate(("gpt2", "llama-2-7b", "mixtral-8x7b")):
        r = estimate(name)
        seen = {}
        for key, (label, _) in scale_components():
            if any(t.name == label for t in v.components.data):
                t = trace(v.components, label)
                seen[key] = int(t.customdata[i][1])
                assert t.x[i] == pytest.approx(seen[key] / r["params"])
        assert {k: n for k, n in r["params_by_component"].items() if n} == {k: n for k, n in seen.items() if n}
    active = trace(v.components, "active per token")
    assert list(active.y) == [2]  # only Mixtral runs fewer than it holds
    mix = estimate("mixtral-8x7b")
    assert int(active.customdata[0][1]) == mix["active_params"] and active.x[0] == pytest.approx(
        mix["active_params"] / mix["params"])  # fmt: skip
    assert "46.7 B · 12.9 B active" in v.components.layout.yaxis.ticktext[2]


def scale_components():
    from archplay.viz.scale import COMPONENT_LABELS

    return COMPONENT_LABELS.items()


def test_labels_are_escaped_in_the_figures():
    evil = "<img src=x onerror=alert(1)>"
    fig = components_figure([evil], [{"attention": 10}], [10], [10])
    assert "<img" not in fig.layout.yaxis.ticktext[0] and "&lt;img" in fig.layout.yaxis.ticktext[0]
    fig = memory_figure([evil], [{"weights": 10}])
    assert "<img" not in fig.layout.yaxis.ticktext[0] and "<img" not in str(trace(fig, "weights").customdata)


# --------------------------------------------------------------------------- the handler


def test_a_builtin_a_loaded_model_and_the_table(catalog):
    v = scale.scale_view(catalog, ["gpt", scale.BUILTIN + "mamba", scale.NONE, "moe"])
    assert v.status.startswith("✓ 3 configurations"), v.status
    loaded, builtin, moe = (r for _, r in v.results)
    assert loaded["source"] == "model" and loaded["params"] == estimate("gpt")["params"]
    assert sum(p.numel() for p in catalog.get("gpt").model.parameters()) == loaded["params"]
    assert builtin["source"] == "built-in" and builtin["family"] == "ssm"
    assert moe["active_params"] < moe["params"]
    assert memory_read_back(v.memory, 1) == estimate("mamba")["memory"]
    assert "a fixed state of" in v.table  # Mamba: no KV cache per token
    assert "| memory per GPU: optimizer state |" not in v.table  # inference: no training state


def test_a_loaded_checkpoint_folder(hf_folder):
    folder, hf = hf_folder("llama")
    catalog = Catalog(device="cpu")
    key = catalog.add(str(folder)).key
    assert key in {v for _, v in scale.choices(catalog)}
    v = scale.scale_view(catalog, [key], context=64)
    (_, r), = v.results
    assert r["params"] == sum(p.numel() for p in hf.parameters()) and r["source"] == "model"
    assert memory_read_back(v.memory, 0) == estimate(folder, context=64)["memory"]  # its config.json alone


def test_inference_against_training(catalog):
    llama = [scale.PRESET + "llama-2-7b"]
    infer = scale.scale_view(catalog, llama)
    train = scale.scale_view(catalog, llama, mode="training", optimizer="adamw")
    (_, ri), (_, rt) = infer.results[0], train.results[0]
    P = ri["params"]
    assert (rt["memory"]["weights"], rt["memory"]["gradients"], rt["memory"]["optimizer"]) == (2 * P, 2 * P, 12 * P)
    assert rt["memory"]["total"] > 80 * GIB > 16 * GIB > ri["memory"]["total"]
    assert "| memory per GPU: optimizer state |" in train.table and "training in bf16" in train.status
    assert f"**{scale.gib(rt['memory']['total'])}**" in train.table
    rows = lambda v: {r.split("|")[1].strip(): r.split("|")[3] for r in v.fits.splitlines() if r.startswith("| ")}  # noqa: E731
    assert "✓" in rows(infer)["laptop 16GB"] and "✕" in rows(train)["H100 80GB"] and "✓" in rows(infer)["H100 80GB"]
    # training time for Chinchilla's tokens at the chosen MFU on the chosen GPUs
    seconds = rt.train_time_s(20 * P, 0.4, "H100 80GB", 1)
    assert scale.duration(seconds) in train.table
    eight = scale.scale_view(catalog, llama, mode="training", dp=8, gpu="A100 80GB", mfu=50)
    assert "8 × A100 80GB at 50% MFU" in eight.table
    assert scale.duration(eight.results[0][1].train_time_s(20 * P, 0.5, "A100 80GB", 8)) in eight.table


def test_the_claims_are_computed():
    text = scale.claims()
    mix, train, infer = estimate("mixtral-8x7b"), estimate("llama-2-7b", train=True), estimate("llama-2-7b")
    assert f"**{scale.count(mix['params'])}** parameters, of which **{scale.count(mix['active_params'])}**" in text
    assert "46.7 B" in text and "12.9 B" in text  # the numbers, as estimate counts them
    assert f"**{scale.gib(train['memory']['total'])}**" in text and "more than an 80 GB H100" in text
    assert f"**{scale.gib(infer['memory']['total'])}**" in text and "which fits in a 16 GB laptop GPU" in text
    assert "16 bytes per parameter" in text


def test_one_column_that_cannot_take_the_settings(catalog):
    v = scale.scale_view(catalog, [scale.PRESET + "gpt2", scale.PRESET + "llama-2-7b"], tp=8)
    assert v.status.startswith("✓ 1 configuration") and "⚠ Not shown: GPT-2 (124M): tp (8) must divide" in v.status
    assert [label for label, _ in v.results] == ["Llama 2 7B"]


@pytest.mark.parametrize("models, controls, expected", [
    (scale.DEFAULTS, dict(batch=0), "batch must be a whole number from 1 to 65,536, got 0"),
    (scale.DEFAULTS, dict(batch=1.5), "batch must be a whole number"),
    (scale.DEFAULTS, dict(context="2048"), "context must be a whole number"),
    (scale.DEFAULTS, dict(context=10**9), "context must be a whole number from 1 to 16,777,216"),
    (scale.DEFAULTS, dict(dp=None), "dp must be a whole number"),
    (scale.DEFAULTS, dict(tp=True), "tp must be a whole number"),
    (scale.DEFAULTS, dict(pp=float("nan")), "pp must be a whole number"),
    (scale.DEFAULTS, dict(mode="eval"), "mode must be inference or training"),
    (scale.DEFAULTS, dict(dtype="fp64"), "dtype must be one of fp32, bf16, fp16, fp8, int8, int4"),
    (scale.DEFAULTS, dict(mode="training", dtype="int4"), "training keeps its weights in fp32, bf16 or fp16"),
    (scale.DEFAULTS, dict(optimizer="lion"), "optimizer must be one of adamw, sgd, adamw8bit"),
    (scale.DEFAULTS, dict(zero=4), "the ZeRO stage must be 0, 1, 2 or 3"),
    (scale.DEFAULTS, dict(mixed_precision="yes"), "mixed precision must be true or false"),
    (scale.DEFAULTS, dict(gpu="TPU v9"), "the GPU must be one of"),
    (scale.DEFAULTS, dict(mfu=0), "MFU must be a percentage"),
    (scale.DEFAULTS, dict(mfu=150), "MFU must be a percentage"),
    (["<script>alert(1)</script>"], {}, "unknown configuration '&lt;script&gt;alert(1)&lt;/script&gt;'"),
    (["/etc"], {}, "unknown configuration '/etc'"),  # a path is never read
    (["llama-2-7b"], {}, "unknown configuration 'llama-2-7b'"),  # a column takes what its dropdown offers
    ([scale.PRESET + "gpt2"] * 5, {}, "give up to 4 configurations"),
    ("gpt2", {}, "give up to 4 configurations"),
    (scale.DEFAULTS, dict(pp=13, tp=3), "cannot exceed"),  # every column refuses: nothing to draw
])  # fmt: skip
def test_bad_input_gives_a_message(catalog, models, controls, expected):
    v = scale.scale_view(catalog, list(models) if isinstance(models, tuple) else models, **controls)
    assert v.status.startswith("✕ **Problem:**") and expected in v.status, v.status
    assert "<script>" not in v.status and v.memory is None and v.components is None and not v.table


def test_nothing_chosen(catalog):
    v = scale.scale_view(catalog, [scale.NONE, None])
    assert v.status.startswith("ℹ Choose a configuration") and v.memory is None


def test_scale_this_model_up(catalog):
    assert scale.scale_up(catalog, "gpt") == ["gpt", "preset:gpt2", "preset:mistral-7b", "preset:llama-2-70b"]
    assert scale.scale_up(catalog, "moe") == ["moe", "preset:mixtral-8x7b", "", ""]
    assert scale.scale_up(catalog, "mamba-130m") == ["preset:mamba-130m", "preset:mamba-2.8b", "", ""]
    assert scale.scale_up(catalog, "preset:llama-2-70b")[1:] == ["preset:mistral-7b", "preset:qwen2.5-7b",
                                                                 "preset:llama-3-8b"]  # the largest already
    with pytest.raises(ValueError, match="unknown model"):
        scale.scale_up(catalog, "/etc/passwd")
    offered = {v for _, v in scale.choices(catalog)}
    assert {"gpt", "moe", "builtin:mamba", "preset:gpt2", ""} <= offered and "builtin:gpt" not in offered


def test_the_tab_builds_with_its_api(catalog):
    import gradio as gr

    with gr.Blocks() as demo:
        ui = scale.build(catalog)
    public = [fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"]
    assert public == ["scale"], public  # the rest is api_name=False
    shown = [*ui.models, ui.mode, ui.dtype, ui.batch, ui.context, ui.optimizer, ui.mixed, ui.checkpointing, ui.zero,
             ui.dp, ui.tp, ui.pp, ui.gpu, ui.mfu, ui.status, ui.memory, ui.components, ui.table, ui.fits, ui.notes,
             ui.claims]  # fmt: skip
    assert all(str(c.elem_id).startswith("scale-") for c in shown)
    updates = ui.configure("moe")
    assert [u["value"] for u in updates[:4]] == ["moe", "preset:mixtral-8x7b", "", ""]
    assert ui.configure("../../etc")[-1].startswith("✕ **Problem:** unknown model")
    main = (Path(scale.__file__).with_name("main.py")).read_text()
    if "scale.build" in main:  # once the tab is wired into the app
        from archplay.app.main import build_app

        assert "scale" in {fn.api_name for fn in build_app(catalog).fns.values()}


# --------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def served(catalog):
    """The tab alone, served in this process (so the test needs no change to ``main``)."""
    import gradio as gr
    from conftest import served_demo

    with gr.Blocks(title="archplay") as demo:
        with gr.Tabs():
            with gr.Tab("Scale", id="scale"):
                scale.build(catalog)
    with served_demo(demo, css=scale.CSS, page_js=False) as url:
        yield url


_WEIGHTS = """() => {
  const gd = document.querySelector("#scale-memory .js-plotly-plot");
  if (!gd || !gd.data) return null;
  const t = gd.data.find(t => t.name === "weights");
  return t ? Array.from(t.customdata, r => r[1]) : null;
}"""


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_int4_shrinks_the_weights_by_four_in_the_page(served):
    from test_browser import assert_no_console_errors, chromium_page, wait_until

    P = [estimate(n)["params"] for n in ("gpt2", "llama-2-7b", "mixtral-8x7b")]
    weights = lambda: page.evaluate(_WEIGHTS)  # noqa: E731
    with chromium_page(served, timeout_ms=60_000) as page:
        page.set_viewport_size({"width": 1280, "height": 800})
        bf16 = wait_until(page, weights, "the memory bars", timeout=90)
        assert bf16 == [2 * p for p in P]
        assert "46.7 B" in page.locator("#scale-claims").inner_text()
        page.locator("#scale-dtype label").filter(has_text="int4").click()
        int4 = wait_until(page, lambda: (w := weights()) != bf16 and w, "the int4 bars", show=weights)
        assert int4 == [math.ceil(p / 2) for p in P]
        assert np.allclose(np.divide(bf16, int4), 4, rtol=1e-8)
        wait_until(page, lambda: "inference in int4" in page.locator("#scale-status").inner_text(), "the status")
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            page.wait_for_timeout(500)
            page.screenshot(path=f"{SHOTS}/scale-1280-int4-full.png", full_page=True)
            page.locator("#scale-mode label").filter(has_text="training").click()
            page.locator("#scale-dtype label").filter(has_text="bf16").click()
            wait_until(page, lambda: "training in bf16" in page.locator("#scale-status").inner_text(), "training")
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            for w, h in ((1024, 768), (1280, 800)):
                page.set_viewport_size({"width": w, "height": h})
                page.wait_for_timeout(800)
                page.screenshot(path=f"{SHOTS}/scale-{w}.png", full_page=False)
                page.screenshot(path=f"{SHOTS}/scale-{w}-full.png", full_page=True)
        assert_no_console_errors(page)


def test_the_api(served):
    from gradio_client import Client

    client = Client(served, verbose=False)
    out = client.predict(scale.PRESET + "llama-2-7b", "", "", "", "training", "bf16", 1, 2048, "adamw", True, False,
                         0, 1, 1, 1, "H100 80GB", 40, api_name="/scale")  # fmt: skip
    status, table = out[0], out[3]
    assert status.startswith("✓ 1 configuration") and scale.gib(estimate("llama-2-7b", train=True)["memory"]["total"]) in table
    bad = client.predict(scale.PRESET + "gpt2", "", "", "", "inference", "bf16", 0, 2048, "adamw", True, False, 0, 1,
                         1, 1, "H100 80GB", 40, api_name="/scale")  # fmt: skip
    assert bad[0].startswith("✕ **Problem:** batch must be a whole number")


def test_the_architecture_card_scales_its_model_up_in_the_scale_tab():
    """The card's button puts the card's model and larger ones of its family into the Scale tab and opens it."""
    from archplay.app.main import build_app

    config = build_app(Catalog.from_names([], builtins=("gpt",))).get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    button = next(i for i, e in ids.items() if e == "card-scale-up")
    (dep,) = [d for d in config["dependencies"] if [button, "click"] in [list(t) for t in d["targets"]]]
    assert {f"scale-model-{i}" for i in range(4)} <= {ids.get(o) for o in dep["outputs"]}
    assert ids.get(dep["inputs"][0]) == "card-model"
    tabs = [c for c in config["components"] if c["type"] == "tabs"]
    assert tabs and tabs[0]["id"] in dep["outputs"]


# --------------------------------------------------------------------------- "scale this recipe up" (the Lab)


def test_a_recipe_at_a_published_size_keeps_its_design():
    """``upscale.at_size``: Llama's design (RoPE, RMSNorm, SwiGLU 8/3, no biases) at the 7 B shape is Llama-2-7B
    to the parameter, less its untied output head (a recipe ties it); GPT-2's design takes GPT-3 6.7B's shape;
    grouped-query sharing, the scan's layers and an encoder-decoder's two stacks scale as documented."""
    from archplay.models.analysis import upscale
    from archplay.models.training.recipe import Recipe, builtin_recipe

    llama = Recipe.from_dict({"family": "decoder", "layers": 4, "width": 384, "heads": 4, "kv_heads": 4, "d_ff": 1024,
                              "positions": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False})
    cfg = upscale.at_size(llama, "7b")
    assert (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.d_ff, cfg.vocab_size) == (4096, 32, 32, 11008, 32_000)
    assert estimate(cfg)["params"] == estimate("llama-2-7b")["params"] - 32_000 * 4096 == 6_607_343_616
    assert llama.width == 384 and llama.layers == 4  # the recipe itself is untouched
    grouped = upscale.at_size(llama.replace(heads=8, kv_heads=2), "70b")
    assert (grouped.d_model, grouped.n_layer, grouped.n_head, grouped.n_kv_head) == (8192, 80, 64, 16)
    gpt = upscale.at_size(builtin_recipe("gpt"), "7b")
    assert (gpt.d_model, gpt.n_layer, gpt.d_ff, gpt.positions, gpt.norm) == (4096, 32, 16384, "learned", "layernorm")
    assert gpt.name == "gpt at 7 B"
    mamba = upscale.at_size(builtin_recipe("mamba"), "1.3b")
    assert (mamba.d_model, mamba.n_layer, mamba.d_state, mamba.expand) == (2048, 48, 16, 2)
    t5 = upscale.at_size(builtin_recipe("t5"), "7b")
    assert (t5.n_layer, t5.n_decoder_layer) == (16, 16)
    moe = upscale.at_size(builtin_recipe("moe"), "7b")
    r = estimate(moe)
    assert (moe.n_experts, moe.top_k) == (4, 2) and r["active_params"] < r["params"]
    with pytest.raises(ValueError, match="unknown size"):
        upscale.at_size(llama, "9000b")


LAB_JSON = ('{"family": "decoder", "layers": 4, "width": 384, "heads": 8, "kv_heads": 2, "d_ff": 1024, '
            '"positions": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": false, "name": "mine"}')  # fmt: skip


def test_scale_this_recipe_up(catalog):
    """The Lab's recipe (its JSON, as the Lab shows it) fills the columns: as it is, its design at 1.3 B and
    7 B, and the published model of its family nearest the largest; the tab's numbers are estimate's of
    the same configurations; a broken recipe gives its message; a value nobody sent is refused."""
    from archplay.models.analysis import upscale
    from archplay.models.training.recipe import Recipe

    columns = scale.recipe_columns(catalog, LAB_JSON)
    value = columns[0]
    assert value.startswith("recipe:#") and columns[1:] == [f"{value}@1.3b", f"{value}@7b", "preset:llama-2-7b"]
    assert columns == scale.recipe_columns(catalog, LAB_JSON)  # the same recipe, the same value
    v = scale.scale_view(catalog, columns, mode="training")
    labels = [label for label, _ in v.results]
    assert labels == ["mine (recipe)", "mine at 1.3 B", "mine at 7 B", "Llama 2 7B"]
    recipe = Recipe.from_dict(__import__("json").loads(LAB_JSON))
    for (label, r), expected in zip(v.results, (recipe, upscale.at_size(recipe, "1.3b"), upscale.at_size(recipe, "7b"),
                                                "llama-2-7b")):  # fmt: skip
        assert r == estimate(expected, train=True)
    offered = dict((v, label) for label, v in scale.choices(catalog, keep=columns))
    assert offered[columns[2]] == "mine at 7 B" and offered["recipe:gpt"] == "gpt recipe (Lab)"
    assert columns[1] not in {v for _, v in scale.choices(catalog)}  # only where a column holds it
    for bad, message in (("", "no recipe"), ("{", "JSON"), ('{"family": "decoder", "width": -3}', "width"),
                         ("[1, 2]", "JSON object")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            scale.recipe_columns(catalog, bad)
    for unsent in ("recipe:#000000000000", "recipe:gpt@9000b", "recipe:../../etc"):
        with pytest.raises(ValueError, match="unknown configuration"):
            scale.target(catalog, unsent)


def test_the_lab_scales_its_recipe_up_in_the_scale_tab():
    """The Lab's button sends its recipe's JSON to the Scale tab's columns and opens the tab."""
    from archplay.app.main import build_app

    demo = build_app(Catalog.from_names([], builtins=("gpt",)))
    config = demo.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    button = next(i for i, e in ids.items() if e == "lab-scale-up")
    (dep,) = [d for d in config["dependencies"] if [button, "click"] in [list(t) for t in d["targets"]]]
    assert {f"scale-model-{i}" for i in range(4)} <= {ids.get(o) for o in dep["outputs"]}
    assert ids.get(dep["inputs"][0]) == "lab-recipe"
    fn = demo.fns[dep["id"]].fn
    *columns, status, tab = fn(LAB_JSON)
    assert [c["value"] for c in columns][1:] == [f"{columns[0]['value']}@1.3b", f"{columns[0]['value']}@7b",
                                                 "preset:llama-2-7b"]  # fmt: skip
    assert tab.selected == "scale"
    *_, status, _ = fn('{"family": "decoder", "layers": 0}')
    assert status.startswith("✕ **Problem:**") and "layers" in status
