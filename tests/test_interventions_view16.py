"""Issue 16 item 5: the Interventions tab. Its figures read back equal ``ablate`` and ``attribution``
run here on the same built-in models; each family gets the controls it has (heads, experts, scan
layers, tokens, the kind of attention); bad input gives a message; and in a real headless Chromium
an Explore Run, a ticked head and Apply change the summary."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from archplay.app import interventions
from archplay.app.catalog import Catalog
from archplay.app.explore import run, translation
from archplay.app.explore.page import default_text_for
from archplay.models import ablate, attribution
from archplay.viz.interventions import (
    AFTER,
    BEFORE,
    GRAD_X_INPUT,
    KNOCK_OUT,
    KNOCKED,
    attribution_figure,
    prediction_figure,
    surprisal_figure,
)

TEXT = "Mia has a red ball. She throws the"
ATOL = 1e-5


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_names([], device="cpu")


def trace(fig, name: str):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def arr(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def bars(fig, name: str) -> dict[int, float]:
    """{token id: probability} of a prediction figure's bar trace."""
    t = trace(fig, name)
    return {int(c[1]): float(x) for c, x in zip(t.customdata, t.x)}


def bits_of(logits: torch.Tensor, targets: list[int]) -> np.ndarray:
    logp = torch.log_softmax(logits.float(), -1)[torch.arange(len(targets)), torch.tensor(targets)]
    return (-logp / math.log(2)).numpy()


def analysed(catalog, key: str, text: str | None = None):
    text = text if text is not None else (default_text_for(catalog.get(key)) if key == "bert" else TEXT)
    r = run.analyse(catalog, key, text)
    assert r.analysis is not None, r.status
    return r.analysis


def check_view(v, model, ids, position, **ablated):
    """The view's numbers against ``ablate`` and the unmodified model, run here."""
    with torch.inference_mode():
        base = model(ids, **{k: v_ for k, v_ in ablated.items() if k == "decoder_input_ids"}).logits[0]
        off = ablate(model, ids, **ablated).logits[0]
    p0, p1 = torch.softmax(base[position].float(), -1), torch.softmax(off[position].float(), -1)
    for name, p in ((BEFORE, p0), (AFTER, p1)):
        shown = bars(v.prediction, name)
        np.testing.assert_allclose(list(shown.values()), p[list(shown)].numpy(), atol=ATOL)
    n = interventions.TOP_N
    top = set(torch.topk(p0, n).indices.tolist()) | set(torch.topk(p1, n).indices.tolist())
    assert set(bars(v.prediction, BEFORE)) == top  # the union of both runs' top predictions
    return base, off


# --------------------------------------------------------------------------- the figures


def test_prediction_bars_pair_the_union_of_both_tops_and_escape_labels():
    before = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05])
    after = torch.tensor([0.1, 0.2, 0.05, 0.6, 0.05])
    labels = ["a", "<b>bold</b>", "c", "d&e", "f"]
    fig = prediction_figure(before, after, labels, top_n=2)
    b, a = trace(fig, BEFORE), trace(fig, AFTER)
    assert [c[1] for c in b.customdata] == [3, 0, 1]  # the likeliest in either run first
    np.testing.assert_allclose(arr(b.x), [0.05, 0.5, 0.3])
    np.testing.assert_allclose(arr(a.x), [0.6, 0.1, 0.2])
    assert b.customdata[2][0] == "&lt;b&gt;bold&lt;/b&gt;" and b.customdata[0][0] == "d&amp;e"
    assert "<b>" not in "".join(fig.layout.yaxis.ticktext) and fig.layout.yaxis.autorange == "reversed"
    with pytest.raises(ValueError, match="differ in size"):
        prediction_figure(before, after[:3], labels)


def test_surprisal_lines_mark_the_knocked_out_tokens():
    b0, b1 = [math.nan, 1.0, 2.0, 3.0], [math.nan, 1.5, 4.0, 3.0]
    fig = surprisal_figure(b0, b1, ["x", "<i>", "z", "w"], knocked=[2])
    np.testing.assert_array_equal(arr(trace(fig, BEFORE).y), b0)  # NaN stays a gap
    np.testing.assert_array_equal(arr(trace(fig, AFTER).y), b1)
    assert list(trace(fig, KNOCKED).x) == [2] and len(fig.layout.shapes) == 1
    assert "mean 2.00 → 2.83 bits (+0.83) over 3 tokens" in fig.layout.title.text
    assert "&lt;i&gt;" in fig.layout.xaxis.ticktext[1]
    assert not trace(surprisal_figure(b0, b1, list("abcd")), KNOCKED).showlegend


def test_attribution_rows_diverge_around_zero_with_exact_hover():
    g, k = [0.2, -1.0, 0.5], [-0.3, 0.1, 0.0]
    fig = attribution_figure(g, k, ["a", "<b>", "c"])
    gt, kt = trace(fig, GRAD_X_INPUT), trace(fig, KNOCK_OUT)
    np.testing.assert_array_equal(arr(gt.y), g)
    np.testing.assert_array_equal(arr(kt.y), k)
    assert (gt.marker.cmin, gt.marker.cmax, gt.marker.cmid) == (-1.0, 1.0, 0.0)  # symmetric: white is 0
    assert (kt.marker.cmin, kt.marker.cmax) == (-0.3, 0.3)
    assert gt.yaxis == "y" and kt.yaxis == "y2" and kt.xaxis == "x2" and fig.layout.xaxis2.matches == "x"
    assert "%{y:.5g}" in gt.hovertemplate and list(gt.customdata) == ["a", "&lt;b&gt;", "c"]


# --------------------------------------------------------------------------- the tab on the built-ins


def test_gpt_heads_and_tokens(catalog):
    a = analysed(catalog, "gpt")
    entry = catalog.get("gpt")
    cfg = entry.config
    o = interventions.offer(catalog, a)
    assert len(o.heads) == cfg.n_layer * cfg.n_head and o.heads[:2] == ["L0.H0", "L0.H1"]
    assert o.experts == o.mixers == o.kinds == [] and [v for _, v in o.tokens] == list(range(len(a.ids)))
    assert o.position == len(a.ids) - 1 and o.tokens[1][0] == f"1 ‘{a.labels[1]}’"

    ids = torch.tensor([a.ids])
    v = interventions.intervene(catalog, a, heads=["L1.H3"], tokens=[2])
    base, off = check_view(v, entry.model, ids, len(a.ids) - 1, heads=[(1, 3)], tokens=[2])
    s0, s1 = trace(v.surprisal, BEFORE), trace(v.surprisal, AFTER)
    np.testing.assert_allclose(arr(s0.y)[1:], bits_of(base[:-1], a.ids[1:]), atol=1e-4)
    np.testing.assert_allclose(arr(s1.y)[1:], bits_of(off[:-1], a.ids[1:]), atol=1e-4)
    assert math.isnan(s0.y[0]) and list(trace(v.surprisal, KNOCKED).x) == [2]
    knocked = interventions.intervene(catalog, a, tokens=[2])  # causal: up to token 2 (predicted before it), unchanged
    s0, s1 = arr(trace(knocked.surprisal, BEFORE).y), arr(trace(knocked.surprisal, AFTER).y)
    np.testing.assert_allclose(s1[1:3], s0[1:3], atol=1e-5)
    assert np.abs(s1[3:] - s0[3:]).max() > 1e-3

    target = int(base[-1].argmax())
    expected = attribution(entry.model, ids, len(a.ids) - 1, target)
    np.testing.assert_allclose(arr(trace(v.attribution, GRAD_X_INPUT).y), expected["grad_x_input"].numpy(), atol=1e-4)
    np.testing.assert_allclose(arr(trace(v.attribution, KNOCK_OUT).y), expected["knock_out"].numpy(), atol=1e-4)
    assert v.summary.startswith("✓ With head L1.H3 and token 2 ‘") and "mean surprisal" in v.summary, v.summary
    top0, top1 = int(base[-1].argmax()), int(off[-1].argmax())
    name = entry.tokenizer.tokens([top1])[0].strip()
    assert ("changes from" in v.summary) == (top0 != top1) and name in v.summary

    # another position, the same Run: the cache keeps the attribution of each position it computed
    v2 = interventions.intervene(catalog, a, heads="L1.H3", position=3, cache=v.cache)
    check_view(v2, entry.model, ids, 3, heads=[(1, 3)])
    assert "position 3" in v2.prediction.layout.title.text and len([k for k in v2.cache if "attribution" in k]) == 2
    nothing = interventions.intervene(catalog, a)
    assert nothing.summary.startswith("ℹ Nothing is switched off")
    np.testing.assert_array_equal(arr(trace(nothing.prediction, BEFORE).x), arr(trace(nothing.prediction, AFTER).x))


def test_moe_experts(catalog):
    a = analysed(catalog, "moe")
    entry = catalog.get("moe")
    o = interventions.offer(catalog, a)
    E, k = a.routing.n_experts, a.routing.top_k
    assert len(o.experts) == len(a.routing.blocks) * E and o.experts[1] == f"L{a.routing.blocks[0]}.E1"
    assert o.heads and not o.mixers
    layer = a.routing.blocks[-1]
    v = interventions.intervene(catalog, a, experts=[f"L{layer}.E0", f"L{layer}.E1"][: E - k])
    off = [(layer, e) for e in range(min(2, E - k))]
    check_view(v, entry.model, torch.tensor([a.ids]), len(a.ids) - 1, experts=off)
    assert v.summary.startswith("✓ With expert") and f"L{layer}.E0" in v.summary
    too_many = interventions.intervene(catalog, a, experts=[f"L{layer}.E{e}" for e in range(E - k + 1)])
    assert too_many.summary.startswith("✕") and f"at most {E - k}" in too_many.summary
    assert too_many.prediction is None


def test_mamba_scan_layers(catalog):
    a = analysed(catalog, "mamba")
    entry = catalog.get("mamba")
    o = interventions.offer(catalog, a)
    assert o.heads == [] and o.experts == [] and o.mixers == [f"L{i}" for i in range(a.scan.n_layer)]
    v = interventions.intervene(catalog, a, mixers=["L1"])
    check_view(v, entry.model, torch.tensor([a.ids]), len(a.ids) - 1, mixers=[1])
    assert "scan layer L1" in v.summary
    heads = interventions.intervene(catalog, a, heads=["L0.H0"])
    assert heads.summary.startswith("✕") and "attention" in heads.summary


def test_t5_cross_attention_heads(catalog):
    a = analysed(catalog, "t5")
    entry = catalog.get("t5")
    t = a.translation
    o = interventions.offer(catalog, a)
    assert [v for _, v in o.kinds] == list(translation.KINDS) and o.kind == "cross"
    cross = interventions.offer(catalog, a, "cross").heads
    assert len(cross) == len(t.cross_attentions) * t.cross_attentions[0].shape[0]
    assert cross[-1] == f"L{len(t.cross_attentions) - 1}.H{t.cross_attentions[0].shape[0] - 1}"
    assert [label for label, _ in o.positions][0].startswith("step 0 → ‘")
    step = min(1, len(t.ids) - 1)
    ids = torch.tensor([a.ids])
    dec = torch.tensor([translation.decoder_inputs(entry, t.ids)])
    v = interventions.intervene(catalog, a, heads=["L0.H1"], kind="cross", tokens=[0], position=step)
    base, off = check_view(v, entry.model, ids, step, heads=[(0, 1)], kind="cross", tokens=[0], decoder_input_ids=dec)
    np.testing.assert_allclose(arr(trace(v.surprisal, AFTER).y), bits_of(off, t.ids), atol=1e-4)
    np.testing.assert_allclose(arr(trace(v.surprisal, BEFORE).y), bits_of(base, t.ids), atol=1e-4)
    assert "source tokens knocked out: 0" in v.surprisal.layout.title.text
    assert "cross-attention head L0.H1" in v.summary and f"step {step}" in v.summary
    expected = attribution(entry.model, ids, step, int(base[step].argmax()), decoder_input_ids=dec)
    np.testing.assert_allclose(arr(trace(v.attribution, KNOCK_OUT).y), expected["knock_out"].numpy(), atol=1e-4)
    enc = interventions.intervene(catalog, a, heads=["L0.H1"], kind="encoder", position=step)  # the encoder's "self"
    check_view(enc, entry.model, ids, step, heads=[(0, 1)], kind="self", decoder_input_ids=dec)
    assert interventions.intervene(catalog, a, position=len(t.ids)).summary.startswith("✕")


def test_bert_examines_the_mask(catalog):
    a = analysed(catalog, "bert")
    entry = catalog.get("bert")
    assert a.predict_at is not None and a.ids[a.predict_at] == entry.tokenizer.mask_token_id
    o = interventions.offer(catalog, a)
    assert o.position == a.predict_at and o.heads and not o.experts and not o.mixers
    v = interventions.intervene(catalog, a, heads=["L0.H0", "L1.H2"])
    assert f"position {a.predict_at}" in v.prediction.layout.title.text
    check_view(v, entry.model, torch.tensor([a.ids]), a.predict_at, heads=[(0, 0), (1, 2)])
    # pseudo-surprisal: each token masked in turn (one batch row each), the same parts off
    T, mask = len(a.ids), entry.tokenizer.mask_token_id
    batch = torch.tensor([a.ids] * T)
    batch[torch.arange(T), torch.arange(T)] = mask
    with torch.inference_mode():
        off = ablate(entry.model, batch, heads=[(0, 0), (1, 2)]).logits[torch.arange(T), torch.arange(T)]
    got = arr(trace(v.surprisal, AFTER).y)
    want = bits_of(off, a.ids)
    shown = np.isfinite(got)
    assert not shown[a.predict_at] and not shown[0] and shown.sum() >= T - 3  # the mask and the specials: gaps
    np.testing.assert_allclose(got[shown], want[shown], atol=1e-4)
    assert "Pseudo-surprisal" in v.surprisal.layout.title.text and "No mask" not in v.summary
    plain = analysed(catalog, "bert", "Mia has a red ball.")  # no mask: the last word, not the special after it
    o = interventions.offer(catalog, plain)
    assert plain.predict_at is None and o.position == len(plain.ids) - 2
    v = interventions.intervene(catalog, plain, tokens=[1])
    assert f"position {o.position}" in v.summary and "No mask in the text" in v.summary


def test_bad_input_gives_messages(catalog):
    a = analysed(catalog, "gpt")
    assert interventions.intervene(catalog, None).summary.startswith("ℹ Run a model")
    cases = [
        (dict(heads=["<b>L0</b>"]), "&lt;b&gt;L0&lt;/b&gt;"),
        (dict(heads=["L99.H0"]), "layer 99"),
        (dict(heads=["L0.H77"]), "head 77"),
        (dict(tokens=["two"]), "whole number"),
        (dict(tokens=[999]), "token 999"),
        (dict(tokens=[1.5]), "whole number"),
        (dict(experts=["L0.E1"]), "mixture of experts"),
        (dict(mixers=["L0"]), "Mamba"),
        (dict(position=999), "position must be between"),
        (dict(position="<script>"), "&lt;script&gt;"),
        (dict(heads=7), "list of choices"),
    ]
    for kwargs, expected in cases:
        v = interventions.intervene(catalog, a, **kwargs)
        assert v.summary.startswith("✕ **Problem:**"), (kwargs, v.summary)
        assert expected in v.summary and "<b>" not in v.summary and "<script>" not in v.summary, (kwargs, v.summary)
        assert v.prediction is None
    gone = Catalog.from_names([], device="cpu", builtins=("mamba",))
    assert interventions.intervene(gone, a).summary.startswith("✕")  # the Run's model is not served


def test_the_tab_builds_with_its_api(catalog):
    import gradio as gr

    from archplay.app.explore import page as explore

    with gr.Blocks() as demo:
        explore_ui = explore.build(catalog, demo)
        ui = interventions.build(catalog, explore_ui)
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"ablate", "ablate_choices"} <= names
    shown = (ui.heads, ui.experts, ui.mixers, ui.tokens, ui.kind, ui.position, ui.apply, ui.clear, ui.summary)
    assert all(str(c.elem_id).startswith("ablate-") for c in shown)
    main = (Path(interventions.__file__).with_name("main.py")).read_text()
    if "interventions.build" in main:  # once the tab is wired into the app
        from archplay.app.main import build_app

        assert "ablate" in {fn.api_name for fn in build_app(catalog).fns.values()}


# --------------------------------------------------------------------------- in a real browser

CHROMIUM = "/usr/bin/chromium"
SHOTS = os.environ.get("ARCHPLAY_ABLATE_SHOTS")  # a folder: screenshots at 1024×768 and 1280×800, for a person


@pytest.fixture(scope="module")
def served(catalog):
    """Explore and this tab, served in this process (so the test needs no change to ``main``)."""
    import gradio as gr
    from conftest import served_demo

    from archplay.app.explore import page as explore

    with gr.Blocks(title="archplay") as demo:
        with gr.Tabs():
            with gr.Tab("Explore", id="explore"):
                explore_ui = explore.build(catalog, demo)
            with gr.Tab("Interventions", id="ablate"):
                interventions.build(catalog, explore_ui)
    with served_demo(demo) as url:
        yield url


_WIDTHS = """() => ["ablate-prediction", "ablate-surprisal", "ablate-attribution"].map(id => {
  const gd = document.querySelector(`#${id} .js-plotly-plot`);
  return [gd._fullLayout.width, gd.getBoundingClientRect().width];
})"""


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_tick_a_head_and_apply_in_the_page(served, catalog):
    from test_browser import _array, assert_no_console_errors, chromium_page, open_tab, read_plot, wait_until

    entry = catalog.get("gpt")
    text = "Sara has a pink letter. Then she reads her"
    ids = entry.tokenizer.encode(text)
    last = len(ids) - 1
    summary = lambda pg: pg.locator("#ablate-summary").inner_text()  # noqa: E731
    with chromium_page(served, timeout_ms=60_000) as page:
        page.set_viewport_size({"width": 1280, "height": 800})
        wait_until(page, lambda: page.locator("#status").inner_text().startswith("✓"), "the first Run")
        open_tab(page, "Interventions")  # the page's first Run is shown
        wait_until(page, lambda: summary(page).startswith("ℹ Nothing is switched off"), "the first Run's view",
                   show=lambda: summary(page))  # fmt: skip
        open_tab(page, "Explore")
        page.locator("#text textarea").fill(text)  # a Run after the page's first: the tab follows it too,
        page.locator("#run").click()  # when it is opened (a hidden tab is not redrawn on each Run)
        wait_until(page, lambda: f"on {len(ids)} tokens" in page.locator("#status").inner_text(), "the Run",
                   show=lambda: page.locator("#status").inner_text())  # fmt: skip
        assert f"at position {last} is" not in (page.locator("#ablate-summary").text_content() or "")
        open_tab(page, "Interventions")
        wait_until(page, lambda: f"at position {last} is" in summary(page), "the tab to show the new Run",
                   show=lambda: summary(page))  # fmt: skip
        page.wait_for_timeout(300)
        widths = page.evaluate(_WIDTHS)  # drawn while the tab was hidden: resized when it is shown
        assert all(abs(drawn - box) < 2 for drawn, box in widths), widths
        assert summary(page).startswith("ℹ Nothing is switched off")
        heads = page.locator("#ablate-heads label")
        assert heads.count() == entry.config.n_layer * entry.config.n_head
        assert page.locator("#ablate-tokens label").count() == len(ids)
        assert not page.locator("#ablate-experts").is_visible() and not page.locator("#ablate-mixers").is_visible()
        assert not page.locator("#ablate-kind").is_visible()
        heads.filter(has_text=re.compile(r"^\s*L1\.H3\s*$")).click()
        page.locator("#ablate-tokens label").nth(2).click()
        page.locator("#ablate-apply").click()
        text_now = wait_until(page, lambda: (s := summary(page)).startswith("✓ With head L1.H3") and s,
                              "the summary of the ablation", show=lambda: summary(page))  # fmt: skip
        assert "token 2" in text_now and "mean surprisal" in text_now
        with torch.inference_mode():
            off = ablate(entry.model, torch.tensor([ids]), heads=[(1, 3)], tokens=[2]).logits[0, -1]
        p = torch.softmax(off.float(), -1)
        plot = read_plot(page, "ablate-prediction")
        after = next(t for t in plot["data"] if t["name"] == AFTER)
        shown = [int(c[1]) for c in after["customdata"]]
        np.testing.assert_allclose(_array(after["x"]), p[shown].numpy(), atol=1e-5)
        assert read_plot(page, "ablate-attribution")["data"][0]["name"] == GRAD_X_INPUT
        # every plot as wide as its box, those drawn while the tab was hidden too (plotly's default is 700 px)
        widths = page.evaluate(_WIDTHS)
        assert all(abs(drawn - box) < 2 for drawn, box in widths), widths
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            for w, h in ((1024, 768), (1280, 800)):
                page.set_viewport_size({"width": w, "height": h})
                page.wait_for_timeout(800)
                page.screenshot(path=f"{SHOTS}/ablate-{w}.png", full_page=False)
                page.screenshot(path=f"{SHOTS}/ablate-{w}-full.png", full_page=True)
        page.locator("#ablate-clear").click()
        wait_until(page, lambda: summary(page).startswith("ℹ Nothing is switched off"), "Clear")
        assert_no_console_errors(page)


def test_the_api_after_analyse(served, catalog):
    """A script: ``analyse``, then ``ablate_choices`` (the checkboxes take only what they offer), then ``ablate``."""
    import json

    from gradio_client import Client

    client = Client(served, verbose=False)
    client.predict("gpt", TEXT, 0, 0, 1.0, 0, 1.0, api_name="/analyse")
    kind, heads, experts, mixers, tokens, position, summary = client.predict(api_name="/ablate_choices")
    assert [c[1] for c in heads["choices"]][:2] == ["L0.H0", "L0.H1"] and heads["visible"] and not experts["visible"]
    out = client.predict(["L1.H3"], "cross", [], [], [2], 3, api_name="/ablate")
    summary, prediction = out[6], json.loads(out[7]["plot"])
    assert summary.startswith("✓ With head L1.H3 and token 2"), summary
    entry = catalog.get("gpt")
    with torch.inference_mode():
        off = ablate(entry.model, torch.tensor([entry.tokenizer.encode(TEXT)]), heads=[(1, 3)], tokens=[2]).logits
    after = next(t for t in prediction["data"] if t["name"] == AFTER)
    ids = [int(c[1]) for c in after["customdata"]]
    x = after["x"]
    if isinstance(x, dict):  # a typed array
        import base64

        x = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
    np.testing.assert_allclose(arr(x), torch.softmax(off[0, 3].float(), -1)[ids].numpy(), atol=1e-5)
    for tokens, position in (([99], 3), ([], 99)):  # gradio's own check, before the handler
        with pytest.raises(Exception, match="not in the list of choices"):
            client.predict(["L0.H0"], "cross", [], [], tokens, position, api_name="/ablate")
