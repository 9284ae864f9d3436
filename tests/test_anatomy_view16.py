"""The Anatomy tab (issue 16, items 3 and 4): the figures carry the analysis' own numbers (read back from
the traces), the tab's handlers serve every built-in family (and a rotary and an ALiBi decoder through
the builders), bad input gets a sentence, and in a real browser the tab follows an Explore Run."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_browser import (
    CHROMIUM,
    _array,
    assert_no_console_errors,
    chromium_page,
    open_tab,
    read_plot,
    wait_for_plot,
    wait_until,
)
from test_contract import _tiny

from archplay import models
from archplay.app import anatomy as tab
from archplay.app.catalog import Catalog
from archplay.app.explore import run, translation
from archplay.models.analysis.anatomy import anatomy
from archplay.models.analysis.positions import effect, encoding
from archplay.models.architectures.decoder import Decoder, DecoderConfig
from archplay.viz import anatomy as va
from archplay.viz import positions as vp

TEXT = "Mia has a red ball. She throws the ball to Tom. Then Tom"
IDS = torch.tensor([[5, 9, 13, 17, 21, 25, 29, 33]])
SHOTS = Path(os.environ.get("ARCHPLAY_ANATOMY_SHOTS", "/tmp/anatomy-shots"))
CLOSE = dict(atol=1e-6, rtol=1e-6)


def trace(fig, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, (name, [t.name for t in fig.data])
    return found[0]


def arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def annotation(fig, name: str):
    found = [a for a in fig.layout.annotations if a.name == name]
    assert len(found) == 1, (name, [a.name for a in fig.layout.annotations])
    return found[0]


def _decoder(positions: str):
    torch.manual_seed(0)
    return Decoder(DecoderConfig.gpt2_tiny(positions=positions))


# --------------------------------------------------------------------------- the figures: anatomy


@pytest.mark.parametrize("name", ["gpt2-style", "bert-style", "mixtral-style", "mamba-style", "t5-style"])
def test_the_diagram_holds_every_part_with_its_shape(name):
    model = _tiny(name)
    kw = {"decoder_input_ids": IDS[:, :3]} if name == "t5-style" else {}
    stacks = anatomy(model, IDS, **kw)
    fig = va.block_diagram(stacks, title="Block anatomy: tiny")
    assert len([t for t in fig.data if t.name.startswith(va.DIAGRAM)]) == len(stacks) == (2 if kw else 1)
    for s, stack in enumerate(stacks):
        parts = [*stack.embed, *stack.block, *stack.out]
        points = trace(fig, f"{va.DIAGRAM} {s}")
        assert [row[0] for row in points.customdata] == [html.escape(p.name, quote=False) for p in parts]
        assert [row[2] for row in points.customdata] == [str(tuple(p.shape_out)) for p in parts]
        assert [row[3] for row in points.customdata] == [p.view or "" for p in parts]
        for j, p in enumerate(parts):
            text = annotation(fig, f"part {s}.{j}").text
            assert str(tuple(p.shape_out)) in text and html.escape(p.name.split(" ")[0], quote=False) in text
            assert (va.OPENS in text) == bool(p.view)
        assert f"× {stack.layers} layers" in annotation(fig, f"layers {s}").text
    shapes = {s.type for s in fig.layout.shapes}
    assert {"rect", "path"} <= shapes  # boxes, the bracket; the residual line
    adds = sum(p.kind == "add" for s in stacks for p in s.block)
    residual = [s for s in fig.layout.shapes if s.type == "path" and s.line.color == va.RESIDUAL]
    assert len(residual) == adds  # one skip connection per residual add
    if kw:  # the encoder's output led into the decoder's cross-attention
        assert any(a.text == "keys,<br>values" for a in fig.layout.annotations)


@pytest.mark.parametrize("options", [{}, {"sandwich_norm": True}, {"reordered_norm": True},
                                     {"parallel_residual": True}, {"parallel_residual": True, "shared_norm": True}])
def test_each_residual_line_goes_around_its_whole_sublayer(options):
    """The residual line of each add leaves the stream above everything it skips: the sublayer, its norm before
    and its norm after (Gemma's sandwich, OLMo 2's reordered norm), and both branches of a parallel block
    (GPT-NeoX, GPT-J, Phi). Before, a norm after the sublayer, or a parallel block, started it inside."""
    import dataclasses

    torch.manual_seed(0)
    model = Decoder(dataclasses.replace(DecoderConfig.llama_tiny(), **options))
    (stack,) = anatomy(model, IDS)
    fig = va.block_diagram([stack], title="t")
    points = trace(fig, f"{va.DIAGRAM} 0")
    parts = [*stack.embed, *stack.block, *stack.out]
    ys = {j: float(points.y[j]) for j in range(len(parts))}
    block = range(len(stack.embed), len(stack.embed) + len(stack.block))
    paths = [s.path for s in fig.layout.shapes if s.type == "path" and s.line.color == va.RESIDUAL]
    spans = []
    for path in paths:  # "M cx,y0 L x,y0 L x,y1": from y0 (above) down to the add at y1
        y0, y1 = float(path.split()[1].split(",")[1]), float(path.split()[-1].split(",")[1])
        spans.append((y1, y0))
    for j in block:
        if parts[j].kind in ("attention", "mlp", "norm"):
            assert any(lo < ys[j] < hi for lo, hi in spans), f"{parts[j].name} is outside every residual line"


def test_the_diagram_shows_this_inputs_shapes():
    model = _tiny("gpt2-style")
    (stack,) = anatomy(model, IDS[:, :5])
    fig = va.block_diagram([stack])
    texts = " ".join(a.text for a in fig.layout.annotations if a.name and a.name.startswith("part"))
    assert "(1, 5, 32)" in texts and "scores (1, 4, 5, 5)" in texts and "(1, 5, 99)" in texts


@pytest.mark.parametrize("name", ["gpt2-style", "mamba-style", "t5-style"])
def test_the_residual_figure_is_the_stream(name):
    model = _tiny(name)
    kw = {"decoder_input_ids": IDS[:, :3]} if name == "t5-style" else {}
    stacks = anatomy(model, IDS, **kw)
    labels = [[f"t{i}" for i in range(s.contribution.shape[1])] for s in stacks]
    fig = va.residual_figure(stacks, labels)
    for s, stack in enumerate(stacks):
        c, h = stack.contribution.numpy(), stack.stream.numpy()
        heat = trace(fig, f"{va.CONTRIBUTION} {s}")
        np.testing.assert_allclose(arr(heat.z), c, **CLOSE)
        assert list(heat.y) == list(range(1, stack.layers + 1)) and arr(heat.z).shape == (stack.layers, c.shape[1])
        np.testing.assert_allclose(arr(trace(fig, f"{va.STREAM} {s}").y), h.mean(axis=1), **CLOSE)
        np.testing.assert_allclose(arr(trace(fig, f"{va.MEAN_CONTRIBUTION} {s}").y), c.mean(axis=1), **CLOSE)
        low, high = [t for t in fig.data if t.name == f"{va.STREAM} {s} range"]
        np.testing.assert_allclose(arr(low.y), h.min(axis=1), **CLOSE)
        np.testing.assert_allclose(arr(high.y), h.max(axis=1), **CLOSE)
        assert f"adds ‖Δh‖ = {c[1, 2]:.3f}" in heat.customdata[1][2]


def test_residual_labels_are_escaped_and_checked():
    (stack,) = anatomy(_tiny("gpt2-style"), IDS[:, :3])
    fig = va.residual_figure([stack], [["<b>", "&", "x"]])
    heat = trace(fig, f"{va.CONTRIBUTION} 0")
    assert "‘&lt;b&gt;’" in heat.customdata[0][0] and "<b>" not in fig.layout.xaxis.ticktext[0]
    with pytest.raises(ValueError, match="2 token labels for 3"):
        va.residual_figure([stack], [["a", "b"]])
    with pytest.raises(ValueError, match="1 label lists for 2 stacks"):
        va.residual_figure([stack, stack], [["a", "b", "c"]])
    with pytest.raises(ValueError, match="no stacks"):
        va.block_diagram([])


# --------------------------------------------------------------------------- the figures: positions


def test_learned_and_sinusoidal_tables_and_their_similarity():
    gpt, _ = models.load("gpt")
    for model, n in ((gpt, 20), (_decoder("sinusoidal"), 12)):
        enc = encoding(model, n)
        fig = vp.encoding_figure(enc)
        np.testing.assert_allclose(arr(trace(fig, vp.TABLE).z), enc.table.numpy(), **CLOSE)
        np.testing.assert_allclose(arr(trace(fig, vp.SIMILARITY).z), enc.similarity.numpy(), atol=1e-6)
        assert vp.KIND_TITLES[enc.kind] in fig.layout.title.text


def test_a_wide_table_shows_its_first_dimensions():
    enc = encoding(_decoder("learned"), 4)
    enc.table = torch.randn(4, vp.MAX_DIMS + 10)
    fig = vp.encoding_figure(enc)
    np.testing.assert_allclose(arr(trace(fig, vp.TABLE).z), enc.table[:, : vp.MAX_DIMS].numpy(), **CLOSE)
    assert f"the first {vp.MAX_DIMS} of {vp.MAX_DIMS + 10}" in fig.layout.xaxis.title.text


def test_rotary_wavelengths_and_turning_pairs():
    enc = encoding(_tiny("llama-style"), 24)
    fig = vp.encoding_figure(enc)
    w = trace(fig, vp.WAVELENGTH)
    np.testing.assert_allclose(arr(w.y), enc.wavelength.numpy(), rtol=1e-6)
    np.testing.assert_allclose(arr(w.customdata), enc.inv_freq.numpy(), rtol=1e-6)
    assert fig.layout.yaxis.type == "log"
    pairs = [t for t in fig.data if t.name.startswith("pair ")]
    assert 2 <= len(pairs) <= vp.PAIRS_SHOWN
    for t in pairs:
        i = int(t.name.split()[1])
        np.testing.assert_allclose(arr(t.y), np.cos(np.arange(24) * float(enc.inv_freq[i])), atol=1e-6)
    assert list(trace(fig, vp.SHOWN).x) == [int(t.name.split()[1]) for t in pairs]


def test_alibi_slopes_and_one_heads_bias():
    enc = encoding(_decoder("alibi"), 10)
    fig = vp.encoding_figure(enc, head=2)
    np.testing.assert_allclose(arr(trace(fig, vp.SLOPES).y), enc.slopes.numpy(), **CLOSE)
    np.testing.assert_allclose(arr(trace(fig, "bias, head 2").z), enc.bias[2].numpy(), **CLOSE)
    assert arr(trace(fig, "bias, head 2").z)[7, 4] == pytest.approx(-3 * float(enc.slopes[2]))
    with pytest.raises(ValueError, match="head must be between 0 and 3, got 4"):
        vp.encoding_figure(enc, head=4)


def test_relative_buckets_as_a_bias_per_head():
    model = _tiny("t5-style")
    enc = encoding(model, 9)
    fig = vp.encoding_figure(enc, head=1)
    for h in range(enc.bias.shape[0]):
        np.testing.assert_allclose(arr(trace(fig, f"bias, head {h}").z), enc.bias[h].numpy(), **CLOSE)
    assert any(a.text == "<b>head 1</b>" for a in fig.layout.annotations)  # the chosen head stands out
    many = encoding(model, 5)
    many.bias = torch.randn(vp.MAX_HEADS + 2, 5, 5)
    fig = vp.encoding_figure(many, head=17)  # too many heads for small multiples: only the chosen one
    assert [t.name for t in fig.data] == ["bias, head 17"]


def test_mamba_has_no_position_term_to_draw():
    enc = encoding(_tiny("mamba-style"), 8)
    fig = vp.encoding_figure(enc)
    assert len(fig.data) == 0 and "scan" in fig.layout.annotations[0].text
    with pytest.raises(ValueError, match="unknown position encoding"):
        vp.encoding_figure(type("E", (), {"kind": "spiral"})())


@pytest.mark.parametrize("positions", ["learned", "rotary", "alibi", "relative"])
def test_the_effect_figure_holds_both_rows(positions):
    model = _decoder(positions)
    e = effect(model, IDS, 1, 0, 6)
    keys = [f"k{i}" for i in range(IDS.shape[1])]
    fig = vp.effect_figure(e, keys, 6)
    np.testing.assert_allclose(arr(trace(fig, vp.WITH).y), e.with_positions.numpy(), **CLOSE)
    np.testing.assert_allclose(arr(trace(fig, vp.WITHOUT).y), e.without_positions.numpy(), **CLOSE)
    assert list(trace(fig, vp.WITH).x) == list(range(8)) and fig.layout.barmode == "group"
    moved = float((e.with_positions - e.without_positions).abs().sum()) / 2
    assert f"move {moved:.0%} of" in fig.layout.title.text
    assert "<b>k6</b>" in fig.layout.xaxis.ticktext  # the query's own key stands out
    assert "masked" in trace(fig, vp.WITH).customdata[7]  # a causal query cannot see key 7


def test_effect_labels_are_escaped_and_checked():
    e = effect(_decoder("learned"), IDS[:, :3], 0, 0, 2)
    fig = vp.effect_figure(e, ["<s>", "&", "<b>x</b>"], 2)
    assert "‘&lt;b&gt;x&lt;/b&gt;’" in fig.layout.title.text and "<b>x</b>" not in str(fig.layout.xaxis.ticktext)
    with pytest.raises(ValueError, match="2 key labels for 3 keys"):
        vp.effect_figure(e, ["a", "b"], 1)


def test_the_figures_are_valid_plotly(monkeypatch):
    monkeypatch.setenv("ARCHPLAY_VALIDATE_FIGURES", "1")  # style.figure validates every property
    stacks = anatomy(_tiny("t5-style"), IDS, decoder_input_ids=IDS[:, :3])
    va.block_diagram(stacks)
    va.residual_figure(stacks, [[str(i) for i in range(8)], ["a", "b", "c"]])
    for model in (_decoder("learned"), _tiny("llama-style"), _decoder("alibi"), _tiny("t5-style"),
                  _tiny("mamba-style")):  # fmt: skip
        vp.encoding_figure(encoding(model, 8))
    vp.effect_figure(effect(_decoder("alibi"), IDS, 0, 0, 3), [str(i) for i in range(8)], 3)


# --------------------------------------------------------------------------- the tab's handlers


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


def _kwargs(catalog, a) -> dict:
    if a.translation is None:
        return {}
    entry = catalog.get(a.model_key)
    return {"decoder_input_ids": torch.tensor([translation.decoder_inputs(entry, a.translation.ids)])}


KINDS = {"gpt": "learned", "bert": "learned", "t5": "relative", "moe": "rotary", "mamba": "none"}


@pytest.mark.parametrize("key", ["gpt", "bert", "t5", "moe", "mamba"])
def test_the_tab_draws_the_runs_model(catalog, runs, key):
    a = runs[key]
    model = catalog.get(a.model_key).model
    ids = torch.tensor([a.ids])
    v = tab.anatomy_view(catalog, a, fit=True)
    assert v.note.startswith("✓") and f"on {len(a.ids)} tokens" in v.note, v.note
    stacks = anatomy(model, ids, **_kwargs(catalog, a))
    assert len([t for t in v.diagram.data if t.name.startswith(va.DIAGRAM)]) == len(stacks)
    for s, stack in enumerate(stacks):  # the residual stream of this very Run
        np.testing.assert_allclose(arr(trace(v.residual, f"{va.CONTRIBUTION} {s}").z), stack.contribution.numpy(),
                                   atol=1e-4, rtol=1e-5)  # fmt: skip
    labels = [a.labels] + ([a.translation.input_labels] if a.translation else [])
    for s, names in enumerate(labels):
        ticks = list(v.residual.layout[f"xaxis{'' if s == 0 else 2 * s + 1}"].ticktext)
        assert ticks[0] == html.escape(names[0], quote=False)[:14] or ticks[0].endswith("…")
    enc = encoding(model, v.controls.positions if v.controls else tab.DEFAULT_POSITIONS)
    assert enc.kind == KINDS[key] and v.positions_help == tab.ENCODING_HELP[enc.kind]
    if key == "mamba":
        assert v.controls is None and v.effect is None and "no attention" in v.effect_note
        assert v.encoding is None and not v.positions_drawn and [x for _, x in v.parts] == ["steps|0.2"]
        return
    c = v.controls
    assert c.n_layer == stacks[0].layers and c.n_head == 4 and len(c.queries) == len(a.ids)
    e = effect(model, ids, 0, 0, c.default_query, **_kwargs(catalog, a))
    np.testing.assert_allclose(arr(trace(v.effect, vp.WITH).y), e.with_positions.numpy(), **CLOSE)
    np.testing.assert_allclose(arr(trace(v.effect, vp.WITHOUT).y), e.without_positions.numpy(), **CLOSE)
    assert v.effect_note.startswith("✓") and "moves" in v.effect_note
    places = {x.split("|")[0] for _, x in v.parts}
    assert places == {"positions", "steps", "ablate"}
    if key == "t5":
        assert [s.name.split(" ")[0] for s in stacks] == ["encoder", "decoder"]
        assert "encoder layer 0" in v.effect.layout.title.text and c.default_query == len(a.ids) // 2
        assert sum("cross-attention" in label for label, _ in v.parts) == 1
        np.testing.assert_allclose(arr(trace(v.encoding, "bias, head 0").z), enc.bias[0].numpy(), **CLOSE)
    if key == "moe":
        assert any(x.startswith("steps|") and "experts" in label for label, x in v.parts)
        np.testing.assert_allclose(arr(trace(v.encoding, vp.WAVELENGTH).y), enc.wavelength.numpy(), rtol=1e-6)
    if key in ("gpt", "bert"):
        np.testing.assert_allclose(arr(trace(v.encoding, vp.TABLE).z), enc.table.numpy(), **CLOSE)
    if key == "bert":
        assert a.labels[c.default_query] == "<mask>"  # where Explore predicts


def test_the_controls_redraw_the_effect_and_the_encoding(catalog, runs):
    a = runs["gpt"]
    model = catalog.get(a.model_key).model
    fig, sentence = tab.effect_view(catalog, a, 3, 2, 5)
    e = effect(model, torch.tensor([a.ids]), 3, 2, 5)
    np.testing.assert_allclose(arr(trace(fig, vp.WITH).y), e.with_positions.numpy(), **CLOSE)
    assert "layer 3, head 2" in fig.layout.title.text and f"query 5 ‘{a.labels[5]}’" in sentence
    assert tab.effect_view(catalog, a, 3, 2, f"5 ‘{a.labels[5]}’")[0] is not None  # the menu's own label
    fig, problem = tab.encoding_view(catalog, a, 12, 0)
    assert problem == "" and arr(trace(fig, vp.TABLE).z).shape == (12, 128)
    t5 = runs["t5"]
    fig, _ = tab.encoding_view(catalog, t5, 6, 3)
    assert "<b>head 3</b>" in [x.text for x in fig.layout.annotations]
    fig, note = tab.effect_view(catalog, runs["mamba"], 0, 0, 0)
    assert fig is None and note.startswith("ℹ") and "scan" in note


@pytest.mark.parametrize("args,match", [
    ((99, 0, 0), "layer must be between 0 and 3, got 99"), ((0, 7, 0), "head must be between 0 and 3, got 7"),
    ((0, 0, -1), "query must be between"), ((0, 0, 999), "got 999"), (("x", 0, 0), "layer must be a whole number"),
    ((0, 0, None), "choose a query"), ((0, 0, "<img src=x>"), "&lt;img"), ((0.5, 0, 0), "whole number"),
])  # fmt: skip
def test_bad_effect_input_gets_a_sentence(catalog, runs, args, match):
    fig, sentence = tab.effect_view(catalog, runs["gpt"], *args)
    assert fig is None and sentence.startswith("✕") and match in sentence, sentence
    assert "<img" not in sentence


@pytest.mark.parametrize("positions,head,match", [
    (0, 0, "positions shown must be between 1 and 128, got 0"), (999, 0, "got 999"),
    ("many", 0, "positions shown must be a whole number"), (None, 0, "choose a positions shown"),
])  # fmt: skip
def test_bad_encoding_input_gets_a_sentence(catalog, runs, positions, head, match):
    fig, problem = tab.encoding_view(catalog, runs["gpt"], positions, head)
    assert fig is None and problem.startswith("✕") and match in problem, problem
    fig, problem = tab.encoding_view(catalog, runs["t5"], 8, 9)
    assert fig is None and "head must be between 0 and 3, got 9" in problem


def test_without_a_run_or_model_the_tab_says_so(catalog, runs):
    assert tab.anatomy_view(catalog, None).note == "ℹ " + tab.RUN_FIRST
    assert tab.effect_view(catalog, None, 0, 0, 0) == (None, "ℹ " + tab.RUN_FIRST)
    assert tab.encoding_view(catalog, None, 8, 0) == (None, "ℹ " + tab.RUN_FIRST)
    from dataclasses import replace

    gone = replace(runs["gpt"], model_key="no-such-model")
    v = tab.anatomy_view(catalog, gone)
    assert v.diagram is None and v.note.startswith("✕")
    v = tab.anatomy_view(catalog, runs["gpt"], 99, 0, 0)  # an API call out of range: a sentence, the rest drawn
    assert v.diagram is not None and v.effect is None and "layer must be between" in v.effect_note
    fitted = tab.anatomy_view(catalog, runs["gpt"], 99, "x", None, fit=True)  # a new Run: moved into range
    assert fitted.effect is not None and "layer 3, head 0" in fitted.effect.layout.title.text


def test_html_in_the_text_is_escaped(catalog):
    a = run.analyse(catalog, "gpt", "Mia has <b>a</b> red & ball").analysis
    v = tab.anatomy_view(catalog, a, 0, 0, a.labels.index(">"))
    assert "<b>a" not in v.note and "‘&gt;’" in v.effect.layout.title.text
    assert "‘&gt;’" in v.effect_note and "‘>’" not in v.effect_note
    hover = trace(v.residual, f"{va.CONTRIBUTION} 0").customdata[0]
    assert any("‘&lt;’" in h for h in hover) and not any("‘<’" in h for h in hover)
    assert [label for label, _ in tab.query_choices(a.labels)][0] == "0 ‘<s>’"  # the menu shows plain text


def test_the_open_menu_leads_to_each_parts_view():
    stacks = anatomy(_tiny("t5-style"), IDS, decoder_input_ids=IDS[:, :3])
    choices = tab.part_choices(stacks)
    labels = [label for label, _ in choices]
    assert labels[0] == "relative position bias (bidirectional buckets) → Positions, below"  # each stack's table
    assert labels[2] == "relative position bias (causal buckets) → Positions, below"
    assert "decoder · cross-attention (keys, values: the encoder) → the Inside a step tab" in labels
    assert [x.split("|")[0] for _, x in choices] == ["positions", "steps", "positions", "steps", "steps", "ablate"]
    assert len(set(x for _, x in choices)) == len(choices)
    assert 'data-tab-id="${place}"' in tab.OPEN_JS and tab.POSITIONS_ID in tab.OPEN_JS


def test_a_rotary_and_an_alibi_decoder_through_the_builders():
    for positions, kind in (("rotary", vp.WAVELENGTH), ("alibi", vp.SLOPES)):
        model = _decoder(positions)
        (stack,) = anatomy(model, IDS)
        assert stack.embed[-1].view == "positions"
        fig = va.block_diagram([stack])
        assert any(positions[:4].lower() in a.text.lower() for a in fig.layout.annotations if a.name == "part 0.1")
        assert trace(vp.encoding_figure(encoding(model, 8)), kind) is not None
        e = effect(model, IDS, 0, 1, 7)
        bars = trace(vp.effect_figure(e, list("abcdefgh"), 7), vp.WITH)
        assert math.isclose(float(arr(bars.y).sum()), 1, abs_tol=1e-5)


# --------------------------------------------------------------------------- in the browser


@pytest.mark.browser
def test_the_tab_in_the_page(tmp_path_factory):
    """The real app: an Explore Run, then the tab: the diagram and the residual stream of that Run."""
    from conftest import app_server

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    net, tok = models.load("gpt", device="cpu")
    ids = tok.encode(TEXT)
    (stack,) = anatomy(net, torch.tensor([ids]))
    with app_server(tmp_path_factory.mktemp("anatomy-server")) as url, chromium_page(url) as page:
        # the page's own first Run lands first (else it may land after the one below and be the session's Run)
        wait_until(page, lambda: page.locator("#status").inner_text().startswith("✓"), "the page's first Run")
        page.locator("#text textarea").fill(TEXT)
        page.locator("#run").click()
        wait_until(page, lambda: f"on {len(ids)} tokens" in page.locator("#status").inner_text(), "the gpt run",
                   show=lambda: page.locator("#status").inner_text())  # fmt: skip
        open_tab(page, "Anatomy")
        tokens = f", on {len(ids)} tokens"  # this Run's, not the page's first (the default text)
        diagram = wait_for_plot(page, "anatomy-diagram", tokens)
        assert [t["name"] for t in diagram["data"]] == [f"{va.DIAGRAM} 0"]
        assert len(diagram["data"][0]["x"]) == len(stack.embed) + len(stack.block) + len(stack.out)
        assert diagram["title"].startswith("Block anatomy: gpt")
        residual = wait_for_plot(page, "anatomy-residual", tokens)
        z = _array(next(t for t in residual["data"] if t["name"] == f"{va.CONTRIBUTION} 0")["z"])
        z = z.reshape(stack.layers, len(ids)) if z.ndim == 1 else z
        assert z.shape == (net.config.n_layer, len(ids))
        np.testing.assert_allclose(z, stack.contribution.numpy(), atol=1e-3, rtol=1e-4)
        effect_plot = wait_for_plot(page, "anatomy-effect", f"Query {len(ids) - 1} ")
        assert {t["name"] for t in effect_plot["data"]} == {vp.WITH, vp.WITHOUT}
        assert read_plot(page, "anatomy-encoding")["title"].startswith(vp.KIND_TITLES["learned"])
        assert "✓" in page.locator("#anatomy-note").inner_text()
        if os.environ.get("ARCHPLAY_SCREENSHOTS"):
            SHOTS.mkdir(parents=True, exist_ok=True)
            for w, h in ((1024, 768), (1280, 800)):
                page.set_viewport_size({"width": w, "height": h})
                page.wait_for_timeout(800)
                page.screenshot(path=str(SHOTS / f"anatomy-{w}.png"), full_page=True)
                for part in ("diagram", "residual", "encoding", "effect"):
                    page.locator(f"#anatomy-{part}").screenshot(path=str(SHOTS / f"anatomy-{part}-{w}.png"))
        # a part of the diagram opens its view: the attention step by step, on its own tab
        page.locator("#anatomy-open label").filter(has_text="causal self-attention").click()
        wait_until(page, lambda: page.locator('button[data-tab-id="steps"]').get_attribute("aria-selected") == "true",
                   "the Inside a step tab")  # fmt: skip
        # clicking the attention box on the diagram itself opens it too
        open_tab(page, "Anatomy")
        wait_until(page, lambda: page.evaluate(_HAS_CLICK), "the diagram's click handler")
        x, y = page.evaluate(_BOX_AT, "attention")
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        wait_until(page, lambda: page.locator('button[data-tab-id="steps"]').get_attribute("aria-selected") == "true",
                   "a click on the diagram to open the Inside a step tab")  # fmt: skip
        assert_no_console_errors(page)


_HAS_CLICK = """() => {
  const gd = document.querySelector("#anatomy-diagram .js-plotly-plot");
  return !!(gd && gd._ev && gd._ev.listeners("plotly_click").length);
}"""
# The page coordinates of the diagram's box whose view is ``view`` (its invisible point, at the box's centre).
_BOX_AT = """(view) => {
  const gd = document.querySelector("#anatomy-diagram .js-plotly-plot");
  const trace = gd.data[0], i = trace.customdata.findIndex(c => c[c.length - 1] === view);
  const fl = gd._fullLayout, box = gd.getBoundingClientRect();
  return [box.left + fl._size.l + fl.xaxis.l2p(trace.x[i]), box.top + fl._size.t + fl.yaxis.l2p(trace.y[i])];
}"""
