"""The "Inside a step" tab (issue 16, item 1): the figures carry attention_steps' own numbers, the tab's
handler serves every built-in family (three kinds for T5) and answers bad input with a sentence, and in
a real browser the tab follows an Explore Run and a change of head; and (item 2) the gate of the moe
and the scan of the mamba follow their controls in the page (tests/test_mixer_steps16.py has the rest)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import torch
from test_browser import (
    CHROMIUM,
    _array,
    assert_no_console_errors,
    choose_model,
    chromium_page,
    open_tab,
    plot_trace,
    set_slider,
    wait_for_plot,
    wait_until,
)
from test_contract import _tiny

from archplay.app import steps as tab
from archplay.app.catalog import Catalog
from archplay.app.explore import run, translation
from archplay.models import attention_steps
from archplay.viz.steps import attention_step_figure, residual_figure

TEXT = "Mia has a red ball. She throws the ball to Tom. Then Tom"
SHOTS = Path(os.environ.get("ARCHPLAY_STEPS_SHOTS", "/tmp/steps-shots"))
MIXER_SHOTS = Path(os.environ.get("ARCHPLAY_MIXER_SHOTS", "/tmp/mixer-shots"))


def trace(fig, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def column(fig, name: str) -> np.ndarray:
    return np.asarray(trace(fig, name).z, dtype=np.float64)[:, 0]


def assert_figures_hold(s, flow, residual):
    """Every number the figures show is the AttentionSteps field it stands for."""
    close = dict(atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(trace(flow, "query").z)[0], s.q.numpy(), **close)
    np.testing.assert_allclose(np.asarray(trace(flow, "keys").z), s.k.numpy(), **close)
    np.testing.assert_allclose(np.asarray(trace(flow, "values").z), s.v.numpy(), **close)
    np.testing.assert_allclose(np.asarray(trace(flow, "out").z)[0], s.out.numpy(), **close)
    np.testing.assert_allclose(column(flow, "scores"), s.scores.numpy(), **close)
    np.testing.assert_allclose(column(flow, "scaled"), (s.scores * s.scale).numpy(), **close)
    np.testing.assert_allclose(column(flow, "bias"), s.bias.numpy(), **close)
    np.testing.assert_allclose(column(flow, "weights"), s.weights.numpy(), **close)
    logits = column(flow, "logits")  # NaN where masked, the "masked" overlay there instead
    np.testing.assert_allclose(logits[s.mask.numpy()], s.logits[s.mask].numpy(), **close)
    assert np.isnan(logits[~s.mask.numpy()]).all()
    np.testing.assert_array_equal(~np.isnan(column(flow, "masked")), ~s.mask.numpy())
    S = len(s.weights)
    assert list(trace(flow, "weights").y) == list(range(S)) and list(trace(flow, "keys").y) == list(range(S))
    if s.q_before is None:
        assert "query before rotation" not in [t.name for t in flow.data]
    else:
        np.testing.assert_allclose(np.asarray(trace(flow, "query before rotation").z)[0], s.q_before.numpy(), **close)
    fields = {"residual in": s.residual_in, "x": s.x, "head output": s.head_output,
              "attention output": s.attention_output, "residual out": s.residual_out}  # fmt: skip
    assert [t.name for t in residual.data] == [n for n, v in fields.items() if v is not None]
    for name, value in fields.items():
        if value is not None:
            np.testing.assert_allclose(np.asarray(trace(residual, name).z)[0], value.numpy(), **close)


# --------------------------------------------------------------------------- the figures


@pytest.mark.parametrize("name", ["llama-style", "gpt2-style", "t5-style", "bert-style"])
def test_the_figures_hold_the_steps_numbers(name):
    model = _tiny(name)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, model.config.vocab_size, (1, 9), generator=g)
    kw = {"decoder_input_ids": torch.randint(3, model.config.vocab_size, (1, 5), generator=g)} \
        if name == "t5-style" else {}  # fmt: skip
    for kind in ["self", "decoder", "cross"] if kw else ["self"]:
        s = attention_steps(model, ids, 1, 2, 3, kind=kind, **kw)
        keys = [f"t{j}" for j in range(len(s.weights))]
        flow = attention_step_figure(s, keys, "q3", position="relative" if kw else None)
        assert_figures_hold(s, flow, residual_figure(s, "q3"))
    if name == "llama-style":  # rotary: q before and after; grouped-query: the keys' kv head is named
        assert "RoPE" in flow.layout.title.text and "kv head 1" in flow.layout.annotations[0].text


def test_titles_say_each_step_and_labels_are_escaped():
    from archplay.models.architectures.decoder import Decoder, DecoderConfig

    torch.manual_seed(0)
    alibi = Decoder(DecoderConfig.gpt2_tiny(positions="alibi"))
    s = attention_steps(alibi, torch.tensor([[5, 6, 7, 8, 9]]), 0, 1, 3)
    keys = ["<b>x</b>", "a&b", "c", "d", "e"]
    flow = attention_step_figure(s, keys, "<script>", position="alibi")
    title = flow.layout.title.text
    assert "scores = q·kⱼ" in title and "× 1/√d_head = " in title and "+ ALiBi bias" in title and "softmax" in title
    assert "&lt;script&gt;" in title and "<script>" not in title
    ticks = list(flow.layout.yaxis.ticktext)
    assert ticks[0] == "0 &lt;b&gt;x&lt;/b&gt;" and ticks[1] == "1 a&amp;b" and "<b>▸ 3 d</b>" in ticks
    headers = list(flow.layout.xaxis2.ticktext)
    assert [h.split("<br>")[0] for h in headers] == ["<b>q·kⱼ</b>", f"<b>× {s.scale:.3g}</b>", "<b>+ bias</b>",
                                                     "<b>mask</b>", "<b>softmax</b>"]  # fmt: skip
    assert "ALiBi" in headers[2] and "1/√d_head" in headers[1]
    assert "&lt;b&gt;" in trace(flow, "weights").customdata[0][0]
    written = [row[0] for row in trace(flow, "weights").text]  # short rows carry their numbers
    assert written == [f"{w:.2f}" for w in s.weights.tolist()]
    assert [row[0] for row in trace(flow, "masked").text] == ["", "", "", "", "−∞"]  # causal: key 4 is after query 3
    residual = residual_figure(s, "<i>")
    assert "&lt;i&gt;" in residual.layout.title.text


def test_long_inputs_keep_labels_and_drop_cell_text():
    model = _tiny("llama-style")  # rotary: no table limits the length
    ids = torch.randint(3, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
    s = attention_steps(model, ids, 0, 0, 100)
    flow = attention_step_figure(s, [f"w{j}" for j in range(128)], "w100")
    assert trace(flow, "weights").text is None  # 5.6-px rows: numbers in the hover only
    ticks = list(flow.layout.yaxis.tickvals)
    assert 100 in ticks and 30 <= len(ticks) <= 70 and ticks[0] == 0
    assert flow.layout.height <= 1000


def test_the_figures_are_valid_plotly(monkeypatch):
    model = _tiny("llama-style")
    s = attention_steps(model, torch.tensor([[4, 5, 6, 7]]), 1, 0, 2)
    build = lambda: [attention_step_figure(s, list("abcd"), "c"), residual_figure(s, "c")]  # noqa: E731
    fast = build()
    monkeypatch.setenv("ARCHPLAY_VALIDATE_FIGURES", "1")
    checked = build()

    def plain(fig):  # the JSON, floats rounded (validation re-derives some colour-scale stops)
        return json.loads(fig.to_json(), parse_float=lambda x: round(float(x), 12))

    for a, b in zip(fast, checked):
        assert plain(a) == plain(b)


# --------------------------------------------------------------------------- the tab's handler


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_names([], device="cpu")


@pytest.fixture(scope="module")
def runs(catalog):
    out = {}
    for key in ("gpt", "bert", "t5", "moe", "mamba"):
        r = run.analyse(catalog, key, TEXT + (" <mask>" if key == "bert" else ""))
        assert r.ok, r.status
        out[key] = r.analysis
    return out


def expected(catalog, a, kind, layer, head, query):
    entry = catalog.get(a.model_key)
    kw = {}
    if a.translation is not None:
        kw["decoder_input_ids"] = torch.tensor([translation.decoder_inputs(entry, a.translation.ids)])
    return attention_steps(entry.model, torch.tensor([a.ids]), layer, head, query, kind=kind, **kw)


@pytest.mark.parametrize("key,kind", [("gpt", "self"), ("bert", "self"), ("moe", "self"), ("t5", "self"),
                                      ("t5", "decoder"), ("t5", "cross")])  # fmt: skip
def test_the_tab_draws_the_runs_own_attention(catalog, runs, key, kind):
    a = runs[key]
    c = tab.controls(catalog, a, kind)
    assert c.kinds == (key == "t5") and c.kind == kind
    layer, head = c.n_layer - 1, c.n_head - 1
    _, queries = tab.labels(a, kind)
    query = len(queries) // 2
    v = tab.steps_view(catalog, a, kind, layer, head, query)
    assert v.summary.startswith("✓"), v.summary
    s = expected(catalog, a, kind, layer, head, query)
    assert_figures_hold(s, v.flow, v.residual)
    traced = {"self": a.attentions, "decoder": a.translation and a.translation.decoder_attentions,
              "cross": a.translation and a.translation.cross_attentions}[kind]  # fmt: skip
    np.testing.assert_allclose(column(v.flow, "weights"), traced[layer][head, query].numpy(), atol=1e-5)  # the Run
    assert [label for label, _ in c.queries][query].startswith(f"{query} ‘")
    j = int(s.weights.argmax())
    keys, _ = tab.labels(a, kind)
    assert f"(key {j}) gets **{float(s.weights[j]):.2f}**" in v.summary
    if key == "t5":  # no 1/√d scaling; relative-position buckets in both self-attentions, none across
        assert "× 1 " in v.summary and ("T5 adds a learned bias" in v.summary) == (kind != "cross")
        assert len(c.queries) == (len(a.ids) if kind == "self" else len(a.translation.ids))


def test_the_summary_names_sharing_rope_and_masking(catalog, runs):
    gpt = runs["gpt"]
    v = tab.steps_view(catalog, gpt, None, 0, 1, 3)
    s = expected(catalog, gpt, "self", 0, 1, 3)
    assert f"{len(s.weights) - 4} of {len(s.weights)} keys are masked" in v.summary
    assert ("Rotary positions (RoPE)" in v.summary) == (s.q_before is not None)
    if len(s.group) > 1:
        assert f"share key/value head {s.kv_head}" in v.summary
    else:
        assert "has its own keys and values" in v.summary


def test_mamba_has_no_attention_to_show(catalog, runs):
    v = tab.steps_view(catalog, runs["mamba"], None, 0, 0, 0)
    assert v.flow is None and v.residual is None
    assert "no attention" in v.summary and "scan view" in v.summary
    assert tab.controls(catalog, runs["mamba"]) is None
    assert tab.steps_view(catalog, None).summary == "ℹ " + tab.RUN_FIRST


@pytest.mark.parametrize("args,match", [
    (("self", 99, 0, 0), "layer 99"), (("self", 0, 7, 0), "head 7"), (("self", 0, 0, -1), "query must be between"),
    (("self", 0, 0, 999), "got 999"), (("self", "x", 0, 0), "layer must be a whole number"),
    (("self", 0, 0, None), "choose a query"), (("self", 0, 0, "<img src=x>"), "&lt;img"),
])  # fmt: skip
def test_bad_input_gets_a_sentence(catalog, runs, args, match):
    v = tab.steps_view(catalog, runs["gpt"], *args)
    assert v.flow is None and v.summary.startswith("✕") and match in v.summary, v.summary
    assert "<img" not in v.summary


def test_bad_kinds_and_queries_by_text(catalog, runs):
    v = tab.steps_view(catalog, runs["t5"], "sideways", 0, 0, 0)
    assert v.flow is None and "attention kind must be one of" in v.summary
    assert tab.steps_view(catalog, runs["t5"], "encoder", 0, 0, 0).flow is not None  # the Explore tab's name too
    gpt = runs["gpt"]
    by_text = tab.steps_view(catalog, gpt, None, 0, 0, "Mia")  # a token's text, when only one token has it
    assert gpt.labels.count("Mia") == 1
    assert by_text.flow is not None and f"query {gpt.labels.index('Mia')} " in by_text.flow.layout.title.text
    assert "got 'ball'" in tab.steps_view(catalog, gpt, None, 0, 0, "ball").summary  # twice in the text: ambiguous


def test_html_in_the_text_is_escaped(catalog):
    a = run.analyse(catalog, "gpt", "Mia has <b>a</b> red & ball").analysis
    assert {"<", ">", "&", "<s>"} <= set(a.labels)
    v = tab.steps_view(catalog, a, None, 0, 0, a.labels.index(">"))
    ticks = list(v.flow.layout.yaxis.ticktext)
    assert ticks[0] == "0 &lt;s&gt;" and "4 &lt;" in ticks and "<b>▸ 6 &gt;</b>" in ticks
    assert "‘&gt;’" in v.flow.layout.title.text and "‘&gt;’" in v.residual.layout.title.text
    hover = [row[0] for row in trace(v.flow, "weights").customdata]
    assert hover[4].startswith("key 4 ‘&lt;’") and hover[14].startswith("key 14 ‘&amp;’")
    assert "<s>" not in v.summary and "‘>’" not in v.summary and "‘&gt;’" in v.summary
    menu = [label for label, _ in tab.query_choices(a, "self")]  # the menu shows plain text, as written
    assert menu[0] == "0 ‘<s>’"


# --------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real app, shared by this module's browser tests."""
    from conftest import app_server

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    with app_server(tmp_path_factory.mktemp("steps-server")) as url:
        yield url


@pytest.mark.browser
def test_the_tab_in_the_page(server):
    """The real app: an Explore Run, then the tab; a change of head redraws it with attention_steps' numbers."""
    from archplay.models import load

    net, tok = load("gpt", device="cpu")
    ids = tok.encode(TEXT)
    with chromium_page(server) as page:
        status = page.locator("#status")
        wait_until(page, lambda: " tokens" in status.inner_text(), "the Run of the page's own text")  # then ours
        page.locator("#text textarea").fill(TEXT)
        page.locator("#run").click()
        wait_until(page, lambda: f"on {len(ids)} tokens" in page.locator("#status").inner_text(), "the gpt run",
                   show=lambda: page.locator("#status").inner_text())  # fmt: skip
        open_tab(page, "Inside a step")
        last = len(ids) - 1
        seen = []
        for head in (0, 2):
            if head:
                set_slider(page, "steps-head", head)
            plot = wait_for_plot(page, "steps-flow", f"head {head}: how query {last} ")
            s = attention_steps(net, torch.tensor([ids]), 0, head, last)
            weights = _weights(plot)
            np.testing.assert_allclose(weights, s.weights.numpy(), atol=1e-6)
            seen.append(weights)
            assert "✓" in page.locator("#steps-note").inner_text()
        assert np.abs(seen[0] - seen[1]).max() > 1e-3  # another head, other weights
        page.locator("#steps-query input").click()  # another query token, chosen by its text
        page.get_by_role("option", name=f"5 ‘{tok.tokens(ids)[5]}’", exact=True).click()
        plot = wait_for_plot(page, "steps-flow", "head 2: how query 5 ")
        np.testing.assert_allclose(
            _weights(plot), attention_steps(net, torch.tensor([ids]), 0, 2, 5).weights, atol=1e-6
        )
        assert page.locator("#steps-residual .js-plotly-plot").count() == 1
        if os.environ.get("ARCHPLAY_SCREENSHOTS"):
            SHOTS.mkdir(parents=True, exist_ok=True)
            for w, h in ((1024, 768), (1280, 800)):
                page.set_viewport_size({"width": w, "height": h})
                page.wait_for_timeout(800)
                page.screenshot(path=str(SHOTS / f"steps-{w}.png"))
                page.locator("#steps-flow").screenshot(path=str(SHOTS / f"steps-flow-{w}.png"))
                page.locator("#steps-residual").screenshot(path=str(SHOTS / f"steps-residual-{w}.png"))
        assert_no_console_errors(page)


def _weights(plot) -> np.ndarray:
    """The "weights" column as the page holds it, (S,)."""
    (found,) = [t for t in plot["data"] if t["name"] == "weights"]
    return _array(found["z"]).reshape(-1)


@pytest.mark.browser
def test_the_gate_and_the_scan_in_the_page(server):
    """The mamba shows the scan instead of the attention and follows its layer and token controls; then the
    moe brings the attention back, with its gate, which follows the query token and its MoE layer menu.
    Every number is scan_steps' or gate_steps'."""
    from archplay.models import gate_steps, load, scan_steps

    with chromium_page(f"{server}?{urlencode(dict(model='mamba', text=TEXT))}") as page:  # the page's first Run
        status = page.locator("#status")
        net, tok = load("mamba", device="cpu")
        ids = tok.encode(TEXT)
        last = len(ids) - 1
        wait_until(page, lambda: "mamba" in (t := status.inner_text()) and f"on {len(ids)} tokens" in t,
                   "the mamba run", show=status.inner_text)  # fmt: skip
        open_tab(page, "Inside a step")
        wait_for_plot(page, "steps-scan-plot", f"Layer 0, token {last} ")  # the slider's place: layer 0 at first
        assert not page.locator("#steps-attention").is_visible() and not page.locator("#steps-gate").is_visible()
        set_slider(page, "steps-scan-layer", 2)
        wait_for_plot(page, "steps-scan-plot", f"Layer 2, token {last} ")
        page.locator("#steps-scan-token input").click()
        page.get_by_role("option", name=f"7 ‘{tok.tokens(ids)[7]}’", exact=True).click()
        plot = wait_for_plot(page, "steps-scan-plot", "Layer 2, token 7 ")
        s = scan_steps(net, torch.tensor([ids]), 2, 7)
        np.testing.assert_allclose(_array(plot_trace(plot, "hidden attention")["y"]), s.hidden_attention[:8], atol=1e-6)
        delta = _array(plot_trace(plot, "delta")["z"]).reshape(-1)
        assert len(delta) == 64 and np.isclose(delta.max(), float(s.delta.max()), atol=1e-6)  # the widest Δ is shown
        assert page.locator("#steps-scan-note").inner_text().startswith("✓ Token 7")
        _shots(page, "mamba", "#steps-scan")

        open_tab(page, "Explore")
        choose_model(page, "moe")
        net, tok = load("moe", device="cpu")
        ids = tok.encode(TEXT)
        last = len(ids) - 1
        wait_until(page, lambda: "moe" in (t := status.inner_text()) and f"on {len(ids)} tokens" in t, "the moe run",
                   show=status.inner_text)  # fmt: skip
        open_tab(page, "Inside a step")
        plot = wait_for_plot(page, "steps-gate-plot", f"Layer 3, token {last} ")  # the menu's place: the last layer
        g = gate_steps(net, torch.tensor([ids]), 3, last)
        np.testing.assert_allclose(_array(plot_trace(plot, "probs")["x"]), g.probs.numpy(), atol=1e-6)
        wait_until(page, lambda: page.locator("#steps-attention").is_visible(), "the attention, back above the gate")
        assert page.locator("#steps-flow .js-plotly-plot").count() == 1 and not page.locator("#steps-scan").is_visible()
        page.locator("#steps-query input").click()  # the query token is the gate's token
        page.get_by_role("option", name=f"5 ‘{tok.tokens(ids)[5]}’", exact=True).click()
        wait_for_plot(page, "steps-gate-plot", "Layer 3, token 5 ")
        page.locator("#steps-gate-layer input").click()
        page.get_by_role("option", name="layer 1", exact=True).click()
        plot = wait_for_plot(page, "steps-gate-plot", "Layer 1, token 5 ")
        g = gate_steps(net, torch.tensor([ids]), 1, 5)
        np.testing.assert_allclose(_array(plot_trace(plot, "weights")["x"]), g.weights.numpy(), atol=1e-6)
        assert page.locator("#steps-gate-note").inner_text().startswith("✓ Token 5")
        _shots(page, "moe", "#steps-gate")
        assert_no_console_errors(page)


def _shots(page, name: str, section: str) -> None:
    """With ARCHPLAY_SCREENSHOTS: the section in the viewport at 1024×768 and 1280×800, and the whole section."""
    if not os.environ.get("ARCHPLAY_SCREENSHOTS"):
        return
    MIXER_SHOTS.mkdir(parents=True, exist_ok=True)
    for w, h in ((1024, 768), (1280, 800)):
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_timeout(800)
        page.locator(section).scroll_into_view_if_needed()
        page.screenshot(path=str(MIXER_SHOTS / f"{name}-{w}.png"))
        page.locator(section).screenshot(path=str(MIXER_SHOTS / f"{name}-section-{w}.png"))
    page.set_viewport_size({"width": 1440, "height": 1000})
